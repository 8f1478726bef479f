"""Planted-bug replicas: each reintroduces one of issue 18's safety bugs (fixed in b9b5312),
so tests can check that `bft explore` finds it (tests/adversarial/test_explore.py).

A module of its own (not a test file) so that worker processes can import the classes by
name: `PYTHONPATH=tests/adversarial bft explore --replica planted_replicas:DecidedSlotTakesAnother`.

* `PreparesInViewChange` (1a): `_check_prepared` without its guard, so a replica in a view
  change, or holding a slot of another view, signs COMMIT when a late batch arrives.
* `DecidedSlotTakesAnother` (1c): `_accept_pre_prepare` without the `conflicts_decided`
  guard, and a decided slot whose batch does not match raises InvariantViolation out of
  `receive`, as it did at c9f30a9 (today's replica drops the batch and fetches the right
  one, which would hide the missing guard from every checker).
* `NewViewSlotsWithoutView` (1d): slots made by `_enter_view` for the NEW-VIEW's
  pre-prepares keep view -1 (the reset is skipped), so the next PREPARE wipes them.
"""

from __future__ import annotations

from typing import Any

from bft.effects import Broadcast
from bft.errors import InvariantViolation
from bft.messages import Commit, Prepare, PreparedCert, Proposal
from bft.replica import REC_CERT, REC_PROPOSAL, REC_SENT, Replica

#: The drop counter each planted replica bumps when its bug acts (the honest replica would
#: have done otherwise): `bft explore` sums it into coverage["drops"], so a campaign shows
#: whether it reached the bug at all, found by a checker or not.
PLANTED = "planted_bug_acted"


class PreparesInViewChange(Replica):
    """Issue 18, 1a: prepare and commit are not restricted to the current view."""

    def _check_prepared(self, slot: Any) -> None:
        if slot.prepared or slot.pre_prepare is None or slot.batch is None:
            return
        # planted: no `if self.in_view_change or slot.view != self.view: return`
        matching = [s for r, s in slot.prepares.items()
                    if s.statement.digest == slot.digest and r != self.primary()]
        if len(matching) < self.quorum - 1:
            return
        if self.in_view_change or slot.view != self.view:
            self.drops[PLANTED] += 1  # the bug acts: a COMMIT the honest replica never signs
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


class DecidedSlotTakesAnother(Replica):
    """Issue 18, 1c: a decided slot waiting for its batch accepts another digest."""

    def _accept_pre_prepare(self, slot: Any, pp_signed: Any, batch: Any, fresh: bool) -> None:
        pp = pp_signed.statement
        # planted: no `if slot.decided is not None and slot.decided != pp.digest: drop`
        if slot.decided is not None and slot.decided != pp.digest:
            self.drops[PLANTED] += 1  # the bug acts: a decided slot takes another digest
        mine = slot.prepares.get(self.id)
        if mine is not None and mine.statement.digest != pp.digest:
            return self._drop("contradicts_own_prepare")
        slot.pre_prepare, slot.digest, slot.fresh = pp_signed, pp.digest, fresh
        slot.accepted_at = self._now
        if fresh:
            self._primary_ordered_at = self._now
        if batch is not None:
            slot.batch = batch
            self.batches[pp.digest] = batch
            first_seen = self._now
            for s in batch.requests:
                r = s.statement
                key = (r.client, r.timestamp)
                self.assigned[key] = pp.seq
                first_seen = min(first_seen, self._pending_since.get(key, first_seen))
            if fresh and not self.is_primary and first_seen < self._now:
                self.order_delay.observe(self._now - first_seen)
            if fresh:
                self._persist(REC_PROPOSAL, Proposal(pp_signed, batch))
        if not self.is_primary:
            if mine is not None:
                self._out.append(Broadcast(mine))
            else:
                prepare = self._sign(Prepare(pp.view, pp.seq, pp.digest, self.id))
                slot.prepares[self.id] = prepare
                slot.sent_prepare = True
                self._persist(REC_SENT, prepare)
                self._out.append(Broadcast(prepare))
        self._arm_progress()
        self._check_prepared(slot)

    def _event(self, event_kind: str, /, **fields: Any) -> None:
        if event_kind == "decided_batch_mismatch":  # c9f30a9's _execute_ready raised here
            raise InvariantViolation(f"batch of seq {fields.get('seq')} does not match its "
                                     "digest")
        super()._event(event_kind, **fields)


class NewViewSlotsWithoutView(Replica):
    """Issue 18, 1d: slots made from a NEW-VIEW's O keep view -1."""

    def _enter_view(self, nv_signed: Any, plan: Any) -> None:
        before = set(self.log.slots)
        super()._enter_view(nv_signed, plan)
        # planted: the slots made just now for O's pre-prepares are not reset to the view
        for seq, slot in self.log.slots.items():
            if seq not in before and slot.view == self.view:
                slot.view = -1

    def _wipes(self, seq: int) -> None:
        slot = self.log.get(seq)
        if slot is not None and slot.view == -1 and slot.pre_prepare is not None:
            self.drops[PLANTED] += 1  # the bug acts: the NEW-VIEW's pre-prepare is wiped

    def _on_prepare(self, signed: Any) -> None:
        self._wipes(signed.statement.seq)
        super()._on_prepare(signed)

    def _on_commit(self, signed: Any) -> None:
        self._wipes(signed.statement.seq)
        super()._on_commit(signed)

    def _on_proposal(self, proposal: Any) -> None:
        self._wipes(proposal.pre_prepare.statement.seq)
        super()._on_proposal(proposal)


class QuorumOf2f(Replica):
    """Certificates of 2f matching messages instead of 2f+1 (tests/adversarial/
    test_adv_teeth.py's broken quorum): one equivocating primary splits the correct
    replicas."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        from bft.viewchange import Geometry

        super().__init__(*args, **kwargs)
        self.quorum = 2 * self.f
        self.geo = Geometry(self.n, self.f, self.config.log_window, self.quorum)
