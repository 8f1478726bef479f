"""The PBFT replica as a pure, deterministic state machine (sans-I/O).

Inputs: `receive(message, now, wall)` for every message from the network
(replica messages and client requests alike), `tick(now, wall)` when a timer
is due, `start(now, wall)` once after construction or recovery. `now` is
monotonic seconds; `wall` is the interval clock reading used for agreed time.
Outputs: a list of effects (bft/effects.py) to carry out in order. Nothing
here touches sockets, threads, clocks or global randomness.

Rules cited as in PROTOCOL.md; sections are those of Castro & Liskov,
OSDI'99 (section 4.x) and TOCS'02 (state transfer, 5.3).
"""

from __future__ import annotations

import collections
import itertools
from dataclasses import dataclass
from typing import Any, Iterable, TypeVar

import cbor2

from bft import codec
from bft.app import ExecContext
from bft.clock import Interval, accept_batch_time, propose_batch_time
from bft.config import ClusterConfig
from bft.crypto import batch_digest, request_digest, sha256
from bft.detector import AdaptiveTimeout, PhiAccrualDetector, RttEstimator
from bft.effects import (
    Broadcast,
    Effect,
    Event,
    Evidence,
    Executed,
    Persist,
    Reply as ReplyEffect,
    SaveSnapshot,
    Send,
    SetTimer,
)
from bft.errors import InvariantViolation, MalformedMessage
from bft.log import MessageLog, Slot
from bft.messages import (
    DIGEST_SIZE,
    NULL_BATCH,
    Batch,
    Checkpoint,
    Commit,
    Fetch,
    FetchState,
    NewView,
    PreparedCert,
    Prepare,
    PrePrepare,
    Proposal,
    Reply,
    Request,
    Signed,
    StateChunk,
    Statement,
    Status,
    ViewChange,
)
from bft.quorum import (
    ADDED,
    ConflictingVotes,
    add_vote,
    checkpoint_certificate,
    commit_certificate,
    commit_certificates,
    count_at_or_above,
    join_target,
    prepared_certificate,
    view_change_certificate,
    vouched,
)
from bft.viewchange import (
    Geometry,
    NewViewPlan,
    new_view_problem,
    plan_new_view,
    view_change_problem,
)
from bft.walrecords import (  # the record kinds, imported from here by tests and planted replicas
    REC_CERT,
    REC_NEW_VIEW,
    REC_PROPOSAL,
    REC_SENT,
    Record,
    decode_record,
    decode_snapshot,
    encode_record,
    encode_snapshot,
)

__all__ = ["REC_CERT", "REC_NEW_VIEW", "REC_PROPOSAL", "REC_SENT", "Replica"]

NULL_DIGEST = batch_digest(NULL_BATCH)

S = TypeVar("S", bound=Statement)

_U64_END = 2**64  # CBOR's unsigned integers (cbor2 writes larger ones as tagged bignums)

STATE_CHUNK_BYTES = 48 * 1024
MAX_STATUS_SEQS = 64
MAX_PENDING_REQUESTS = 50_000
MAX_RESEND_PER_STATUS = 32
EXEC_PACE_WINDOW = 200  # waits for an execution remembered (see Replica.exec_pace)
EXEC_PACE_MIN_SAMPLES = 8
DIGEST_MEMO_SIZE = 1024  # batches whose digest is remembered (see Replica._digest)
MAX_OLD_COMMITS_PER_REPLICA = 4  # per slot: bounds what a lying replica can make us keep


@dataclass(slots=True)
class _Transfer:
    """A state transfer in progress (TOCS section 5.3)."""

    seq: int
    digest: bytes
    proof: tuple[Signed[Checkpoint], ...]
    sources: list[int]
    attempt: int = 0
    chunks: dict[int, bytes] | None = None
    count: int = 0
    deadline: float = 0.0
    source: int = -1  # the replica asked: chunks are taken from it only


class Replica:
    """One PBFT replica. See the module docstring."""

    def __init__(self, config: ClusterConfig, replica_id: int, *, signer: Any, verifier: Any,
                 app: Any, recovered: tuple[tuple[int, bytes] | None, Iterable[bytes]] | None = None,
                 digest_every_batch: bool = False, reply_auth: Any = None,
                 votes_lost: bool = False) -> None:
        # reply_auth: a bft.auth.ReplyAuth of this replica: replies go out as MacReply (PBFT's
        # MACs for clients); None, or a client without a key, gets a signed reply instead.
        # votes_lost: the stable storage lost records this replica may have signed (a damaged
        # WAL or snapshot, bft.storage.votes_may_be_lost): see `vote_floor`.
        if not 0 <= replica_id < config.n:
            raise ValueError(f"replica id {replica_id} not in 0..{config.n - 1}")
        self.config = config
        self.id = replica_id
        self.n = config.n
        self.f = config.f
        self.quorum = config.quorum  # 2f+1 when n = 3f+1
        self.geo = Geometry(config.n, config.f, config.log_window, config.quorum)
        self.signer = signer
        self.verifier = verifier
        self.app = app
        self.digest_every_batch = digest_every_batch
        self.reply_auth = reply_auth
        self.limits = config.limits

        self.view = 0
        self.in_view_change = False
        self.log = MessageLog(config.log_window)
        self.last_executed = 0
        self.last_batch_time = 0
        self.next_seq = 1  # primary: next sequence number to assign
        self.batches: dict[bytes, Batch] = {NULL_DIGEST: NULL_BATCH}
        # exactly-once: client -> (timestamp, result, request digest) of its last executed
        # request; the cached reply is resent only to that very request (same digest)
        self.client_table: dict[int, tuple[int, bytes, bytes]] = {}
        # requests known but not executed: (client, t) -> Signed request
        self.pending: collections.OrderedDict[tuple[int, int], Signed[Request]] = collections.OrderedDict()
        self.assigned: dict[tuple[int, int], int] = {}  # (client, t) -> seq, in the log above h
        # checkpoints: seq -> {replica: Signed Checkpoint}
        self.checkpoints: dict[int, dict[int, Signed[Checkpoint]]] = {}
        self.far_checkpoints: dict[int, Signed[Checkpoint]] = {}  # replica -> its highest far-ahead checkpoint
        self.own_snapshots: dict[int, tuple[bytes, bytes]] = {}  # seq -> (digest, snapshot)
        self.stable_digest = b""
        self.stable_proof: tuple[Signed[Checkpoint], ...] = ()
        self.stable_snapshot: bytes | None = None
        # view change state
        self.view_changes: dict[int, Signed[ViewChange]] = {}  # sender -> its highest-view VIEW-CHANGE
        self.my_view_change: Signed[ViewChange] | None = None
        self.new_view_msg: Signed[NewView] | None = None  # NEW-VIEW of the current view (view > 0)
        self.last_good_view = 0  # the last view in which a request executed (4.5 timer reset)
        self.vc_started_at: float | None = None
        self.vc_cause = ""
        self.needed_batches: dict[bytes, int] = {}  # digest -> seq waiting for it
        # timers
        self.timeout = AdaptiveTimeout(config.view_change_timeout_min_s,
                                       config.view_change_timeout_max_s, config.phi_threshold,
                                       initial_s=config.view_change_timeout_s)
        self.progress_deadline: float | None = None
        # How long outstanding work waits for the next execution, measured while busy: under
        # CPU overload a correct primary is slow, and the timer must follow (see _vc_timeout).
        self.exec_pace = PhiAccrualDetector(window=EXEC_PACE_WINDOW,
                                            first_interval_s=config.view_change_timeout_min_s)
        self._busy_since: float | None = None
        # How long a request waits at a backup until the primary orders it (its PRE-PREPARE
        # arrives), smoothed: _resend_pending forwards only requests that waited unusually long.
        self.order_delay = RttEstimator()
        # when a fresh PRE-PREPARE of the current primary was last accepted: the only sign
        # of life that extends the progress timer (see _primary_alive_until)
        self._primary_ordered_at: float | None = None
        self._entering_view = False  # see _enter_view
        self.new_view_deadline: float | None = None
        self.batch_deadline: float | None = None
        self.status_deadline: float = 0.0
        self.transfer: _Transfer | None = None
        self.transfer_target: tuple[int, bytes, tuple[Signed[Checkpoint], ...]] | None = None
        self.last_timer: float | None = None
        self.evidence_seen: set[tuple[Any, ...]] = set()
        self.diverged: set[int] = set()
        self.heard_from: dict[int, float] = {}  # peer -> last time a valid message came  # checkpoint seqs where our digest differed from the proof
        self.drops: collections.Counter[str] = collections.Counter()
        self.counters: collections.Counter[str] = collections.Counter()
        self._out: list[Effect] = []
        self._digest_memo: dict[int, tuple[Batch, bytes]] = {}
        # client -> (its client_table entry, that entry as written in _snapshot)
        self._table_entries: dict[int, tuple[tuple[int, bytes, bytes], bytes]] = {}
        self._pending_since: dict[tuple[int, int], float] = {}  # request -> first seen
        self._forwarded: set[tuple[int, int]] = set()  # requests forwarded to the primary
        # peer -> (last_executed, stable_seq) of its previous STATUS and how many STATUSes in
        # a row showed it stuck behind us: loss recovery resends to a peer only once it made
        # no progress over a whole status interval (stuck); batches, at first, from only two
        # replicas (see _on_status)
        self._peer_progress: dict[int, tuple[int, int, int]] = {}
        self._now = 0.0
        self._wall = Interval(0, 0)
        # statement type -> handler of a replica's signed message (see _dispatch)
        self._handlers: dict[type, Any] = {
            Prepare: self._on_prepare,
            Commit: self._on_commit,
            Checkpoint: self._on_checkpoint,
            ViewChange: self._on_view_change,
            NewView: self._on_new_view,
            Status: self._on_status,
            Fetch: self._on_fetch,
            FetchState: self._on_fetch_state,
            StateChunk: self._on_state_chunk,
        }
        self._dirty_persist = False
        self._recovering = recovered is not None
        # After lost votes (PROTOCOL.md "Crash recovery": never sign what conflicts with an
        # earlier signature): no PRE-PREPARE, PREPARE, COMMIT or NEW-VIEW for a seq at or
        # below `vote_floor`, which lies above every seq it may have voted on (its stable
        # checkpoint at the crash + L); None while unknown (nothing at all is signed then).
        # Over once its own stable checkpoint reaches the floor.
        self.votes_lost = votes_lost
        self.vote_floor: int | None = None
        if recovered is not None:
            self._recover(*recovered)
        if votes_lost:
            if recovered is not None and recovered[0] is not None:
                # the snapshot survived: it is the stable checkpoint the lost records follow
                self.vote_floor = self.log.low + config.log_window
            self.counters["votes_lost_restart"] += 1

    # ------------------------------------------------------------------ entry points

    def start(self, now: float, wall: Interval | None = None) -> list[Effect]:
        """Begin (or resume after recovery): announce status, arm timers."""
        self._begin(now, wall)
        if self._recovering:
            self._event("restart", view=self.view, stable_seq=self.log.low,
                        last_executed=self.last_executed)
            if self.in_view_change and self.my_view_change is not None:
                self._out.append(Broadcast(self.my_view_change))
                self.new_view_deadline = now + self._vc_timeout()
        self._send_status()
        return self._finish()

    def receive(self, message: Any, now: float, wall: Interval | None = None) -> list[Effect]:
        """Handle one message from the network (already decoded by the codec)."""
        self._begin(now, wall)
        try:
            self._dispatch(message)
        except MalformedMessage:  # a record or snapshot from a peer that does not decode
            self._drop("malformed_content")
        return self._finish()

    def tick(self, now: float, wall: Interval | None = None) -> list[Effect]:
        """Run whatever timers are due."""
        self._begin(now, wall, ticked=True)
        if self.batch_deadline is not None and now >= self.batch_deadline:
            self.batch_deadline = None
            self._try_propose(force=True)
        if self.new_view_deadline is not None and now >= self.new_view_deadline:
            # 4.5: only a valid NEW-VIEW stops this timer; nothing else the would-be primary
            # sends (STATUS, say) extends it
            self.new_view_deadline = None
            self._start_view_change(self.view + 1, "new_view_timeout")
        if (self.progress_deadline is not None and now >= self.progress_deadline
                and not self.in_view_change):
            self.progress_deadline = None
            alive_until = self._primary_alive_until(now)
            if self._isolated(now):
                # nobody to form a quorum with: a view change could not complete, and would
                # leave us alone in it once the network heals. Wait (loss recovery goes on).
                self.counters["view_change_deferred_isolated"] += 1
                self._arm_progress()
            elif alive_until is not None:
                # the primary is heard from but slow (an overloaded machine): give it until
                # the slow timer, and look again as soon as it falls silent
                self.counters["view_change_deferred_primary_alive"] += 1
                self.progress_deadline = alive_until
            else:
                self._start_view_change(self.view + 1, "timeout")
        if now >= self.status_deadline:
            self._send_status()
            self._resend_pending()
            self._check_transfer()
        if self.transfer is not None and now >= self.transfer.deadline:
            self._request_state(retry=True)
        return self._finish()

    # ------------------------------------------------------------------ plumbing

    def _begin(self, now: float, wall: Interval | None, ticked: bool = False) -> None:
        if ticked:
            # the runtime's timer fired and is gone (bft/node.py ticks once per SetTimer): the
            # next deadline is announced again, even when it equals the one just consumed
            self.last_timer = None
        self._now = now
        if wall is None:
            us = int(now * 1_000_000)
            wall = Interval(us, us)
        self._wall = wall
        self._out = []

    def _finish(self) -> list[Effect]:
        out = self._out
        nxt = self._next_deadline()
        if nxt is not None and nxt != self.last_timer:
            self.last_timer = nxt
            out.append(SetTimer(nxt))
        self._out = []
        return out

    def _next_deadline(self) -> float | None:
        nxt = self.status_deadline
        for d in (self.batch_deadline, self.new_view_deadline, self.progress_deadline):
            if d is not None and (nxt is None or d < nxt):
                nxt = d
        if self.transfer is not None and (nxt is None or self.transfer.deadline < nxt):
            nxt = self.transfer.deadline
        return nxt

    def _drop(self, reason: str) -> None:
        self.drops[reason] += 1

    def _digest(self, batch: Batch) -> bytes:
        """batch_digest(batch), computed once per batch object (a proposal's batch is checked
        on arrival, at decision and at execution). Batches are immutable; the memo holds a
        reference to each, so an id is never reused while remembered."""
        memo = self._digest_memo
        hit = memo.get(id(batch))
        if hit is not None and hit[0] is batch:
            return hit[1]
        digest = batch_digest(batch)
        if len(memo) >= DIGEST_MEMO_SIZE:
            memo.clear()  # (cheaper than evicting one by one: `del memo[next(iter(memo))]` scans)
        memo[id(batch)] = (batch, digest)
        return digest

    def _event(self, event_kind: str, /, **fields: Any) -> None:
        self._out.append(Event(event_kind, fields))

    def _sign(self, statement: S) -> Signed[S]:
        signed: Signed[S] = self.signer.sign(statement)
        return signed

    def _persist(self, kind: int, message: Record) -> None:
        self._out.append(Persist(encode_record(kind, message)))

    def primary(self, view: int | None = None) -> int:
        return (self.view if view is None else view) % self.n

    @property
    def is_primary(self) -> bool:
        return self.primary() == self.id

    @property
    def stable_seq(self) -> int:
        return self.log.low

    @property
    def proven_low(self) -> int:
        """The highest stable checkpoint proven to us (2f+1 CHECKPOINTs, or a NEW-VIEW's C),
        which may be above our own h while we catch up to it. At or below it we take no part
        in the normal case (PROTOCOL.md "Normal case"): those seqs are decided, and what
        they hold comes by state transfer or by commit certificates, never by our votes."""
        low = self.log.low
        if self.transfer_target is not None and self.transfer_target[0] > low:
            low = self.transfer_target[0]
        if self.transfer is not None and self.transfer.seq > low:
            low = self.transfer.seq
        return low

    def _normal_case_window(self, seq: int) -> str | None:
        """Why a PRE-PREPARE, PREPARE or COMMIT for seq of the current view is refused by the
        watermarks, or None (rule 3, no votes below a proven checkpoint, none where our
        earlier votes were lost)."""
        if not self.log.in_window(seq):
            return "outside_watermarks"
        if seq <= self.proven_low:
            return "below_proven_checkpoint"
        if self._may_have_voted(seq):
            return "votes_lost"
        return None

    def _may_have_voted(self, seq: int) -> bool:
        """Whether we may have signed a vote for seq before storage lost it (see vote_floor)."""
        return self.votes_lost and (self.vote_floor is None or seq <= self.vote_floor)

    def _learned_stable(self, seq: int) -> None:
        """A stable checkpoint proven to us (2f+1 CHECKPOINTs or a NEW-VIEW's C). After lost
        votes with the snapshot lost too, the first one bounds what we may have signed: the
        cluster's stable checkpoint never goes back, so ours at the crash was at most seq."""
        if self.votes_lost and self.vote_floor is None:
            self.vote_floor = seq + self.config.log_window
            self._event("vote_floor", floor=self.vote_floor)

    def _vc_timeout(self) -> float:
        """The view-change timer T (4.4, 4.5): the measured base, doubled per failed view,
        and never above `view_change_timeout_max_s` (PROTOCOL.md: T is bounded by the config;
        ClusterConfig.view_change_bound_s says what that bounds)."""
        cap = self.config.view_change_timeout_max_s
        # loss recovery (status every status_interval_s) gets a few rounds before the primary
        # is suspected, whatever the detector says
        base = max(self.timeout.timeout_s(self.primary()), 3 * self.config.status_interval_s)
        if self.exec_pace.samples >= EXEC_PACE_MIN_SAMPLES:
            # a busy cluster that executes slowly (CPU starvation) is not a faulty primary:
            # wait until the measured wait for an execution would be exceptional (phi). A
            # primary that slows down on purpose can stretch this only up to the ceiling.
            pace = self.exec_pace.silence_for_phi_s(self.config.phi_threshold)
            base = max(base, min(pace, cap))
        return min(base * (1 << min(self.failed_views, 16)), max(cap, base))

    @property
    def failed_views(self) -> int:
        """Successive views that executed nothing: the view-change timer doubles per each (4.5).

        Derived from view numbers, not counted locally, so every replica waiting for the same
        view uses the same timer whether it timed out itself or joined."""
        return max(0, self.view - self.last_good_view - (1 if self.in_view_change else 0))

    # ------------------------------------------------------------------ dispatch

    def _dispatch(self, message: Any) -> None:
        if isinstance(message, Proposal):
            if not isinstance(message.pre_prepare.statement, PrePrepare):
                return self._drop("bad_type")
            if not self.verifier.verify_deep(message):
                return self._drop("bad_signature")
            self._note_arrival(message.pre_prepare.statement.replica)
            return self._on_proposal(message)
        if not isinstance(message, Signed):
            return self._drop("bad_type")
        if self._late_vote(message.statement):
            return self._drop("late_vote")
        if not self.verifier.verify_deep(message):
            return self._drop("bad_signature")
        st = message.statement
        if isinstance(st, Request):
            return self._on_request(message)
        if getattr(st, "replica", self.n) >= self.n:
            return self._drop("unknown_replica")
        if st.replica == self.id:
            if isinstance(st, Commit) and (st.view < self.view or self.in_view_change):
                # our own vote relayed back inside a peer's commit certificate
                return self._on_certificate_commit(message)
            if isinstance(st, Checkpoint) and self.id not in self.checkpoints.get(st.seq, {}):
                # our own CHECKPOINT relayed back inside a peer's stable proof: signed before
                # a crash we restarted from an older WAL state, it still counts toward 2f+1
                return self._on_checkpoint(message)
            return self._drop("own_message")
        self._note_arrival(st.replica)
        handler = self._handlers.get(type(st))
        if handler is None:  # PrePrepare without batch, Reply
            return self._drop("unexpected_type")
        handler(message)

    def _primary_alive_until(self, now: float) -> float | None:
        """When outstanding work has waited one timer T (`_vc_timeout`) without an execution:
        None if the primary is to be suspected now, else the time to look again.

        Only ordering is a sign of life (a STATUS says nothing of progress: a faulty primary
        can send them forever). A primary that ordered nothing for a timer (no fresh
        PRE-PREPARE from it accepted here) is suspected at once: fail-over is fast. One that
        ordered since the work began waiting has done its part and the work waits in the
        prepare or commit phase (a slow network, or backups starved of CPU): it gets the slow
        timer, `min(max(view_change_s, 4 x T), view_change_timeout_max_s)` from when the work
        began waiting; one that ordered within the last timer (a pipeline, the work not yet
        reached) until a timer after that. The NEW-VIEW timer has no such extension (4.5)."""
        since = self._busy_since
        if since is None:
            return None
        # the primary itself counts as ordering: it has no better view of its own slowness
        ordered = now if self.is_primary else self._primary_ordered_at
        if ordered is None:
            return None
        fast = self._vc_timeout()
        if ordered >= since:
            cap = max(self.config.view_change_timeout_max_s, fast)
            deadline = since + min(max(self.config.view_change_timeout_s, 4 * fast), cap)
        else:
            deadline = ordered + fast
        return deadline if now < deadline else None  # a deadline returned is > now

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

    def _note_arrival(self, peer: int) -> None:
        self.timeout.record_arrival(peer, self._now)
        self.heard_from[peer] = self._now

    def _isolated(self, now: float) -> bool:
        """Fewer than quorum-1 peers heard from within the last few status intervals."""
        recent = now - 3 * self.config.status_interval_s - self._vc_timeout()
        heard = sum(1 for t in self.heard_from.values() if t >= recent)
        return heard < self.quorum - 1

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
                self._send_reply(req.client, req.timestamp, last[2], last[1])
                self.counters["reply_resent"] += 1
            return
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

    def _send_reply(self, client: int, timestamp: int, request: bytes, result: bytes) -> None:
        reply = Reply(self.view, timestamp, client, self.id, request, result)
        sealed = self.reply_auth.seal(reply) if self.reply_auth is not None else None
        self._out.append(ReplyEffect(client, sealed if sealed is not None else self._sign(reply)))

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
        reqs: list[Signed[Request]] = []
        size = 0
        while self.pending and len(reqs) < self.config.batch_max_requests:
            key, signed = self.pending.popitem(last=False)
            if key in self.assigned or self._stale(key):
                continue
            size += len(signed.body) + 80
            if reqs and size > self.limits.max_message_bytes // 2:
                self.pending[key] = signed
                self.pending.move_to_end(key, last=False)
                break
            reqs.append(signed)
            self.assigned[key] = self.next_seq
        if not reqs:
            return
        # not below the batch before it, as the backups check it (rule 6): that may be a
        # NEW-VIEW re-proposal not executed yet, stamped by an earlier primary's clock
        batch_time = propose_batch_time(self._wall, self._previous_batch_time(self.next_seq))
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
        self._out.append(Broadcast(proposal))
        self.counters["proposed"] += 1
        self._check_prepared(slot)

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
        for s in batch.requests:
            r = s.statement
            if not isinstance(r, Request):
                return "batch_not_request"
            key = (r.client, r.timestamp)
            if key in seen:
                return "batch_duplicate_request"
            seen.add(key)
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
                self._persist(REC_PROPOSAL, Proposal(pp_signed, batch))
        if not self.is_primary:
            if mine is not None:  # recovered: resend the vote we already signed
                self._out.append(Broadcast(mine))
            else:
                prepare = self._sign(Prepare(pp.view, pp.seq, pp.digest, self.id))
                slot.prepares[self.id] = prepare
                slot.sent_prepare = True
                self._persist(REC_SENT, prepare)
                self._out.append(Broadcast(prepare))
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
        slot.cert = PreparedCert(slot.pre_prepare, prepares)
        pp: PrePrepare = slot.pre_prepare.statement
        commit = self._sign(Commit(pp.view, pp.seq, pp.digest, self.id))
        slot.commits[self.id] = commit
        slot.sent_commit = True
        self._persist(REC_CERT, slot.cert)
        self._persist(REC_SENT, commit)
        self._out.append(Broadcast(commit))
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
        for index, s in enumerate(batch.requests):
            r: Request = s.statement
            key = (r.client, r.timestamp)
            self.pending.pop(key, None)
            self.assigned.pop(key, None)
            last = self.client_table.get(r.client)
            if last is not None and r.timestamp <= last[0]:
                results.append(last[1] if r.timestamp == last[0] else b"")
                continue  # exactly-once: never execute twice
            digest = request_digest(s)
            ctx = ExecContext(seq=seq, index=index,  # agreed time is monotonic (PROTOCOL.md)
                              batch_time_us=max(batch.batch_time, self.last_batch_time),
                              client=r.client, timestamp=r.timestamp,
                              max_clock_skew_us=max_clock_skew_us)
            result = self.app.execute(r.op, ctx)
            self.client_table[r.client] = (r.timestamp, result, digest)
            results.append(result)
            self._send_reply(r.client, r.timestamp, digest, result)
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
        self._out.append(Executed(seq, self.view, slot.decided or b"", batch, tuple(results),
                                  state_digest or b""))
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
                t, r, d = entry
                if not (type(c) is int and type(t) is int and 0 <= c < _U64_END
                        and 0 <= t < _U64_END and type(r) is bytes and type(d) is bytes):
                    break
                data = b"".join((b"\x84", uint(c), uint(t), head(len(r)), r, head(len(d)), d))
                written[c] = (entry, data)
                out.append(data)
            else:
                out.append(uint(last_bt))
                return b"".join(out)
        return cbor2.dumps([app_snapshot, [[c, t, r, d] for c, (t, r, d) in table], last_bt],
                           canonical=True)

    def _restore(self, snapshot: bytes) -> None:
        try:
            app_snap, table, last_bt = cbor2.loads(snapshot)
            client_table = {}
            for c, t, r, d in table:
                if (type(c) is not int or type(t) is not int or not isinstance(r, bytes)
                        or not isinstance(d, bytes) or len(d) != DIGEST_SIZE):
                    raise ValueError("bad client table")
                client_table[c] = (t, r, d)
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

    # ------------------------------------------------------------------ evidence

    def _evidence(self, culprit: int, kind: str, first: Signed[Statement],
                  second: Signed[Statement], key: tuple[Any, ...]) -> None:
        if key in self.evidence_seen:
            return
        self.evidence_seen.add(key)
        self._out.append(Evidence(culprit, kind, first, second))
        self._event("evidence", culprit=culprit, kind=kind)
        view = getattr(second.statement, "view", None)
        if culprit == self.primary() and view == self.view and not self.in_view_change:
            self._start_view_change(self.view + 1, "evidence")

    # ------------------------------------------------------------------ view change (4.4)

    def _start_view_change(self, new_view: int, cause: str) -> None:
        if new_view <= self.view and self.in_view_change:
            return
        if not self.in_view_change:
            self.vc_started_at = self._now
        self.view = new_view
        self.in_view_change = True
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
            self.new_view_deadline = self._now + self._vc_timeout()

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
        if self._has_outstanding_work():
            self._arm_progress()
        self._execute_ready()

    def _enter_view_steps(self, nv_signed: Signed[NewView], plan: NewViewPlan) -> None:
        nv: NewView = nv_signed.statement
        started = self.vc_started_at
        self.view = nv.view
        self.in_view_change = False
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

    # ------------------------------------------------------------------ observability

    def statistics(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "view": self.view,
            "primary": self.primary(),
            "in_view_change": self.in_view_change,
            "last_executed": self.last_executed,
            "stable_seq": self.log.low,
            "low_watermark": self.log.low,
            "high_watermark": self.log.high,
            "pending_requests": len(self.pending),
            "log_slots": len(self.log),
            "state_transfer": self.transfer.seq if self.transfer else None,
            "view_change_timeout_s": self._vc_timeout(),
            "exec_wait_mean_s": self.exec_pace.mean_s() if self.exec_pace.samples else None,
            "drops": dict(self.drops),
            "counters": dict(self.counters),
        }

