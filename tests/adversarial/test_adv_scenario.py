"""Scenario files: parsing, errors that name the file and the field, round trips, and every
shipped scenario run from the command line."""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest
from hypothesis import given

from adversary.scenario import (
    Scenario,
    load_factory,
    load_scenario,
    parse_byzantine_spec,
    parse_scenario,
)
from adversary.simcli import add_sim_arguments, build_sim_config, run_sim_command
from adversary.strategies import scenarios
from bft.errors import ConfigError

ROOT = Path(__file__).resolve().parents[2]
SCENARIOS = sorted((ROOT / "configs" / "scenarios").glob("*.toml"))
REQUIRED = ["equivocating-primary", "lying-backup", "paused-primary", "clock-skewed-primary",
            "silent-backup-lossy", "partition-heals", "replaying-node", "corrupting-network",
            "twins", "fencing-token"]


def parse(text: str, source: str = "s.toml") -> Scenario:
    return parse_scenario(tomllib.loads(text), source)


def cli(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="bft sim")
    add_sim_arguments(parser)
    return parser.parse_args(argv)


def test_a_scenario_file_parses_to_rules_and_faults() -> None:
    s = parse("""
description = "x"
[sim]
nodes = 7
seed = 3
think_ms = [1, 2]
[[adversary]]
node = 0
behaviour = "equivocate"
start = 0.5
stop = 9
params = { overlap = 2 }
[[adversary]]
node = 6
behaviour = "clock_skew"
[[network]]
kind = "partition"
groups = [[0, 1, 2]]
start = 1
stop = 4
[[network]]
kind = "delay"
delay_ms = 30
jitter_ms = 10
""")
    assert [(r.node, r.behaviour, r.start_s, r.stop_s) for r in s.rules] == [
        (0, "equivocate", 0.5, 9.0), (6, "clock-skew", 0.0, None)]
    assert s.rules[0].params["overlap"] == 2 and s.rules[1].params["offset_s"] == 5.0
    assert s.network[0].groups == ((0, 1, 2),) and s.network[1].delay_ms == 30.0
    config = s.sim_config()
    assert config.nodes == 7 and config.seed == 3 and config.think_ms == (1.0, 2.0)
    assert config.all_byzantine() == {0}  # clock skew is judged: an honest node, skewed


@pytest.mark.parametrize("text, field", [
    ('[[adversary]]\nnode = 0\nbehaviour = "gossip"', "adversary[0].behaviour"),
    ('[[adversary]]\nnode = 0\nbehaviour = "lie"\nparams = { rate = 3 }',
     "adversary[0].params.rate"),
    ('[[adversary]]\nnode = 0\nbehaviour = "lie"\nparams = { sneaky = true }',
     "adversary[0].params.sneaky"),
    ('[[adversary]]\nbehaviour = "lie"', "adversary[0].node"),
    ('[[adversary]]\nnode = 0\nbehaviour = "lie"\nwhen = 3', "adversary[0].when"),
    ('[[adversary]]\nnode = 0\nbehaviour = "lie"\nstart = 5\nstop = 1', "adversary[0].stop"),
    ('[[network]]\nkind = "flood"\nrate = 0.1', "network[0].kind"),
    ('[[network]]\nkind = "drop"', "network[0].rate"),
    ('[[network]]\nkind = "drop"\nrate = 1.5', "network[0].rate"),
    ('[[network]]\nkind = "partition"', "network[0].groups"),
    ('[[network]]\nkind = "partition"\ngroups = [[0], [0, 1]]', "network[0].groups"),
    ('[[network]]\nkind = "drop"\nrate = 0.1\ngroups = [[0]]', "network[0].groups"),
    ('[sim]\nnodes = 0', "sim.nodes"),
    ('[sim]\nnodes = 4\n[[adversary]]\nnode = 9\nbehaviour = "lie"', "adversary[0].node"),
    ('[workload]\nkind = "fencing"\nlease_ms = 5000\npause_s = 1', "workload.pause_s"),
    (('[[adversary]]\nnode = 1\nbehaviour = "crash"\n[[adversary]]\nnode = 1\n'
      'behaviour = "crash"\nstart = 3'), "adversary[1]"),
    ('colour = "red"', "colour"),
])
def test_errors_name_the_file_and_the_field(text: str, field: str) -> None:
    with pytest.raises(ConfigError) as exc:
        parse(text, "bad.toml")
    assert exc.value.file == "bad.toml" and exc.value.field == field, str(exc.value)
    assert str(exc.value).startswith(f"bad.toml: {field}")


def test_load_scenario_errors_name_the_file(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="not found"):
        load_scenario(tmp_path / "missing.toml")
    bad = tmp_path / "bad.toml"
    bad.write_text("[[adversary]\n")
    with pytest.raises(ConfigError, match="invalid TOML") as exc:
        load_scenario(bad)
    assert exc.value.file == str(bad)


def test_scenario_tables_inside_a_cluster_config() -> None:
    """In a cluster config the faults go under [network] (which holds transport settings)."""
    s = parse("""
[cluster]
name = "c"
f = 1
[[nodes]]
id = 0
address = "127.0.0.1:7100"
[network]
status_interval_s = 0.1
[[network.faults]]
kind = "drop"
rate = 0.1
[[adversary]]
node = 0
behaviour = "slow"
""")
    assert [r.behaviour for r in s.rules] == ["slow"] and s.network[0].kind == "drop"
    with pytest.raises(ConfigError) as exc:
        parse('[cluster]\nf = 1\n[network]\nfaults = [{ kind = "dro", rate = 0.1 }]')
    assert exc.value.field == "network.faults[0].kind"


@given(scenarios())
def test_to_toml_round_trips(scenario: Scenario) -> None:
    again = parse(scenario.to_toml(), None)  # type: ignore[arg-type]
    assert again.rules == scenario.rules and again.network == scenario.network
    assert dict(again.sim) == dict(scenario.sim)


def test_byzantine_spec_and_factories() -> None:
    rules = parse_byzantine_spec("0:equivocate, 3:lie")
    assert [(r.node, r.behaviour) for r in rules] == [(0, "equivocate"), (3, "lie")]
    for bad in ("0", "x:lie", "0:gossip", ""):
        with pytest.raises(ConfigError):
            parse_byzantine_spec(bad)
    assert load_factory("bft.app:KVStore")().digest()
    for bad in ("bft.app", "no_such_module_x:f", "bft.app:nothing_here"):
        with pytest.raises(ConfigError):
            load_factory(bad)


def test_cli_flags_win_over_the_scenarios_sim_table(tmp_path: Path) -> None:
    path = tmp_path / "s.toml"
    path.write_text('[sim]\nnodes = 7\nseed = 5\nrequests = 3\nuntil_s = 20\n'
                    '[[adversary]]\nnode = 1\nbehaviour = "silent"\n')
    args = cli(["--scenario", str(path), "--requests", "2", "--byzantine", "4:lie"])
    config = build_sim_config(args)
    assert (config.nodes, config.seed, config.requests, args.until_s) == (7, 5, 2, 20.0)
    assert [(r.node, r.behaviour) for r in config.adversary] == [(1, "silent"), (4, "lie")]
    assert config.all_byzantine() == {1, 4}


def test_cli_json_has_evidence_and_byzantine(capsys: pytest.CaptureFixture[str],
                                              tmp_path: Path) -> None:
    history = tmp_path / "h.jsonl"
    code = run_sim_command(cli(["--seed", "3", "--requests", "4", "--byzantine", "3:equivocate",
                                "--history", str(history), "--json"]))
    out = json.loads(capsys.readouterr().out)
    assert code == 0, out["violations"]
    assert out["byzantine"] == [{"node": 3, "behaviours": [
        {"node": 3, "behaviour": "equivocate", "start": 0.0, "stop": None,
         "params": out["byzantine"][0]["behaviours"][0]["params"], "judged": False}]}]
    assert out["evidence"] and all(e["culprit"] == 3 and e["holder"] != 3
                                   for e in out["evidence"])
    assert {"first", "second", "kind"} <= set(out["evidence"][0])
    assert history.read_text().count('"invoke"') == 8


def test_cli_reports_bad_scenarios_as_usage_errors(tmp_path: Path,
                                                   capsys: pytest.CaptureFixture[str]) -> None:
    path = tmp_path / "bad.toml"
    path.write_text('[[adversary]]\nnode = 0\nbehaviour = "lie"\nparams = { rate = 9 }\n')
    for argv in (["--scenario", str(path)], ["--byzantine", "0:gossip"],
                 ["--byzantine", "9:lie"], ["--app", "bft.app:KVStore"]):
        with pytest.raises(SystemExit) as exc:
            run_sim_command(cli(["--seed", "1", *argv]))
        assert exc.value.code == 2
    err = capsys.readouterr().err
    assert "adversary[0].params.rate" in err and "random_op" in err


def test_the_required_scenarios_are_shipped() -> None:
    names = {p.stem for p in SCENARIOS}
    assert set(REQUIRED) <= names, set(REQUIRED) - names


@pytest.mark.parametrize("path", SCENARIOS, ids=[p.stem for p in SCENARIOS])
def test_every_shipped_scenario_runs_from_the_command_line(
        path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    code = run_sim_command(cli(["--scenario", str(path)]))
    out = capsys.readouterr().out
    print(out)
    assert code == 0, out
    assert "result: PASS" in out


def test_bft_sim_scenario_in_a_subprocess() -> None:
    """The real entry point, once: `python -m bft sim --scenario FILE --json`."""
    path = ROOT / "configs" / "scenarios" / "equivocating-primary.toml"
    done = subprocess.run([sys.executable, "-m", "bft", "sim", "--scenario", str(path), "--json"],
                          capture_output=True, text=True, timeout=120, cwd=ROOT,
                          check=False)
    assert done.returncode == 0, done.stderr
    out = json.loads(done.stdout)
    assert out["evidence"] and out["byzantine"][0]["node"] == 0


class Counter:
    """A minimal user state machine for `--app`: ops b"inc" and b"read"."""

    def __init__(self) -> None:
        self.value = 0

    def execute(self, op: bytes, ctx: object) -> bytes:
        if op == b"inc":
            self.value += 1
        return str(self.value).encode() if op in (b"inc", b"read") else b"error"

    def snapshot(self) -> bytes:
        return str(self.value).encode()

    def restore(self, snapshot: bytes) -> None:
        self.value = int(snapshot)

    def digest(self) -> bytes:
        import hashlib

        return hashlib.sha256(self.snapshot()).digest()

    def random_op(self, rng, client_id: int) -> bytes:  # type: ignore[no-untyped-def]
        return rng.choice([b"inc", b"read"])


def test_cli_runs_a_users_app(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    history = tmp_path / "h.jsonl"
    code = run_sim_command(cli(["--seed", "4", "--requests", "5", "--app",
                                f"{__name__}:Counter", "--byzantine", "3:lie",
                                "--history", str(history), "--json"]))
    out = json.loads(capsys.readouterr().out)
    assert code == 0, out["violations"]
    assert out["completed_requests"] == 10
    assert out["checkers"]["linearizability"]["results_checked"] == 10  # against Counter
    entries = [json.loads(line) for line in history.read_text().splitlines()]
    assert {e["f"] for e in entries} == {"op"} and len(entries) == 20
