"""Recovery from the write-ahead log (PROTOCOL.md "Crash recovery"): a restarted replica
reloads its last stable snapshot and the records after it (bft/walrecords.py) so that it
never signs what contradicts what it signed before the crash. A mixin over
`bft.state.ReplicaState`: see bft/state.py.
"""

from __future__ import annotations

from typing import Iterable

from bft.log import Slot
from bft.messages import (
    Checkpoint,
    Commit,
    NewView,
    Prepare,
    PreparedCert,
    Proposal,
    Signed,
    ViewChange,
)
from bft.state import ReplicaState
from bft.walrecords import REC_CERT, REC_NEW_VIEW, REC_PROPOSAL, decode_record, decode_snapshot


class WalRecovery(ReplicaState):
    """Crash recovery of a replica from its WAL (see the module docstring)."""

    # ------------------------------------------------------------------ recovery from the WAL

    def _recover(self, snapshot: tuple[int, bytes] | None, records: Iterable[bytes]) -> None:
        """Reload the last stable snapshot and the records after it (crash recovery)."""
        if snapshot is not None:
            seq, data = snapshot
            s_seq, digest, snap, proof = decode_snapshot(data, self.limits)
            self._restore(snap)
            self.last_executed = s_seq
            self.next_seq = s_seq + 1
            self.log.advance(s_seq)
            self.stable_digest, self.stable_proof, self.stable_snapshot = digest, proof, snap
        max_view = 0
        entered_view = 0
        own_top: dict[int, int] = {}  # view -> highest seq we proposed in it
        for raw in records:
            kind, msg = decode_record(raw, self.limits)
            if kind == REC_CERT:
                assert isinstance(msg, PreparedCert)
                cert = msg
                pp = cert.pre_prepare.statement
                if pp.seq > self.log.low:
                    slot = self.log.slot(pp.seq)
                    if slot.cert is None or slot.cert.pre_prepare.statement.view <= pp.view:
                        slot.cert = cert
                continue
            if kind == REC_PROPOSAL:
                assert isinstance(msg, Proposal)
                pp = msg.pre_prepare.statement
                self.batches[pp.digest] = msg.batch
                if pp.seq > self.log.low:
                    slot = self.log.slot(pp.seq)
                    if slot.view != pp.view:
                        slot.reset_view(pp.view)
                    slot.pre_prepare, slot.digest, slot.batch = msg.pre_prepare, pp.digest, msg.batch
                    for r in msg.batch.requests:
                        self.assigned[(r.statement.client, r.statement.timestamp)] = pp.seq
                    if pp.replica == self.id:
                        own_top[pp.view] = max(own_top.get(pp.view, 0), pp.seq)
                max_view = max(max_view, pp.view)
                continue
            if kind == REC_NEW_VIEW:
                assert isinstance(msg, Signed)
                nv = msg.statement
                if nv.view >= entered_view:
                    entered_view = nv.view
                    self.new_view_msg = msg
                max_view = max(max_view, nv.view)
                continue
            assert isinstance(msg, Signed)
            st = msg.statement
            if isinstance(st, (Prepare, Commit)):
                max_view = max(max_view, st.view)
                if st.seq > self.log.low:
                    slot = self.log.slot(st.seq)
                    if slot.view != st.view:
                        slot.reset_view(st.view)
                    if isinstance(st, Prepare):
                        slot.prepares[self.id] = msg
                        slot.sent_prepare = True
                        slot.digest = st.digest
                    else:
                        slot.commits[self.id] = msg
                        slot.sent_commit = True
            elif isinstance(st, ViewChange):
                if st.view >= max_view:
                    max_view = st.view
                    self.my_view_change = msg
                    self.view_changes[self.id] = msg
            elif isinstance(st, NewView):
                if st.view >= entered_view:
                    entered_view = st.view
                    self.new_view_msg = msg
                max_view = max(max_view, st.view)
            elif isinstance(st, Checkpoint):
                pass
        self.view = max_view
        if self.my_view_change is not None and self.my_view_change.statement.view > entered_view:
            self.view = self.my_view_change.statement.view
            self.in_view_change = True
        else:
            self.my_view_change = None
            self.view_changes.pop(self.id, None)
        # the timer doubles per failed view since the last view that worked (4.5): the view
        # we were working in, or the last one we entered before our pending view change
        self.last_good_view = max(entered_view, self.view if not self.in_view_change else 0)
        # votes of an earlier view than the current one are stale: keep only certs/batches
        for slot in self.log.slots.values():
            if slot.view != self.view:
                slot.reset_view(self.view)
                # keep the batch a certificate refers to
                if slot.cert is not None:
                    d = slot.cert.pre_prepare.statement.digest
                    slot.batch = self.batches.get(d)
            elif slot.pre_prepare is not None and slot.digest is not None:
                slot.accepted_at = 0.0
        if self.in_view_change:
            for slot in self.log.slots.values():
                slot.reset_view(self.view)
        elif self.new_view_msg is not None and entered_view == self.view:
            for pp_signed in self.new_view_msg.statement.pre_prepares:
                pp = pp_signed.statement
                if pp.seq <= self.log.low:
                    continue
                slot = self.log.slot(pp.seq)
                if slot.view != self.view:
                    slot.reset_view(self.view)
                if slot.pre_prepare is None:
                    slot.pre_prepare, slot.digest, slot.fresh = pp_signed, pp.digest, False
                    slot.batch = slot.batch or self.batches.get(pp.digest)
        for slot in self.log.slots.values():
            if slot.pre_prepare is not None and self.id in slot.prepares:
                self._check_prepared_quiet(slot)
        # The next seq to propose, for the view we are in: above what we signed in it (our
        # own proposals, and the NEW-VIEW's O and checkpoint), never above a gap. Proposals
        # of earlier views do not count: the NEW-VIEW decided which of them carry over.
        top = max(self.log.low, self.last_executed, own_top.get(self.view, 0))
        if self.new_view_msg is not None and entered_view == self.view and not self.in_view_change:
            entered = self.new_view_msg.statement
            top = max([top] + [p.statement.seq for p in entered.pre_prepares]
                      + [vc.statement.stable_seq for vc in entered.view_changes])
        self.next_seq = top + 1

    def _check_prepared_quiet(self, slot: Slot) -> None:
        """After recovery: a slot whose certificate we persisted counts as prepared again."""
        if slot.cert is not None and slot.cert.pre_prepare.statement.view == slot.view:
            slot.prepared = True

