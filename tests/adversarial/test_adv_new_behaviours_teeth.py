"""The issue-19 behaviours have teeth: each reaches an issue-18 bug it is meant to reach.

For two behaviours, a Replica subclass re-plants one bug that issue 18 fixed (the code of
c9f30a9 had it), and a seeded simulation with the behaviour makes the checkers fail on some
seed among the first three, while the honest Replica passes those very seeds:

* `bad-new-view` (mode `reissue`) + slots made from a NEW-VIEW's O left at view -1 (issue 18,
  1d; PROTOCOL.md "Normal case": slots filled from a NEW-VIEW's O belong to v+1, and a
  correct replica never signs two PREPAREs for one (v, seq));
* `crash-at` (right after the primary sends a PRE-PREPARE) + a restarted primary that
  proposes again from its last executed seq over the pre-prepares it signed before the
  crash (issue 18, 2f; PROTOCOL.md "Crash recovery": never sign what conflicts with an
  earlier signature; rule 4 of the normal case).

`withhold` and `bogus-chunks` have no such test: the bugs they target (1a: a COMMIT signed in
a view change; 2b: state chunks taken from anyone) need a message schedule that a replica
cannot bring about by itself (which COMMITs are lost, when another replica's chunks
arrive); tests/test_safety_regressions.py and tests/test_liveness_regressions.py craft them.
"""

from __future__ import annotations

from typing import Any

import pytest

from adversary.behaviours import make_rule
from adversary.netfaults import make_network_rule
from adversary.pytest_plugin import run_scenario
from adversary.scenario import Scenario
from bft.replica import Replica

SEEDS = (1, 2, 3)


def _factory(cls: type) -> Any:
    def build(ctx: Any) -> Any:
        return cls(ctx.config, ctx.replica_id, signer=ctx.signer, verifier=ctx.verifier,
                   app=ctx.app, recovered=ctx.recovered,
                   digest_every_batch=ctx.digest_every_batch, reply_auth=ctx.reply_auth)

    return build


class NewViewSlotsWithoutView(Replica):
    """Planted bug (issue 18, 1d, as at c9f30a9): a slot that a NEW-VIEW's O made keeps view
    -1, so the next PREPARE for it resets it, wiping the NEW-VIEW's pre-prepare and the
    replica's own PREPARE: a later PRE-PREPARE with another digest is then accepted."""

    def _enter_view(self, nv_signed: Any, plan: Any) -> None:
        before = set(self.log.slots)
        super()._enter_view(nv_signed, plan)
        for pp in nv_signed.statement.pre_prepares:
            slot = self.log.get(pp.statement.seq)
            if pp.statement.seq not in before and slot is not None and slot.decided is None:
                slot.view = -1
                self.counters["planted_view_minus_one"] += 1


class RestartedPrimaryReusesSeqs(Replica):
    """Planted bug (issue 18, 2f, in a simpler form): after a restart the primary proposes from
    its last executed seq on, over the pre-prepares of its view it signed before the crash
    (recovery ignores them for next_seq, and `_propose` no longer skips a held seq)."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        if kwargs.get("recovered") is not None:
            self.next_seq = max(self.log.low, self.last_executed) + 1
            self.counters["planted_restart"] += 1

    def _propose(self) -> None:
        held = self.log.get(self.next_seq)
        if (self.counters["planted_restart"] and held is not None and held.view == self.view
                and held.pre_prepare is not None):
            held.pre_prepare = None  # forgets what it signed for this (view, seq)
        super()._propose()


def cut(group: list[int], start: float, stop: float) -> Any:
    return make_network_rule("partition", groups=[group], start_s=start, stop_s=stop)


def bad_new_view_scenario(seed: int) -> Scenario:
    """Replica 3 is cut off from 0.3 s to 2 s, primary 0 from 0.8 s to 4 s: replicas 1 and 2
    order many seqs that replica 3 never hears of, then change view with it (primary 1,
    Byzantine, `reissue`). Loss recovery relays only 32 decided seqs per STATUS, so the
    NEW-VIEW makes replica 3's slots for the rest; primary 1 then sends it fresh
    PRE-PREPAREs with other batches for them."""
    rules = (make_rule(1, "bad-new-view", params={"mode": "reissue"}),)
    sim = {"nodes": 4, "seed": seed, "requests": 60, "clients": 4, "think_ms": [0.0, 20.0],
           "checkpoint_interval": 64, "log_window": 128}
    return Scenario(rules, (cut([3], 0.3, 2.0), cut([0], 0.8, 4.0)), sim, {},
                    "bad-new-view reissue against NEW-VIEW slots")


def crash_at_scenario(seed: int) -> Scenario:
    """Primary 0 crashes right after it sends a PRE-PREPARE (from 0.3 s on) and restarts from
    its WAL 50 ms later, before the backups suspect it; clients keep sending."""
    rules = (make_rule(0, "crash-at", start_s=0.3,
                       params={"event": "pre_prepare", "restart_after_s": 0.05}),)
    sim = {"nodes": 4, "seed": seed, "requests": 30, "clients": 4, "think_ms": [0.0, 30.0]}
    return Scenario(rules, (), sim, {}, "the primary crashes right after a PRE-PREPARE")


@pytest.mark.parametrize("scenario, planted, counter, reason", [
    (bad_new_view_scenario, NewViewSlotsWithoutView, "planted_view_minus_one",
     "evidence: correct replica 3 signed conflicting messages (prepare"),
    (crash_at_scenario, RestartedPrimaryReusesSeqs, "planted_restart",
     "evidence: correct replica 0 signed conflicting messages (pre_prepare"),
], ids=["bad-new-view/1d", "crash-at/2f"])
def test_a_planted_issue_18_bug_is_found_within_three_seeds(scenario: Any, planted: type,
                                                            counter: str, reason: str) -> None:
    """Seeds are tried in order until the planted bug is caught; the honest replica passes
    every seed tried."""
    caught = None
    for seed in SEEDS:
        print(f"seed={seed}")
        run_scenario(scenario(seed)).check()  # the current replica passes this very seed
        buggy = run_scenario(scenario(seed), node_factory=_factory(planted))
        replicas = [getattr(n, "inner", n) for n in buggy.simulation.nodes if n is not None]
        assert any(r.counters[counter] for r in replicas), "the planted bug never ran"
        if not buggy.result.safety_ok:
            caught = (seed, buggy.result.violations)
            break
    assert caught is not None, f"the planted bug went unnoticed on seeds {SEEDS}"
    print(f"caught on seed {caught[0]}: {caught[1][0]}")
    assert any(v.startswith(reason) for v in caught[1]), caught[1]
