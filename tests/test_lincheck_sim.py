"""`bft check` and the simulator's own LinearizabilityChecker agree on simulator histories
(issue 22 item 2).

The simulator's checker knows the agreed order (white box); `bft check` sees only the
history file. On honest runs both must pass. With f+1 colluding replicas that lie in
their replies (a planted bug: the client accepts f+1 matching wrong results) the
simulator's checker fails, and `bft check` must fail on the same runs, from the history
alone. Property: the verdicts are equal on every drawn run.

What a history cannot show: the simulator's checker also sees inside the replicas. With
f+1 liars telling every kind of lie (`bft sim --byzantine 1:lie --byzantine 2:lie --seed
2022 --clients 3 --requests 15 --keys 2 --drop 0.05`) it reports "completed but was never
executed by a correct replica" for an op the two liars executed and answered truthfully
while the correct replicas made no progress: a history with nothing read afterwards is
linearizable, and `bft check` says so. The drawn runs use reply lies only, whose effects
are all visible to clients.

CI runs 30 examples; on demand: `BFT_CHECK_EXAMPLES=1000 python -m pytest -q -s
tests/test_lincheck_sim.py` (the count and time of such a run are in benchmarks/RESULTS.md).
Failed before the fix: bft/lincheck.py did not exist (ImportError).
"""

from __future__ import annotations

import os

from hypothesis import given, settings
from hypothesis import strategies as st

from adversary.behaviours import make_rule
from adversary.sim import SimConfig, Simulation
from bft.lincheck import check, format_verdict, parse_history

EXAMPLES = int(os.environ.get("BFT_CHECK_EXAMPLES", "30"))


def verdicts(seed: int, liars: int, rate: float, clients: int, requests: int, keys: int,
             lock_fraction: float, drop: float, reorder: float) -> tuple[bool, bool, str]:
    rules = tuple(make_rule(node, "lie", params={"lies": ["reply_result"], "rate": rate})
                  for node in range(1, 1 + liars))
    sim = Simulation(SimConfig(seed=seed, clients=clients, requests=requests, key_count=keys,
                               lock_fraction=lock_fraction, drop=drop, reorder=reorder,
                               adversary=rules, history=True))
    result = sim.run(60)
    assert sim.history is not None
    sim_ok = not any(v.startswith("linearizability:") for v in result.violations)
    verdict = check(parse_history(sim.history.lines()))
    assert verdict.ok is not None
    return sim_ok, verdict.ok, format_verdict(verdict)


@settings(max_examples=EXAMPLES, deadline=None)
@given(seed=st.integers(0, 2**32 - 1), liars=st.sampled_from([0, 1, 2]),
       rate=st.sampled_from([0.1, 0.5, 1.0]), clients=st.integers(1, 4),
       requests=st.integers(3, 25), keys=st.integers(1, 3),
       lock_fraction=st.sampled_from([0.0, 0.1, 0.4]), drop=st.sampled_from([0.0, 0.05]),
       reorder=st.sampled_from([0.0, 0.1]))
def test_bft_check_agrees_with_the_simulators_checker(seed, liars, rate, clients, requests,
                                                      keys, lock_fraction, drop, reorder):
    print(f"seed={seed} liars={liars} rate={rate} clients={clients} requests={requests} "
          f"keys={keys} lock_fraction={lock_fraction} drop={drop} reorder={reorder}")
    sim_ok, check_ok, report = verdicts(seed, liars, rate, clients, requests, keys,
                                        lock_fraction, drop, reorder)
    print(f"verdicts: simulator {'ok' if sim_ok else 'violation'}, "
          f"bft check {'ok' if check_ok else 'violation'}")
    assert sim_ok == check_ok, report
    if liars <= 1:  # at most f faulty: nothing may be wrong
        assert sim_ok, report


def test_the_planted_lie_is_caught_by_both():
    """The property above has teeth: this run with f+1 colluding liars fails both checkers
    (seed and parameters fixed; found with the property)."""
    seed = 7
    print(f"seed={seed}")
    sim_ok, check_ok, report = verdicts(seed, 2, 1.0, 2, 10, 2, 0.1, 0.0, 0.0)
    print(report)
    assert (sim_ok, check_ok) == (False, False)
