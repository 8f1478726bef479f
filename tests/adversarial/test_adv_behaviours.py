"""Behaviours one by one: what the wrapper does to a replica's inputs and outputs.

The inner replica is a scripted stub (it returns the effects a test gives it), so each
test sees exactly what a behaviour changes. Signatures are the simulator's HMAC keys:
whatever a behaviour re-signs must verify as the node's own signature.
"""

from __future__ import annotations

import random
from typing import Any

import pytest

from adversary.behaviours import (
    BEHAVIOURS,
    PARAMS,
    BehaviourEnv,
    ByzantineNode,
    Collusion,
    TwinsNode,
    make_node,
    make_rule,
    validate_params,
)
from bft.auth import reply_mac, sim_reply_auth
from bft.clock import Interval
from bft.codec import encode
from bft.crypto import SimKeys, batch_digest
from bft.effects import Broadcast, Event, Persist, Reply, Send, SetTimer
from bft.errors import ConfigError
from bft.messages import (
    Batch,
    Checkpoint,
    Commit,
    MacReply,
    Prepare,
    PrePrepare,
    Proposal,
    Request,
    Status,
)
from bft.messages import (
    Reply as ReplyStatement,
)

N = 4
KEYS = SimKeys(7, n_replicas=N, n_clients=2)
REQ = b"\x33" * 32  # the digest of the request a reply answers
VERIFY = KEYS.verifier()


class Stub:
    """A replica that records its inputs and returns the effects queued for each call."""

    def __init__(self) -> None:
        self.inputs: list[tuple[str, Any, float, Any]] = []
        self.queued: list[list[Any]] = []
        self.view = 3
        self.last_executed = 9

    def _next(self) -> list[Any]:
        return self.queued.pop(0) if self.queued else []

    def start(self, now: float, wall: Any = None) -> list[Any]:
        self.inputs.append(("start", None, now, wall))
        return self._next()

    def receive(self, message: Any, now: float, wall: Any = None) -> list[Any]:
        self.inputs.append(("receive", message, now, wall))
        return self._next()

    def tick(self, now: float, wall: Any = None) -> list[Any]:
        self.inputs.append(("tick", None, now, wall))
        return self._next()

    def statistics(self) -> dict[str, Any]:
        return {"view": self.view}


def wrap(node: int, *rules: Any, collusion: Collusion | None = None) -> tuple[ByzantineNode, Stub]:
    stub = Stub()
    env = BehaviourEnv(node, N, KEYS.signer("replica", node), random.Random(1),
                       collusion or Collusion(), origin_s=0.0)
    return ByzantineNode(stub, rules, env), stub


def messages(effects: list[Any]) -> list[Any]:
    return [e for e in effects if isinstance(e, (Send, Broadcast, Reply))]


def signed(node: int, statement: Any) -> Any:
    return KEYS.signer("replica", node).sign(statement)


def request(client: int, t: int) -> Any:
    return KEYS.signer("client", client).sign(Request(b"op-%d" % t, t, client))


def proposal(seq: int = 1, view: int = 0, primary: int = 0) -> Proposal:
    batch = Batch(1_000_000, (request(0, seq), request(1, seq)))
    return Proposal(signed(primary, PrePrepare(view, seq, batch_digest(batch), primary)), batch)


def run(node: ByzantineNode, stub: Stub, effects: list[Any], now: float = 1.0) -> list[Any]:
    stub.queued.append(effects)
    return node.receive(signed((node.env.node_id + 1) % N, Status(0, 0, 0, (), (), 0,
                                                                 (node.env.node_id + 1) % N)),
                        now, Interval(0, 0))


# ---------------------------------------------------------------------- parameters


def test_every_behaviour_has_validated_defaults() -> None:
    for name in BEHAVIOURS:
        params = validate_params(name, {})
        assert set(params) == set(PARAMS[name])


@pytest.mark.parametrize("behaviour, params, field", [
    ("nonsense", {}, "adversary[0].behaviour"),
    ("lie", {"rate": 2.0}, "adversary[0].params.rate"),
    ("lie", {"lies": ["fib"]}, "adversary[0].params.lies"),
    ("lie", {"colour": 1}, "adversary[0].params.colour"),
    ("pause", {"duration_s": 0}, "adversary[0].params.duration_s"),
    ("slow", {"delay_ms": "fast"}, "adversary[0].params.delay_ms"),
    ("equivocate", {"mode": "triplets"}, "adversary[0].params.mode"),
])
def test_bad_behaviour_or_parameter_names_file_and_field(behaviour: str, params: dict,
                                                         field: str) -> None:
    with pytest.raises(ConfigError) as exc:
        make_rule(0, behaviour, params=params, file="s.toml", field="adversary[0]")
    assert exc.value.file == "s.toml" and exc.value.field == field
    assert "s.toml" in str(exc.value) and field in str(exc.value)


def test_rule_windows_and_judgement() -> None:
    pause = make_rule(1, "pause", start_s=2.0, params={"duration_s": 1.5})
    assert pause.window() == (2.0, 3.5) and pause.judged
    crash = make_rule(1, "crash", start_s=1.0, params={"restart_after_s": 4.0})
    assert crash.restart_at() == 5.0 and crash.ends_at() == 5.0
    assert make_rule(1, "crash", params={"restart": False}).restart_at() is None
    assert not make_rule(1, "lie").judged and not make_rule(1, "twins").judged
    assert make_rule(1, "twins").params["mode"] == "twins"
    with pytest.raises(ConfigError):
        make_rule(1, "pause", start_s=1.0, stop_s=2.0, params={"duration_s": 1.0})
    with pytest.raises(ConfigError):
        make_rule(1, "slow", start_s=3.0, stop_s=2.0)


def test_no_rules_means_the_replica_itself() -> None:
    stub = Stub()
    env = BehaviourEnv(0, N, KEYS.signer("replica", 0), random.Random(1))
    assert make_node(stub, [], env) is stub
    assert make_node(stub, [make_rule(0, "crash")], env) is stub  # the driver crashes it


# ---------------------------------------------------------------------- lie


def test_lie_rewrites_votes_replies_checkpoints_validly_signed_and_consistently() -> None:
    node, stub = wrap(2, make_rule(2, "lie", params={"rate": 1.0,
                                                     "lies": ["vote_digest", "reply_result",
                                                              "checkpoint_digest"]}))
    prep = signed(2, Prepare(0, 5, b"\x01" * 32, 2))
    cp = signed(2, Checkpoint(8, b"\x02" * 32, 2))
    rep = signed(2, ReplyStatement(0, 4, 1, 2, REQ, b"the truth"))
    out = messages(run(node, stub, [Broadcast(prep), Broadcast(cp), Reply(1, rep)]))
    lied_prep, lied_cp, lied_rep = out[0].message, out[1].message, out[2].reply
    assert lied_prep.statement.digest != b"\x01" * 32 and VERIFY.verify(lied_prep)
    assert lied_cp.statement.state_digest != b"\x02" * 32 and VERIFY.verify(lied_cp)
    assert lied_rep.statement.result != b"the truth" and VERIFY.verify(lied_rep)
    # a resend of the same vote carries the same lie: a liar, not an equivocator
    again = messages(run(node, stub, [Send(1, prep)], now=2.0))
    assert again[0].message == lied_prep


def test_lie_about_signatures_makes_them_fail_verification() -> None:
    node, stub = wrap(2, make_rule(2, "lie", params={"rate": 1.0,
                                                     "lies": ["bad_signature"]}))
    prep = signed(2, Commit(0, 5, b"\x01" * 32, 2))
    out = messages(run(node, stub, [Broadcast(prep)]))
    assert out[0].message.body == prep.body and not VERIFY.verify(out[0].message)
    node, stub = wrap(2, make_rule(2, "lie", params={"rate": 1.0, "lies": ["no_signature"]}))
    out = messages(run(node, stub, [Broadcast(prep)]))
    assert out[0].message.signature == bytes(64)


def mac_auth(kind: str, id: int) -> Any:
    return sim_reply_auth(7, kind, id, n_replicas=N, n_clients=2)


def test_lie_about_a_macd_reply_keeps_a_valid_mac_of_its_own() -> None:
    """A lying replica whose replies are MAC'd sends a wrong result under its own valid MAC;
    it cannot MAC as another replica (its ReplyAuth refuses, and its keys are its own)."""
    stub = Stub()
    env = BehaviourEnv(2, N, KEYS.signer("replica", 2), random.Random(1), Collusion(),
                       origin_s=0.0, reply_auth=mac_auth("replica", 2))
    node = ByzantineNode(stub, [make_rule(2, "lie", params={"rate": 1.0,
                                                            "lies": ["reply_result"]})], env)
    rep = mac_auth("replica", 2).seal(ReplyStatement(0, 4, 1, 2, REQ, b"the truth"))
    lied = messages(run(node, stub, [Reply(1, rep)]))[0].reply
    assert isinstance(lied, MacReply)
    assert lied.statement.result != b"the truth" and lied.statement.replica == 2
    client = mac_auth("client", 1)
    assert client.check(lied)
    # posing as replica 3 with replica 2's keys does not check, and sealing as 3 is refused
    pose = ReplyStatement(0, 4, 1, 3, REQ, lied.statement.result)
    body = encode(pose)
    assert not client.check(MacReply(body, reply_mac(env.reply_auth.keys.key(1), body), pose))
    with pytest.raises(ValueError):
        env.reply_auth.seal(pose)
    # the same reply resent carries the same lie
    assert messages(run(node, stub, [Reply(1, rep)], now=2.0))[0].reply == lied


@pytest.mark.parametrize("lie", ["bad_signature", "no_signature"])
def test_lie_about_a_macd_reply_breaks_its_mac(lie: str) -> None:
    node, stub = wrap(2, make_rule(2, "lie", params={"rate": 1.0, "lies": [lie]}))
    rep = mac_auth("replica", 2).seal(ReplyStatement(0, 4, 1, 2, REQ, b"the truth"))
    out = messages(run(node, stub, [Reply(1, rep)]))[0].reply
    assert isinstance(out, MacReply) and out.body == rep.body
    assert not mac_auth("client", 1).check(out)
    assert (out.mac == bytes(32)) == (lie == "no_signature")


def test_lying_primary_invents_a_request_the_backups_cannot_verify() -> None:
    node, stub = wrap(0, make_rule(0, "lie", params={"rate": 1.0,
                                                     "lies": ["invented_request"]}))
    original = proposal()
    made = messages(run(node, stub, [Broadcast(original)]))[0].message
    assert len(made.batch.requests) == len(original.batch.requests) + 1
    assert made.pre_prepare.statement.digest == batch_digest(made.batch)
    assert VERIFY.verify(made.pre_prepare)  # the header is the primary's real signature
    assert not VERIFY.verify_deep(made)  # but the invented request is forged


def test_lie_leaves_statements_of_others_alone() -> None:
    node, stub = wrap(2, make_rule(2, "lie", params={"rate": 1.0}))
    relayed = signed(1, Commit(0, 5, b"\x01" * 32, 1))
    relayed_pp = proposal()
    out = messages(run(node, stub, [Send(3, relayed), Send(3, relayed_pp)]))
    assert [e.message for e in out] == [relayed, relayed_pp]


# ---------------------------------------------------------------------- equivocate


def test_equivocating_primary_sends_two_proposals_and_one_peer_gets_both() -> None:
    node, stub = wrap(0, make_rule(0, "equivocate", params={"overlap": 1}))
    original = proposal()
    out = messages(run(node, stub, [Broadcast(original)]))
    assert all(isinstance(e, Send) for e in out)
    by_peer: dict[int, list[Any]] = {}
    for e in out:
        by_peer.setdefault(e.to, []).append(e.message)
    assert sorted(by_peer) == [1, 2, 3]
    digests = {m.pre_prepare.statement.digest for ms in by_peer.values() for m in ms}
    assert len(digests) == 2
    both = [p for p, ms in by_peer.items() if len(ms) == 2]
    assert len(both) == 1  # the overlap peer holds a proof
    for ms in by_peer.values():
        for m in ms:
            assert VERIFY.verify_deep(m) and batch_digest(m.batch) == m.pre_prepare.statement.digest
            assert (m.pre_prepare.statement.view, m.pre_prepare.statement.seq) == (0, 1)


def test_colluding_backup_votes_for_the_primarys_second_version() -> None:
    collusion = Collusion()
    primary, pstub = wrap(0, make_rule(0, "equivocate", params={"overlap": 0}),
                          collusion=collusion)
    backup, bstub = wrap(1, make_rule(1, "equivocate", params={"overlap": 0}),
                         collusion=collusion)
    original = proposal()
    sent = messages(run(primary, pstub, [Broadcast(original)]))
    alt = next(e.message for e in sent if e.message != original).pre_prepare.statement.digest
    vote = signed(1, Prepare(0, 1, original.pre_prepare.statement.digest, 1))
    out = messages(run(backup, bstub, [Broadcast(vote)]))
    got = {e.to: e.message.statement.digest for e in out}
    assert got[0] == original.pre_prepare.statement.digest  # colluders see the original
    assert sorted(set(got.values())) == sorted({original.pre_prepare.statement.digest, alt})
    assert all(VERIFY.verify(e.message) for e in out)


def test_twins_route_by_sender_and_speak_only_to_their_group() -> None:
    a, b = Stub(), Stub()
    twins = TwinsNode(a, b, 0, N, [[1], [2, 3]])
    a.queued.append([Broadcast(proposal()), Persist(b"rec"), SetTimer(5.0)])
    out = twins.receive_from(("replica", 1), signed(1, Status(0, 0, 0, (), (), 0, 1)), 1.0)
    assert [e.to for e in out if isinstance(e, Send)] == [1] and len(a.inputs) == 1
    assert any(isinstance(e, SetTimer) and e.at == 5.0 for e in out)
    b.queued.append([Broadcast(proposal(2)), Persist(b"lost"), Send(1, proposal(2))])
    out = twins.receive_from(("client", 1), request(1, 1), 1.0)
    assert [e.to for e in out if isinstance(e, Send)] == [2, 3] and len(b.inputs) == 1
    assert not any(isinstance(e, Persist) for e in out)  # twin B keeps nothing durable
    assert twins.view == a.view


# ---------------------------------------------------------------------- time and silence


def test_pause_holds_inputs_then_resumes_with_the_stale_backlog() -> None:
    node, stub = wrap(1, make_rule(1, "pause", start_s=1.0, params={"duration_s": 2.0}))
    assert any(isinstance(e, SetTimer) and e.at == 1.0 for e in node.start(0.0, None))
    msgs = [signed(2, Status(0, 0, k, (), (), 0, 2)) for k in range(3)]
    for k, m in enumerate(msgs):
        out = node.receive(m, 1.0 + k * 0.5, None)
        assert not messages(out)
    node.tick(2.5, None)
    assert [kind for kind, *_ in stub.inputs] == ["start"]  # nothing ran while paused
    out = node.tick(3.0, None)
    received = [m for kind, m, *_ in stub.inputs if kind == "receive"]
    assert received == msgs and stub.inputs[-1][0] == "tick"
    assert any(isinstance(e, Event) and e.kind == "adversary_resume" for e in out)


def test_silent_sends_nothing_but_persists() -> None:
    node, stub = wrap(1, make_rule(1, "silent", start_s=0.0, stop_s=5.0))
    vote = signed(1, Prepare(0, 1, b"\x01" * 32, 1))
    out = run(node, stub, [Persist(b"x"), Broadcast(vote), Reply(0, signed(1, ReplyStatement(
        0, 1, 0, 1, REQ, b"r")))])
    assert not messages(out) and any(isinstance(e, Persist) for e in out)
    out = run(node, stub, [Broadcast(vote)], now=6.0)
    assert messages(out) == [Broadcast(vote)]


def test_slow_delays_messages_not_persistence() -> None:
    node, stub = wrap(1, make_rule(1, "slow", params={"delay_ms": 100.0, "jitter_ms": 0.0}))
    vote = signed(1, Prepare(0, 1, b"\x01" * 32, 1))
    out = run(node, stub, [Persist(b"x"), Broadcast(vote)], now=1.0)
    assert any(isinstance(e, Persist) for e in out) and not messages(out)
    assert any(isinstance(e, SetTimer) and abs(e.at - 1.1) < 1e-9 for e in out)
    assert not messages(node.tick(1.05, None))
    assert messages(node.tick(1.1, None)) == [Broadcast(vote)]


def test_clock_skew_shifts_the_wall_clock_the_replica_sees() -> None:
    node, stub = wrap(1, make_rule(1, "clock-skew", start_s=1.0,
                                   params={"offset_s": 2.0, "drift_ppm": 1000.0}))
    wall = Interval(10_000_000, 10_002_000)
    node.tick(0.5, wall)
    node.tick(3.0, wall)
    assert stub.inputs[0][3] == wall  # before the window: untouched
    assert stub.inputs[1][3] == wall.shifted(2_000_000 + 2_000)  # offset + 2 s x 1000 ppm


def test_replay_resends_old_messages_it_saw() -> None:
    node, _ = wrap(1, make_rule(1, "replay", params={"interval_s": 0.1, "count": 2}))
    old = [signed(2, Prepare(0, k, bytes([k]) * 32, 2)) for k in range(1, 4)]
    for k, m in enumerate(old):
        node.receive(m, 0.01 * k, None)
    out = messages(node.tick(0.5, None))
    assert len(out) == 2 and all(isinstance(e, Broadcast) and e.message in old for e in out)
    assert not messages(node.tick(0.55, None))  # next replay not yet due
    assert len(messages(node.tick(0.61, None))) == 2


def test_timers_are_merged_and_attributes_are_the_replicas() -> None:
    node, stub = wrap(1, make_rule(1, "slow", params={"delay_ms": 500.0, "jitter_ms": 0.0}))
    stub.queued.append([SetTimer(7.0)])
    out = node.start(1.0, None)
    assert [e.at for e in out if isinstance(e, SetTimer)] == [7.0]
    out = run(node, stub, [Broadcast(signed(1, Prepare(0, 1, b"\x01" * 32, 1)))], now=2.0)
    assert [e.at for e in out if isinstance(e, SetTimer)] == [2.5]
    assert node.view == 3 and node.last_executed == 9
    assert node.statistics()["adversary"]["behaviours"][0]["behaviour"] == "slow"


def test_live_behaviour_switch() -> None:
    node, stub = wrap(1)
    vote = signed(1, Prepare(0, 1, b"\x01" * 32, 1))
    assert messages(run(node, stub, [Broadcast(vote)])) == [Broadcast(vote)]
    node.set_live_behaviour("silent", {})
    assert messages(run(node, stub, [Broadcast(vote)], now=2.0)) == []
    with pytest.raises(ConfigError):
        node.set_live_behaviour("lie", {"rate": 5})
    with pytest.raises(ConfigError):
        node.set_live_behaviour("crash", {})
    node.set_live_behaviour("", {})
    assert messages(run(node, stub, [Broadcast(vote)], now=3.0)) == [Broadcast(vote)]


def test_crash_rule_calls_the_runtime_crash_at_its_time() -> None:
    crashed = []
    stub = Stub()
    env = BehaviourEnv(1, N, KEYS.signer("replica", 1), random.Random(1), origin_s=None)
    node = ByzantineNode(stub, [make_rule(1, "crash", start_s=2.0)], env,
                         on_crash=crashed.append)
    out = node.start(100.0, None)  # the origin is the node's start
    assert any(isinstance(e, SetTimer) and e.at == 102.0 for e in out)
    node.tick(101.0, None)
    assert not crashed
    node.tick(102.0, None)
    assert crashed and crashed[0].behaviour == "crash"
