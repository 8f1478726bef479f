"""Adversarial testing of your own replicated state machine, with the public plugin API only.

`Ledger` stands for a user's application: accounts with balances and transfers. It
implements the StateMachine protocol (execute, snapshot, restore, digest) plus
`random_op(rng, client_id)`, which the simulator uses to generate a workload. The tests run
it under drawn adversarial scenarios in the simulator, and on a real local cluster with a
lying replica, and check the plugin's verdicts plus the application's own invariant (money
is neither created nor destroyed).

With the plugin installed (the `pytest11` entry point), `pytest --bft-app
test_user_api_example:Ledger` would make every `bft_sim` run use this application by
default.
"""

from __future__ import annotations

import hashlib
import json
import random

import trio
from hypothesis import given
from hypothesis import strategies as st

# The plugin's fixtures, for when its `pytest11` entry point is not installed (with it, these
# module-level names just shadow the plugin's own, identical fixtures).
from adversary.pytest_plugin import (  # noqa: F401
    Scenario,
    assert_ok,
    assert_same_state,
    bft_app_factory,
    bft_local_cluster,
    bft_sim,
    make_rule,
    scenarios,
)

ACCOUNTS = ("alice", "bob", "carol", "dave")
START = 100


class Ledger:
    """Accounts and transfers; ops are JSON; a bad op gives an error result, never raises."""

    def __init__(self) -> None:
        self.balances = {a: START for a in ACCOUNTS}

    @staticmethod
    def transfer(source: str, target: str, amount: int) -> bytes:
        return json.dumps({"from": source, "to": target, "amount": amount}).encode()

    def execute(self, op: bytes, ctx: object) -> bytes:
        try:
            t = json.loads(op)
            source, target, amount = t["from"], t["to"], t["amount"]
        except (ValueError, TypeError, KeyError, UnicodeDecodeError):
            return b"error"
        if source not in self.balances or target not in self.balances \
                or not isinstance(amount, int) or amount < 0:
            return b"error"
        if self.balances[source] < amount:
            return b"insufficient"
        self.balances[source] -= amount
        self.balances[target] += amount
        return b"ok"

    def snapshot(self) -> bytes:
        return json.dumps(self.balances, sort_keys=True).encode()

    def restore(self, snapshot: bytes) -> None:
        data = json.loads(snapshot)
        if not isinstance(data, dict) or sorted(data) != sorted(ACCOUNTS):
            raise ValueError("not a ledger snapshot")
        self.balances = {a: int(data[a]) for a in ACCOUNTS}

    def digest(self) -> bytes:
        return hashlib.sha256(self.snapshot()).digest()

    def random_op(self, rng: random.Random, client_id: int) -> bytes:
        source, target = rng.sample(ACCOUNTS, 2)
        return self.transfer(source, target, rng.randrange(0, 60))


def money_is_conserved(run) -> None:  # type: ignore[no-untyped-def]
    for i in run.result.correct:
        app = run.simulation.apps[i]
        if app is not None:
            assert sum(app.balances.values()) == START * len(ACCOUNTS), (i, app.balances)


@given(scenarios(nodes=st.just(4), max_requests=4))
def test_ledger_survives_drawn_adversaries(bft_sim, scenario: Scenario) -> None:  # noqa: F811
    run = bft_sim(scenario, app_factory=Ledger)
    run.check()  # safety, liveness, evidence; on failure: seed, scenario file, replay command
    money_is_conserved(run)


def test_ledger_with_an_equivocating_primary_on_seven_replicas(bft_sim) -> None:  # noqa: F811
    scenario = Scenario((make_rule(0, "equivocate"), make_rule(6, "lie")), (),
                        {"nodes": 7, "seed": 5, "requests": 5})
    run = bft_sim(scenario, app_factory=Ledger)
    assert_ok(run)
    money_is_conserved(run)
    assert run.result.evidence


async def test_ledger_on_a_real_local_cluster(bft_local_cluster) -> None:  # noqa: F811
    cluster = bft_local_cluster(scenario=Scenario((make_rule(3, "lie"),)),
                                app="test_user_api_example:Ledger")
    with trio.fail_after(60):
        async with cluster.running():
            async with cluster.client(0) as client:
                for k in range(10):
                    result = await client.call(Ledger.transfer("alice", "bob", 7), timeout_s=20)
                    assert result == (b"ok" if 7 * (k + 1) <= START else b"insufficient")
            await cluster.barrier()
    assert_same_state(cluster.summaries, nodes=cluster.honest())
    expected = Ledger()
    for _ in range(10):
        expected.execute(Ledger.transfer("alice", "bob", 7), None)
    assert cluster.summaries[0]["state_digest"] == expected.digest().hex()
