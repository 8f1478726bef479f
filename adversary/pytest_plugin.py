"""Adversarial testing for users: a pytest plugin (entry point `pytest11`: `bft_adversary`).

Run the adversary against your own replicated state machine (anything with
`execute(op, ctx)`, `snapshot()`, `restore(data)`, `digest()`, plus
`random_op(rng, client_id) -> bytes` so the simulator can generate a
workload). Options: `--bft-app MODULE:FACTORY` (the state machine under test;
default: the KV store) and `--bft-seed N` (pin every simulated run's seed).

Fixtures:

* `bft_app_factory`: the factory from `--bft-app`, or None (the KV store);
* `bft_sim`: `bft_sim(scenario=None, **options) -> SimRun`, a simulated
  cluster run (seeded, replayable; it prints the seed and a replay command);
* `bft_local_cluster`: `bft_local_cluster(n=4, scenario=None, app=None)
  -> LocalCluster`, real node processes over loopback UDP (use inside a
  Trio test: `async with cluster.running(): ...`), killed after the test.
  `await cluster.run_load(workload="mixed", ops=100)` drives it with a
  bft.workload (mixed, puts, noop, app) and returns the recorded history
  (judge it with `bft.lincheck.check(parse_history(history.lines()))`).

Checkers to assert on: `assert_safe`, `assert_live`, `assert_ok`,
`assert_evidence_against`, `assert_same_state`. Scenario building:
`Scenario`, `load_scenario`, `parse_scenario`, `make_rule`,
`make_network_rule`. Hypothesis strategies (if hypothesis is installed):
`scenarios`, `behaviour_rules`, `network_rules`. A failing `SimRun.check()`
writes the scenario to a file (in `$BFT_FAILURE_DIR`, else the temp dir) and
names it with the replay command, so a shrunk hypothesis example is a file
you can run with `bft sim --scenario FILE`.

Example:

    from hypothesis import given
    from adversary.pytest_plugin import assert_ok, scenarios

    @given(scenarios(nodes=st.just(4)))
    def test_my_store_survives(bft_sim, scenario):
        bft_sim(scenario).check()
"""

from __future__ import annotations

import hashlib
import os
import shlex
import tempfile
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from adversary.behaviours import BehaviourRule, make_rule
from adversary.localcluster import LocalCluster
from adversary.netfaults import NetworkRule, make_network_rule
from adversary.scenario import Scenario, load_factory, load_scenario, parse_scenario
from adversary.sim import SimResult, Simulation

try:  # strategies need hypothesis (a test dependency)
    from adversary.strategies import behaviour_rules, network_rules, scenarios
except ImportError:  # pragma: no cover - hypothesis not installed
    behaviour_rules = network_rules = scenarios = None  # type: ignore[assignment]

__all__ = [
    "BehaviourRule", "LocalCluster", "NetworkRule", "Scenario", "SimRun", "assert_evidence_against",
    "assert_live", "assert_ok", "assert_safe", "assert_same_state", "behaviour_rules",
    "load_scenario", "make_network_rule", "make_rule", "network_rules", "parse_scenario",
    "run_scenario", "scenarios",
]


# --------------------------------------------------------------------------
# Simulated runs
# --------------------------------------------------------------------------


def failure_dir() -> Path:
    """Where failing scenarios are written: $BFT_FAILURE_DIR, else <tmp>/bft-adversary."""
    path = Path(os.environ.get("BFT_FAILURE_DIR") or Path(tempfile.gettempdir()) / "bft-adversary")
    path.mkdir(parents=True, exist_ok=True)
    return path


@dataclass
class SimRun:
    """One simulated run: the scenario (with its seed), the result and the simulation."""

    scenario: Scenario
    result: SimResult
    simulation: Simulation
    app: str | None = None

    @property
    def seed(self) -> int:
        return self.result.seed

    def save(self, directory: str | Path | None = None) -> Path:
        """Write the scenario (seed included) to a file named by its content; its path."""
        sim = {**self.scenario.sim, "seed": self.seed, "nodes": self.result.nodes}
        scenario = Scenario(self.scenario.rules, self.scenario.network, sim,
                            self.scenario.workload, self.scenario.description or "saved run")
        text = scenario.to_toml()
        name = "scenario-" + hashlib.sha256(text.encode()).hexdigest()[:12] + ".toml"
        path = Path(directory) if directory is not None else failure_dir()
        path.mkdir(parents=True, exist_ok=True)
        return scenario.write(path / name)

    def replay_command(self, path: str | Path | None = None) -> str:
        """The `bft sim` command that replays this run."""
        path = path if path is not None else self.save()
        cmd = ["bft", "sim", "--scenario", str(path), "--seed", str(self.seed)]
        if self.app:
            cmd += ["--app", self.app]
        return shlex.join(cmd)

    def check(self, *, liveness: bool = True) -> SimRun:
        """Raise AssertionError (with the violations, the seed, the saved scenario and the
        replay command) unless safety, the evidence witness and (if asked) liveness held."""
        r = self.result
        ok = r.safety_ok and r.evidence_ok and (r.liveness_ok or not liveness)
        if not ok:
            path = self.save()
            shown = "\n  ".join(r.violations[:10])
            raise AssertionError(
                f"adversarial run failed (seed {r.seed}):\n  {shown}\n"
                f"scenario: {path}\nreplay: {self.replay_command(path)}\n"
                f"{self.scenario.to_toml()}")
        return self


def run_scenario(scenario: Scenario | str | Path | None = None, *,
                 app_factory: Callable[[], Any] | None = None, app: str | None = None,
                 seed: int | None = None, until_s: float | None = None,
                 **overrides: Any) -> SimRun:
    """Simulate `scenario` (a Scenario, a file, or None for no adversary).

    `app` ("module:factory") or `app_factory` replicates your state machine (its
    `random_op(rng, client_id)` makes the workload); `seed` overrides the scenario's;
    `overrides` are SimConfig fields (nodes, requests, clients, think_ms, ...).
    """
    from adversary.workloads import AppWorkload

    if isinstance(scenario, (str, Path)):
        scenario = load_scenario(scenario)
    scenario = scenario or Scenario()
    if app is not None and app_factory is None:
        app_factory = load_factory(app)
    if app is None and app_factory is not None:
        qualname = getattr(app_factory, "__qualname__", "")
        if qualname and "<" not in qualname:  # importable by name: the replay can name it
            app = f"{app_factory.__module__}:{qualname}"
    if app_factory is not None:
        factory = app_factory
        overrides.setdefault("app_factory", factory)
        overrides.setdefault("workload_factory",
                             lambda c, requests, rng: AppWorkload(factory(), c, requests, rng))
    if seed is not None:
        overrides["seed"] = seed
    config = scenario.sim_config(**overrides)
    simulation = Simulation(config)
    result = simulation.run(until_s if until_s is not None else scenario.until_s)
    return SimRun(scenario, result, simulation, app)


# --------------------------------------------------------------------------
# Checkers
# --------------------------------------------------------------------------


def _result(run: SimRun | SimResult) -> SimResult:
    return run.result if isinstance(run, SimRun) else run


def _fail(run: SimRun | SimResult, what: str) -> None:
    r = _result(run)
    where = ""
    if isinstance(run, SimRun):
        where = f"\nreplay: {run.replay_command()}"
    raise AssertionError(f"{what} (seed {r.seed}):\n  " + "\n  ".join(r.violations[:10]) + where)


def assert_safe(run: SimRun | SimResult) -> None:
    """Agreement, validity, exactly-once, total order, equal state digests, linearizability and
    no correct replica caught equivocating held for every correct replica."""
    if not _result(run).safety_ok:
        _fail(run, "safety violated")


def assert_live(run: SimRun | SimResult) -> None:
    """Every request completed within the liveness bound after the faults stopped."""
    if not _result(run).liveness_ok:
        _fail(run, "liveness violated")


def assert_ok(run: SimRun | SimResult) -> None:
    """Safety, liveness and the evidence witness all held."""
    assert_safe(run)
    assert_live(run)
    if not _result(run).evidence_ok:
        _fail(run, "an equivocation reached a correct replica without leaving evidence")


def assert_evidence_against(run: SimRun | SimResult, culprit: int) -> list[dict[str, Any]]:
    """Some correct replica holds a proof against `culprit`; the proofs."""
    proofs = [e for e in _result(run).evidence if e["culprit"] == culprit]
    if not proofs:
        _fail(run, f"no correct replica holds evidence against replica {culprit}")
    return proofs


def assert_same_state(states: Mapping[Any, Any], nodes: Iterable[Any] | None = None) -> None:
    """The given replicas (default all) have equal state digests. `states` maps a replica to
    its digest, or to a stop summary holding `state_digest` (LocalCluster.summaries)."""
    digests = {k: (v["state_digest"] if isinstance(v, Mapping) else v) for k, v in states.items()
               if nodes is None or k in set(nodes)}
    if len(set(digests.values())) > 1:
        raise AssertionError(f"state digests differ: {digests}")
    if not digests:
        raise AssertionError("no replica to compare")


# --------------------------------------------------------------------------
# The plugin: options and fixtures
# --------------------------------------------------------------------------


def pytest_addoption(parser: Any) -> None:
    group = parser.getgroup("bft-adversary", "adversarial testing of a BFT state machine")
    group.addoption("--bft-app", default=None, metavar="MODULE:FACTORY",
                    help="the replicated state machine under test (default: the KV store)")
    group.addoption("--bft-seed", type=int, default=None, metavar="N",
                    help="seed every bft_sim run with N (replay a failure)")


@pytest.fixture(scope="session")
def bft_app_factory(request: Any) -> Callable[[], Any] | None:
    """The state machine factory named by --bft-app (None: the KV store)."""
    spec = request.config.getoption("--bft-app", default=None)
    return load_factory(spec) if spec else None


@pytest.fixture(scope="session")
def bft_sim(request: Any, bft_app_factory: Any) -> Callable[..., SimRun]:
    """`bft_sim(scenario=None, **options) -> SimRun`: a simulated run of your state machine
    (--bft-app) under `scenario`; prints the seed. Session-scoped, so it also works in
    hypothesis tests (`@given(scenarios())`)."""
    pinned = request.config.getoption("--bft-seed", default=None)
    spec = request.config.getoption("--bft-app", default=None)

    def run(scenario: Scenario | str | Path | None = None, **options: Any) -> SimRun:
        if pinned is not None:
            options["seed"] = pinned
        if bft_app_factory is not None and "app_factory" not in options and "app" not in options:
            options["app_factory"] = bft_app_factory
            options.setdefault("app", spec)
        done = run_scenario(scenario, **options)
        print(f"bft_sim: seed {done.seed}: {'PASS' if done.result.ok else 'FAIL'}")
        return done

    return run


@pytest.fixture
def bft_local_cluster(tmp_path: Path, request: Any) -> Any:
    """`bft_local_cluster(n=4, scenario=None, app=None, **config) -> LocalCluster`: real node
    processes (`bft node --scenario`, started by bft.launcher) over loopback; every process
    is killed after the test. `app` defaults to --bft-app; `config` sets ClusterConfig
    fields."""
    made: list[LocalCluster] = []
    spec = request.config.getoption("--bft-app", default=None)

    def make(n: int = 4, scenario: Scenario | str | Path | None = None, app: str | None = None,
             **options: Any) -> LocalCluster:
        cluster = LocalCluster(tmp_path / f"cluster{len(made)}", n, scenario=scenario,
                               app=app or spec, **options)
        made.append(cluster)
        return cluster

    try:
        yield make
    finally:
        for cluster in made:
            cluster.cleanup()
