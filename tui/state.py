"""The dashboard's model of the cluster, built from verified telemetry (no Textual, no I/O).

`ClusterModel.apply(message, now)` folds one telemetry message into the model;
the query methods (`node_rows`, `commit_rows`, `view_rows`, `evidence_rows`,
`event_rows`, `commit_rate_history`, `summary`) give what the screen shows.
`now` is the dashboard's monotonic clock, passed in, so the model is a plain
deterministic object that tests drive directly.

What the numbers mean:

* A node is *down* when nothing arrived from it for `down_after_s` (or never);
  otherwise *paused* if it says so, *byz:NAME* if it runs an adversary
  behaviour, *suspected* if at least f+1 other live nodes suspect it (so at
  least one correct node does), else *up*.
* The cluster's *executed* sequence number is the (f+1)-th highest one the
  live nodes report: at least one correct node got that far, so a lying node
  cannot inflate it (the header's view and stable checkpoint likewise). A node's *lag* is that number minus its own (never below 0).
* *commits/s* counts how fast the cluster's executed number grows, per second
  of the dashboard's clock (whole seconds; the current one is not shown).
* The commit log lists each sequence number once (the first report wins;
  nodes report the newest few commits of every 100 ms, not all of them). Two
  nodes reporting different digests for one sequence number is shown as a
  *conflict* event.

* The evidence panel shows only proofs the dashboard checked itself
  (`bft.evidence.check_evidence_untrusted`, against the config's public
  keys): two validly signed messages of one replica that conflict. The
  culprit shown is the signer of both, never whom a report names. A report
  whose proof does not check is counted (`evidence_rejected`, and by reason)
  and listed as an event of its *reporter* ("bad_evidence"), which proves
  nothing against anyone. Without a verifier nothing is shown.

Everything is bounded: the commit log, the view timeline, the evidence and
event lists are rings; telemetry from node ids outside the config is ignored.
A status snapshot older (by seq_no) than the last one of its node is ignored,
unless the node was down in between (it may have restarted). A repeated
(node, seq_no) of an event, commit batch or evidence report is ignored.
"""

from __future__ import annotations

import collections
import datetime
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

from bft.eventlines import split_drops
from bft.evidence import InvalidEvidence, check_evidence_untrusted
from bft.telemetry import (
    CommitBatch,
    EvidenceReport,
    StatusSnapshot,
    TelemetryEvent,
)

DOWN_AFTER_S = 2.0
RATE_WINDOW_MS = 2000  # msgs/s is measured over about this much of the node's clock
_RECENT_SEQ_NOS = 256  # per node, to ignore repeated events / commit batches


@dataclass(frozen=True, slots=True)
class NodeRow:
    """One line of the node table (None: not known yet)."""

    id: int
    address: str
    role: str
    view: int | None
    executed: int | None
    stable: int | None
    status: str
    msgs_in_s: float | None
    msgs_out_s: float | None
    drops: int | None  # real drops (`bft.eventlines.split_drops`): losses, attacks
    lag: int | None  # sequence numbers behind the cluster
    behaviour: str
    drops_expected: int | None = None  # normal ones: late votes after a quorum, duplicates


@dataclass(frozen=True, slots=True)
class CommitRow:
    """One commit of the log: the first report of sequence number `seq`."""

    seq: int
    view: int
    size: int
    ops: str
    batch_time_us: int
    node: int


@dataclass(slots=True)
class ViewRow:
    """One view of the timeline: who asked for it, why, who entered it and how long it took."""

    view: int
    primary: int
    cause: str = ""
    asked_by: set[int] = field(default_factory=set)
    entered_by: set[int] = field(default_factory=set)
    duration_ms: int | None = None  # the longest view change a node reported for it


@dataclass(slots=True)
class EvidenceRow:
    """A checked proof that `culprit` signed two conflicting messages of `kind` for
    `slot` ((view, seq), or (seq,) for checkpoints), and the nodes holding it."""

    culprit: int
    kind: str
    slot: tuple[int, ...]
    first: str  # the two conflicting digests, hex, in sorted order
    second: str
    reporters: set[int] = field(default_factory=set)


@dataclass(frozen=True, slots=True)
class EventRow:
    """A line of the event list: `node` (None: the dashboard itself), `kind` and text."""

    node: int | None
    kind: str
    text: str


@dataclass(frozen=True, slots=True)
class Summary:
    """The header: the cluster's view, executed and stable numbers, commit rate, nodes up."""

    view: int | None
    executed: int | None
    stable: int | None
    commits_per_s: int
    up: int
    n: int
    f: int


class _Node:
    __slots__ = (
        "address",
        "executed",
        "id",
        "last_seen",
        "recent",
        "samples",
        "status",
        "status_seq_no",
    )

    def __init__(self, id: int, address: str) -> None:
        self.id = id
        self.address = address
        self.last_seen: float | None = None
        self.status: StatusSnapshot | None = None
        self.status_seq_no = -1
        self.executed: int | None = None
        self.samples: collections.deque[tuple[int, int, int]] = collections.deque(maxlen=64)
        self.recent: collections.deque[int] = collections.deque(maxlen=_RECENT_SEQ_NOS)

    def rates(self) -> tuple[float | None, float | None]:
        """(msgs in/s, msgs out/s) over about RATE_WINDOW_MS of the node's own clock."""
        if len(self.samples) < 2:
            return None, None
        t1, in1, out1 = self.samples[-1]
        base = None
        for sample in self.samples:
            if t1 - sample[0] <= RATE_WINDOW_MS:
                base = sample
                break
        if base is None or base[0] >= t1:
            base = self.samples[-2]
        t0, in0, out0 = base
        if t1 <= t0:
            return None, None
        dt = (t1 - t0) / 1000
        return (in1 - in0) / dt, (out1 - out0) / dt


def format_agreed_time(batch_time_us: int) -> str:
    """An agreed batch time (microseconds since the epoch) as UTC `HH:MM:SS.mmm`."""
    if batch_time_us <= 0:
        return "-"
    try:
        moment = datetime.datetime.fromtimestamp(batch_time_us / 1e6, tz=datetime.UTC)
    except (OverflowError, OSError, ValueError):
        return "?"
    return moment.strftime("%H:%M:%S.") + f"{moment.microsecond // 1000:03d}"


class ClusterModel:
    """The cluster as telemetry shows it. See the module docstring for the rules."""

    def __init__(
        self,
        nodes: Sequence[tuple[int, str]],
        f: int,
        *,
        verifier: Any = None,
        down_after_s: float = DOWN_AFTER_S,
        commit_log_size: int = 500,
        timeline_size: int = 50,
        evidence_size: int = 50,
        events_size: int = 200,
        rate_history_s: int = 120,
    ) -> None:
        self.f = f
        self.n = len(nodes)
        self.verifier = verifier  # checks evidence; None: no evidence is shown
        self.down_after_s = down_after_s
        self.nodes: dict[int, _Node] = {i: _Node(i, addr) for i, addr in nodes}
        self.commit_log_size = commit_log_size
        self._commits: collections.OrderedDict[int, CommitRow] = collections.OrderedDict()
        self._commit_digests: collections.OrderedDict[int, dict[bytes, set[int]]] = (
            collections.OrderedDict()
        )
        self._log_floor = 0  # sequence numbers at or below it are out of the log's window
        self.commits_logged = 0  # rows ever added to the commit log
        self._views: collections.OrderedDict[int, ViewRow] = collections.OrderedDict()
        self.timeline_size = timeline_size
        self._evidence: collections.OrderedDict[tuple, EvidenceRow] = collections.OrderedDict()
        self.evidence_size = evidence_size
        self._events: collections.deque[EventRow] = collections.deque(maxlen=events_size)
        self.events_logged = 0
        self._rate: collections.OrderedDict[int, int] = collections.OrderedDict()
        self.rate_history_s = rate_history_s
        self._progress: int | None = None  # the cluster's executed number, for commits/s
        self.stats: collections.Counter[str] = collections.Counter()
        self.version = 0  # changes whenever something shown may have changed

    @classmethod
    def from_config(cls, config: Any, **options: Any) -> ClusterModel:
        """A model of every node of a `ClusterConfig` (pass `verifier=` to show evidence)."""
        return cls([(node.id, str(node)) for node in config.nodes], config.f, **options)

    # ------------------------------------------------------------------ input

    def apply(self, msg: Any, now: float) -> bool:
        """Fold one verified telemetry message in; False (counted) if it was ignored."""
        node = self.nodes.get(getattr(msg, "node", -1))
        if node is None:
            self.stats["ignored_unknown_node"] += 1
            return False
        was_down = self._is_down(node, now)
        if isinstance(msg, StatusSnapshot):
            if msg.seq_no <= node.status_seq_no and not was_down:
                self.stats["ignored_stale_status"] += 1
                return False
            self._apply_status(node, msg)
        else:
            if msg.seq_no in node.recent and not was_down:
                self.stats["ignored_repeated"] += 1
                return False
            node.recent.append(msg.seq_no)
            if isinstance(msg, CommitBatch):
                self._apply_commits(node, msg)
            elif isinstance(msg, TelemetryEvent):
                self._apply_event(node, msg)
            elif isinstance(msg, EvidenceReport):
                self._apply_evidence(node, msg)
            else:
                self.stats["ignored_unknown_type"] += 1
                return False
        node.last_seen = now
        self.stats[f"applied_{type(msg).__name__}"] += 1
        self._note_progress(now)
        self.version += 1
        return True

    def note_command(self, target: int, text: str) -> None:
        """Record that the dashboard sent command `text` to node `target` (shown as an event)."""
        self._event(None, "command", f"-> node {target}: {text}")
        self.version += 1

    def note(self, text: str) -> None:
        """Record a message of the dashboard itself in the event list."""
        self._event(None, "note", text)
        self.version += 1

    def _event(self, node: int | None, kind: str, text: str) -> None:
        self._events.append(EventRow(node, kind, text))
        self.events_logged += 1

    def _apply_status(self, node: _Node, s: StatusSnapshot) -> None:
        node.status = s
        node.status_seq_no = s.seq_no
        node.executed = s.last_executed
        if node.samples and (
            s.time_ms < node.samples[-1][0]
            or s.msgs_in < node.samples[-1][1]
            or s.msgs_out < node.samples[-1][2]
        ):
            node.samples.clear()  # the node restarted: its clock and counters began again
        node.samples.append((s.time_ms, s.msgs_in, s.msgs_out))

    def _apply_commits(self, node: _Node, batch: CommitBatch) -> None:
        for c in batch.commits:
            node.executed = max(node.executed or 0, c.seq)
            digests = self._commit_digests.get(c.seq)
            if digests is None:
                if c.seq <= self._log_floor:
                    continue
                self._commits[c.seq] = CommitRow(
                    c.seq, c.view, c.size, c.ops, c.batch_time_us, node.id
                )
                self._commit_digests[c.seq] = {c.digest: {node.id}}
                self.commits_logged += 1
                while len(self._commits) > self.commit_log_size:
                    old, _ = self._commits.popitem(last=False)
                    self._commit_digests.pop(old, None)
                    self._log_floor = max(self._log_floor, old)
                continue
            reporters = digests.get(c.digest)
            if reporters is not None:
                reporters.add(node.id)
                continue
            others: set[int] = set().union(*digests.values())
            digests[c.digest] = {node.id}
            if len(digests) == 2:  # the first disagreement on this seq
                self._event(
                    node.id,
                    "conflict",
                    f"seq {c.seq}: batch digest differs from node(s) {_ids(others)}",
                )
                self.stats["conflicts"] += 1

    def _apply_event(self, node: _Node, e: TelemetryEvent) -> None:
        kind = e.kind
        if kind in ("view_change_start", "new_view"):
            view = e.field("view")
            if not isinstance(view, int) or isinstance(view, bool) or view < 0:
                return
            row = self._views.get(view)
            if row is None:
                row = self._views[view] = ViewRow(view, view % max(1, self.n))
                while len(self._views) > self.timeline_size:
                    self._views.pop(min(self._views))
            cause = e.field("cause")
            if isinstance(cause, str) and not row.cause:
                row.cause = cause
            if kind == "view_change_start":
                row.asked_by.add(node.id)
            else:
                row.entered_by.add(node.id)
                duration = e.field("duration_ms")
                if isinstance(duration, int) and not isinstance(duration, bool):
                    row.duration_ms = max(row.duration_ms or 0, duration)
            return
        if kind == "checkpoint_stable":
            return  # the stable checkpoint shows in the table and the header
        text = " ".join(f"{k}={_show(v)}" for k, v in e.fields if k != "at_ms")
        self._event(node.id, kind, text)

    def _apply_evidence(self, node: _Node, r: EvidenceReport) -> None:
        if self.verifier is None:
            self.stats["evidence_unchecked"] += 1
            return
        try:
            proof = check_evidence_untrusted(
                r.first_body, r.first_signature, r.second_body, r.second_signature, self.verifier
            )
        except InvalidEvidence as exc:
            self.stats["evidence_rejected"] += 1
            self.stats[f"evidence_rejected_{exc.reason}"] += 1
            self._event(node.id, "bad_evidence", f"its proof does not check ({exc.reason})")
            return
        first, second = sorted(d.hex() for d in proof.digests)
        key = (proof.culprit, proof.kind, proof.slot, first, second)
        row = self._evidence.get(key)
        if row is None:
            row = self._evidence[key] = EvidenceRow(
                proof.culprit, proof.kind, proof.slot, first, second
            )
            while len(self._evidence) > self.evidence_size:
                self._evidence.popitem(last=False)
        row.reporters.add(node.id)

    # ------------------------------------------------------------------ derived

    def _is_down(self, node: _Node, now: float) -> bool:
        return node.last_seen is None or now - node.last_seen > self.down_after_s

    def _live(self, now: float) -> list[_Node]:
        return [n for n in self.nodes.values() if not self._is_down(n, now)]

    def _quorum_value(self, values: Iterable[int]) -> int | None:
        """The (f+1)-th highest value (or the lowest, when fewer are known)."""
        ordered = sorted(values, reverse=True)
        if not ordered:
            return None
        return ordered[min(self.f, len(ordered) - 1)]

    def executed(self, now: float) -> int | None:
        """The cluster's executed sequence number (see the module docstring), None if unknown."""
        return self._quorum_value(n.executed for n in self._live(now) if n.executed is not None)

    def _note_progress(self, now: float) -> None:
        executed = self.executed(now)
        if executed is None:
            return
        if self._progress is not None and executed > self._progress:
            second = int(now // 1)
            self._rate[second] = self._rate.get(second, 0) + executed - self._progress
            while len(self._rate) > self.rate_history_s + 1:
                self._rate.popitem(last=False)
        if self._progress is None or executed > self._progress:
            self._progress = executed

    def commit_rate_history(self, now: float, seconds: int = 60) -> list[int]:
        """Commits per second for the last `seconds` whole seconds before `now`, oldest first."""
        current = int(now // 1)
        return [self._rate.get(s, 0) for s in range(current - seconds, current)]

    def commits_per_s(self, now: float) -> int:
        """Commits in the last whole second."""
        return self._rate.get(int(now // 1) - 1, 0)

    def _suspicions(self, now: float) -> collections.Counter[int]:
        counts: collections.Counter[int] = collections.Counter()
        for n in self._live(now):
            if n.status is not None:
                for peer in {p for p, _ in n.status.suspected if p != n.id}:
                    counts[peer] += 1
        return counts

    def node_status(self, node_id: int, now: float) -> str:
        """down, paused, byz:NAME, suspected or up (see the module docstring)."""
        return self._status(self.nodes[node_id], now, self._suspicions(now))

    def _status(self, node: _Node, now: float, suspicions: collections.Counter[int]) -> str:
        if self._is_down(node, now):
            return "down"
        s = node.status
        if s is not None and s.paused:
            return "paused"
        if s is not None and s.behaviour:
            return f"byz:{s.behaviour}"
        if suspicions[node.id] >= self.f + 1:
            return "suspected"
        return "up"

    def node_rows(self, now: float) -> list[NodeRow]:
        """One row per configured node, by id."""
        executed = self.executed(now)
        suspicions = self._suspicions(now)
        rows = []
        for node in sorted(self.nodes.values(), key=lambda n: n.id):
            s = node.status
            down = self._is_down(node, now)
            status = self._status(node, now, suspicions)
            if s is None:
                role = "-"
            elif s.in_view_change:
                role = f"vc->{s.view}"
            else:
                role = "primary" if s.primary == node.id else "backup"
            rate_in, rate_out = node.rates() if not down else (None, None)
            lag = None
            if executed is not None and node.executed is not None:
                lag = max(0, executed - node.executed)
            real, expected = split_drops(dict(s.drops), s.drops_total) if s else (None, None)
            rows.append(
                NodeRow(
                    id=node.id,
                    address=node.address,
                    role=role,
                    view=s.view if s else None,
                    executed=node.executed,
                    stable=s.stable_seq if s else None,
                    status=status,
                    msgs_in_s=rate_in,
                    msgs_out_s=rate_out,
                    drops=real,
                    lag=lag,
                    behaviour=s.behaviour if s else "",
                    drops_expected=expected,
                )
            )
        return rows

    def summary(self, now: float) -> Summary:
        """The header line's numbers."""
        live = self._live(now)
        statuses = [n.status for n in live if n.status is not None]
        return Summary(
            view=self._quorum_value(s.view for s in statuses),
            executed=self.executed(now),
            stable=self._quorum_value(s.stable_seq for s in statuses),
            commits_per_s=self.commits_per_s(now),
            up=len(live),
            n=self.n,
            f=self.f,
        )

    def commit_rows(self, limit: int | None = None) -> list[CommitRow]:
        """The commit log in the order commits were first reported (the newest last)."""
        rows = list(self._commits.values())
        return rows if limit is None else rows[-limit:] if limit > 0 else []

    def view_rows(self) -> list[ViewRow]:
        """The view timeline, oldest view first."""
        return [self._views[v] for v in sorted(self._views)]

    def evidence_rows(self) -> list[EvidenceRow]:
        """Every distinct checked proof received, oldest first."""
        return list(self._evidence.values())

    def event_rows(self) -> list[EventRow]:
        """Recent events (restarts, state transfers, conflicts, commands sent...), oldest first."""
        return list(self._events)

    def statistics(self) -> dict[str, int]:
        """Counters: applied_<Type>, ignored_<reason>, conflicts, evidence_rejected (and
        evidence_rejected_<reason>), evidence_unchecked (no verifier)."""
        return dict(self.stats)


# ---------------------------------------------------------------------- text


def _ids(ids: Iterable[int]) -> str:
    return ",".join(str(i) for i in sorted(ids))


def _show(value: Any) -> str:
    if isinstance(value, bool):
        return "yes" if value else "no"
    return str(value)


def _num(value: int | None) -> str:
    return "-" if value is None else str(value)


def _rate(value: float | None) -> str:
    return "-" if value is None else f"{value:.0f}"


def node_cells(row: NodeRow, columns: Sequence[str] | None = None) -> tuple[str, ...]:
    """The node table's cells for `row`, in the order of `columns` (default `NODE_COLUMNS`)."""
    cells = {
        "id": str(row.id),
        "address": row.address,
        "role": row.role,
        "view": _num(row.view),
        "executed": _num(row.executed),
        "stable": _num(row.stable),
        "status": row.status,
        "in/s": _rate(row.msgs_in_s),
        "out/s": _rate(row.msgs_out_s),
        "drops": _num(row.drops),
        "expected": _num(row.drops_expected),
        "lag(seq)": _num(row.lag),
    }
    return tuple(cells[c] for c in (NODE_COLUMNS if columns is None else columns))


#: The node table of a wide terminal. "drops" counts real drops (losses, bad input),
#: "expected" the normal ones (late votes after a quorum, duplicates; bft.eventlines).
NODE_COLUMNS = (
    "id",
    "address",
    "role",
    "view",
    "executed",
    "stable",
    "status",
    "in/s",
    "out/s",
    "drops",
    "expected",
    "lag(seq)",
)
#: The node table of a narrow one (80 columns): the header line has the address-free rest.
COMPACT_COLUMNS = (
    "id",
    "role",
    "view",
    "executed",
    "status",
    "in/s",
    "out/s",
    "drops",
    "lag(seq)",
)


def commit_line(row: CommitRow) -> str:
    """One line of the commit log: seq, view, batch size, agreed time, ops."""
    return (
        f"{row.seq:>8} v{row.view:<4} {row.size:>3} {format_agreed_time(row.batch_time_us)}"
        f"  {row.ops}"
    )


COMMIT_HEADER = f"{'seq':>8} {'view':<5} {'n':>3} {'agreed (UTC)':<12}  ops"


def view_line(row: ViewRow, n: int) -> str:
    """One line of the view timeline: view, its primary, cause, then how long the change took
    and how many nodes entered the view (or, still changing, how many asked for it)."""
    cause = row.cause or "?"
    if row.entered_by:
        took = f"{row.duration_ms / 1000:.2f}s" if row.duration_ms is not None else "-"
        state = f"{took:>7} in {len(row.entered_by)}/{n}"
    else:
        state = f"changing {len(row.asked_by)}/{n}"
    return f"v{row.view:<3} p{row.primary:<2} {cause:<10} {state}"


def evidence_lines(row: EvidenceRow) -> list[str]:
    """The evidence panel's two lines for a checked proof: culprit, kind, slot and
    holders; the two conflicting digests."""
    slot = f"v{row.slot[0]} n{row.slot[1]}" if len(row.slot) == 2 else f"n{row.slot[0]}"
    return [
        f"node {row.culprit}: {row.kind} {slot} (held by {_ids(row.reporters)})",
        f"  {row.first[:16]} / {row.second[:16]}",
    ]


def event_line(row: EventRow) -> str:
    """One line of the event list."""
    who = "dashboard" if row.node is None else f"node {row.node}"
    if row.kind in ("command", "note"):
        return f"{who}: {row.text}"
    return f"{who}: {row.kind} {row.text}".rstrip()


def summary_line(s: Summary, name: str, compact: bool = False) -> str:
    """The header line (`compact`: for an 80-column terminal, commits/s first)."""
    if compact:
        return (
            f"{name} n={s.n} f={s.f} up {s.up}/{s.n}  commits/s {s.commits_per_s}  "
            f"view {_num(s.view)}  executed {_num(s.executed)}  stable {_num(s.stable)}"
        )
    return (
        f"cluster {name}  n={s.n} f={s.f}  up {s.up}/{s.n}  view {_num(s.view)}  "
        f"executed {_num(s.executed)}  stable {_num(s.stable)}  "
        f"commits/s {s.commits_per_s}"
    )
