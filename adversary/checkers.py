"""Safety and liveness checkers, fed step by step with what replicas and clients do.

The simulator (or a test with a synthetic execution) calls the `on_*` hooks
as things happen and `check(now)` after every step, then `finish(now)` once.
Each checker keeps `violations` (readable strings, capped) and `data()` (plain
counters for the run's report). They judge only the replicas in `correct`
(neither Byzantine nor crashed for good): whatever any other node reports is
ignored.

The hooks (all checkers accept all of them; each uses what it needs):

* `on_executed(node, executed, now)`: an `Executed` effect of replica `node`.
* `on_state_transfer(node, seq, now)`: `node` installed the stable checkpoint
  `seq` (the replica's `Event("state_transfer", {"seq": ...})`); its next
  execution is `seq + 1`.
* `on_restart(node, seq, now)`: `node` restarted from stable storage with its
  state at `seq` (what it executed above `seq` before the crash is forgotten:
  it will execute those seqs again).
* `on_evidence(node, evidence, now)`: an `Evidence` effect of `node`.
* `on_invoke(client, timestamp, op, now)`: a client issued request `timestamp`.
* `on_complete(client, timestamp, result, now)`: the client accepted `result`.

The checkers:

* `AgreementChecker`: no two correct replicas execute different batch digests
  at one seq, and every executed batch matches its digest.
* `ValidityChecker`: every executed request is validly signed by its client,
  and that client issued exactly that op under that request number.
* `ExactlyOnceChecker`: no (client, timestamp) is executed twice at one
  replica, and no older request of a client is executed after a newer one.
* `TotalOrderChecker`: each replica executes seqs 1, 2, 3, ... with no gap or
  repetition, except for an announced state-transfer jump (forward only) or a
  restart.
* `StateDigestChecker`: correct replicas report equal state digests at equal
  seqs (an empty digest means "not computed" and is skipped).
* `LinearizabilityChecker`: the agreed order, executed by a sequential model
  of the application, gives the result every client accepted; a correct
  replica's results agree with the model; and real-time order holds (an op
  that completed before another was invoked comes first in the agreed order).
* `EvidenceChecker`: no correct replica is caught signing conflicting messages.
* `ConductChecker`: what each correct replica signs keeps the rules (no two conflicting
  statements; votes only in their own view, outside a view change), seen as it is sent.
* `LivenessChecker`: every issued request completes within `bound_s` after
  the later of its invocation and `faults_end_s`.

`CheckerSuite` bundles them and splits the verdict into `safety_ok` and
`liveness_ok`.
"""

from __future__ import annotations

import heapq
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any

from bft.crypto import batch_digest
from bft.messages import Checkpoint, Commit, NewView, Prepare, Request, Signed

#: Violations kept per checker; later ones are only counted.
MAX_VIOLATIONS = 50


def _hex(data: bytes, n: int = 8) -> str:
    return data[:n].hex()


class Checker:
    """Base class: no-op hooks, a capped violation list and `data()`."""

    name = "checker"

    def __init__(self, correct: Iterable[int]) -> None:
        self.correct = frozenset(correct)
        self.violations: list[str] = []
        self.violation_count = 0

    # -- hooks ---------------------------------------------------------

    def on_executed(self, node: int, executed: Any, now: float) -> None:
        """Replica `node` produced the `Executed` effect `executed`."""

    def on_state_transfer(self, node: int, seq: int, now: float) -> None:
        """Replica `node` installed checkpoint `seq` by state transfer."""

    def on_restart(self, node: int, seq: int, now: float) -> None:
        """Replica `node` restarted from stable storage at `seq`."""

    def on_evidence(self, node: int, evidence: Any, now: float) -> None:
        """Replica `node` produced the `Evidence` effect `evidence`."""

    def on_invoke(self, client: int, timestamp: int, op: bytes, now: float) -> None:
        """Client `client` issued request `timestamp` with `op`."""

    def on_complete(self, client: int, timestamp: int, result: bytes, now: float) -> None:
        """Client `client` accepted `result` for request `timestamp`."""

    def check(self, now: float) -> None:
        """Called after every step: report what can be decided now."""

    def finish(self, now: float) -> None:
        """Called once at the end of the run."""

    # -- results -------------------------------------------------------

    @property
    def ok(self) -> bool:
        """True while no violation was found."""
        return self.violation_count == 0

    def violation(self, text: str) -> None:
        """Record a violation (only the first MAX_VIOLATIONS texts are kept)."""
        self.violation_count += 1
        if len(self.violations) < MAX_VIOLATIONS:
            self.violations.append(f"{self.name}: {text}")

    def data(self) -> dict[str, Any]:
        """Plain-data summary: ok, violation count, and checker-specific counters."""
        return {"ok": self.ok, "violations": self.violation_count}

    def _judged(self, node: int) -> bool:
        return node in self.correct


def _where(node: int, executed: Any, index: int) -> str:
    return f"replica {node} seq {executed.seq} index {index}"


def _request_of(signed: Any) -> Request | None:
    statement = getattr(signed, "statement", None)
    return statement if isinstance(statement, Request) else None


# --------------------------------------------------------------------------
# Agreement
# --------------------------------------------------------------------------


class AgreementChecker(Checker):
    """No two correct replicas execute different batches at one seq (PBFT safety)."""

    name = "agreement"

    def __init__(self, correct: Iterable[int]) -> None:
        super().__init__(correct)
        self.decided: dict[int, tuple[bytes, int]] = {}  # seq -> (digest, first node)

    def on_executed(self, node: int, executed: Any, now: float) -> None:
        if not self._judged(node):
            return
        seq, digest = executed.seq, executed.digest
        if batch_digest(executed.batch) != digest:
            self.violation(f"replica {node} executed at seq {seq} a batch that does not "
                           f"match its digest {_hex(digest)}")
        first = self.decided.get(seq)
        if first is None:
            self.decided[seq] = (digest, node)
        elif first[0] != digest:
            self.violation(f"seq {seq}: replica {first[1]} executed digest {_hex(first[0])}, "
                           f"replica {node} executed {_hex(digest)}")

    @property
    def committed_seq(self) -> int:
        """Highest seq executed by any correct replica."""
        return max(self.decided, default=0)

    def data(self) -> dict[str, Any]:
        return {**super().data(), "committed_seq": self.committed_seq}


# --------------------------------------------------------------------------
# Validity
# --------------------------------------------------------------------------


class ValidityChecker(Checker):
    """Every executed request was signed by its client, which issued exactly it.

    `verifier` checks the signatures (`verify(signed) -> bool`); the clients'
    issued requests come from `on_invoke`.
    """

    name = "validity"

    def __init__(self, correct: Iterable[int], verifier: Any) -> None:
        super().__init__(correct)
        self.verifier = verifier
        self.issued: dict[tuple[int, int], bytes] = {}
        self.checked = 0
        self._seen: set[tuple[bytes, bytes]] = set()  # (body, signature) already judged valid

    def on_invoke(self, client: int, timestamp: int, op: bytes, now: float) -> None:
        self.issued[(client, timestamp)] = op

    def on_executed(self, node: int, executed: Any, now: float) -> None:
        if not self._judged(node):
            return
        issued, seen = self.issued, self._seen
        for index, signed in enumerate(executed.batch.requests):
            self.checked += 1
            request = _request_of(signed)
            if not isinstance(signed, Signed) or request is None:
                self.violation(f"{_where(node, executed, index)}: not a signed request: "
                               f"{signed!r}")
                continue
            key = (signed.body, signed.signature)
            if key not in seen:
                if not self.verifier.verify(signed):
                    self.violation(f"{_where(node, executed, index)}: request "
                                   f"{request.client}/{request.timestamp} "
                                   "is not validly signed by its client")
                    continue
                seen.add(key)
            op = issued.get((request.client, request.timestamp))
            if op is None:
                self.violation(f"{_where(node, executed, index)}: client {request.client} "
                               f"never issued request {request.timestamp}")
            elif op != request.op:
                self.violation(f"{_where(node, executed, index)}: client {request.client} "
                               f"request {request.timestamp} "
                               "executed with an op the client did not issue")

    def data(self) -> dict[str, Any]:
        return {**super().data(), "requests_checked": self.checked}


# --------------------------------------------------------------------------
# Exactly once
# --------------------------------------------------------------------------


@dataclass(slots=True)
class _Execution:
    seq: int
    result: bytes


class ExactlyOnceChecker(Checker):
    """No (client, timestamp) executed twice at one replica (OSDI'99 section 4.1).

    A request that reappears in a later batch (PBFT may order it twice after a
    view change) must be skipped by the replica, which then reports for it the
    cached result of its first execution (same timestamp as the client's last)
    or an empty result (the client has since had a newer request executed).
    Any other result counts as a second execution. Likewise an older request
    of a client reported with a non-empty result after a newer one executed
    is a violation. A restart forgets what the replica executed above its
    recovered seq (it executes those again).
    """

    name = "exactly_once"

    def __init__(self, correct: Iterable[int]) -> None:
        super().__init__(correct)
        self.executed: dict[int, dict[tuple[int, int], _Execution]] = {}
        self.latest: dict[int, dict[int, int]] = {}  # node -> client -> highest timestamp
        self.duplicates_skipped = 0

    def on_restart(self, node: int, seq: int, now: float) -> None:
        done = self.executed.get(node, {})
        for key in [k for k, e in done.items() if e.seq > seq]:
            del done[key]
        latest: dict[int, int] = {}
        for (client, timestamp) in done:
            latest[client] = max(latest.get(client, 0), timestamp)
        self.latest[node] = latest

    def on_executed(self, node: int, executed: Any, now: float) -> None:
        if not self._judged(node):
            return
        done = self.executed.setdefault(node, {})
        latest = self.latest.setdefault(node, {})
        results = executed.results
        for index, signed in enumerate(executed.batch.requests):
            request = _request_of(signed)
            if request is None:
                continue  # the validity checker reports it
            key = (request.client, request.timestamp)
            result = results[index] if index < len(results) else None
            newest = latest.get(request.client, 0)
            first = done.get(key)
            if first is not None:
                skipped = result == first.result or (result == b"" and newest > request.timestamp)
                if skipped:
                    self.duplicates_skipped += 1
                else:
                    self.violation(f"{self._where(node, request, executed)} executed again "
                                   f"(first at seq {first.seq})")
                continue
            if request.timestamp < newest:
                if result == b"":
                    self.duplicates_skipped += 1
                else:
                    self.violation(f"{self._where(node, request, executed)} executed after "
                                   f"the newer request {newest}")
                continue
            done[key] = _Execution(executed.seq, result if result is not None else b"")
            latest[request.client] = request.timestamp

    @staticmethod
    def _where(node: int, request: Request, executed: Any) -> str:
        return (f"replica {node}: client {request.client} request {request.timestamp} "
                f"at seq {executed.seq}")

    def data(self) -> dict[str, Any]:
        return {**super().data(), "duplicates_skipped": self.duplicates_skipped}


# --------------------------------------------------------------------------
# Total order
# --------------------------------------------------------------------------


class TotalOrderChecker(Checker):
    """Each correct replica executes seq 1, 2, 3, ... in order, without gaps or repeats.

    A state transfer (announced with `on_state_transfer`) may jump forward to
    a checkpoint; a restart resets the expected next seq to the recovered one.
    """

    name = "total_order"

    def __init__(self, correct: Iterable[int]) -> None:
        super().__init__(correct)
        self.last: dict[int, int] = {}
        self.jumps = 0

    def on_state_transfer(self, node: int, seq: int, now: float) -> None:
        if not self._judged(node):
            return
        last = self.last.get(node, 0)
        if seq < last:
            self.violation(f"replica {node} state-transferred back to seq {seq} "
                           f"after executing {last}")
        self.last[node] = max(seq, last)
        self.jumps += 1

    def on_restart(self, node: int, seq: int, now: float) -> None:
        self.last[node] = seq

    def on_executed(self, node: int, executed: Any, now: float) -> None:
        if not self._judged(node):
            return
        last = self.last.get(node, 0)
        if executed.seq != last + 1:
            kind = "gap" if executed.seq > last + 1 else "repeat"
            self.violation(f"replica {node} executed seq {executed.seq} after {last} ({kind})")
        self.last[node] = max(last, executed.seq)

    def data(self) -> dict[str, Any]:
        return {**super().data(), "state_transfers": self.jumps,
                "last_executed": {str(k): v for k, v in sorted(self.last.items())}}


# --------------------------------------------------------------------------
# State digests
# --------------------------------------------------------------------------


class StateDigestChecker(Checker):
    """Correct replicas that executed up to one seq have the same state digest there."""

    name = "state_digest"

    def __init__(self, correct: Iterable[int]) -> None:
        super().__init__(correct)
        self.digests: dict[int, tuple[bytes, int]] = {}
        self.compared = 0

    def on_executed(self, node: int, executed: Any, now: float) -> None:
        if not self._judged(node) or not executed.state_digest:
            return
        seq, digest = executed.seq, executed.state_digest
        first = self.digests.get(seq)
        if first is None:
            self.digests[seq] = (digest, node)
            return
        self.compared += 1
        if first[0] != digest:
            self.violation(f"seq {seq}: replica {first[1]} has state {_hex(first[0])}, "
                           f"replica {node} has {_hex(digest)}")

    def data(self) -> dict[str, Any]:
        return {**super().data(), "digests_compared": self.compared,
                "seqs_with_digest": len(self.digests)}


# --------------------------------------------------------------------------
# Linearizability of the client-visible history
# --------------------------------------------------------------------------


@dataclass(slots=True)
class _Op:
    client: int
    timestamp: int
    op: bytes
    invoked_at: float
    completed_before: int  # how many ops had completed when this one was invoked
    completed_at: float | None = None
    result: bytes | None = None
    position: tuple[int, int] | None = None  # (seq, index) of its execution in the agreed order
    expected: bytes | None = None  # the model's result at that position
    checked: bool = False


def _default_model() -> tuple[Any, Callable[..., Any]]:
    from bft.app import ExecContext, KVStore

    return KVStore(), ExecContext


class LinearizabilityChecker(Checker):
    """The KV history clients observed is linearizable in the agreed order.

    The agreed order is the log of executed batches (seq by seq, requests in
    batch order); a sequential model of the application (default: a fresh
    `bft.app.KVStore`, fed `ExecContext(seq, index, batch_time, client,
    timestamp, max_clock_skew_us)` as the replicas feed it: batch_time is the
    agreed time, max(the batch's time, the previous batch's), and the skew is
    the cluster's) executes it with the replicas' exactly-once rule (a request
    whose timestamp is not above its client's last executed one is skipped) and,
    given `client_timestamp_window_us`, their bound on request numbers (one above
    the agreed time plus the window is skipped: bft/normal.py, issue 21 item 5).
    Then:
    * every completed op's accepted result equals the model's result at the
      op's position (a stale read, a lost write or a forged result fails);
    * every correct replica's reported result at an executed position equals
      the model's (a replica whose state diverged fails);
    * real-time order: if op A completed before op B was invoked, A's
      position precedes B's;
    * every completed op is in the agreed order by the end of the run.
    The model advances as soon as the next seq has been executed by some
    correct replica; results are compared as soon as both sides are known.
    """

    name = "linearizability"

    def __init__(self, correct: Iterable[int], model: Callable[[], tuple[Any, Callable[..., Any]]]
                 = _default_model, *, max_clock_skew_us: int = 0,
                 client_timestamp_window_us: int | None = None) -> None:
        super().__init__(correct)
        self._app, self._context = model()
        self.max_clock_skew_us = max_clock_skew_us
        self.client_timestamp_window_us = client_timestamp_window_us
        self._time_us = 0  # agreed time of the last batch the model executed
        self.batches: dict[int, Any] = {}  # seq -> batch (first correct execution)
        self.model_seq = 0
        self.model_results: dict[tuple[int, int], bytes] = {}  # (seq, index) -> result
        self._client_last: dict[int, tuple[int, bytes]] = {}
        self.ops: dict[tuple[int, int], _Op] = {}
        self._completion_order: list[tuple[int, int]] = []
        self._reported: list[tuple[int, Any]] = []  # (node, executed) waiting for the model
        self.results_checked = 0
        self.replica_results_checked = 0
        self._prefix_max: list[tuple[int, int]] = []  # max position of the first k completions
        self._known_upto = 0  # completions whose positions are all known, in completion order
        self._rt_pending: list[_Op] = []  # ops with a position, real-time order not yet checked
        self._fed = False  # something came in since the last _advance

    # -- feeding ---------------------------------------------------------

    def on_invoke(self, client: int, timestamp: int, op: bytes, now: float) -> None:
        self.ops[(client, timestamp)] = _Op(client, timestamp, op, now,
                                            len(self._completion_order))

    def on_complete(self, client: int, timestamp: int, result: bytes, now: float) -> None:
        entry = self.ops.get((client, timestamp))
        if entry is None:
            self.violation(f"client {client} completed request {timestamp} it never invoked")
            return
        if entry.completed_at is not None:
            self.violation(f"client {client} completed request {timestamp} twice")
            return
        entry.completed_at, entry.result = now, result
        self._completion_order.append((client, timestamp))
        self._fed = True
        self._compare(entry)

    def on_executed(self, node: int, executed: Any, now: float) -> None:
        if not self._judged(node):
            return
        self.batches.setdefault(executed.seq, executed.batch)
        self._reported.append((node, executed))
        self._advance()

    def check(self, now: float) -> None:
        # _advance depends only on what on_executed and on_complete feed in (and on what it
        # did itself): with nothing new since the last one, it would do nothing
        if self._fed:
            self._advance()

    def finish(self, now: float) -> None:
        self._advance()
        for entry in self.ops.values():
            if entry.completed_at is not None and entry.position is None:
                self.violation(f"client {entry.client} request {entry.timestamp} completed "
                               "but was never executed by a correct replica")
        self._check_real_time(final=True)

    # -- the model -------------------------------------------------------

    def _advance(self) -> None:
        self._fed = False
        progressed = False
        while self.model_seq + 1 in self.batches:
            seq = self.model_seq + 1
            batch = self.batches[seq]
            if batch.requests:  # agreed time is monotonic (PROTOCOL.md, Execution)
                self._time_us = max(self._time_us, batch.batch_time)
            window = self.client_timestamp_window_us
            time_bound = None if window is None else self._time_us + window
            for index, signed in enumerate(batch.requests):
                request = _request_of(signed)
                if request is None:
                    continue
                last = self._client_last.get(request.client)
                if last is not None and request.timestamp <= last[0]:
                    continue  # skipped by the exactly-once rule
                if time_bound is not None and request.timestamp > time_bound:
                    continue  # numbered too far ahead: never executed
                ctx = self._context(seq=seq, index=index, batch_time_us=self._time_us,
                                    client=request.client, timestamp=request.timestamp,
                                    max_clock_skew_us=self.max_clock_skew_us)
                result = self._app.execute(request.op, ctx)
                self._client_last[request.client] = (request.timestamp, result)
                self.model_results[(seq, index)] = result
                entry = self.ops.get((request.client, request.timestamp))
                if entry is not None and entry.position is None:
                    entry.position, entry.expected = (seq, index), result
                    self._rt_pending.append(entry)
                    self._compare(entry)
            self.model_seq = seq
            progressed = True
        if progressed or self._reported:
            self._compare_replicas()
        if self._rt_pending:
            self._check_real_time(final=False)

    def _compare(self, entry: _Op) -> None:
        if entry.checked or entry.result is None or entry.expected is None:
            return
        entry.checked = True
        self.results_checked += 1
        if entry.result != entry.expected:
            self.violation(f"client {entry.client} request {entry.timestamp} accepted result "
                           f"{entry.result!r} but the agreed order at seq {entry.position[0]} "  # type: ignore[index]
                           f"gives {entry.expected!r}")

    def _compare_replicas(self) -> None:
        waiting = []
        for node, executed in self._reported:
            if executed.seq > self.model_seq:
                waiting.append((node, executed))
                continue
            if self.batches.get(executed.seq) != executed.batch:
                continue  # a different batch: the agreement checker reports it
            for index, result in enumerate(executed.results):
                expected = self.model_results.get((executed.seq, index))
                if expected is None:
                    continue  # skipped request: the exactly-once checker judges it
                self.replica_results_checked += 1
                if result != expected:
                    self.violation(f"replica {node} seq {executed.seq} index {index}: result "
                                   f"{result!r} differs from the sequential model's {expected!r}")
        self._reported = waiting

    def _check_real_time(self, final: bool) -> None:
        """If A completed before B was invoked, A's position must precede B's.

        B is checked once its position and those of every op completed before
        its invocation are known (at `final`, with whatever is known).
        """
        order = self._completion_order
        while self._known_upto < len(order):
            position = self.ops[order[self._known_upto]].position
            if position is None:
                break
            best = self._prefix_max[-1] if self._prefix_max else (0, -1)
            self._prefix_max.append(max(best, position))
            self._known_upto += 1
        still = []
        for entry in self._rt_pending:
            if entry.completed_before > self._known_upto and not final:
                still.append(entry)
                continue
            known = min(entry.completed_before, self._known_upto)
            if known == 0:
                continue
            before = self._prefix_max[known - 1]
            assert entry.position is not None
            if before >= entry.position:
                self.violation(f"client {entry.client} request {entry.timestamp} at "
                               f"{entry.position} was ordered before an op completed before "
                               f"it was invoked (at {before})")
        self._rt_pending = still

    def data(self) -> dict[str, Any]:
        return {**super().data(), "model_seq": self.model_seq,
                "results_checked": self.results_checked,
                "replica_results_checked": self.replica_results_checked}


# --------------------------------------------------------------------------
# Evidence
# --------------------------------------------------------------------------


class EvidenceChecker(Checker):
    """No correct replica is proven to have signed two conflicting messages.

    Evidence produced by a correct replica is checked with `verifier`: a proof
    whose signatures do not verify is itself a violation (a correct replica
    must not accuse on forged grounds).
    """

    name = "evidence"

    def __init__(self, correct: Iterable[int], verifier: Any) -> None:
        super().__init__(correct)
        self.verifier = verifier
        self.culprits: dict[int, int] = {}

    def on_evidence(self, node: int, evidence: Any, now: float) -> None:
        if not self._judged(node):
            return
        culprit = evidence.culprit
        self.culprits[culprit] = self.culprits.get(culprit, 0) + 1
        if not (self.verifier.verify(evidence.first) and self.verifier.verify(evidence.second)):
            self.violation(f"replica {node} produced {evidence.kind} evidence against {culprit} "
                           "whose signatures do not verify")
        elif culprit in self.correct:
            self.violation(f"correct replica {culprit} signed conflicting messages "
                           f"({evidence.kind}, reported by {node})")

    def data(self) -> dict[str, Any]:
        return {**super().data(),
                "culprits": {str(k): v for k, v in sorted(self.culprits.items())}}


# --------------------------------------------------------------------------
# Conduct: what a correct replica signs
# --------------------------------------------------------------------------


class ConductChecker(Checker):
    """What each correct replica signs keeps PROTOCOL.md's rules, checked on every message
    it sends (not only once a split shows in what replicas execute):

    * never two PRE-PREPAREs (its own, or in its NEW-VIEW's O), PREPAREs or COMMITs with
      different digests for one (view, seq), nor two CHECKPOINTs for one seq ("Evidence":
      each pair would be a proof against a correct replica);
    * a PREPARE or COMMIT of view v is signed only in view v, outside a view change ("Normal
      case": prepare and commit are steps of view v only): the replica was in (v, not in a
      view change) before or after the step that first sent it. A vote sent again later (loss
      recovery, after a restart) is not a new signature.

    The simulator feeds `on_sent(node, message, before, after)` with the replica's (view, in
    view change) before and after the step; `after` None skips the view rule (a replica
    wrapped by a behaviour may send later than it signed: `slow`, `pause`)."""

    name = "conduct"

    def __init__(self, correct: Iterable[int]) -> None:
        super().__init__(correct)
        self.signed: dict[tuple[int, str, int, int], bytes] = {}
        self.votes_checked = 0

    def on_sent(self, node: int, message: Any, before: Any, after: Any) -> None:
        if node not in self.correct:
            return
        statement = getattr(message, "statement", None)
        if statement is None:  # a Proposal: its pre-prepare header
            pre_prepare = getattr(message, "pre_prepare", None)
            if pre_prepare is not None and pre_prepare.statement.replica == node:
                self._sign(node, "PRE-PREPARE", pre_prepare.statement)
            return  # (a primary's proposal relayed by a backup is the primary's)
        if getattr(statement, "replica", None) != node:
            return  # relayed: someone else's
        kind = type(statement)
        if kind is Prepare or kind is Commit:
            if self._sign(node, kind.__name__.upper(), statement) and after is not None:
                self.votes_checked += 1
                home = (statement.view, False)
                if before != home and after != home:
                    self.violation(f"replica {node} signed {kind.__name__.upper()}"
                                   f"({statement.view}, {statement.seq}) while its (view, in "
                                   f"view change) was {before} before the step, {after} after")
        elif kind is Checkpoint:
            key = (node, "CHECKPOINT", -1, statement.seq)
            old = self.signed.setdefault(key, statement.state_digest)
            if old != statement.state_digest:
                self.violation(f"replica {node} signed two CHECKPOINTs for seq {statement.seq}")
        elif kind is NewView:
            for pp in statement.pre_prepares:
                self._sign(node, "PRE-PREPARE", pp.statement)

    def _sign(self, node: int, kind: str, statement: Any) -> bool:
        """Record a signed statement; True if it is new (not a resend)."""
        key = (node, kind, statement.view, statement.seq)
        old = self.signed.get(key)
        if old is None:
            self.signed[key] = statement.digest
            return True
        if old != statement.digest:
            self.violation(f"replica {node} signed two {kind}s for view {statement.view} seq "
                           f"{statement.seq}: {_hex(old)} and {_hex(statement.digest)}")
        return False

    def data(self) -> dict[str, Any]:
        return {**super().data(), "signed": len(self.signed), "votes_checked": self.votes_checked}


# --------------------------------------------------------------------------
# Liveness
# --------------------------------------------------------------------------


class LivenessChecker(Checker):
    """Every request completes within `bound_s` after max(its invocation, `faults_end_s`).

    A request past its deadline is reported once (during the run, as soon as
    the deadline passes). With `require_completion` (the default), requests
    still pending at `finish` are reported too, even before their deadline:
    the run ended before the property could be confirmed.
    """

    name = "liveness"

    def __init__(self, correct: Iterable[int], *, bound_s: float, faults_end_s: float = 0.0,
                 require_completion: bool = True) -> None:
        super().__init__(correct)
        self.bound_s = bound_s
        self.faults_end_s = faults_end_s
        self.require_completion = require_completion
        self.pending: dict[tuple[int, int], float] = {}  # -> deadline
        self._deadlines: list[tuple[float, tuple[int, int]]] = []  # a heap by deadline
        self.completed = 0
        self.late = 0
        self.max_latency_s = 0.0
        self._invoked_at: dict[tuple[int, int], float] = {}

    def on_invoke(self, client: int, timestamp: int, op: bytes, now: float) -> None:
        deadline = max(now, self.faults_end_s) + self.bound_s
        key = (client, timestamp)
        self.pending[key] = deadline
        self._invoked_at[key] = now
        heapq.heappush(self._deadlines, (deadline, key))

    def on_complete(self, client: int, timestamp: int, result: bytes, now: float) -> None:
        key = (client, timestamp)
        if self.pending.pop(key, None) is not None:
            self.completed += 1
            self.max_latency_s = max(self.max_latency_s, now - self._invoked_at[key])

    def check(self, now: float) -> None:
        while self._deadlines and self._deadlines[0][0] < now:
            deadline, key = heapq.heappop(self._deadlines)
            if key in self.pending:
                self.late += 1
                self.violation(f"client {key[0]} request {key[1]} not completed by "
                               f"{deadline:.3f} s (invoked at {self._invoked_at[key]:.3f} s)")

    def finish(self, now: float) -> None:
        self.check(now)
        if self.require_completion:
            waiting = sorted(key for _, key in self._deadlines if key in self.pending)
            if waiting:
                self.violation(f"{len(waiting)} requests still pending when the run ended at "
                               f"{now:.3f} s before their deadline (first: client "
                               f"{waiting[0][0]} request {waiting[0][1]}); run longer")

    def data(self) -> dict[str, Any]:
        return {**super().data(), "completed": self.completed, "pending": len(self.pending),
                "late": self.late, "bound_s": self.bound_s, "faults_end_s": self.faults_end_s,
                "max_latency_s": round(self.max_latency_s, 6)}


# --------------------------------------------------------------------------
# The suite
# --------------------------------------------------------------------------


class CheckerSuite:
    """All checkers, fed together. `safety_ok` / `liveness_ok` / `violations` / `data()`."""

    def __init__(self, correct: Iterable[int], verifier: Any, *, liveness_bound_s: float,
                 faults_end_s: float = 0.0, require_completion: bool = True,
                 model: Callable[[], tuple[Any, Callable[..., Any]]] = _default_model,
                 max_clock_skew_us: int = 0,
                 client_timestamp_window_us: int | None = None) -> None:
        correct = frozenset(correct)
        self.agreement = AgreementChecker(correct)
        self.validity = ValidityChecker(correct, verifier)
        self.exactly_once = ExactlyOnceChecker(correct)
        self.total_order = TotalOrderChecker(correct)
        self.state_digest = StateDigestChecker(correct)
        self.linearizability = LinearizabilityChecker(
            correct, model, max_clock_skew_us=max_clock_skew_us,
            client_timestamp_window_us=client_timestamp_window_us)
        self.evidence = EvidenceChecker(correct, verifier)
        self.conduct = ConductChecker(correct)
        self.liveness = LivenessChecker(correct, bound_s=liveness_bound_s,
                                        faults_end_s=faults_end_s,
                                        require_completion=require_completion)
        self.safety_checkers: tuple[Checker, ...] = (
            self.agreement, self.validity, self.exactly_once, self.total_order,
            self.state_digest, self.linearizability, self.evidence, self.conduct,
        )
        self.all: tuple[Checker, ...] = self.safety_checkers + (self.liveness,)
        # the hooks run often (check() after every step): each calls only the checkers that
        # do something in it
        def overriding(hook: str) -> tuple[Callable[..., None], ...]:
            return tuple(getattr(c, hook) for c in self.all
                         if getattr(type(c), hook) is not getattr(Checker, hook))

        self._checks = overriding("check")
        self._on_executed = overriding("on_executed")
        self._on_invoke = overriding("on_invoke")
        self._on_complete = overriding("on_complete")

    def on_executed(self, node: int, executed: Any, now: float) -> None:
        for on_executed in self._on_executed:
            on_executed(node, executed, now)

    def on_state_transfer(self, node: int, seq: int, now: float) -> None:
        for c in self.all:
            c.on_state_transfer(node, seq, now)

    def on_restart(self, node: int, seq: int, now: float) -> None:
        for c in self.all:
            c.on_restart(node, seq, now)

    def on_evidence(self, node: int, evidence: Any, now: float) -> None:
        for c in self.all:
            c.on_evidence(node, evidence, now)

    def on_sent(self, node: int, message: Any, before: Any, after: Any) -> None:
        self.conduct.on_sent(node, message, before, after)

    def on_invoke(self, client: int, timestamp: int, op: bytes, now: float) -> None:
        for on_invoke in self._on_invoke:
            on_invoke(client, timestamp, op, now)

    def on_complete(self, client: int, timestamp: int, result: bytes, now: float) -> None:
        for on_complete in self._on_complete:
            on_complete(client, timestamp, result, now)

    def check(self, now: float) -> None:
        for check in self._checks:
            check(now)

    def per_step_checks(self) -> tuple[Callable[[float], None], ...]:
        """What `check(now)` calls, in order (for a caller that runs them itself after every
        step: the simulator)."""
        return self._checks

    def finish(self, now: float) -> None:
        for c in self.all:
            c.finish(now)

    @property
    def safety_ok(self) -> bool:
        return all(c.ok for c in self.safety_checkers)

    @property
    def liveness_ok(self) -> bool:
        return self.liveness.ok

    @property
    def violations(self) -> list[str]:
        return [v for c in self.all for v in c.violations]

    def data(self) -> dict[str, Any]:
        """Each checker's `data()`, keyed by its name."""
        return {c.name: c.data() for c in self.all}
