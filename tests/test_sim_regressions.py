"""Seeded simulator regressions: scenarios that once broke safety or liveness.

Each seed below drew a scenario (n, loss, crashes, partitions, checkpoint
interval) with `scenario(seed)`; the comment says what it found. Replay one
with `python -c "from tests.test_sim_regressions import replay; replay(SEED)"`
from the repository root (or run this file with -k SEED).
"""

from __future__ import annotations

import random

import pytest

from adversary.sim import Crash, Partition, SimConfig, Simulation


def scenario(seed: int) -> SimConfig:
    """The random scenario of `seed` (the generator used by the sweeps that found these)."""
    rng = random.Random(seed)
    n = rng.choice([4, 4, 7])
    f = (n - 1) // 3
    drop = rng.choice([0, 0.05, 0.1, 0.2, 0.3])
    crashes = []
    for v in rng.sample(range(n), rng.randint(0, f)):
        at = rng.uniform(0, 3)
        crashes.append(Crash(v, at, at + rng.uniform(0.5, 4) if rng.random() < 0.6 else None))
    partitions: tuple[Partition, ...] = ()
    if rng.random() < 0.3:
        nodes = list(range(n))
        rng.shuffle(nodes)
        k = rng.randint(1, n - 1)
        a = rng.uniform(0, 3)
        partitions = (Partition((tuple(nodes[:k]), tuple(nodes[k:])), a, a + rng.uniform(0.5, 4)),)
    overrides = rng.choice([{}, {"checkpoint_interval": 4, "log_window": 8},
                            {"checkpoint_interval": 8, "log_window": 16}])
    return SimConfig(seed=seed, nodes=n, clients=rng.randint(1, 4), requests=rng.randint(5, 20),
                     drop=drop, duplicate=rng.choice([0, 0.05, 0.1]),
                     reorder=rng.choice([0, 0.1, 0.3]), crashes=tuple(crashes),
                     partitions=partitions, cluster_overrides=overrides)


def replay(seed: int):
    cfg = scenario(seed)
    print(f"seed={seed} {cfg}")
    result = Simulation(cfg).run(300)
    print(result.violations, result.last_executed)
    return result


REGRESSIONS = {
    9: "a replica cut off by a partition stayed behind: checkpoint proofs were only resent "
       "to peers in the same view",
    75: "lost CHECKPOINTs left a replica's watermarks at 0 forever while it executed on: "
        "the primary could not propose above them (and timeouts doubled to minutes)",
    79: "a lagging replica dropped its own COMMIT inside a relayed commit certificate as "
        "'own_message', so the certificate never reached 2f+1",
    91: "a replica alone in a view change never caught up (no relay of decided seqs across "
        "views)",
    139: "with the node's timer contract (no extra periodic tick), a tick left the progress "
         "deadline due (heard + T == now but now - heard < T in floats) and set no new timer",
    224: "a slot decided by certificate whose batch arrived later was never executed",
    275: "the same timer stall as 139, with a partition",
    329: "a restarted replica dropped its own pre-crash CHECKPOINT inside a relayed stable "
         "proof as 'own_message', so the proof never reached 2f+1 and it never transferred "
         "the state",
    435: "nobody resent its own CHECKPOINT when no checkpoint became stable at all",
    498: "a decided slot's batch request was forgotten on entering a new view "
         "(needed_batches cleared), so relayed batches were ignored",
}


@pytest.mark.parametrize("seed", sorted(REGRESSIONS))
def test_seeded_regression(seed):
    result = replay(seed)
    assert result.safety_ok, result.violations
    assert result.liveness_ok, result.violations
    assert result.completed_requests == result.requests
    up = result.last_executed
    assert len(set(up.values())) == 1, f"replicas did not converge: {up} ({REGRESSIONS[seed]})"
    assert len(set(result.state_digests.values())) == 1


def test_stale_state_transfer_is_replaced_by_a_newer_stable_checkpoint():
    """Drawn by tests/test_sim_properties.py (seed 4884138, after the loss-recovery change
    of issue 7): replica 3 fell behind, started a state transfer to checkpoint 4, and the
    others then made checkpoint 8 stable and discarded 4. Its proof of 8 was ignored while
    the transfer to 4 (which nobody could serve any more) went on, and decided slots
    without their batches counted as 'can catch up from the log'. It never converged."""
    cfg = SimConfig(seed=4884138, nodes=7,
                    cluster_overrides={"checkpoint_interval": 4, "log_window": 8},
                    clients=1, requests=8, key_count=3, lock_fraction=0.1,
                    think_ms=(0.0, 0.0), delay_ms=(1.0, 5.0), drop=0.05, reorder=0.2)
    print(f"seed={cfg.seed}")
    result = Simulation(cfg).run(300)
    assert result.safety_ok, result.violations
    assert result.liveness_ok, result.violations
    assert len(set(result.last_executed.values())) == 1, result.last_executed
    assert len(set(result.state_digests.values())) == 1
