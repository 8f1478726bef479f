"""A tiny step-by-step network of pure replicas for protocol unit tests.

In the spirit of etcd-raft's test `network`: messages are queued, delivered
in order (through the real codec), and a test can drop, cut or isolate nodes.
No randomness, no wall clock: `now` is advanced by the test. Replicas MAC their
replies (bft/auth.py) as real nodes do; `reply_macs=False` makes them sign them.
"""

from __future__ import annotations

from collections import deque
from typing import Any, Callable

from bft import codec
from bft.app import ExecContext, KVStore, Ops  # noqa: F401  (re-exported for tests)
from bft.auth import sim_reply_auth
from bft.clock import Interval
from bft.config import ClusterConfig
from bft.crypto import SimKeys
from bft.driver import EffectIO, EffectRunner
from bft.effects import Event, Evidence, Executed
from bft.messages import MacReply, Request, Signed
from bft.replica import Replica
from bft.storage import MemoryStorage


class _NetIO(EffectIO):
    """Replica i's I/O in the harness: the message queue and the observation lists."""

    def __init__(self, net: Net, i: int) -> None:
        self.net, self.i = net, i

    def send(self, to: int, message: Any) -> None:
        self.net.queue.append((self.i, to, message))

    def broadcast(self, message: Any) -> None:
        for j in range(self.net.n):
            if j != self.i:
                self.net.queue.append((self.i, j, message))

    def reply(self, client: int, reply: Any) -> None:
        self.net.replies.setdefault(client, []).append(reply)

    def executed(self, effect: Executed) -> None:
        self.net.executed[self.i].append(effect)

    def evidence(self, effect: Evidence) -> None:
        self.net.evidence.append(effect)

    def event(self, effect: Event) -> None:
        self.net.events.append((self.i, effect))


class Net:
    def __init__(self, n: int = 4, *, seed: int = 1, clients: int = 4,
                 replica_class: type = Replica, reply_macs: bool = True,
                 clock_skew_s: dict[int, float] | None = None, **overrides: Any) -> None:
        self.replica_class = replica_class
        self.seed = seed
        self.reply_macs = reply_macs
        overrides.setdefault("batch_delay_s", 0.0)
        self.config = ClusterConfig.local(n, clients=clients, **overrides)
        self.keys = SimKeys(seed, n_replicas=n, n_clients=clients)
        self.now = 0.0
        self.queue: deque[tuple[int, int, Any]] = deque()  # (src, dst, message)
        self.storage = [MemoryStorage() for _ in range(n)]
        self.replicas: list[Replica | None] = [self._make(i) for i in range(n)]
        # each replica's effects go through a runner (the node's write-ahead order and timer
        # contract), its I/O the queues below
        self.runners = [EffectRunner(self.storage[i], _NetIO(self, i)) for i in range(n)]
        self.executed: dict[int, list[Executed]] = {i: [] for i in range(n)}
        self.replies: dict[int, list[Signed | MacReply]] = {}
        self.evidence: list[Evidence] = []
        self.events: list[tuple[int, Any]] = []
        self.cut: set[tuple[int, int]] = set()  # (src, dst) links that drop
        self.filter: Callable[[int, int, Any], bool] | None = None  # False drops
        self.client_ts: dict[int, int] = {}
        self.invocations: list[tuple[int, int, bytes, float]] = []  # (client, t, op, now)
        self.sent_count = 0
        self.clock_skew_s: dict[int, float] = dict(clock_skew_s or {})
        for i in range(n):
            self._apply(i, self.replicas[i].start(self.now, self.wall(i)))  # type: ignore[union-attr]

    @property
    def n(self) -> int:
        return self.config.n

    def wall(self, i: int) -> Interval:
        """Replica i's interval clock: true time (`now`) plus its `clock_skew_s[i]`."""
        us = int((self.now + self.clock_skew_s.get(i, 0.0)) * 1_000_000)
        return Interval(us, us)

    def _make(self, i: int, recovered: Any = None, votes_lost: bool = False) -> Replica:
        reply_auth = (sim_reply_auth(self.seed, "replica", i, n_replicas=self.n,
                                     n_clients=len(self.config.clients))
                      if self.reply_macs else None)
        return self.replica_class(self.config, i, signer=self.keys.signer("replica", i),
                       verifier=self.keys.verifier(), app=KVStore(), recovered=recovered,
                       digest_every_batch=True, reply_auth=reply_auth,
                       **({"votes_lost": True} if votes_lost else {}))

    # -- effects
    def _apply(self, i: int, effects: list[Any]) -> None:
        """Carry out replica i's effects through its runner (bft/driver.py)."""
        self.runners[i].run(effects)

    # -- driving
    def request(self, client: int, op: bytes, to: int | None = None, timestamp: int | None = None) -> Signed:
        t = timestamp if timestamp is not None else self.client_ts.get(client, 0) + 1
        self.client_ts[client] = max(self.client_ts.get(client, 0), t)
        signed = self.keys.signer("client", client).sign(Request(op, t, client))
        if (client, t) not in {(c, ts) for c, ts, _, _ in self.invocations}:
            self.invocations.append((client, t, op, self.now))
        targets = range(self.n) if to is None else [to]
        for j in targets:
            self.queue.append((-1, j, signed))
        return signed

    def deliver(self, max_steps: int = 100_000) -> int:
        steps = 0
        while self.queue and steps < max_steps:
            src, dst, msg = self.queue.popleft()
            steps += 1
            if (src, dst) in self.cut or self.replicas[dst] is None:
                continue
            if self.filter is not None and not self.filter(src, dst, msg):
                continue
            wire = codec.decode_untrusted(codec.encode(msg), self.config.limits)
            self.sent_count += 1
            self._apply(dst, self.replicas[dst].receive(wire, self.now, self.wall(dst)))  # type: ignore[union-attr]
        return steps

    def advance(self, seconds: float, step: float = 0.05) -> None:
        """Move time forward, firing due timers and delivering messages."""
        end = self.now + seconds
        while self.now < end:
            self.now = min(end, self.now + step)
            for i, r in enumerate(self.replicas):
                if r is not None and self.runners[i].take_due(self.now):  # one tick per SetTimer
                    self._apply(i, r.tick(self.now, self.wall(i)))
            self.deliver()

    def crash(self, i: int) -> None:
        self.replicas[i] = None
        self.storage[i].crash()
        self.runners[i].clear_timer()

    def restart(self, i: int, *, lose_records: bool = False, lose_snapshot: bool = False) -> None:
        """Restart replica i from its storage; `lose_records` / `lose_snapshot` model a damaged
        WAL or snapshot (the replica is told its earlier votes may be lost)."""
        st = self.storage[i]
        snapshot = None if lose_snapshot else st.load_snapshot()
        records = [] if (lose_records or lose_snapshot) else st.records()
        r = self._make(i, recovered=(snapshot, records), votes_lost=lose_records or lose_snapshot)
        self.replicas[i] = r
        self._apply(i, r.start(self.now, self.wall(i)))

    def isolate(self, i: int) -> None:
        for j in range(-1, self.n):
            self.cut.add((i, j))
            self.cut.add((j, i))

    def heal(self) -> None:
        self.cut.clear()

    # -- observations
    def completed(self, client: int, timestamp: int) -> bytes | None:
        """The result f+1 replicas agree on for (client, timestamp), if any."""
        votes: dict[bytes, set[int]] = {}
        for s in self.replies.get(client, []):
            r = s.statement
            if r.timestamp == timestamp:
                votes.setdefault(r.result, set()).add(r.replica)
        for result, who in votes.items():
            if len(who) >= self.config.f + 1:
                return result
        return None

    def executed_ops(self, i: int) -> list[tuple[int, int]]:
        out = []
        for e in self.executed[i]:
            for s in e.batch.requests:
                out.append((s.statement.client, s.statement.timestamp))
        return out

    def digests(self) -> dict[int, bytes]:
        return {i: self.executed[i][-1].state_digest for i in range(self.n)
                if self.executed[i] and self.replicas[i] is not None}
