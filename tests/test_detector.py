"""Phi-accrual failure detector and the adaptive view-change timeout."""

from __future__ import annotations

import math

import pytest
from hypothesis import given
from hypothesis import strategies as st

from bft.detector import (
    AdaptiveTimeout,
    PhiAccrualDetector,
    normal_tail_log10,
    RttEstimator,
    quantile_for_phi,
)


def feed(detector: PhiAccrualDetector, intervals: list[float], start: float = 100.0) -> float:
    """Heartbeats at start, start + i1, start + i1 + i2, ...; returns the last arrival time."""
    now = start
    detector.heartbeat(now)
    for interval in intervals:
        now += interval
        detector.heartbeat(now)
    return now


def test_phi_is_zero_before_any_heartbeat() -> None:
    d = PhiAccrualDetector()
    assert d.phi(123.0) == 0.0
    assert d.statistics()["heartbeats"] == 0


def test_phi_rises_with_silence() -> None:
    d = PhiAccrualDetector(min_std_s=0.01)
    last = feed(d, [1.0, 1.1, 0.9, 1.0, 1.05, 0.95])
    values = [d.phi(last + s) for s in (0.0, 0.5, 1.0, 1.1, 1.2, 1.5, 2.0, 5.0, 60.0)]
    assert values == sorted(values)
    assert len(set(values[1:])) == len(values) - 1  # strictly rising once silence starts
    assert values[0] < 0.01  # just heard from it
    assert abs(d.phi(last + 1.0) - math.log10(2)) < 1e-9  # at the mean: P = 1/2
    assert values[-1] > 100 and math.isfinite(values[-1])


def test_phi_is_finite_after_enormous_silence() -> None:
    d = PhiAccrualDetector(min_std_s=0.001)
    last = feed(d, [0.1] * 10)
    huge = d.phi(last + 1e6)
    assert math.isfinite(huge) and huge > 1e10


@given(
    st.lists(st.floats(0.001, 10.0), min_size=1, max_size=30),
    st.floats(0.0, 100.0),
    st.floats(0.0, 100.0),
)
def test_phi_is_monotonic_in_silence(intervals: list[float], s1: float, s2: float) -> None:
    d = PhiAccrualDetector(min_std_s=0.01)
    last = feed(d, intervals)
    lo, hi = sorted((s1, s2))
    assert 0.0 <= d.phi(last + lo) <= d.phi(last + hi)


@given(
    st.lists(st.floats(0.001, 10.0), min_size=1, max_size=30),
    st.floats(0.5, 30.0),
)
def test_silence_for_phi_inverts_phi(intervals: list[float], threshold: float) -> None:
    d = PhiAccrualDetector(min_std_s=0.01)
    last = feed(d, intervals)
    silence = d.silence_for_phi_s(threshold)
    assert d.phi(last + silence) == pytest.approx(threshold, rel=1e-6)


def test_bootstrap_uses_first_interval_estimate() -> None:
    d = PhiAccrualDetector(first_interval_s=2.0, min_std_s=0.01)
    d.heartbeat(10.0)
    assert d.samples == 0
    assert d.mean_s() == 2.0 and d.std_s() == 0.5
    assert d.phi(12.0) == pytest.approx(math.log10(2))
    d.heartbeat(10.5)
    assert d.samples == 1 and d.mean_s() == 0.5 and d.std_s() == 0.01


def test_window_forgets_old_intervals_and_sums_stay_exact() -> None:
    d = PhiAccrualDetector(window=4, min_std_s=0.001)
    last = feed(d, [5.0] * 10)
    now = last
    for _ in range(1001):
        now += 0.1
        d.heartbeat(now)
    assert d.samples == 4
    assert d.mean_s() == pytest.approx(0.1, abs=1e-9)
    assert d.std_s() == 0.001  # the measured spread is ~0: the floor applies


def test_non_positive_intervals_are_ignored() -> None:
    d = PhiAccrualDetector()
    d.heartbeat(5.0)
    d.heartbeat(5.0)  # duplicate at the same instant
    d.heartbeat(4.0)  # time going backwards
    d.heartbeat(6.0)
    stats = d.statistics()
    assert stats["heartbeats"] == 4 and stats["ignored"] == 2 and stats["samples"] == 1
    assert stats["mean_s"] == 1.0 and stats["last_arrival"] == 6.0


def test_acceptable_pause_delays_suspicion() -> None:
    plain = PhiAccrualDetector(min_std_s=0.05)
    patient = PhiAccrualDetector(min_std_s=0.05, acceptable_pause_s=3.0)
    last = feed(plain, [1.0] * 5)
    feed(patient, [1.0] * 5)
    assert patient.phi(last + 2.0) < 1.0 < plain.phi(last + 2.0)
    assert patient.silence_for_phi_s(8) == pytest.approx(plain.silence_for_phi_s(8) + 3.0)


def test_normal_tail_is_continuous_at_the_switch_to_the_asymptotic_form() -> None:
    below = normal_tail_log10(30.0)
    above = normal_tail_log10(30.0 + 1e-9)
    assert above < below
    assert below - above < 1e-6
    assert normal_tail_log10(0.0) == pytest.approx(math.log10(0.5))
    assert normal_tail_log10(5.0) == pytest.approx(math.log10(0.5 * math.erfc(5 / math.sqrt(2))))
    assert quantile_for_phi(1.0) == pytest.approx(1.2815515655446004)


@pytest.mark.parametrize(
    "kwargs",
    [{"window": 0}, {"min_std_s": 0.0}, {"first_interval_s": -1.0}, {"acceptable_pause_s": -0.1}],
)
def test_detector_rejects_bad_parameters(kwargs: dict[str, float]) -> None:
    with pytest.raises(ValueError):
        PhiAccrualDetector(**kwargs)  # type: ignore[arg-type]


# --------------------------------------------------------------------------
# AdaptiveTimeout
# --------------------------------------------------------------------------


def regular(
    timeout: AdaptiveTimeout, peer: int, interval_s: float, count: int, start: float = 0.0
) -> float:
    now = start
    for _ in range(count):
        timeout.record_arrival(peer, now)
        now += interval_s
    return now - interval_s


def test_no_data_gives_initial_timeout() -> None:
    t = AdaptiveTimeout(floor_s=0.1, ceiling_s=10.0, phi_threshold=8, initial_s=2.0)
    assert t.timeout_s() == 2.0
    assert t.timeout_s(peer=3) == 2.0
    t.record_arrival(3, 1.0)
    t.record_arrival(3, 1.2)  # one interval: fewer than min_samples = 2
    assert t.timeout_s(peer=3) == 2.0
    assert t.timeout_s() == 2.0


def test_regular_heartbeats_give_timeout_near_the_interval() -> None:
    t = AdaptiveTimeout(floor_s=0.01, ceiling_s=60.0, phi_threshold=8, min_std_s=0.02)
    regular(t, peer=1, interval_s=0.5, count=50)
    timeout = t.timeout_s(peer=1)
    z = quantile_for_phi(8)
    assert timeout == pytest.approx(0.5 + 0.02 * z)
    assert 0.5 < timeout < 0.7
    assert t.timeout_s() == timeout


def test_jittered_heartbeats_widen_the_timeout() -> None:
    steady = AdaptiveTimeout(floor_s=0.01, ceiling_s=60.0, phi_threshold=8, min_std_s=0.001)
    jittery = AdaptiveTimeout(floor_s=0.01, ceiling_s=60.0, phi_threshold=8, min_std_s=0.001)
    regular(steady, peer=1, interval_s=0.5, count=40)
    now = 0.0
    for i in range(41):  # 40 intervals alternating 0.6 and 0.4: mean 0.5, std 0.1
        jittery.record_arrival(1, now)
        now += 0.4 if i % 2 else 0.6
    assert steady.timeout_s(1) < 0.51
    assert jittery.timeout_s(1) == pytest.approx(0.5 + 0.1 * quantile_for_phi(8), rel=1e-3)


def test_timeout_is_clamped_to_floor_and_ceiling() -> None:
    t = AdaptiveTimeout(floor_s=0.5, ceiling_s=5.0, phi_threshold=8, min_std_s=0.001)
    regular(t, peer=1, interval_s=0.01, count=20)
    regular(t, peer=2, interval_s=100.0, count=20)
    assert t.detector(1) is not None and t.detector(1).silence_for_phi_s(8) < 0.5  # type: ignore
    assert t.timeout_s(peer=1) == 0.5
    assert t.timeout_s(peer=2) == 5.0


def test_median_timeout_is_not_stretched_by_one_slow_peer() -> None:
    t = AdaptiveTimeout(floor_s=0.01, ceiling_s=1000.0, phi_threshold=8, min_std_s=0.01)
    for peer in (1, 2):
        regular(t, peer=peer, interval_s=0.2, count=30)
    regular(t, peer=3, interval_s=50.0, count=30)  # a Byzantine peer pacing itself slowly
    assert t.timeout_s() == pytest.approx(t.timeout_s(peer=1))
    assert t.timeout_s() < 1.0


def test_suspected_lists_silent_peers_with_phi() -> None:
    t = AdaptiveTimeout(floor_s=0.1, ceiling_s=10.0, phi_threshold=8, min_std_s=0.01)
    last = regular(t, peer="a", interval_s=1.0, count=20)
    regular(t, peer="b", interval_s=1.0, count=20)
    t.record_arrival("b", last + 3.0)  # "b" keeps talking; "a" fell silent at `last`
    now = last + 3.5
    suspects = t.suspected(now)
    assert list(suspects) == ["a"]
    assert suspects["a"] == t.phi("a", now) > 8
    assert t.phi("b", now) < 8
    assert t.phi("never heard", now) == 0.0
    assert t.suspected(last + 0.5) == {}


def test_suspicion_starts_when_the_timeout_expires() -> None:
    t = AdaptiveTimeout(floor_s=0.01, ceiling_s=10.0, phi_threshold=5, min_std_s=0.05)
    last = regular(t, peer=0, interval_s=0.3, count=30)
    timeout = t.timeout_s(peer=0)
    assert t.suspected(last + timeout * 0.99) == {}
    assert list(t.suspected(last + timeout * 1.01)) == [0]


def test_statistics_reports_each_peer() -> None:
    t = AdaptiveTimeout(floor_s=0.1, ceiling_s=10.0, phi_threshold=8)
    regular(t, peer=2, interval_s=1.0, count=5)
    stats = t.statistics()
    assert stats["phi_threshold"] == 8.0
    assert stats["peers"]["2"]["samples"] == 4
    assert stats["timeout_s"] == t.timeout_s()


@pytest.mark.parametrize(
    ("args", "kwargs"),
    [
        ((0.0, 1.0), {}),
        ((2.0, 1.0), {}),
        ((0.1, 1.0), {"initial_s": 5.0}),
        ((0.1, 1.0), {"phi_threshold": 0.0}),
        ((0.1, 1.0), {"phi_threshold": 2000.0}),
        ((0.1, 1.0), {"min_samples": 0}),
        ((0.1, 1.0), {"window": 0}),
    ],
)
def test_adaptive_timeout_rejects_bad_parameters(
    args: tuple[float, float], kwargs: dict[str, float]
) -> None:
    with pytest.raises(ValueError):
        AdaptiveTimeout(*args, **kwargs)  # type: ignore[arg-type]


def test_add_interval_records_durations_without_moving_the_last_arrival():
    d = PhiAccrualDetector(window=3, min_std_s=0.01)
    d.heartbeat(10.0)
    for seconds in (0.2, 0.4, 0.6, 0.8):  # the window keeps the last 3
        d.add_interval(seconds)
    d.add_interval(0.0)
    d.add_interval(-1.0)
    stats = d.statistics()
    assert stats["samples"] == 3 and stats["ignored"] == 2
    assert abs(d.mean_s() - 0.6) < 1e-9
    assert d.last_arrival == 10.0


# ------------------------------------------------------------------ RttEstimator (RFC 6298)

def test_rtt_estimator_follows_rfc_6298() -> None:
    """RFC 6298 2.2-2.3: first sample R gives srtt = R, rttvar = R/2; then
    rttvar = 3/4 rttvar + 1/4 |srtt - R'| (with the old srtt), srtt = 7/8 srtt + 1/8 R'."""
    e = RttEstimator()
    assert e.bound_s() is None
    e.observe(0.4)
    assert (e.srtt_s, e.rttvar_s) == (0.4, 0.2)
    assert e.bound_s() == pytest.approx(1.2)
    e.observe(0.8)
    assert e.rttvar_s == pytest.approx(0.75 * 0.2 + 0.25 * 0.4)
    assert e.srtt_s == pytest.approx(0.875 * 0.4 + 0.125 * 0.8)
    with pytest.raises(ValueError):
        e.observe(-0.1)


@given(st.lists(st.floats(0.0, 10.0), min_size=1, max_size=200))
def test_rtt_estimate_stays_within_the_samples_and_bound_above_it(samples: list[float]) -> None:
    e = RttEstimator()
    for s in samples:
        e.observe(s)
    assert e.srtt_s is not None
    assert min(samples) - 1e-9 <= e.srtt_s <= max(samples) + 1e-9
    assert e.bound_s() >= e.srtt_s  # type: ignore[operator]


def test_rtt_estimate_converges_on_a_steady_delay() -> None:
    e = RttEstimator()
    e.observe(0.01)
    for _ in range(100):
        e.observe(0.5)
    assert e.srtt_s == pytest.approx(0.5, abs=1e-4)
    assert e.bound_s() == pytest.approx(0.5, abs=1e-3)
