"""Hypothesis-drawn simulator scenarios (issue 3, DESIGN.md "The deterministic simulator"):
n in {4, 7}; up to f replicas crashed (some restarted) or silent, the primary included;
up to 30 % loss, duplication and reordering; a partition that heals. Safety always holds;
once the faults stop every request completes and the replicas that are up converge.

A failing example prints its seed and the drawn SimConfig: replay it with
`Simulation(<that config>).run(300)`.
"""

from __future__ import annotations

from hypothesis import given, settings
from hypothesis import strategies as st

from adversary.sim import Crash, Partition, Silence, SimConfig, Simulation


@st.composite
def scenarios(draw) -> SimConfig:
    n = draw(st.sampled_from([4, 7]))
    f = (n - 1) // 3
    faulty = draw(st.lists(st.integers(0, n - 1), unique=True, max_size=f))
    crashes, silent = [], []
    for node in faulty:
        at = draw(st.floats(0.0, 2.0))
        kind = draw(st.sampled_from(["crash", "crash-restart", "silent"]))
        if kind == "silent":
            silent.append(Silence(node, at, at + draw(st.floats(0.5, 3.0))))
        else:
            restart = at + draw(st.floats(0.5, 3.0)) if kind == "crash-restart" else None
            crashes.append(Crash(node, at, restart))
    partitions = []
    if draw(st.booleans()):
        members = draw(st.permutations(range(n)))
        k = draw(st.integers(1, n - 1))
        start = draw(st.floats(0.0, 2.0))
        partitions.append(Partition((tuple(members[:k]), tuple(members[k:])), start,
                                    start + draw(st.floats(0.5, 3.0))))
    loss = draw(st.sampled_from([0.0, 0.05, 0.1, 0.2, 0.3]))
    small_log = draw(st.booleans())
    return SimConfig(
        seed=draw(st.integers(0, 2**32 - 1)), nodes=n, clients=draw(st.integers(1, 3)),
        requests=draw(st.integers(3, 10)), drop=loss,
        duplicate=draw(st.sampled_from([0.0, 0.05])), reorder=draw(st.sampled_from([0.0, 0.2])),
        crashes=tuple(crashes), silent=tuple(silent), partitions=tuple(partitions),
        cluster_overrides={"checkpoint_interval": 4, "log_window": 8} if small_log else {})


@settings(deadline=None)  # example count from the profile (tests/conftest.py)
@given(scenarios())
def test_safety_always_liveness_after_faults(cfg: SimConfig) -> None:
    print(f"seed={cfg.seed} {cfg}")
    result = Simulation(cfg).run(300)
    assert result.safety_ok, result.violations
    assert result.liveness_ok, result.violations
    assert result.completed_requests == result.requests
    silent = {s.node for s in cfg.silent}
    up = {k: v for k, v in result.last_executed.items() if int(k) not in silent}
    assert len(set(up.values())) == 1, f"replicas did not converge: {result.last_executed}"
