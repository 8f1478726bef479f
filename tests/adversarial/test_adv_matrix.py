"""The adversarial matrix: every behaviour x {primary, backup} x n in {4, 7}, in the simulator.

Each case makes f replicas misbehave (the primary of view 0 and, for n = 7, a backup; or
f backups) for the whole run, on a network with seeded random faults (loss, duplication,
reordering, delay, corruption) that stop at 3 s. Every case must keep safety (the checkers
judge only the correct replicas), complete every request after the faults stop
(liveness), and leave evidence for every equivocation that reached a correct replica (the
evidence witness). A failing case prints its seed, saves its scenario and prints the
`bft sim --scenario FILE` command that replays it.
"""

from __future__ import annotations

import random
import zlib

import pytest

from adversary.behaviours import make_rule
from adversary.netfaults import make_network_rule
from adversary.pytest_plugin import assert_evidence_against, run_scenario
from adversary.scenario import Scenario

BEHAVIOURS = ("lie", "equivocate", "pause", "crash", "silent", "replay", "clock-skew", "slow")
ROLES = ("primary", "backup")
FAULTS_STOP_S = 3.0

#: Parameters and windows per behaviour (the rest: defaults, for the whole run).
SETUP = {
    "pause": {"start_s": 0.2, "params": {"duration_s": 2.0}},
    "crash": {"start_s": 0.3, "params": {"restart_after_s": 2.0}},
    "lie": {"params": {"rate": 0.7}},
    "replay": {"params": {"interval_s": 0.05, "count": 3}},
}


def faulty_nodes(role: str, n: int) -> list[int]:
    """f replicas: the view-0 primary (and backups), or backups only."""
    f = (n - 1) // 3
    if role == "primary":
        return [0] + [n - 1 - k for k in range(f - 1)]
    return [n - 1 - k for k in range(f)]


def random_network(rng: random.Random) -> list:
    """A few seeded network faults, all ending at FAULTS_STOP_S."""
    faults = []
    if rng.random() < 0.7:
        faults.append(make_network_rule("drop", rate=rng.choice([0.02, 0.05, 0.1]),
                                        stop_s=FAULTS_STOP_S))
    if rng.random() < 0.5:
        faults.append(make_network_rule("duplicate", rate=0.05, stop_s=FAULTS_STOP_S))
    if rng.random() < 0.5:
        faults.append(make_network_rule("reorder", rate=0.2, delay_ms=20.0,
                                        stop_s=FAULTS_STOP_S))
    if rng.random() < 0.4:
        faults.append(make_network_rule("delay", delay_ms=10.0, jitter_ms=5.0,
                                        stop_s=FAULTS_STOP_S))
    if rng.random() < 0.3:
        faults.append(make_network_rule("corrupt", rate=0.03, stop_s=FAULTS_STOP_S))
    return faults


def case_scenario(behaviour: str, role: str, n: int) -> Scenario:
    name = f"{behaviour}/{role}/{n}"
    rng = random.Random(name)
    setup = SETUP.get(behaviour, {})
    rules = tuple(make_rule(node, behaviour, start_s=setup.get("start_s", 0.0),
                            params=setup.get("params")) for node in faulty_nodes(role, n))
    sim = {"nodes": n, "seed": zlib.crc32(name.encode()), "requests": 4, "clients": 2,
           "think_ms": [20.0, 150.0]}
    return Scenario(rules, tuple(random_network(rng)), sim, {}, f"matrix case {name}")


@pytest.mark.parametrize("n", [4, 7])
@pytest.mark.parametrize("role", ROLES)
@pytest.mark.parametrize("behaviour", BEHAVIOURS)
def test_matrix(behaviour: str, role: str, n: int) -> None:
    scenario = case_scenario(behaviour, role, n)
    run = run_scenario(scenario)
    r = run.result
    print(f"seed={r.seed} faulty={faulty_nodes(role, n)} view_changes={r.view_changes} "
          f"evidence={len(r.evidence)} witness={r.witness}")
    run.check()  # safety, liveness after the faults stop, evidence for every equivocation
    assert r.completed_requests == r.requests
    if behaviour == "equivocate":
        # one correct replica receives both versions (overlap = 1): it must hold a proof
        assert r.witness["expected"] > 0, r.witness
        assert_evidence_against(run, faulty_nodes(role, n)[0])
    if behaviour in ("pause", "crash", "clock-skew", "slow", "replay"):
        assert set(faulty_nodes(role, n)) <= set(r.correct) or behaviour == "crash"


def test_matrix_twins() -> None:
    """Twins of the primary (n = 4 and 7): safe, live, and the conflict is proven."""
    for n in (4, 7):
        rules = (make_rule(0, "twins"),)
        sim = {"nodes": n, "seed": 11 + n, "requests": 4, "clients": 2, "think_ms": [20.0, 150.0]}
        run = run_scenario(Scenario(rules, (), sim, {}, f"twins n={n}")).check()
        print(f"n={n} seed={run.seed} evidence={len(run.result.evidence)}")
        assert_evidence_against(run, 0)


def test_matrix_case_is_replayable() -> None:
    """A case's saved scenario replays to the same run (same trace hash)."""
    scenario = case_scenario("equivocate", "primary", 4)
    first = run_scenario(scenario)
    path = first.save()
    print(first.replay_command(path))
    again = run_scenario(path)
    assert again.result.trace_hash == first.result.trace_hash
