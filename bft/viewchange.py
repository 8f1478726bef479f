"""View changes (PROTOCOL.md "View change", OSDI'99 sections 4.4 and 4.5).

Two parts:

* Pure functions over already signature-checked messages: whether a VIEW-CHANGE is
  well-formed, and the pre-prepares O that a NEW-VIEW must carry for a set V of view
  changes. The new primary computes O; every backup recomputes it and accepts the
  NEW-VIEW only if it matches exactly. The adversary uses them to forge messages that
  pass them.
* `ViewChanges`, the view-change phase of the replica (a mixin over
  `bft.state.ReplicaState`, see bft/state.py): starting and joining view changes, the
  NEW-VIEW timer, sending and accepting NEW-VIEW, and entering the new view.
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass
from typing import Any

from bft.effects import Broadcast, Send
from bft.errors import InvariantViolation
from bft.messages import (
    Checkpoint,
    Fetch,
    NewView,
    Prepare,
    PreparedCert,
    PrePrepare,
    Signed,
    ViewChange,
)
from bft.quorum import Geometry as Geometry  # (its home was here: imported from here too)
from bft.quorum import count_at_or_above, join_target, view_change_certificate
from bft.state import MAX_RESEND_PER_STATUS, NULL_DIGEST, ReplicaState
from bft.walrecords import REC_NEW_VIEW, REC_SENT


def checkpoint_proof_problem(geo: Geometry, seq: int, state_digest: bytes,
                             proof: tuple[Signed[Any], ...]) -> str | None:
    """None if `proof` holds 2f+1 signed CHECKPOINTs of distinct replicas for (seq, state_digest).

    At seq 0 (the initial state) the proof must be empty.
    """
    if seq == 0:
        return None if not proof else "proof_at_genesis"
    signers: set[int] = set()
    for s in proof:
        c = s.statement
        if not isinstance(c, Checkpoint):
            return "proof_not_checkpoint"
        if c.seq != seq or c.state_digest != state_digest:
            return "proof_mismatch"
        if c.replica >= geo.n:
            return "proof_unknown_replica"
        signers.add(c.replica)
    if len(signers) < geo.quorum:
        return "proof_too_small"
    return None


def prepared_cert_problem(geo: Geometry, cert: PreparedCert, below_view: int,
                          low: int, high: int) -> str | None:
    """None if `cert` is a prepared certificate: a pre-prepare by primary(v) and quorum-1 (2f) matching
    PREPAREs from distinct backups (never the primary of v), with v < below_view and low < seq <= high."""
    pp = cert.pre_prepare.statement
    if not isinstance(pp, PrePrepare):
        return "cert_not_pre_prepare"
    if pp.replica != geo.primary(pp.view):
        return "cert_wrong_primary"
    if pp.view >= below_view:
        return "cert_view_too_high"
    if not (low < pp.seq <= high):
        return "cert_outside_window"
    backups: set[int] = set()
    for s in cert.prepares:
        p = s.statement
        if not isinstance(p, Prepare):
            return "cert_not_prepare"
        if (p.view, p.seq, p.digest) != (pp.view, pp.seq, pp.digest):
            return "cert_mismatch"
        if p.replica == pp.replica or p.replica >= geo.n:
            return "cert_bad_preparer"
        backups.add(p.replica)
    if len(backups) < geo.quorum - 1:
        return "cert_too_small"
    return None


def view_change_problem(geo: Geometry, vc: ViewChange) -> str | None:
    """None if the VIEW-CHANGE is well-formed (signatures are checked elsewhere)."""
    if vc.replica >= geo.n:
        return "unknown_replica"
    problem = checkpoint_proof_problem(geo, vc.stable_seq, vc.state_digest, vc.checkpoint_proof)
    if problem:
        return problem
    seen: set[int] = set()
    for cert in vc.prepared:
        problem = prepared_cert_problem(geo, cert, vc.view, vc.stable_seq,
                                        vc.stable_seq + geo.log_window)
        if problem:
            return problem
        seq = cert.pre_prepare.statement.seq
        if seq in seen:
            return "cert_duplicate_seq"
        seen.add(seq)
    return None


@dataclass(frozen=True, slots=True)
class NewViewPlan:
    """What a NEW-VIEW for V decides: the checkpoint to start from and the digests to re-propose."""

    min_s: int
    max_s: int
    checkpoint: ViewChange  # the view change whose checkpoint proof is for min_s
    digests: tuple[tuple[int, bytes], ...]  # (seq, digest) for seq in (min_s, max_s]
    certs: dict[int, PreparedCert]  # the certificate chosen for each non-null seq


def plan_new_view(view_changes: list[ViewChange], null_digest: bytes) -> NewViewPlan:
    """Compute min_s, max_s and O's digests from a set V of valid view changes (section 4.4)."""
    best_cp = max(view_changes, key=lambda vc: (vc.stable_seq, vc.replica))
    min_s = best_cp.stable_seq
    best: dict[int, PreparedCert] = {}
    for vc in view_changes:
        for cert in vc.prepared:
            pp = cert.pre_prepare.statement
            assert isinstance(pp, PrePrepare)
            if pp.seq <= min_s:
                continue
            cur = best.get(pp.seq)
            if cur is None or pp.view > cur.pre_prepare.statement.view:
                best[pp.seq] = cert
    max_s = max(best, default=min_s)
    digests = []
    for seq in range(min_s + 1, max_s + 1):
        chosen = best.get(seq)
        digests.append((seq, chosen.pre_prepare.statement.digest if chosen else null_digest))
    return NewViewPlan(min_s, max_s, best_cp, tuple(digests), best)


def new_view_problem(geo: Geometry, nv: NewView, null_digest: bytes) -> tuple[str | None, NewViewPlan | None]:
    """Check a NEW-VIEW as a backup does: 2f+1 valid VIEW-CHANGEs for nv.view from distinct
    replicas, and O equal to what V gives. Returns (problem, plan)."""
    if nv.replica != geo.primary(nv.view):
        return "new_view_wrong_primary", None
    vcs: list[ViewChange] = []
    senders: set[int] = set()
    for s in nv.view_changes:
        vc = s.statement
        if not isinstance(vc, ViewChange):
            return "new_view_not_view_change", None
        if vc.view != nv.view:
            return "new_view_vc_wrong_view", None
        if vc.replica in senders:
            return "new_view_duplicate_sender", None
        problem = view_change_problem(geo, vc)
        if problem:
            return "new_view_bad_vc:" + problem, None
        senders.add(vc.replica)
        vcs.append(vc)
    if len(senders) < geo.quorum:
        return "new_view_too_few", None
    plan = plan_new_view(vcs, null_digest)
    got = []
    for s in nv.pre_prepares:
        pp = s.statement
        if not isinstance(pp, PrePrepare) or pp.view != nv.view or pp.replica != nv.replica:
            return "new_view_bad_pre_prepare", None
        got.append((pp.seq, pp.digest))
    if tuple(got) != plan.digests:
        return "new_view_wrong_o", None
    return None, plan


# --------------------------------------------------------------------------
# The view-change phase of the replica
# --------------------------------------------------------------------------


class ViewChanges(ReplicaState):
    """The view-change phase of a replica (see the module docstring)."""

    # ------------------------------------------------------------------ view change (4.4)

    def _start_view_change(self, new_view: int, cause: str) -> None:
        if new_view <= self.view and self.in_view_change:
            return
        if not self.in_view_change:
            self.vc_started_at = self._now
        self._vc_sent_at = self._now
        if new_view != self.view:
            self._held_proposals = {}  # those of a view we no longer change to
        self.view = new_view
        self.in_view_change = True
        self.perf.leave_view(self._now)
        self._primary_ordered_at = None
        self.vc_cause = cause
        self.progress_deadline = None
        self.batch_deadline = None
        # the last stable checkpoint known to us (OSDI'99 4.4), proven even if its state has
        # not arrived yet, and our certificates in (h, h + L]: valid by construction
        h, digest, proof = self.log.low, self.stable_digest, self.stable_proof
        target = self.transfer_target
        if target is not None and target[0] > h:
            h, digest, proof = target
        if not h:
            digest, proof = b"\0" * 32, ()
        prepared = tuple(s.cert for s in sorted(self.log.slots.values(), key=lambda s: s.seq)
                         if s.cert is not None and h < s.seq <= h + self.config.log_window)
        vc = self._sign(ViewChange(new_view, h, digest, proof, prepared, self.id))
        self.my_view_change = vc
        self.view_changes[self.id] = vc
        self._persist(REC_SENT, vc)
        self._out.append(Broadcast(vc))
        self.new_view_deadline = None
        self._arm_new_view_timer()
        self.counters["view_changes_started"] += 1
        self._event("view_change_start", view=new_view, cause=cause, at=self._now)
        self._maybe_send_new_view()

    def _arm_new_view_timer(self) -> None:
        """4.5: the NEW-VIEW timer starts once 2f+1 replicas are in a view change for our
        target view or a higher one, so a replica alone in a view change waits there instead
        of racing to ever higher views. Higher views count: a replica that already moved on
        past our target (its NEW-VIEW timer ran out first) will never send a VIEW-CHANGE for
        it again, and without its vote the timer would never start (f of them silent, one
        ahead: a deadlock seen in tests/test_liveness_regressions.py)."""
        if not self.in_view_change or self.new_view_deadline is not None:
            return
        if count_at_or_above(self.view_changes, self.view) >= self.quorum:
            self.new_view_deadline = self._now + self._new_view_timeout()

    def _new_view_timeout(self) -> float:
        """The NEW-VIEW timer (4.5): T (`_vc_timeout`, doubling per failed view), and at
        least twice what gathering the 2f+1 VIEW-CHANGEs took since we sent ours, within
        the ceiling (issue 21, item 9). T follows the normal case's message delays (a few
        status intervals); view-change messages are large and cost many signature checks,
        and the NEW-VIEW needs one more such round: on an overloaded machine they took
        longer than T, every view change timed out before its NEW-VIEW came, and the
        cluster cascaded through views (a 0.6 s view-change round after a primary crash:
        views 1..4 in 10 s, no progress after the crash; tests/test_viewchange_contention.py)."""
        timer = self._vc_timeout()
        sent = self._vc_sent_at
        if sent is None:
            return timer
        cap = max(self.config.view_change_timeout_max_s, timer)
        return max(timer, min(2 * (self._now - sent), cap))

    def _on_view_change(self, signed: Signed[ViewChange]) -> None:
        vc: ViewChange = signed.statement
        if vc.view <= self.view and not (self.in_view_change and vc.view == self.view):
            if vc.view < self.view or not self.in_view_change:
                # a peer behind us: help it with the NEW-VIEW we entered
                if self.new_view_msg is not None and vc.view <= self.view and not self.in_view_change:
                    self._out.append(Send(vc.replica, self.new_view_msg))
                return self._drop("old_view_change")
        problem = view_change_problem(self.geo, vc)
        if problem:
            return self._drop("bad_view_change:" + problem)
        old = self.view_changes.get(vc.replica)
        if old is not None and old.statement.view >= vc.view:
            return self._drop("duplicate_view_change")
        self.view_changes[vc.replica] = signed
        # join: f+1 view changes for views above ours move us to the smallest of them (4.5)
        target = join_target(self.view_changes, self.view, self.f + 1)
        if target is not None:
            self._start_view_change(target, "join")
            return
        self._arm_new_view_timer()
        self._maybe_send_new_view()

    def _maybe_send_new_view(self) -> None:
        if not self.in_view_change or self.primary() != self.id:
            return
        if self.votes_lost:
            # we may have sent a NEW-VIEW for this view before the loss (other pre-prepares):
            # the view changes on past us
            return self._drop("new_view_votes_lost")
        vcs = view_change_certificate(self.view_changes, self.view, self.quorum)
        if vcs is None:
            return
        plan = plan_new_view([s.statement for s in vcs], NULL_DIGEST)
        pps = tuple(self._sign(PrePrepare(self.view, seq, d, self.id)) for seq, d in plan.digests)
        nv = self._sign(NewView(self.view, vcs, pps, self.id))
        self._persist(REC_SENT, nv)
        self._out.append(Broadcast(nv))
        self._enter_view(nv, plan)

    def _on_new_view(self, signed: Signed[NewView]) -> None:
        nv: NewView = signed.statement
        if nv.view < self.view or (nv.view == self.view and not self.in_view_change):
            return self._drop("old_new_view")
        problem, plan = new_view_problem(self.geo, nv, NULL_DIGEST)
        if problem:
            return self._drop(problem)
        assert plan is not None
        self._persist(REC_NEW_VIEW, signed)
        self._enter_view(signed, plan)

    def _enter_view(self, nv_signed: Signed[NewView], plan: NewViewPlan) -> None:
        # nothing is proposed until O is logged and next_seq is past it (adopting the
        # checkpoint below may reach _make_stable's _try_propose): see the end
        self._entering_view = True
        try:
            self._enter_view_steps(nv_signed, plan)
        finally:
            self._entering_view = False
        if self.is_primary:
            self._try_propose(force=True)
        else:
            self._accept_held_proposals()
        if self._has_outstanding_work():
            self._arm_progress()
        self._execute_ready()

    def _enter_view_steps(self, nv_signed: Signed[NewView], plan: NewViewPlan) -> None:
        nv: NewView = nv_signed.statement
        started = self.vc_started_at
        self.view = nv.view
        self.in_view_change = False
        self.perf.enter_view(self._now)  # its grace period begins (bft/throughput.py)
        self._primary_ordered_at = self._now  # a valid NEW-VIEW: the new primary is ordering
        self.new_view_msg = nv_signed
        self.my_view_change = None
        self.new_view_deadline = None
        self.view_changes = {r: s for r, s in self.view_changes.items()
                             if s.statement.view > self.view}
        self.counters["views_entered"] += 1
        self._event("new_view", view=self.view, primary=self.primary(), cause=self.vc_cause,
                    duration_s=(self._now - started) if started is not None else 0.0)
        self.vc_started_at = None
        # adopt the checkpoint min_s if we are behind it
        cp: ViewChange = plan.checkpoint
        self._learned_stable(cp.stable_seq)
        if cp.stable_seq > self.log.low:
            self.transfer_target = (cp.stable_seq, cp.state_digest, cp.checkpoint_proof)
            own = self.own_snapshots.get(cp.stable_seq)
            if own is not None and own[0] == cp.state_digest:
                self._make_stable(cp.stable_seq, cp.state_digest, cp.checkpoint_proof, own[1])
            elif self.last_executed >= cp.stable_seq or not self._can_catch_up(cp.stable_seq):
                self._start_transfer()
        # requests of batches that the new view does not re-propose go back to pending
        orphans = [s for slot in self.log.slots.values() if slot.batch is not None
                   and slot.decided is None for s in slot.batch.requests]
        for slot in self.log.slots.values():
            slot.reset_view(self.view)
        self.assigned = {}
        # batches still wanted: those of decided slots (to execute); what the earlier view's
        # pre-prepares wanted is wanted again below only if this NEW-VIEW re-proposes it
        self.needed_batches = {d: q for d, q in self.needed_batches.items()
                               if (held := self.log.get(q)) is not None and held.decided == d
                               and held.batch is None}
        for pp_signed in nv.pre_prepares:
            pp: PrePrepare = pp_signed.statement
            if pp.seq <= self.proven_low or self._may_have_voted(pp.seq):
                continue  # decided, or our earlier vote is lost: no vote of ours now
            slot = self.log.slot(pp.seq)
            if slot.view != self.view:  # a slot made just now: it belongs to the new view
                slot.reset_view(self.view)
            batch = self.batches.get(pp.digest)
            if slot.decided is not None and slot.decided != pp.digest:
                raise InvariantViolation(
                    f"NEW-VIEW re-proposes seq {pp.seq} with a digest other than the committed one")
            if batch is None:
                cert = plan.certs.get(pp.seq)
                self.needed_batches[pp.digest] = pp.seq
                holders = [s.statement.replica for s in cert.prepares] if cert else []
                fetch = self._sign(Fetch(pp.view, pp.seq, pp.digest, self.id))
                targets = sorted(set(holders + [cert.pre_prepare.statement.replica]) - {self.id}) \
                    if cert else []
                for r in targets or [x for x in range(self.n) if x != self.id]:
                    self._out.append(Send(r, fetch))
            self._accept_pre_prepare(slot, pp_signed, batch, fresh=False)
        for slot in self.log.slots.values():
            if slot.decided is not None and slot.batch is not None:
                for r in slot.batch.requests:
                    self.assigned.setdefault((r.statement.client, r.statement.timestamp), slot.seq)
        for signed in orphans:
            r = signed.statement
            key = (r.client, r.timestamp)
            last = self.client_table.get(key[0])
            if key not in self.assigned and (last is None or last[0] < key[1]):
                self.pending.setdefault(key, signed)
        self.next_seq = max(plan.max_s, self.last_executed, self.log.low) + 1
        # requests not in the log get a fresh chance with the new primary
        self.progress_deadline = None
        if self.is_primary:
            for key in [k for k in self.pending if k in self.assigned]:
                del self.pending[key]
        elif self._live_pending():
            live = (s for k, s in self.pending.items() if not self._stale(k))
            for signed in itertools.islice(live, MAX_RESEND_PER_STATUS):
                self._out.append(Send(self.primary(), signed))

