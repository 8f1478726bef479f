"""The dashboard: the cluster model, telemetry reception, and the Textual app.

Textual runs on asyncio while pytest runs in trio_mode here, so every app test
is a plain sync test that runs its own loop with `asyncio.run(...)`.
Golden screens live in tests/tui/golden/; regenerate with UPDATE_GOLDEN=1.
"""

from __future__ import annotations

import asyncio
import dataclasses
import os
import socket
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import pytest
from harness import Net, Ops
from textual.widgets import DataTable, Log, Static

from bft.codec import encode
from bft.config import ClientEntry, ClusterConfig, NodeAddress
from bft.crypto import Ed25519Keys, batch_digest
from bft.messages import Batch, Commit, Prepare, PrePrepare, Proposal, Request, Signed
from bft.telemetry import (
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
    control_cluster_id,
    encode_signed,
)
from transport.frame import decode_frame_untrusted, encode_frames
from tui.app import DashboardApp, HelpScreen
from tui.net import TelemetryReceiver
from tui.state import ClusterModel, commit_line, event_line, evidence_lines, format_agreed_time

GOLDEN = Path(__file__).parent / "golden"
KEYS = Ed25519Keys(4, 1, seed=11, admin=True)
VERIFIER = KEYS.verifier()
CONFIG = ClusterConfig.local(4)
T0 = 1_700_000_000_000_000  # an agreed batch time: 2023-11-14 22:13:20 UTC


def status(node: int, seq_no: int, executed: int = 20, **changes: Any) -> StatusSnapshot:
    values: dict[str, Any] = {
        "node": node,
        "seq_no": seq_no,
        "time_ms": seq_no * 250,
        "view": 0,
        "primary": 0,
        "last_executed": executed,
        "stable_seq": 0,
        "low_watermark": 0,
        "high_watermark": 256,
        "pending": 0,
        "in_view_change": False,
        "suspected": (),
        "msgs_in": seq_no * 100,
        "msgs_out": seq_no * 50,
        "drops": (),
        "drops_total": 0,
        "behaviour": "",
        "paused": False,
    }
    values.update(changes)
    return StatusSnapshot(**values)


def commits(
    node: int, seq_no: int, *seqs: int, view: int = 0, digest: bytes = b"d" * 8
) -> CommitBatch:
    return CommitBatch(
        node,
        seq_no,
        tuple(CommitInfo(s, view, 2, f"put k{s}=v; get k{s}", T0 + s * 1000, digest) for s in seqs),
        0,
        0,
    )


def signed(msg: Any, keys: Ed25519Keys = KEYS) -> bytes:
    return encode_signed(msg, keys.signer("replica", msg.node))


def framed(
    payload: bytes, sender: int = 0, message_id: int = 1, max_datagram_bytes: int = 1400
) -> list[bytes]:
    return encode_frames(sender, message_id, payload, max_datagram_bytes)


def wall_us() -> int:
    """The wall clock as a node reads it for control commands (microseconds)."""
    return time.time_ns() // 1000


def model(**options: Any) -> ClusterModel:
    return ClusterModel.from_config(CONFIG, **options)


# ---------------------------------------------------------------------- the model


def test_node_rows_from_status() -> None:
    m = model()
    for node in range(4):
        m.apply(status(node, 1, executed=16), 10.0)
        m.apply(status(node, 5, executed=20 - node, drops_total=node), 11.0)
    rows = m.node_rows(11.0)
    assert [r.role for r in rows] == ["primary", "backup", "backup", "backup"]
    assert [r.status for r in rows] == ["up"] * 4
    assert [r.executed for r in rows] == [20, 19, 18, 17]
    assert [r.lag for r in rows] == [0, 0, 1, 2]  # the cluster executed 19: the f+1-th highest
    r = rows[1]
    assert (r.address, r.view, r.stable, r.drops) == ("127.0.0.1:7101", 0, 0, 1)
    # 400 messages in and 200 out over 1 s of the node's own clock
    assert (r.msgs_in_s, r.msgs_out_s) == (400.0, 200.0)
    s = m.summary(11.0)
    assert (s.view, s.executed, s.up, s.n, s.f) == (0, 19, 4, 4, 1)


def test_nodes_go_down_when_silent_and_come_back_after_a_restart() -> None:
    m = model(down_after_s=2.0)
    m.apply(status(1, 100), 10.0)
    assert m.node_status(1, 12.0) == "up"
    assert m.node_status(1, 12.01) == "down"
    assert m.node_status(0, 10.0) == "down"  # never heard of
    assert m.node_rows(13.0)[1].msgs_in_s is None
    # while up, an older snapshot is stale; after being down, a restarted node numbers anew
    assert not m.apply(status(1, 99), 11.0)
    assert m.statistics()["ignored_stale_status"] == 1
    assert m.apply(status(1, 1, executed=3), 13.0)
    assert m.node_rows(13.0)[1].executed == 3


def test_status_precedence_and_suspicion_needs_f_plus_1() -> None:
    m = model()
    m.apply(status(0, 1, suspected=((3, 9000),)), 1.0)
    m.apply(status(1, 1, paused=True), 1.0)
    m.apply(status(2, 1, behaviour="lie", suspected=((3, 8000),)), 1.0)
    m.apply(status(3, 1), 1.0)
    assert [m.node_status(i, 1.0) for i in range(4)] == ["up", "paused", "byz:lie", "suspected"]
    m.apply(status(2, 2, behaviour="lie"), 1.5)  # now only node 0 suspects node 3
    assert m.node_status(3, 1.5) == "up"
    m.apply(status(3, 2, suspected=((3, 9000),)), 1.5)  # suspecting oneself does not count
    assert m.node_status(3, 1.5) == "up"


def test_one_lying_node_cannot_inflate_progress() -> None:
    m = model()
    for node in range(3):
        m.apply(status(node, 1, executed=50, view=2), 1.0)
    m.apply(status(3, 1, executed=10**9, view=99, stable_seq=10**9), 1.0)
    s = m.summary(1.0)
    assert (s.executed, s.view, s.stable) == (50, 2, 0)
    assert [r.lag for r in m.node_rows(1.0)] == [0, 0, 0, 0]


def test_commit_log_lists_each_seq_once_and_flags_conflicts() -> None:
    m = model()
    m.apply(commits(0, 1, 1, 2, 3), 1.0)
    m.apply(commits(1, 1, 2, 3, 4), 1.0)
    assert [r.seq for r in m.commit_rows()] == [1, 2, 3, 4]
    assert [r.node for r in m.commit_rows()] == [0, 0, 0, 1]
    assert m.commits_logged == 4
    m.apply(commits(2, 1, 4, digest=b"X" * 8), 1.0)
    [conflict] = [e for e in m.event_rows() if e.kind == "conflict"]
    assert (conflict.node, conflict.text) == (2, "seq 4: batch digest differs from node(s) 1")
    m.apply(commits(3, 1, 4, digest=b"Y" * 8), 1.0)  # reported once per seq
    assert m.statistics()["conflicts"] == 1
    assert commit_line(m.commit_rows()[0]) == "       1 v0      2 22:13:20.001  put k1=v; get k1"


def test_commit_log_is_bounded() -> None:
    m = model(commit_log_size=5)
    m.apply(commits(0, 1, *range(1, 9)), 1.0)
    assert [r.seq for r in m.commit_rows()] == [4, 5, 6, 7, 8]
    m.apply(commits(1, 1, 2, 9), 1.0)  # seq 2 left the window: not logged again
    assert [r.seq for r in m.commit_rows()] == [5, 6, 7, 8, 9]
    assert [r.seq for r in m.commit_rows(2)] == [8, 9]
    assert m.commits_logged == 9


def test_view_timeline() -> None:
    m = model()
    for node in (1, 2, 3):
        m.apply(
            TelemetryEvent(
                node, 1, "view_change_start", (("view", 1), ("cause", "timeout"), ("at_ms", 5))
            ),
            1.0,
        )
    [row] = m.view_rows()
    assert (row.view, row.primary, row.cause, row.asked_by, row.entered_by) == (
        1,
        1,
        "timeout",
        {1, 2, 3},
        set(),
    )
    for node, ms in ((1, 800), (2, 1250)):
        m.apply(
            TelemetryEvent(
                node,
                2,
                "new_view",
                (("view", 1), ("primary", 1), ("cause", "timeout"), ("duration_ms", ms)),
            ),
            2.0,
        )
    m.apply(TelemetryEvent(0, 1, "view_change_start", (("view", 2), ("cause", "evidence"))), 2.0)
    first, second = m.view_rows()
    assert (first.entered_by, first.duration_ms) == ({1, 2}, 1250)
    assert (second.view, second.primary, second.cause) == (2, 2, "evidence")
    # events other than view changes and checkpoints go to the event list
    m.apply(TelemetryEvent(3, 9, "checkpoint_stable", (("seq", 128),)), 2.0)
    m.apply(TelemetryEvent(3, 10, "state_transfer", (("seq", 128), ("behind", 40))), 2.0)
    assert [(e.node, e.kind, e.text) for e in m.event_rows()] == [
        (3, "state_transfer", "seq=128 behind=40")
    ]


def report(node: int, seq_no: int, first: Signed, second: Signed) -> EvidenceReport:
    """An evidence report as node `node` sends it: the two signed messages."""
    return EvidenceReport(node, seq_no, first.body, first.signature, second.body, second.signature)


def signed_by(statement: Any, signer: int | None = None, keys: Any = KEYS) -> Signed:
    """`statement` signed by replica `signer` (default: the replica it names)."""
    signer = statement.replica if signer is None else signer
    signed = keys.signer("replica", signer).sign(
        dataclasses.replace(statement, replica=signer)
    )
    if signer == statement.replica:
        return signed
    body = encode(statement)  # another replica's signature on this statement's bytes
    return Signed(body=body, signature=signed.signature, statement=statement)


D1, D2 = b"\x01" * 32, b"\x02" * 32


def test_evidence_is_checked_and_deduplicated_with_its_holders() -> None:
    m = model(verifier=VERIFIER)
    a, b = signed_by(Prepare(1, 5, D1, 0)), signed_by(Prepare(1, 5, D2, 0))
    c, d = signed_by(Commit(1, 5, D1, 0)), signed_by(Commit(1, 5, D2, 0))
    assert m.apply(report(1, 1, a, b), 1.0)
    assert m.apply(report(2, 1, b, a), 1.0)  # the same proof, the other way round
    assert m.apply(report(2, 2, c, d), 1.0)
    rows = m.evidence_rows()
    assert [(r.culprit, r.kind, r.slot, r.reporters) for r in rows] == [
        (0, "prepare", (1, 5), {1, 2}),
        (0, "commit", (1, 5), {2}),
    ]
    assert (rows[0].first, rows[0].second) == ("01" * 32, "02" * 32)
    assert evidence_lines(rows[0]) == [
        "node 0: prepare v1 n5 (held by 1,2)",
        "  0101010101010101 / 0202020202020202",
    ]
    assert m.statistics().get("evidence_rejected", 0) == 0


def test_forged_evidence_against_a_correct_replica_is_not_shown() -> None:
    """PROTOCOL.md Evidence ("a self-contained proof anyone can verify"): Byzantine replica 3
    sends validly signed reports that blame correct replica 1; none of them is a proof, so
    the dashboard shows no evidence against 1, counts each report and lists it as an event
    of its reporter.

    Failed before the fix: a report carried only a culprit and two digests, and the
    Evidence panel showed "node 1: prepare (held by 3)" for any such report."""
    receiver = TelemetryReceiver(VERIFIER)
    m = model(verifier=VERIFIER)
    real = signed_by(Prepare(1, 5, D1, 1))
    outsider = Ed25519Keys(4, 1, seed=99, admin=True)
    forged = {
        "the same vote twice": (real, real),
        "two votes that agree": (real, signed_by(Prepare(1, 5, D1, 1))),
        "votes for two slots": (real, signed_by(Prepare(1, 6, D2, 1))),
        "a prepare and a commit": (real, signed_by(Commit(1, 5, D2, 1))),
        "a vote of replica 1 and one of replica 2": (real, signed_by(Prepare(1, 5, D2, 2))),
        "a vote 'of' 1 signed by 3": (real, signed_by(Prepare(1, 5, D2, 1), signer=3)),
        "a vote 'of' 1 signed by an outsider": (
            real, signed_by(Prepare(1, 5, D2, 1), keys=outsider)),
        "bytes that are no statement": (
            real, Signed(body=b"\x85junk", signature=real.signature, statement=real.statement)),
    }
    for seq_no, (name, (first, second)) in enumerate(forged.items(), start=1):
        payload = signed(report(3, seq_no, first, second))
        msg = receiver.receive_datagram_untrusted(framed(payload)[0], ("h", 3), 1.0)
        assert msg is not None, name  # well-formed and signed by 3: it reaches the model
        m.apply(msg, 1.0)
        assert m.evidence_rows() == [], name
    stats = m.statistics()
    assert stats["evidence_rejected"] == len(forged)
    assert (stats["evidence_rejected_no_conflict"], stats["evidence_rejected_different_slots"],
            stats["evidence_rejected_not_comparable"],
            stats["evidence_rejected_different_signers"],
            stats["evidence_rejected_bad_signature"], stats["evidence_rejected_malformed"]) == (
        2, 1, 1, 1, 2, 1)
    assert all(e.node == 3 and e.kind == "bad_evidence" for e in m.event_rows())
    assert event_line(m.event_rows()[0]) == (
        "node 3: bad_evidence its proof does not check (no_conflict)")


def test_a_real_equivocation_reaches_the_evidence_panel() -> None:
    """PROTOCOL.md Evidence, end to end: a primary sends two PRE-PREPAREs for (0, 1); correct
    replica 1's Evidence goes through its telemetry and the dashboard's receiver; the panel
    shows the checked proof against the primary."""
    net = Net(4)
    primary, client = net.keys.signer("replica", 0), net.keys.signer("client", 0)
    net.replicas[0] = None  # the primary is the adversary here
    for value in (b"x", b"y"):
        batch = Batch(1, (client.sign(Request(Ops.put("k", value), 1, 0)),))
        pp = primary.sign(PrePrepare(0, 1, batch_digest(batch), 0))
        net.queue.append((0, 1, Proposal(pp, batch)))
    net.deliver()
    [evidence] = [e for e in net.evidence if e.culprit == 0][:1]
    aggregator = TelemetryAggregator(1, net.keys.signer("replica", 1))
    [payload] = aggregator.observe(evidence, 1.0)
    verifier = net.keys.verifier()
    m = model(verifier=verifier)
    msg = TelemetryReceiver(verifier).receive_datagram_untrusted(framed(payload)[0], ("h", 1), 1.0)
    assert msg is not None and m.apply(msg, 1.0)
    [row] = m.evidence_rows()
    assert (row.culprit, row.kind, row.slot, row.reporters) == (0, "pre_prepare", (0, 1), {1})
    assert {row.first, row.second} == {
        evidence.first.statement.digest.hex(), evidence.second.statement.digest.hex()}


def test_without_a_verifier_no_evidence_is_shown() -> None:
    m = model()
    a, b = signed_by(Prepare(1, 5, D1, 0)), signed_by(Prepare(1, 5, D2, 0))
    m.apply(report(1, 1, a, b), 1.0)
    assert m.evidence_rows() == [] and m.statistics()["evidence_unchecked"] == 1


def test_commit_rate_history_counts_cluster_progress_per_second() -> None:
    m = model()
    for node in range(4):
        m.apply(status(node, 1, executed=100), 10.2)  # the baseline: no spike at startup
    for node in range(4):
        m.apply(status(node, 2, executed=130), 10.7)
    for node in range(4):
        m.apply(status(node, 3, executed=180), 11.3)
    assert m.commit_rate_history(12.5, 4) == [0, 0, 30, 50]  # seconds 8, 9, 10, 11
    assert m.commits_per_s(12.5) == 50
    assert m.summary(12.5).commits_per_s == 50


def test_unknown_nodes_and_repeats_are_ignored() -> None:
    m = model()
    assert not m.apply(status(9, 1), 1.0)
    event = TelemetryEvent(1, 7, "restart", (("view", 0),))
    assert m.apply(event, 1.0)
    assert not m.apply(event, 1.1)
    assert m.statistics()["ignored_unknown_node"] == 1
    assert m.statistics()["ignored_repeated"] == 1
    assert len(m.event_rows()) == 1


def test_agreed_time_format() -> None:
    assert format_agreed_time(T0 + 123_456) == "22:13:20.123"
    assert format_agreed_time(0) == "-"
    assert format_agreed_time(2**62) == "?"


# ---------------------------------------------------------------------- reception


def test_receiver_accepts_framed_bare_and_fragmented_telemetry() -> None:
    receiver = TelemetryReceiver(VERIFIER)
    msg = status(1, 1)
    [one] = framed(signed(msg))
    assert receiver.receive_datagram_untrusted(one, ("h", 1), 0.0) == msg
    assert receiver.receive_datagram_untrusted(signed(msg), ("h", 1), 0.0) == msg  # bare
    big = TelemetryEvent(2, 1, "restart", tuple((f"field{i}", "x" * 90) for i in range(12)))
    pieces = framed(signed(big), sender=2, message_id=9, max_datagram_bytes=512)
    assert len(pieces) > 1
    got = [receiver.receive_datagram_untrusted(p, ("h", 2), 0.0) for p in reversed(pieces)]
    assert got[:-1] == [None] * (len(pieces) - 1) and got[-1] == big
    assert receiver.statistics()["accepted"] == {"StatusSnapshot": 2, "TelemetryEvent": 1}
    assert receiver.statistics()["dropped"] == 0


def forged_datagrams() -> dict[str, bytes]:
    """Datagrams the dashboard must ignore, by the reason it counts."""
    outsider = Ed25519Keys(4, 0, seed=99, admin=True)  # keys the config does not know
    good = signed(status(1, 1))
    unsigned = good[:-64] + bytes(64)
    admin = KEYS.signer("admin", 0)
    [corrupt] = framed(good)
    corrupt = corrupt[:30] + bytes([corrupt[30] ^ 1]) + corrupt[31:]
    return {
        "forged": framed(signed(status(1, 2), outsider))[0],
        "unsigned": framed(unsigned)[0],
        "garbage": b"hello, dashboard",
        "control": framed(encode_signed(ControlCommand(b"c" * 32, 1, 5, Crash()), admin))[0],
        "protocol": framed(b"\x84\x01\x02\x03\x04")[0],
        "corrupt": corrupt,
        "junk_telemetry": framed(b"BFTT\x00\x01")[0],
    }


def test_forged_and_unsigned_telemetry_is_ignored_and_counted() -> None:
    receiver = TelemetryReceiver(VERIFIER)
    for name, datagram in forged_datagrams().items():
        assert receiver.receive_datagram_untrusted(datagram, ("h", 1), 0.0) is None, name
    stats = receiver.statistics()
    assert stats["accepted"] == {}
    assert stats["drops"] == {
        "bad_signature": 2,
        "not_telemetry": 3,
        "bad_checksum": 1,
        "malformed": 1,
    }
    assert stats["received"] == stats["dropped"] == 7


# ---------------------------------------------------------------------- the app


def run_app(
    app: DashboardApp, body: Callable[[Any], Awaitable[None]], size: tuple[int, int] = (120, 40)
) -> None:
    async def main() -> None:
        async with app.run_test(size=size) as pilot:
            await body(pilot)

    asyncio.run(main())


def screen_text(app: DashboardApp) -> str:
    strips = app.screen._compositor.render_strips()
    return "\n".join(strip.text.rstrip() for strip in strips) + "\n"


def cells(app: DashboardApp, node: int) -> list[str]:
    return [str(c) for c in app.query_one("#nodes", DataTable).get_row(str(node))]


def feed_scene(app: DashboardApp) -> None:
    """A fixed little story: four nodes, a view change, commits, evidence, a restart."""
    for node in range(4):
        app.feed_message(status(node, 1, executed=16))
    for node in range(4):
        app.feed_message(
            status(
                node,
                5,
                executed=20 - (node == 3) * 5,
                view=1,
                primary=1,
                stable_seq=16,
                drops_total=node * 2,
                behaviour="equivocate" if node == 0 else "",
            )
        )
    app.feed_message(commits(1, 6, 17, 18, 19, 20, view=1))
    app.feed_message(commits(2, 6, 20, 21, view=1))
    for node in (1, 2, 3):
        app.feed_message(
            TelemetryEvent(node, 7, "view_change_start", (("view", 1), ("cause", "evidence")))
        )
        app.feed_message(
            TelemetryEvent(
                node,
                8,
                "new_view",
                (("view", 1), ("primary", 1), ("cause", "evidence"), ("duration_ms", 420 + node)),
            )
        )
    app.feed_message(
        report(
            2,
            9,
            signed_by(PrePrepare(1, 12, bytes(range(32)), 0)),
            signed_by(PrePrepare(1, 12, bytes(range(32, 64)), 0)),
        )
    )
    app.feed_message(TelemetryEvent(3, 10, "state_transfer", (("seq", 16), ("behind", 5))))


def test_app_shows_table_commit_log_and_evidence() -> None:
    app = DashboardApp(CONFIG, VERIFIER, clock=lambda: 100.0)

    async def body(pilot: Any) -> None:
        feed_scene(app)
        app.redraw()
        await pilot.pause()
        assert cells(app, 0) == [
            "0",
            "127.0.0.1:7100",
            "backup",
            "1",
            "20",
            "16",
            "byz:equivocate",
            "400",
            "200",
            "0",
            "0",
            "0",
        ]
        assert cells(app, 1)[2] == "primary"
        assert cells(app, 3)[4:] == ["15", "16", "up", "400", "200", "6", "0", "5"]
        lines = app.query_one("#commits", Log).lines
        assert [line.split()[0] for line in lines] == ["17", "18", "19", "20", "21"]
        assert lines[0] == "      17 v1      2 22:13:20.017  put k17=v; get k17"
        text = screen_text(app)
        assert "node 0: pre_prepare v1 n12 (held by 2)" in text
        assert "  0001020304050607 / 2021222324252627" in text
        assert "v1   p1  evidence     0.42s in 3/4" in text
        assert "node 3: state_transfer seq=16 behind=5" in text
        assert "cluster local-4  n=4 f=1  up 4/4  view 1  executed 20  stable 16" in text

    run_app(app, body)


def test_golden_screen() -> None:
    app = DashboardApp(CONFIG, VERIFIER, clock=lambda: 100.0)

    async def body(pilot: Any) -> None:
        feed_scene(app)
        app.redraw()
        await pilot.pause()
        text = screen_text(app)
        path = GOLDEN / "dashboard-120x40.txt"
        if os.environ.get("UPDATE_GOLDEN"):
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text(text, encoding="utf-8")
        assert text == path.read_text(encoding="utf-8"), (
            "the screen changed: rerun with UPDATE_GOLDEN=1 if that is intended"
        )

    run_app(app, body)


def test_feed_hook_checks_datagrams_like_the_network() -> None:
    async def feed():  # type: ignore[no-untyped-def]
        for datagram in forged_datagrams().values():
            yield datagram
        yield framed(signed(status(2, 3, executed=33)))[0]
        yield status(1, 3, executed=31)  # a decoded message is taken as is

    app = DashboardApp(CONFIG, VERIFIER, feed=feed(), clock=lambda: 50.0)

    async def body(pilot: Any) -> None:
        for _ in range(100):  # until the feed worker has run (it needs a few loop turns)
            await pilot.pause()
            if app.model.statistics().get("applied_StatusSnapshot") == 2:
                break
        app.redraw()
        assert [cells(app, i)[4] for i in range(4)] == ["-", "31", "33", "-"]
        assert [cells(app, i)[6] for i in range(4)] == ["down", "up", "up", "down"]
        stats = app.receiver.statistics()
        assert stats["dropped"] == 7 and stats["accepted"] == {"StatusSnapshot": 1}
        assert "telemetry 1 ok, 7 dropped" in screen_text(app)

    run_app(app, body)


def test_nodes_turn_down_when_telemetry_stops_and_the_app_stays_responsive() -> None:
    now = [10.0]
    app = DashboardApp(CONFIG, VERIFIER, clock=lambda: now[0])

    async def body(pilot: Any) -> None:
        for node in range(4):
            app.feed_message(status(node, 1))
        app.redraw()
        assert [cells(app, i)[6] for i in range(4)] == ["up"] * 4
        now[0] = 12.5  # 2.5 s without telemetry
        app.redraw()
        assert [cells(app, i)[6] for i in range(4)] == ["down"] * 4
        assert "up 0/4" in screen_text(app)
        await pilot.press("question_mark")
        assert isinstance(app.screen, HelpScreen)
        assert "pause the node for 5 s" in screen_text(app)
        await pilot.press("escape")
        assert not isinstance(app.screen, HelpScreen)

    run_app(app, body)


def test_control_keys_without_an_admin_key_send_nothing() -> None:
    app = DashboardApp(CONFIG, VERIFIER, admin_signer=None)

    async def body(pilot: Any) -> None:
        await pilot.press("p", "k", "x")
        await pilot.pause()
        assert app.sent_commands == []

    run_app(app, body)


def test_quit_calls_on_quit() -> None:
    called = []
    app = DashboardApp(CONFIG, VERIFIER, on_quit=lambda: called.append(True))

    async def body(pilot: Any) -> None:
        await pilot.press("q")
        await pilot.pause()

    run_app(app, body)
    assert called == [True]
    assert app.return_code == 0


def udp_socket() -> socket.socket:
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sock.bind(("127.0.0.1", 0))
    sock.setblocking(False)
    return sock


def test_real_udp_telemetry_in_and_signed_control_out() -> None:
    node_sockets = [udp_socket() for _ in range(4)]
    config = ClusterConfig(
        name="udp-test",
        f=1,
        clients=(ClientEntry(0),),
        nodes=tuple(
            NodeAddress(i, "127.0.0.1", s.getsockname()[1]) for i, s in enumerate(node_sockets)
        ),
    )
    app = DashboardApp(config, VERIFIER, KEYS.signer("admin", 0), listen=("127.0.0.1", 0))
    sender = node_sockets[1]

    async def wait_for(condition: Callable[[], bool], pilot: Any) -> None:
        for _ in range(500):  # at most ~5 s; the loopback answers in microseconds
            if condition():
                return
            await pilot.pause(0.01)
        raise AssertionError("timed out")

    def received(sock: socket.socket) -> list[bytes]:
        out = []
        while True:
            try:
                out.append(sock.recv(65536))
            except BlockingIOError:
                return out

    async def body(pilot: Any) -> None:
        address = app.listen_address
        assert address is not None and address[1] != 0
        sender.sendto(framed(signed(status(1, 1, executed=7)))[0], address)
        for datagram in forged_datagrams().values():
            sender.sendto(datagram, address)
        sender.sendto(framed(signed(commits(1, 2, 7)))[0], address)
        await wait_for(lambda: app.receiver.statistics()["received"] == 9, pilot)
        app.redraw()
        assert cells(app, 1)[4:7] == ["7", "0", "up"]
        assert app.receiver.statistics()["dropped"] == 7
        assert app.query_one("#commits", Log).lines[0].split()[0] == "7"

        await pilot.press("down")  # select node 1
        assert app.selected_node() == 1
        await pilot.press("p", "r", "b", "b", "c", "x", "h", "k")
        node_socket = node_sockets[1]
        datagrams: list[bytes] = []

        def all_eight_arrived() -> bool:
            datagrams.extend(received(node_socket))
            return len(datagrams) == 8

        await wait_for(all_eight_arrived, pilot)
        # checked as node 1 checks them: for this cluster, fresh by the wall clock
        gate = ControlGate(1, control_cluster_id(config, VERIFIER))
        got = []
        for datagram in datagrams:
            cmd = gate.accept(decode_frame_untrusted(datagram).payload, VERIFIER, wall_us())
            assert cmd is not None
            got.append(cmd.action)
        assert got == [
            Pause(5000),
            Resume(),
            SetBehaviour("lie"),
            SetBehaviour("equivocate"),
            ClearBehaviour(),
            Cut((0, 2, 3)),
            Heal(),
            Crash(),
        ]
        assert [c.action for c in app.sent_commands] == got
        # a replay of any of them is refused by the node
        replay = decode_frame_untrusted(datagrams[0]).payload
        assert gate.accept(replay, VERIFIER, wall_us()) is None
        assert gate.statistics()["drops"]["stale_seq_no"] == 1
        assert all(received(s) == [] for i, s in enumerate(node_sockets) if i != 1)
        app.redraw()
        assert app.query_one("#events", Log).lines[-1] == "dashboard: -> node 1: crash"

    try:
        run_app(app, body)
    finally:
        for s in node_sockets:
            s.close()


def test_static_panels_do_not_interpret_markup() -> None:
    app = DashboardApp(CONFIG, VERIFIER, clock=lambda: 1.0)

    async def body(pilot: Any) -> None:
        app.feed_message(
            TelemetryEvent(1, 1, "view_change_start", (("view", 1), ("cause", "[bold]x[/")))
        )
        app.feed_message(status(2, 1, behaviour="[red]"))
        app.redraw()
        await pilot.pause()
        text = screen_text(app)
        assert "v1   p1  [bold]x[/" in text
        assert "byz:[red]" in text
        assert isinstance(app.query_one("#timeline", Static), Static)

    run_app(app, body)


@pytest.mark.parametrize("size", [(80, 24), (200, 60)])
def test_other_terminal_sizes_render(size: tuple[int, int]) -> None:
    app = DashboardApp(CONFIG, VERIFIER, clock=lambda: 100.0)

    async def body(pilot: Any) -> None:
        feed_scene(app)
        app.redraw()
        await pilot.pause()
        text = screen_text(app)
        assert "local-4" in text and "n=4 f=1" in text and "Commit log" in text

    run_app(app, body, size=size)


# ---------------------------------------------------------------------- bft tui / bft ctl


def ctl_parser():  # type: ignore[no-untyped-def]
    import argparse

    from tui.commands import add_tui_parsers

    parser = argparse.ArgumentParser(prog="bft")
    add_tui_parsers(parser.add_subparsers(dest="command", required=True))
    return parser


def write_cluster(tmp_path: Path, ports: list[int], monitor: str | None = None) -> Path:
    from bft.cli import main as bft_main

    nodes = "".join(
        f'[[nodes]]\nid = {i}\naddress = "127.0.0.1:{p}"\n\n' for i, p in enumerate(ports)
    )
    telemetry = f'[telemetry]\nmonitor = "{monitor}"\n' if monitor else ""
    path = tmp_path / "c.toml"
    path.write_text(f'[cluster]\nname = "c"\nf = 1\n\n{nodes}[clients]\ncount = 1\n\n{telemetry}')
    assert bft_main(["keygen", str(path), "--key-dir", str(tmp_path / "keys")]) == 0
    return path


def test_bft_ctl_sends_an_admin_signed_command(tmp_path: Path, capsys: Any) -> None:
    from bft.config import ClusterConfig as Config
    from bft.config import load_keyring

    sockets = [udp_socket() for _ in range(4)]
    try:
        path = write_cluster(tmp_path, [s.getsockname()[1] for s in sockets])
        keys = ["--key-dir", str(tmp_path / "keys")]
        args = ctl_parser().parse_args(
            [
                "ctl",
                str(path),
                *keys,
                "--node",
                "2",
                "behaviour",
                "slow",
                "delay_ms=200",
                "drop=true",
            ]
        )
        assert args.handler(args) == 0
        assert "sent 'behaviour slow delay_ms=200 drop=True' to node 2" in capsys.readouterr().out
        sockets[2].setblocking(True)
        sockets[2].settimeout(5)
        datagram = sockets[2].recv(65536)
        config = Config.load(path)
        verifier = load_keyring(config, tmp_path / "keys").verifier()
        gate = ControlGate(2, control_cluster_id(config, verifier))
        cmd = gate.accept(decode_frame_untrusted(datagram).payload, verifier, wall_us())
        assert cmd is not None
        assert cmd.action == SetBehaviour("slow", (("delay_ms", 200), ("drop", True)))
    finally:
        for s in sockets:
            s.close()


@pytest.mark.parametrize(
    "argv, message",
    [
        (["pause"], "usage: bft ctl CONFIG --node N pause SECONDS"),
        (["pause", "-1"], "pause SECONDS must be a number"),
        (["pause", "soon"], "pause SECONDS must be a number"),
        (["cut", "1,x"], "node ids separated by commas"),
        (["cut", "7"], "no node 7"),
        (["resume", "now"], "resume takes no arguments"),
        (["behaviour", "lie", "rate"], "KEY=VALUE"),
    ],
)
def test_bft_ctl_argument_errors(argv: list[str], message: str) -> None:
    from bft.cli import CliError
    from tui.commands import parse_action

    with pytest.raises(CliError, match=message):
        parse_action(argv[0], argv[1:], CONFIG, 1)


def test_bft_ctl_actions() -> None:
    from tui.commands import parse_action

    assert parse_action("pause", ["2.5"], CONFIG, 1) == Pause(2500)
    assert parse_action("cut", ["all"], CONFIG, 1) == Cut((0, 2, 3))
    assert parse_action("cut", ["0,3"], CONFIG, 1) == Cut((0, 3))
    assert parse_action("crash", [], CONFIG, 1) == Crash()
    assert parse_action("clear", [], CONFIG, 1) == ClearBehaviour()


def test_bft_tui_errors_before_starting(tmp_path: Path) -> None:
    from bft.cli import CliError

    path = write_cluster(tmp_path, [7300, 7301, 7302, 7303])
    keys = ["--key-dir", str(tmp_path / "keys")]
    args = ctl_parser().parse_args(["tui", str(path), *keys])
    with pytest.raises(CliError, match="no monitor address"):
        args.handler(args)
    busy = udp_socket()
    try:
        port = busy.getsockname()[1]
        args = ctl_parser().parse_args(["tui", str(path), *keys, "--listen", f"127.0.0.1:{port}"])
        with pytest.raises(CliError, match="cannot listen"):
            args.handler(args)
    finally:
        busy.close()
