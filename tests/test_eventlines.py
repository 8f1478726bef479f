"""The lines `bft up --no-tui` prints (issue 23 item 4), golden text: one line per cluster
event with UTC times at millisecond precision, durations in ms, no monotonic times and no
empty fields, commits of all nodes merged into one line per interval, a restarted node's
re-execution shown as a replay, control actions, and the stop summary with the digests'
agreement. Times are handed in (a fixed epoch), so the text is exact; regenerate the
golden files with UPDATE_GOLDEN=1 when a change is intended.

Failed before the fix: bft/eventlines.py did not exist; `bft up` printed
`[node N] view_change_start view=1 cause= at=182330.33194793103`, one commit line per
node per second, and a stop summary without drops or the digests' agreement."""

from __future__ import annotations

import logging
import os
import re
from pathlib import Path

from bft.eventlines import (
    ClusterLines,
    NodeEvents,
    digest_agreement,
    iso_utc,
    log_ts,
    split_drops,
    stop_summary_lines,
)
from bft.node import JsonFormatter

GOLDEN = Path(__file__).parent / "golden"
T0 = 1_800_000_000.0  # 2027-01-15T08:00:00Z
STAMP = re.compile(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z ")


def check_golden(name: str, text: str) -> None:
    path = GOLDEN / name
    if os.environ.get("UPDATE_GOLDEN"):
        path.write_text(text, encoding="utf-8")
    assert text == path.read_text(encoding="utf-8"), (
        f"{name} changed: rerun with UPDATE_GOLDEN=1 if that is intended\n{text}")


class Script:
    """Four nodes' NodeEvents feeding one ClusterLines, on a hand-moved clock."""

    def __init__(self) -> None:
        self.t = 0.0
        self.out: list[str] = []
        self.lines = ClusterLines(4, self.out.append)
        self.nodes = [NodeEvents(i, lambda line, i=i: self.lines.node_output(
            i, line, T0 + self.t)) for i in range(4)]

    def at(self, t: float) -> Script:
        self.t = t
        self.lines.tick(T0 + t)
        return self

    def event(self, node: int, kind: str, /, **fields: object) -> None:
        self.nodes[node].event(kind, fields, T0 + self.t)

    def execute(self, node: int, seqs: range, view: int = 0) -> None:
        for seq in seqs:
            self.nodes[node].executed(seq, view, 2, self.t, T0 + self.t)

    def tick_nodes(self) -> None:
        for n in self.nodes:
            n.tick(self.t, T0 + self.t)


def story() -> list[str]:
    s = Script()
    for i in range(4):
        s.at(0.001 * i).nodes[i].ready(T0 + s.t, address=f"127.0.0.1:710{i}", view=0,
                                       last_executed=0)
    s.at(0.1)
    for i in range(4):
        s.execute(i, range(1, 9))
    s.at(0.45)
    for i in range(3):
        s.event(i, "checkpoint_stable", seq=8, digest="6ac71be2dba9bfb2")
    s.at(0.5).event(3, "checkpoint_stable", seq=8, digest="6ac71be2dba9bfb2")
    s.at(0.6).tick_nodes()
    s.at(1.2)
    for i in (1, 2):
        s.event(i, "view_change_start", view=1, cause="timeout", at=182330.33194793103)
    s.event(3, "view_change_start", view=1, cause="", at=182330.34)
    s.at(1.5)
    for i in (1, 2, 3):
        s.event(i, "new_view", view=1, primary=1, cause="timeout",
                duration_s=0.010432397000840865 * i)
    s.at(2.0).event(2, "control", action="pause 5000 ms")
    s.at(2.5).lines.node_output(3, "bft: warning: a line that is not an event", T0 + s.t)
    s.at(2.6)
    for i in range(4):
        s.execute(i, range(9, 17), view=1)
    s.at(3.2).tick_nodes()  # node 3 crashes after executing 16; its snapshot is at 8
    s.nodes[3] = NodeEvents(3, lambda line: s.lines.node_output(3, line, T0 + s.t))
    s.at(3.3).nodes[3].ready(T0 + s.t, address="127.0.0.1:7103", view=1, last_executed=8)
    s.event(3, "restart", view=1, stable_seq=8, last_executed=8)
    s.at(3.4).execute(3, range(9, 17), view=1)  # its WAL's commits: executed again
    for i in range(3):
        s.execute(i, range(17, 21), view=1)
    s.at(3.5).event(1, "vote_floor", floor=24, at=123.4, wait_s=0.25)
    for i in (1, 2):
        s.event(i, "evidence", culprit=0, kind="pre_prepare")
    s.at(3.6)
    for n in s.nodes:
        n.flush(T0 + s.t)
    s.lines.close(T0 + 5.0)
    return s.out


def test_event_lines_golden() -> None:
    out = story()
    print("\n".join(out))
    for line in out:
        assert STAMP.match(line), line
        assert " at=" not in line and "cause= " not in line and not line.endswith("cause=")
        assert not re.search(r"\d+\.\d{4,}", line), f"a raw float: {line}"
    assert sum("committed" in line for line in out) == 3  # one per interval, not per node
    assert sum("checkpoint 8 stable" in line for line in out) == 1
    assert any("node 3 replayed seqs 9..16" in line for line in out)
    assert any("control: node 2 obeyed 'pause 5000 ms'" in line for line in out)
    check_golden("up-events.txt", "\n".join(out) + "\n")


def test_stop_summary_golden() -> None:
    def summary(view: int, seq: int, digest: str, **drops: int) -> dict[str, object]:
        return {"view": view, "last_executed": seq, "state_digest": digest * 8,
                "drops": {"reply_no_address": 1}, "replica_drops": drops}

    agree = {0: summary(1, 80, "6d72f20c", late_vote=176, bad_signature=3),
             1: summary(1, 80, "6d72f20c", late_vote=171),
             2: summary(1, 72, "c9a7b5c8", old_checkpoint=2)}
    lines = stop_summary_lines({0: 0, 1: 0, 2: 0, 3: -9}, agree)
    differ = {0: summary(1, 80, "6d72f20c"), 1: summary(1, 80, "deadbeef"),
              2: summary(1, 80, "6d72f20c")}
    lines += stop_summary_lines({0: 0, 1: 0, 2: 0}, differ)
    print("\n".join(lines))
    assert lines[4] == ("state digests agree: nodes 0,1 at seq 80; node 2 at seq 72 "
                        "(compared only between nodes at the same seq)")
    assert lines[-1].startswith("state digests DIFFER: at seq 80 nodes 0,2 ")
    check_golden("up-stop-summary.txt", "\n".join(lines) + "\n")


def test_digest_agreement_has_teeth() -> None:
    """The checker fails on a planted disagreement, and only compares equal seqs."""
    same = {0: {"last_executed": 5, "state_digest": "aa"}, 1: {"last_executed": 5,
                                                               "state_digest": "aa"}}
    assert digest_agreement(same).startswith("state digests agree")
    planted = {**same, 2: {"last_executed": 5, "state_digest": "bb"}}
    assert digest_agreement(planted).startswith("state digests DIFFER")
    behind = {**same, 2: {"last_executed": 4, "state_digest": "bb"}}
    assert digest_agreement(behind).startswith("state digests agree")


def test_split_drops_counts_late_votes_apart() -> None:
    assert split_drops({"late_vote": 1000, "bad_signature": 2}) == (2, 1000)
    # only the largest reasons listed: the rest of the total counts as real
    assert split_drops({"late_vote": 1000}, total=1004) == (4, 1000)


def test_json_log_ts_is_iso_utc() -> None:
    """Issue 23 item 4: the JSON log's ts is ISO-8601 UTC. Failed before the fix: a float of
    epoch seconds (`"ts": 1796646433.446855`)."""
    record = logging.LogRecord("bft.node.0", logging.INFO, __file__, 1, "hello", (), None)
    record.created = T0 + 0.123456
    line = JsonFormatter().format(record)
    assert '"ts": "2027-01-15T08:00:00.123456Z"' in line, line
    assert iso_utc(T0 + 1.5) == "2027-01-15T08:00:01.500Z"


def test_log_ts_reads_new_and_old_logs() -> None:
    """Readers of the JSON log (bft bench's window facts) take the ISO ts and the old float.
    Failed before the fix: bft bench compared the ISO string with a float (TypeError)."""
    assert log_ts("2027-01-15T08:00:00.123456Z") == T0 + 0.123456
    assert log_ts(T0) == T0
    assert log_ts("yesterday") is None and log_ts(None) is None and log_ts(True) is None
