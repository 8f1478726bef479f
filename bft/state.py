"""The replica's state, and the plumbing every phase of the protocol uses.

`ReplicaState` is the one state object of a replica: what it knows of the view, the log
(bft/log.py), checkpoints, view changes, state transfer, timers and counters, and the
effects it is collecting. The phases work on it, each a mixin in its own module:

* bft/normal.py: requests (OSDI'99 4.1), the normal case (4.2) and execution;
* bft/checkpoints.py: checkpoints and garbage collection (4.3), state transfer (TOCS 5.3);
* bft/viewchange.py: view changes (4.4, 4.5) and the new-view computation;
* bft/lossrecovery.py: loss recovery (STATUS messages and what they make us resend);
* bft/recovery.py: recovery from the write-ahead log after a crash.

bft/replica.py puts them together as `Replica` with its entry points (`start`, `receive`,
`tick`) and the dispatch of messages. Pure: nothing here touches sockets, threads, clocks
or global randomness.
"""

from __future__ import annotations

import collections
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Callable, TypeVar

from bft.clock import Interval
from bft.config import ClusterConfig
from bft.codec import fast_constructor
from bft.crypto import batch_digest
from bft.detector import AdaptiveTimeout, PhiAccrualDetector, RttEstimator
from bft.effects import Effect, Event, Evidence, Persist
from bft.log import MessageLog, Slot
from bft.messages import (
    NULL_BATCH,
    Batch,
    Checkpoint,
    NewView,
    PrePrepare,
    Proposal,
    Request,
    Signed,
    Statement,
    ViewChange,
)
from bft.quorum import Geometry
from bft.throughput import ThroughputMonitor
from bft.walrecords import Record, encode_record

NULL_DIGEST = batch_digest(NULL_BATCH)

#: Persist(record), made without the frozen dataclass's __setattr__ (codec.fast_constructor)
_new_persist: Callable[[bytes], Persist] = fast_constructor(Persist)

S = TypeVar("S", bound=Statement)

_U64_END = 2**64  # CBOR's unsigned integers (cbor2 writes larger ones as tagged bignums)

STATE_CHUNK_BYTES = 48 * 1024
MAX_STATUS_SEQS = 64
MAX_PENDING_REQUESTS = 50_000
MAX_RESEND_PER_STATUS = 32
EXEC_PACE_WINDOW = 200  # waits for an execution remembered (see ReplicaState.exec_pace)
EXEC_PACE_MIN_SAMPLES = 8
DIGEST_MEMO_SIZE = 1024  # batches whose digest is remembered (see ReplicaState._digest)
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



class ReplicaState:
    """A replica's state and the helpers every phase uses (see the module docstring)."""

    def __init__(self, config: ClusterConfig, replica_id: int, *, signer: Any, verifier: Any,
                 app: Any, digest_every_batch: bool = False, reply_auth: Any = None,
                 votes_lost: bool = False) -> None:
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
        # exactly-once: client -> (timestamp, result, request digest, agreed_us) of its last
        # executed request; the cached reply (with the agreed time it executed at) is resent
        # only to that very request (same digest)
        self.client_table: dict[int, tuple[int, bytes, bytes, int]] = {}
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
        self._vc_sent_at: float | None = None  # when we sent our latest VIEW-CHANGE
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
        # Aardvark's adaptive view change (bft/throughput.py): the throughput of the current
        # view against what recent views achieved; a slow primary is replaced (tick)
        self.perf = ThroughputMonitor(
            window_s=config.throughput_window_s, min_fraction=config.min_throughput_fraction,
            max_fraction=config.max_throughput_fraction, raise_per_window=config.throughput_raise,
            grace_s=config.throughput_grace_s, history_views=config.f,
            batch_delay_s=config.batch_delay_s, max_in_flight=config.max_in_flight)
        # How long a request waits at a backup until the primary orders it (its PRE-PREPARE
        # arrives), smoothed: _resend_pending forwards only requests that waited unusually long.
        self.order_delay = RttEstimator()
        # when a fresh PRE-PREPARE of the current primary was last accepted: the only sign
        # of life that extends the progress timer (see _primary_alive_until)
        self._primary_ordered_at: float | None = None
        self._entering_view = False  # see _enter_view
        # seq -> (a proposal of the view we are changing to, the clock reading it came at):
        # judged once its NEW-VIEW comes (NormalCase._hold_for_view)
        self._held_proposals: dict[int, tuple[Proposal, Interval]] = {}
        self.new_view_deadline: float | None = None
        self.batch_deadline: float | None = None
        self.status_deadline: float = 0.0
        self.transfer: _Transfer | None = None
        self.transfer_target: tuple[int, bytes, tuple[Signed[Checkpoint], ...]] | None = None
        self.last_timer: float | None = None
        self.evidence_seen: set[tuple[Any, ...]] = set()
        self.diverged: set[int] = set()  # checkpoint seqs where our digest differed from the proof
        self.heard_from: dict[int, float] = {}  # peer -> last time a valid message came
        self.drops: collections.Counter[str] = collections.Counter()
        self.counters: collections.Counter[str] = collections.Counter()
        self._out: list[Effect] = []
        self._digest_memo: dict[int, tuple[Batch, bytes]] = {}
        # client -> (its client_table entry, that entry as written in _snapshot)
        self._table_entries: dict[int, tuple[tuple[int, bytes, bytes, int], bytes]] = {}
        self._pending_since: dict[tuple[int, int], float] = {}  # request -> first seen
        self._forwarded: set[tuple[int, int]] = set()  # requests forwarded to the primary
        # peer -> (last_executed, stable_seq) of its previous STATUS and how many STATUSes in
        # a row showed it stuck behind us: loss recovery resends to a peer only once it made
        # no progress over a whole status interval (stuck); batches, at first, from only two
        # replicas (see _on_status)
        self._peer_progress: dict[int, tuple[int, int, int]] = {}
        # Rate limits on what a peer's message makes us send (issue 21, amplification): peer ->
        # (when, what) of its last STATUS answered (config.status_answer_interval_s) and of
        # its last FETCH-STATE answered with our snapshot (config.state_answer_interval_s)
        self._status_answered: dict[int, tuple[float, Any]] = {}
        self._state_answered: dict[int, tuple[float, Any]] = {}
        self._now = 0.0
        self._wall = Interval(0, 0)
        # After lost votes (PROTOCOL.md "Crash recovery": never sign what conflicts with an
        # earlier signature): no PRE-PREPARE, PREPARE, COMMIT or NEW-VIEW for a seq at or
        # below `vote_floor`, which lies above every seq it may have voted on (its stable
        # checkpoint at the crash + L); None while unknown (nothing at all is signed then).
        # Over once its own stable checkpoint reaches the floor.
        self.votes_lost = votes_lost
        self.vote_floor: int | None = None

    if TYPE_CHECKING:
        # One phase calls another: the type checker learns of those methods here; at run
        # time each is found on its own mixin (bft/replica.py's `Replica` has them all).
        # bft/normal.py
        def _accept_pre_prepare(self, slot: Slot, pp_signed: Signed[PrePrepare],
                                batch: Batch | None, fresh: bool) -> None: ...
        def _accept_held_proposals(self) -> None: ...
        def _arm_progress(self) -> None: ...
        def _execute_ready(self) -> None: ...
        def _has_outstanding_work(self) -> bool: ...
        def _live_pending(self) -> bool: ...
        def _restore(self, snapshot: bytes) -> None: ...
        def _stale(self, key: tuple[int, int]) -> bool: ...
        def _try_propose(self, force: bool = False) -> None: ...
        # bft/checkpoints.py
        def _add_checkpoint(self, signed: Signed[Checkpoint]) -> None: ...
        def _can_catch_up(self, seq: int) -> bool: ...
        def _make_stable(self, seq: int, digest: bytes, proof: tuple[Signed[Checkpoint], ...],
                         snapshot: bytes) -> None: ...
        def _start_transfer(self) -> None: ...
        # bft/viewchange.py
        def _start_view_change(self, new_view: int, cause: str) -> None: ...
        # bft/replica.py
        def _note_arrival(self, peer: int) -> None: ...

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
        self._out.append(_new_persist(encode_record(kind, message)))

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

