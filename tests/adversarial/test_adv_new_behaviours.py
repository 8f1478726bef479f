"""The issue-19 behaviours one by one: `withhold`, `bogus-chunks`, `bad-new-view`, `crash-at`.

As in test_adv_behaviours.py, the inner replica is a scripted stub, so each test sees exactly
what a behaviour does to its outputs; the statements are built with the simulator's keys
and checked the way receivers check them: signatures (`verify_deep`), and the view-change
rules of bft/viewchange.py (`view_change_problem`, `new_view_problem`), so a message meant
to pass the receivers' checks passes them, and one meant to be refused is refused for the
intended reason.
"""

from __future__ import annotations

import random
from typing import Any

import pytest

from adversary.behaviours import (
    JUDGED,
    SIMULATOR_ONLY,
    BehaviourEnv,
    ByzantineNode,
    Collusion,
    make_rule,
)
from adversary.runtime import check_real_processes
from adversary.scenario import Scenario, parse_byzantine_spec
from bft.clock import Interval
from bft.config import ClusterConfig
from bft.crypto import SimKeys, batch_digest
from bft.effects import Broadcast, Event, Executed, Persist, Send, SetTimer
from bft.errors import ConfigError
from bft.messages import (
    NULL_BATCH,
    Batch,
    Checkpoint,
    Commit,
    FetchState,
    NewView,
    PreparedCert,
    Prepare,
    PrePrepare,
    Proposal,
    Request,
    StateChunk,
    Status,
    ViewChange,
)
from bft.viewchange import Geometry, new_view_problem, plan_new_view, view_change_problem

N = 4
CONFIG = ClusterConfig.local(N, clients=2, checkpoint_interval=4, log_window=8)
GEO = Geometry(CONFIG.n, CONFIG.f, CONFIG.log_window, CONFIG.quorum)
KEYS = SimKeys(7, n_replicas=N, n_clients=2)
VERIFY = KEYS.verifier()
NULL = batch_digest(NULL_BATCH)
ZERO = bytes(32)


class Stub:
    """A replica that records its inputs and returns the effects queued for each call."""

    def __init__(self) -> None:
        self.inputs: list[tuple[str, Any]] = []
        self.queued: list[list[Any]] = []
        self.view = 1
        self.last_executed = 0

    def _next(self) -> list[Any]:
        return self.queued.pop(0) if self.queued else []

    def start(self, now: float, wall: Any = None) -> list[Any]:
        return self._next()

    def receive(self, message: Any, now: float, wall: Any = None) -> list[Any]:
        self.inputs.append(("receive", message))
        return self._next()

    def tick(self, now: float, wall: Any = None) -> list[Any]:
        return self._next()

    def statistics(self) -> dict[str, Any]:
        return {"view": self.view}


def wrap(node: int, *rules: Any, request_crash: Any = None) -> tuple[ByzantineNode, Stub]:
    stub = Stub()
    env = BehaviourEnv(node, N, KEYS.signer("replica", node), random.Random(1), Collusion(),
                       origin_s=0.0, config=CONFIG, verifier=VERIFY,
                       request_crash=request_crash)
    return ByzantineNode(stub, rules, env), stub


def signed(node: int, statement: Any) -> Any:
    return KEYS.signer("replica", node).sign(statement)


def feed(node: ByzantineNode, stub: Stub, message: Any, effects: list[Any],
         now: float = 1.0) -> list[Any]:
    """Deliver `message` to the wrapped node whose replica answers with `effects`; what
    comes out (without the wrapper's announcement that a behaviour switched on)."""
    stub.queued.append(effects)
    out = node.receive(message, now, Interval(1_000_000, 1_000_000))
    return [e for e in out if not (isinstance(e, Event) and e.kind == "adversary")]


def status(sender: int, stable: int = 0) -> Any:
    return signed(sender, Status(1, stable, stable, (), (), 0, sender))


def sent(effects: list[Any]) -> list[tuple[int | None, Any]]:
    """(destination or None for a broadcast, message) of every Send/Broadcast."""
    return [(e.to if isinstance(e, Send) else None, e.message) for e in effects
            if isinstance(e, (Send, Broadcast))]


def batch_of(seq: int) -> Batch:
    req = KEYS.signer("client", 0).sign(Request(b"op-%d" % seq, seq, 0))
    return Batch(1_000_000 + seq, (req,))


def cert(seq: int, view: int = 0) -> PreparedCert:
    """A prepared certificate for `seq` in `view`: the primary's PRE-PREPARE and 2f PREPAREs."""
    primary = view % N
    d = batch_digest(batch_of(seq))
    pp = signed(primary, PrePrepare(view, seq, d, primary))
    backups = [r for r in range(N) if r != primary][: 2 * CONFIG.f]
    return PreparedCert(pp, tuple(signed(r, Prepare(view, seq, d, r)) for r in backups))


def proof(seq: int, digest: bytes = b"\x05" * 32) -> tuple[Any, ...]:
    return tuple(signed(r, Checkpoint(seq, digest, r)) for r in range(CONFIG.quorum))


def view_change(node: int, view: int, stable: int = 0, certs: tuple = ()) -> Any:
    digest = b"\x05" * 32 if stable else ZERO
    return signed(node, ViewChange(view, stable, digest, proof(stable) if stable else (),
                                   certs, node))


def valid_everywhere(message: Any) -> bool:
    return VERIFY.verify_deep(message)


# ---------------------------------------------------------------------- vocabulary


@pytest.mark.parametrize("behaviour, params, field", [
    ("withhold", {"certs": 1.5}, "adversary[0].params.certs"),
    ("withhold", {"seqs": [0]}, "adversary[0].params.seqs"),
    ("withhold", {"seqs": [3, 3]}, "adversary[0].params.seqs"),
    ("withhold", {"checkpoint_back": -1}, "adversary[0].params.checkpoint_back"),
    ("bogus-chunks", {"lies": ["size"]}, "adversary[0].params.lies"),
    ("bogus-chunks", {"mode": "behind"}, "adversary[0].params.mode"),
    ("bad-new-view", {"mode": "twice"}, "adversary[0].params.mode"),
    ("crash-at", {"event": "lunch"}, "adversary[0].params.event"),
    ("crash-at", {"times": 0}, "adversary[0].params.times"),
    ("crash-at", {"when": "during"}, "adversary[0].params.when"),
])
def test_bad_parameters_name_the_file_and_the_field(behaviour: str, params: dict,
                                                    field: str) -> None:
    with pytest.raises(ConfigError) as exc:
        make_rule(0, behaviour, params=params, file="s.toml", field="adversary[0]")
    assert exc.value.file == "s.toml" and exc.value.field == field, str(exc.value)


def test_judgement_aliases_and_the_command_line_shorthand() -> None:
    assert not JUDGED["withhold"] and not JUDGED["bogus-chunks"] and not JUDGED["bad-new-view"]
    assert JUDGED["crash-at"]  # a crash-recovery node is a correct node
    rules = parse_byzantine_spec("1:bad_new_view,2:withhold,3:crash_at")
    assert [r.behaviour for r in rules] == ["bad-new-view", "withhold", "crash-at"]
    assert Scenario(rules).sim_config(nodes=4).all_byzantine() == {1, 2}
    window = make_rule(3, "crash-at", start_s=1.0, stop_s=4.0,
                       params={"restart_after_s": 0.5}).ends_at()
    assert window == 4.5 and make_rule(3, "crash-at").ends_at() is None


def test_simulator_only_rules_are_refused_for_real_processes_and_live_switching() -> None:
    assert SIMULATOR_ONLY == {"crash-at"}
    scenario = Scenario((make_rule(0, "lie"), make_rule(2, "crash-at")), source="s.toml")
    with pytest.raises(ConfigError) as exc:
        check_real_processes(scenario)
    assert exc.value.field == "adversary[1].behaviour" and "simulator" in str(exc.value)
    check_real_processes(scenario, node=0)  # replica 0's own rules run anywhere
    node, _ = wrap(1)
    with pytest.raises(ConfigError):
        node.set_live_behaviour("crash-at", {})
    node.set_live_behaviour("withhold", {})  # the wrappers' behaviours switch on live


def test_a_crash_and_a_crash_point_on_one_replica_are_refused() -> None:
    from adversary.sim import SimConfig, Simulation

    cfg = SimConfig(nodes=4, adversary=(make_rule(2, "crash", start_s=1.0),
                                        make_rule(2, "crash-at")))
    with pytest.raises(ConfigError, match="one kind of crash"):
        Simulation(cfg)


# ---------------------------------------------------------------------- withhold


def test_withheld_view_change_is_well_signed_valid_and_without_its_certificates() -> None:
    node, stub = wrap(3, make_rule(3, "withhold"))
    honest = view_change(3, 1, 0, (cert(1), cert(2)))
    assert view_change_problem(GEO, honest.statement) is None
    out = sent(feed(node, stub, status(1), [Persist(b"vc"), Broadcast(honest)]))
    assert len(out) == 1 and out[0][0] is None
    made = out[0][1]
    assert made.statement.prepared == () and made.statement.replica == 3
    assert valid_everywhere(made) and view_change_problem(GEO, made.statement) is None
    # a resend (a STATUS answer) carries the same rewrite
    again = sent(feed(node, stub, status(2), [Send(2, honest)], now=2.0))
    assert again == [(2, made)]


def test_withhold_only_the_named_seqs() -> None:
    node, stub = wrap(3, make_rule(3, "withhold", params={"seqs": [2]}))
    honest = view_change(3, 1, 0, (cert(1), cert(2), cert(3)))
    made = sent(feed(node, stub, status(1), [Broadcast(honest)]))[0][1]
    assert [c.pre_prepare.statement.seq for c in made.statement.prepared] == [1, 3]
    assert view_change_problem(GEO, made.statement) is None


def test_withhold_cites_an_older_stable_checkpoint_it_holds_a_proof_of() -> None:
    """K = 4, L = 8. The node saw 2f+1 CHECKPOINTs for 4, and its replica's VIEW-CHANGE
    cites checkpoint 8 with certificates for 9..16: with checkpoint_back = 1 it cites 4 (the
    proof it assembled) and keeps only the certificates in (4, 12]."""
    node, stub = wrap(3, make_rule(3, "withhold", params={"certs": 0.0, "checkpoint_back": 1}))
    for cp in proof(4, b"\x04" * 32):
        feed(node, stub, cp, [])
    honest = view_change(3, 1, 8, tuple(cert(s) for s in (9, 12, 13, 16)))
    assert view_change_problem(GEO, honest.statement) is None
    made = sent(feed(node, stub, status(1), [Broadcast(honest)]))[0][1]
    vc = made.statement
    assert (vc.stable_seq, vc.state_digest) == (4, b"\x04" * 32)
    assert [c.pre_prepare.statement.seq for c in vc.prepared] == [9, 12]
    assert valid_everywhere(made) and view_change_problem(GEO, vc) is None
    # two back, with only one older proof held: genesis (valid, with an empty proof)
    node, stub = wrap(3, make_rule(3, "withhold", params={"certs": 0.0, "checkpoint_back": 2}))
    for cp in proof(4, b"\x04" * 32):
        feed(node, stub, cp, [])
    vc = sent(feed(node, stub, status(1), [Broadcast(honest)]))[0][1].statement
    assert (vc.stable_seq, vc.checkpoint_proof, vc.prepared) == (0, (), ())
    assert view_change_problem(GEO, vc) is None


def test_withhold_ignores_checkpoints_whose_signatures_do_not_verify() -> None:
    from adversary.behaviours import _corrupt_signature

    node, stub = wrap(3, make_rule(3, "withhold", params={"certs": 0.0, "checkpoint_back": 1}))
    for cp in proof(4, b"\x04" * 32):
        feed(node, stub, _corrupt_signature(cp, False), [])
    honest = view_change(3, 1, 8, (cert(9),))
    vc = sent(feed(node, stub, status(1), [Broadcast(honest)]))[0][1].statement
    assert vc.stable_seq == 0  # no proof of 4 assembled: genesis, never a forged proof
    assert view_change_problem(GEO, vc) is None


def test_withhold_sends_its_checkpoint_then_falls_silent() -> None:
    node, stub = wrap(3, make_rule(3, "withhold", params={"silent_after_checkpoint": 8}))
    early = signed(3, Checkpoint(4, b"\x04" * 32, 3))
    late = signed(3, Checkpoint(8, b"\x08" * 32, 3))
    vote = signed(3, Commit(1, 9, b"\x01" * 32, 3))
    out = feed(node, stub, status(1), [Broadcast(early), Broadcast(vote)])
    assert [m for _, m in sent(out)] == [early, vote]
    out = feed(node, stub, status(1), [Persist(b"cp"), Broadcast(late), Broadcast(vote)], 2.0)
    assert [m for _, m in sent(out)] == [late]  # its CHECKPOINT 8 leaves, nothing after it
    assert any(isinstance(e, Persist) for e in out)
    assert sent(feed(node, stub, status(2), [Broadcast(vote)], 3.0)) == []


# ---------------------------------------------------------------------- bogus-chunks


def chunks(node: int, seq: int, digest: bytes, to: int, count: int = 2) -> list[Any]:
    return [Send(to, signed(node, StateChunk(seq, digest, i, count, b"honest-%d" % i, node)))
            for i in range(count)]


def is_bogus(message: Any, node: int, honest: list[Any]) -> bool:
    st = message.statement
    return (isinstance(st, StateChunk) and st.replica == node and valid_everywhere(message)
            and message not in [e.message for e in honest])


@pytest.mark.parametrize("mode", ["ahead", "instead"])
def test_bogus_chunks_answer_a_fetch_state_well_signed(mode: str) -> None:
    node, stub = wrap(1, make_rule(1, "bogus-chunks", params={"mode": mode}))
    digest = b"\x08" * 32
    ask = signed(3, FetchState(8, digest, 3))
    honest = chunks(1, 8, digest, 3)
    out = sent(feed(node, stub, ask, honest))
    assert all(to == 3 for to, _ in out)
    bogus = [m for _, m in out if is_bogus(m, 1, honest)]
    assert bogus, out
    for m in bogus:  # a wrong count, or wrong data under the honest count
        st = m.statement
        assert (st.seq, st.state_digest) == (8, digest)
        assert st.count != 2 or st.data not in (b"honest-0", b"honest-1")
    if mode == "ahead":  # the lies first, then the truth
        assert [m for _, m in out][len(bogus):] == [e.message for e in honest]
    else:
        assert len(out) == len(bogus)


def test_bogus_chunks_answer_even_without_the_state() -> None:
    node, stub = wrap(1, make_rule(1, "bogus-chunks"))
    out = sent(feed(node, stub, signed(3, FetchState(8, b"\x08" * 32, 3)), []))
    assert out and all(to == 3 and is_bogus(m, 1, []) for to, m in out)


def test_bogus_chunks_push_to_a_peer_behind_the_stable_checkpoint() -> None:
    node, stub = wrap(1, make_rule(1, "bogus-chunks", params={"push": True}))
    for cp in proof(8, b"\x08" * 32):
        feed(node, stub, cp, [])
    assert sent(feed(node, stub, status(2, stable=8), [])) == []  # not behind
    out = sent(feed(node, stub, status(3, stable=0), []))
    assert out and all(to == 3 and is_bogus(m, 1, []) for to, m in out)
    assert {m.statement.seq for _, m in out} == {8}


# ---------------------------------------------------------------------- bad-new-view


def new_view_from(primary: int, view: int, vcs: list[Any]) -> Any:
    plan = plan_new_view([s.statement for s in vcs], NULL)
    pps = tuple(signed(primary, PrePrepare(view, seq, d, primary)) for seq, d in plan.digests)
    vcs = sorted(vcs, key=lambda s: s.statement.replica)
    return signed(primary, NewView(view, tuple(vcs), pps, primary))


def o_of(nv: Any) -> list[tuple[int, bytes]]:
    return [(p.statement.seq, p.statement.digest) for p in nv.statement.pre_prepares]


def test_split_sends_two_valid_new_views_with_different_o() -> None:
    """Primary 1 of view 1 holds certificates for seqs 3 and 4; replica 0 for seq 4 only;
    2 and 3 none. Its replica's NEW-VIEW (V = 1, 2, 3) re-proposes 3 and 4 (1 and 2: null).
    Group B (replica 3) gets a NEW-VIEW from V = 0, 1 without its certificates, 2: O has the
    null request at seq 3, against digest d3. Both pass every backup's check. Then, with
    `cross`: once replica 3 and another backup prepared seq 3, replica 3 gets group A's
    PRE-PREPARE for seq 3, with its batch."""
    node, stub = wrap(1, make_rule(1, "bad-new-view", params={"mode": "split"}))
    vcs = {0: view_change(0, 1, 0, (cert(4),)), 2: view_change(2, 1), 3: view_change(3, 1)}
    mine = view_change(1, 1, 0, (cert(3), cert(4)))
    for r in (0, 2, 3):
        feed(node, stub, vcs[r], [])
    feed(node, stub, Proposal(cert(3).pre_prepare, batch_of(3)), [])
    feed(node, stub, status(2), [Broadcast(mine)])
    honest = new_view_from(1, 1, [mine, vcs[2], vcs[3]])
    out = sent(feed(node, stub, status(3), [Broadcast(honest)], 2.0))
    got = {to: m for to, m in out}
    assert sorted(got) == [0, 2, 3] and got[0] == honest and got[2] == honest
    other = got[3]
    assert other != honest and valid_everywhere(other)
    assert new_view_problem(GEO, other.statement, NULL)[0] is None
    d3, d4 = (cert(s).pre_prepare.statement.digest for s in (3, 4))
    assert o_of(honest) == [(1, NULL), (2, NULL), (3, d3), (4, d4)]
    assert o_of(other) == [(1, NULL), (2, NULL), (3, NULL), (4, d4)]
    # replica 3 prepares its version of seq 3; once replica 2 prepared seq 3 too, replica 3
    # gets group A's pre-prepare for it; group A gets nothing
    assert sent(feed(node, stub, signed(3, Prepare(1, 3, NULL, 3)), [], 2.1)) == []
    out = sent(feed(node, stub, signed(2, Prepare(1, 3, d3, 2)), [], 2.2))
    fed = [(to, m) for to, m in out if isinstance(m, Proposal)]
    assert [to for to, _ in fed] == [3]
    p = fed[0][1]
    assert (p.pre_prepare.statement.view, p.pre_prepare.statement.seq) == (1, 3)
    assert p.pre_prepare.statement.digest == d3 and p.pre_prepare in honest.statement.pre_prepares
    assert batch_digest(p.batch) == d3 and valid_everywhere(p)
    # where both versions agree (seq 4), nothing is sent
    feed(node, stub, signed(3, Prepare(1, 4, d4, 3)), [], 2.3)
    assert sent(feed(node, stub, signed(2, Prepare(1, 4, d4, 2)), [], 2.4)) == []


def test_wrong_o_is_well_signed_and_refused_for_its_o() -> None:
    node, stub = wrap(1, make_rule(1, "bad-new-view", params={"mode": "wrong_o"}))
    vcs = [view_change(1, 1, 0, (cert(1),)), view_change(2, 1), view_change(3, 1)]
    for nv in (new_view_from(1, 1, vcs), new_view_from(1, 1, [view_change(r, 1)
                                                               for r in (1, 2, 3)])):
        out = sent(feed(node, stub, status(2), [Broadcast(nv)]))
        assert sorted(to for to, _ in out) == [0, 2, 3]
        bad = out[0][1]
        assert all(m == bad for _, m in out) and valid_everywhere(bad)
        assert new_view_problem(GEO, nv.statement, NULL)[0] is None
        assert new_view_problem(GEO, bad.statement, NULL) == ("new_view_wrong_o", None)


def test_reissue_sends_a_fresh_pre_prepare_against_the_new_views_o() -> None:
    node, stub = wrap(1, make_rule(1, "bad-new-view", params={"mode": "reissue"}))
    vcs = [view_change(1, 1, 0, (cert(1),)), view_change(2, 1), view_change(3, 1)]
    nv = new_view_from(1, 1, vcs)
    feed(node, stub, Proposal(cert(1).pre_prepare, batch_of(1)), [])
    out = sent(feed(node, stub, status(2), [Broadcast(nv)]))
    assert all(m == nv for _, m in out)  # the NEW-VIEW itself is honest
    d = o_of(nv)[0][1]
    assert sent(feed(node, stub, signed(3, Prepare(1, 1, d, 3)), [])) == []
    out = sent(feed(node, stub, signed(2, Prepare(1, 1, d, 2)), []))
    fed = [(to, m) for to, m in out if isinstance(m, Proposal)]
    assert [to for to, _ in fed] == [3]  # group B only; group A stays in the view
    p = fed[0][1]
    pp = p.pre_prepare.statement
    assert (pp.view, pp.seq, pp.replica) == (1, 1, 1) and pp.digest != d
    assert batch_digest(p.batch) == pp.digest and valid_everywhere(p)
    assert p.batch.requests == batch_of(1).requests
    assert p.batch.batch_time > batch_of(1).batch_time


# ---------------------------------------------------------------------- crash-at


def crash_wrapper(**params: Any) -> tuple[ByzantineNode, Stub, list[Any]]:
    asked: list[Any] = []

    def request(rule: Any) -> bool:
        asked.append(rule)
        return len(asked) == 1  # the driver grants one crash

    node, stub = wrap(2, make_rule(2, "crash-at", params=params), request_crash=request)
    return node, stub, asked


def test_crash_after_the_prepare_of_a_seq_cuts_the_step_after_it() -> None:
    node, stub, asked = crash_wrapper(event="prepare", seq=5)
    other = signed(2, Prepare(0, 4, b"\x04" * 32, 2))
    mine = signed(2, Prepare(0, 5, b"\x05" * 32, 2))
    later = signed(2, Commit(0, 4, b"\x04" * 32, 2))
    assert sent(feed(node, stub, status(1), [Broadcast(other), SetTimer(9.0)])) == [
        (None, other)]
    assert not asked
    out = feed(node, stub, status(1), [Persist(b"p5"), Broadcast(mine), Broadcast(later),
                                       SetTimer(9.5)], 2.0)
    assert len(asked) == 1
    assert out[:2] == [Persist(b"p5"), Broadcast(mine)]
    assert [e.kind for e in out[2:]] == ["crash_point"] and len(out) == 3
    # the dead replica's later effects go nowhere (the driver discards it anyway)
    assert feed(node, stub, status(1), [Broadcast(later)], 3.0) == []


def test_crash_before_the_checkpoint_leaves_keeps_its_wal_record() -> None:
    node, stub, asked = crash_wrapper(event="checkpoint", when="before")
    cp = signed(2, Checkpoint(4, b"\x04" * 32, 2))
    out = feed(node, stub, status(1), [Executed(4, 0, b"d" * 32, NULL_BATCH, (), b""),
                                       Persist(b"cp4"), Broadcast(cp)])
    assert asked and isinstance(out[0], Executed) and out[1] == Persist(b"cp4")
    assert not sent(out) and out[-1].kind == "crash_point"


def test_crash_on_entering_a_view_change_and_on_execution() -> None:
    node, stub, asked = crash_wrapper(event="view_change", view=2)
    vc1, vc2 = view_change(2, 1), view_change(2, 2)
    start1 = Event("view_change_start", {"view": 1})
    assert sent(feed(node, stub, status(1), [Broadcast(vc1), start1])) == [(None, vc1)]
    start2 = Event("view_change_start", {"view": 2})
    out = feed(node, stub, status(1), [Persist(b"vc"), Broadcast(vc2), start2, SetTimer(3.0)])
    assert out[:3] == [Persist(b"vc"), Broadcast(vc2), start2] and out[3].kind == "crash_point"
    node, stub, asked = crash_wrapper(event="execute", seq=3)
    ex = [Executed(s, 0, b"d" * 32, NULL_BATCH, (), b"") for s in (2, 3, 4)]
    out = feed(node, stub, status(1), list(ex))
    assert out[:2] == ex[:2] and out[2].kind == "crash_point" and len(out) == 3


def test_crash_point_refused_by_the_driver_changes_nothing() -> None:
    node, stub = wrap(2, make_rule(2, "crash-at", params={"event": "prepare"}),
                      request_crash=lambda rule: False)
    mine = signed(2, Prepare(0, 5, b"\x05" * 32, 2))
    assert sent(feed(node, stub, status(1), [Broadcast(mine)])) == [(None, mine)]
    node, stub = wrap(2, make_rule(2, "crash-at", params={"event": "prepare"}))  # no driver
    assert sent(feed(node, stub, status(1), [Broadcast(mine)])) == [(None, mine)]
