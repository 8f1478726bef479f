"""Hypothesis draws adversarial schedules: up to f misbehaving replicas mixing behaviours,
plus network faults that end. Safety always, liveness after the faults, evidence for every
equivocation. A failure is shrunk by hypothesis to a short scenario, which `SimRun.check`
saves to a file and prints with its seed and the `bft sim --scenario FILE` replay command.
"""

from __future__ import annotations

from pathlib import Path

from hypothesis import HealthCheck, find, given, settings
from hypothesis import strategies as st

from adversary.pytest_plugin import run_scenario
from adversary.scenario import Scenario, load_scenario
from adversary.strategies import scenarios
from bft.replica import Replica
from bft.viewchange import Geometry


@given(scenarios())
def test_drawn_schedules_keep_safety_liveness_and_evidence(scenario: Scenario) -> None:
    run = run_scenario(scenario)
    print(f"seed={run.seed} rules={[(r.node, r.behaviour) for r in scenario.rules]} "
          f"faults={[f.kind for f in scenario.network]}")
    run.check()


class _QuorumOf2f(Replica):
    def __init__(self, *args, **kwargs) -> None:  # type: ignore[no-untyped-def]
        super().__init__(*args, **kwargs)
        self.quorum = 2 * self.f
        self.geo = Geometry(self.n, self.f, self.config.log_window, self.quorum)


def _broken(ctx):  # type: ignore[no-untyped-def]
    return _QuorumOf2f(ctx.config, ctx.replica_id, signer=ctx.signer, verifier=ctx.verifier,
                       app=ctx.app, recovered=ctx.recovered, digest_every_batch=True)


def test_a_failure_shrinks_to_a_replayable_scenario_file(tmp_path: Path) -> None:
    """Against a broken replica (certificates of 2f), hypothesis finds an unsafe schedule and
    shrinks it to a minimal one; the saved file replays the violation."""
    def unsafe(scenario: Scenario) -> bool:
        return not run_scenario(scenario, node_factory=_broken).result.safety_ok

    drawn = scenarios(nodes=st.just(4), behaviours=("equivocate", "slow", "lie"),
                      max_faulty=1, network=False, twins=False, max_requests=3)
    # derandomize: the same search (and shrink) on every run; a random one shrank to two
    # identical rules now and then, which is as small in effect but not in length
    minimal = find(drawn, unsafe, settings=settings(max_examples=200, database=None,
                                                    deadline=None, derandomize=True,
                                                    suppress_health_check=list(HealthCheck)))
    assert len(minimal.rules) == 1 and minimal.rules[0].behaviour == "equivocate"
    run = run_scenario(minimal, node_factory=_broken)
    path = run.save(tmp_path)
    print(f"shrunk to:\n{path.read_text()}\nreplay: {run.replay_command(path)}")
    replayed = run_scenario(load_scenario(path), node_factory=_broken)
    assert not replayed.result.safety_ok
    assert replayed.result.trace_hash == run.result.trace_hash
