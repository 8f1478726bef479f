"""The PBFT replica as a pure, deterministic state machine (sans-I/O).

Inputs: `receive(message, now, wall)` for every message from the network
(replica messages and client requests alike), `tick(now, wall)` when a timer
is due, `start(now, wall)` once after construction or recovery. `now` is
monotonic seconds; `wall` is the interval clock reading used for agreed time.
Outputs: a list of effects (bft/effects.py) to carry out in order. Nothing
here touches sockets, threads, clocks or global randomness.

Rules cited as in PROTOCOL.md; sections are those of Castro & Liskov,
OSDI'99 (section 4.x) and TOCS'02 (state transfer, 5.3).

Split as etcd-io/raft is: `Replica` here holds the entry points, the timers and the
dispatch of messages to the phases, each a mixin over one state object
(`bft.state.ReplicaState`): bft/normal.py (requests, normal case, execution),
bft/checkpoints.py (checkpoints, state transfer), bft/viewchange.py (view changes),
bft/lossrecovery.py (STATUS) and bft/recovery.py (recovery from the WAL). Vote counting
is in bft/quorum.py, the WAL record format in bft/walrecords.py. A subclass may override
any phase's method by name (tests/adversarial/planted_replicas.py does).
"""

from __future__ import annotations

from typing import Any, Callable, Iterable

from bft.checkpoints import Checkpoints
from bft.clock import Interval
from bft.codec import fast_constructor
from bft.config import ClusterConfig
from bft.effects import Broadcast, Effect, SetTimer
from bft.errors import MalformedMessage
from bft.lossrecovery import LossRecovery
from bft.messages import (
    Checkpoint,
    Commit,
    Fetch,
    FetchState,
    NewView,
    Prepare,
    PrePrepare,
    Proposal,
    Request,
    Signed,
    StateChunk,
    Status,
    ViewChange,
)
from bft.normal import NormalCase
from bft.recovery import WalRecovery
from bft.state import (
    MAX_PENDING_REQUESTS,
    MAX_RESEND_PER_STATUS,
    MAX_STATUS_SEQS,
    NULL_DIGEST,
    STATE_CHUNK_BYTES,
)
from bft.viewchange import ViewChanges
from bft.walrecords import REC_CERT, REC_NEW_VIEW, REC_PROPOSAL, REC_SENT

# names other modules import from here
__all__ = ["MAX_PENDING_REQUESTS", "MAX_RESEND_PER_STATUS", "MAX_STATUS_SEQS", "NULL_DIGEST",
           "REC_CERT", "REC_NEW_VIEW", "REC_PROPOSAL", "REC_SENT", "STATE_CHUNK_BYTES",
           "Replica"]


_new_set_timer: Callable[[float], SetTimer] = fast_constructor(SetTimer)  # SetTimer(at), faster


class Replica(NormalCase, Checkpoints, ViewChanges, LossRecovery, WalRecovery):
    """One PBFT replica. See the module docstring."""

    def __init__(self, config: ClusterConfig, replica_id: int, *, signer: Any, verifier: Any,
                 app: Any, recovered: tuple[tuple[int, bytes] | None, Iterable[bytes]] | None = None,
                 digest_every_batch: bool = False, reply_auth: Any = None,
                 votes_lost: bool = False) -> None:
        # reply_auth: a bft.auth.ReplyAuth of this replica: replies go out as MacReply (PBFT's
        # MACs for clients); None, or a client without a key, gets a signed reply instead.
        # votes_lost: the stable storage lost records this replica may have signed (a damaged
        # WAL or snapshot, bft.storage.votes_may_be_lost): see `vote_floor`.
        # recovered: (snapshot, records) of its stable storage after a crash (bft/recovery.py).
        super().__init__(config, replica_id, signer=signer, verifier=verifier, app=app,
                         digest_every_batch=digest_every_batch, reply_auth=reply_auth,
                         votes_lost=votes_lost)
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
        self._recovering = recovered is not None
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
        if not self.in_view_change:
            self.perf.enter_view(now)
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
        self._judge_throughput(now)
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
        assigned = len(self.assigned)
        pending = len(self.pending)
        self.perf.advance(self._now, pending + assigned if self.is_primary
                          else max(pending, assigned), self.log.top - self.last_executed)
        out = self._out
        nxt = self._next_deadline()
        if nxt is not None and nxt != self.last_timer:
            self.last_timer = nxt
            out.append(_new_set_timer(nxt))
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

    # ------------------------------------------------------------------ dispatch

    def _dispatch(self, message: Any) -> None:
        if type(message) is Signed:
            kind = type(message.statement)
            if kind is Prepare or kind is Commit:
                # the most common messages: the same checks as below, in the same order,
                # with fewer calls (bft/normal.py)
                return self._on_vote_message(message, kind)
        if isinstance(message, Proposal):
            pp = message.pre_prepare.statement
            if not isinstance(pp, PrePrepare):
                return self._drop("bad_type")
            # cheapest checks first (issue 21): only the primary of a view pre-prepares in it,
            # and the pre-prepare's one signature is checked before its batch's many (the
            # verifier remembers it: the deep check below finds it in its cache)
            if pp.replica != self.primary(pp.view):
                return self._drop("pre_prepare_not_from_primary")
            verifier = self.verifier
            if not verifier.verify_deep(message.pre_prepare) or not verifier.verify_deep(message):
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

    def _judge_throughput(self, now: float) -> None:
        """Aardvark's adaptive view change (NSDI'09 4.3; the rule is bft/throughput.py's):
        a backup whose windows show the current view's throughput twice in a row below the
        required fraction of what recent views achieved, while work is outstanding, starts
        a view change, as it would on a timeout (PROTOCOL.md 4.4)."""
        verdict = self.perf.poll(now)
        if verdict is None or not verdict.act or self.is_primary:
            return
        self._event("slow_primary", view=self.view, primary=self.primary(),
                    throughput=round(verdict.throughput, 3),
                    required=round(verdict.required, 3), fraction=round(verdict.fraction, 3),
                    mean_wait_s=round(verdict.mean_wait_s, 6))
        if (self.in_view_change or self.transfer is not None
                or not self._has_outstanding_work()):
            return
        if self._isolated(now):
            self.counters["view_change_deferred_isolated"] += 1
            return
        self.counters["slow_primary_view_changes"] += 1
        self._start_view_change(self.view + 1, "slow_primary")

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

    def _note_arrival(self, peer: int) -> None:
        self.timeout.record_arrival(peer, self._now)
        self.heard_from[peer] = self._now

    def _isolated(self, now: float) -> bool:
        """Fewer than quorum-1 peers heard from within the last few status intervals."""
        recent = now - 3 * self.config.status_interval_s - self._vc_timeout()
        heard = sum(1 for t in self.heard_from.values() if t >= recent)
        return heard < self.quorum - 1

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
            "throughput": self.perf.statistics(),
            "drops": dict(self.drops),
            "counters": dict(self.counters),
        }


