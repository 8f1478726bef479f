"""The lines `bft up --no-tui` prints: one per cluster event, UTC times, a stop summary.

Pure (no clock, no I/O): every function is handed the times it needs.

Two sides:

* the node's (`bft node --events --event-format json`): `NodeEvents` turns the replica's
  effects into one JSON object per line (`{"ev": KIND, "node": N, "ts": WALL_S, ...}`),
  commits summed over `commit_interval_s` (a commit record covers seqs `first..seq`);
  what executes before the node announced itself is marked `"replay": true` (its WAL).
* the launcher's (`bft up`): `ClusterLines` reads those lines from every node and prints
  one line per *cluster* event: reports of the same event from several nodes (a stable
  checkpoint, a new view) are merged for `window_s` into one line naming the nodes; the
  commits of all nodes are one line per `commit_every_s` (the highest seq and each node's);
  a node's re-execution of seqs the cluster had executed before it (re)started is shown as
  a replay, not as new commits. Every line starts with its time as ISO-8601 UTC at
  millisecond precision; durations are in ms; monotonic times (`at`) are left out, empty
  fields too. Any other line a node prints (an error, a traceback) is passed on as
  `TIME [node N] LINE`.

`stop_summary_lines` is the summary `bft up` prints when it stops: per node its exit
status, view, executed seq, state digest and drops (real and expected apart, see
`split_drops`), and `digest_agreement`, whether the state digests agree; digests are
compared only between nodes at the same executed seq.
"""

from __future__ import annotations

import datetime
import json
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

__all__ = [
    "EXPECTED_DROPS",
    "ClusterLines",
    "NodeEvents",
    "digest_agreement",
    "iso_utc",
    "log_ts",
    "split_drops",
    "stop_summary_lines",
]

#: Drop reasons that are normal on a healthy cluster: a vote that arrives after its quorum
#: was reached, a retransmitted or duplicate message, a message of a view or checkpoint
#: already left behind. Every other reason counts as a real drop (a loss or an attack).
EXPECTED_DROPS = frozenset({
    "late_vote", "old_checkpoint", "old_commit", "old_commit_limit", "outside_watermarks",
    "duplicate_prepare", "duplicate_commit", "duplicate_pre_prepare", "duplicate_view_change",
    "duplicate_request", "duplicate_message", "duplicate_fragment", "status_repeat",
    "fetch_state_repeat", "old_request", "old_view_change", "old_new_view", "own_message",
    "reply_no_address",
})


def iso_utc(wall_s: float, timespec: str = "milliseconds") -> str:
    """`wall_s` (seconds since the epoch) as ISO-8601 UTC: 2026-12-07T12:30:01.123Z."""
    text = datetime.datetime.fromtimestamp(wall_s, datetime.timezone.utc).isoformat(
        timespec=timespec)
    return text.replace("+00:00", "Z")


def log_ts(value: Any) -> float | None:
    """The `ts` of a JSON log line as seconds since the epoch: ISO-8601 (what nodes write
    since issue 23) or a number (older logs); None if it is neither."""
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        return float(value)
    if isinstance(value, str):
        try:
            return datetime.datetime.fromisoformat(value).timestamp()
        except ValueError:
            return None
    return None


def split_drops(drops: Mapping[str, int], total: int | None = None) -> tuple[int, int]:
    """(real, expected) drop counts of a reason -> count mapping. With `total` (when
    `drops` lists only the largest reasons), whatever is not listed counts as real."""
    expected = sum(v for k, v in drops.items() if k in EXPECTED_DROPS)
    listed = sum(drops.values())
    real = listed - expected if total is None else max(0, total - expected)
    return real, expected


def _ms(seconds: Any) -> str:
    return f"{float(seconds) * 1000:.0f} ms"


def _fields_text(fields: Mapping[str, Any]) -> str:
    """k=v pairs for a kind this module does not know: no monotonic times, no empty values,
    durations (`*_s`) in ms, other floats rounded."""
    out = []
    for k, v in fields.items():
        if k in ("at", "ev", "node", "ts") or v in ("", None):
            continue
        if k.endswith("_s") and isinstance(v, (int, float)):
            out.append(f"{k[:-2]}={_ms(v)}")
        elif isinstance(v, float):
            out.append(f"{k}={v:.3g}")
        else:
            out.append(f"{k}={v}")
    return " ".join(out)


# --------------------------------------------------------------------------
# The node's side
# --------------------------------------------------------------------------


class NodeEvents:
    """The JSON event lines of one node (see the module docstring). `emit` gets each line."""

    def __init__(self, node_id: int, emit: Callable[[str], None],
                 commit_interval_s: float = 0.5) -> None:
        self.node_id = node_id
        self.emit = emit
        self.commit_interval_s = commit_interval_s
        self.announced = False
        self._commit: dict[str, Any] | None = None
        self._commit_due = 0.0

    def _out(self, ev: str, wall_s: float, /, **fields: Any) -> None:
        self.emit(json.dumps({**fields, "ev": ev, "node": self.node_id,
                              "ts": round(wall_s, 3)}, default=str, sort_keys=True))

    def ready(self, wall_s: float, /, **fields: Any) -> None:
        """The node is up (bound, recovered): what executes from now on is new."""
        self.flush(wall_s)
        self.announced = True
        self._out("ready", wall_s, **fields)

    def executed(self, seq: int, view: int, requests: int, mono_s: float,
                 wall_s: float) -> None:
        replay = not self.announced
        c = self._commit
        if c is not None and c["replay"] != replay:
            self.flush(wall_s)
            c = None
        if c is None:
            c = self._commit = {"first": seq, "seq": seq, "view": view, "requests": 0,
                                "replay": replay, "ts": wall_s}
            self._commit_due = mono_s + self.commit_interval_s
        c["seq"], c["view"] = seq, view
        c["requests"] += requests
        if mono_s >= self._commit_due:
            self.flush(wall_s)

    def tick(self, mono_s: float, wall_s: float) -> None:
        """Emit the commits summed so far once `commit_interval_s` has passed (call it
        periodically: commits that stop must still be shown)."""
        if self._commit is not None and mono_s >= self._commit_due:
            self.flush(wall_s)

    def event(self, kind: str, fields: Mapping[str, Any], wall_s: float) -> None:
        self._out(kind, wall_s, **{k: v for k, v in fields.items()
                                   if k not in ("ev", "node", "ts")})

    def flush(self, wall_s: float) -> None:
        """Emit the commits summed so far (`bft node` calls it on its tick and at the end)."""
        c, self._commit = self._commit, None
        if c is not None:
            ts = c.pop("ts")
            if not c["replay"]:
                del c["replay"]
            self._out("commit", ts, **c)


# --------------------------------------------------------------------------
# The launcher's side
# --------------------------------------------------------------------------


@dataclass
class _Group:
    """Reports of one cluster event from several nodes, merged into one line."""

    ts: float
    seen_at: float
    text: Callable[[list[dict[str, Any]]], str]
    reports: dict[int, dict[str, Any]] = field(default_factory=dict)


def _nodes_text(ids: Iterable[int], n: int) -> str:
    ids = sorted(ids)
    if len(ids) == n > 1:
        return f"all {n} nodes"
    return ("node " if len(ids) == 1 else "nodes ") + ",".join(map(str, ids))


class ClusterLines:
    """The launcher's printer of cluster events (see the module docstring). `say` gets each
    finished line. Call `tick(now)` often (it prints what is due) and `close(now)` last."""

    def __init__(self, n: int, say: Callable[[str], None], *, window_s: float = 1.0,
                 commit_every_s: float = 1.0) -> None:
        self.n = n
        self.say = say
        self.window_s = window_s
        self.commit_every_s = commit_every_s
        self.top = 0  # the highest seq any node executed
        self.executed: dict[int, int] = {}  # node -> its highest executed seq
        self._groups: dict[tuple[Any, ...], _Group] = {}
        self._commit_from = 0  # the top when the last commit line was printed
        self._commit_ts: float | None = None
        self._commit_view = 0
        self._commit_due = 0.0
        self._replay_floor: dict[int, int] = {}  # node -> the top when it (re)started
        self._replays: dict[int, list[Any]] = {}  # node -> [first, last, ts]

    def _line(self, ts: float, text: str) -> None:
        self.say(f"{iso_utc(ts)} {text}")

    def note(self, text: str, wall_s: float) -> None:
        """A line of the launcher itself (started, stopping, a restart)."""
        self._line(wall_s, text)

    def node_output(self, node_id: int, line: str, wall_s: float) -> None:
        """One line node `node_id` printed, received at `wall_s`."""
        record = None
        if line.startswith('{"'):
            try:
                record = json.loads(line)
            except ValueError:
                record = None
        if not isinstance(record, dict) or not isinstance(record.get("ev"), str):
            self._line(wall_s, f"[node {node_id}] {line}")
            return
        record["node"] = node_id  # the launcher knows whose output it is
        ts = record.get("ts")
        ts = float(ts) if isinstance(ts, (int, float)) else wall_s
        self._record(record, ts, wall_s)
        self.tick(wall_s)

    def _group(self, key: tuple[Any, ...], record: dict[str, Any], ts: float, wall_s: float,
               text: Callable[[list[dict[str, Any]]], str]) -> None:
        group = self._groups.get(key)
        if group is None:
            group = self._groups[key] = _Group(ts, wall_s, text)
        group.reports[record["node"]] = record
        if len(group.reports) >= self.n:
            self._flush_group(key)

    def _flush_group(self, key: tuple[Any, ...]) -> None:
        group = self._groups.pop(key)
        reports = [group.reports[i] for i in sorted(group.reports)]
        self._line(group.ts, f"{group.text(reports)} ({_nodes_text(group.reports, self.n)})")

    def _record(self, r: dict[str, Any], ts: float, wall_s: float) -> None:
        kind, node = r["ev"], r["node"]
        if kind == "commit":
            self._commit(r, ts)
        elif kind == "ready":
            self._replay_floor[node] = max(self.top, self.executed.get(node, 0))
            executed = r.get("last_executed")
            if isinstance(executed, int):  # a restarted cluster goes on from its WAL
                self.top = max(self.top, executed)
                self._commit_from = max(self._commit_from, executed)
                self.executed[node] = executed
            metrics = f", metrics on {r['metrics']}" if r.get("metrics") else ""
            self._line(ts, f"node {node} up at {r.get('address', '?')}: view {r.get('view')}, "
                       f"executed {r.get('last_executed')}{metrics}")
        elif kind == "checkpoint_stable":
            self._group((kind, r.get("seq"), r.get("digest")), r, ts, wall_s, lambda rs: (
                f"checkpoint {rs[0].get('seq')} stable, state digest {rs[0].get('digest')}"))
        elif kind == "view_change_start":
            def vc(rs: list[dict[str, Any]]) -> str:
                causes = sorted({str(x.get("cause")) for x in rs if x.get("cause")})
                return (f"view change to view {rs[0].get('view')}"
                        + (f", cause {' / '.join(causes)}" if causes else ""))

            self._group((kind, r.get("view")), r, ts, wall_s, vc)
        elif kind == "new_view":
            def nv(rs: list[dict[str, Any]]) -> str:
                took = [float(x["duration_s"]) for x in rs
                        if isinstance(x.get("duration_s"), (int, float))]
                causes = sorted({str(x.get("cause")) for x in rs if x.get("cause")})
                return (f"view {rs[0].get('view')} entered, primary {rs[0].get('primary')}"
                        + (f", cause {' / '.join(causes)}" if causes else "")
                        + (f", took up to {_ms(max(took))}" if took else ""))

            self._group((kind, r.get("view"), r.get("primary")), r, ts, wall_s, nv)
        elif kind == "evidence":
            self._group((kind, r.get("culprit"), r.get("kind")), r, ts, wall_s, lambda rs: (
                f"evidence against node {rs[0].get('culprit')}: {rs[0].get('kind')}"))
        elif kind == "restart":
            self._replay_floor[node] = max(self._replay_floor.get(node, 0), self.top)
            self._line(ts, f"node {node} recovered from its WAL: view {r.get('view')}, "
                       f"stable checkpoint {r.get('stable_seq')}, executed "
                       f"{r.get('last_executed')}")
        elif kind == "control":
            self._line(ts, f"control: node {node} obeyed '{r.get('action')}'")
        elif kind == "state_transfer_start":
            self._line(ts, f"node {node} state transfer to seq {r.get('seq')} started "
                       f"({r.get('behind')} behind)")
        elif kind == "state_transfer":
            self._line(ts, f"node {node} state transfer to seq {r.get('seq')} done")
        else:
            text = _fields_text(r)
            self._line(ts, f"node {node} {kind}" + (f" {text}" if text else ""))

    def _commit(self, r: dict[str, Any], ts: float) -> None:
        node = r["node"]
        seq = int(r.get("seq", 0))
        first = int(r.get("first", seq))
        floor = self._replay_floor.get(node, 0)
        if r.get("replay") or seq <= floor:
            rep = self._replays.setdefault(node, [first, seq, ts])
            rep[1] = seq
        else:
            self.top = max(self.top, seq)
            self._commit_view = int(r.get("view", self._commit_view))
            self._commit_ts = max(ts, self._commit_ts or ts)
        self.executed[node] = max(self.executed.get(node, 0), seq)

    def tick(self, wall_s: float) -> None:
        """Print the merged events whose window passed and the commit line when due."""
        for key in [k for k, g in self._groups.items() if wall_s - g.seen_at >= self.window_s]:
            self._flush_group(key)
        if wall_s >= self._commit_due:
            self._flush_commits(wall_s)

    def _flush_commits(self, wall_s: float) -> None:
        for node, (first, last, ts) in sorted(self._replays.items()):
            self._line(ts, f"node {node} replayed seqs {first}..{last} (executed before it "
                       "restarted; not new commits)")
        self._replays.clear()
        if self._commit_ts is not None and self.top > self._commit_from:
            per_node = " ".join(f"{i}:{s}" for i, s in sorted(self.executed.items()))
            self._line(wall_s, f"committed seqs {self._commit_from + 1}..{self.top} "
                       f"in view {self._commit_view}; executed by node {per_node}")
            self._commit_from = self.top
        self._commit_ts = None
        self._commit_due = wall_s + self.commit_every_s

    def close(self, wall_s: float) -> None:
        """Print everything still held."""
        for key in list(self._groups):
            self._flush_group(key)
        self._flush_commits(wall_s)


# --------------------------------------------------------------------------
# The stop summary
# --------------------------------------------------------------------------


def digest_agreement(summaries: Mapping[int, Mapping[str, Any]]) -> str:
    """Whether the nodes' state digests agree. Digests are compared only between nodes at
    the same executed seq (a node behind has another state, rightly); one line."""
    by_seq: dict[int, dict[str, list[int]]] = {}
    for node, s in sorted(summaries.items()):
        seq, digest = s.get("last_executed"), s.get("state_digest")
        if isinstance(seq, int) and isinstance(digest, str):
            by_seq.setdefault(seq, {}).setdefault(digest[:16], []).append(node)
    if not by_seq:
        return "state digests: no node left a stop summary"
    parts, differ = [], False
    for seq in sorted(by_seq, reverse=True):
        digests = by_seq[seq]
        nodes = sorted(i for ids in digests.values() for i in ids)
        if len(digests) > 1:
            differ = True
            parts.append(f"at seq {seq} " + " vs ".join(
                f"{_nodes_text(ids, 0)} {d}" for d, ids in sorted(digests.items())))
        else:
            parts.append(f"{_nodes_text(nodes, 0)} at seq {seq}")
    head = "state digests DIFFER" if differ else "state digests agree"
    note = "" if len(by_seq) == 1 else " (compared only between nodes at the same seq)"
    return f"{head}: {'; '.join(parts)}{note}"


def stop_summary_lines(statuses: Mapping[int, int | None],
                       summaries: Mapping[int, Mapping[str, Any]]) -> list[str]:
    """The stop summary: one line per node (exit status, view, executed, state digest,
    drops real and expected), then `digest_agreement`."""
    lines = []
    for node in sorted(statuses):
        s = summaries.get(node)
        head = f"node {node}: exit status {statuses[node]}"
        if s is None:
            lines.append(f"{head}, no stop summary")
            continue
        drops: dict[str, int] = {}
        for source in ("drops", "replica_drops"):
            for k, v in dict(s.get(source) or {}).items():
                if isinstance(v, int):
                    drops[k] = drops.get(k, 0) + v
        real, expected = split_drops(drops)
        worst = sorted(((v, k) for k, v in drops.items() if k not in EXPECTED_DROPS and v),
                       reverse=True)[:3]
        lines.append(f"{head}, view {s.get('view')}, executed {s.get('last_executed')}, "
                     f"state digest {str(s.get('state_digest'))[:16]}, drops {real} real"
                     + (f" ({', '.join(f'{k} {v}' for v, k in worst)})" if worst else "")
                     + f" + {expected} expected")
    lines.append(digest_agreement(summaries))
    return lines
