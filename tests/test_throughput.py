"""The throughput monitor (bft/throughput.py): Aardvark's adaptive view change (NSDI'09 4.3),
driven directly with made-up windows (no randomness, simulated time only)."""

from __future__ import annotations

import pytest

from bft.config import ClusterConfig
from bft.errors import ConfigError
from bft.throughput import ThroughputMonitor


def _monitor(**kw: float) -> ThroughputMonitor:
    args = dict(window_s=1.0, min_fraction=0.5, max_fraction=0.8, raise_per_window=0.01,
                grace_s=2.0, history_views=1, batch_delay_s=0.0, max_in_flight=8)
    args.update(kw)
    return ThroughputMonitor(**args)  # type: ignore[arg-type]


def _window(m: ThroughputMonitor, start: float, backlog: int, executed: int,
            agreement_s: float = 0.01, steps: int = 10) -> object:
    """One second with `backlog` requests outstanding throughout and `executed` executed."""
    for k in range(1, steps + 1):
        m.advance(start + k / steps, backlog, 1)
        m.executed(executed // steps, agreement_s)
    return m.poll(start + 1.0)


def test_a_view_that_falls_to_a_fifth_of_its_throughput_is_judged_slow() -> None:
    """Aardvark 4.3: the bar is what the view achieved; the same backlog served 5x slower
    fails, twice in a row makes the replica act (one failing window does not)."""
    m = _monitor()
    m.enter_view(0.0)
    verdicts = [_window(m, float(t), 4, 400) for t in range(5)]
    assert verdicts[0] is None  # grace: the window ending before grace_s is not judged
    assert all(v is not None and not v.failed for v in verdicts[1:])
    first = _window(m, 5.0, 4, 80)
    assert first is not None and first.failed and not first.act
    second = _window(m, 6.0, 4, 80)
    assert second is not None and second.failed and second.act


def test_a_smaller_backlog_served_as_fast_passes() -> None:
    """Little's law: a quarter of the backlog (fewer clients) gets a quarter of the
    throughput, at the same mean wait: no judgment against the view."""
    m = _monitor()
    m.enter_view(0.0)
    for t in range(4):
        _window(m, float(t), 8, 800)
    for t in range(4, 10):
        v = _window(m, float(t), 2, 200)
        assert v is not None and not v.failed, v


def test_idle_and_light_windows_are_not_judged() -> None:
    m = _monitor()
    m.enter_view(0.0)
    for t in range(4):
        _window(m, float(t), 4, 400)
    assert _window(m, 4.0, 0, 0) is None  # idle
    m.advance(5.2, 1, 1)  # a request outstanding for a tenth of the window, then done
    m.advance(5.3, 0, 0)
    assert m.poll(6.0) is None


def test_the_required_fraction_rises_during_the_view() -> None:
    """Aardvark raises the bar during a view so that a primary cannot stay just above it:
    a view at 60 % of the best it did passes at first (bar 50 %) and fails once the bar
    passed 60 %; the bar stops at max_fraction."""
    m = _monitor(raise_per_window=0.02)
    m.enter_view(0.0)
    for t in range(3):
        _window(m, float(t), 4, 1000)
    fractions, failed = [], []
    for t in range(3, 30):
        v = _window(m, float(t), 4, 600)
        assert v is not None
        fractions.append(round(v.fraction, 2))
        failed.append(v.failed)
        if v.act:
            break
    assert fractions[0] < 0.6 and not failed[0]
    assert failed[-1] and fractions[-1] > 0.6
    assert max(fractions) <= 0.8


def test_first_view_bar_from_the_agreement_time() -> None:
    """Before any view set a bar, a request should wait no longer than twice the measured
    agreement time (pre-prepare -> execution): a primary that makes every request wait
    50 agreement times fails from the first judged window. A window with the pipeline full
    (overload: requests queue at the primary) is not held to that bar; it sets the bar."""
    m = _monitor()
    m.enter_view(0.0)
    for t in range(2):
        _window(m, float(t), 4, 8, agreement_s=0.01)  # 0.5 s per request
    v = _window(m, 2.0, 4, 8, agreement_s=0.01)
    assert v is not None and v.failed
    full = _monitor()
    full.enter_view(0.0)
    for t in range(4):
        for k in range(1, 11):
            full.advance(t + k / 10, 4, 8)  # max_in_flight slots in flight: overload
            full.executed(1, 0.01)
        v = full.poll(t + 1.0)
        assert v is None or not v.failed


def test_off_when_the_window_is_zero() -> None:
    m = _monitor(window_s=0.0)
    m.enter_view(0.0)
    for t in range(6):
        assert _window(m, float(t), 4, 10 if t > 3 else 400) is None


@pytest.mark.parametrize("key, value", [("min_throughput_fraction", 0.3),
                                        ("min_throughput_fraction", 0.95),
                                        ("max_throughput_fraction", 0.4),
                                        ("throughput_raise", 0.5),
                                        ("throughput_window_s", -1.0),
                                        ("throughput_grace_s", -1.0)])
def test_config_rejects_out_of_range(key: str, value: float) -> None:
    data = {"cluster": {"name": "t", "f": 1},
            "nodes": [{"id": i, "address": f"127.0.0.1:{7100 + i}"} for i in range(4)],
            "clients": {"count": 1}, "timeouts": {key: value}}
    with pytest.raises(ConfigError) as err:
        ClusterConfig.from_dict(data)
    assert f"timeouts.{key}" in str(err.value)


def test_config_defaults_and_keys() -> None:
    data = {"cluster": {"name": "t", "f": 1},
            "nodes": [{"id": i, "address": f"127.0.0.1:{7100 + i}"} for i in range(4)],
            "clients": {"count": 1},
            "timeouts": {"throughput_window_s": 2.0, "min_throughput_fraction": 0.6}}
    c = ClusterConfig.from_dict(data)
    assert (c.throughput_window_s, c.min_throughput_fraction) == (2.0, 0.6)
    d = ClusterConfig.local(4)
    assert (d.throughput_window_s, d.throughput_grace_s, d.min_throughput_fraction,
            d.max_throughput_fraction, d.throughput_raise) == (1.0, 2.0, 0.5, 0.8, 0.01)
