"""Phi-accrual failure detection and the adaptive view-change timeout built on it.

`PhiAccrualDetector` follows Hayashibara et al., "The phi accrual failure
detector" (SRDS 2004), as used by Akka and Cassandra. It keeps a sliding
window of inter-arrival times of one peer's messages and reports a suspicion
level instead of a yes/no verdict:

    phi(now) = -log10(P(the next arrival comes later than now - last_arrival))

The inter-arrival time is modelled as a **normal distribution** with the
window's mean (plus `acceptable_pause_s`, as in Akka) and standard deviation
(at least `min_std_s`). P is the normal upper tail, computed with `math.erfc`
and, far in the tail where erfc underflows, with its asymptotic expansion, so
phi is finite, continuous and strictly increasing in the silence. phi = 1
means a 10% chance that the peer is merely slow, phi = 3 means 0.1%, ...

`AdaptiveTimeout` keeps one detector per peer and turns the measurements into
a timeout: the silence after which phi crosses the threshold, i.e.
`mean + std * z` with `z` the normal quantile for `10**-threshold` (found by
bisection on the same tail function phi uses, so the two agree), clamped
to `[floor_s, ceiling_s]`. The replica uses it as its view-change timer, so
the timer follows the delays actually measured instead of a constant.

Times are monotonic seconds handed in by the caller; nothing here reads a clock.
"""

from __future__ import annotations

import functools
import math
from collections import deque
from collections.abc import Hashable
from typing import Any

_LOG10_E = math.log10(math.e)
_SQRT2 = math.sqrt(2.0)
_LOG_SQRT_2PI = 0.5 * math.log(2.0 * math.pi)
#: Beyond this many standard deviations, use the asymptotic tail (erfc underflows near 38).
_TAIL_Z = 30.0


def normal_tail_log10(z: float) -> float:
    """log10 of P(X > z) for a standard normal X; finite for every finite z.

    Exact (via erfc) for z <= 30; beyond, the asymptotic series
    Q(z) ~ pdf(z)/z * (1 - 1/z^2 + 3/z^4), whose relative error there is below 1e-8.
    """
    if z <= _TAIL_Z:
        return math.log10(0.5 * math.erfc(z / _SQRT2))
    inv2 = 1.0 / (z * z)
    log_q = -0.5 * z * z - _LOG_SQRT_2PI - math.log(z) + math.log1p(-inv2 + 3.0 * inv2 * inv2)
    return log_q * _LOG10_E


class PhiAccrualDetector:
    """Suspicion level of one peer from the arrival times of its messages.

    - `heartbeat(now)` records an arrival. Intervals that are not positive
      (same-instant duplicates, or time going backwards) are not recorded: they
      say nothing about the peer's pace; they are counted as `ignored`.
    - `phi(now)` is 0.0 before the first arrival; afterwards it is
      non-decreasing in `now` and grows without bound with silence.
    - Until the first interval is measured, the distribution is assumed to
      have mean `first_interval_s` and std `first_interval_s / 4` (Akka's
      bootstrap); afterwards only measured intervals count, the last `window`
      of them.
    """

    def __init__(
        self,
        window: int = 1000,
        min_std_s: float = 0.05,
        first_interval_s: float = 1.0,
        acceptable_pause_s: float = 0.0,
    ) -> None:
        if window < 1:
            raise ValueError(f"window must be >= 1, got {window}")
        if not min_std_s > 0:
            raise ValueError(f"min_std_s must be > 0, got {min_std_s}")
        if not first_interval_s > 0:
            raise ValueError(f"first_interval_s must be > 0, got {first_interval_s}")
        if not acceptable_pause_s >= 0:
            raise ValueError(f"acceptable_pause_s must be >= 0, got {acceptable_pause_s}")
        self.window = window
        self.min_std_s = float(min_std_s)
        self.first_interval_s = float(first_interval_s)
        self.acceptable_pause_s = float(acceptable_pause_s)
        self._intervals: deque[float] = deque(maxlen=window)
        self._sum = 0.0
        self._sum_sq = 0.0
        self._last: float | None = None
        self._heartbeats = 0
        self._ignored = 0
        self._appended = 0

    @property
    def samples(self) -> int:
        """How many measured intervals the window holds."""
        return len(self._intervals)

    @property
    def last_arrival(self) -> float | None:
        """The time of the latest recorded arrival, or None."""
        return self._last

    def heartbeat(self, now: float) -> None:
        """Record an arrival at monotonic time `now` (seconds)."""
        self._heartbeats += 1
        if self._last is None:
            self._last = now
            return
        interval = now - self._last
        if not interval > 0:
            self._ignored += 1
            return
        self._last = now
        self._add(interval)

    def add_interval(self, interval_s: float) -> None:
        """Record one measured interval directly (a duration rather than an arrival time);
        not positive: ignored and counted. Does not move `last_arrival`."""
        if not interval_s > 0:
            self._ignored += 1
            return
        self._add(interval_s)

    def _add(self, interval: float) -> None:
        if len(self._intervals) == self.window:
            old = self._intervals[0]
            self._sum -= old
            self._sum_sq -= old * old
        self._intervals.append(interval)
        self._sum += interval
        self._sum_sq += interval * interval
        self._appended += 1
        if self._appended % self.window == 0:  # re-add exactly now and then: no float drift
            self._sum = math.fsum(self._intervals)
            self._sum_sq = math.fsum(x * x for x in self._intervals)

    def mean_s(self) -> float:
        """Mean of the modelled inter-arrival time (without acceptable_pause_s)."""
        if not self._intervals:
            return self.first_interval_s
        return self._sum / len(self._intervals)

    def std_s(self) -> float:
        """Standard deviation used by the model: the window's, at least min_std_s."""
        if not self._intervals:
            return max(self.first_interval_s / 4.0, self.min_std_s)
        n = len(self._intervals)
        mean = self._sum / n
        variance = max(self._sum_sq / n - mean * mean, 0.0)
        return max(math.sqrt(variance), self.min_std_s)

    def phi(self, now: float) -> float:
        """-log10 of the probability that a correct peer would still be silent at `now`."""
        if self._last is None:
            return 0.0
        elapsed = max(now - self._last, 0.0)
        z = (elapsed - self.mean_s() - self.acceptable_pause_s) / self.std_s()
        return max(-normal_tail_log10(z), 0.0)

    def silence_for_phi_s(self, phi_threshold: float) -> float:
        """The silence after an arrival at which phi reaches `phi_threshold` (seconds, >= 0)."""
        if not phi_threshold > 0:
            raise ValueError(f"phi_threshold must be > 0, got {phi_threshold}")
        z = quantile_for_phi(phi_threshold)
        return max(self.mean_s() + self.acceptable_pause_s + self.std_s() * z, 0.0)

    def statistics(self) -> dict[str, Any]:
        """Arrivals seen, intervals kept and ignored, and the model's mean and std."""
        return {
            "heartbeats": self._heartbeats,
            "samples": len(self._intervals),
            "ignored": self._ignored,
            "mean_s": self.mean_s(),
            "std_s": self.std_s(),
            "last_arrival": self._last,
        }


@functools.lru_cache(maxsize=64)
def quantile_for_phi(phi_threshold: float) -> float:
    """The z with P(X > z) = 10**-phi_threshold for a standard normal X (phi in (0, 1000]).

    Found by bisection on `normal_tail_log10`, which is strictly decreasing, to
    float precision; cached per threshold.
    """
    if not 0.0 < phi_threshold <= 1000.0:
        raise ValueError(f"phi_threshold must be in (0, 1000], got {phi_threshold}")
    target = -phi_threshold
    lo, hi = -40.0, 100.0  # tail log10 at -40 is ~0, at 100 about -2174
    for _ in range(200):
        mid = (lo + hi) / 2.0
        if mid in (lo, hi):
            break
        if normal_tail_log10(mid) > target:
            lo = mid
        else:
            hi = mid
    return (lo + hi) / 2.0


class AdaptiveTimeout:
    """One phi-accrual detector per peer; the view-change timeout from measured delays.

    - `record_arrival(peer, now)`: a message from `peer` arrived (feed it
      regular traffic such as STATUS messages, not bursts).
    - `phi(peer, now)`: the peer's suspicion level (0.0 for an unknown peer).
    - `suspected(now)`: `{peer: phi}` for the peers whose phi exceeds the threshold.
    - `timeout_s(peer)`: the silence after an arrival from `peer` at which its
      phi would cross the threshold, clamped to `[floor_s, ceiling_s]`; with
      `peer=None` the upper median of that value over all peers with at least
      `min_samples` measured intervals (with at most f Byzantine among 3f peers,
      a minority, the median stays within the range of correct peers' values,
      so a slow-pacing liar cannot stretch it). Without enough measurements it
      is `initial_s`.
    """

    def __init__(
        self,
        floor_s: float,
        ceiling_s: float,
        phi_threshold: float = 8.0,
        initial_s: float | None = None,
        *,
        window: int = 1000,
        min_std_s: float = 0.05,
        first_interval_s: float = 1.0,
        acceptable_pause_s: float = 0.0,
        min_samples: int = 2,
    ) -> None:
        if not 0 < floor_s <= ceiling_s:
            raise ValueError(f"need 0 < floor_s <= ceiling_s, got {floor_s}, {ceiling_s}")
        if initial_s is None:
            initial_s = floor_s
        if not floor_s <= initial_s <= ceiling_s:
            raise ValueError(f"initial_s {initial_s} outside [{floor_s}, {ceiling_s}]")
        if not phi_threshold > 0:
            raise ValueError(f"phi_threshold must be > 0, got {phi_threshold}")
        quantile_for_phi(phi_threshold)  # rejects thresholds too large to invert
        if min_samples < 1:
            raise ValueError(f"min_samples must be >= 1, got {min_samples}")
        self.floor_s = float(floor_s)
        self.ceiling_s = float(ceiling_s)
        self.phi_threshold = float(phi_threshold)
        self.initial_s = float(initial_s)
        self.min_samples = min_samples
        self._detector_args = {
            "window": window,
            "min_std_s": min_std_s,
            "first_interval_s": first_interval_s,
            "acceptable_pause_s": acceptable_pause_s,
        }
        PhiAccrualDetector(**self._detector_args)  # type: ignore[arg-type]  # validates
        self._detectors: dict[Hashable, PhiAccrualDetector] = {}

    def record_arrival(self, peer: Hashable, now: float) -> None:
        """Record that a message from `peer` arrived at monotonic time `now`."""
        detector = self._detectors.get(peer)
        if detector is None:
            detector = PhiAccrualDetector(**self._detector_args)  # type: ignore[arg-type]
            self._detectors[peer] = detector
        detector.heartbeat(now)

    def detector(self, peer: Hashable) -> PhiAccrualDetector | None:
        """The peer's detector, or None if nothing arrived from it yet."""
        return self._detectors.get(peer)

    def phi(self, peer: Hashable, now: float) -> float:
        """The peer's phi at `now`; 0.0 for a peer never heard from."""
        detector = self._detectors.get(peer)
        return 0.0 if detector is None else detector.phi(now)

    def suspected(self, now: float) -> dict[Hashable, float]:
        """Peers whose phi at `now` is above the threshold, with their phi."""
        result = {}
        for peer, detector in self._detectors.items():
            value = detector.phi(now)
            if value > self.phi_threshold:
                result[peer] = value
        return result

    def _clamp(self, seconds: float) -> float:
        return min(max(seconds, self.floor_s), self.ceiling_s)

    def timeout_s(self, peer: Hashable | None = None) -> float:
        """The timeout in seconds, clamped to [floor_s, ceiling_s] (see the class docstring)."""
        if peer is not None:
            detector = self._detectors.get(peer)
            if detector is None or detector.samples < self.min_samples:
                return self.initial_s
            return self._clamp(detector.silence_for_phi_s(self.phi_threshold))
        values = sorted(
            d.silence_for_phi_s(self.phi_threshold)
            for d in self._detectors.values()
            if d.samples >= self.min_samples
        )
        if not values:
            return self.initial_s
        return self._clamp(values[len(values) // 2])

    def statistics(self) -> dict[str, Any]:
        """Per-peer detector statistics, the current timeout and the threshold."""
        return {
            "phi_threshold": self.phi_threshold,
            "timeout_s": self.timeout_s(),
            "peers": {str(p): d.statistics() for p, d in self._detectors.items()},
        }


class RttEstimator:
    """Smoothed delay and its mean deviation, as TCP's retransmission timer (RFC 6298 2.2-2.3).

    `observe(sample_s)` folds in one measured delay: the first sets srtt = sample and
    rttvar = sample / 2; later ones rttvar += (|srtt - sample| - rttvar) / 4, then
    srtt += (sample - srtt) / 8. `bound_s()` is srtt + 4 x rttvar (None before any
    sample): a wait longer than that is unusual for the delays measured so far.
    """

    __slots__ = ("srtt_s", "rttvar_s")

    def __init__(self) -> None:
        self.srtt_s: float | None = None
        self.rttvar_s = 0.0

    def observe(self, sample_s: float) -> None:
        if sample_s < 0:
            raise ValueError(f"a delay cannot be negative, got {sample_s}")
        if self.srtt_s is None:
            self.srtt_s, self.rttvar_s = sample_s, sample_s / 2
        else:
            self.rttvar_s += (abs(self.srtt_s - sample_s) - self.rttvar_s) / 4
            self.srtt_s += (sample_s - self.srtt_s) / 8

    def bound_s(self) -> float | None:
        return None if self.srtt_s is None else self.srtt_s + 4 * self.rttvar_s
