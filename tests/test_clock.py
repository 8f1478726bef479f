"""Interval clocks, the skew/drift model, and agreed batch time (PROTOCOL.md Normal case rule 6)."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from bft.clock import (
    BEFORE_PREVIOUS,
    TOO_FAR_AHEAD,
    TOO_FAR_BEHIND,
    Interval,
    SkewedClock,
    accept_batch_time,
    propose_batch_time,
)

# --------------------------------------------------------------------------
# Interval
# --------------------------------------------------------------------------


def test_interval_basics() -> None:
    i = Interval(100, 201)
    assert i.midpoint_us == 150 and i.width_us == 101
    assert i.contains(100) and i.contains(201) and not i.contains(99) and not i.contains(202)
    assert i.distance_us(50) == 50 and i.distance_us(150) == 0 and i.distance_us(300) == 99
    assert i.widened(10) == Interval(90, 211)
    assert i.shifted(-100) == Interval(0, 101)
    assert Interval.around(1000, 5) == Interval(995, 1005)
    assert Interval(5, 5).width_us == 0


def test_interval_overlaps() -> None:
    assert Interval(0, 10).overlaps(Interval(10, 20))
    assert Interval(10, 20).overlaps(Interval(0, 10))
    assert not Interval(0, 9).overlaps(Interval(10, 20))
    assert Interval(0, 100).overlaps(Interval(40, 50))


def test_interval_rejects_bad_bounds() -> None:
    with pytest.raises(ValueError):
        Interval(10, 9)
    with pytest.raises(TypeError):
        Interval(1.5, 3)  # type: ignore[arg-type]
    with pytest.raises(ValueError):
        Interval.around(10, -1)
    with pytest.raises(ValueError):
        Interval(0, 1).widened(-1)


@given(st.integers(-(10**15), 10**15), st.integers(0, 10**9))
def test_midpoint_lies_inside(earliest: int, width: int) -> None:
    i = Interval(earliest, earliest + width)
    assert i.contains(i.midpoint_us)


# --------------------------------------------------------------------------
# SkewedClock
# --------------------------------------------------------------------------


def test_perfect_clock_reads_true_time() -> None:
    c = SkewedClock(uncertainty_us=500)
    assert c.read(12.5) == Interval(12_500_000 - 500, 12_500_000 + 500)
    assert c.error_us(12.5) == 0


def test_offset_shifts_the_reading() -> None:
    c = SkewedClock(offset_s=-0.25, uncertainty_us=1000)
    reading = c.read(10.0)
    assert reading.midpoint_us == 9_750_000
    assert not reading.contains(10_000_000)
    assert c.error_us(10.0) == -250_000


def test_drift_grows_with_time() -> None:
    c = SkewedClock(drift_ppm=100.0, uncertainty_us=0)
    assert c.error_us(0.0) == 0
    assert c.error_us(1.0) == 100
    assert c.error_us(1000.0) == 100_000
    assert c.read(1000.0) == Interval(1_000_100_000, 1_000_100_000)


def test_offset_and_drift_combine() -> None:
    c = SkewedClock(offset_s=0.002, drift_ppm=-50.0, uncertainty_us=10)
    assert c.error_us(100.0) == 2000 - 5000
    assert c.read(100.0) == Interval.around(100_000_000 - 3000, 10)


@given(st.floats(0.0, 10**6), st.floats(-0.01, 0.01), st.floats(-200.0, 200.0))
def test_reading_contains_true_time_iff_error_within_uncertainty(
    true_s: float, offset_s: float, drift_ppm: float
) -> None:
    c = SkewedClock(offset_s=offset_s, drift_ppm=drift_ppm, uncertainty_us=5000)
    reading = c.read(true_s)
    assert reading.width_us == 10_000
    assert reading.contains(round(true_s * 1e6)) == (abs(c.error_us(true_s)) <= 5000)
    assert c.read(true_s) == reading  # pure: same input, same reading


@given(st.floats(0.0, 10**6), st.floats(0.0, 10**6), st.floats(-0.5, 0.5), st.floats(-500.0, 500.0))
def test_reading_is_monotonic_in_true_time(
    a: float, b: float, offset_s: float, drift_ppm: float
) -> None:
    c = SkewedClock(offset_s=offset_s, drift_ppm=drift_ppm, uncertainty_us=100)
    lo, hi = sorted((a, b))
    assert c.read(lo).midpoint_us <= c.read(hi).midpoint_us


def test_skewed_clock_rejects_negative_uncertainty() -> None:
    with pytest.raises(ValueError):
        SkewedClock(uncertainty_us=-1)


# --------------------------------------------------------------------------
# agreed batch time
# --------------------------------------------------------------------------


def test_propose_uses_midpoint_unless_behind_previous() -> None:
    assert propose_batch_time(Interval(1000, 2000), previous_us=0) == 1500
    assert propose_batch_time(Interval(1000, 2000), previous_us=1500) == 1500
    assert propose_batch_time(Interval(1000, 2000), previous_us=9000) == 9000
    with pytest.raises(ValueError):
        propose_batch_time(Interval(0, 1), previous_us=-1)


@given(st.lists(st.tuples(st.integers(0, 10**12), st.integers(0, 10**6)), max_size=30))
def test_proposed_times_are_monotonic(readings: list[tuple[int, int]]) -> None:
    previous = 0
    for earliest, width in readings:
        proposed = propose_batch_time(Interval(earliest, earliest + width), previous)
        assert proposed >= previous
        previous = proposed


SKEW = 1000
BACKUP = Interval(1_000_000, 1_002_000)


@pytest.mark.parametrize(
    ("proposed", "previous", "expected"),
    [
        (1_001_000, 0, None),  # inside the backup's interval
        (BACKUP.earliest_us - SKEW, 0, None),  # at the lower edge of the window
        (BACKUP.latest_us + SKEW, 0, None),  # at the upper edge
        (BACKUP.earliest_us - SKEW - 1, 0, TOO_FAR_BEHIND),
        (BACKUP.latest_us + SKEW + 1, 0, TOO_FAR_AHEAD),
        (1_001_000, 1_001_000, None),  # equal to the previous batch's time: allowed
        (1_001_000, 1_001_001, BEFORE_PREVIOUS),
        (0, 1, BEFORE_PREVIOUS),  # before-previous is reported first
        (5_000_000, 5_000_000, TOO_FAR_AHEAD),  # previous does not excuse a far-ahead time
    ],
)
def test_accept_batch_time_cases(proposed: int, previous: int, expected: str | None) -> None:
    assert accept_batch_time(proposed, BACKUP, previous, SKEW) == expected


def test_accept_rejects_negative_skew() -> None:
    with pytest.raises(ValueError):
        accept_batch_time(1, Interval(0, 2), 0, -1)


@given(
    true_s=st.floats(1.0, 10**6),
    primary_offset_s=st.floats(-0.05, 0.05),
    backup_offset_s=st.floats(-0.05, 0.05),
    uncertainty_us=st.integers(0, 10_000),
)
def test_honest_primary_within_skew_is_accepted(
    true_s: float, primary_offset_s: float, backup_offset_s: float, uncertainty_us: int
) -> None:
    """A correct primary whose clock is within max_skew of the backup's gets its time accepted."""
    primary = SkewedClock(offset_s=primary_offset_s, uncertainty_us=uncertainty_us)
    backup = SkewedClock(offset_s=backup_offset_s, uncertainty_us=uncertainty_us)
    max_skew_us = 100_001  # the two offsets differ by at most 0.1 s, plus rounding
    proposed = propose_batch_time(primary.read(true_s), previous_us=0)
    assert accept_batch_time(proposed, backup.read(true_s), 0, max_skew_us) is None


@given(st.integers(0, 10**12), st.integers(0, 10**6), st.integers(0, 10**12), st.integers(0, 10**6))
def test_accepted_time_is_within_skew_and_not_before_previous(
    proposed: int, width: int, previous: int, skew: int
) -> None:
    interval = Interval(10**6, 10**6 + width)
    if accept_batch_time(proposed, interval, previous, skew) is None:
        assert proposed >= previous
        assert interval.widened(skew).contains(proposed)
    else:
        assert proposed < previous or not interval.widened(skew).contains(proposed)
