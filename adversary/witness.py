"""The evidence witness: did every equivocation that reached an honest replica leave a proof?

PROTOCOL.md ("Evidence"): two validly signed messages from one node that
conflict (two PRE-PREPAREs for one (v, seq) with different digests; two
PREPAREs or COMMITs of one (v, seq, i) with different digests; two
CHECKPOINTs of one (seq, i) with different digests) form a proof, and a
correct replica that holds one of them and receives the other must produce
`Evidence`.

The simulator shows the witness every message a watched (Byzantine) replica
signed on its way into a correct replica, before and after delivery. Before,
the witness looks into the receiving replica: does it hold, for the same
slot and in the view it is in, a different signed statement from the same
signer, which the replica keeps for exactly this comparison (the accepted
pre-prepare, the first PREPARE/COMMIT per replica, the checkpoint votes)?
If so, the equivocation *reached* the replica and the delivery must produce
`Evidence` against the signer, unless the replica already produced it for
that slot. A delivery that does not is recorded in `missed`.

It also counts every conflicting pair delivered to a correct replica at all
(`conflicts_delivered`), whatever that replica's state. A replica it cannot
inspect (not a `bft.replica.Replica`, e.g. wrapped by a behaviour) is skipped.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

from bft.effects import Evidence
from bft.messages import Checkpoint, Commit, Prepare, PrePrepare, Proposal, Signed

MAX_MISSED = 50


@dataclass(frozen=True, slots=True)
class Expectation:
    """A delivery that must produce Evidence: who, against whom, for which slot."""

    node: int
    culprit: int
    kind: str
    replica_key: tuple[Any, ...]
    at: float


def _statements(message: Any) -> list[tuple[str, Any, Signed]]:
    """(kind, statement, signed) of the top-level signed statements the replica compares."""
    if isinstance(message, Proposal):
        st = message.pre_prepare.statement
        return [("pre_prepare", st, message.pre_prepare)] if isinstance(st, PrePrepare) else []
    if isinstance(message, Signed):
        st = message.statement
        kind = {Prepare: "prepare", Commit: "commit", Checkpoint: "checkpoint"}.get(type(st))
        return [(kind, st, message)] if kind else []
    return []


class EquivocationWitness:
    """Watches statements signed by `watched` replicas reaching correct replicas (see module)."""

    def __init__(self, watched: Iterable[int], verifier: Any, checkpoint_interval: int,
                 log_window: int) -> None:
        self.watched = frozenset(watched)
        self.verifier = verifier
        self.k = checkpoint_interval
        self.log_window = log_window
        self.seen: dict[tuple[Any, ...], set[bytes]] = {}  # (node, culprit, kind, slot) -> digests
        self.conflicts: Counter[int] = Counter()  # culprit -> conflicting pairs delivered
        self.expected = 0
        self.missed: list[str] = []
        self.missed_count = 0
        self.skipped = 0

    def before(self, node: int, replica: Any, message: Any, now: float) -> list[Expectation]:
        """Call before `replica` (correct replica `node`) receives `message`: what it must prove."""
        out = []
        for kind, st, signed in _statements(message):
            culprit = st.replica
            if culprit not in self.watched or culprit == node:
                continue
            digest = st.state_digest if kind == "checkpoint" else st.digest
            slot_key = (st.seq,) if kind == "checkpoint" else (st.view, st.seq)
            digests = self.seen.setdefault((node, culprit, kind, *slot_key), set())
            if digests and digest not in digests:
                self.conflicts[culprit] += 1
            digests.add(digest)
            expectation = self._reaches(node, replica, kind, st, message, now)
            if expectation is not None:
                out.append(expectation)
        return out

    def after(self, effects: Iterable[Any], expected: list[Expectation]) -> None:
        """Call with the effects of that delivery: every expectation must have its Evidence."""
        if not expected:
            return
        proven = {(e.culprit, e.kind) for e in effects if isinstance(e, Evidence)}
        for x in expected:
            self.expected += 1
            if (x.culprit, x.kind) in proven:
                continue
            self.missed_count += 1
            if len(self.missed) < MAX_MISSED:
                self.missed.append(f"replica {x.node} at {x.at:.6f} s held a {x.kind} of replica "
                                   f"{x.culprit} for {x.replica_key[1:]} and received a "
                                   "conflicting one, but produced no evidence")

    def _reaches(self, node: int, r: Any, kind: str, st: Any, message: Any,
                 now: float) -> Expectation | None:
        try:
            log, view, in_vc = r.log, r.view, r.in_view_change
            if kind == "checkpoint":
                if st.seq <= log.low or st.seq % self.k or st.seq > log.high + self.log_window:
                    return None
                old = r.checkpoints.get(st.seq, {}).get(st.replica)
                if old is None or old.statement.state_digest == st.state_digest:
                    return None
                key: tuple[Any, ...] = ("cp", st.seq, st.replica)
            else:
                if st.view != view or in_vc or not log.in_window(st.seq):
                    return None
                slot = log.get(st.seq)
                if slot is None or slot.view != st.view:
                    return None
                if kind == "pre_prepare":
                    if st.replica != r.primary(st.view) or slot.pre_prepare is None:
                        return None
                    old = slot.pre_prepare
                    key = ("pp", st.view, st.seq)
                elif kind == "prepare":
                    if st.replica == r.primary(st.view):
                        return None
                    old = slot.prepares.get(st.replica)
                    key = ("p", st.view, st.seq, st.replica)
                else:
                    old = slot.commits.get(st.replica)
                    key = ("c", st.view, st.seq, st.replica)
                if old is None or old.statement.digest == st.digest:
                    return None
        except AttributeError:
            self.skipped += 1
            return None
        if key in getattr(r, "evidence_seen", ()):
            return None  # proven before: the replica reports each slot once
        if not self.verifier.verify_deep(message):
            return None  # a bad signature is a lie, not an equivocation
        return Expectation(node, st.replica, kind, key, now)

    def data(self) -> dict[str, Any]:
        """Plain data: ok, expected, missed (count and texts), conflicts delivered by culprit."""
        return {"ok": self.missed_count == 0, "expected": self.expected,
                "missed": self.missed_count, "missed_examples": list(self.missed),
                "conflicts_delivered": {str(k): v for k, v in sorted(self.conflicts.items())},
                "skipped": self.skipped}
