"""Throughput monitoring of the primary: Aardvark's adaptive view change, pure.

Clement et al., "Making Byzantine Fault Tolerant Systems Tolerate Byzantine Faults"
(NSDI'09, section 4.3): a faulty primary that delays its proposals just under the
view-change timer keeps every request waiting without ever letting a timer fire. Aardvark's
replicas therefore watch the throughput of the current view, compare it with what recent
views achieved, and change views when it falls below a required fraction, raised little by
little during the view so that a primary cannot stay just above the bar. The rule kept here
(issue 21, item 1; README "Slow primaries"):

* Windows. Each replica cuts its time in a view into windows of `throughput_window_s` and
  measures, per window: E, requests executed; I, the integral over time of the number of
  requests outstanding at this replica (known and not executed); B, the time some request
  was outstanding. X = E / window is the throughput; W = I / E the mean wait of a request
  (Little's law), so X = D / W with D = I / window the mean backlog.
* Only busy windows count: one with B below half a window (an idle or lightly loaded
  cluster: its requests are done almost as soon as they come) is neither judged nor
  remembered, so an idle cluster never churns.
* Expected throughput. Recent views (this one and the `history_views` before it) remember
  their best window throughput X* and their best window rate E/I (1/W*, W* the shortest
  mean wait of a window). What the current backlog
  D should get is min(X*, D / W*): a view that serves a small load fast is as good as one
  that served a big load, and under overload X* is the bar. The current view's own
  numbers count too, but only from its windows that passed: a primary that slows down
  step by step does not lower its own bar. The history keeps the last f views (of which,
  with the current one, at most f had a faulty primary), each with all its windows. A window fails when
      X < q x min(X*, D / W*),
  i.e. both its throughput is below q X* and its mean wait above W* / q.
* Before any view is remembered (the first view of a run), the bar comes from the
  backups' own agreement: a request should wait no longer than ordering plus agreeing on
  it, twice the measured time from a pre-prepare to its execution plus the batching delay
  (`W* = 2 A + batch_delay_s`); windows in which the pipeline filled up (overload: requests
  legitimately queue at the primary) are not judged this way.
* q, the required fraction, is `min_throughput_fraction` at the end of the grace period
  (`grace_s` after the view began; windows of the grace period are measured, not judged)
  and rises by `throughput_raise` per judged window up to `max_throughput_fraction`
  (Aardvark raises it until the primary fails; capped here so that a correct primary under
  a steady load, on machines whose capacity is steady too, is never replaced: the rule
  cannot tell a slow primary from a machine that slowed down, and an attack that takes CPU
  from every node, or a load spike on the host, can cost a view change, 5-95 ms each in
  benchmarks/RESULTS.md "Attacks with the kernel steering strangers apart").
* The heartbeat half of Aardvark's rule (a primary must issue pre-prepares while requests
  wait) is the progress timer's: a backup whose pending work saw no fresh pre-prepare for
  a timer T changes views (bft/replica.py `_primary_alive_until`).
* Two failing windows in a row, with work outstanding, make the replica a backup that
  suspects the primary: it starts a view change (cause "slow_primary"). A window that fails
  is not remembered, so a slow primary never lowers the bar.

Pure and deterministic: time is the `now` the replica is handed; nothing here reads a clock.
"""

from __future__ import annotations

import collections
from dataclasses import dataclass
from typing import Any

FAILURES_IN_A_ROW = 2


@dataclass(slots=True)
class _ViewRecord:
    """What one view achieved in its windows that passed."""

    best_x: float = 0.0  # best window throughput X (requests per second)
    best_rate: float = 0.0  # best window E / I = 1 / W (per second)
    executed: int = 0  # requests executed in its remembered windows


@dataclass(frozen=True, slots=True)
class Verdict:
    """One judged window: its throughput and what was required of it."""

    throughput: float
    required: float
    fraction: float
    mean_wait_s: float
    failed: bool
    act: bool  # FAILURES_IN_A_ROW failures in a row: the primary is to be replaced


class ThroughputMonitor:
    """Measures a replica's windows and judges the current view (see the module docstring)."""

    def __init__(self, *, window_s: float, min_fraction: float, max_fraction: float,
                 raise_per_window: float, grace_s: float, history_views: int,
                 batch_delay_s: float, max_in_flight: int) -> None:
        self.window_s = window_s
        self.min_fraction = min_fraction
        self.max_fraction = max_fraction
        self.raise_per_window = raise_per_window
        self.grace_s = grace_s
        self.batch_delay_s = batch_delay_s
        self.max_in_flight = max_in_flight
        self.enabled = window_s > 0
        self._history: collections.deque[_ViewRecord] = collections.deque(maxlen=history_views)
        self._current = _ViewRecord()  # this view's windows that passed: its own bar
        self._whole = _ViewRecord()  # all its windows: what it leaves to the history
        self._view_start: float | None = None
        self._judged = 0
        self._failures = 0
        self._reset_window(0.0)
        self._last_t: float | None = None
        self._outstanding = 0
        self.last: Verdict | None = None
        self.windows_judged = 0
        self.windows_failed = 0

    def _reset_window(self, now: float) -> None:
        self._w_start = now
        self._w_executed = 0
        self._w_integral = 0.0
        self._w_busy = 0.0
        self._w_agree_sum = 0.0
        self._w_agree_n = 0
        self._w_full = False

    # -- inputs

    def enter_view(self, now: float) -> None:
        """A view begins (the first one, or a NEW-VIEW entered): its grace period starts."""
        self._close_view()
        self._view_start = now
        self._judged = 0
        self._failures = 0
        self._reset_window(now)
        self._last_t = now

    def leave_view(self, now: float) -> None:
        """A view change begins: nothing is measured until the next view."""
        self._close_view()
        self._view_start = None
        self._last_t = None

    def _close_view(self) -> None:
        if self._view_start is not None and self._whole.executed:
            self._history.append(self._whole)
        self._current = _ViewRecord()
        self._whole = _ViewRecord()

    def advance(self, now: float, outstanding: int, in_flight: int) -> None:
        """The end of a step at `now`: `outstanding` requests known and not executed and
        `in_flight` sequence numbers ordered and not executed, as the step left them."""
        last = self._last_t
        if last is None:
            return
        dt = now - last
        if dt > 0 and self._outstanding:
            self._w_integral += self._outstanding * dt
            self._w_busy += dt
        self._last_t = now
        self._outstanding = outstanding
        if in_flight >= self.max_in_flight:
            self._w_full = True

    def executed(self, requests: int, agreement_s: float | None) -> None:
        """A batch of `requests` executed, `agreement_s` after its pre-prepare was accepted."""
        if self._view_start is None:
            return
        self._w_executed += requests
        if agreement_s is not None and agreement_s >= 0:
            self._w_agree_sum += agreement_s
            self._w_agree_n += 1

    # -- judgment

    def poll(self, now: float) -> Verdict | None:
        """Close the window if it is over; the verdict on it, or None if it was not judged."""
        if not self.enabled or self._view_start is None or now - self._w_start < self.window_s:
            return None
        length = now - self._w_start
        executed, integral, busy = self._w_executed, self._w_integral, self._w_busy
        agree = self._w_agree_sum / self._w_agree_n if self._w_agree_n else None
        full = self._w_full
        self._reset_window(now)
        if busy < length / 2 or integral <= 0:
            self._failures = 0
            return None  # (nearly) idle: nothing to judge
        x = executed / length
        backlog = integral / length
        wait = integral / executed if executed else float("inf")
        in_grace = now - self._view_start < self.grace_s
        fraction = min(self.max_fraction,
                       self.min_fraction + self.raise_per_window * self._judged)
        required = self._expected(backlog, agree, full)
        failed = required is not None and x < fraction * required
        # Windows that pass after the grace period set this view's bar (not those of its
        # first seconds: a cold start, or the backlog a view change left, says little of
        # its pace, and a lenient first bar would let a slow primary set its own); every
        # window goes into what the view leaves to the history (a slow view's low numbers
        # never raise a bar, and they let the bar follow a slowdown of the whole cluster
        # once the faster views leave the history)
        if executed:
            own = not failed and not in_grace
            for rec in (self._current, self._whole) if own else (self._whole,):
                rec.best_x = max(rec.best_x, x)
                rec.best_rate = max(rec.best_rate, executed / integral)
                rec.executed += executed
        if in_grace or required is None:
            self._failures = 0
            return None
        self._judged += 1
        self.windows_judged += 1
        if failed:
            self._failures += 1
            self.windows_failed += 1
        else:
            self._failures = 0
        verdict = Verdict(x, fraction * required, fraction, wait, failed,
                          failed and self._failures >= FAILURES_IN_A_ROW)
        self.last = verdict
        if verdict.act:
            self._failures = 0
        return verdict

    def _expected(self, backlog: float, agree: float | None, full: bool) -> float | None:
        """What the window's backlog should get (requests per second), or None (no bar)."""
        records = [r for r in (*self._history, self._current) if r.executed]
        if records:
            best_x = max(r.best_x for r in records)
            best_rate = max(r.best_rate for r in records)
            return min(best_x, backlog * best_rate)
        if agree is None or full or 2 * agree + self.batch_delay_s <= 0:
            return None
        return backlog / (2 * agree + self.batch_delay_s)

    def statistics(self) -> dict[str, Any]:
        last = self.last
        return {
            "windows_judged": self.windows_judged,
            "windows_failed": self.windows_failed,
            "views_remembered": len(self._history),
            "last_throughput": last.throughput if last else None,
            "last_required": last.required if last else None,
        }
