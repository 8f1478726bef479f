"""bft.telemetry: the signed telemetry/control format, ControlGate and TelemetryAggregator."""

from __future__ import annotations

import dataclasses

import cbor2
import pytest
from hypothesis import given
from hypothesis import strategies as st

from bft import telemetry as t
from bft.app import Ops
from bft.crypto import Ed25519Keys, sha256
from bft.effects import Event, Evidence, Executed, Persist
from bft.errors import MalformedMessage
from bft.messages import Batch, Prepare, Request
from bft.telemetry import (
    CONTROL_MAGIC,
    SIGNING_PREFIX,
    TELEMETRY_MAGIC,
    BadSignature,
    ClearBehaviour,
    CommitBatch,
    CommitInfo,
    ControlCommand,
    ControlGate,
    Crash,
    Cut,
    EvidenceReport,
    Heal,
    Pause,
    Resume,
    SetBehaviour,
    StatusSnapshot,
    TelemetryAggregator,
    TelemetryEvent,
    decode_signed_untrusted,
    encode_signed,
)

KEYS = Ed25519Keys(4, 2, seed=7, admin=True)
VERIFIER = KEYS.verifier()
ADMIN = KEYS.signer("admin", 0)
CLUSTER = b"\xc1" * 32  # a control_cluster_id
NOW = 1_000  # the gate's wall clock (microseconds) in the gate tests


def replica(i: int):  # type: ignore[no-untyped-def]
    return KEYS.signer("replica", i)


def status(node: int = 1, seq_no: int = 1, **changes) -> StatusSnapshot:  # type: ignore[no-untyped-def]
    values = {
        "node": node,
        "seq_no": seq_no,
        "time_ms": 1000,
        "view": 2,
        "primary": 2,
        "last_executed": 40,
        "stable_seq": 32,
        "low_watermark": 32,
        "high_watermark": 288,
        "pending": 3,
        "in_view_change": False,
        "suspected": ((0, 9500),),
        "msgs_in": 1000,
        "msgs_out": 900,
        "drops": (("malformed", 2), ("old_view", 1)),
        "drops_total": 3,
        "behaviour": "",
        "paused": False,
    }
    values.update(changes)
    return StatusSnapshot(**values)


def raw_payload(
    magic: bytes,
    body: bytes,
    signer,
    kind_code: int | None = None,  # type: ignore[no-untyped-def]
    signer_id: int | None = None,
) -> bytes:
    """A payload around any body bytes, validly signed by `signer` (for format tests)."""
    signature = signer.sign_bytes(SIGNING_PREFIX + magic + body)
    code = {"replica": 0, "admin": 2, "client": 1}[signer.kind] if kind_code is None else kind_code
    ident = signer.id if signer_id is None else signer_id
    return magic + cbor2.dumps([code, ident, body, signature], canonical=True)


# ---------------------------------------------------------------------- strategies

u63 = st.integers(0, 2**63 - 1)
small = st.integers(0, 10**6)
name = st.text(st.characters(min_codepoint=0x20, max_codepoint=0x7E), max_size=t.MAX_NAME_CHARS)
value_text = st.text(
    st.characters(min_codepoint=0x20, max_codepoint=0x7E), max_size=t.MAX_VALUE_CHARS
)
scalar = st.one_of(st.integers(-(2**63), 2**63 - 1), value_text, st.booleans())
fields = st.lists(st.tuples(name, scalar), max_size=t.MAX_FIELDS).map(tuple)
node_id = st.integers(0, 3)

statuses = st.builds(
    StatusSnapshot,
    node=node_id,
    seq_no=u63,
    time_ms=u63,
    view=u63,
    primary=small,
    last_executed=u63,
    stable_seq=u63,
    low_watermark=u63,
    high_watermark=u63,
    pending=small,
    in_view_change=st.booleans(),
    suspected=st.lists(st.tuples(small, small), max_size=5).map(tuple),
    msgs_in=u63,
    msgs_out=u63,
    drops=st.lists(st.tuples(name, u63), max_size=t.MAX_DROP_REASONS).map(tuple),
    drops_total=u63,
    behaviour=name,
    paused=st.booleans(),
)
events = st.builds(TelemetryEvent, node=node_id, seq_no=u63, kind=name, fields=fields)
commit_infos = st.builds(
    CommitInfo,
    seq=u63,
    view=u63,
    size=small,
    ops=value_text,
    batch_time_us=u63,
    digest=st.binary(max_size=32),
)
commit_batches = st.builds(
    CommitBatch,
    node=node_id,
    seq_no=u63,
    commits=st.lists(commit_infos, max_size=t.MAX_COMMITS).map(tuple),
    more_commits=u63,
    more_requests=u63,
)
evidence_reports = st.builds(
    EvidenceReport,
    node=node_id,
    seq_no=u63,
    first_body=st.binary(min_size=1, max_size=t.MAX_EVIDENCE_BODY_BYTES),
    first_signature=st.binary(min_size=64, max_size=64),
    second_body=st.binary(min_size=1, max_size=t.MAX_EVIDENCE_BODY_BYTES),
    second_signature=st.binary(min_size=64, max_size=64),
)
telemetry_messages = st.one_of(statuses, events, commit_batches, evidence_reports)
actions = st.one_of(
    st.builds(Pause, duration_ms=u63),
    st.just(Resume()),
    st.just(ClearBehaviour()),
    st.just(Heal()),
    st.just(Crash()),
    st.builds(SetBehaviour, name=name, params=fields),
    st.builds(Cut, peers=st.lists(small, max_size=20).map(tuple)),
)
commands = st.builds(
    ControlCommand,
    cluster=st.binary(min_size=32, max_size=32),
    target=node_id,
    seq_no=u63,
    action=actions,
)


# ---------------------------------------------------------------------- format


@given(telemetry_messages)
def test_telemetry_round_trips_and_names_its_signer(msg) -> None:  # type: ignore[no-untyped-def]
    payload = encode_signed(msg, replica(msg.node))
    assert payload.startswith(TELEMETRY_MAGIC) and t.is_telemetry(payload)
    assert len(payload) <= t.MAX_PAYLOAD_BYTES
    decoded, identity = decode_signed_untrusted(payload, VERIFIER)
    assert decoded == msg
    assert identity == ("replica", msg.node)
    assert encode_signed(decoded, replica(msg.node)) == payload  # one encoding per message


@given(commands)
def test_control_round_trips(cmd) -> None:  # type: ignore[no-untyped-def]
    payload = encode_signed(cmd, ADMIN)
    assert t.is_control(payload) and not t.is_telemetry(payload)
    assert decode_signed_untrusted(payload, VERIFIER) == (cmd, ("admin", 0))


@given(st.binary(max_size=300), st.sampled_from([TELEMETRY_MAGIC, CONTROL_MAGIC, b""]))
def test_decoding_junk_raises_only_malformed(junk: bytes, magic: bytes) -> None:
    with pytest.raises(MalformedMessage):
        decode_signed_untrusted(magic + junk, VERIFIER)


@given(telemetry_messages, st.data())
def test_any_corruption_is_rejected(msg, data) -> None:  # type: ignore[no-untyped-def]
    payload = bytearray(encode_signed(msg, replica(msg.node)))
    index = data.draw(st.integers(0, len(payload) - 1), label="index")
    payload[index] ^= data.draw(st.integers(1, 255), label="xor")
    with pytest.raises(MalformedMessage):
        decode_signed_untrusted(bytes(payload), VERIFIER)


@given(telemetry_messages, st.data())
def test_truncation_and_trailing_bytes_are_rejected(msg, data) -> None:  # type: ignore[no-untyped-def]
    payload = encode_signed(msg, replica(msg.node))
    cut = data.draw(st.integers(0, len(payload) - 1), label="cut")
    with pytest.raises(MalformedMessage):
        decode_signed_untrusted(payload[:cut], VERIFIER)
    with pytest.raises(MalformedMessage):
        decode_signed_untrusted(payload + b"\x00", VERIFIER)


def body_of(msg) -> bytes:  # type: ignore[no-untyped-def]
    return cbor2.dumps(t._body_items(msg), canonical=True)


@pytest.mark.parametrize(
    "mangle, why",
    [
        (lambda b: b.replace(b"\x18\x28", b"\x19\x00\x28", 1), "non-shortest integer head"),
        (lambda b: b.replace(b"\xf4", b"\x00", 1), "an integer where a bool belongs"),
        (lambda b: b.replace(b"malformed", b"malf\x1bmed", 1), "a control character in text"),
        (lambda b: b.replace(b"malformed", b"malf\xc3\xa9med", 1), "non-ASCII text"),
        (lambda b: b[:1] + b"\xa0" + b[2:], "a map where the tag belongs"),
        (lambda b: b + b"\x00", "trailing bytes in the body"),
    ],
)
def test_strict_body_rules(mangle, why) -> None:  # type: ignore[no-untyped-def]
    body = body_of(status(last_executed=40))
    bad = mangle(body)
    assert bad != body, why
    # validly signed, so only the form can be the reason
    with pytest.raises(MalformedMessage) as info:
        decode_signed_untrusted(raw_payload(TELEMETRY_MAGIC, bad, replica(1)), VERIFIER)
    assert not isinstance(info.value, BadSignature), why


def test_float_and_tag_and_oversize_are_rejected() -> None:
    for body in (
        cbor2.dumps([2, 1, 1, "kind", [["x", 1.5]]], canonical=True),
        cbor2.dumps([2, 1, 1, "kind", [["x", cbor2.CBORTag(2, b"\x01")]]], canonical=True),
        cbor2.dumps([2, 1, 1, "k" * (t.MAX_NAME_CHARS + 1), []], canonical=True),
        cbor2.dumps([2, 1, 1, "kind", [["x", 1]] * (t.MAX_FIELDS + 1)], canonical=True),
    ):
        with pytest.raises(MalformedMessage) as info:
            decode_signed_untrusted(raw_payload(TELEMETRY_MAGIC, body, replica(1)), VERIFIER)
        assert not isinstance(info.value, BadSignature)
    with pytest.raises(MalformedMessage, match="over"):
        decode_signed_untrusted(TELEMETRY_MAGIC + b"\x00" * t.MAX_PAYLOAD_BYTES, VERIFIER)


def test_a_replica_speaks_only_for_itself() -> None:
    forged = raw_payload(TELEMETRY_MAGIC, body_of(status(node=2)), replica(1))  # 1 signs "2"
    with pytest.raises(MalformedMessage, match="signed telemetry of"):
        decode_signed_untrusted(forged, VERIFIER)
    with pytest.raises(ValueError):
        encode_signed(status(node=2), replica(1))


def test_bad_signatures_are_bad_signature() -> None:
    payload = bytearray(encode_signed(status(), replica(1)))
    payload[-1] ^= 1  # the signature is the last item
    with pytest.raises(BadSignature):
        decode_signed_untrusted(bytes(payload), VERIFIER)
    other_keys = Ed25519Keys(4, 0, seed=8, admin=True)  # a signer the config does not know
    with pytest.raises(BadSignature):
        decode_signed_untrusted(encode_signed(status(), other_keys.signer("replica", 1)), VERIFIER)


def test_signatures_do_not_cross_magics_or_kinds() -> None:
    cmd = ControlCommand(CLUSTER, 1, 5, Pause(5000))
    body = body_of(cmd)
    # an admin signature made for some other purpose than control does not verify here
    signature = ADMIN.sign_bytes(body)
    payload = CONTROL_MAGIC + cbor2.dumps([2, 0, body, signature], canonical=True)
    with pytest.raises(BadSignature):
        decode_signed_untrusted(payload, VERIFIER)
    # a client cannot sign telemetry or control at all
    client = KEYS.signer("client", 0)
    with pytest.raises(MalformedMessage, match="may not sign"):
        decode_signed_untrusted(raw_payload(CONTROL_MAGIC, body, client), VERIFIER)
    with pytest.raises(ValueError):
        encode_signed(cmd, client)
    # a telemetry body under the control magic is no command
    tele = body_of(status())
    with pytest.raises(MalformedMessage, match="not a control command"):
        decode_signed_untrusted(raw_payload(CONTROL_MAGIC, tele, replica(1)), VERIFIER)


def test_encode_refuses_what_the_decoder_would_reject() -> None:
    with pytest.raises(ValueError):
        encode_signed(status(behaviour="x" * 100), replica(1))
    with pytest.raises(ValueError):
        encode_signed(status(behaviour="caf\u00e9"), replica(1))
    with pytest.raises(ValueError):
        encode_signed(status(paused=1), replica(1))  # an int is not a bool
    with pytest.raises(TypeError):
        encode_signed("status", replica(1))  # type: ignore[arg-type]


def test_describe_commands() -> None:
    assert ControlCommand(CLUSTER, 1, 1, Pause(5000)).describe() == "pause 5 s"
    assert (
        ControlCommand(CLUSTER, 1, 1, SetBehaviour("lie", (("rate", 3),))).describe()
        == "behaviour lie rate=3"
    )
    assert ControlCommand(CLUSTER, 1, 1, Cut((0, 2))).describe() == "cut 0,2"
    assert ControlCommand(CLUSTER, 1, 1, Cut()).describe() == "cut all"
    assert ControlCommand(CLUSTER, 1, 1, Crash()).describe() == "crash"


# ---------------------------------------------------------------------- ControlGate


def command(  # type: ignore[no-untyped-def]
    seq_no: int, target: int = 2, action=None, signer=ADMIN, cluster: bytes = CLUSTER
) -> bytes:
    return encode_signed(ControlCommand(cluster, target, seq_no, action or Resume()), signer)


def test_gate_accepts_fresh_admin_commands_once() -> None:
    gate = ControlGate(2, CLUSTER)
    first = command(10, action=Pause(5000))
    assert gate.accept(first, VERIFIER, NOW) == ControlCommand(CLUSTER, 2, 10, Pause(5000))
    assert gate.accept(first, VERIFIER, NOW) is None  # replayed
    assert gate.accept(command(9), VERIFIER, NOW) is None  # older than the last accepted
    assert gate.accept(command(10, action=Crash()), VERIFIER, NOW) is None  # same seq_no
    assert gate.accept(command(11), VERIFIER, NOW) == ControlCommand(CLUSTER, 2, 11, Resume())
    stats = gate.statistics()
    assert stats["accepted"] == 2 and stats["last_seq_no"] == 11
    assert stats["drops"]["stale_seq_no"] == 3


def test_gate_rejects_everything_not_from_the_admin_for_this_node() -> None:
    gate = ControlGate(2, CLUSTER, last_seq_no=100)
    by_replica = raw_payload(
        CONTROL_MAGIC, body_of(ControlCommand(CLUSTER, 2, 200, Crash())), replica(1)
    )
    assert decode_signed_untrusted(by_replica, VERIFIER)[1] == ("replica", 1)  # valid, but...
    assert gate.accept(by_replica, VERIFIER, NOW) is None
    forged = raw_payload(
        CONTROL_MAGIC,
        body_of(ControlCommand(CLUSTER, 2, 201, Crash())),
        replica(1),
        kind_code=2,
        signer_id=0,
    )  # a replica's signature labelled as admin
    assert gate.accept(forged, VERIFIER, NOW) is None
    unsigned = CONTROL_MAGIC + cbor2.dumps(
        [2, 0, body_of(ControlCommand(CLUSTER, 2, 202, Crash())), b"\x00" * 64], canonical=True
    )
    assert gate.accept(unsigned, VERIFIER, NOW) is None
    assert gate.accept(command(203, target=3), VERIFIER, NOW) is None
    assert gate.accept(command(203, cluster=b"\xc2" * 32), VERIFIER, NOW) is None
    assert gate.accept(command(50), VERIFIER, NOW) is None  # below the starting seq_no
    assert gate.accept(b"BFTC\x00junk", VERIFIER, NOW) is None
    assert gate.accept(encode_signed(status(), replica(1)), VERIFIER, NOW) is None
    assert gate.accept(b"\x84\x01\x02\x03\x04", VERIFIER, NOW) is None  # a protocol payload
    assert gate.statistics() == {
        "accepted": 0,
        "last_seq_no": 100,
        "verified": 2,
        "drops": {
            "not_control": 2,
            "malformed": 1,
            "not_admin": 1,
            "wrong_cluster": 1,
            "wrong_target": 1,
            "stale_seq_no": 1,
            "expired": 0,
            "too_far_ahead": 0,
            "source_penalized": 0,
            "rate_limited": 0,
            "bad_signature": 2,
        },
    }
    assert gate.accept(command(204), VERIFIER, NOW) is not None  # the gate still works


def test_gate_obeys_only_commands_issued_recently_by_its_clock() -> None:
    """A command's seq_no is its issue time (wall-clock microseconds): it is obeyed for
    CONTROL_MAX_AGE_S after it was issued, with the clock tolerance either way; a command
    recorded and held back, or numbered by a clock far ahead, is refused.

    Before the fix the gate had no clock (its accept took no time): any command above the
    last seq_no was obeyed whenever it arrived, and one numbered an hour ahead made every
    later command stale."""
    s = 1_000_000
    now = 1_700_000_000 * s
    gate = ControlGate(2, CLUSTER, max_age_s=10.0, clock_tolerance_s=1.0)
    assert gate.accept(command(now - 11 * s - 1), VERIFIER, now) is None  # expired
    assert gate.accept(command(now + s + 1), VERIFIER, now) is None  # too far ahead
    assert gate.accept(command(now + 3600 * s), VERIFIER, now) is None
    assert gate.last_seq_no == 0  # nothing refused moved the numbering
    assert gate.accept(command(now - 11 * s), VERIFIER, now) is not None  # the oldest fresh
    assert gate.accept(command(now + s), VERIFIER, now) is not None  # the newest fresh
    drops = gate.statistics()["drops"]
    assert (drops["expired"], drops["too_far_ahead"]) == (1, 2)


def test_cluster_id_names_the_config_and_the_replicas_keys() -> None:
    """Every field that tells two clusters apart changes the id; equal inputs give it
    again (the node, the dashboard and `bft ctl` compute it independently)."""
    from bft.config import ClusterConfig

    base = ClusterConfig.local(4, name="alpha")
    ident = t.control_cluster_id(base, VERIFIER)
    assert len(ident) == t.CLUSTER_ID_BYTES
    assert t.control_cluster_id(ClusterConfig.local(4, name="alpha"), KEYS.verifier()) == ident
    others = [
        t.control_cluster_id(ClusterConfig.local(4, name="beta"), VERIFIER),
        t.control_cluster_id(ClusterConfig.local(4, name="alpha", base_port=7200), VERIFIER),
        t.control_cluster_id(ClusterConfig.local(4, name="alpha", host="10.0.0.1"), VERIFIER),
        t.control_cluster_id(ClusterConfig.local(7, name="alpha"), VERIFIER),
        t.control_cluster_id(ClusterConfig.local(4, name="alpha", f=0), VERIFIER),
        t.control_cluster_id(base, Ed25519Keys(4, 2, seed=8).verifier()),
        t.control_cluster_id(base),
    ]
    assert len({ident, *others}) == len(others) + 1


# ---------------------------------------------------------------------- aggregator

CLIENT = KEYS.signer("client", 0)


def executed(seq: int, n_requests: int = 2, view: int = 0) -> Executed:
    requests = tuple(
        CLIENT.sign(Request(Ops.put(f"k{seq}.{i}", b"v"), seq * 100 + i, 0))
        for i in range(n_requests)
    )
    batch = Batch(1_700_000_000_000_000 + seq, requests)
    return Executed(seq, view, sha256(bytes([seq % 256])), batch, (), b"\x00" * 32)


def stats_source(**extra):  # type: ignore[no-untyped-def]
    calls = []

    def source():  # type: ignore[no-untyped-def]
        calls.append(1)
        base = {
            "view": 1,
            "primary": 1,
            "in_view_change": False,
            "last_executed": 7,
            "stable_seq": 0,
            "low_watermark": 0,
            "high_watermark": 256,
            "pending_requests": 4,
            "drops": {"old_view": 2, "bad_signature": 5},
            "msgs_in": 30,
            "msgs_out": 20,
            "suspected": {3: 9.25},
        }
        base.update(extra)
        return base

    return source, calls


def decode_all(payloads: list[bytes]) -> list:  # type: ignore[type-arg]
    return [decode_signed_untrusted(p, VERIFIER)[0] for p in payloads]


def test_status_is_sent_at_the_first_poll_then_every_interval() -> None:
    agg = TelemetryAggregator(1, replica(1), first_seq_no=1000)
    source, calls = stats_source()
    assert agg.next_due() == float("-inf")
    [snap] = decode_all(agg.poll(10.0, source))
    assert snap == StatusSnapshot(
        node=1,
        seq_no=1001,
        time_ms=10000,
        view=1,
        primary=1,
        last_executed=7,
        stable_seq=0,
        low_watermark=0,
        high_watermark=256,
        pending=4,
        in_view_change=False,
        suspected=((3, 9250),),
        msgs_in=30,
        msgs_out=20,
        drops=(("bad_signature", 5), ("old_view", 2)),
        drops_total=7,
        behaviour="",
        paused=False,
    )
    assert agg.next_due() == 10.25
    assert agg.poll(10.2, source) == [] and len(calls) == 1  # not due: statistics not read
    [snap2] = decode_all(agg.poll(10.25, source))
    assert snap2.seq_no == 1002 and len(calls) == 2


def test_commits_are_aggregated_and_bounded() -> None:
    agg = TelemetryAggregator(1, replica(1), max_commits_per_batch=4)
    source, _ = stats_source()
    agg.poll(0.95, source)  # the next status is due at 1.2
    for seq in range(1, 11):
        assert agg.observe(executed(seq, n_requests=seq % 3), 1.0) == []
    assert agg.next_due() == pytest.approx(1.1)
    assert agg.poll(1.05, source) == []
    [batch] = decode_all(agg.poll(1.1, source))
    assert isinstance(batch, CommitBatch)
    assert [c.seq for c in batch.commits] == [7, 8, 9, 10]  # the newest are listed
    assert batch.more_commits == 6
    assert batch.more_requests == sum(s % 3 for s in range(1, 7))
    c = batch.commits[-1]
    assert (c.view, c.size, c.batch_time_us) == (0, 1, 1_700_000_000_000_010)
    assert c.ops == "put k10.0=v" and c.digest == sha256(bytes([10]))[:8]
    assert batch.commits[0].ops == "put k7.0=v"
    assert batch.commits[2].ops == "(null)"  # seq 9: no requests
    assert agg.next_due() == pytest.approx(1.2)  # only the status is pending now
    assert agg.statistics()["pending_commits"] == 0


def test_a_full_commit_batch_fits_one_datagram() -> None:
    agg = TelemetryAggregator(1, replica(1))
    agg.poll(0.45, stats_source()[0])  # the next status is due at 0.7
    long_key = "\u00e9" + "k" * 200
    for seq in range(1, 100):
        e = executed(seq, 1)
        request = CLIENT.sign(Request(Ops.put(long_key, b"x" * 300), seq, 0))
        agg.observe(
            Executed(seq, 0, e.digest, Batch(2**62, (request,) * 64), (), e.state_digest), 0.5
        )
    [payload] = agg.poll(0.6, stats_source()[0])
    assert len(payload) <= 1400 - 27  # max_datagram_bytes minus the frame overhead
    [batch] = decode_all([payload])
    assert len(batch.commits) == 8 and batch.more_commits == 91
    assert batch.commits[0].ops.endswith("...") and len(batch.commits[0].ops) == 48
    assert batch.commits[0].ops.startswith("put ?kkk")


def test_events_and_evidence_are_sent_at_once() -> None:
    agg = TelemetryAggregator(2, replica(2))
    [e] = decode_all(
        agg.observe(
            Event(
                "new_view",
                {"view": 3, "primary": 3, "cause": "timeout", "duration_s": 1.2345, "at": 4.5},
            ),
            1.0,
        )
    )
    assert e == TelemetryEvent(
        2,
        1,
        "new_view",
        (("view", 3), ("primary", 3), ("cause", "timeout"), ("duration_ms", 1234), ("at_ms", 4500)),
    )
    first = replica(0).sign(Prepare(1, 5, b"\x01" * 32, 0))
    second = replica(0).sign(Prepare(1, 5, b"\x02" * 32, 0))
    assert agg.observe(Event("evidence", {"culprit": 0, "kind": "prepare"}), 1.0) == []
    [r] = decode_all(agg.observe(Evidence(0, "prepare", first, second), 1.0))
    # the two signed messages themselves travel, so the dashboard can check the proof
    assert r == EvidenceReport(2, 2, first.body, first.signature, second.body, second.signature)
    assert agg.observe(Persist(b"x"), 1.0) == []


def test_evidence_too_big_for_a_report_is_counted_not_sent() -> None:
    agg = TelemetryAggregator(2, replica(2))
    first = replica(0).sign(Prepare(1, 5, b"\x01" * 32, 0))
    huge = dataclasses.replace(first, body=b"\x00" * (t.MAX_EVIDENCE_BODY_BYTES + 1))
    assert agg.observe(Evidence(0, "prepare", first, huge), 1.0) == []
    assert agg.statistics()["evidence_unsendable"] == 1
    [snapshot] = decode_all(agg.poll(1.0, lambda: {}))
    assert ("telemetry_evidence_unsendable", 1) in snapshot.drops


def test_event_fields_are_made_safe() -> None:
    assert t.event_fields(
        {"digest": b"\xab" * 40, "text": "a\x1b[31mred", "n": 2**70, "ok": True, "x": None}
    ) == (
        ("digest", "ab" * 16),
        ("text", "a?[31mred"),
        ("n", str(2**70)),
        ("ok", True),
        ("x", "None"),
    )


def test_events_are_rate_limited_and_the_suppressed_counted() -> None:
    agg = TelemetryAggregator(0, replica(0), max_events_per_s=10, max_event_burst=5)
    sent = [agg.observe(Event("restart", {}), 1.0) for _ in range(8)]
    assert [len(s) for s in sent] == [1] * 5 + [0] * 3
    assert agg.observe(Event("restart", {}), 1.05) == []  # half a token
    assert len(agg.observe(Event("restart", {}), 1.15)) == 1
    assert agg.events_suppressed == 4
    [snap] = decode_all(agg.poll(1.2, stats_source(drops={})[0]))
    assert snap.drops == (("telemetry_events_suppressed", 4),)


def test_status_bounds_drops_and_ignores_odd_statistics() -> None:
    agg = TelemetryAggregator(0, replica(0))
    drops = {f"reason_{i:02d}_" + "x" * 60: i for i in range(40)}
    source, _ = stats_source(
        drops=drops,
        suspected={1: float("nan"), 2: 8.0},
        view=None,
        pending_requests=-3,
        behaviour="lie\n",
    )
    [snap] = decode_all(agg.poll(0.0, source))
    assert len(snap.drops) == t.MAX_DROP_REASONS
    assert snap.drops[0][1] == 39 and len(snap.drops[0][0]) == t.MAX_NAME_CHARS
    assert snap.drops_total == sum(range(40))
    assert snap.suspected == ((2, 8000),)
    assert (snap.view, snap.pending, snap.behaviour) == (0, 0, "lie?")


def test_shorten_ops() -> None:
    ops = [Ops.put("a", b"1"), Ops.get("b"), Ops.delete("c"), Ops.lock("L", 500)]
    assert t.shorten_ops(ops) == "put a=1; get b; del c +1"
    assert (
        t.shorten_ops([Ops.lock("L", 500), Ops.unlock("L", 7), Ops.cas("k", None, b"v")])
        == "lock L 500ms; unlock L 7; cas k"
    )
    assert t.shorten_ops([b"\xff"]) == "?"
    assert t.shorten_ops([]) == "(null)"
    assert t.shorten_ops(ops[:1], total=10) == "put a=1 +9"
    assert len(t.shorten_ops(ops, limit=10)) == 10


def test_the_module_is_pure() -> None:
    import ast
    from pathlib import Path

    tree = ast.parse(Path(t.__file__).read_text())
    imported = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            imported |= {alias.name.split(".")[0] for alias in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module:
            imported.add(node.module.split(".")[0])
    forbidden = {"trio", "socket", "asyncio", "threading", "time", "subprocess", "random"}
    assert imported & forbidden == set()
    assert "transport" not in imported and "tui" not in imported
