"""The fencing-token story (issue 5 item 3; DDIA Figure 8-5), as a simulated scenario.

Client 0 takes lock L with a lease, its process pauses past the lease; client 1 takes the
lock (a newer token) and writes with it; client 0 wakes up and writes with its old token:
the store rejects the stale write, and nothing is lost or overwritten.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from bft.history import check_history_shape
from adversary.pytest_plugin import run_scenario
from adversary.scenario import Scenario, load_scenario
from adversary.workloads import FencingStory, _Holder
from bft.app import Ops

ROOT = Path(__file__).resolve().parents[2]
STORY = ROOT / "configs" / "scenarios" / "fencing-token.toml"


def story_of(run) -> FencingStory:  # type: ignore[no-untyped-def]
    return run.simulation.workloads[0].story


@pytest.mark.parametrize("seed", [10, 11, 12])
def test_the_stale_lease_holder_cannot_overwrite(seed: int) -> None:
    run = run_scenario(STORY, seed=seed, history=True)
    print(f"seed={run.seed} replay: {run.replay_command()}")
    run.check()
    story = story_of(run)
    assert story.problems() == []
    assert story.stale_write == "stale_token" and story.successor_write == "ok"
    assert story.successor_token > story.holder_token
    # every correct replica holds client 1's value: nothing lost, nothing overwritten
    for i in run.result.correct:
        app = run.simulation.apps[i]
        assert app is not None and app.value("fenced") == FencingStory.successor_value
    # the history shows the stale write as a definite failure, never as ok
    history = run.simulation.history.entries
    assert check_history_shape(history) == []
    stale = [e for e in history if e["process"] == 0 and e["f"] == "put" and e["type"] != "invoke"]
    assert [(e["type"], e.get("error")) for e in stale] == [("fail", "stale_token")]


def test_the_story_holds_without_any_other_fault() -> None:
    scenario = load_scenario(STORY)
    calm = Scenario((), (), {"nodes": 4, "seed": 1}, scenario.workload, "calm fencing")
    run = run_scenario(calm).check()
    assert story_of(run).problems() == []


class _UnfencedHolder(_Holder):
    """A client that forgets the fencing token on its write (what fencing prevents)."""

    def next_op(self) -> bytes:
        if self.step == 1:
            return Ops.put(self.story.key, self.story.holder_value)
        return super().next_op()


class _UnfencedStory(FencingStory):
    def workload(self, client_id, requests, rng):  # type: ignore[no-untyped-def]
        return _UnfencedHolder(self) if client_id == 0 else super().workload(client_id,
                                                                           requests, rng)


def test_the_story_checker_has_teeth_an_unfenced_write_overwrites() -> None:
    story = _UnfencedStory(lease_ms=1000, pause_s=3.0)
    scenario = Scenario((), (), {"nodes": 4, "seed": 1}, {}, "unfenced")
    run = run_scenario(scenario, workload_factory=story.workload)
    assert run.result.safety_ok  # the store did what it was told...
    problems = story.problems()
    assert any("stale_token" in p for p in problems), problems  # ...and lost client 1's write
    assert any("final read" in p for p in problems), problems
