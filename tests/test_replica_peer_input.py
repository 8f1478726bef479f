"""Peer input never breaks a replica (PROTOCOL.md "Peer input never breaks a replica"; issue 18).

A small cluster (tests/harness.py, n = 4, K = 2 or 4, L = 2K) runs a few requests, maybe a
view change, a replica T = 2 that lags behind (cut off, or missing batches and commits),
and a view change stuck waiting for the faulty replica's NEW-VIEW, so there is a log,
checkpoints and views to attack. Then one faulty replica F (the primary of T's view, the
next primary, or a backup) feeds the correct replica T hypothesis-drawn messages it signed
itself, all *plausible*: views and seqs near T's view and watermarks (and T's open slots),
digests the cluster used (plus the null batch's and a few random ones), proposals carrying
real batches of validly client-signed requests (conflicting ones too), PREPARE, COMMIT,
CHECKPOINT (of real and fake states), VIEW-CHANGE (with certificates built from F's own
signed messages and real ones captured from the run's traffic), NEW-VIEW when F is the
primary of that view (from any subset of the VIEW-CHANGEs it holds, O recomputed or
tampered with), STATUS with arbitrary fields, FETCH, FETCH-STATE, STATE-CHUNK, and replays
of anything captured in the run (any signer). F's own replica keeps running (or falls
silent), and what it sends T passes through F: delivered, withheld, delayed, or swapped for
or followed by a conflicting message (equivocation). Every message goes through the real
codec (encode, then decode_untrusted), as `Net.deliver` does. The attack is interleaved
with deliveries (and losses) of the honest cluster's traffic, cuts of T's links, client
requests and timer ticks at increasing times, so timers, view changes and state transfer
run; the run then settles for a few seconds without attack.

Checked after every step:
* no `receive` or `tick` of any replica raises (PROTOCOL.md "Peer input never
  breaks a replica": whatever a peer sends is dropped or acted on);
* the correct replicas' executed prefixes agree: one batch digest (and one state digest)
  per executed seq (PROTOCOL.md "Normal case", the safety invariant);
* a correct replica never signs two PRE-PREPAREs, PREPAREs or COMMITs with different
  digests for one (view, seq), nor two CHECKPOINTs with different digests for one seq
  (PROTOCOL.md "Evidence": such pairs are proofs against their signer), and no evidence
  ever names a correct replica;
* a correct replica signs a new PREPARE or COMMIT of view v only in view v, outside a view
  change, and never for a seq at or below the checkpoint that view's NEW-VIEW proves stable
  (PROTOCOL.md "Normal case": prepare and commit are steps of view v only; a replica below
  a proven stable checkpoint takes no part in the normal case at or below it).

Three properties share this machinery: any faulty replica and message kind
(`GENERAL`), a Byzantine primary in the normal case (`NORMAL_CASE`), and a Byzantine new
primary that the others wait for (`VIEW_CHANGE`). Planted bugs show the checks have teeth.
A fourth, smaller property checks that state transfer completes whatever one replica sends
(liveness; PROTOCOL.md "State transfer").

Failures the properties found are kept at the end as deterministic, plain regression tests
(crafted schedules, no hypothesis), marked `xfail(strict=True)` while bft/replica.py still
has the bug. `KNOWN_BUGS` switches each one's pattern out of the properties so they keep
looking for new ones: once the lead fixes an item, set its entry to False (or delete it)
and drop the xfail marker.

Bigger runs: `HYPOTHESIS_PROFILE=thorough python -m pytest tests/test_replica_peer_input.py`.
"""

from __future__ import annotations

import copy
import traceback
from dataclasses import dataclass
from typing import Any, Callable

import pytest
from harness import Net, Ops
from hypothesis import HealthCheck, Phase, event, given, note, settings
from hypothesis import strategies as st

from bft import codec
from bft.crypto import batch_digest
from bft.errors import InvariantViolation
from bft.effects import Broadcast, Evidence, Executed, Send
from bft.messages import (
    NULL_BATCH,
    Batch,
    Checkpoint,
    Commit,
    Fetch,
    FetchState,
    NewView,
    PreparedCert,
    Prepare,
    PrePrepare,
    Proposal,
    Request,
    Signed,
    StateChunk,
    Status,
    ViewChange,
)
from bft.replica import STATE_CHUNK_BYTES, Replica
from bft.viewchange import plan_new_view

# Temporary: bugs the properties have found and that bft/replica.py still has. While an entry
# is True, the properties treat a failure of that pattern as expected (the example stops
# there, shown as a hypothesis event) and keep looking for others, and the reproduction
# named beside it is a strict xfail. Once a bug is fixed, set its entry to False (or delete
# it): its reproduction then runs as a plain test, and the properties look for it again.
KNOWN_BUGS: dict[str, bool] = {
    # 1a: a batch that arrives late, while the replica is in a view change, still completes a
    # certificate of the view it left, and it signs a COMMIT there
    # (test_a_replica_in_a_view_change_sends_no_commit_for_the_view_it_left)
    "1a": False,
    # 1b: a replica that enters a view whose NEW-VIEW proves a checkpoint above its low
    # watermark still accepts fresh pre-prepares at or below it
    # (test_a_replica_behind_the_new_view_checkpoint_takes_no_part_below_it)
    "1b": False,
    # 1c: a slot decided by 2f+1 COMMITs while its batch is missing takes a fresh
    # pre-prepare with another digest; _execute_ready then raises InvariantViolation
    # (test_a_decided_slot_keeps_its_digest_against_a_later_pre_prepare)
    "1c": False,
    # 1d: slots made for a NEW-VIEW's pre-prepares keep view -1; the next message for the seq
    # resets them, and a second pre-prepare for (v, n) gets a second PREPARE
    # (test_a_new_view_slot_keeps_its_pre_prepare_and_prepare)
    "1d": False,
    # N1 (new, not in issue 18): a new primary that adopts the NEW-VIEW's checkpoint from its
    # own snapshot proposes fresh (in _make_stable) before next_seq moves past O, signing a
    # second PRE-PREPARE for a seq of its own NEW-VIEW
    # (test_a_new_primary_never_proposes_over_its_own_new_view)
    "N1": False,
    # 2b: a lagging replica takes STATE-CHUNKs from any replica and the count from the first;
    # one bogus chunk ahead of each honest answer keeps it from catching up
    # (test_one_liar_cannot_block_state_transfer and the property
    # test_state_transfer_completes_whatever_one_replica_sends)
    "2b": False,
}


def known(item: str, what: str) -> pytest.MarkDecorator:
    """The reproduction of KNOWN_BUGS[item]: a strict xfail while the entry is True."""
    where = "new, not in issue 18" if item.startswith("N") else f"issue 18 item {item}"
    return pytest.mark.xfail(KNOWN_BUGS.get(item, False), strict=True,
                             reason=f"{where}: {what} (KNOWN_BUGS[{item!r}])")


NULL_DIGEST = batch_digest(NULL_BATCH)
ZERO_DIGEST = b"\0" * 32
TARGET = 2  # the correct replica under attack
CLIENTS = 4


# --------------------------------------------------------------------------
# A harness network that records what it needs to attack and to check
# --------------------------------------------------------------------------


class Stop(Exception):
    """Ends an example early: a replica raised (its state is undefined afterwards)."""


@dataclass
class Violation:
    """A property broken: `kind` is "raised", "agreement", "double_sign", "evidence",
    "vote_outside_view" or "vote_below_checkpoint"."""

    kind: str
    text: str
    replica: int
    exc: BaseException | None = None
    known: str | None = None  # the KNOWN_BUGS entry whose pattern this is, if any


class AttackNet(Net):
    """`Net` that indexes every message it carries (the attacker's knowledge), checks what
    the correct replicas sign and execute as it happens, and catches exceptions raised out
    of a replica."""

    def __init__(self, *args: Any, faulty: set[int] = frozenset(),
                 target_class: type = Replica, **kw: Any) -> None:
        self.faulty = set(faulty)
        self.target_class = target_class  # the class of replica T (a planted bug, say)
        self.violations: list[Violation] = []
        self.trace: list[str] = []
        self.outcomes: list[str] = []  # per injected message: its type and drop reason
        # what the faulty replica's own replica sends T goes through this while attacking
        self.intercept: Callable[[Any], list[Any]] | None = None
        self.traffic: dict[Any, None] = {}  # every wire message seen, in order (a set)
        self.pre_prepares: dict[tuple[int, int, bytes], Signed] = {}
        self.prepares: dict[tuple[int, int, bytes], dict[int, Signed]] = {}
        self.checkpoint_votes: dict[tuple[int, bytes], dict[int, Signed]] = {}
        self.vc_by_view: dict[int, dict[int, Signed]] = {}
        self.batches_seen: dict[bytes, Batch] = {NULL_DIGEST: NULL_BATCH}
        self.requests_seen: dict[tuple[int, int], Signed] = {}
        self.digests_seen: dict[bytes, None] = {NULL_DIGEST: None}
        self.state_digests: dict[bytes, None] = {}
        self.signed_by: dict[tuple, bytes] = {}  # (replica, kind, view, seq) -> digest
        self.votes_sent: set[Signed] = set()  # PREPAREs and COMMITs correct replicas signed
        self.executed_at: dict[int, tuple[bytes, bytes, int]] = {}  # seq -> (d, state d, who)
        super().__init__(*args, **kw)

    def _make(self, i: int, recovered: Any = None) -> Replica:
        if i != TARGET:
            return super()._make(i, recovered)
        usual, self.replica_class = self.replica_class, self.target_class
        try:
            return super()._make(i, recovered)
        finally:
            self.replica_class = usual

    # -- what the attacker learns
    def learn(self, msg: Any) -> None:
        if msg in self.traffic:
            return
        self.traffic[msg] = None
        if isinstance(msg, Proposal):
            self.batches_seen.setdefault(batch_digest(msg.batch), msg.batch)
            for r in msg.batch.requests:
                self._learn_signed(r)
            self._learn_signed(msg.pre_prepare)
        elif isinstance(msg, Signed):
            self._learn_signed(msg)

    def _learn_signed(self, s: Signed) -> None:
        st_ = s.statement
        if isinstance(st_, Request):
            self.requests_seen.setdefault((st_.client, st_.timestamp), s)
        elif isinstance(st_, PrePrepare):
            self.pre_prepares.setdefault((st_.view, st_.seq, st_.digest), s)
            self.digests_seen.setdefault(st_.digest)
        elif isinstance(st_, (Prepare, Commit)):
            self.digests_seen.setdefault(st_.digest)
            if isinstance(st_, Prepare):
                self.prepares.setdefault((st_.view, st_.seq, st_.digest), {}).setdefault(
                    st_.replica, s)
        elif isinstance(st_, Checkpoint):
            self.state_digests.setdefault(st_.state_digest)
            self.checkpoint_votes.setdefault((st_.seq, st_.state_digest), {}).setdefault(
                st_.replica, s)
        elif isinstance(st_, ViewChange):
            self.vc_by_view.setdefault(st_.view, {}).setdefault(st_.replica, s)
            for c in st_.checkpoint_proof:
                self._learn_signed(c)
            for cert in st_.prepared:
                self._learn_signed(cert.pre_prepare)
                for p in cert.prepares:
                    self._learn_signed(p)
        elif isinstance(st_, NewView):
            for v in st_.view_changes:
                self._learn_signed(v)
            for p in st_.pre_prepares:
                self._learn_signed(p)

    # -- what correct replicas sign and execute
    def _signed(self, i: int, kind: str, view: int, seq: int, digest: bytes, what: Any) -> None:
        key = (i, kind, view, seq)
        old = self.signed_by.setdefault(key, digest)
        if old != digest:
            self.violation("double_sign", i, f"replica {i} signed two {kind} for view {view} "
                           f"seq {seq}: {old.hex()[:12]} then {digest.hex()[:12]} ({what!r})")
            r = self.replicas[i]
            nv = r.new_view_msg.statement if r is not None and r.new_view_msg else None
            in_o = nv is not None and nv.view == view and any(
                (p.statement.seq, p.statement.digest) == (seq, old) for p in nv.pre_prepares)
            if kind == "PREPARE" and in_o:
                # the first PREPARE was for the NEW-VIEW's pre-prepare of seq
                self.violations[-1].known = "1d"
            elif kind == "PRE-PREPARE" and in_o and nv.replica == i:
                # the first was in its own NEW-VIEW's O
                self.violations[-1].known = "N1"

    def _check_outgoing(self, i: int, msg: Any, views: tuple[Any, Any]) -> None:
        if isinstance(msg, Proposal):
            pp = msg.pre_prepare.statement
            if pp.replica == i:
                self._signed(i, "PRE-PREPARE", pp.view, pp.seq, pp.digest, msg.pre_prepare)
            return
        if not isinstance(msg, Signed):
            return
        s = msg.statement
        if getattr(s, "replica", None) != i:
            return
        if isinstance(s, (Prepare, Commit)):
            self._signed(i, type(s).__name__.upper(), s.view, s.seq, s.digest, msg)
            if msg not in self.votes_sent:
                self.votes_sent.add(msg)
                # newly signed: the replica was in view s.view, not in a view change, before
                # or after this step (PROTOCOL.md: prepare and commit are steps of view v only)
                r = self.replicas[i]
                nv = r.new_view_msg.statement if r is not None and r.new_view_msg else None
                # entered s.view in this very step: it was changing to s.view before and
                # holds s.view's NEW-VIEW now (set only on entering the view), so it was in
                # s.view when it signed, even if it left it again before the step ended (a
                # proposal held through the view change that proves the new primary
                # equivocated makes it leave at once: PROTOCOL.md 4.5.2 and evidence)
                entered = (views[0] == (s.view, True) and nv is not None
                           and nv.view == s.view)
                if (s.view, False) not in views and not entered:
                    self.violation("vote_outside_view", i, f"replica {i} signed {describe(msg)}"
                                   f" while (view, in view change) was {views[0]} before the "
                                   f"step and {views[1]} after it")
                    if views[0] is not None and views[0][1] and views[1][1]:
                        self.violations[-1].known = "1a"  # in a view change all along
                r = self.replicas[i]
                nv = r.new_view_msg.statement if r is not None and r.new_view_msg else None
                if nv is not None and nv.view == s.view:
                    min_s = max(vc.statement.stable_seq for vc in nv.view_changes)
                    if s.seq <= min_s:
                        # PROTOCOL.md: a replica below a proven stable checkpoint takes no
                        # part in the normal case at or below it
                        self.violation("vote_below_checkpoint", i, f"replica {i} signed "
                                       f"{describe(msg)} in view {s.view}, whose NEW-VIEW "
                                       f"proves checkpoint {min_s} stable")
                        self.violations[-1].known = "1b"
        elif isinstance(s, Checkpoint):
            self._signed(i, "CHECKPOINT", -1, s.seq, s.state_digest, msg)
        elif isinstance(s, NewView):
            for p in s.pre_prepares:
                pp = p.statement
                self._signed(i, "PRE-PREPARE", pp.view, pp.seq, pp.digest, p)

    def _apply(self, i: int, effects: list[Any],
               before: tuple[int, bool] | None = None) -> None:
        correct = i not in self.faulty
        r = self.replicas[i]
        after = (r.view, r.in_view_change) if r is not None else None
        views = (before or after, after)
        for e in effects:
            if isinstance(e, (Send, Broadcast)):
                self.learn(e.message)
                if correct:
                    self._check_outgoing(i, e.message, views)
            elif isinstance(e, Executed):
                if e.state_digest:
                    self.state_digests.setdefault(e.state_digest)
                if correct:
                    first = self.executed_at.setdefault(e.seq, (e.digest, e.state_digest, i))
                    if first[:2] != (e.digest, e.state_digest):
                        self.violation("agreement", i, f"replica {i} executed seq {e.seq} as "
                                       f"{e.digest.hex()[:12]}/{e.state_digest.hex()[:12]}, "
                                       f"replica {first[2]} as {first[0].hex()[:12]}/"
                                       f"{first[1].hex()[:12]}")
            elif isinstance(e, Evidence) and e.culprit not in self.faulty:
                self.violation("evidence", i, f"replica {i} holds evidence ({e.kind}) against "
                               f"correct replica {e.culprit}")
        super()._apply(i, effects)

    def violation(self, kind: str, i: int, text: str, exc: BaseException | None = None) -> None:
        self.violations.append(Violation(kind, text, i, exc))
        self.trace.append(f"!! {kind}: {text}")

    def request(self, client: int, op: bytes, to: int | None = None,
                timestamp: int | None = None) -> Signed:
        signed = super().request(client, op, to, timestamp)
        self.learn(signed)
        return signed

    # -- calls into replicas, guarded
    def call(self, i: int, what: str, fn: Callable[[], list[Any]]) -> None:
        r = self.replicas[i]
        before = (r.view, r.in_view_change) if r is not None else None
        try:
            effects = fn()
        except Exception as exc:  # noqa: BLE001  (the property: nothing may raise)
            tb = "".join(traceback.format_exception(type(exc), exc, exc.__traceback__)[-4:])
            self.violation("raised", i, f"replica {i} raised {type(exc).__name__}: {exc} "
                           f"in {what}\n{tb}", exc)
            raise Stop() from exc
        self._apply(i, effects, before)

    def deliver(self, max_steps: int = 100_000) -> int:
        steps = 0
        while self.queue and steps < max_steps:
            src, dst, msg = self.queue.popleft()
            steps += 1
            if (src, dst) in self.cut or self.replicas[dst] is None:
                continue
            if self.filter is not None and not self.filter(src, dst, msg):
                continue
            if src in self.faulty and dst == TARGET and self.intercept is not None:
                for m in self.intercept(msg):  # the faulty replica decides what T gets instead
                    self.feed(dst, m)
                continue
            wire = codec.decode_untrusted(codec.encode(msg), self.config.limits)
            self.sent_count += 1
            r = self.replicas[dst]
            self.call(dst, f"receive {describe(wire)} from {src}",
                      lambda: r.receive(wire, self.now))
        return steps

    def tick_due(self, also: int | None = None) -> None:
        for i, r in enumerate(self.replicas):
            # the timer contract (bft/driver.py: once per SetTimer); `also` is ticked anyway
            if r is not None and (self.runners[i].take_due(self.now) or i == also):
                self.call(i, f"tick at {self.now:.2f}", lambda r=r: r.tick(self.now))

    def advance(self, seconds: float, step: float = 0.05) -> None:
        end = self.now + seconds
        while self.now < end:
            self.now = min(end, self.now + step)
            self.tick_due()
            self.deliver()

    def feed(self, dst: int, msg: Any) -> None:
        """Deliver a message of the faulty peer to `dst` through the real codec."""
        self.learn(msg)
        wire = codec.decode_untrusted(codec.encode(msg), self.config.limits)
        r = self.replicas[dst]
        if r is None:
            return
        self.trace.append(f"t={self.now:.2f} inject -> {dst}: {describe(wire)}")
        before = dict(r.drops)
        self.call(dst, f"receive {describe(wire)}", lambda: r.receive(wire, self.now))
        kind = type(wire.statement).__name__ if isinstance(wire, Signed) else type(wire).__name__
        dropped = [k for k, c in r.drops.items() if c != before.get(k, 0)]
        self.outcomes.append(f"{kind}: " + (",".join(sorted(dropped)) if dropped else "acted on"))


def describe(msg: Any) -> str:
    if isinstance(msg, Proposal):
        pp = msg.pre_prepare.statement
        reqs = [(r.statement.client, r.statement.timestamp) for r in msg.batch.requests]
        return (f"Proposal(v={pp.view}, seq={pp.seq}, d={pp.digest.hex()[:8]} by {pp.replica}, "
                f"batch_time={msg.batch.batch_time}, reqs={reqs}, "
                f"digest_ok={batch_digest(msg.batch) == pp.digest})")
    if isinstance(msg, Signed):
        s = msg.statement
        if isinstance(s, ViewChange):
            certs = [(c.pre_prepare.statement.view, c.pre_prepare.statement.seq,
                      c.pre_prepare.statement.digest.hex()[:8], len(c.prepares))
                     for c in s.prepared]
            return (f"VIEW-CHANGE(v={s.view}, h={s.stable_seq}, proof={len(s.checkpoint_proof)}, "
                    f"P={certs}, by {s.replica})")
        if isinstance(s, NewView):
            return (f"NEW-VIEW(v={s.view}, V={[v.statement.replica for v in s.view_changes]}, "
                    f"O={[(p.statement.seq, p.statement.digest.hex()[:8]) for p in s.pre_prepares]}"
                    f", by {s.replica})")
        if isinstance(s, StateChunk):
            return (f"STATE-CHUNK(seq={s.seq}, d={s.state_digest.hex()[:8]}, {s.index}/{s.count}, "
                    f"{len(s.data)} bytes, by {s.replica})")
        if hasattr(s, "digest"):
            return f"{type(s).__name__}(v={getattr(s, 'view', '-')}, seq={s.seq}, " \
                   f"d={s.digest.hex()[:8]}, by {s.replica})"
        return repr(s)
    return repr(msg)


# --------------------------------------------------------------------------
# The cluster state under attack
# --------------------------------------------------------------------------


@dataclass(frozen=True)
class Setup:
    k: int = 2  # checkpoint interval; log window 2K
    requests: int = 5  # requests executed before the attack
    view_change: bool = False  # primary 0 cut off with work pending: view 1
    lag: int = 0  # requests T misses, cut off from the other replicas (gaps, state transfer)
    lag_kind: str = "cut"  # or "batches": T gets the PREPAREs of those requests, nothing else
    catch_up: bool = True  # T's links heal (and loss recovery runs) before the stuck phase
    role: str = "backup"  # of the faulty replica F: "primary" of T's view, "next" primary, "backup"
    faulty_silent: bool = False  # F's own replica stops talking during the attack
    # when F is the next view's primary: the others move to that view, F (silent) sends no
    # NEW-VIEW, so they wait for one, and the attacker holds their VIEW-CHANGEs
    stuck: bool = False

    @property
    def faulty(self) -> int:
        """F's id: the primary of view v (T's view after the setup), of view v+1, or of v+2
        when v+1's primary is T; a backup is 3."""
        view = 1 if self.view_change else 0
        return {"primary": view, "next": view + 1 if view + 1 != TARGET else 3,
                "backup": 3}[self.role]


def links(i: int, others: range) -> set[tuple[int, int]]:
    return {(i, o) for o in others if o != i} | {(o, i) for o in others if o != i}


def build(setup: Setup, target_class: type = Replica) -> AttackNet:
    k = setup.k
    net = AttackNet(4, seed=7, clients=CLIENTS, faulty={setup.faulty}, target_class=target_class,
                    checkpoint_interval=k, log_window=2 * k, max_in_flight=2 * k)
    replicas = range(net.n)
    for r in range(setup.requests):
        net.request(r % 2, Ops.put(f"k{r}", b"v%d" % r))
        net.deliver()
    if setup.view_change:
        net.isolate(0)
        net.request(2, Ops.put("vc", b"1"))
        net.advance(6.0, step=0.1)
        net.heal()
        net.advance(0.5, step=0.1)
    if setup.lag:
        if setup.lag_kind == "cut":
            net.cut |= links(TARGET, replicas)  # T still hears clients
        else:
            net.filter = lambda src, dst, msg: dst != TARGET or src == -1 or (
                isinstance(msg, Signed) and isinstance(msg.statement, Prepare))
        for r in range(setup.lag):
            net.request(3, Ops.put(f"lag{r}", b"x"))
            net.deliver()
        if setup.catch_up:
            net.heal()
            net.filter = None
    net.advance(0.3, step=0.1)
    j = setup.faulty
    v = net.replicas[0 if j else 1].view  # a replica that is not lagging
    if setup.stuck and (v + 1) % net.n == j:
        p = v % net.n
        net.cut |= links(j, replicas) | links(p, replicas)
        net.request(3, Ops.put("stuck", b"1"))
        net.advance(6.0, step=0.1)
    net.heal()
    net.filter = None
    if setup.faulty_silent:
        net.cut |= links(j, replicas)
    net.trace.append(f"setup {setup}: views {[(r.view, r.in_view_change) for r in net.replicas]},"
                     f" executed {[r.last_executed for r in net.replicas]}, stable "
                     f"{[r.stable_seq for r in net.replicas]}")
    return net


_SETUP_CACHE: dict[tuple[Setup, type], AttackNet] = {}


def fresh(setup: Setup, target_class: type = Replica) -> AttackNet:
    key = (setup, target_class)
    if key not in _SETUP_CACHE:
        _SETUP_CACHE[key] = build(setup, target_class)
    return copy.deepcopy(_SETUP_CACHE[key])


@st.composite
def setups(draw: Any, role: str | None = None, stuck: bool | None = None) -> Setup:
    k = draw(st.sampled_from([2, 4]))
    if role is None:
        role = draw(st.sampled_from(["primary", "primary", "next", "next", "backup"]))
    view_change = draw(st.booleans()) if role != "next" or not stuck else False
    return Setup(k=k, requests=draw(st.integers(0, 9)), view_change=view_change,
                 lag=draw(st.sampled_from([0, 0, 1, k + 1, 2 * k + 1])),
                 lag_kind=draw(st.sampled_from(["cut", "batches"])),
                 catch_up=draw(st.booleans()), role=role,
                 faulty_silent=draw(st.sampled_from([False, False, False, True]))
                 if stuck is None else False,
                 stuck=draw(st.sampled_from([False, True, True])) if stuck is None else stuck)


# --------------------------------------------------------------------------
# The faulty peer's messages
# --------------------------------------------------------------------------


class Attacker:
    """Draws plausible messages signed by the faulty replica `j` for the target."""

    def __init__(self, net: AttackNet, j: int, target: int, draw: Callable[[Any], Any]) -> None:
        self.net, self.j, self.target, self.draw = net, j, target, draw
        self.signer = net.keys.signer("replica", j)
        self.n = net.n
        self.quorum = net.config.quorum
        self.k = net.config.checkpoint_interval

    @property
    def t(self) -> Replica:
        return self.net.replicas[self.target]  # type: ignore[return-value]

    def sign(self, statement: Any) -> Signed:
        s = self.signer.sign(statement)
        self.net.learn(s)
        return s

    # -- plausible fields
    def view(self) -> int:
        v = self.t.view
        return self.draw(st.sampled_from(sorted({max(0, v + d) for d in (0, 0, 1, -1, 2)})))

    def my_views(self, below: int | None = None) -> list[int]:
        """Views near the target's whose primary is the faulty replica."""
        v = self.t.view
        out = [w for w in range(max(0, v - self.n), v + self.n + 2) if w % self.n == self.j]
        if below is not None:
            out = [w for w in out if w < below]
        return out

    def seq(self) -> int:
        t = self.t
        k = self.k
        lo, hi = t.log.low, t.log.high
        near = [t.last_executed + 1, t.last_executed + 1, lo + 1, hi, hi + 1, lo, hi + k]
        # seqs the target holds but has not executed: waiting for a batch, votes or its turn
        open_ = [q for q in t.log.slots if q > t.last_executed] or near
        return self.draw(st.one_of(st.sampled_from(near), st.sampled_from(sorted(open_)),
                                   st.integers(max(0, lo - k), hi + k)))

    def cp_seq(self) -> int:
        t, k = self.t, self.k
        base = t.log.low // k * k
        return self.draw(st.sampled_from([max(0, base + k * d) for d in (-1, 0, 1, 1, 2, 3, 4)]))

    def digest(self) -> bytes:
        pool = list(self.net.digests_seen)
        return self.draw(st.one_of(st.sampled_from(pool), st.sampled_from(pool),
                                   st.binary(min_size=32, max_size=32)))

    def state_digest(self) -> bytes:
        pool = list(self.net.state_digests) or [ZERO_DIGEST]
        return self.draw(st.one_of(st.sampled_from(pool), st.sampled_from(pool),
                                   st.binary(min_size=32, max_size=32)))

    def request(self) -> Signed:
        known = list(self.net.requests_seen.values())
        if known and self.draw(st.booleans()):
            return self.draw(st.sampled_from(known))
        c = self.draw(st.integers(0, CLIENTS - 1))
        top = max([t for (cc, t) in self.net.requests_seen if cc == c], default=0)
        ts = top + self.draw(st.integers(0, 2))  # 0: another op under a used timestamp
        ts = max(ts, 1)
        op = Ops.put(f"evil{self.draw(st.integers(0, 3))}", b"by %d" % self.j)
        s = self.net.keys.signer("client", c).sign(Request(op, ts, c))
        self.net.learn(s)
        return s

    def batch(self) -> Batch:
        if self.draw(st.integers(0, 5)) == 0:
            return self.draw(st.sampled_from(list(self.net.batches_seen.values())))
        reqs = tuple(self.request() for _ in range(self.draw(st.integers(0, 3))))
        wall = int(self.net.now * 1_000_000)
        skew = int(self.net.config.max_clock_skew_s * 1_000_000)
        bt = self.draw(st.sampled_from([wall, wall, wall + 1, wall - skew // 2, wall + skew // 2,
                                        wall - 2 * skew, wall + 2 * skew,
                                        self.t.last_batch_time, 0]))
        return Batch(max(0, bt), reqs)

    # -- messages
    def proposal(self) -> Proposal:
        views = self.my_views()
        if self.t.view in views and self.draw(st.integers(0, 3)):
            v = self.t.view  # the faulty replica is the target's primary
        else:
            v = self.draw(st.one_of(st.sampled_from(views), st.just(self.view())))
        batch = self.batch()
        d = batch_digest(batch)
        if self.draw(st.integers(0, 7)) == 0:
            d = self.digest()
        return Proposal(self.sign(PrePrepare(v, self.seq(), d, self.j)), batch)

    def vote(self, kind: type) -> Signed:
        v = self.view()
        seq = self.seq()
        # a digest the target holds for seq (agreeing or conflicting with it) or any other
        slot = self.t.log.get(seq)
        local = [d for d in (slot.digest, slot.decided) if d] if slot else []
        d = self.draw(st.sampled_from(local)) if local and self.draw(st.booleans()) \
            else self.digest()
        return self.sign(kind(v, seq, d, self.j))

    def checkpoint(self) -> Signed:
        return self.sign(Checkpoint(self.cp_seq(), self.state_digest(), self.j))

    def checkpoint_proof(self, valid: bool) -> tuple[int, bytes, tuple[Signed, ...]]:
        """(h, digest, C) for a VIEW-CHANGE: a real stable checkpoint proof (the faulty
        replica's own CHECKPOINT added where it lacks one), the genesis one, or (not valid) a
        fake or one-short one."""
        proven = sorted((seq, d) for (seq, d), votes in self.net.checkpoint_votes.items()
                        if len(votes) + (self.j not in votes) >= self.quorum)
        choice = self.draw(st.integers(0, 4))
        if choice == 0 or not proven and (valid or choice < 3):
            return 0, ZERO_DIGEST, ()
        if valid or choice < 3:
            seq, d = self.draw(st.sampled_from(proven)) if proven else (0, ZERO_DIGEST)
        else:  # a fake one: the faulty replica's own vote and whatever matches
            seq, d = self.cp_seq(), self.state_digest()
        votes = dict(self.net.checkpoint_votes.get((seq, d), {}))
        if self.j not in votes and (valid or self.draw(st.booleans())):
            votes[self.j] = self.sign(Checkpoint(seq, d, self.j))
        proof = tuple(votes[r] for r in sorted(votes))
        if not valid and self.draw(st.booleans()):
            proof = proof[: self.quorum - 1]
        return seq, d, proof

    def cert(self, below: int, low: int, valid: bool) -> PreparedCert | None:
        """A prepared certificate for a view below `below` and a seq in (low, low + L]: a real
        pre-prepare and real prepares captured from the traffic, plus the faulty replica's own
        prepare; or (not valid) one short, one outside the window, or one of its own
        pre-prepares (when it was primary) with whatever prepares match."""
        high = low + self.net.config.log_window
        usable = []
        for (v, seq, d) in sorted(self.net.pre_prepares):
            if v >= below or seq <= low or (seq > high and valid):
                continue
            votes = set(self.net.prepares.get((v, seq, d), {})) | {self.j}
            votes.discard(v % self.n)
            if len(votes) >= self.quorum - 1 or not valid:
                usable.append((v, seq, d))
        mine = self.my_views(below)
        own = not valid and mine and (not usable or self.draw(st.integers(0, 2)) == 0)
        if own:
            v = self.draw(st.sampled_from(mine))
            seq, d = self.seq(), self.digest()
            pp = self.sign(PrePrepare(v, seq, d, self.j))
        elif usable:
            v, seq, d = self.draw(st.sampled_from(usable))
            pp = self.net.pre_prepares[(v, seq, d)]
        else:
            return None
        votes = dict(self.net.prepares.get((v, seq, d), {}))
        votes.pop(v % self.n, None)
        if v % self.n != self.j and self.j not in votes:
            votes[self.j] = self.sign(Prepare(v, seq, d, self.j))
        prepares = tuple(votes[r] for r in sorted(votes))[: self.quorum - 1]
        if not valid and self.draw(st.booleans()):
            prepares = prepares[: self.quorum - 2]
        return PreparedCert(pp, prepares)

    def view_change(self, view: int | None = None) -> Signed:
        v = self.t.view
        if view is None:
            view = self.draw(st.sampled_from([v + 1, v + 1, v, v + 2, max(0, v - 1)]))
        valid = self.draw(st.integers(0, 3)) > 0
        seq, d, proof = self.checkpoint_proof(valid)
        certs: dict[int, PreparedCert] = {}
        for _ in range(self.draw(st.integers(0, 3))):
            c = self.cert(view, seq, valid or self.draw(st.booleans()))
            if c is not None:
                certs.setdefault(c.pre_prepare.statement.seq, c)
        return self.sign(ViewChange(view, seq, d, proof, tuple(certs.values()), self.j))

    def new_view(self) -> Signed:
        views = [w for w in self.my_views() if w >= max(1, self.t.view)]
        if not views:
            return self.view_change()
        w = self.draw(st.sampled_from([views[0], views[0], views[0], views[-1]]))
        have = dict(self.net.vc_by_view.get(w, {}))
        if self.j not in have or self.draw(st.booleans()):
            have[self.j] = self.view_change(w)
        senders = sorted(have)
        if self.draw(st.integers(0, 3)):
            chosen = self.draw(st.permutations(senders))[: self.quorum]
        else:
            chosen = self.draw(st.lists(st.sampled_from(senders), unique=True))
        vcs = tuple(have[r] for r in sorted(chosen))
        try:
            plan = plan_new_view([s.statement for s in vcs], NULL_DIGEST)
            digests = list(plan.digests)
        except (AssertionError, ValueError):
            digests = []
        mutate = self.draw(st.integers(0, 8))
        if mutate == 1 and digests:
            digests.pop()
        elif mutate == 2 and digests:
            i = self.draw(st.integers(0, len(digests) - 1))
            digests[i] = (digests[i][0], self.digest())
        elif mutate == 3:
            digests.append(((digests[-1][0] if digests else self.t.log.low) + 1, self.digest()))
        pps = tuple(self.sign(PrePrepare(w, seq, d, self.j)) for seq, d in digests)
        return self.sign(NewView(w, vcs, pps, self.j))

    def status(self) -> Signed:
        def anything(near: int) -> int:
            return self.draw(st.one_of(st.just(near), st.just(near), st.integers(0, 2**63 - 1)))

        return self.sign(Status(
            anything(self.view()), anything(self.seq()), anything(self.seq()),
            tuple(self.seq() for _ in range(self.draw(st.integers(0, 3)))),
            tuple(self.seq() for _ in range(self.draw(st.integers(0, 3)))),
            self.draw(st.sampled_from([0, 1, 1, 2, 2**63 - 1])), self.j))

    def fetch(self) -> Signed:
        return self.sign(Fetch(self.view(), self.seq(), self.digest(), self.j))

    def fetch_state(self) -> Signed:
        t = self.t
        seq, d = (t.log.low, t.stable_digest) if t.stable_digest and self.draw(st.booleans()) \
            else (self.cp_seq(), self.state_digest())
        return self.sign(FetchState(seq, d, self.j))

    def state_chunk(self) -> Signed:
        t = self.t
        tr = t.transfer
        if tr is not None and self.draw(st.integers(0, 3)):
            seq, d = tr.seq, tr.digest
        else:
            seq, d = self.cp_seq(), self.state_digest()
        snaps = self.snapshots()
        data = snaps.get(d)
        count = max(1, -(-len(data) // STATE_CHUNK_BYTES)) if data is not None else 1
        count = self.draw(st.sampled_from([count, count, count + 1, 2, 0, 2**40]))
        index = self.draw(st.sampled_from([0, 0, 1, count - 1 if count else 0, count]))
        how = self.draw(st.integers(0, 2))
        if data is not None and how == 0:
            chunk = data[index * STATE_CHUNK_BYTES:(index + 1) * STATE_CHUNK_BYTES]
        elif data is not None and how == 1 and data:
            chunk = data[:-1] + bytes([data[-1] ^ 1])
        else:
            chunk = self.draw(st.binary(max_size=48))
        return self.sign(StateChunk(seq, d, index, count, chunk, self.j))

    def snapshots(self) -> dict[bytes, bytes]:
        out: dict[bytes, bytes] = {}
        for r in self.net.replicas:
            if r is None:
                continue
            for d, data in r.own_snapshots.values():
                out.setdefault(d, data)
            if r.stable_snapshot is not None:
                out.setdefault(r.stable_digest, r.stable_snapshot)
        return out

    def instead_of(self, msg: Any) -> list[Any]:
        """What T gets instead of a message the faulty replica's own (honest) replica sends it:
        the message, nothing, a conflicting one (equivocation), both, or it later."""
        if isinstance(msg, Signed) and isinstance(msg.statement, (Status, Request)):
            return [msg]
        how = self.draw(st.sampled_from(["pass", "pass", "pass", "drop", "equivocate",
                                         "equivocate", "both", "later", "equivocate_later"]))
        if how == "pass":
            return [msg]
        kind = type(msg.statement if isinstance(msg, Signed) else msg).__name__
        self.net.outcomes.append(f"intercepted {kind}: {how}")
        self.net.trace.append(f"t={self.net.now:.2f} {how} {describe(msg)} to {self.target}")
        if how == "drop":
            return []
        if how == "later":
            self.net.queue.append((-2, self.target, msg))  # -2: as if from the faulty replica
            return []
        s = msg.statement if isinstance(msg, Signed) else None
        if isinstance(msg, Proposal):
            pp = msg.pre_prepare.statement
            batch = self.batch()
            other = Proposal(self.sign(PrePrepare(pp.view, pp.seq, batch_digest(batch), self.j)),
                             batch)
        elif isinstance(s, (Prepare, Commit)):
            other = self.sign(type(s)(s.view, s.seq, self.digest(), self.j))
        elif isinstance(s, Checkpoint):
            other = self.sign(Checkpoint(s.seq, self.state_digest(), self.j))
        elif isinstance(s, ViewChange):
            other = self.view_change(s.view)
        elif isinstance(s, NewView):
            other = self.new_view()
        else:
            other = self.message()
        if how == "equivocate_later":  # T gets the conflicting one after what follows
            self.net.queue.append((-2, self.target, other))
            return []
        if how == "equivocate":
            return [other]
        return [msg, other] if self.draw(st.booleans()) else [other, msg]

    def replay(self) -> Any:
        return self.draw(st.sampled_from(list(self.net.traffic)))

    def message(self, kinds: tuple[str, ...] = ()) -> Any:
        kind = self.draw(st.sampled_from(kinds or GENERAL.kinds))
        if kind == "prepare":
            return self.vote(Prepare)
        if kind == "commit":
            return self.vote(Commit)
        return getattr(self, kind)()


# --------------------------------------------------------------------------
# One attack run
# --------------------------------------------------------------------------

@dataclass(frozen=True)
class Plan:
    """What an attack run draws from: its steps and the kinds of message injected (repeats
    weigh more)."""

    actions: tuple[str, ...]
    kinds: tuple[str, ...]


GENERAL = Plan(
    actions=("inject", "inject", "inject", "inject", "inject", "deliver", "deliver", "deliver",
             "drop", "lose_to_target", "cut_target", "tick", "tick", "request", "request"),
    kinds=("proposal", "proposal", "proposal", "prepare", "commit", "commit", "checkpoint",
           "view_change", "view_change", "new_view", "new_view", "status", "fetch",
           "fetch_state", "state_chunk", "replay", "replay"))
# a Byzantine primary in the normal case: proposals (conflicting ones too) and votes for the
# seqs in flight, finely interleaved with the honest traffic
NORMAL_CASE = Plan(
    actions=("inject", "inject", "inject", "deliver", "deliver", "deliver", "lose_to_target",
             "lose_to_target", "request", "request", "tick"),
    kinds=("proposal", "proposal", "proposal", "proposal", "commit", "prepare", "replay",
           "fetch", "status"))
# the faulty replica is the primary of the view the others wait to enter
VIEW_CHANGE = Plan(
    actions=("inject", "inject", "inject", "inject", "deliver", "deliver", "deliver",
             "lose_to_target", "cut_target", "tick", "tick", "request"),
    kinds=("new_view", "new_view", "new_view", "proposal", "proposal", "proposal", "prepare",
           "commit", "commit", "view_change", "state_chunk", "checkpoint", "replay"))
LOSABLE = (Proposal, Proposal, Prepare, Commit, Checkpoint, Status, ViewChange, NewView, object)


def attack(net: AttackNet, j: int, draw: Callable[[Any], Any], steps: int,
           plan: Plan = GENERAL, settle_s: float = 3.0) -> None:
    """Feed the target the faulty replica's messages, interleaved with the honest traffic,
    client requests and timers; then let the cluster settle without attack. Violations are
    collected in `net.violations` (the run stops at the first exception)."""
    attacker = Attacker(net, j, TARGET, draw)
    net.faulty.add(-2)
    net.intercept = attacker.instead_of
    try:
        for _ in range(steps):
            action = draw(st.sampled_from(plan.actions))
            if action == "inject":
                net.feed(TARGET, attacker.message(plan.kinds))
            elif action == "deliver":
                n = draw(st.sampled_from([1, 2, 3, 5, 10, 100_000]))
                net.trace.append(f"t={net.now:.2f} deliver {n}")
                net.deliver(n)
            elif action == "drop":
                n = draw(st.integers(1, 5))
                net.trace.append(f"t={net.now:.2f} drop {n}")
                for _ in range(min(n, len(net.queue))):
                    net.queue.popleft()
            elif action == "lose_to_target":
                kind = draw(st.sampled_from(LOSABLE))
                net.trace.append(f"t={net.now:.2f} lose the queued {kind.__name__}s to {TARGET}")
                net.queue = type(net.queue)(
                    (src, dst, m) for src, dst, m in net.queue
                    if dst != TARGET or not isinstance(
                        m.statement if isinstance(m, Signed) else m, kind))
            elif action == "cut_target":
                cut = links(TARGET, range(net.n))
                if cut <= net.cut:
                    net.cut -= cut
                    net.trace.append(f"t={net.now:.2f} heal {TARGET}'s links")
                else:
                    net.cut |= cut
                    net.trace.append(f"t={net.now:.2f} cut {TARGET}'s links")
            elif action == "tick":
                net.now += draw(st.sampled_from([0.05, 0.1, 0.3, 1.0, 2.5]))
                net.trace.append(f"t={net.now:.2f} tick")
                net.tick_due(also=TARGET)
            else:
                c = draw(st.integers(0, CLIENTS - 1))
                to = draw(st.sampled_from([None, None, TARGET, 0, 1]))
                net.trace.append(f"t={net.now:.2f} request by client {c} to {to}")
                net.request(c, Ops.put(f"c{c}", b"%d" % len(net.trace)), to=to)
            if net.violations:
                return
        net.cut -= links(TARGET, range(net.n))
        net.intercept = None
        net.trace.append(f"t={net.now:.2f} settle {settle_s}s, with one more request")
        net.request(CLIENTS - 1, Ops.put("settle", b"1"))
        net.advance(settle_s, step=0.1)
    except Stop:
        pass


def known_bug(net: AttackNet) -> str | None:
    """The KNOWN_BUGS entry whose pattern the run's first violation matches, if switched on."""
    v = net.violations[0]
    if v.kind == "raised" and isinstance(v.exc, InvariantViolation) \
            and "does not match its digest" in str(v.exc):
        v.known = "1c"
    return v.known if v.known and KNOWN_BUGS.get(v.known) else None


def check(net: AttackNet) -> None:
    if not net.violations:
        return
    bug = known_bug(net)
    if bug is not None:
        event(f"known bug {bug} (KNOWN_BUGS)")
        return
    trace = "\n".join(net.trace[-60:])
    v = net.violations[0]
    raise AssertionError(f"{v.kind}: {v.text}\n--- trace (last 60 lines) ---\n{trace}")


# --------------------------------------------------------------------------
# The properties
# --------------------------------------------------------------------------


def run_property(setup: Setup, data: st.DataObject, plan: Plan,
                 target_class: type = Replica) -> None:
    net = fresh(setup, target_class)
    steps = data.draw(st.integers(1, 30), label="steps")
    attack(net, setup.faulty, data.draw, steps, plan)
    note("\n".join(net.trace[-80:]))
    for outcome in set(net.outcomes):
        event(outcome)
    check(net)


PROPERTY = settings(deadline=None, suppress_health_check=[HealthCheck.too_slow,
                                                          HealthCheck.data_too_large])


@PROPERTY
@given(setup=setups(), data=st.data())
def test_no_peer_input_breaks_a_correct_replica(setup: Setup, data: st.DataObject) -> None:
    """PROTOCOL.md "Peer input never breaks a replica", "Normal case" (agreement; prepare and
    commit are steps of one view), "Evidence" (a correct replica never signs conflicting
    messages): any faulty replica, any kind of message. See the module docstring."""
    run_property(setup, data, GENERAL)


@PROPERTY
@given(setup=setups(role="primary", stuck=False), data=st.data())
def test_a_byzantine_primary_cannot_break_a_correct_backup(setup: Setup,
                                                           data: st.DataObject) -> None:
    """The same properties against a Byzantine primary in the normal case (PROTOCOL.md
    "Normal case": rule 4, a decided digest never changes): it equivocates, withholds its
    proposals from T, and sends conflicting proposals and votes for the seqs in flight."""
    run_property(setup, data, NORMAL_CASE)


@PROPERTY
@given(setup=setups(role="next", stuck=True), data=st.data())
def test_a_byzantine_new_primary_cannot_break_a_correct_replica(setup: Setup,
                                                                data: st.DataObject) -> None:
    """The same properties when the others wait in a view change for the faulty replica's
    NEW-VIEW (PROTOCOL.md "View change": the backup recomputes O; slots filled from a NEW-VIEW
    belong to the new view; "State transfer"): it sends NEW-VIEWs built from any subset of the
    VIEW-CHANGEs it holds, then proposals and votes in its view."""
    run_property(setup, data, VIEW_CHANGE)


# --------------------------------------------------------------------------
# The checker has teeth: planted bugs in T are found
# --------------------------------------------------------------------------


class ForgetsItsPrePrepare(Replica):
    """Planted bug (rule 4 of PROTOCOL.md "Normal case"): a pre-prepare with another digest for
    a (view, seq) it already accepted replaces the first, and the replica prepares again."""

    def _on_proposal(self, proposal: Proposal) -> None:
        pp = proposal.pre_prepare.statement
        slot = self.log.get(pp.seq)
        if (slot is not None and slot.view == pp.view == self.view and slot.decided is None
                and slot.pre_prepare is not None and slot.digest != pp.digest):
            slot.reset_view(self.view)
        super()._on_proposal(proposal)


class QuorumOfOne(Replica):
    """Planted bug (PROTOCOL.md "Normal case": prepared needs 2f PREPAREs, committed-local
    2f+1 COMMITs): every quorum is one, so the replica executes whatever the primary sends it."""

    def __init__(self, *args: Any, **kw: Any) -> None:
        super().__init__(*args, **kw)
        self.quorum = 1


def failures_found(target_class: type, setup: st.SearchStrategy[Setup], plan: Plan,
                   max_examples: int) -> dict[str, str]:
    """Run the property's examples against a planted bug, deterministically (derandomized, no
    database): the first message of each kind of violation found."""
    found: dict[str, str] = {}

    @settings(max_examples=max_examples, derandomize=True, database=None, deadline=None,
              suppress_health_check=list(HealthCheck))
    @given(setup=setup, data=st.data())
    def run(setup: Setup, data: st.DataObject) -> None:
        net = fresh(setup, target_class)
        attack(net, setup.faulty, data.draw, data.draw(st.integers(1, 30)), plan)
        for v in net.violations:
            found.setdefault(v.kind, v.text)

    run()
    return found


def test_the_property_finds_a_backup_that_prepares_two_digests():
    """Teeth for the double-signing check (PROTOCOL.md "Evidence"): a backup that lets a
    second pre-prepare replace the first signs two PREPAREs for one (view, seq) when the
    Byzantine primary equivocates; the property reports it. The honest Replica passes the
    same examples (test_a_byzantine_primary_cannot_break_a_correct_backup)."""
    found = failures_found(ForgetsItsPrePrepare, setups(role="primary", stuck=False),
                           NORMAL_CASE, max_examples=20)
    assert "double_sign" in found, found
    assert found["double_sign"].startswith("replica 2 signed two PREPARE"), found


def test_the_property_finds_a_replica_that_executes_what_only_the_primary_says():
    """Teeth for the agreement check (PROTOCOL.md "Normal case", safety invariant): a replica
    whose quorums are of one executes the Byzantine primary's conflicting batch while the
    others execute the batch they agreed on; the property reports the split."""
    found = failures_found(QuorumOfOne, setups(role="primary", stuck=False), NORMAL_CASE,
                           max_examples=20)
    assert "agreement" in found, found
    assert found["agreement"].startswith("replica "), found


# --------------------------------------------------------------------------
# Failures the property found: minimal deterministic reproductions
# --------------------------------------------------------------------------


def _request(net: AttackNet, client: int, t: int, op: bytes) -> Signed:
    return net.keys.signer("client", client).sign(Request(op, t, client))


@known("1c", "a decided slot whose batch is missing accepts a pre-prepare with another "
       "digest; _execute_ready raises")
def test_a_decided_slot_keeps_its_digest_against_a_later_pre_prepare():
    """PROTOCOL.md "Normal case": a slot that has committed-local never changes its digest (a
    later pre-prepare with another digest is dropped); "Peer input never breaks a replica".

    Byzantine primary 0 withholds its PRE-PREPARE for seq 3 from replica 2, which still
    decides seq 3 from the others' 2f+1 COMMITs and asks for the batch. Before the batch
    arrives, primary 0 sends replica 2 a fresh PRE-PREPARE for (0, 3) with another batch;
    replica 2 accepts it as the slot's batch. The next request's execution reaches seq 3.

    Found by test_a_byzantine_primary_cannot_break_a_correct_backup. Fails on c9f30a9 (and
    on b2e6454): `_execute_ready` raises InvariantViolation "batch of seq 3 does not match its
    digest" out of `receive`."""
    net = fresh(Setup(role="primary", requests=2))
    t = net.replicas[TARGET]
    net.intercept = lambda m: [] if isinstance(m, Proposal) else [m]  # 0 withholds from 2
    net.request(1, Ops.put("x", b"1"))
    try:
        while net.queue:
            net.deliver(1)
            slot = t.log.get(3)
            if slot is not None and slot.decided is not None:
                break
        assert slot is not None and slot.decided is not None and slot.batch is None
        net.intercept = None
        primary = net.keys.signer("replica", 0)
        other = Batch(int(net.now * 1_000_000), (_request(net, 3, 1, Ops.put("evil", b"1")),))
        net.feed(TARGET, Proposal(primary.sign(PrePrepare(0, 3, batch_digest(other), 0)), other))
        net.request(1, Ops.put("y", b"2"))
        net.deliver()
    except Stop:
        pass
    assert not net.violations, net.violations[0].text
    assert t.last_executed == 4


@known("1d", "slots made for a NEW-VIEW's pre-prepares keep view -1; a later pre-prepare "
       "gets a second PREPARE")
def test_a_new_view_slot_keeps_its_pre_prepare_and_prepare():
    """PROTOCOL.md "Normal case": slots filled from a NEW-VIEW's O belong to v+1, and rule 4 (a
    backup accepts no second digest for (v, seq)); "Evidence": a correct replica never signs
    two PREPAREs for one (v, seq).

    Replica 2 is cut off while the others execute seqs 2..10 (K = 4, L = 8: their stable
    checkpoint is 8, replica 2's is 0). Primary 0 is then cut off with work pending and the
    others (replica 2 too) change view to 1. Primary 1's NEW-VIEW re-proposes seqs 9 and 10,
    which replica 2's log never held: it makes their slots (view -1), prepares both, and
    catches up by state transfer and the log. Primary 1, Byzantine, then sends replica 2 a
    fresh PRE-PREPARE(1, 10, d') with another batch.

    Found by test_a_byzantine_new_primary_cannot_break_a_correct_replica. Fails on c9f30a9
    (and on b2e6454): a message for seq 10 reset the view -1 slot, wiping the NEW-VIEW's
    pre-prepare and replica 2's PREPARE(1, 10, d); it accepts d' and signs PREPARE(1, 10, d')
    (although seq 10 has committed and executed there: the slot's batch becomes d')."""
    net = fresh(Setup(k=4, requests=1, lag=9, catch_up=False, role="next", stuck=True))
    t = net.replicas[TARGET]
    net.now += 0.1
    net.tick_due(also=TARGET)
    net.deliver()
    assert (t.view, t.in_view_change) == (1, False)
    nv = t.new_view_msg.statement
    assert [p.statement.seq for p in nv.pre_prepares] == [9, 10]
    primary = net.keys.signer("replica", 1)
    other = Batch(int(net.now * 1_000_000), ())
    try:
        net.feed(TARGET, Proposal(primary.sign(PrePrepare(1, 10, batch_digest(other), 1)), other))
    except Stop:
        pass
    assert not net.violations, net.violations[0].text


@known("1a", "a late batch completes a certificate of the view the replica left; it "
       "commits while in a view change")
def test_a_replica_in_a_view_change_sends_no_commit_for_the_view_it_left():
    """PROTOCOL.md "Normal case": prepare and commit are steps of view v only: a replica in a
    view change, or in another view, sends no PREPARE or COMMIT for v, even when a batch it
    lacked arrives late.

    Replica 2 gets only the PREPAREs of seq 2 in view 0 (no batch, no COMMIT), then the
    others wait in a view change for primary 1. Primary 1's NEW-VIEW re-proposes seq 2;
    replica 2 still lacks the batch (its copies are lost) and gets PREPAREs of view 1 from
    replicas 0 and 3, but no COMMIT. Primary 1, Byzantine, sends it two conflicting
    PRE-PREPAREs for seq 3: replica 2 holds evidence and starts a view change to 2. Then the
    batch of seq 2 arrives (a relay of view 0's proposal).

    Found by test_a_byzantine_new_primary_cannot_break_a_correct_replica. Fails on c9f30a9
    (and on b2e6454): `_on_proposal` hands the batch to `_got_batch` before its view checks, and
    `_check_prepared` completes view 1's certificate: replica 2, in a view change to 2,
    signs COMMIT(1, 2, d)."""
    net = fresh(Setup(k=4, requests=1, lag=1, lag_kind="batches", catch_up=False, role="next",
                      stuck=True))
    t = net.replicas[TARGET]
    held: list[Proposal] = []

    def links_up(src: int, dst: int, m: Any) -> bool:
        if dst == TARGET and isinstance(m, Proposal):
            held.append(m)
            return False
        return not (dst == TARGET and isinstance(_statement(m), Commit))

    net.filter = links_up
    net.now += 0.1
    net.tick_due(also=TARGET)
    net.deliver()
    slot = t.log.get(2)
    assert (t.view, t.in_view_change) == (1, False)
    assert slot.view == 1 and slot.batch is None and slot.decided is None
    assert len(set(slot.prepares) - {1}) >= 2
    primary = net.keys.signer("replica", 1)
    try:
        for bt in (0, 1):
            b = Batch(int(net.now * 1_000_000) + bt, ())
            net.feed(TARGET, Proposal(primary.sign(PrePrepare(1, 3, batch_digest(b), 1)), b))
        assert (t.view, t.in_view_change) == (2, True)
        net.feed(TARGET, next(m for m in held if m.pre_prepare.statement.seq == 2))
    except Stop:
        pass
    assert not net.violations, net.violations[0].text


@known("1b", "a replica behind the NEW-VIEW's min_s accepts fresh pre-prepares for seqs "
       "at or below it")
def test_a_replica_behind_the_new_view_checkpoint_takes_no_part_below_it():
    """PROTOCOL.md "Normal case": a replica whose h is below a proven stable checkpoint (here
    a NEW-VIEW's C) takes no part in the normal case at or below it: it transfers state
    first.

    Replica 2 is cut off while the others execute seqs 2..10 (K = 4, L = 8: their stable
    checkpoint is 8, replica 2's is 0). The others change view to 1, and replica 2 enters
    view 1 by primary 1's NEW-VIEW, whose checkpoint is 8; its state transfer is slow (the
    STATE-CHUNKs do not arrive). Primary 1, Byzantine, sends it a fresh PRE-PREPARE(1, 5, d')
    for a batch of its own (a get), although seq 5 committed long ago.

    Found by test_a_byzantine_new_primary_cannot_break_a_correct_replica. Fails on c9f30a9
    (and on b2e6454): `_enter_view` only sets `transfer_target`, the window check still uses the
    old low watermark 0, and replica 2 signs PREPARE(1, 5, d')."""
    net = fresh(Setup(k=4, requests=1, lag=9, catch_up=False, role="next", stuck=True))
    t = net.replicas[TARGET]
    net.filter = lambda src, dst, m: not (dst == TARGET and isinstance(_statement(m), StateChunk))
    net.now += 0.1
    net.tick_due(also=TARGET)
    net.deliver()
    assert (t.view, t.in_view_change) == (1, False) and t.last_executed < 8
    primary = net.keys.signer("replica", 1)
    other = Batch(int(net.now * 1_000_000), (_request(net, 0, 99, Ops.get("k0")),))
    try:
        net.feed(TARGET, Proposal(primary.sign(PrePrepare(1, 5, batch_digest(other), 1)), other))
    except Stop:
        pass
    assert not net.violations, net.violations[0].text


def _statement(m: Any) -> Any:
    return m.pre_prepare.statement if isinstance(m, Proposal) else getattr(m, "statement", m)


@known("N1", "a new primary proposes in _make_stable before next_seq moves past its "
       "NEW-VIEW")
def test_a_new_primary_never_proposes_over_its_own_new_view():
    """PROTOCOL.md "Evidence" and "Crash recovery": a correct node never signs two
    PRE-PREPAREs for one (v, seq); "View change": the NEW-VIEW's O assigns (min_s, max_s].

    No Byzantine replica, only lost and late messages (n = 4, K = 2, L = 4). Seqs 1..6
    execute everywhere; the CHECKPOINTs of seq 6 are late. Primary 0 is cut off with request
    r7 pending: view 1 (its NEW-VIEW's checkpoint is 4; replica 2 enters it with next_seq 7).
    Primary 1 assigns r7 to seq 7; replica 2 gets none of seq 7's PRE-PREPARE or COMMITs,
    nor the late CHECKPOINTs of 6, which make 6 stable at the others. Primary 1 is cut off
    with r8 pending: view 2, whose primary is replica 2. Its NEW-VIEW has min_s = 6 (the
    others' checkpoint) and O = [(7, D(r7 batch))].

    Found by test_no_peer_input_breaks_a_correct_replica (there with a Byzantine primary
    0; it needs none). Fails on c9f30a9 (and on b2e6454): `_enter_view` adopts checkpoint 6 from
    replica 2's own snapshot through `_make_stable`, which ends in `_try_propose()` while
    next_seq is still 7 and O is not yet logged: replica 2 signs a fresh PRE-PREPARE(2, 7)
    for r8 right after its NEW-VIEW's PRE-PREPARE(2, 7) for r7, and replicas 0 and 3 hold
    evidence against it."""
    net = AttackNet(4, seed=7, clients=CLIENTS, checkpoint_interval=2, log_window=4,
                    max_in_flight=4)
    late: list[tuple[int, int, Any]] = []
    release = {"cp6": False}

    def links_up(src: int, dst: int, m: Any) -> bool:
        s = _statement(m)
        if isinstance(s, Checkpoint) and s.seq == 6 and (dst == TARGET or not release["cp6"]):
            late.append((src, dst, m))
            return False
        return not (dst == TARGET and isinstance(s, (PrePrepare, Commit)) and s.seq == 7)

    net.filter = links_up
    try:
        for r in range(6):
            net.request(0, Ops.put(f"k{r}", b"v"))
            net.deliver()
        net.isolate(0)
        net.request(1, Ops.put("r7", b"7"))
        while net.replicas[1].view != 1 or net.replicas[1].in_view_change:
            net.advance(0.1, step=0.1)
        net.heal()
        release["cp6"] = True
        net.queue.extend((src, dst, m) for src, dst, m in late if dst != TARGET)
        net.advance(1.0, step=0.1)
        assert [r.stable_seq for r in net.replicas] == [6, 6, 4, 6]
        assert net.replicas[TARGET].last_executed == 6 and net.replicas[TARGET].next_seq == 7
        net.isolate(1)
        net.request(2, Ops.put("r8", b"8"))
        net.advance(6.0, step=0.1)
    except Stop:
        pass
    assert not net.violations, net.violations[0].text


# --------------------------------------------------------------------------
# State transfer against a liar (liveness)
# --------------------------------------------------------------------------


def transfer_against_a_liar(lie: Callable[[StateChunk], list[tuple[int, int, bytes]]],
                            seconds: float = 30.0) -> AttackNet:
    """Replica 2 is cut off while the others execute 5 requests (K = 2, L = 4: their stable
    checkpoint is 4, replica 2's 0); then the links heal and it must catch up by state
    transfer. Faulty replica 3 answers no FETCH-STATE itself, and ahead of each honest
    STATE-CHUNK to replica 2 it sends the chunks `lie(honest chunk)` gives: (index, count,
    data) for the same checkpoint and digest. Returns the network after `seconds`."""
    net = fresh(Setup(k=2, requests=0, lag=5, catch_up=False, role="backup"))
    liar = net.keys.signer("replica", 3)
    net.heal()
    end = net.now + seconds
    try:
        while net.now < end:
            net.now += 0.05
            net.tick_due()
            while net.queue:
                src, dst, m = net.queue[0]
                c = m.statement if isinstance(m, Signed) else None
                if dst == TARGET and isinstance(c, StateChunk):
                    if src == 3:
                        net.queue.popleft()
                        continue
                    for index, count, data in lie(c):
                        net.feed(TARGET, liar.sign(StateChunk(c.seq, c.state_digest, index,
                                                              count, data, 3)))
                net.deliver(1)
    except Stop:
        pass
    return net


@known("2b", "one bogus state chunk ahead of each honest answer blocks state transfer")
def test_one_liar_cannot_block_state_transfer():
    """PROTOCOL.md "State transfer": a replica accepts chunks only from the replica it asked;
    a snapshot that does not match is discarded and another replica is asked.

    Fails on c9f30a9 (and on b2e6454): replica 2 takes a chunk from replica 3, which it did not
    ask, and its count (2) from it; each honest answer (count 1) is then dropped as
    `bad_state_chunk`, the transfer times out, and replica 2 stays at seq 0 for good (30 s
    here, dozens of retries)."""
    net = transfer_against_a_liar(lambda c: [(0, 2, b"junk")])
    t = net.replicas[TARGET]
    assert not net.violations, net.violations[0].text
    assert t.last_executed >= net.replicas[0].stable_seq, (
        f"replica 2 executed {t.last_executed}; the others' stable checkpoint is "
        f"{net.replicas[0].stable_seq}; drops {dict(t.drops)}")


@known("2b", "one bogus state chunk ahead of each honest answer blocks state transfer")
@settings(deadline=None, derandomize=True, database=None,
          suppress_health_check=[HealthCheck.too_slow],
          phases=[Phase.generate] if KNOWN_BUGS.get("2b") else list(Phase))
@given(lies=st.lists(st.tuples(st.sampled_from([0, 1, 2]), st.sampled_from([1, 2, 3, 2**40]),
                               st.binary(max_size=16)), min_size=1, max_size=3))
def test_state_transfer_completes_whatever_one_replica_sends(lies: list) -> None:
    """Liveness of state transfer (PROTOCOL.md "State transfer"): whatever one faulty replica
    sends ahead of each honest STATE-CHUNK (any index, count, data), the lagging replica
    reaches the stable checkpoint, and nothing raises."""
    net = transfer_against_a_liar(lambda c: lies, seconds=20.0)
    t = net.replicas[TARGET]
    assert not net.violations, net.violations[0].text
    assert t.last_executed >= net.replicas[0].stable_seq, (
        f"replica 2 executed {t.last_executed}; drops {dict(t.drops)}")


def test_a_vote_signed_on_entering_a_view_left_in_the_same_step_is_in_that_view():
    """The checker's rule "prepare and commit are steps of view v only" counts a view the
    replica entered during the step. The draws of the property run that showed it (a CI run
    of test_no_peer_input_breaks_a_correct_replica, 2026-12-07): faulty replica 1, the next
    primary, sends T a proposal for view 1 while T is still changing to view 1; T holds it
    (bft/normal.py `_hold_for_view`), enters view 1 on the NEW-VIEW, signs the PREPARE of
    the NEW-VIEW's seq 1, then judges the held proposal: another digest for (1, 1) signed by
    the same primary, proof of equivocation, and T leaves view 1 for view 2 within the
    same delivery. Correct conduct; it failed before as vote_outside_view ((1, True) before
    the step, (2, True) after)."""
    setup = Setup(k=2, requests=0, view_change=False, lag=1, lag_kind="batches",
                  catch_up=False, role="next", faulty_silent=False, stuck=True)
    net = fresh(setup, Replica)
    draws = iter(["inject", "proposal", 1, 0, Batch(0, ()), 0,
                  bytes.fromhex("9a58feee192b92c50a6899cefce80fee1c4c7a5f863743cb10706d6ffd731367"),
                  1])
    attack(net, setup.faulty, lambda *args, **kw: next(draws), 1, GENERAL)
    print("\n".join(net.trace[-20:]))
    check(net)
