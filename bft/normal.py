"""The normal case of PBFT (OSDI'99 4.1, 4.2): requests, the primary's PRE-PREPAREs, the
backups' acceptance rules, PREPARE and COMMIT certificates, and execution in seq order
(with the state snapshot a checkpoint's digest is taken of). Batches a slot waits for
(FETCH) are here too. A mixin over `bft.state.ReplicaState`: see bft/state.py.
"""

from __future__ import annotations

from typing import Any, Callable

import cbor2

from bft import codec
from bft.app import ExecContext
from bft.clock import accept_batch_time, propose_batch_time
from bft.crypto import request_digest, sha256
from bft.effects import Broadcast, Executed, Send
from bft.effects import Reply as ReplyEffect
from bft.errors import MalformedMessage
from bft.log import Slot
from bft.messages import (
    DIGEST_SIZE,
    Batch,
    Checkpoint,
    Commit,
    Fetch,
    Prepare,
    PreparedCert,
    PrePrepare,
    Proposal,
    Reply,
    Request,
    Signed,
)
from bft.quorum import (
    ADDED,
    ConflictingVotes,
    add_vote,
    commit_certificate,
    commit_certificates,
    prepared_certificate,
    vouched,
)
from bft.state import _U64_END, MAX_OLD_COMMITS_PER_REPLICA, MAX_PENDING_REQUESTS, ReplicaState
from bft.walrecords import REC_CERT, REC_PROPOSAL, REC_SENT


# The messages and effects made for every batch, made without the frozen dataclasses'
# per-field __setattr__ (codec.fast_constructor: the same objects, about twice as fast)
_new_reply: Callable[[int, int, int, int, bytes, bytes, int], Reply] = codec.fast_constructor(
    Reply)
_new_prepare: Callable[[int, int, bytes, int], Prepare] = codec.fast_constructor(Prepare)
_new_commit: Callable[[int, int, bytes, int], Commit] = codec.fast_constructor(Commit)
_new_prepared_cert: Callable[[Any, Any], PreparedCert] = codec.fast_constructor(PreparedCert)
_new_proposal: Callable[[Any, Batch], Proposal] = codec.fast_constructor(Proposal)
_new_broadcast: Callable[[Any], Broadcast] = codec.fast_constructor(Broadcast)
_new_reply_effect: Callable[[int, Any], ReplyEffect] = codec.fast_constructor(ReplyEffect)
_new_executed: Callable[..., Executed] = codec.fast_constructor(Executed)


class NormalCase(ReplicaState):
    """The normal-case phase of a replica (see the module docstring)."""

    def _late_vote(self, st: Any) -> bool:
        """A PREPARE or COMMIT of the current view that cannot change anything here: its slot
        is already prepared (PREPARE) or decided (COMMIT) on the same digest. Dropped before
        its signature is checked, which is the costly part. A vote with another digest than
        the slot's, or than the sender's earlier vote, is still verified: it may be evidence.
        Nothing is learned from an unverified message: it is not stored and does not count
        as an arrival for the failure detector."""
        kind = type(st)
        if kind is not Prepare and kind is not Commit:
            return False
        if st.view != self.view or self.in_view_change or st.replica == self.id:
            return False
        slot = self.log.get(st.seq)
        if slot is None or slot.view != st.view:
            return False
        votes = slot.prepares if kind is Prepare else slot.commits
        held = votes.get(st.replica)
        if held is not None and held.statement.digest != st.digest:
            return False  # conflicts with what this replica voted before: evidence
        if kind is Prepare:
            return slot.prepared and slot.digest == st.digest
        return slot.decided is not None and slot.decided == st.digest

    def _on_vote_message(self, signed: Signed[Any], kind: type) -> None:
        """A PREPARE or COMMIT from the network (`kind`: its statement's class): what
        `Replica._dispatch` does with one (a late vote dropped before its signature is
        checked, see `_late_vote`; the signature; the sender's id; our own vote relayed
        back; the arrival noted), in the same order, then `_on_prepare` / `_on_commit`."""
        st = signed.statement
        replica = st.replica
        if st.view == self.view and not self.in_view_change and replica != self.id:
            # _late_vote, inline
            slot = self.log.slots.get(st.seq)
            if slot is not None and slot.view == st.view:
                held = (slot.prepares if kind is Prepare else slot.commits).get(replica)
                if held is None or held.statement.digest == st.digest:
                    if (slot.prepared and slot.digest == st.digest if kind is Prepare
                            else slot.decided is not None and slot.decided == st.digest):
                        self.drops["late_vote"] += 1
                        return
        if not self.verifier.verify(signed):
            return self._drop("bad_signature")
        if replica >= self.n:
            return self._drop("unknown_replica")
        if replica == self.id:
            if kind is Commit and (st.view < self.view or self.in_view_change):
                # our own vote relayed back inside a peer's commit certificate
                return self._on_certificate_commit(signed)
            return self._drop("own_message")
        self._note_arrival(replica)  # (a method: the failure detector's hook, kept as one)
        if kind is Prepare:
            self._on_prepare(signed)
        else:
            self._on_commit(signed)

    # ------------------------------------------------------------------ requests (4.1)

    def _on_request(self, signed: Signed[Request]) -> None:
        req: Request = signed.statement
        key = (req.client, req.timestamp)
        last = self.client_table.get(req.client)
        if last is not None and req.timestamp <= last[0]:
            if req.timestamp != last[0]:
                self._drop("old_request")
            elif request_digest(signed) != last[2]:
                # another request under the executed t (two processes sharing a client id):
                # the cached reply answers the executed one, never this one
                self._drop("conflicting_request")
            else:
                self._send_reply(req.client, req.timestamp, last[2], last[1], last[3])
                self.counters["reply_resent"] += 1
            return
        if req.timestamp > self._request_time_bound():
            # no correct primary orders it (PROTOCOL.md 4.1, request numbers bounded by agreed
            # time): held, it would only run this replica's view-change timer
            return self._drop("request_too_far_ahead")
        if key in self.assigned or key in self.pending:
            if not self.is_primary and not self.in_view_change:
                if key not in self.assigned:
                    self._out.append(Send(self.primary(), signed))
                self._arm_progress()  # the client is still waiting: it must execute in time
            self._drop("duplicate_request")
            return
        if len(self.pending) >= MAX_PENDING_REQUESTS:
            return self._drop("pending_full")
        self.pending[key] = signed
        self._pending_since.setdefault(key, self._now)
        if self.is_primary and not self.in_view_change:
            self._try_propose()
        elif not self.in_view_change:
            # a backup that receives a request starts its timer (4.4). It relays the request
            # to the primary only when the client sends it again (the branch above): clients
            # send each request to every replica, so the primary normally has it already.
            self._arm_progress()

    def _timestamp_window_us(self) -> int:
        return int(self.config.client_timestamp_window_s * 1_000_000)

    def _request_time_bound(self) -> int:
        """The largest request number this replica holds for ordering (issue 21, item 5).

        A batch may carry a request numbered at most its agreed time (microseconds) plus
        `timeouts.client_timestamp_window_s` (see `_batch_problem`); a correct primary
        proposes at its clock, within max_clock_skew of this one's, and never below the
        last executed batch time. So this bound, a skew below the lowest batch time a
        correct primary can propose, never holds a request no correct primary orders.
        It reads the local clock, but only decides what is held, never what executes."""
        skew_us = int(self.config.max_clock_skew_s * 1_000_000)
        low = max(self._wall.earliest_us - skew_us, self.last_batch_time)
        return low + self._timestamp_window_us()

    def _send_reply(self, client: int, timestamp: int, request: bytes, result: bytes,
                    agreed_us: int) -> None:
        reply = _new_reply(self.view, timestamp, client, self.id, request, result, agreed_us)
        sealed = self.reply_auth.seal(reply) if self.reply_auth is not None else None
        self._out.append(_new_reply_effect(client, sealed if sealed is not None
                                           else self._sign(reply)))

    def _arm_progress(self) -> None:
        # in a view change the NEW-VIEW timer runs instead (4.5); entering the view re-arms
        if self.progress_deadline is None and not self.in_view_change:
            self.progress_deadline = self._now + self._vc_timeout()
            self._busy_since = self._now

    # ------------------------------------------------------------------ primary (4.2)

    def _in_flight(self) -> int:
        return self.next_seq - 1 - self.last_executed

    def _try_propose(self, force: bool = False) -> None:
        if (not self.is_primary or self.in_view_change or self._entering_view
                or self.transfer is not None
                or self.next_seq <= self.proven_low or self._awaiting_batches()
                or self._may_have_voted(self.next_seq)):
            return
        cfg = self.config
        while self.pending:
            if self.next_seq > self.log.high or self._in_flight() >= cfg.max_in_flight:
                return
            enough = len(self.pending) >= cfg.batch_max_requests
            if not (enough or force or self._in_flight() == 0):
                if self.batch_deadline is None:
                    self.batch_deadline = self._now + cfg.batch_delay_s
                return
            force = False
            self._propose()
        self.batch_deadline = None

    def _propose(self) -> None:
        held = self.log.get(self.next_seq)
        while held is not None and held.view == self.view and held.pre_prepare is not None:
            # never a second pre-prepare for one (v, seq) (rule 4, across restarts too)
            self.counters["proposal_seq_held"] += 1
            self.next_seq += 1
            held = self.log.get(self.next_seq)
        if self.next_seq > self.log.high:
            return
        # not below the batch before it, as the backups check it (rule 6): that may be a
        # NEW-VIEW re-proposal not executed yet, stamped by an earlier primary's clock
        batch_time = propose_batch_time(self._wall, self._previous_batch_time(self.next_seq))
        time_bound = batch_time + self._timestamp_window_us()
        reqs: list[Signed[Request]] = []
        size = 0
        ordered = self._ordered_numbers(self.next_seq)
        while self.pending and len(reqs) < self.config.batch_max_requests:
            key, signed = self.pending.popitem(last=False)
            if key in self.assigned or self._stale(key):
                continue
            if key[1] > time_bound:  # the backups would refuse the batch (_batch_problem)
                self._drop("request_too_far_ahead")
                continue
            if key[1] < ordered.get(key[0], -1):
                # a newer request of its client is ordered before it: it would never execute,
                # and a backup that executed the newer one refuses the batch (rule 5), so
                # nothing after it would execute either (issue 21, clientflood)
                self._drop("request_superseded")
                continue
            ordered[key[0]] = key[1]
            size += len(signed.body) + 80
            if reqs and size > self.limits.max_message_bytes // 2:
                self.pending[key] = signed
                self.pending.move_to_end(key, last=False)
                break
            reqs.append(signed)
            self.assigned[key] = self.next_seq
        if not reqs:
            return
        batch = Batch(batch_time, tuple(reqs))
        digest = self._digest(batch)
        seq = self.next_seq
        self.next_seq += 1
        pp = self._sign(PrePrepare(self.view, seq, digest, self.id))
        proposal = Proposal(pp, batch)
        slot = self.log.slot(seq)
        if slot.view != self.view:
            slot.reset_view(self.view)
        slot.pre_prepare, slot.digest, slot.batch, slot.fresh = pp, digest, batch, True
        slot.accepted_at = self._now
        self.batches[digest] = batch
        self._persist(REC_PROPOSAL, proposal)
        self._out.append(_new_broadcast(proposal))
        self.counters["proposed"] += 1
        self._check_prepared(slot)

    def _ordered_numbers(self, seq: int) -> dict[int, int]:
        """Per client, the highest request number assigned to a seq below `seq` (`assigned`:
        ordered in the log; executed requests leave it). A request of that client numbered
        below it, proposed at `seq`, could never execute (at its turn the client's last
        executed number is above it, 4.1), and the backups that already executed the newer
        one refuse its batch (rule 5): a correct primary, whose execution may trail theirs,
        must not propose it. A correct client has one request outstanding, so only a faulty
        one's older requests are left out. (At most max_in_flight batches are assigned and
        not executed: a few lookups per request proposed.)"""
        ordered: dict[int, int] = {}
        for (client, t), s in self.assigned.items():
            if s < seq and t > ordered.get(client, -1):
                ordered[client] = t
        return ordered

    # ------------------------------------------------------------------ backup (4.2)

    def _on_proposal(self, proposal: Proposal) -> None:
        pp_signed = proposal.pre_prepare
        pp: PrePrepare = pp_signed.statement
        batch = proposal.batch
        if pp.replica != self.primary(pp.view):
            return self._drop("pre_prepare_not_from_primary")
        held = self.log.get(pp.seq)
        held_pp = held.pre_prepare if held is not None and held.view == pp.view else None
        conflict = held_pp is not None and held_pp.statement.digest != pp.digest
        if conflict and held_pp is not None:
            # compared first: its batch may complete the slot below and move the window
            self._evidence(pp.replica, "pre_prepare", held_pp, pp_signed,
                           key=("pp", pp.view, pp.seq))
        digest_ok = self._digest(batch) == pp.digest
        # a batch someone fetched for a NEW-VIEW re-proposal, or a relay in loss recovery, of
        # any view: the digest alone authenticates it for a slot waiting for that digest
        if digest_ok:
            waiting = self.log.get(pp.seq)
            if pp.digest in self.needed_batches or (
                    waiting is not None and waiting.batch is None
                    and pp.digest == (waiting.decided or waiting.digest)):
                self.needed_batches.setdefault(pp.digest, pp.seq)
                self._got_batch(pp.digest, batch, pp_signed)
        if conflict:
            return self._drop("conflicting_pre_prepare")
        if pp.view != self.view:
            return self._drop("wrong_view")
        if self.in_view_change:
            if digest_ok and pp.replica != self.id and self._hold_for_view(proposal):
                return
            return self._drop("in_view_change")
        if pp.replica == self.id:
            return self._drop("own_message")
        refused = self._normal_case_window(pp.seq)
        if refused:
            return self._drop(refused)
        slot = self.log.slot(pp.seq)
        if slot.view != self.view:
            slot.reset_view(self.view)
        deferred = slot.deferred
        if deferred is not None and deferred.pre_prepare.statement.digest != pp.digest:
            # one held back (its batch_time too far behind) is still signed: a proof
            self._evidence(pp.replica, "pre_prepare", deferred.pre_prepare, pp_signed,
                           key=("pp", pp.view, pp.seq))
            return self._drop("conflicting_pre_prepare")
        if slot.pre_prepare is not None:  # the same digest (another one is a conflict, above)
            if slot.batch is None and digest_ok:  # re-issued header whose batch we lacked
                self._got_batch(pp.digest, batch, pp_signed)
            return self._drop("duplicate_pre_prepare")
        if not digest_ok:
            return self._drop("bad_batch_digest")
        problem = self._batch_problem(batch, pp.seq)
        if problem == "batch_time_too_far_behind":
            # delivered late (loss, restart): accept once f+1 backups, one of them correct,
            # prepared it when it was fresh
            slot.deferred = proposal
            self._drop(problem)
            return self._check_deferred(slot)
        if problem:
            return self._drop(problem)
        self._accept_pre_prepare(slot, pp_signed, batch, fresh=True)

    def _hold_for_view(self, proposal: Proposal) -> bool:
        """Keep a proposal of the view we are changing to, with the clock reading it arrived
        at, until its NEW-VIEW comes (`_accept_held_proposals`). The new primary proposes
        once it enters the view, while the backups still wait for its NEW-VIEW; a round
        longer than max_clock_skew_s made every later copy too old for rule 6, and no
        backup prepared it (tests/test_viewchange_contention.py). Bounded: the first
        proposal per seq above h, at most max_in_flight of them (a correct primary has no
        more in flight before the backups' votes let it execute)."""
        pp: PrePrepare = proposal.pre_prepare.statement
        held = self._held_proposals
        if pp.seq <= self.log.low or pp.seq in held:
            return False
        if len(held) >= self.config.max_in_flight:
            self._drop("held_proposals_full")
            return False
        held[pp.seq] = (proposal, self._wall)
        self.counters["proposal_held_for_view"] += 1
        return True

    def _accept_held_proposals(self) -> None:
        """On entering a view: the proposals of its primary that came during the view change
        go through every acceptance rule now, except that rule 6 reads the clock as it was
        when each arrived. That is the check a proposal arriving in the view gets, at the
        moment this replica saw it: a batch_time it accepts was within max_clock_skew of its
        clock then, so a faulty primary can stamp no further from a correct clock than
        before (agreed time may trail real time by the view change's length, as with a
        late-committed batch: leases then end later in real time, never earlier). Judged
        against the NEW-VIEW's arrival instead, a proposal that came before a slow NEW-VIEW
        would fail rule 6 again; monotonicity (rule 6's second half) is checked now, after
        the NEW-VIEW's re-proposals."""
        held, self._held_proposals = self._held_proposals, {}
        now_wall = self._wall
        for seq in sorted(held):
            proposal, wall = held[seq]
            if proposal.pre_prepare.statement.view != self.view or self.in_view_change:
                continue
            self._wall = wall
            try:
                self._on_proposal(proposal)
            finally:
                self._wall = now_wall

    def _check_deferred(self, slot: Slot) -> None:
        proposal = slot.deferred
        if not isinstance(proposal, Proposal) or slot.pre_prepare is not None:
            return
        digest = proposal.pre_prepare.statement.digest
        # f+1 backups other than us, so one of them correct, prepared it when it was fresh
        if vouched(slot.prepares, digest, (self.primary(), self.id), self.f + 1):
            slot.deferred = None
            self.counters["late_pre_prepare_accepted"] += 1
            self._accept_pre_prepare(slot, proposal.pre_prepare, proposal.batch, fresh=True)

    def _batch_problem(self, batch: Batch, seq: int) -> str | None:
        """Rules 5 and 6 of PROTOCOL.md for a fresh proposal."""
        if len(batch.requests) > self.config.batch_max_requests:
            # no correct primary proposes more; the config bounds it by the fencing tokens'
            # index span, so no batch that reaches execution can make ExecContext raise
            return "batch_too_large"
        seen: set[tuple[int, int]] = set()
        time_bound = batch.batch_time + self._timestamp_window_us()
        for s in batch.requests:
            r = s.statement
            if not isinstance(r, Request):
                return "batch_not_request"
            key = (r.client, r.timestamp)
            if key in seen:
                return "batch_duplicate_request"
            seen.add(key)
            if r.timestamp > time_bound:
                return "batch_request_too_far_ahead"
            last = self.client_table.get(r.client)
            if last is not None and r.timestamp <= last[0]:
                return "batch_request_executed"
            other = self.assigned.get(key)
            if other is not None and other != seq:
                return "batch_request_assigned"
        prev = self._previous_batch_time(seq)
        reason = accept_batch_time(batch.batch_time, self._wall, prev,
                                   int(self.config.max_clock_skew_s * 1_000_000))
        if reason:
            return "batch_time_" + reason
        return None

    def _previous_batch_time(self, seq: int) -> int:
        prev = self.last_batch_time
        for s in range(seq - 1, self.last_executed, -1):
            slot = self.log.get(s)
            if slot is not None and slot.batch is not None and slot.batch.requests:
                return max(prev, slot.batch.batch_time)
        return prev

    def _accept_pre_prepare(self, slot: Slot, pp_signed: Signed[PrePrepare], batch: Batch | None,
                            fresh: bool) -> None:
        pp: PrePrepare = pp_signed.statement
        if slot.decided is not None and slot.decided != pp.digest:
            # committed-local (2f+1 COMMITs, perhaps before its batch came): a decided digest
            # never changes, whatever a primary signs later (PROTOCOL.md "Normal case")
            held = slot.decided_pp
            if held is not None and held.statement.view == pp.view:
                self._evidence(pp.replica, "pre_prepare", held, pp_signed,
                               key=("pp", pp.view, pp.seq))
            return self._drop("conflicts_decided")
        mine = slot.prepares.get(self.id)
        if mine is not None and mine.statement.digest != pp.digest:
            # we prepared another digest for (v, seq) before (e.g. before a crash): never contradict it
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
                # the batch's longest wait. Forwarded requests count too (unlike Karn's rule):
                # at a slow pace every request is forwarded once, and leaving them out would
                # never learn that pace. A lost copy's wait errs toward later forwarding,
                # which forward_after_s caps below the view-change timer.
                self.order_delay.observe(self._now - first_seen)
            if fresh:
                self._persist(REC_PROPOSAL, _new_proposal(pp_signed, batch))
        if not self.is_primary:
            if mine is not None:  # recovered: resend the vote we already signed
                self._out.append(Broadcast(mine))
            else:
                prepare = self._sign(_new_prepare(pp.view, pp.seq, pp.digest, self.id))
                slot.prepares[self.id] = prepare
                slot.sent_prepare = True
                self._persist(REC_SENT, prepare)
                self._out.append(_new_broadcast(prepare))
        self._arm_progress()
        self._check_prepared(slot)

    def _on_prepare(self, signed: Signed[Prepare]) -> None:
        p: Prepare = signed.statement
        if p.view != self.view or self.in_view_change:
            return self._drop("wrong_view")
        if p.replica == self.primary(p.view):
            return self._drop("prepare_from_primary")
        refused = self._normal_case_window(p.seq)
        if refused:
            held = self.log.get(p.seq)  # compared first: a proof whatever the window says
            old = held.prepares.get(p.replica) if held is not None and held.view == p.view \
                else None
            if old is not None and old.statement.digest != p.digest:
                self._evidence(p.replica, "prepare", old, signed, key=("p", p.view, p.seq, p.replica))
            return self._drop(refused)
        slot = self.log.slot(p.seq)
        if slot.view != self.view:
            slot.reset_view(self.view)
        added = add_vote(slot.prepares, p.replica, signed)
        if added is not ADDED:
            if type(added) is ConflictingVotes:
                self._evidence(p.replica, "prepare", added.first, added.second,
                               key=("p", p.view, p.seq, p.replica))
            return self._drop("duplicate_prepare")
        if slot.deferred is not None:
            self._check_deferred(slot)
        self._check_prepared(slot)

    def _check_prepared(self, slot: Slot) -> None:
        """prepared(v, seq, d): pre-prepare + 2f matching PREPAREs from distinct backups (4.2).

        A step of the current view only: a replica in a view change, or a slot of another
        view, signs no COMMIT, even when a batch it lacked arrives late (PROTOCOL.md "Normal
        case"): its VIEW-CHANGE already told the new primary it had not prepared."""
        if slot.prepared or slot.pre_prepare is None or slot.batch is None:
            return
        if self.in_view_change or slot.view != self.view:
            return
        prepares = prepared_certificate(slot.prepares, slot.digest, self.primary(), self.quorum)
        if prepares is None:
            return
        slot.prepared = True
        slot.cert = _new_prepared_cert(slot.pre_prepare, prepares)
        pp: PrePrepare = slot.pre_prepare.statement
        commit = self._sign(_new_commit(pp.view, pp.seq, pp.digest, self.id))
        slot.commits[self.id] = commit
        slot.sent_commit = True
        self._persist(REC_CERT, slot.cert)
        self._persist(REC_SENT, commit)
        self._out.append(_new_broadcast(commit))
        self._check_committed(slot)

    def _on_commit(self, signed: Signed[Commit]) -> None:
        c: Commit = signed.statement
        if c.view > self.view:
            return self._drop("wrong_view")
        if c.view < self.view or self.in_view_change:
            return self._on_certificate_commit(signed)
        refused = self._normal_case_window(c.seq)
        if refused:
            if refused == "below_proven_checkpoint":
                # a commit certificate still decides the seq: no vote of ours is involved
                return self._on_certificate_commit(signed)
            return self._drop(refused)
        slot = self.log.slot(c.seq)
        if slot.view != self.view:
            slot.reset_view(self.view)
        old = slot.commits.get(c.replica)
        if old is not None:
            self._conflicting_commit(slot, signed)
            return self._drop("duplicate_commit")
        slot.commits[c.replica] = signed
        self._check_committed(slot)

    def _on_certificate_commit(self, signed: Signed[Commit]) -> None:
        """A COMMIT of an earlier view, relayed by a peer with its commit certificate: 2f+1
        matching COMMITs of one view for (seq, d) mean f+1 correct replicas prepared d there,
        so d is committed at seq (4.2, 4.4): a replica that lagged behind may execute it."""
        c: Commit = signed.statement
        held_slot = self.log.get(c.seq)
        if held_slot is not None:
            self._conflicting_commit(held_slot, signed)
        if not self.log.in_window(c.seq) or c.seq <= self.last_executed:
            return self._drop("old_commit")
        slot = self.log.slot(c.seq)
        if slot.decided is not None:
            return self._drop("old_commit")
        mine = sum(1 for votes in slot.old_commits.values() if c.replica in votes)
        if mine >= MAX_OLD_COMMITS_PER_REPLICA:
            return self._drop("old_commit_limit")
        votes = slot.old_commits.setdefault((c.view, c.digest), {})
        votes[c.replica] = signed
        cert = commit_certificate(votes, c.digest, self.quorum)
        if cert is not None:
            self._decide_by_certificate(slot, c.digest, cert)

    def _conflicting_commit(self, slot: Slot, signed: Signed[Commit]) -> None:
        """Evidence when we hold a COMMIT of the same signer for the same (v, seq) with another
        digest (among the current view's votes or the relayed votes of earlier views)."""
        c: Commit = signed.statement
        held = slot.commits.get(c.replica) if slot.view == c.view else None
        if held is None:
            for (view, digest), votes in slot.old_commits.items():
                if view == c.view and digest != c.digest and c.replica in votes:
                    held = votes[c.replica]
                    break
        if held is not None and held.statement.digest != c.digest:
            self._evidence(c.replica, "commit", held, signed, key=("c", c.view, c.seq, c.replica))

    def _decide_by_certificate(self, slot: Slot, digest: bytes, cert: tuple[Signed[Commit], ...]) -> None:
        slot.decided = digest
        slot.commit_cert = cert
        slot.old_commits = {}
        self.counters["decided_by_certificate"] += 1
        if slot.batch is None or self._digest(slot.batch) != digest:
            slot.batch = self.batches.get(digest)
        if slot.pre_prepare is not None and slot.pre_prepare.statement.digest == digest:
            slot.decided_pp = slot.pre_prepare
        if slot.batch is None:
            return self._fetch_decided(slot)
        self._execute_ready()

    def _fetch_decided(self, slot: Slot) -> None:
        """Ask the replicas of a decided slot's commit certificate for its batch."""
        assert slot.decided is not None
        self.needed_batches[slot.decided] = slot.seq
        fetch = self._sign(Fetch(self.view, slot.seq, slot.decided, self.id))
        for s in slot.commit_cert:
            if s.statement.replica != self.id:
                self._out.append(Send(s.statement.replica, fetch))

    def _check_committed(self, slot: Slot) -> None:
        """committed-local: prepared + 2f+1 matching COMMITs, own included (4.2)."""
        if slot.decided is not None:
            if slot.seq == self.last_executed + 1 and slot.batch is not None:
                self._execute_ready()  # decided earlier, its batch just arrived
            return
        if not slot.prepared:
            # 2f+1 matching COMMITs decide the seq even where we missed the prepare phase
            for digest, cert in commit_certificates(slot.commits, self.quorum):
                self._decide_by_certificate(slot, digest, cert)
            return
        decided = commit_certificate(slot.commits, slot.digest, self.quorum)
        if decided is None:
            return
        slot.decided = slot.digest
        slot.decided_pp = slot.pre_prepare
        slot.commit_cert = decided
        self._execute_ready()

    # ------------------------------------------------------------------ execution

    def _execute_ready(self) -> None:
        progressed = False
        while True:
            slot = self.log.get(self.last_executed + 1)
            if slot is None or slot.decided is None or slot.batch is None:
                break
            if self._digest(slot.batch) != slot.decided:
                # the acceptance rules keep a decided slot's batch; should one slip through,
                # the wrong batch is never executed: it is dropped and the right one fetched
                self._drop("decided_batch_mismatch")
                self._event("decided_batch_mismatch", seq=slot.seq)
                slot.batch = self.batches.get(slot.decided)
                if slot.batch is None or self._digest(slot.batch) != slot.decided:
                    slot.batch = None
                    self._fetch_decided(slot)
                    break
            self._execute(slot)
            self.perf.executed(len(slot.batch.requests), None if slot.accepted_at is None
                               else self._now - slot.accepted_at)  # (bft/throughput.py)
            progressed = True
        if progressed:
            self.last_good_view = self.view  # the last view in which a request executed (4.5)
            if self.progress_deadline is not None and self._busy_since is not None:
                self.exec_pace.add_interval(self._now - self._busy_since)
            self.progress_deadline = None
            if self._has_outstanding_work():
                self._arm_progress()
            if self.is_primary:
                self._try_propose()

    def _stale(self, key: tuple[int, int]) -> bool:
        """A request at or below its client's last executed t: done with (4.1)."""
        last = self.client_table.get(key[0])
        return last is not None and key[1] <= last[0]

    def _live_pending(self) -> bool:
        """Whether some pending request still waits for execution. Requests made stale by a
        newer one of their client (a lost datagram the client gave up on) are forgotten
        here, from the front: each is looked at once, and none keeps a timer running."""
        pending = self.pending
        while pending:
            key = next(iter(pending))
            if not self._stale(key):
                return True
            del pending[key]
            self.counters["stale_requests_forgotten"] += 1
        return False

    def _has_outstanding_work(self) -> bool:
        if self._live_pending():
            return True
        slots = self.log.slots
        return any((s := slots.get(q)) is not None and s.pre_prepare is not None
                   for q in range(self.last_executed + 1, self.log.top + 1))

    def _execute(self, slot: Slot) -> None:
        batch = slot.batch
        assert batch is not None
        seq = slot.seq
        results = []
        max_clock_skew_us = int(self.config.max_clock_skew_s * 1_000_000)
        batch_time_us = max(batch.batch_time, self.last_batch_time)  # monotonic (PROTOCOL.md)
        time_bound = batch_time_us + self._timestamp_window_us()
        for index, s in enumerate(batch.requests):
            r: Request = s.statement
            key = (r.client, r.timestamp)
            self.pending.pop(key, None)
            self.assigned.pop(key, None)
            last = self.client_table.get(r.client)
            if last is not None and r.timestamp <= last[0]:
                results.append(last[1] if r.timestamp == last[0] else b"")
                continue  # exactly-once: never execute twice
            if r.timestamp > time_bound:
                # Issue 21, item 5: a request numbered beyond agreed time + the window would
                # make every later request of its client old; never executed, no reply. Only
                # replicated state decides (the agreed time, the config): every correct
                # replica skips it alike. Fresh proposals carrying one are refused earlier
                # (_batch_problem); this covers batches re-proposed by a NEW-VIEW.
                results.append(b"")
                self._drop("request_too_far_ahead")
                continue
            digest = request_digest(s)
            ctx = ExecContext(seq=seq, index=index,
                              batch_time_us=batch_time_us,
                              client=r.client, timestamp=r.timestamp,
                              max_clock_skew_us=max_clock_skew_us)
            result = self.app.execute(r.op, ctx)
            self.client_table[r.client] = (r.timestamp, result, digest, batch_time_us)
            results.append(result)
            self._send_reply(r.client, r.timestamp, digest, result, batch_time_us)
        if batch.requests:
            self.last_batch_time = max(self.last_batch_time, batch.batch_time)
        self.last_executed = seq
        self.counters["executed_batches"] += 1
        self.counters["executed_requests"] += len(batch.requests)
        checkpoint = seq % self.config.checkpoint_interval == 0
        snapshot = state_digest = None
        if checkpoint or self.digest_every_batch:
            snapshot = self._snapshot()
            state_digest = sha256(snapshot)
        self._out.append(_new_executed(seq, self.view, slot.decided or b"", batch,
                                       tuple(results), state_digest or b""))
        if checkpoint:
            assert snapshot is not None and state_digest is not None
            self.own_snapshots[seq] = (state_digest, snapshot)
            cp = self._sign(Checkpoint(seq, state_digest, self.id))
            self._persist(REC_SENT, cp)
            self._out.append(Broadcast(cp))
            self._add_checkpoint(cp)

    # ------------------------------------------------------------------ snapshot of replica state

    def _snapshot(self) -> bytes:
        app_snapshot = self.app.snapshot()
        table = sorted(self.client_table.items())  # by client: each appears once
        last_bt = self.last_batch_time
        if type(app_snapshot) is bytes and type(last_bt) is int and 0 <= last_bt < _U64_END:
            # cbor2.dumps(..., canonical=True) below, written directly for the usual types; a
            # client's entry is written again only when it changed (a new tuple in the table)
            uint, head = codec.uint_bytes, codec.bytes_head
            out = [b"\x83", head(len(app_snapshot)), app_snapshot, codec.array_head(len(table))]
            written = self._table_entries
            for c, entry in table:
                hit = written.get(c)
                if hit is not None and hit[0] is entry:
                    out.append(hit[1])
                    continue
                t, r, d, at = entry
                if not (type(c) is int and type(t) is int and 0 <= c < _U64_END
                        and 0 <= t < _U64_END and type(r) is bytes and type(d) is bytes
                        and type(at) is int and 0 <= at < _U64_END):
                    break
                data = b"".join((b"\x85", uint(c), uint(t), head(len(r)), r, head(len(d)), d,
                                 uint(at)))
                written[c] = (entry, data)
                out.append(data)
            else:
                out.append(uint(last_bt))
                return b"".join(out)
        return cbor2.dumps([app_snapshot, [[c, *entry] for c, entry in table], last_bt],
                           canonical=True)

    def _restore(self, snapshot: bytes) -> None:
        try:
            app_snap, table, last_bt = cbor2.loads(snapshot)
            client_table = {}
            for entry in table:
                if isinstance(entry, list) and len(entry) == 4:
                    # a snapshot written before replies carried the agreed time (issue 22):
                    # the cached reply's time is unknown, 0, the same on every replica that
                    # restores this snapshot, so an upgraded state directory still starts
                    entry = [*entry, 0]
                c, t, r, d, at = entry  # at: the agreed time of the cached reply
                if (type(c) is not int or type(t) is not int or not isinstance(r, bytes)
                        or not isinstance(d, bytes) or len(d) != DIGEST_SIZE
                        or type(at) is not int or at < 0):
                    raise ValueError("bad client table")
                client_table[c] = (t, r, d, at)
            if type(last_bt) is not int:
                raise ValueError("bad batch time")
        except (ValueError, TypeError, cbor2.CBORDecodeError) as e:
            raise MalformedMessage(f"bad snapshot: {e}") from e
        try:
            self.app.restore(app_snap)
        except ValueError as e:
            raise MalformedMessage(f"bad app snapshot: {e}") from e
        self.client_table = client_table
        self.last_batch_time = last_bt

    def _got_batch(self, digest: bytes, batch: Batch, pp: Signed[PrePrepare] | None = None) -> None:
        seq = self.needed_batches.pop(digest, None)
        self.batches[digest] = batch
        if seq is None:
            return
        slot = self.log.get(seq)
        if slot is not None and slot.decided == digest and slot.batch is None:
            slot.batch = batch
            if slot.decided_pp is None and pp is not None:
                slot.decided_pp = pp
            self._execute_ready()
            return
        if slot is not None and slot.digest == digest and slot.batch is None \
                and slot.decided in (None, digest):  # a decided slot takes only its own batch
            slot.batch = batch
            for s in batch.requests:
                r = s.statement
                self.assigned[(r.client, r.timestamp)] = seq
            self._check_prepared(slot)
            self._check_committed(slot)
            self._execute_ready()
        if self.is_primary:
            self._try_propose()  # it may have waited for this batch (see _awaiting_batches)

    def _awaiting_batches(self) -> bool:
        """Whether a slot below the next seq to propose waits for its batch (a NEW-VIEW
        re-proposal, or a seq decided before its batch came). A primary proposes nothing new
        meanwhile: it does not know which requests that batch holds (backups refuse a
        request assigned to another seq, rule 5) nor its batch_time (rule 6)."""
        return any(self.last_executed < q < self.next_seq for q in self.needed_batches.values())

    def _on_fetch(self, signed: Signed[Fetch]) -> None:
        req: Fetch = signed.statement
        batch = self.batches.get(req.digest)
        if batch is None:
            return self._drop("fetch_unknown_batch")
        slot = self.log.get(req.seq)
        pp = slot.pre_prepare if slot is not None and slot.pre_prepare is not None else None
        if pp is None or pp.statement.digest != req.digest:
            if slot is not None and slot.cert is not None and \
                    slot.cert.pre_prepare.statement.digest == req.digest:
                pp = slot.cert.pre_prepare
            elif slot is not None and slot.decided_pp is not None and \
                    slot.decided_pp.statement.digest == req.digest:
                pp = slot.decided_pp
            else:
                return self._drop("fetch_unknown_batch")
        self._out.append(Send(req.replica, Proposal(pp, batch)))

