"""The deterministic simulator: pure replicas and clients over a simulated network.

One process, one thread, no trio: a heap of `(virtual_time, counter, event)`,
one `random.Random(seed)` for every decision the network and the workload
make, the pure `Replica`s (bft/replica.py) and `Client`s (bft/client.py), and
the checkers (adversary/checkers.py), fed after every step. The same
`SimConfig` gives the same run, bit for bit: same events, same messages, same
`SimResult` apart from `wall_seconds` (which is only measured, never used).
Nothing here iterates over a set or a dict whose order depends on hashing,
and nothing reads the wall clock to decide anything.

What is simulated:

* Network: every message between two endpoints (replica or client) is
  encoded with `bft.codec.encode` and decoded on delivery with
  `decode_untrusted` (skip with `codec=False` for speed). Each transmission is
  dropped with probability `drop`, duplicated with `duplicate`, delayed by a
  uniform draw from the link's `delay_ms` range (per-link overrides in
  `link_delay_ms`), and with probability `reorder` delayed by up to
  `reorder_ms` more (so it overtakes or is overtaken). A `Partition` cuts
  replica-to-replica links between its groups from `start_s` until
  `heal_s` (checked when a message is sent; replicas named in no group form
  one more group together; clients reach everyone).
* Crashes: `Crash(node, at_s, restart_s)` discards the node's volatile state
  at `at_s` (its `MemoryStorage` survives, minus unsynced records) and, if
  `restart_s` is set, builds a new replica from it:
  `Replica(recovered=(storage.load_snapshot(), storage.records()))`.
  Crash points: a behaviour may ask for a crash at the end of the current
  step (`BehaviourEnv.request_crash`, used by `crash-at` rules that crash at
  an event of the node's own replica); the step's effects it kept are
  applied, then the node crashes the same way and restarts after the rule's
  `restart_after_s`.
* Silent nodes: `Silence(node, start_s, end_s)` keeps the node running but
  discards everything it sends in that window.
* Clocks: replica i reads `SkewedClock(clock_skew_s[i], 0, clock_uncertainty_us)`
  at true time `SIM_EPOCH_S + now` as its `wall` interval.
* Effects and timers: each replica's effects are carried out by a
  `bft.driver.EffectRunner`, as in the node (the write-ahead order; the timer
  contract: the replica's latest `SetTimer` is honoured and it is ticked
  then, and at no other time). A replica that leaves a due deadline without a
  new `SetTimer` stalls here as it would in a real node.
* Workload: `clients` closed-loop clients each issue `requests` random KV ops
  (put/get/cas/delete over `key_count` keys, so histories conflict, and lock
  sessions: lock, fenced put, unlock).

Pluggable nodes: `node_factory(ctx) -> node` builds the node of one replica
incarnation (default: `ctx.make_replica()`), and `wrap_node(ctx, node) ->
node` may wrap it; a node is anything with `start/receive/tick(now, wall) ->
list[Effect]` (and ideally `view`, `last_executed`, `statistics()`). The
adversary uses this to filter and rewrite a replica's inputs and outputs.
Nodes listed in `byzantine` are not judged by the checkers.

Adversary (adversary/behaviours.py, adversary/netfaults.py): `adversary`
rules wrap a replica in `ByzantineNode` behaviours (a `crash` rule becomes a
`Crash`, an `equivocate` rule with `mode = "twins"` builds a `TwinsNode`:
two instances of one identity); the nodes of rules that are not `judged` join
`byzantine`. `net_faults` rules (drop, delay, duplicate, reorder, corrupt,
partition, each in a time window, optionally only for the messages of some
kinds, senders, receivers, views and seqs) act in the network on top of the
base model; a targeted rule sees the message's `MessageInfo` (a message
that carries no view counts in its sender's current view); a corrupted
message is framed as the UDP transport frames it, and the CRC32C checksum
must catch the flipped bytes (counted as `bad_checksum`).
Every message a Byzantine replica signed on its way into a correct replica
is shown to the `EquivocationWitness` (adversary/witness.py): each
equivocation that reached a correct replica must leave `Evidence`.
Evidence held by correct replicas is listed in the result.

Applications and workloads: `app_factory()` builds each replica's state
machine (default `KVStore`) and the checkers' sequential model;
`workload_factory(client_id, requests, rng)` builds a client's workload
(adversary/workloads.py: the fencing-token story, or a user application's
random ops). `history=True` records every client operation in Jepsen's shape
(`Simulation.history`, bft/history.py).

Use: `Simulation(SimConfig(seed=1, nodes=4)).run(until_s=60.0) -> SimResult`.
"""

from __future__ import annotations

import dataclasses
import gc
import hashlib
import heapq
import math
import random
import struct
import time
from zlib import crc32 as _crc32
from collections.abc import Callable, Mapping
from dataclasses import asdict, dataclass, field
from typing import Any

from adversary.behaviours import BehaviourEnv, BehaviourRule, Collusion, TwinsNode, make_node
from adversary.checkers import CheckerSuite
from bft.history import History
from adversary.netfaults import FaultModel, MessageInfo, NetworkRule, corrupt_bytes, message_info
from adversary.witness import EquivocationWitness
from bft import codec
from bft.app import DEFAULT_KV_LIMITS, KVStore, decode_result_untrusted, ops
from bft.client import (Client, ClientTimer, Completed, Failed, SendAll, SendTo,
                        peek_reply_untrusted)
from bft.clock import Interval, SkewedClock
from bft.config import CLIENT_SENDER_BASE, ClusterConfig
from bft.driver import EffectIO, EffectRunner
from bft.effects import Evidence
from bft.errors import ConfigError, InvariantViolation, MalformedMessage
from bft.storage import MemoryStorage
from transport.frame import FrameError, decode_frame_untrusted, encode_frames

#: A send in the trace: now, delivery time, source, destination, payload length, CRC-32.
_SEND_RECORD = struct.Struct("<ddiiII").pack
#: Trace records buffered before they are hashed.
_TRACE_FLUSH = 4096

#: The garbage collector's thresholds during a run, at least (see Simulation.run).
GC_THRESHOLDS = (50_000, 20, 20)

#: Decoded messages remembered by payload (see Simulation._decode).
DECODE_CACHE_SIZE = 4096

#: The true time (Unix seconds) at virtual time 0, for the replicas' wall clocks.
SIM_EPOCH_S = 1_600_000_000.0

Address = tuple[str, int]  # ("replica", i) or ("client", c)


# --------------------------------------------------------------------------
# Configuration
# --------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Partition:
    """Replica groups that cannot reach each other from `start_s` until `heal_s` (None: never)."""

    groups: tuple[tuple[int, ...], ...]
    start_s: float
    heal_s: float | None = None


@dataclass(frozen=True, slots=True)
class Crash:
    """Replica `node` crashes at `at_s` and, if `restart_s` is set, restarts from its storage."""

    node: int
    at_s: float
    restart_s: float | None = None


@dataclass(frozen=True, slots=True)
class Silence:
    """Replica `node` sends nothing from `start_s` until `end_s` (None: never again)."""

    node: int
    start_s: float = 0.0
    end_s: float | None = None


@dataclass(slots=True)
class SimConfig:
    """Everything that defines a run. Equal configs give equal runs.

    `cluster` (a ClusterConfig) wins over `nodes` and `cluster_overrides`;
    otherwise the cluster is `ClusterConfig.local(nodes, clients=clients,
    **cluster_overrides)`. Probabilities are in [0, 1]; times in virtual
    seconds unless the name says `_ms`. `adversary` and `net_faults` are
    validated rules (adversary/scenario.py builds them from TOML);
    `app_factory`, `workload_factory` and `history` are described in the
    module docstring; `witness` turns the evidence witness on (it runs only
    when some replica is Byzantine). `reply_macs`: replicas authenticate
    replies with MACs over pairwise keys (bft/auth.py), as real nodes do;
    False: they sign them. `send_to_all`: clients send every request to every
    replica (`bft.client.Client(send_to_all=True)`), not to the primary.
    """

    seed: int = 0
    nodes: int = 4
    cluster: ClusterConfig | None = None
    cluster_overrides: Mapping[str, Any] = field(default_factory=dict)
    clients: int = 2
    requests: int = 10
    key_count: int = 3
    lock_fraction: float = 0.1
    think_ms: tuple[float, float] = (0.0, 0.0)
    delay_ms: tuple[float, float] = (1.0, 5.0)
    link_delay_ms: Mapping[tuple[int, int], tuple[float, float]] = field(default_factory=dict)
    drop: float = 0.0
    duplicate: float = 0.0
    reorder: float = 0.0
    reorder_ms: float | None = None  # extra delay bound; default 4 x the upper delay
    partitions: tuple[Partition, ...] = ()
    crashes: tuple[Crash, ...] = ()
    silent: tuple[Silence, ...] = ()
    byzantine: frozenset[int] = frozenset()
    clock_skew_s: Mapping[int, float] = field(default_factory=dict)
    clock_uncertainty_us: int = 1000
    codec: bool = True
    crypto: str = "sim"  # "sim" (keyed-BLAKE2b SimKeys) or "ed25519"
    reply_macs: bool = True
    send_to_all: bool = False
    digest_every_batch: bool = True
    node_factory: Callable[[NodeContext], Any] | None = None
    wrap_node: Callable[[NodeContext, Any], Any] | None = None
    liveness_bound_s: float = 30.0
    faults_end_s: float | None = None  # default: when the last scheduled fault ends
    drain_s: float = 1.0
    max_events: int = 5_000_000
    adversary: tuple[BehaviourRule, ...] = ()
    net_faults: tuple[NetworkRule, ...] = ()
    app_factory: Callable[[], Any] | None = None
    workload_factory: Callable[[int, int, random.Random], Any] | None = None
    history: bool = False
    witness: bool = True

    def all_crashes(self) -> tuple[Crash, ...]:
        """`crashes` plus the crashes of `crash` rules in `adversary`."""
        extra = tuple(Crash(r.node, r.start_s, r.restart_at()) for r in self.adversary
                      if r.behaviour == "crash")
        return tuple(self.crashes) + extra

    def all_byzantine(self) -> frozenset[int]:
        """`byzantine` plus the nodes of rules the checkers do not judge."""
        return frozenset(self.byzantine) | {r.node for r in self.adversary if not r.judged}

    def build_cluster(self) -> ClusterConfig:
        """The cluster configuration of this run."""
        if self.cluster is not None:
            return self.cluster
        overrides = dict(self.cluster_overrides)
        # A cluster config needs a client identity, even for a run with no client.
        overrides.setdefault("clients", max(1, self.clients))
        return ClusterConfig.local(self.nodes, **overrides)

    def validate(self, cluster: ClusterConfig) -> None:
        """Raise ConfigError naming the field when a value is out of range."""
        def bad(name: str, message: str) -> ConfigError:
            return ConfigError(message, field=name)

        n = cluster.n
        for name in ("drop", "duplicate", "reorder", "lock_fraction"):
            p = getattr(self, name)
            if not 0.0 <= p <= 1.0:
                raise bad(name, f"must be a probability in [0, 1], got {p}")
        for name in ("delay_ms", "think_ms"):
            lo, hi = getattr(self, name)
            if not 0.0 <= lo <= hi:
                raise bad(name, f"must be LO:HI with 0 <= LO <= HI, got {lo}:{hi}")
        for link, (lo, hi) in self.link_delay_ms.items():
            if not 0.0 <= lo <= hi:
                raise bad("link_delay_ms", f"link {link}: need 0 <= LO <= HI")
        if self.clients < 0 or self.requests < 0 or self.key_count < 1:
            raise bad("clients", "clients and requests must be >= 0, key_count >= 1")
        if self.clients > len(cluster.clients):
            raise bad("clients", f"{self.clients} clients but the cluster config lists "
                      f"{len(cluster.clients)}")
        crashes = self.all_crashes()
        ids = [*(c.node for c in crashes), *(s.node for s in self.silent), *self.byzantine]
        ids += [i for p in self.partitions for g in p.groups for i in g]
        ids += [r.node for r in self.adversary]
        ids += [i for r in self.net_faults for i in r.replica_ids()]
        for i in ids:
            if not 0 <= i < n:
                raise bad("nodes", f"replica id {i} is not in 0..{n - 1}")
        crashed = [c.node for c in crashes]
        if len(set(crashed)) != len(crashed):
            raise bad("crashes", "at most one crash per replica")
        twins = [r.node for r in self.adversary if r.params.get("mode") == "twins"]
        if len(set(twins)) != len(twins):
            raise bad("adversary", "at most one twins rule per replica")
        pointed = {r.node for r in self.adversary if r.behaviour == "crash-at"}
        if pointed & set(crashed):
            raise bad("adversary", f"replica {min(pointed & set(crashed))} has a crash at a "
                      "time and a crash-at rule: give it one kind of crash")
        for c in crashes:
            if c.at_s < 0 or (c.restart_s is not None and c.restart_s <= c.at_s):
                raise bad("crashes", f"replica {c.node}: need 0 <= crash time < restart time")
        for p in self.partitions:
            if p.heal_s is not None and p.heal_s <= p.start_s:
                raise bad("partitions", "a partition must heal after it starts")
            flat = [i for g in p.groups for i in g]
            if len(set(flat)) != len(flat):
                raise bad("partitions", "a replica appears in two groups")
        if self.crypto not in ("sim", "ed25519"):
            raise bad("crypto", f"must be 'sim' or 'ed25519', got {self.crypto!r}")
        if self.liveness_bound_s <= 0 or self.drain_s < 0:
            raise bad("liveness_bound_s", "must be positive (drain_s >= 0)")


# --------------------------------------------------------------------------
# Nodes
# --------------------------------------------------------------------------


@dataclass(slots=True)
class NodeContext:
    """What a node factory or wrapper may use to build one replica incarnation.

    `rng` is this incarnation's own Random, derived from the run's seed, so an
    adversary's choices do not disturb the network's random stream.
    """

    replica_id: int
    incarnation: int
    config: ClusterConfig
    keys: Any
    signer: Any
    verifier: Any
    app: Any
    recovered: tuple[tuple[int, bytes] | None, list[bytes]] | None
    rng: random.Random
    digest_every_batch: bool = True
    reply_auth: Any = None  # this replica's bft.auth.ReplyAuth (None: replies are signed)

    def make_replica(self) -> Any:
        """The honest `Replica` for this context."""
        from bft.replica import Replica

        return Replica(self.config, self.replica_id, signer=self.signer, verifier=self.verifier,
                       app=self.app, recovered=self.recovered,
                       digest_every_batch=self.digest_every_batch, reply_auth=self.reply_auth)


def default_node_factory(ctx: NodeContext) -> Any:
    """An honest replica."""
    return ctx.make_replica()


# --------------------------------------------------------------------------
# Workload
# --------------------------------------------------------------------------


class Workload:
    """A client's random op stream: conflicting KV ops over a few keys, and lock sessions.

    Draws from the simulation's Random only, in the order ops are issued.
    A lock session: `lock`; if granted, a put fenced with the token, then
    `unlock` (as far as the request budget allows).
    """

    def __init__(self, client_id: int, requests: int, key_count: int, lock_fraction: float,
                 rng: random.Random) -> None:
        self.client_id = client_id
        self.remaining = requests
        self.keys = [f"k{i}" for i in range(key_count)]
        self.locks = ["L0", "L1"]
        self.lock_fraction = lock_fraction
        self.rng = rng
        self.seen: dict[str, bytes | None] = {}
        self.holding: tuple[str, int] | None = None
        self.fenced_put_done = False
        self._last: tuple[str, str] | None = None  # (kind, key or lock) of the op in flight
        self._issued = 0

    def next_op(self) -> bytes:
        """The next op (call only while `remaining > 0`)."""
        rng = self.rng
        self.remaining -= 1
        self._issued += 1
        value = f"c{self.client_id}.{self._issued}".encode()
        if self.holding is not None:
            lock, token = self.holding
            if not self.fenced_put_done:
                self.fenced_put_done = True
                key = rng.choice(self.keys)
                self._last = ("put", key)
                self.seen[key] = value
                return ops.put(key, value, fence=(lock, token))
            self.holding = None
            self._last = ("unlock", lock)
            return ops.unlock(lock, token)
        if rng.random() < self.lock_fraction:
            lock = rng.choice(self.locks)
            self._last = ("lock", lock)
            return ops.lock(lock, rng.choice((200, 1000, 5000)))
        key = rng.choice(self.keys)
        # weights 35, 30, 20, 15 (cumulative: the same draw, without summing them each time)
        kind = rng.choices(("put", "get", "cas", "delete"), cum_weights=(35, 65, 85, 100))[0]
        self._last = (kind, key)
        if kind == "put":
            return ops.put(key, value)
        if kind == "get":
            return ops.get(key)
        if kind == "delete":
            return ops.delete(key)
        return ops.cas(key, self.seen.get(key), value)

    def observe(self, result: bytes) -> None:
        """Learn from the accepted result of the op in flight (values seen, lock grants)."""
        if self._last is None:
            return
        kind, name = self._last
        self._last = None
        try:
            decoded = decode_result_untrusted(result)
        except MalformedMessage:
            return
        if kind == "lock" and decoded.kind == "granted" and decoded.token is not None:
            self.holding = (name, decoded.token)
            self.fenced_put_done = False
        elif kind == "get":
            self.seen[name] = decoded.value if decoded.kind == "value" else None
        elif kind == "cas" and decoded.kind == "cas_failed":
            self.seen[name] = decoded.value
        elif kind == "delete" and decoded.kind in ("ok", "not_found"):
            self.seen[name] = None


# --------------------------------------------------------------------------
# Result
# --------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class SimResult:
    """What a run did and whether every check held. `to_dict()` is JSON-ready.

    `view_changes` counts the distinct views above 0 that some correct replica
    moved to (including views of view changes that did not complete);
    `final_view` is the highest view of a correct live replica at the end.
    `requests` is the number of operations the clients' workloads planned.
    `state_digests` maps each correct live replica to the hex digest of its
    application state at the end, `last_executed` to its last executed seq.
    `evidence` lists the proofs correct replicas produced (holder, culprit,
    kind, time, and both signed messages as hex body and signature: anyone
    with the public keys can check them); `behaviours` the adversary rules
    (node, behaviour, window, params, judged); `witness` the evidence
    witness's data, and `evidence_ok` whether every equivocation that reached
    a correct replica left a proof (its misses are also in `violations`);
    `retransmissions` what loss recovery resent (client retransmissions and
    broadcasts, replicas' resends answering STATUS).
    """

    seed: int
    nodes: int
    f: int
    clients: int
    requests: int
    completed_requests: int
    committed_seq: int
    safety_ok: bool
    liveness_ok: bool
    violations: tuple[str, ...]
    view_changes: int
    final_view: int
    messages_sent: int
    messages_delivered: int
    messages_dropped: int
    virtual_seconds: float
    wall_seconds: float
    steps: int
    correct: tuple[int, ...]
    byzantine: tuple[int, ...]
    faults_end_s: float | None  # None: some fault never ends (an unhealed partition)
    state_digests: dict[str, str]
    last_executed: dict[str, int]
    events: dict[str, int]
    network: dict[str, Any]
    checkers: dict[str, Any]
    trace_hash: str
    evidence: tuple[dict[str, Any], ...] = ()
    behaviours: tuple[dict[str, Any], ...] = ()
    witness: dict[str, Any] = field(default_factory=dict)
    evidence_ok: bool = True
    retransmissions: dict[str, int] = field(default_factory=dict)

    @property
    def ok(self) -> bool:
        """True when every safety and liveness check held (and the evidence witness's)."""
        return self.safety_ok and self.liveness_ok and self.evidence_ok

    def to_dict(self) -> dict[str, Any]:
        """Plain data (lists, dicts, numbers, strings) for JSON.

        `byzantine` is the list of unjudged nodes with their behaviours (`{"node", "behaviours"}`,
        a behaviour being a rule's dict, or "unspecified"); the bare ids are `byzantine_nodes`.
        """
        d = asdict(self)
        d["violations"] = list(self.violations)
        d["correct"] = list(self.correct)
        d["byzantine_nodes"] = list(self.byzantine)
        d["byzantine"] = [
            {"node": i, "behaviours": [b for b in self.behaviours if b["node"] == i]
             or ["unspecified"]} for i in self.byzantine]
        d["evidence"] = list(self.evidence)
        d["behaviours"] = list(self.behaviours)
        return d


# --------------------------------------------------------------------------
# The simulation
# --------------------------------------------------------------------------


class _ReplicaIO(EffectIO):
    """Replica i's I/O in the simulator, behind its `EffectRunner`: the simulated network,
    the event heap (its timer) and the checkers. `before` and `after` are the replica's
    (view, in view change) around the current step, for the conduct checker (`conduct`,
    the runner's `on_send` hook of a judged replica)."""

    __slots__ = ("_on_sent", "_silent", "after", "before", "i", "sim", "src")

    def __init__(self, sim: Simulation, i: int) -> None:
        self.sim = sim
        self.i = i
        self.src: Address = ("replica", i)
        self.before: Any = None
        self.after: Any = None
        self._silent = bool(sim.cfg.silent)  # any silence rule at all?
        self._on_sent = sim.checkers.conduct.on_sent  # on every message: one call, not two

    def conduct(self, effect: Any) -> None:
        self._on_sent(self.i, effect.message, self.before, self.after)

    def broadcast(self, message: Any) -> None:
        sim = self.sim
        i = self.i
        if self._silent and sim._silent(i):
            sim._count(sim.drops, "silent")
            return
        payload = sim._encode(message)
        src = self.src
        if not (sim._plain_net and type(payload) is bytes):
            transmit = sim._transmit
            for dst in sim._replica_addr:
                if dst[1] != i:
                    transmit(src, dst, message, payload)
            return
        # on a network no fault touches (`_plain_net`): `_transmit` to every other replica,
        # with the same draws, records and events, and less bookkeeping
        now = sim.now
        lo, span = sim._delay_lo, sim._delay_span
        random_ = sim.rng.random
        size, crc = len(payload), _crc32(payload)
        trace = sim._trace_parts
        heap = sim._heap
        counter = sim._counter
        for dst in sim._replica_addr:
            j = dst[1]
            if j != i:
                at = now + (lo + span * random_()) / 1000.0
                trace.append(_SEND_RECORD(now, at, i, j, size, crc))
                counter += 1
                heapq.heappush(heap, (at, counter, "deliver", (src, dst, payload)))
        sim.net["sent"] += sim.n - 1
        sim._counter = counter
        if len(trace) >= _TRACE_FLUSH:
            sim._flush_trace()

    def send(self, to: int, message: Any) -> None:
        sim = self.sim
        if self._silent and sim._silent(self.i):
            sim._count(sim.drops, "silent")
            return
        if not 0 <= to < sim.n:
            sim._count(sim.drops, "bad_destination")
            return
        sim._transmit(self.src, sim._replica_addr[to], message)

    def reply(self, client: int, reply: Any) -> None:
        sim = self.sim
        if self._silent and sim._silent(self.i):
            sim._count(sim.drops, "silent")
            return
        if not 0 <= client < len(sim.clients):
            sim._count(sim.drops, "bad_destination")
            return
        sim._transmit(self.src, sim._client_addr[client], reply)

    def set_timer(self, at: float, gen: int) -> None:
        sim = self.sim
        sim._push(max(at, sim.now), "timer", self.i, sim.incarnation[self.i], gen)

    def event(self, e: Any) -> None:
        sim, i = self.sim, self.i
        if len(sim.event_log) < 20_000:
            sim.event_log.append((sim.now, i, e.kind, e.fields))
        if i in sim._judged:
            sim._count(sim.events, e.kind)
        if e.kind == "state_transfer":
            sim.checkers.on_state_transfer(i, int(e.fields["seq"]), sim.now)

    def executed(self, e: Any) -> None:
        sim = self.sim
        sim.checkers.on_executed(self.i, e, sim.now)
        if len(sim.event_log) < 20_000:
            sim.event_log.append((sim.now, self.i, "executed", {
                "seq": e.seq, "view": e.view,
                "reqs": [(s.statement.client, s.statement.timestamp) for s in e.batch.requests]}))

    def evidence(self, e: Any) -> None:
        sim, i = self.sim, self.i
        if i in sim._judged:
            sim._count(sim.events, "evidence")
            if len(sim.evidence_log) < 1000:
                sim.evidence_log.append(_proof(i, e, sim.now))
        sim.checkers.on_evidence(i, e, sim.now)


class Simulation:
    """One simulated run. `run(until_s)` may be called once."""

    def __init__(self, config: SimConfig) -> None:
        self.cfg = config
        self.cluster = config.build_cluster()
        config.validate(self.cluster)
        self.n = self.cluster.n
        self.rng = random.Random(config.seed)
        if config.crypto == "ed25519":
            from bft.crypto import Ed25519Keys

            self.keys: Any = Ed25519Keys(self.n, len(self.cluster.clients), seed=config.seed)
        else:
            from bft.crypto import SimKeys

            self.keys = SimKeys(config.seed, n_replicas=self.n,
                                n_clients=len(self.cluster.clients))
        self.verifier = self.keys.verifier()

        self.crashes = config.all_crashes()
        crashed_for_good = {c.node for c in self.crashes if c.restart_s is None}
        self.byzantine = config.all_byzantine()
        self.correct = tuple(i for i in range(self.n)
                             if i not in self.byzantine and i not in crashed_for_good)
        self._judged = frozenset(self.correct)
        self.rules: dict[int, list[BehaviourRule]] = {}
        for rule in config.adversary:
            self.rules.setdefault(rule.node, []).append(rule)
        self.collusion = Collusion()
        self.faults = FaultModel(config.net_faults, self.rng)
        self._info_cache: tuple[tuple[Any, int | None, int], MessageInfo] | None = None
        self.faults_end_s = self._faults_end()
        #: The last scheduled fault change (finite); the run never stops before it.
        self._last_fault_s = max(
            [0.0] + [t for p in config.partitions for t in (p.start_s, p.heal_s) if t is not None]
            + [t for c in self.crashes for t in (c.at_s, c.restart_s) if t is not None]
            + [t for s in config.silent for t in (s.start_s, s.end_s) if t is not None]
            + [t for r in config.adversary for t in (r.start_s, r.ends_at()) if t is not None]
            + [self.faults.last_change()])
        model = None
        if config.app_factory is not None:
            from bft.app import ExecContext

            app_factory = config.app_factory
            model = lambda: (app_factory(), ExecContext)
        elif self.cluster.kv_limits is not DEFAULT_KV_LIMITS:  # quotas configured: the model too
            from bft.app import ExecContext

            kv_limits = self.cluster.kv_limits
            model = lambda: (KVStore(kv_limits), ExecContext)
        self.checkers = CheckerSuite(self.correct, self.verifier,
                                     liveness_bound_s=config.liveness_bound_s,
                                     faults_end_s=self.faults_end_s,
                                     max_clock_skew_us=int(self.cluster.max_clock_skew_s
                                                           * 1_000_000),
                                     client_timestamp_window_us=int(
                                         self.cluster.client_timestamp_window_s * 1_000_000),
                                     **({"model": model} if model is not None else {}))
        watched = self.byzantine - {i for i in range(self.n) if i in self._judged}
        self.witness = (EquivocationWitness(watched, self.verifier,
                                            self.cluster.checkpoint_interval,
                                            self.cluster.log_window)
                        if config.witness and watched else None)
        self.history = History() if config.history else None
        self.evidence_log: list[dict[str, Any]] = []

        self.storage = [MemoryStorage() for _ in range(self.n)]
        self.nodes: list[Any | None] = [None] * self.n
        self.apps: list[Any | None] = [None] * self.n
        self.incarnation = [0] * self.n
        # replica i's effects are carried out by its runner (bft/driver.py), over its storage
        # and the simulated network and heap (_ReplicaIO); it keeps the timer contract too
        self._io = [_ReplicaIO(self, i) for i in range(self.n)]
        self._runners = [EffectRunner(self.storage[i], self._io[i],
                                      on_send=self._io[i].conduct if i in self._judged else None)
                         for i in range(self.n)]
        self.clocks = [SkewedClock(float(config.clock_skew_s.get(i, 0.0)), 0.0,
                                   config.clock_uncertainty_us) for i in range(self.n)]
        self.max_view = [0] * self.n
        self.views_entered: set[int] = set()

        self.clients = [Client(self.cluster, c, self.keys.signer("client", c),
                               self.keys.verifier(), reply_auth=self._reply_auth("client", c),
                               send_to_all=config.send_to_all)
                        for c in range(config.clients)]
        if config.workload_factory is not None:
            self.workloads = [config.workload_factory(c, config.requests, self.rng)
                              for c in range(config.clients)]
        else:
            self.workloads = [Workload(c, config.requests, config.key_count,
                                       config.lock_fraction, self.rng)
                              for c in range(config.clients)]
        self.client_timer_gen = [0] * config.clients
        # addresses, made once: ("replica", i) and ("client", c)
        self._replica_addr: tuple[Address, ...] = tuple(("replica", i) for i in range(self.n))
        self._client_addr: tuple[Address, ...] = tuple(("client", c) for c in range(config.clients))
        self._receivers: dict[int, tuple[Any, Any]] = {}  # replica -> (node, its receive call)
        # no fault can touch a message (no loss, duplication, reordering, partition, network
        # rule or per-link delay): _transmit takes its short way
        self._plain_net = (not config.partitions and not config.drop > 0
                           and not config.duplicate > 0 and not config.reorder > 0
                           and not self.faults.rules and not config.link_delay_ms)
        self._delay_lo = config.delay_ms[0]
        self._delay_span = config.delay_ms[1] - config.delay_ms[0]
        # endpoints in trace records: replica i is i, client c is -1 - c
        self._address_code: dict[Address, int] = {
            **{a: a[1] for a in self._replica_addr}, **{a: -1 - a[1] for a in self._client_addr}}
        self.requested = sum(max(0, int(w.remaining)) for w in self.workloads)
        self.clients_done = 0
        self.completed = 0

        self._heap: list[tuple[float, int, str, tuple[Any, ...]]] = []
        self._counter = 0
        self.now = 0.0
        self.steps = 0
        self.trace = hashlib.sha256()
        self._trace_parts: list[bytes] = []  # trace records not hashed yet (see _trace)
        self.net: dict[str, int] = {"sent": 0, "delivered": 0, "duplicated": 0, "reordered": 0}
        self.drops: dict[str, int] = {}
        self._decoded: dict[int, tuple[Any, Any]] = {}  # id(payload) -> (payload, message)
        self.events: dict[str, int] = {}  # Event kinds (and evidence) of judged replicas
        self.event_log: list[tuple[float, int, str, dict]] = []  # (time, node, kind, fields)
        self.faults_seen: dict[str, int] = {}  # crashes, restarts carried out
        self._crash_now: dict[int, BehaviourRule] = {}  # crash points due at the step's end
        self._crash_points: dict[tuple[int, int], int] = {}  # (node, rule index) -> crashes
        self.sim_violations: list[str] = []
        self.invariant_broken = False
        self._ran = False
        self._done_at: float | None = None
        self._converged_at: float | None = None

    # -- scheduling ------------------------------------------------------

    def _push(self, at: float, kind: str, *args: Any) -> None:
        self._counter += 1
        heapq.heappush(self._heap, (at, self._counter, kind, args))

    def _faults_end(self) -> float:
        cfg = self.cfg
        if cfg.faults_end_s is not None:
            return cfg.faults_end_s
        end = 0.0
        for p in cfg.partitions:
            end = max(end, p.heal_s if p.heal_s is not None else math.inf)
        for c in self.crashes:
            end = max(end, c.at_s if c.restart_s is None else c.restart_s)
        for s in cfg.silent:
            end = max(end, s.end_s if s.end_s is not None else s.start_s)
        # a behaviour or a network fault without an end is part of the weather (a Byzantine
        # node, a lossy link): liveness must hold despite it; those that end count once over
        for r in cfg.adversary:
            end = max(end, r.ends_at() if r.ends_at() is not None else r.start_s)
        for f in cfg.net_faults:
            if f.kind == "partition" and f.stop_s is None:
                end = math.inf
            else:
                end = max(end, f.stop_s if f.stop_s is not None else f.start_s)
        return end

    # -- the run ---------------------------------------------------------

    def run(self, until_s: float) -> SimResult:
        """Run until virtual time `until_s`, or earlier: `drain_s` after every client is done
        and the last scheduled fault (crash, restart, partition, silence change) happened."""
        if self._ran:
            raise RuntimeError("a Simulation runs once; make a new one")
        self._ran = True
        # A run allocates many short-lived objects and keeps many long-lived ones: the cyclic
        # garbage collector, at its default thresholds, spends a tenth of the run scanning
        # them. Collect less often while the run lasts (memory is still freed by reference
        # counting; cycles wait a little longer). Nothing here depends on when it runs.
        thresholds = gc.get_threshold()
        gc.set_threshold(*(max(t, least) for t, least in zip(thresholds, GC_THRESHOLDS)))
        try:
            return self._run(until_s)
        finally:
            gc.set_threshold(*thresholds)

    def _run(self, until_s: float) -> SimResult:
        started = time.perf_counter()  # measured for the report only
        cfg = self.cfg
        for i in range(self.n):
            self._push(0.0, "start", i)
        for crash in self.crashes:
            self._push(crash.at_s, "crash", crash.node)
            if crash.restart_s is not None:
                self._push(crash.restart_s, "restart", crash.node)
        for c in range(cfg.clients):
            workload = self.workloads[c]
            if workload.remaining > 0:
                start = getattr(workload, "start_s", None)
                self._push(self.rng.uniform(0.0, 0.01) if start is None else start, "submit", c)
            else:
                self.clients_done += 1
        stop_at = until_s
        if self.clients_done == len(self.clients):
            stop_at = min(stop_at, self._last_fault_s + cfg.drain_s)
        end = stop_at
        heap = self._heap
        heappop = heapq.heappop
        handlers: dict[str, Callable[..., None]] = {}  # event kind -> its _on_ method
        checks = self.checkers.per_step_checks()  # CheckerSuite.check's calls, one level less
        n_clients = len(self.clients)
        while heap:
            at = heap[0][0]
            if at > stop_at:
                break
            _, _, kind, args = heappop(heap)
            self.now = at
            handler = handlers.get(kind)
            if handler is None:
                handler = handlers[kind] = getattr(self, "_on_" + kind)
            try:
                handler(*args)
            except InvariantViolation as exc:  # a bug in a node: report it with the seed
                node = self._node_of_event(kind, args)
                if node is not None and node in self.byzantine:
                    # a Byzantine node's inner replica tripped over what its own adversary did
                    # (e.g. saw statements signed with its key that it never signed): it is
                    # outside the model, so it just stops, like a crash
                    self._byzantine_broke(node, kind, exc)
                    self.steps += 1
                    continue
                self.sim_violations.append(
                    f"simulation: {kind} {args[0]!r} at {self.now:.6f} s raised "
                    f"InvariantViolation: {exc}")
                self.invariant_broken = True
                end = self.now
                break
            self.steps += 1
            for check in checks:
                check(at)
            if self.clients_done == n_clients:
                # drain: stop drain_s after the clients are done and the last fault happened,
                # once the correct replicas that are up agree on how far they executed (a
                # restarted one may still be catching up: give it up to the liveness bound)
                if self._done_at is None:
                    self._done_at = self.now
                settle = max(self._done_at, self._last_fault_s)
                if self._converged():
                    if self._converged_at is None:
                        self._converged_at = max(self.now, settle)
                    quiet_at = self._converged_at + cfg.drain_s
                else:
                    self._converged_at = None
                    quiet_at = max(settle + cfg.drain_s, settle + cfg.liveness_bound_s)
                stop_at = end = min(until_s, quiet_at)
            if self.steps >= cfg.max_events:
                self.sim_violations.append(
                    f"simulation: event budget of {cfg.max_events} steps exhausted at "
                    f"{self.now:.3f} s")
                end = self.now
                break
        self.now = end
        self.checkers.finish(end)
        if self.history is not None:
            self.history.finish(self._ns(end))
        return self._result(time.perf_counter() - started)

    @staticmethod
    def _node_of_event(kind: str, args: tuple[Any, ...]) -> int | None:
        if kind == "deliver":
            dst = args[1]
            return dst[1] if dst[0] == "replica" else None
        if kind in ("start", "crash", "restart", "timer"):
            return args[0]
        return None

    def _byzantine_broke(self, i: int, kind: str, exc: Exception) -> None:
        self.nodes[i] = None
        self.apps[i] = None
        self.incarnation[i] += 1
        self._count(self.faults_seen, "byzantine_invariant_stops")
        if len(self.event_log) < 20_000:
            self.event_log.append((self.now, i, "byzantine_invariant_stop",
                                   {"during": kind, "error": str(exc)}))

    def _converged(self) -> bool:
        done = {getattr(self.nodes[i], "last_executed", None) for i in self.correct
                if self.nodes[i] is not None and not self._silent(i)}
        return len(done) <= 1

    # -- replicas --------------------------------------------------------

    def _reply_auth(self, kind: str, id: int) -> Any:
        """The `ReplyAuth` of one replica or client, or None when replies are signed."""
        if not self.cfg.reply_macs:
            return None
        from bft.auth import reply_auth_for, sim_reply_auth

        if self.cfg.crypto == "ed25519":
            return reply_auth_for(self.keys.signer(kind, id), self.verifier)
        return sim_reply_auth(self.cfg.seed, kind, id, n_replicas=self.n,
                              n_clients=len(self.cluster.clients))

    def _wall(self, i: int) -> Any:
        """`self.clocks[i].read(SIM_EPOCH_S + self.now)`, computed here the same way (the
        same float operations, the same Interval) without the checks of its arguments."""
        clock = self.clocks[i]
        true_s = SIM_EPOCH_S + self.now
        # SkewedClock.local_s, then read's rounding to microseconds and Interval.around
        center = round((true_s + clock.offset_s + true_s * clock.drift_ppm * 1e-6) * 1e6)
        u = clock.uncertainty_us
        return _interval(center - u, center + u)

    def _new_app(self) -> Any:
        if self.cfg.app_factory is not None:
            return self.cfg.app_factory()
        return KVStore(self.cluster.kv_limits)

    def _build_node(self, i: int, recovered: Any) -> Any:
        cfg = self.cfg
        inc = self.incarnation[i]
        app = self._new_app()
        self.apps[i] = app
        ctx = NodeContext(
            replica_id=i, incarnation=inc, config=self.cluster, keys=self.keys,
            signer=self.keys.signer("replica", i), verifier=self.verifier, app=app,
            recovered=recovered, rng=random.Random(f"{cfg.seed}/replica/{i}/{inc}"),
            digest_every_batch=cfg.digest_every_batch, reply_auth=self._reply_auth("replica", i),
        )
        node = (cfg.node_factory or default_node_factory)(ctx)
        rules = self.rules.get(i, [])
        twins = [r for r in rules if r.params.get("mode") == "twins"]
        if twins:
            from bft.replica import Replica

            twin_b = Replica(self.cluster, i, signer=ctx.signer, verifier=self.keys.verifier(),
                             app=self._new_app(), digest_every_batch=cfg.digest_every_batch,
                             reply_auth=ctx.reply_auth)
            node = TwinsNode(node, twin_b, i, self.n, twins[0].params.get("groups") or None)
        if cfg.wrap_node is not None:
            node = cfg.wrap_node(ctx, node)
        if rules:
            env = BehaviourEnv(i, self.n, ctx.signer, ctx.rng, self.collusion, origin_s=0.0,
                               reply_auth=ctx.reply_auth, config=self.cluster,
                               verifier=self.verifier,
                               request_crash=lambda rule, i=i: self._request_crash(i, rule))
            node = make_node(node, rules, env)
        return node

    def _on_start(self, i: int) -> None:
        node = self._build_node(i, None)
        self.nodes[i] = node
        self._apply(i, node.start(self.now, self._wall(i)))

    def _on_crash(self, i: int) -> None:
        if self.nodes[i] is None:
            return
        self.nodes[i] = None
        self.apps[i] = None
        self.incarnation[i] += 1
        lost = self.storage[i].crash()
        self._runners[i].clear_timer()
        self._count(self.faults_seen, "crashes")
        self._trace("crash", str(i), str(lost).encode())

    def _on_restart(self, i: int) -> None:
        self.incarnation[i] += 1
        storage = self.storage[i]
        node = self._build_node(i, (storage.load_snapshot(), storage.records()))
        self.nodes[i] = node
        self._count(self.faults_seen, "restarts")
        self._trace("restart", str(i), b"")
        self.checkers.on_restart(i, getattr(node, "last_executed", 0), self.now)
        self._apply(i, node.start(self.now, self._wall(i)))

    # -- crash points (adversary/behaviours.py `crash-at`) -----------------

    def _request_crash(self, i: int, rule: BehaviourRule) -> bool:
        """A behaviour of replica i asks for a crash at the end of the current step (the
        hook `BehaviourEnv.request_crash`). Granted unless the rule has made its `times`
        crashes, or one is already due."""
        key = (i, self.cfg.adversary.index(rule))
        if self.nodes[i] is None or i in self._crash_now \
                or self._crash_points.get(key, 0) >= int(rule.params.get("times", 1)):
            return False
        self._crash_points[key] = self._crash_points.get(key, 0) + 1
        self._crash_now[i] = rule
        return True

    def _crash_point(self, i: int, rule: BehaviourRule) -> None:
        """Carry out a granted crash point: the node's effects up to it are applied (its
        storage synced as far as they sent anything); now it crashes like a `Crash` and,
        if the rule says so, restarts from its storage `restart_after_s` later."""
        self._on_crash(i)
        self._count(self.faults_seen, "crash_points")
        if rule.params.get("restart", True):
            at = self.now + float(rule.params.get("restart_after_s", 1.0))
            self._last_fault_s = max(self._last_fault_s, at)
            self._push(at, "point_restart", i, self.incarnation[i])

    def _on_point_restart(self, i: int, inc: int) -> None:
        if self.nodes[i] is None and self.incarnation[i] == inc:
            self._on_restart(i)

    def _on_timer(self, i: int, inc: int, gen: int) -> None:
        node = self.nodes[i]
        if node is None or inc != self.incarnation[i] or not self._runners[i].take_due(self.now, gen):
            return
        self._apply(i, node.tick(self.now, self._wall(i)))

    def _silent(self, i: int) -> bool:
        return any(s.node == i and s.start_s <= self.now
                   and (s.end_s is None or self.now < s.end_s) for s in self.cfg.silent)

    def _apply(self, i: int, effects: list[Any]) -> None:
        """Carry out replica i's effects through its runner (bft/driver.py: its storage
        synced before anything leaves), then note the views it entered and a crash point."""
        if i in self._judged:  # the conduct checker sees what it sends with its state around the step
            io = self._io[i]
            node = self.nodes[i]
            after = None
            if node is not None and i not in self.rules:  # a behaviour may send late
                view, in_vc = getattr(node, "view", None), getattr(node, "in_view_change", None)
                if view is not None and in_vc is not None:
                    after = (view, in_vc)
            io.before, io.after = io.after, after
            if effects:
                self._runners[i].run(effects)
            if after is not None:  # running effects changes no replica's view
                view = after[0]
            else:
                node = self.nodes[i]
                view = getattr(node, "view", 0) if node is not None else 0
            if view > self.max_view[i]:
                self.views_entered.update(range(self.max_view[i] + 1, view + 1))
                self.max_view[i] = view
        elif effects:
            self._runners[i].run(effects)
        if self._crash_now:
            rule = self._crash_now.pop(i, None)
            if rule is not None:
                self._crash_point(i, rule)

    # -- network ---------------------------------------------------------

    def _encode(self, message: Any) -> Any:
        return codec.encode(message) if self.cfg.codec else message

    def _link_delay_s(self, src: Address, dst: Address) -> float:
        lo, hi = self.cfg.delay_ms
        if src[0] == "replica" and dst[0] == "replica":
            lo, hi = self.cfg.link_delay_ms.get((src[1], dst[1]), (lo, hi))
        return self.rng.uniform(lo, hi) / 1000.0

    def _partitioned(self, src: Address, dst: Address) -> bool:
        if src[0] != "replica" or dst[0] != "replica":
            return False
        for p in self.cfg.partitions:
            active = p.start_s <= self.now and (p.heal_s is None or self.now < p.heal_s)
            if active and self._group(p, src[1]) != self._group(p, dst[1]):
                return True
        return False

    @staticmethod
    def _group(p: Partition, i: int) -> int:
        for g, members in enumerate(p.groups):
            if i in members:
                return g
        return -1

    def _transmit(self, src: Address, dst: Address, message: Any, payload: Any = None) -> None:
        cfg = self.cfg
        rng = self.rng
        if payload is None:
            payload = self._encode(message)
        self.net["sent"] += 1
        if self._plain_net and type(payload) is bytes:
            # no fault can touch it: what the code below does then, in short
            now = self.now
            at = now + (self._delay_lo + self._delay_span * rng.random()) / 1000.0
            trace = self._trace_parts
            trace.append(_SEND_RECORD(now, at, self._address_code[src], self._address_code[dst],
                                      len(payload), _crc32(payload)))
            if len(trace) >= _TRACE_FLUSH:
                self._flush_trace()
            self._counter += 1
            heapq.heappush(self._heap, (at, self._counter, "deliver", (src, dst, payload)))
            return
        if cfg.partitions and self._partitioned(src, dst):
            self._count(self.drops, "partition")
            self._trace("cut", f"{src}>{dst}", payload)
            return
        if cfg.drop > 0 and rng.random() < cfg.drop:
            self._count(self.drops, "loss")
            self._trace("drop", f"{src}>{dst}", payload)
            return
        fates = None
        faults = self.faults
        if faults.rules:
            sid = src[1] if src[0] == "replica" else None
            did = dst[1] if dst[0] == "replica" else None
            info = self._message_info(message, sid) if faults.needs_info else None
            fates = [(c.delay_s, c.corrupt) for c in faults.decide(self.now, sid, did, info)]
            if not fates:
                self._count(self.drops, faults.last_drop)
                self._trace("drop", f"{src}>{dst}", payload)
                return
        if cfg.duplicate > 0 and rng.random() < cfg.duplicate:
            self.net["duplicated"] += 1
            fates = (fates or [(0.0, False)]) + [(0.0, False)]
        if fates is None:  # the usual case: one copy, on time, intact
            lo, hi = cfg.delay_ms
            if cfg.link_delay_ms and src[0] == "replica" and dst[0] == "replica":
                lo, hi = cfg.link_delay_ms.get((src[1], dst[1]), (lo, hi))
            delay = (lo + (hi - lo) * rng.random()) / 1000.0  # rng.uniform(lo, hi) / 1000
            if cfg.reorder > 0 and rng.random() < cfg.reorder:
                extra_ms = cfg.reorder_ms if cfg.reorder_ms is not None else 4 * cfg.delay_ms[1]
                delay += rng.uniform(0.0, extra_ms) / 1000.0
                self.net["reordered"] += 1
            at = self.now + delay
            if type(payload) is bytes:  # _trace_send, inlined: the hot path
                trace = self._trace_parts
                trace.append(_SEND_RECORD(self.now, at, self._address_code[src],
                                          self._address_code[dst], len(payload),
                                          _crc32(payload)))
                if len(trace) >= _TRACE_FLUSH:
                    self._flush_trace()
            else:
                self._trace_send(src, dst, at, payload)
            self._counter += 1
            heapq.heappush(self._heap, (at, self._counter, "deliver", (src, dst, payload)))
            return
        for extra_s, corrupt in fates:
            delay = self._link_delay_s(src, dst) + extra_s
            if cfg.reorder > 0 and rng.random() < cfg.reorder:
                extra_ms = cfg.reorder_ms if cfg.reorder_ms is not None else 4 * cfg.delay_ms[1]
                delay += rng.uniform(0.0, extra_ms) / 1000.0
                self.net["reordered"] += 1
            data = payload
            if corrupt:
                data = self._corrupt(src, payload)
                if data is None:
                    continue
            self._trace_send(src, dst, self.now + delay, data)
            self._push(self.now + delay, "deliver", src, dst, data)

    def _message_info(self, message: Any, sid: int | None) -> MessageInfo:
        """What targeted network rules see of `message` sent by replica `sid` (None: a client):
        derived once per message and step (a broadcast reuses it for every destination). A
        message that carries no view belongs to its sender's current view."""
        key = (message, sid, self.steps)
        cached = self._info_cache
        if cached is not None and cached[0][0] is message and cached[0][1:] == key[1:]:
            return cached[1]
        view = None
        if sid is not None:
            view = getattr(self.nodes[sid], "view", None)
            if not isinstance(view, int):
                view = None
        info = message_info(message, view)
        self._info_cache = (key, info)
        return info

    def _corrupt(self, src: Address, payload: Any) -> Any:
        """Flip bytes of one datagram of `payload` as the UDP transport frames it; the frame's
        CRC32C must catch it (counted `bad_checksum`; None). An undetected corruption (a
        checksum collision) delivers corrupted bytes, counted `corrupt_undetected`."""
        self.net["corrupted"] = self.net.get("corrupted", 0) + 1
        if not isinstance(payload, bytes):  # codec off: nothing to flip; the checksum's job
            self._count(self.drops, "bad_checksum")
            return None
        sender = src[1] if src[0] == "replica" else CLIENT_SENDER_BASE + src[1]
        frames = encode_frames(sender, self.net["sent"], payload, self.cluster.max_datagram_bytes)
        k = self.rng.randrange(len(frames))
        try:
            decode_frame_untrusted(corrupt_bytes(frames[k], self.rng),
                                   max_message_bytes=self.cluster.limits.max_message_bytes)
        except FrameError as exc:
            self._count(self.drops, exc.reason)
            return None
        self._count(self.faults_seen, "corrupt_undetected")
        return corrupt_bytes(payload, self.rng)

    def _decode(self, payload: Any) -> Any:
        """The message of `payload`, decoded once for every receiver of one transmission (a
        broadcast's copies share their bytes object; messages are immutable, so receivers
        can share the decoded object as they would share equal ones)."""
        if not self.cfg.codec:
            return payload
        cache = self._decoded
        hit = cache.get(id(payload))
        if hit is not None and hit[0] is payload:
            message = hit[1]
        else:
            try:
                message = codec.decode_untrusted(payload, self.cluster.limits)
            except MalformedMessage:
                message = None
            if len(cache) >= DECODE_CACHE_SIZE:
                cache.clear()
            cache[id(payload)] = (payload, message)  # holds payload: its id stays unique
        if message is None:
            self._count(self.drops, "malformed")
        return message

    def _on_deliver(self, src: Address, dst: Address, payload: Any) -> None:
        kind, j = dst
        if kind == "replica":
            node = self.nodes[j]
            if node is None:
                self._count(self.drops, "crashed")
                return
            hit = self._decoded.get(id(payload))  # `_decode`'s cache hit, inline (the hot path)
            if hit is not None and hit[0] is payload:
                message = hit[1]
                if message is None:
                    self._count(self.drops, "malformed")
                    return
            else:
                message = self._decode(payload)
                if message is None:
                    return
            self.net["delivered"] += 1
            now = self.now
            witness = self.witness
            if witness is None:
                receiver = self._receivers.get(j)
                if receiver is None or receiver[0] is not node:
                    receiver = self._receivers[j] = (node, getattr(node, "receive_from", None))
                if receiver[1] is not None:
                    self._apply(j, receiver[1](src, message, now, self._wall(j)))
                else:
                    self._apply(j, node.receive(message, now, self._wall(j)))
                return
            expected = []
            if j in self._judged and isinstance(node, _replica_type()):
                expected = witness.before(j, node, message, now)
            receiver = self._receivers.get(j)
            if receiver is None or receiver[0] is not node:
                receiver = self._receivers[j] = (node, getattr(node, "receive_from", None))
            if receiver[1] is not None:
                effects = receiver[1](src, message, now, self._wall(j))
            else:
                effects = node.receive(message, now, self._wall(j))
            if expected:
                witness.after(effects, expected)
            self._apply(j, effects)
        else:
            client = self.clients[j]
            if type(payload) is bytes:
                # as the runtime's clients do (bft/node.py `_route_untrusted`): a reply that
                # cannot count (its request done, its replica counted) is dropped, and counted
                # by the client, before it is decoded. Anything else is decoded and checked
                # in full by `Client.receive`.
                claim = peek_reply_untrusted(payload)
                if claim is not None and claim[0] == j and (
                        not client.prescreen(claim[1], claim[2], claim[3])):
                    self.net["delivered"] += 1
                    return
            message = self._decode(payload)
            if message is None:
                return
            self.net["delivered"] += 1
            self._apply_client(j, client.receive(message, self.now))

    # -- clients ---------------------------------------------------------

    def _on_submit(self, c: int) -> None:
        client, workload = self.clients[c], self.workloads[c]
        wait = getattr(workload, "wait_s", None)
        if wait is not None:
            wait_s = float(wait())
            if wait_s > 0:  # a scripted client waiting for its moment
                self._push(self.now + wait_s, "submit", c)
                return
        op = workload.next_op()
        effects = client.submit(op, self.now)
        timestamp = client.outstanding_timestamp
        assert timestamp is not None
        self.checkers.on_invoke(c, timestamp, op, self.now)
        if self.history is not None:
            self.history.invoke(c, op, self._ns(self.now))
        self._apply_client(c, effects)

    def _on_client_timer(self, c: int, gen: int) -> None:
        if gen == self.client_timer_gen[c]:
            self._apply_client(c, self.clients[c].tick(self.now))

    def _apply_client(self, c: int, effects: list[Any]) -> None:
        src: Address = ("client", c)
        for e in effects:
            if isinstance(e, SendTo):
                self._transmit(src, ("replica", e.replica), e.request)
            elif isinstance(e, SendAll):
                payload = self._encode(e.request)
                for j in range(self.n):
                    self._transmit(src, ("replica", j), e.request, payload)
            elif isinstance(e, ClientTimer):
                self.client_timer_gen[c] += 1
                self._push(max(e.at, self.now), "client_timer", c, self.client_timer_gen[c])
            elif isinstance(e, Completed):
                self.completed += 1
                self.checkers.on_complete(c, e.timestamp, e.result, self.now)
                if self.history is not None:
                    self.history.complete(c, e.result, self._ns(self.now), e.agreed_us)
                self.workloads[c].observe(e.result)
                self._trace("complete", f"c{c}/{e.timestamp}", e.result)
                self._next_request(c)
            elif isinstance(e, Failed):  # only with a deadline, which the simulator never sets
                self._count(self.faults_seen, "client_failed")
                if self.history is not None:
                    self.history.info(c, self._ns(self.now), "failed")
                self._next_request(c)

    def _next_request(self, c: int) -> None:
        workload = self.workloads[c]
        if workload.remaining <= 0:
            self.clients_done += 1
            return
        delay = getattr(workload, "next_delay_s", None)
        if delay is not None:
            think_s = float(delay())
        else:
            lo, hi = self.cfg.think_ms
            think_s = self.rng.uniform(lo, hi) / 1000.0 if hi > 0 else 0.0
        self._push(self.now + think_s, "submit", c)

    # -- bookkeeping -----------------------------------------------------

    @staticmethod
    def _ns(t: float) -> int:
        return round(t * 1e9)

    @staticmethod
    def _count(counter: dict[str, int], key: str) -> None:
        counter[key] = counter.get(key, 0) + 1

    # The trace hash (SimResult.trace_hash): SHA-256 over a record of every send, drop, cut,
    # completion, crash and restart, in order. A send is a fixed-size binary record (virtual
    # times, endpoints, payload length and CRC-32); the rarer events are text with their
    # payload. Records are hashed in chunks.

    def _trace(self, kind: str, where: str, payload: Any) -> None:
        data = payload if isinstance(payload, bytes) else repr(payload).encode()
        self._trace_parts.append(f"{kind}|{self.now!r}|{where}|{len(data)}|".encode())
        self._trace_parts.append(data)
        if len(self._trace_parts) >= _TRACE_FLUSH:
            self._flush_trace()

    def _trace_send(self, src: Address, dst: Address, at: float, payload: Any) -> None:
        data = payload if type(payload) is bytes else repr(payload).encode()
        self._trace_parts.append(_SEND_RECORD(self.now, at, self._address_code[src],
                                              self._address_code[dst], len(data),
                                              _crc32(data)))
        if len(self._trace_parts) >= _TRACE_FLUSH:
            self._flush_trace()

    def _flush_trace(self) -> None:
        self.trace.update(b"".join(self._trace_parts))
        self._trace_parts.clear()

    def _trace_hash(self) -> str:
        self._flush_trace()
        return self.trace.hexdigest()

    def _result(self, wall_seconds: float) -> SimResult:
        cfg = self.cfg
        checkers = self.checkers
        live = [i for i in self.correct if self.nodes[i] is not None]
        state_digests = {}
        last_executed = {}
        for i in live:
            app = self.apps[i]
            if app is not None and hasattr(app, "digest"):
                state_digests[str(i)] = app.digest().hex()
            last_executed[str(i)] = int(getattr(self.nodes[i], "last_executed", 0))
        final_view = max((int(getattr(self.nodes[i], "view", 0)) for i in live), default=0)
        witness = self.witness.data() if self.witness is not None else {}
        violations = tuple(checkers.violations) + tuple(self.sim_violations) + tuple(
            f"evidence_witness: {m}" for m in witness.get("missed_examples", ()))
        dropped = sum(self.drops.values())
        network = {**self.net, "dropped": dict(sorted(self.drops.items())),
                   **dict(sorted(self.faults_seen.items())),
                   "faults": self.faults.statistics()}
        return SimResult(
            seed=cfg.seed,
            nodes=self.n,
            f=self.cluster.f,
            clients=len(self.clients),
            requests=self.requested,
            completed_requests=self.completed,
            committed_seq=checkers.agreement.committed_seq,
            safety_ok=checkers.safety_ok and not self.invariant_broken,
            liveness_ok=checkers.liveness_ok and not self.sim_violations,
            violations=violations,
            view_changes=len(self.views_entered),
            final_view=final_view,
            messages_sent=self.net["sent"],
            messages_delivered=self.net["delivered"],
            messages_dropped=dropped,
            virtual_seconds=round(self.now, 9),
            wall_seconds=round(wall_seconds, 6),
            steps=self.steps,
            correct=self.correct,
            byzantine=tuple(sorted(self.byzantine)),
            faults_end_s=None if math.isinf(self.faults_end_s) else self.faults_end_s,
            state_digests=state_digests,
            last_executed=last_executed,
            events=dict(sorted(self.events.items())),
            network=network,
            checkers=checkers.data(),
            trace_hash=self._trace_hash(),
            evidence=tuple(self.evidence_log),
            behaviours=tuple(r.to_dict() for r in cfg.adversary),
            witness=witness,
            evidence_ok=not witness.get("missed", 0),
            retransmissions=self._retransmissions(live),
        )

    def _retransmissions(self, live: Any) -> dict[str, int]:
        """What loss recovery resent: the clients' retransmissions and broadcasts, and the
        messages live replicas resent to peers that said (STATUS) they lacked them."""
        stats = [c.statistics() for c in self.clients]
        resent = 0
        for i in live:
            counters = getattr(self.nodes[i], "counters", None)
            if hasattr(counters, "get"):
                resent += int(counters.get("status_resends", 0))
        return {"client_retransmits": sum(int(s["retransmits"]) for s in stats),
                "client_broadcasts": sum(int(s.get("broadcasts", 0)) for s in stats),
                "replica_status_resends": resent}


def _interval_builder() -> Callable[[int, int], Interval]:
    """Interval(earliest, latest) for bounds known to be ints with earliest <= latest: the same
    object, without __init__'s checks (the slots are filled directly, as bft.codec does)."""
    new, set_earliest, set_latest = (object.__new__, Interval.earliest_us.__set__,  # type: ignore[attr-defined]
                                     Interval.latest_us.__set__)  # type: ignore[attr-defined]

    def make(earliest: int, latest: int) -> Interval:
        interval = new(Interval)
        set_earliest(interval, earliest)
        set_latest(interval, latest)
        return interval

    return make


_interval = _interval_builder()


def _replica_type() -> type:
    from bft.replica import Replica

    return Replica


def _readable(value: Any) -> str:
    """A statement as text for JSON: like its repr, but bytes as hex (never `b'...'`)."""
    if isinstance(value, (bytes, bytearray, memoryview)):
        return bytes(value).hex()
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        inner = ", ".join(f"{f.name}={_readable(getattr(value, f.name))}"
                          for f in dataclasses.fields(value))
        return f"{type(value).__name__}({inner})"
    if isinstance(value, (tuple, list)):
        return "[" + ", ".join(_readable(v) for v in value) + "]"
    return repr(value)


def _signed_dict(signed: Any) -> dict[str, Any]:
    return {"statement": _readable(getattr(signed, "statement", signed)),
            "body": signed.body.hex(), "signature": signed.signature.hex()}


def _proof(holder: int, e: Evidence, now: float) -> dict[str, Any]:
    """A proof a correct replica holds, as plain data anyone can re-verify."""
    return {"holder": holder, "culprit": e.culprit, "kind": e.kind, "time": round(now, 9),
            "first": _signed_dict(e.first), "second": _signed_dict(e.second)}


def simulate(config: SimConfig, until_s: float = 60.0) -> SimResult:
    """Shorthand: `Simulation(config).run(until_s)`."""
    return Simulation(config).run(until_s)
