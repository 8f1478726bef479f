"""Targeted network rules: faults that select messages by kind, sender, receiver, view and seq,
and round-based (ByzzFuzz) schedules: "in view v, partition {a,b} | {c,d}", "in view v, drop
the COMMITs from replica j" (Winter et al., "Randomized Testing of Byzantine Fault Tolerant
Algorithms", OOPSLA 2023: a few such faults per view found real bugs in deployed BFT systems).

Each test failed before targeted rules existed: `make_network_rule` took no `kinds`, `views`,
... (TypeError), `message_info` and `round_schedule` did not exist (ImportError), and a
`[[network]]` table with `kinds` was refused as an unknown key.
"""

from __future__ import annotations

import random
import tomllib
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given, seed, settings
from hypothesis import strategies as st

from adversary.netfaults import (
    KIND_ALIASES,
    MESSAGE_KINDS,
    DatagramFaults,
    FaultModel,
    MessageInfo,
    make_network_rule,
    message_info,
    round_schedule,
)
from adversary.scenario import Scenario, parse_scenario
from adversary.sim import Crash, Simulation
from bft import codec
from bft.config import CLIENT_SENDER_BASE
from bft.crypto import SimKeys
from bft.errors import ConfigError
from bft.messages import (
    STATEMENT_TYPES,
    Batch,
    Checkpoint,
    Commit,
    Fetch,
    FetchState,
    MacReply,
    NewView,
    Prepare,
    PrePrepare,
    Proposal,
    Reply,
    Request,
    StateChunk,
    Status,
    ViewChange,
)
from transport.frame import encode_frames

SEED = 19
N = 4
KEYS = SimKeys(SEED, n_replicas=N, n_clients=2)
D = bytes(32)

#: What PROTOCOL.md calls each message, and whether it carries a view and a seq: the spec the
#: property tests check `message_info` and the rules against (written out, not derived).
SPEC: dict[str, tuple[str, bool, bool]] = {
    "Request": ("request", False, False),
    "Proposal": ("pre_prepare", True, True),
    "PrePrepare": ("pre_prepare", True, True),
    "Prepare": ("prepare", True, True),
    "Commit": ("commit", True, True),
    "Reply": ("reply", True, False),
    "MacReply": ("reply", True, False),
    "Checkpoint": ("checkpoint", False, True),
    "ViewChange": ("view_change", True, False),
    "NewView": ("new_view", True, False),
    "Status": ("status", True, False),
    "Fetch": ("fetch", True, True),
    "FetchState": ("fetch_state", False, True),
    "StateChunk": ("state_chunk", False, True),
}


def wire_message(name: str, view: int, seq: int, sender: int):  # type: ignore[no-untyped-def]
    """A well-formed wire message of type `name` with `view` and `seq` where it has them, as
    replica `sender` (or client 0 for a request) signs it."""
    sign = KEYS.signer("replica", sender).sign
    if name == "Request":
        return KEYS.signer("client", 0).sign(Request(b"op", seq + 1, 0))
    if name == "Proposal":
        return Proposal(sign(PrePrepare(view, seq, D, sender)), Batch(0, ()))
    if name == "MacReply":
        reply = Reply(view, seq + 1, 0, sender, D, b"ok")
        return MacReply(codec.encode(reply), bytes(32), reply)
    statement = {
        "PrePrepare": lambda: PrePrepare(view, seq, D, sender),
        "Prepare": lambda: Prepare(view, seq, D, sender),
        "Commit": lambda: Commit(view, seq, D, sender),
        "Reply": lambda: Reply(view, seq + 1, 0, sender, D, b"ok"),
        "Checkpoint": lambda: Checkpoint(seq, D, sender),
        "ViewChange": lambda: ViewChange(view, seq, D, (), (), sender),
        "NewView": lambda: NewView(view, (), (), sender),
        "Status": lambda: Status(view, seq, seq, (), (), 0, sender),
        "Fetch": lambda: Fetch(view, seq, D, sender),
        "FetchState": lambda: FetchState(seq, D, sender),
        "StateChunk": lambda: StateChunk(seq, D, 0, 1, b"", sender),
    }[name]()
    return sign(statement)


def test_every_protocol_message_has_a_kind_named_as_in_the_protocol() -> None:
    """Every statement of bft/messages.py maps to one of MESSAGE_KINDS (PROTOCOL.md's names);
    the view and seq are the ones the message carries, and a message that carries no view
    takes the view its sending replica is in (CHECKPOINT, FETCH-STATE, STATE-CHUNK, a relayed
    REQUEST)."""
    print(f"seed={SEED}")
    assert {SPEC[t.__name__][0] for t in STATEMENT_TYPES} == set(MESSAGE_KINDS)
    for name, (kind, has_view, has_seq) in SPEC.items():
        msg = codec.decode_untrusted(codec.encode(wire_message(name, 7, 42, 2)))
        assert message_info(msg, sender_view=5) == MessageInfo(
            kind, 7 if has_view else 5, 42 if has_seq else None), name
        assert message_info(msg).view == (7 if has_view else None), name
    assert message_info(b"not a message", sender_view=3) == MessageInfo(None, 3, None)
    # a Proposal whose "pre-prepare" is some other statement is no pre_prepare
    odd = Proposal(wire_message("Commit", 1, 1, 0), Batch(0, ()))
    assert message_info(odd).kind is None


# --------------------------------------------------------------------------
# Each match field selects exactly the messages it should (property tests)
# --------------------------------------------------------------------------

_spans = st.one_of(st.integers(0, 6), st.tuples(st.integers(0, 6), st.integers(0, 6)).map(
    lambda t: [min(t), max(t)]))
_endpoint_lists = st.lists(st.integers(0, N - 1), min_size=1, max_size=N, unique=True)
_kind_names = st.sampled_from([*MESSAGE_KINDS, *KIND_ALIASES, "PRE-PREPARE", "View-Change"])


@st.composite
def rule_fields(draw):  # type: ignore[no-untyped-def]
    fields = {}
    if draw(st.booleans()):
        fields["kinds"] = draw(st.lists(_kind_names, min_size=1, max_size=4))
    if draw(st.booleans()):
        fields["senders"] = draw(_endpoint_lists)
    if draw(st.booleans()):
        fields["receivers"] = draw(_endpoint_lists)
    if draw(st.booleans()):
        fields["views"] = draw(_spans)
    if draw(st.booleans()):
        fields["seqs"] = draw(_spans)
    return fields


def _canonical(kind: str) -> str:
    name = kind.lower().replace("-", "_")
    return KIND_ALIASES.get(name, name)


def expected_match(fields: dict, name: str, src: int | None, dst: int | None, view: int,
                   seq: int, sender_view: int) -> bool:
    """The rule's meaning, written from the spec: every given field must match."""
    kind, has_view, has_seq = SPEC[name]
    msg_view = view if has_view else (sender_view if src is not None else None)
    msg_seq = seq if has_seq else None

    def within(span, x):  # type: ignore[no-untyped-def]
        lo, hi = (span, span) if isinstance(span, int) else span
        return x is not None and lo <= x <= hi

    return all((
        "kinds" not in fields or kind in {_canonical(k) for k in fields["kinds"]},
        "senders" not in fields or src in fields["senders"],
        "receivers" not in fields or dst in fields["receivers"],
        "views" not in fields or within(fields["views"], msg_view),
        "seqs" not in fields or within(fields["seqs"], msg_seq),
    ))


@seed(SEED)
@settings(max_examples=300)
@given(rule_fields(), st.sampled_from(sorted(SPEC)), st.integers(0, 6), st.integers(0, 6),
       st.one_of(st.none(), st.integers(0, N - 1)), st.one_of(st.none(), st.integers(0, N - 1)),
       st.integers(0, 6), st.sampled_from(["drop", "partition"]))
def test_a_rule_takes_exactly_the_messages_its_fields_match(
        fields: dict, name: str, view: int, seq: int, src: int | None, dst: int | None,
        sender_view: int, kind: str) -> None:
    """A random message (through the real codec) and a random targeted rule: the fault model
    drops it iff every given field matches (a `partition` cutting every pair of replicas
    likewise), and a rule that does not take it draws nothing from the random stream."""
    print(f"seed={SEED}")
    sender = src if src is not None else 0
    msg = codec.decode_untrusted(codec.encode(wire_message(name, view, seq, sender)))
    info = message_info(msg, sender_view if src is not None else None)
    if kind == "drop":
        rule = make_network_rule("drop", rate=1.0, **fields)
        cut = True
    else:
        rule = make_network_rule("partition", groups=[[i] for i in range(N)], **fields)
        cut = src is not None and dst is not None and src != dst  # clients reach everyone
    rng = random.Random(SEED)
    model = FaultModel([rule], rng)
    before = rng.getstate()
    fate = model.decide(1.0, src, dst, info)
    want = expected_match(fields, name, src, dst, view, seq, sender_view) and cut
    assert (fate == []) == want, (fields, name, info, src, dst)
    if not expected_match(fields, name, src, dst, view, seq, sender_view):
        assert rng.getstate() == before
        assert model.statistics() == {}


def test_rules_without_match_fields_need_no_message_info() -> None:
    """The hot path: only rules that name kinds, views or seqs make the caller derive the
    message's MessageInfo; `from`/`to` are decided on the link alone."""
    print(f"seed={SEED}")
    assert not FaultModel([make_network_rule("drop", rate=0.1)], random.Random(1)).needs_info
    by_link = FaultModel([make_network_rule("drop", rate=1.0, senders=[1], receivers=2)],
                         random.Random(1))
    assert not by_link.needs_info
    assert by_link.decide(0.0, 1, 2) == [] and by_link.decide(0.0, 2, 1) != []
    targeted = FaultModel([make_network_rule("drop", rate=1.0, kinds="commit")],
                          random.Random(1))
    assert targeted.needs_info
    assert targeted.decide(0.0, 1, 2) != []  # without its MessageInfo nothing is taken
    assert targeted.decide(0.0, 1, 2, MessageInfo("commit", 0, 1)) == []


# --------------------------------------------------------------------------
# Scenario TOML
# --------------------------------------------------------------------------


def test_targeted_rules_round_trip_through_scenario_toml() -> None:
    text = """
[sim]
nodes = 4

[[network]]
kind = "drop"
rate = 1.0
kinds = ["COMMIT", "proposal"]
to = 3
views = 0

[[network]]
kind = "partition"
groups = [[0, 1], [2, 3]]
views = [2, 3]

[[network]]
kind = "delay"
delay_ms = 200
from = [0]
seqs = [5, 9]
kinds = "view-change"
"""
    scenario = parse_scenario(tomllib.loads(text), source="targeted.toml")
    drop, partition, delay = scenario.network
    assert drop.match.kinds == ("commit", "pre_prepare") and drop.match.receivers == (3,)
    assert drop.match.views == (0, 0) and partition.match.views == (2, 3)
    assert delay.match.senders == (0,) and delay.match.seqs == (5, 9)
    assert delay.match.kinds == ("view_change",)
    written = scenario.to_toml()
    assert 'kinds = ["commit", "pre_prepare"]' in written and "to = [3]" in written
    again = parse_scenario(tomllib.loads(written), source="again.toml")
    assert again.network == scenario.network
    assert again.to_toml() == written


@seed(SEED)
@settings(max_examples=100)
@given(rule_fields(), st.sampled_from(["drop", "duplicate", "corrupt", "reorder"]))
def test_any_targeted_rule_round_trips(fields: dict, kind: str) -> None:
    print(f"seed={SEED}")
    scenario = Scenario((), (make_network_rule(kind, rate=0.5, **fields),))
    again = parse_scenario(tomllib.loads(scenario.to_toml()))
    assert again.network == scenario.network


@pytest.mark.parametrize(("table", "field", "hint"), [
    ({"kind": "drop", "rate": 1, "kinds": ["comit"]}, "network[0].kinds[0]", "'commit'"),
    ({"kind": "drop", "rate": 1, "kinds": ["viewchange"]}, "network[0].kinds[0]",
     "'view_change'"),
    ({"kind": "drop", "rate": 1, "kinds": []}, "network[0].kinds", "e.g."),
    ({"kind": "drop", "rate": 1, "kinds": [3]}, "network[0].kinds[0]", "known"),
    ({"kind": "drop", "rate": 1, "knds": ["commit"]}, "network[0].knds", "'kinds'"),
    ({"kind": "drop", "rate": 1, "form": [1]}, "network[0].form", "'from'"),
    ({"kind": "drop", "rate": 1, "views": [3, 1]}, "network[0].views", "views = [1, 2]"),
    ({"kind": "drop", "rate": 1, "views": [-1, 1]}, "network[0].views", "views = [1, 2]"),
    ({"kind": "drop", "rate": 1, "seqs": "5"}, "network[0].seqs", "seqs = [1, 2]"),
    ({"kind": "drop", "rate": 1, "to": []}, "network[0].to", "leave the key out"),
    ({"kind": "drop", "rate": 1, "from": [True]}, "network[0].from", None),
    ({"kind": "drop", "rate": 1, "to": [9]}, "network[0]", None),
])
def test_bad_match_fields_are_refused_naming_the_field(table: dict, field: str,
                                                       hint: str | None) -> None:
    with pytest.raises(ConfigError) as err:
        parse_scenario({"sim": {"nodes": 4}, "network": [table]}, source="bad.toml")
    print(err.value)
    assert err.value.field == field and err.value.file == "bad.toml"
    if hint is not None:
        assert hint in str(err.value)


def test_the_sim_cli_takes_a_targeted_rule(capsys: pytest.CaptureFixture[str]) -> None:
    """`bft sim --net RULE` (a [[network]] table's keys): drop the NEW-VIEW of view 1 after
    the primary crashes; the run still passes, through view 2. A misspelt kind is an
    argparse error naming the rule and the key, with a hint."""
    from adversary.simcli import main

    print(f"seed={SEED}")
    rule = 'kind="drop", rate=1, kinds=["new_view"], views=1'
    assert main(["--seed", "3", "--requests", "40", "--crash", "0@0.1", "--net", rule]) == 0
    out = capsys.readouterr().out
    assert "network[0].dropped" in out and "final view 2" in out, out
    with pytest.raises(SystemExit) as exit_:
        main(["--net", 'kind="drop", rate=1, kinds=["new-veiw"]'])
    assert exit_.value.code == 2
    err = capsys.readouterr().err
    assert "--net[0]: network[0].kinds[0]" in err and "did you mean 'new_view'" in err, err


# --------------------------------------------------------------------------
# The simulator
# --------------------------------------------------------------------------


def _run(rules, *, seed: int = 3, requests: int = 10, **overrides):  # type: ignore[no-untyped-def]
    sim = {"nodes": 4, "seed": seed, "requests": requests, "clients": 2,
           "think_ms": [5.0, 50.0]}
    return Simulation(Scenario((), tuple(rules), sim).sim_config(**overrides)).run(120.0)


def test_dropping_the_new_view_of_view_1_forces_view_2() -> None:
    """The primary crashes with requests in flight; every NEW-VIEW of view 1 is dropped, so
    no replica enters view 1 (PROTOCOL.md "View change", 4.5: the NEW-VIEW timer expires and
    they move to view 2). Without the rule view 1 works. Drops are counted per rule."""
    print(f"seed={SEED}")
    crash = (Crash(0, 0.3, None),)
    plain = _run([], crashes=crash)
    assert plain.ok and plain.final_view == 1, plain.violations
    rule = make_network_rule("drop", rate=1.0, kinds=["new_view"], views=1)
    result = _run([rule], crashes=crash)
    print(result.network)
    assert result.ok, result.violations
    assert result.final_view == 2 and result.completed_requests == result.requests
    faults = result.network["faults"]
    assert faults["network[0].dropped"] == faults["dropped"] > 0
    assert result.network["dropped"]["fault_loss"] == faults["dropped"]


def test_dropping_every_commit_to_replica_3_in_view_0() -> None:
    """Replica 3 never hears a COMMIT of view 0, so it cannot commit-local (PROTOCOL.md
    "Normal case"); it catches up by state transfer once 2f+1 CHECKPOINTs prove a stable
    checkpoint it is behind ("State transfer"). Without the rule it needs none. Only COMMITs
    to 3 are taken: every replica still executes everything and the run passes."""
    print(f"seed={SEED}")
    small = {"cluster_overrides": {"checkpoint_interval": 4, "log_window": 8}}
    plain = _run([], **small)
    assert plain.ok and not plain.events.get("state_transfer"), plain.events
    rule = make_network_rule("drop", rate=1.0, kinds=["commit"], receivers=[3], views=0)
    result = _run([rule], **small)
    print(result.events, result.network["faults"])
    assert result.ok, result.violations
    assert result.events.get("state_transfer", 0) >= 1
    assert result.network["faults"]["network[0].dropped"] > 0
    assert len(set(result.last_executed.values())) == 1


def test_a_view_scoped_partition_cuts_only_that_view() -> None:
    """ByzzFuzz's network fault: "in view 0, {0} | {1, 2, 3}". The primary of view 0 is cut
    off, the others move to view 1, where the partition no longer applies: replica 0 rejoins
    and everyone ends in the same state. The same partition scoped to view 5 (never reached)
    changes nothing: the run is bit-identical to one without it."""
    print(f"seed={SEED}")
    cut = make_network_rule("partition", groups=[[0], [1, 2, 3]], views=0, stop_s=10.0)
    result = _run([cut])
    print(result.network["faults"])
    assert result.ok, result.violations
    assert result.final_view == 1 and result.network["faults"]["network[0].partitioned"] > 0
    assert len(set(result.state_digests.values())) == 1 and len(result.state_digests) == 4
    plain = _run([])
    later = _run([make_network_rule("partition", groups=[[0], [1, 2, 3]], views=5)])
    assert later.trace_hash == plain.trace_hash


@pytest.mark.parametrize("n", [4, 7])
def test_round_schedules_keep_safety(n: int) -> None:
    """Small-scope ByzzFuzz schedules (two view-scoped partitions and three view-scoped
    message faults: drop, duplicate, delay or corrupt every message of one kind from one
    replica to some others) over many seeds: the honest replica keeps every check (the
    partitions end at 5 s so liveness is judged too); the faults bite (view changes happen,
    rules act)."""
    acted = view_changes = 0
    seeds = range(SEED * 100, SEED * 100 + 24)
    for s in seeds:
        print(f"seed={s}")
        rules = round_schedule(random.Random(s), n, max_view=2, partitions=2, message_faults=3,
                               partition_stop_s=5.0)
        assert len(rules) == 5 and all(r.match and r.match.views for r in rules)
        sim = {"nodes": n, "seed": s, "requests": 6, "clients": 2, "think_ms": [5.0, 80.0]}
        result = Simulation(Scenario((), rules, sim).sim_config()).run(120.0)
        assert result.ok, (s, [r.to_dict() for r in rules], result.violations)
        acted += any(k.startswith("network[") for k in result.network["faults"])
        view_changes += result.view_changes > 0
    print(f"schedules that acted: {acted}, with view changes: {view_changes}")
    assert acted >= len(seeds) // 3 and view_changes >= 2


def test_round_schedule_is_seeded_and_small() -> None:
    print(f"seed={SEED}")
    a = round_schedule(random.Random(SEED), 4)
    assert a == round_schedule(random.Random(SEED), 4)
    assert [r.kind for r in a][:1] == ["partition"] and len(a) == 3
    for r in a[1:]:
        assert len(r.match.kinds) == 1 and len(r.match.senders) == 1
        assert r.match.senders[0] not in r.match.receivers and r.match.views[0] <= 3
    with pytest.raises(ValueError):
        round_schedule(random.Random(1), 1)


# --------------------------------------------------------------------------
# Real datagrams
# --------------------------------------------------------------------------


def _frames(msg: Any, message_id: int, max_datagram: int = 1400) -> list[bytes]:
    return encode_frames(0, message_id, codec.encode(msg), max_datagram)


def test_datagram_filter_decodes_what_the_node_sends() -> None:
    """`bft up --scenario`: the send filter of node 0 drops its COMMITs to replica 1 in view 2
    only; other kinds, views and receivers pass; a CHECKPOINT (no view) counts in the node's
    current view; a message in many fragments shares one fate (all or none); a datagram that
    is no message is taken by no targeted rule."""
    print(f"seed={SEED}")
    peers = {("127.0.0.1", 7000 + i): i for i in range(N)}
    view = [2]
    rules = [make_network_rule("drop", rate=1.0, kinds=["commit", "checkpoint"],
                               receivers=[1], views=2)]
    faults = DatagramFaults(rules, 0, peers, random.Random(SEED), lambda: 0.0,
                            view_of=lambda: view[0])
    to1, to2 = ("127.0.0.1", 7001), ("127.0.0.1", 7002)
    [commit2] = _frames(wire_message("Commit", 2, 5, 0), 1)
    [commit3] = _frames(wire_message("Commit", 3, 5, 0), 2)
    [prepare2] = _frames(wire_message("Prepare", 2, 5, 0), 3)
    [checkpoint] = _frames(wire_message("Checkpoint", 0, 8, 0), 4)
    assert faults.send_filter(commit2, to1) == []
    assert faults.send_filter(commit2, to2) == [(commit2, to2)]
    assert faults.send_filter(commit3, to1) == [(commit3, to1)]
    assert faults.send_filter(prepare2, to1) == [(prepare2, to1)]
    assert faults.send_filter(checkpoint, to1) == []  # node 0 is in view 2
    view[0] = 3
    assert faults.send_filter(checkpoint, to1) == [(checkpoint, to1)]
    assert faults.send_filter(b"garbage", to1) == [(b"garbage", to1)]
    # a big message: fragments are held until the last, then share the fate
    big = wire_message("StateChunk", 0, 8, 0)
    big = type(big)(codec.encode(StateChunk(8, D, 0, 1, bytes(5000), 0)), big.signature,
                    StateChunk(8, D, 0, 1, bytes(5000), 0))
    frags = _frames(big, 5, max_datagram=1000)
    assert len(frags) > 3
    chunk_rule = [make_network_rule("duplicate", rate=1.0, kinds=["state_chunk"], seqs=[8, 8])]
    dup = DatagramFaults(chunk_rule, 0, peers, random.Random(SEED), lambda: 0.0,
                         view_of=lambda: 0)
    out = [d for f in frags for d, _ in dup.send_filter(f, to2)]
    assert out == frags + frags
    assert faults.statistics()["network[0].dropped"] == 2


def test_datagram_filter_targets_client_requests_on_receipt() -> None:
    """Datagrams from a client get the rules on receipt: a rule on `request` drops them, one
    on `views` never takes them (a client's request has no view)."""
    print(f"seed={SEED}")
    peers = {("127.0.0.1", 7000 + i): i for i in range(N)}
    client = ("127.0.0.1", 5555)
    [req] = encode_frames(CLIENT_SENDER_BASE, 1, codec.encode(wire_message("Request", 0, 0, 0)), 1400)
    drop = DatagramFaults([make_network_rule("drop", rate=1.0, kinds="request")], 2, peers,
                          random.Random(SEED), lambda: 0.0, view_of=lambda: 0)
    assert drop.recv_filter(req, client) == []
    by_view = DatagramFaults([make_network_rule("drop", rate=1.0, views=[0, 9])], 2, peers,
                             random.Random(SEED), lambda: 0.0, view_of=lambda: 0)
    assert by_view.recv_filter(req, client) == [(req, client)]


async def test_install_puts_targeted_rules_on_a_real_node(tmp_path: Path) -> None:
    """`adversary.runtime.install` (what `bft node --scenario` / `bft up --scenario` run) gives
    the datagram filter the node's current view and the cluster's decoding limits."""
    import dataclasses

    from adversary.localcluster import free_udp_ports
    from adversary.runtime import install
    from bft.config import ClusterConfig, NodeAddress
    from bft.node import Node

    print(f"seed={SEED}")
    nodes = tuple(NodeAddress(i, "127.0.0.1", p) for i, p in enumerate(free_udp_ports(N)))
    config = dataclasses.replace(ClusterConfig.local(N), nodes=nodes)
    node = Node(config, 1, signer=KEYS.signer("replica", 1), verifier=KEYS.verifier(),
                state_dir=tmp_path, fsync="never")
    node.open()
    try:
        rules = (make_network_rule("drop", rate=1.0, kinds=["checkpoint"], views=0),)
        inst = install(node, Scenario((), rules), seed=SEED)
        to2 = (nodes[2].host, nodes[2].port)
        [cp] = encode_frames(1, 1, codec.encode(wire_message("Checkpoint", 0, 8, 1)), 1400)
        [st] = encode_frames(1, 2, codec.encode(wire_message("Status", 0, 0, 1)), 1400)
        send = node.endpoint.send_filter
        assert send(cp, to2) == []  # node 1 is in view 0
        assert send(st, to2) == [(st, to2)]
        node.replica.inner.view = 1  # as if it had moved on
        assert send(cp, to2) == [(cp, to2)]
        assert inst.statistics()["network_faults"]["network[0].dropped"] == 1
    finally:
        node.close()


# --------------------------------------------------------------------------
# A targeted schedule reaches a planted bug (issue 18's 1a)
# --------------------------------------------------------------------------


class SignsCommitInViewChange:
    """Namespace of the planted bug's parts (built lazily: bft.replica is heavy to import)."""

    @staticmethod
    def replica_class() -> type:
        from bft.effects import Broadcast
        from bft.messages import PreparedCert
        from bft.replica import REC_CERT, REC_SENT, Replica

        class LateCommitReplica(Replica):
            """Issue 18's bug 1a planted back: `_check_prepared` as it was before b9b5312,
            without "prepare and commit are steps of view v only" (PROTOCOL.md "Normal
            case"), so a batch that arrives during a view change makes the replica sign a
            COMMIT for the view it is leaving, after its VIEW-CHANGE said it had not
            prepared."""

            def _check_prepared(self, slot):  # type: ignore[no-untyped-def]
                if slot.prepared or slot.pre_prepare is None or slot.batch is None:
                    return
                matching = [s for r, s in slot.prepares.items()
                            if s.statement.digest == slot.digest and r != self.primary()]
                if len(matching) < self.quorum - 1:
                    return
                slot.prepared = True
                slot.cert = PreparedCert(slot.pre_prepare, tuple(sorted(
                    matching, key=lambda s: s.statement.replica))[: self.quorum - 1])
                pp = slot.pre_prepare.statement
                commit = self._sign(Commit(pp.view, pp.seq, pp.digest, self.id))
                slot.commits[self.id] = commit
                slot.sent_commit = True
                self._persist(REC_CERT, slot.cert)
                self._persist(REC_SENT, commit)
                self._out.append(Broadcast(commit))
                self._check_committed(slot)

        return LateCommitReplica


class OmitsPreparedCerts:
    """A Byzantine replica (an honest one wrapped) that re-signs its VIEW-CHANGEs for views >=
    `from_view` without their prepared certificates: a lie by omission that no signature
    check can catch (f = 1 such replica is within the model)."""

    def __init__(self, inner, signer, from_view: int = 2) -> None:  # type: ignore[no-untyped-def]
        self.inner, self.signer, self.from_view = inner, signer, from_view

    def __getattr__(self, name: str):  # type: ignore[no-untyped-def]
        return getattr(self.inner, name)

    def _omit(self, effects: list) -> list:
        import dataclasses

        from bft.effects import Broadcast, Send

        out = []
        for e in effects:
            st = getattr(getattr(e, "message", None), "statement", None)
            if isinstance(e, (Broadcast, Send)) and isinstance(st, ViewChange) \
                    and st.view >= self.from_view and st.prepared:
                e = dataclasses.replace(e, message=self.signer.sign(
                    dataclasses.replace(st, prepared=())))
            out.append(e)
        return out

    def start(self, now, wall=None):  # type: ignore[no-untyped-def]
        return self._omit(self.inner.start(now, wall))

    def receive(self, message, now, wall=None):  # type: ignore[no-untyped-def]
        return self._omit(self.inner.receive(message, now, wall))

    def tick(self, now, wall=None):  # type: ignore[no-untyped-def]
        return self._omit(self.inner.tick(now, wall))


def planted_bug_scenario(late_ms: float) -> Scenario:
    """A targeted, round-based scenario as a user writes it. The roles: replica 0 (view 0's
    primary) is Byzantine and leaves its certificates out of VIEW-CHANGEs of view 2 (see
    OmitsPreparedCerts); replica 1 is view 1's primary, replica 2 view 2's, replica 3 gets the
    batch late."""
    text = f"""
description = "issue 18's 1a: a batch that reaches a replica in a view change"

[sim]
nodes = 4
seed = 1
clients = 1
requests = 3

# replica 3 gets every PRE-PREPARE (with its batch) of views 0-1 late: in view 1 it prepares
# the NEW-VIEW's re-proposal without the batch, so it cannot commit there
[[network]]
kind = "delay"
delay_ms = {late_ms!r}
kinds = ["pre_prepare"]
to = [3]
views = [0, 1]

# replica 2 hears no PREPARE in views 0-1: it holds no prepared certificate
[[network]]
kind = "drop"
rate = 1.0
kinds = ["prepare"]
to = [2]
views = [0, 1]

# only replica 1 hears the COMMITs of view 1: nobody else decides there
[[network]]
kind = "drop"
rate = 1.0
kinds = ["commit"]
to = [0, 2, 3]
views = 1

# replica 1's VIEW-CHANGE (with its certificate) never reaches view 2's primary
[[network]]
kind = "drop"
rate = 1.0
kinds = ["view_change"]
from = [1]
to = [2]
views = 2

# view 2's primary gets the VIEW-CHANGEs 300 ms late: NEW-VIEW(2) comes after the late batch
[[network]]
kind = "delay"
delay_ms = 300.0
kinds = ["view_change"]
to = [2]
views = 2

# replica 1 stays in view 1 700 ms longer (it would join on f+1 VIEW-CHANGEs)
[[network]]
kind = "delay"
delay_ms = 700.0
kinds = ["view_change"]
to = [1]
views = 2
"""
    return parse_scenario(tomllib.loads(text), source="planted-1a.toml")


def _planted_run(scenario: Scenario, replica_class: type | None):  # type: ignore[no-untyped-def]
    def factory(ctx):  # type: ignore[no-untyped-def]
        if replica_class is None:
            return ctx.make_replica()
        return replica_class(ctx.config, ctx.replica_id, signer=ctx.signer,
                             verifier=ctx.verifier, app=ctx.app, recovered=ctx.recovered,
                             digest_every_batch=ctx.digest_every_batch,
                             reply_auth=ctx.reply_auth)

    def byzantine_0(ctx, node):  # type: ignore[no-untyped-def]
        return OmitsPreparedCerts(node, ctx.signer) if ctx.replica_id == 0 else node

    sim = Simulation(scenario.sim_config(node_factory=factory, wrap_node=byzantine_0,
                                         byzantine=frozenset({0})))
    return sim, sim.run(60.0)


def test_a_targeted_schedule_reaches_the_planted_bug_1a() -> None:
    """Issue 18's bug 1a planted back (a COMMIT signed during a view change when a late batch
    arrives) is reached by a targeted, round-based scenario with f = 1 Byzantine replica (which
    only leaves its certificates out of its VIEW-CHANGE): replica 3 signs COMMIT(1, 1, d)
    after its VIEW-CHANGE(2) said it had not prepared; replica 1, still in view 1, commits d at
    seq 1 with the COMMITs of 0, 1 and 3 and executes it; NEW-VIEW(2), computed from the
    VIEW-CHANGEs of 0, 2 and 3, carries no certificate for seq 1, and view 2 orders another
    batch there. The simulator's agreement checker reports it; with the honest Replica the
    same scenario keeps every check (PROTOCOL.md "Normal case": prepare and commit are steps
    of view v only).

    The one timing in it, how late the batch reaches replica 3, is measured on the honest run:
    just after replica 3 starts the view change to view 2 (the runs are the same up to then).
    """
    print(f"seed={SEED} (the scenario's [sim] seed is 1)")
    probe, _ = _planted_run(planted_bug_scenario(60_000.0), None)
    [start] = [at for at, node, kind, fields in probe.event_log
               if kind == "view_change_start" and node == 3 and fields.get("view") == 2]
    scenario = planted_bug_scenario(round(start * 1000 + 50.0, 3))
    print(scenario.to_toml())
    assert parse_scenario(tomllib.loads(scenario.to_toml())).network == scenario.network

    _, result = _planted_run(scenario, SignsCommitInViewChange.replica_class())
    print(result.violations)
    assert not result.safety_ok
    assert any(v.startswith("agreement: seq 1: replica 1 executed") for v in result.violations)

    _, honest = _planted_run(scenario, None)
    assert honest.ok, honest.violations
    assert honest.final_view == result.final_view == 2
