"""Loss recovery: UDP loses datagrams, so every replica sends STATUS at intervals and its
peers resend what it lacks (its stable checkpoint proof, our CHECKPOINTs, commit
certificates with their batches, votes of the current view); backups forward requests the
primary has not ordered. A mixin over `bft.state.ReplicaState`: see bft/state.py.
"""

from __future__ import annotations

from bft.effects import Broadcast, Send
from bft.messages import Proposal, Signed, Status
from bft.state import MAX_RESEND_PER_STATUS, MAX_STATUS_SEQS, ReplicaState


class LossRecovery(ReplicaState):
    """The loss-recovery phase of a replica (see the module docstring)."""

    # ------------------------------------------------------------------ loss recovery (status)

    def _send_status(self) -> None:
        self.status_deadline = self._now + self.config.status_interval_s
        prepared, committed = [], []
        for seq in sorted(self.log.slots):
            if seq <= self.last_executed:
                continue
            s = self.log.slots[seq]
            if s.decided is not None:
                committed.append(seq)
            elif s.prepared:
                prepared.append(seq)
            if len(prepared) + len(committed) >= MAX_STATUS_SEQS:
                break
        st = Status(self.view, self.log.low, self.last_executed, tuple(prepared), tuple(committed),
                    1 if self.in_view_change else 0, self.id)
        self._out.append(Broadcast(self._sign(st)))

    def forward_after_s(self) -> float:
        """How long a backup holds a request the primary has not ordered before forwarding it
        (the client's copy to the primary may have been lost): two status intervals, or the
        measured ordering delay bound when the primary is slower than that (overload: it has
        the request queued, and n-1 forwarded copies would only add to its load), but at most
        half the view-change timer, so a lost datagram is rescued before the primary is
        suspected."""
        floor = 2 * self.config.status_interval_s
        bound = self.order_delay.bound_s()
        if bound is None or bound <= floor:
            return floor
        return max(floor, min(bound, self._vc_timeout() / 2))

    def _resend_pending(self) -> None:
        """A backup forwards to the primary, once, each request the primary has not ordered
        within `forward_after_s`: sooner than the view-change timer, so a lost datagram does
        not replace the primary. Once only: under overload requests wait in the primary's
        queue, and forwarding them again every round from every backup would only add to
        its load."""
        since = self._pending_since
        if len(since) > 2 * len(self.pending) + 1024:  # forget requests no longer pending
            for key in [k for k in since if k not in self.pending]:
                del since[key]
            self._forwarded.intersection_update(self.pending)
        if self.is_primary or self.in_view_change:
            return
        old = self._now - self.forward_after_s()
        sent = 0
        for key, signed in self.pending.items():
            if since.get(key, self._now) > old:
                break  # in arrival order: the rest is younger
            if key in self.assigned or key in self._forwarded or self._stale(key):
                continue
            self._forwarded.add(key)
            self._out.append(Send(self.primary(), signed))
            self.counters["request_forwarded"] += 1
            sent += 1
            if sent >= MAX_RESEND_PER_STATUS:
                break

    def _on_status(self, signed: Signed[Status]) -> None:
        st: Status = signed.statement
        peer = st.replica
        # One STATUS can make us resend a window of messages (x1,000 its size): answer at most
        # one per peer and status_answer_interval_s, however often it comes (a repeat of the
        # same STATUS, a replay, costs its sender nothing: the verifier remembers it).
        last = self._status_answered.get(peer)
        if last is not None and self._now - last[0] < self.config.status_answer_interval_s:
            return self._drop("status_repeat" if last[1] == st else "status_rate_limited")
        self._status_answered[peer] = (self._now, st)
        out = self._out
        # Resend only to a peer that is stuck: no progress since its previous STATUS. A peer
        # that is merely behind (its CPU busy, messages still queued for it) catches up by
        # itself; resending to it from every replica every round would bury it and the
        # network in copies under overload (a congestion collapse measured at n = 13).
        # Batches (PRE-PREPARE with its requests, or a commit certificate with its batch) are
        # the big resends: at the first stuck STATUS only the two replicas after the peer in
        # id order send them (one copy suffices; two in case one is faulty or its copy is
        # lost), every replica from the second stuck STATUS in a row on. At n = 13 under
        # overload, all 12 resending every batch made ~35 % of all messages sent.
        prev = self._peer_progress.get(peer)
        stuck = prev is not None and st.last_executed <= prev[0]
        rounds = 0
        relayed: set[int] = set()  # seqs whose certificate and batch went out already
        if stuck and prev is not None and (self.last_executed > st.last_executed or any(
                seq > st.last_executed and slot.pre_prepare is not None
                for seq, slot in self.log.slots.items())):
            rounds = prev[2] + 1
        self._peer_progress[peer] = (st.last_executed, st.stable_seq, rounds)
        if prev is None:
            return
        batches = rounds >= 2 or self.id in ((peer + 1) % self.n, (peer + 2) % self.n)
        if st.stable_seq < self.log.low and self.stable_proof and st.stable_seq <= prev[1]:
            # the peer lacks our stable checkpoint (lost CHECKPOINTs, or it was cut off): its
            # watermarks are stuck below ours until it has the proof. Checkpoints do not
            # depend on views, so this goes first, whatever views the two of us are in.
            for cp in self.stable_proof:
                out.append(Send(peer, cp))
        if stuck:
            before = len(out)
            self._resend_checkpoints(st)
            if batches:
                relayed = self._relay_decided(st)
            self.counters["status_resends"] += len(out) - before
        if st.view < self.view or (st.view == self.view and st.in_view_change and not self.in_view_change):
            if self.in_view_change and self.my_view_change is not None:
                out.append(Send(peer, self.my_view_change))
            elif self.new_view_msg is not None:
                out.append(Send(peer, self.new_view_msg))
            return
        if st.view > self.view or (st.in_view_change and self.in_view_change):
            if self.in_view_change and self.my_view_change is not None and st.view == self.view:
                out.append(Send(peer, self.my_view_change))
            return
        if self.in_view_change:
            return
        # same view, both in normal operation
        if st.last_executed < self.log.low or not stuck:
            return
        have_prepared = set(st.prepared) | set(st.committed)
        have_committed = set(st.committed)
        sent = 0
        before = len(out)
        for seq in sorted(self.log.slots):
            if seq <= st.last_executed:
                continue
            if sent >= MAX_RESEND_PER_STATUS:
                break
            slot = self.log.slots[seq]
            if slot.view != self.view or slot.pre_prepare is None or seq in relayed:
                continue
            if seq not in have_prepared:
                if slot.batch is not None and batches:
                    out.append(Send(peer, Proposal(slot.pre_prepare, slot.batch)))
                if self.id in slot.prepares and slot.sent_prepare:
                    out.append(Send(peer, slot.prepares[self.id]))
                sent += 1
            if seq not in have_committed and slot.sent_commit and self.id in slot.commits:
                out.append(Send(peer, slot.commits[self.id]))
                sent += 1
        self.counters["status_resends"] += len(out) - before

    def _resend_checkpoints(self, st: Status) -> None:
        """Our own CHECKPOINTs above the peer's stable seq, for checkpoints not yet stable here:
        lost CHECKPOINTs would otherwise hold the watermarks (and the primary) still for good."""
        for seq in sorted(self.checkpoints):
            if seq <= st.stable_seq or seq > st.last_executed:
                continue
            mine = self.checkpoints[seq].get(self.id)
            if mine is not None:
                self._out.append(Send(st.replica, mine))

    def _relay_decided(self, st: Status) -> set[int]:
        """A peer that executed less than we did gets, for each seq it lacks, the commit
        certificate and the batch (whatever view either of us is in). Returns the seqs sent."""
        relayed: set[int] = set()
        if st.last_executed >= self.last_executed or st.last_executed < self.log.low:
            return relayed
        for seq in range(st.last_executed + 1, self.last_executed + 1):
            slot = self.log.get(seq)
            if slot is None or not slot.commit_cert or slot.batch is None or slot.decided_pp is None:
                continue
            # the batch first: the certificate decides the seq at once, and a decided seq
            # without its batch would FETCH it from every replica in the certificate
            self._out.append(Send(st.replica, Proposal(slot.decided_pp, slot.batch)))
            for c in slot.commit_cert:
                self._out.append(Send(st.replica, c))
            relayed.add(seq)
            if len(relayed) >= MAX_RESEND_PER_STATUS:
                break
        return relayed

