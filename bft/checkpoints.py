"""Checkpoints (OSDI'99 4.3): CHECKPOINT votes, stable checkpoints and garbage collection
of the log (with the WAL compacted to a snapshot), and state transfer to a replica that
fell behind (TOCS'02 5.3). A mixin over `bft.state.ReplicaState`: see bft/state.py.
"""

from __future__ import annotations

from bft.crypto import sha256
from bft.effects import SaveSnapshot, Send
from bft.messages import Checkpoint, FetchState, Proposal, Signed, StateChunk
from bft.quorum import ADDED, ConflictingVotes, add_vote, checkpoint_certificate
from bft.state import NULL_DIGEST, STATE_CHUNK_BYTES, ReplicaState, _Transfer
from bft.walrecords import REC_CERT, REC_NEW_VIEW, REC_PROPOSAL, REC_SENT, encode_snapshot


class Checkpoints(ReplicaState):
    """The checkpoint and state-transfer phase of a replica (see the module docstring)."""

    # ------------------------------------------------------------------ checkpoints (4.3)

    def _on_checkpoint(self, signed: Signed[Checkpoint]) -> None:
        cp: Checkpoint = signed.statement
        if cp.seq <= self.log.low or cp.seq % self.config.checkpoint_interval:
            return self._drop("old_checkpoint")
        if cp.seq > self.log.high + self.config.log_window:
            return self._far_checkpoint(signed)
        self._add_checkpoint(signed)

    def _far_checkpoint(self, signed: Signed[Checkpoint]) -> None:
        """A checkpoint far beyond our window (we are far behind): keep only each replica's
        highest one (bounded memory) and look for 2f+1 that match."""
        cp: Checkpoint = signed.statement
        old = self.far_checkpoints.get(cp.replica)
        if old is not None and old.statement.seq >= cp.seq:
            return self._drop("old_checkpoint")
        self.far_checkpoints[cp.replica] = signed
        proof = checkpoint_certificate(self.far_checkpoints.values(), cp.seq, cp.state_digest,
                                       self.quorum)
        if proof is not None:
            self.far_checkpoints = {}
            self._on_stable_proof(cp.seq, cp.state_digest, proof)

    def _add_checkpoint(self, signed: Signed[Checkpoint]) -> None:
        cp: Checkpoint = signed.statement
        votes = self.checkpoints.setdefault(cp.seq, {})
        added = add_vote(votes, cp.replica, signed)
        if added is not ADDED:
            if type(added) is ConflictingVotes:
                self._evidence(cp.replica, "checkpoint", added.first, added.second,
                               key=("cp", cp.seq, cp.replica))
            return
        if cp.seq <= self.log.low:
            return
        proof = checkpoint_certificate(votes.values(), cp.seq, cp.state_digest, self.quorum)
        if proof is not None:
            self._on_stable_proof(cp.seq, cp.state_digest, proof)

    def _diverged_at(self, seq: int) -> bool:
        return seq in self.diverged

    def _on_stable_proof(self, seq: int, digest: bytes, proof: tuple[Signed[Checkpoint], ...]) -> None:
        """2f+1 matching CHECKPOINTs make seq stable; a replica behind or diverged fetches state."""
        self._learned_stable(seq)
        own = self.own_snapshots.get(seq)
        if own is not None and own[0] == digest:
            self._make_stable(seq, digest, proof, own[1])
            return
        if own is not None:
            self.diverged.add(seq)
            self._event("diverged", seq=seq)  # our state differs from the proven one
        self.transfer_target = (seq, digest, proof)
        if self.last_executed >= seq or not self._can_catch_up(seq):
            self._start_transfer()

    def _can_catch_up(self, seq: int) -> bool:
        """Whether the log already holds every decided batch up to seq (no transfer needed).
        A decided seq whose batch is missing does not count: once seq is stable the others
        may discard that batch, and fetching it could never succeed."""
        return all((s := self.log.get(q)) is not None and s.decided is not None
                   and s.batch is not None
                   for q in range(self.last_executed + 1, seq + 1))

    def _make_stable(self, seq: int, digest: bytes, proof: tuple[Signed[Checkpoint], ...],
                     snapshot: bytes) -> None:
        self.log.advance(seq)
        if self.votes_lost and self.vote_floor is not None and seq >= self.vote_floor:
            self.votes_lost = False  # the whole window lies above any lost vote
            self._event("votes_lost_over", seq=seq)
        self.stable_digest, self.stable_proof, self.stable_snapshot = digest, proof, snapshot
        for s in [s for s in self.checkpoints if s <= seq]:
            del self.checkpoints[s]
        for s in [s for s in self.own_snapshots if s <= seq]:
            del self.own_snapshots[s]
        for k in [k for k, v in self.assigned.items() if v <= seq]:
            del self.assigned[k]
        self.needed_batches = {d: q for d, q in self.needed_batches.items() if q > seq}
        live = {s.digest for s in self.log.slots.values() if s.digest} | {
            s.decided for s in self.log.slots.values() if s.decided}
        self.batches = {d: b for d, b in self.batches.items() if d in live or d == NULL_DIGEST}
        # (the digest memo holds batches too: only those the log still holds stay pinned)
        self._digest_memo = {k: v for k, v in self._digest_memo.items() if v[1] in live}
        if self.transfer_target and self.transfer_target[0] <= seq:
            self.transfer_target = None
        if self.transfer is not None and self.transfer.seq <= seq:
            self.transfer = None
        self.diverged = {d for d in self.diverged if d > seq}
        # proofs for seqs below the window: no such message is accepted any more (bounded)
        self.evidence_seen = {k for k in self.evidence_seen
                              if k[1 if k[0] == "cp" else 2] > seq}
        self._event("checkpoint_stable", seq=seq, digest=digest.hex()[:16])
        # compact the WAL: snapshot, then re-persist what must survive it
        self._out.append(SaveSnapshot(seq, encode_snapshot(seq, digest, snapshot, proof)))
        self._persist_survivors()
        if self.is_primary:
            self._try_propose()

    def _persist_survivors(self) -> None:
        if self.my_view_change is not None:
            self._persist(REC_SENT, self.my_view_change)
        if self.new_view_msg is not None:
            self._persist(REC_NEW_VIEW, self.new_view_msg)
        for slot in sorted(self.log.slots.values(), key=lambda s: s.seq):
            if slot.pre_prepare is not None and slot.batch is not None:
                self._persist(REC_PROPOSAL, Proposal(slot.pre_prepare, slot.batch))
            if slot.sent_prepare and self.id in slot.prepares:
                self._persist(REC_SENT, slot.prepares[self.id])
            if slot.cert is not None:
                self._persist(REC_CERT, slot.cert)
            if slot.sent_commit and self.id in slot.commits:
                self._persist(REC_SENT, slot.commits[self.id])

    # ------------------------------------------------------------------ state transfer (TOCS 5.3)

    def _check_transfer(self) -> None:
        target = self.transfer_target
        if target is None:
            return
        if self.transfer is not None:
            if target[0] > self.transfer.seq:
                # a newer stable checkpoint is proven: the one being fetched may already be
                # garbage-collected everywhere (a transfer that could never finish)
                self._start_transfer()
            return
        if self.last_executed >= target[0] and target[0] <= self.log.low:
            self.transfer_target = None
            return
        own = self.own_snapshots.get(target[0])
        if own is not None and own[0] == target[1]:
            self._make_stable(target[0], target[1], target[2], own[1])
            return
        self._start_transfer()

    def _start_transfer(self) -> None:
        if self.transfer_target is None:
            return
        seq, digest, proof = self.transfer_target
        if self.transfer is not None and self.transfer.seq >= seq:
            return
        sources = sorted({s.statement.replica for s in proof} - {self.id})
        if not sources:
            return
        self.transfer = _Transfer(seq, digest, proof, sources)
        self._event("state_transfer_start", seq=seq, behind=seq - self.last_executed)
        self._request_state(retry=False)

    def _request_state(self, retry: bool) -> None:
        t = self.transfer
        if t is None:
            return
        if retry:
            t.attempt += 1
            self.counters["state_transfer_retries"] += 1
        t.chunks, t.count = {}, 0
        source = t.source = t.sources[t.attempt % len(t.sources)]
        t.deadline = self._now + max(self._vc_timeout(), 0.5)
        self._out.append(Send(source, self._sign(FetchState(t.seq, t.digest, self.id))))

    def _on_fetch_state(self, signed: Signed[FetchState]) -> None:
        req: FetchState = signed.statement
        if req.seq != self.log.low or self.stable_snapshot is None or req.state_digest != self.stable_digest:
            return self._drop("no_such_state")
        # Our whole snapshot goes to the requester's configured address: at most one per
        # requester and state_answer_interval_s (a correct requester asks again only after
        # max(view-change timer, 0.5 s), and then another replica first).
        last = self._state_answered.get(req.replica)
        if last is not None and self._now - last[0] < self.config.state_answer_interval_s:
            return self._drop("fetch_state_repeat" if last[1] == req else "fetch_state_rate_limited")
        self._state_answered[req.replica] = (self._now, req)
        data = self.stable_snapshot
        count = max(1, -(-len(data) // STATE_CHUNK_BYTES))
        for i in range(count):
            chunk = StateChunk(req.seq, req.state_digest, i, count,
                               data[i * STATE_CHUNK_BYTES:(i + 1) * STATE_CHUNK_BYTES], self.id)
            self._out.append(Send(req.replica, self._sign(chunk)))
        self.counters["state_chunks_sent"] += count

    def _on_state_chunk(self, signed: Signed[StateChunk]) -> None:
        c: StateChunk = signed.statement
        t = self.transfer
        if t is None or c.seq != t.seq or c.state_digest != t.digest or t.chunks is None:
            return self._drop("unexpected_state_chunk")
        if c.replica != t.source:
            # only the replica asked answers (TOCS 5.3): a liar's chunk would spoil the
            # snapshot, and the transfer would start over, for as long as it kept lying
            return self._drop("state_chunk_not_asked")
        max_chunks = self.limits.max_message_bytes // STATE_CHUNK_BYTES * 64 + 1
        if c.count == 0 or c.count > max_chunks or c.index >= c.count or (t.count and c.count != t.count):
            return self._drop("bad_state_chunk")
        t.count = c.count
        t.chunks[c.index] = c.data
        if len(t.chunks) < t.count:
            return
        data = b"".join(t.chunks[i] for i in range(t.count))
        if sha256(data) != t.digest:
            self._event("state_transfer_mismatch", seq=t.seq, source=c.replica)
            return self._request_state(retry=True)
        self._install_state(t.seq, t.digest, t.proof, data)

    def _install_state(self, seq: int, digest: bytes, proof: tuple[Signed[Checkpoint], ...],
                       data: bytes) -> None:
        if seq <= self.last_executed and not self._diverged_at(seq):
            self.transfer = None  # we caught up through the log meanwhile: never roll back
            self._drop("stale_state_transfer")
            return
        self._restore(data)
        behind = seq - self.last_executed
        self.last_executed = seq
        self.transfer = None
        for key in [k for k in self.pending if self.client_table.get(k[0], (0,))[0] >= k[1]]:
            del self.pending[key]
        if self.next_seq <= seq:
            self.next_seq = seq + 1
        self._event("state_transfer", seq=seq, behind=behind)
        self._make_stable(seq, digest, proof, data)
        self._execute_ready()

