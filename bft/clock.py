"""Interval clocks and the agreed batch time (PROTOCOL.md, Normal case rule 6).

A node's clock reading is an `Interval` `[earliest_us, latest_us]` (microseconds
since the Unix epoch, or since the simulation's start): the node believes the
true time lies inside it (as in Spanner's TrueTime; an honest node sizes the
interval to cover its clock error, a skewed one may be wrong).

Agreed time: the primary proposes each batch's `batch_time` with
`propose_batch_time` and every backup checks it with `accept_batch_time`. The
rules make agreed time monotonic (never below the previous batch's) and keep it
within `max_skew_us` of each accepting backup's interval, so a faulty primary
cannot move it far from the correct replicas' clocks. Each check sees only
the batches a backup holds, so the replica also executes a batch at
max(its batch_time, the previous batch's): the application's time is monotonic.
Lock leases in `bft.app` expire in this agreed time, never in a replica's local
clock, and pass to another holder only once over by every correct clock
(agreed time past the expiry by 2 x max_skew).

`SkewedClock` is a pure model of a clock with a fixed offset and a drift,
used by the simulator and the adversary ("skew the clock").
"""

from __future__ import annotations

from dataclasses import dataclass

TOO_FAR_AHEAD = "too_far_ahead"
TOO_FAR_BEHIND = "too_far_behind"
BEFORE_PREVIOUS = "before_previous"


def _check_int(value: object, what: str) -> None:
    if type(value) is not int:
        raise TypeError(f"{what} must be an int, got {type(value).__name__}")


@dataclass(frozen=True, slots=True)
class Interval:
    """A clock reading `[earliest_us, latest_us]`, integer microseconds, earliest <= latest.

    Raises TypeError for non-int bounds and ValueError when earliest > latest.
    """

    earliest_us: int
    latest_us: int

    def __post_init__(self) -> None:
        earliest, latest = self.earliest_us, self.latest_us
        if type(earliest) is not int or type(latest) is not int:  # one test on the usual path
            _check_int(earliest, "earliest_us")
            _check_int(latest, "latest_us")
        if earliest > latest:
            raise ValueError(f"empty interval: earliest {earliest} > latest {latest}")

    @classmethod
    def around(cls, center_us: int, uncertainty_us: int) -> Interval:
        """The interval `[center - uncertainty, center + uncertainty]` (uncertainty >= 0)."""
        _check_int(center_us, "center_us")
        _check_int(uncertainty_us, "uncertainty_us")
        if uncertainty_us < 0:
            raise ValueError(f"uncertainty_us must be >= 0, got {uncertainty_us}")
        return cls(center_us - uncertainty_us, center_us + uncertainty_us)

    @property
    def midpoint_us(self) -> int:
        """The middle of the interval, rounded down to a whole microsecond."""
        return (self.earliest_us + self.latest_us) // 2

    @property
    def width_us(self) -> int:
        """latest_us - earliest_us."""
        return self.latest_us - self.earliest_us

    def contains(self, t_us: int) -> bool:
        """True when earliest_us <= t_us <= latest_us."""
        return self.earliest_us <= t_us <= self.latest_us

    def overlaps(self, other: Interval) -> bool:
        """True when the two intervals share at least one instant."""
        return self.earliest_us <= other.latest_us and other.earliest_us <= self.latest_us

    def distance_us(self, t_us: int) -> int:
        """How far `t_us` lies outside the interval (0 when inside)."""
        if t_us < self.earliest_us:
            return self.earliest_us - t_us
        if t_us > self.latest_us:
            return t_us - self.latest_us
        return 0

    def widened(self, margin_us: int) -> Interval:
        """The interval grown by `margin_us` (>= 0) on both sides."""
        _check_int(margin_us, "margin_us")
        if margin_us < 0:
            raise ValueError(f"margin_us must be >= 0, got {margin_us}")
        return Interval(self.earliest_us - margin_us, self.latest_us + margin_us)

    def shifted(self, delta_us: int) -> Interval:
        """The interval moved by `delta_us` (either sign)."""
        _check_int(delta_us, "delta_us")
        return Interval(self.earliest_us + delta_us, self.latest_us + delta_us)


@dataclass(frozen=True, slots=True)
class SkewedClock:
    """A model of a node's clock: what it reads when the true time is `true_s`.

    local(true_s) = true_s + offset_s + true_s * drift_ppm / 1e6, so the error
    is `offset_s` at true time 0 and grows by `drift_ppm` microseconds per
    second. `read(true_s)` is `Interval.around(round(local * 1e6), uncertainty_us)`:
    the interval contains the true time exactly when the node's error is at most
    its claimed uncertainty. Pure floating-point arithmetic: the same inputs
    give the same reading on every run.
    """

    offset_s: float = 0.0
    drift_ppm: float = 0.0
    uncertainty_us: int = 1000

    def __post_init__(self) -> None:
        _check_int(self.uncertainty_us, "uncertainty_us")
        if self.uncertainty_us < 0:
            raise ValueError(f"uncertainty_us must be >= 0, got {self.uncertainty_us}")

    def local_s(self, true_s: float) -> float:
        """The time this clock shows (its centre) at true time `true_s`, in seconds."""
        return true_s + self.offset_s + true_s * self.drift_ppm * 1e-6

    def error_us(self, true_s: float) -> int:
        """The clock's centre minus the true time, in whole microseconds."""
        return self.read(true_s).midpoint_us - round(true_s * 1e6)

    def read(self, true_s: float) -> Interval:
        """The interval this node reads at true time `true_s`."""
        return Interval.around(round(self.local_s(true_s) * 1e6), self.uncertainty_us)


def propose_batch_time(interval: Interval, previous_us: int) -> int:
    """The primary's batch time: `max(interval.midpoint_us, previous_us)`.

    The midpoint is the primary's best estimate of the true time, and it keeps
    the proposal as far as possible from both edges of the backups' acceptance
    windows; taking the max with the previous batch's time makes agreed time
    monotonic (non-decreasing) even when the primary's clock is behind.
    """
    _check_int(previous_us, "previous_us")
    if previous_us < 0:
        raise ValueError(f"previous_us must be >= 0, got {previous_us}")
    return max(interval.midpoint_us, previous_us)


def accept_batch_time(
    proposed_us: int, interval: Interval, previous_us: int, max_skew_us: int
) -> str | None:
    """A backup's check of a fresh proposal's batch time (PROTOCOL.md Normal case rule 6).

    Returns None when acceptable, else the reason, checked in this order:
    - `before_previous`: proposed_us < previous_us (agreed time never goes back);
    - `too_far_behind`: proposed_us < interval.earliest_us - max_skew_us;
    - `too_far_ahead`: proposed_us > interval.latest_us + max_skew_us.
    Raises ValueError for a negative max_skew_us (a configuration bug).
    """
    _check_int(proposed_us, "proposed_us")
    _check_int(previous_us, "previous_us")
    _check_int(max_skew_us, "max_skew_us")
    if max_skew_us < 0:
        raise ValueError(f"max_skew_us must be >= 0, got {max_skew_us}")
    if proposed_us < previous_us:
        return BEFORE_PREVIOUS
    if proposed_us < interval.earliest_us - max_skew_us:
        return TOO_FAR_BEHIND
    if proposed_us > interval.latest_us + max_skew_us:
        return TOO_FAR_AHEAD
    return None
