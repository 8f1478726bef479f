"""The checkers have teeth: beyond the fault model, they report the violation.

* f+1 colluding equivocators (the primary and a backup, each sending version A to one half
  of the honest replicas and version B to the other, nobody seeing both): the honest halves
  commit different batches at one sequence number, and the agreement checker says so.
* A deliberately broken replica, with certificates of 2f instead of 2f+1: one equivocating
  primary (f = 1) is then enough to split the honest replicas.
* A replica that skips signature checks: a lying primary's invented request gets executed,
  and the validity checker says so.
"""

from __future__ import annotations

import pytest

from adversary.behaviours import make_rule
from adversary.pytest_plugin import run_scenario
from adversary.scenario import Scenario
from bft.replica import Replica
from bft.viewchange import Geometry

SIM = {"requests": 4, "clients": 2, "think_ms": [20.0, 150.0]}


class BrokenQuorumReplica(Replica):
    """A replica whose certificates need 2f matching messages instead of 2f+1 (a bug)."""

    def __init__(self, *args, **kwargs) -> None:  # type: ignore[no-untyped-def]
        super().__init__(*args, **kwargs)
        self.quorum = 2 * self.f
        self.geo = Geometry(self.n, self.f, self.config.log_window, self.quorum)


class TrustingVerifier:
    """A verifier that believes every signature (a replica that skips the checks)."""

    def __init__(self, real) -> None:  # type: ignore[no-untyped-def]
        self.real = real

    def verify(self, signed) -> bool:  # type: ignore[no-untyped-def]
        return True

    def verify_deep(self, message) -> bool:  # type: ignore[no-untyped-def]
        return True

    def __getattr__(self, name):  # type: ignore[no-untyped-def]
        return getattr(self.real, name)


def broken_quorum(ctx):  # type: ignore[no-untyped-def]
    return BrokenQuorumReplica(ctx.config, ctx.replica_id, signer=ctx.signer,
                               verifier=ctx.verifier, app=ctx.app, recovered=ctx.recovered,
                               digest_every_batch=True)


def trusting(ctx):  # type: ignore[no-untyped-def]
    return Replica(ctx.config, ctx.replica_id, signer=ctx.signer,
                   verifier=TrustingVerifier(ctx.verifier), app=ctx.app,
                   recovered=ctx.recovered, digest_every_batch=True)


def equivocators(*nodes: int) -> tuple:
    return tuple(make_rule(i, "equivocate", params={"overlap": 0}) for i in nodes)


@pytest.mark.parametrize("n, colluders", [(4, (0, 1)), (7, (0, 1, 2))])
@pytest.mark.parametrize("seed", [1, 2])
def test_f_plus_one_colluding_equivocators_break_agreement(n: int, colluders: tuple,
                                                          seed: int) -> None:
    scenario = Scenario(equivocators(*colluders), (), {"nodes": n, "seed": seed, **SIM})
    run = run_scenario(scenario)
    print(f"seed={run.seed} replay: {run.replay_command()}")
    assert not run.result.safety_ok
    assert any(v.startswith("agreement:") for v in run.result.violations), run.result.violations
    with pytest.raises(AssertionError, match="replay: bft sim --scenario"):
        run.check()


@pytest.mark.parametrize("seed", [1, 2, 3])
def test_a_quorum_of_2f_is_caught(seed: int) -> None:
    scenario = Scenario(equivocators(0), (), {"nodes": 4, "seed": seed, **SIM})
    run = run_scenario(scenario, node_factory=broken_quorum)
    print(f"seed={run.seed}")
    assert any(v.startswith("agreement:") for v in run.result.violations), run.result.violations


def test_skipping_signature_checks_is_caught() -> None:
    liar = make_rule(0, "lie", params={"rate": 1.0, "lies": ["invented_request"]})
    scenario = Scenario((liar,), (), {"nodes": 4, "seed": 4, **SIM})
    run = run_scenario(scenario, node_factory=trusting)
    print(f"seed={run.seed}")
    assert any(v.startswith("validity:") for v in run.result.violations), run.result.violations
    honest = run_scenario(scenario)  # the real verifier drops the forged batches
    assert honest.result.safety_ok, honest.result.violations
