"""The deterministic simulator: replayable runs, fault injection, checkers wired in, CLI.

Every test prints the seed it runs; `bft sim --seed S ...` replays it.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from adversary.sim import (
    Crash,
    NodeContext,
    Partition,
    Silence,
    SimConfig,
    SimResult,
    Simulation,
)
from adversary.simcli import add_sim_arguments, build_sim_config, run_sim_command
from bft.app import Result
from bft.effects import Reply
from bft.errors import ConfigError
from bft.messages import Reply as ReplyStatement

# Small checkpoint interval and log window: state transfer and log GC happen in short runs.
SMALL_LOG = {"checkpoint_interval": 4, "log_window": 8}
ROOT = Path(__file__).resolve().parent.parent


def run(config: SimConfig, until_s: float = 120.0) -> SimResult:
    print(f"seed={config.seed}")
    result = Simulation(config).run(until_s)
    if not result.ok:
        print("\n".join(result.violations))
    return result


def comparable(result: SimResult) -> dict:
    d = result.to_dict()
    d.pop("wall_seconds")
    return d


def assert_clean(result: SimResult, lagging: tuple[int, ...] = ()) -> None:
    """All checks held, every request completed, and replicas ended in one state.

    `lagging`: replicas that may legitimately end behind (a silent one cannot
    even ask for state transfer).
    """
    assert result.safety_ok and result.liveness_ok, result.violations
    assert result.violations == ()
    assert result.completed_requests == result.requests
    caught_up = [k for k in result.state_digests if int(k) not in lagging]
    assert len(caught_up) >= len(result.correct) - len(lagging)
    assert len({result.state_digests[k] for k in caught_up}) == 1
    assert len({result.last_executed[k] for k in caught_up}) == 1


# --------------------------------------------------------------------------
# Determinism
# --------------------------------------------------------------------------


def faulty_config(seed: int) -> SimConfig:
    return SimConfig(seed=seed, clients=3, requests=15, drop=0.05, duplicate=0.05, reorder=0.1,
                     crashes=(Crash(0, 0.3, 1.5),), cluster_overrides=SMALL_LOG)


def test_same_seed_same_run() -> None:
    a = run(faulty_config(11))
    b = run(faulty_config(11))
    assert comparable(a) == comparable(b)
    assert a.trace_hash == b.trace_hash
    assert a.steps > 1000 and a.network["restarts"] == 1
    c = run(faulty_config(12))
    assert c.trace_hash != a.trace_hash


_HASH_SEED_SCRIPT = """
import json
from adversary.sim import Crash, SimConfig, Simulation
r = Simulation(SimConfig(seed=5, clients=2, requests=8, drop=0.05, reorder=0.1,
                         crashes=(Crash(1, 0.2, 1.0),),
                         cluster_overrides={"checkpoint_interval": 4, "log_window": 8})).run(60)
d = r.to_dict()
d.pop("wall_seconds")
print(json.dumps(d, sort_keys=True))
"""


def test_run_does_not_depend_on_hash_randomization() -> None:
    """Two interpreters with different PYTHONHASHSEEDs replay the same run exactly."""
    outputs = []
    for hash_seed in ("1", "2"):
        env = {**os.environ, "PYTHONHASHSEED": hash_seed}
        proc = subprocess.run([sys.executable, "-c", _HASH_SEED_SCRIPT], capture_output=True,
                              text=True, env=env, cwd=ROOT, timeout=120, check=True)
        outputs.append(json.loads(proc.stdout))
    assert outputs[0] == outputs[1]
    assert outputs[0]["safety_ok"] and outputs[0]["liveness_ok"]


def test_codec_roundtrip_does_not_change_the_outcome() -> None:
    with_codec = run(SimConfig(seed=3, clients=2, requests=10))
    without = run(SimConfig(seed=3, clients=2, requests=10, codec=False))
    assert_clean(with_codec)
    assert_clean(without)
    assert with_codec.state_digests == without.state_digests
    assert with_codec.committed_seq == without.committed_seq
    assert with_codec.messages_sent == without.messages_sent


# --------------------------------------------------------------------------
# Faults: the checkers stay quiet while at most f nodes fail
# --------------------------------------------------------------------------


def test_fault_free_run() -> None:
    r = run(SimConfig(seed=1, clients=3, requests=20))
    assert_clean(r)
    assert r.view_changes == 0 and r.final_view == 0
    assert r.messages_dropped == 0 and r.messages_sent == r.messages_delivered
    assert r.checkers["linearizability"]["results_checked"] == 60
    assert r.checkers["validity"]["requests_checked"] >= 60 * 4


def test_lossy_network() -> None:
    r = run(SimConfig(seed=2, clients=3, requests=20, drop=0.1, duplicate=0.1, reorder=0.2))
    assert_clean(r)
    assert r.network["dropped"]["loss"] > 0 and r.network["duplicated"] > 0
    assert r.network["reordered"] > 0


def test_primary_crash_forces_view_change() -> None:
    r = run(SimConfig(seed=3, clients=3, requests=20, crashes=(Crash(0, 0.3),)))
    assert_clean(r)
    assert r.correct == (1, 2, 3)
    assert r.view_changes >= 1 and r.final_view % 4 != 0
    assert "0" not in r.state_digests


def test_crash_and_restart_recovers_from_storage() -> None:
    r = run(SimConfig(seed=4, clients=3, requests=40, crashes=(Crash(1, 0.2, 1.0),),
                      cluster_overrides=SMALL_LOG))
    assert_clean(r)
    assert r.network["crashes"] == 1 and r.network["restarts"] == 1
    assert r.correct == (0, 1, 2, 3) and "1" in r.state_digests


def test_partition_heals_and_minority_catches_up() -> None:
    r = run(SimConfig(seed=5, clients=3, requests=40, cluster_overrides=SMALL_LOG,
                      partitions=(Partition(((3,), (0, 1, 2)), 0.1, 3.0),)))
    assert_clean(r)
    assert r.network["dropped"]["partition"] > 0
    assert r.events.get("state_transfer", 0) >= 1
    assert r.checkers["total_order"]["state_transfers"] >= 1
    assert r.virtual_seconds >= 3.0  # the run waits for the heal


def test_silent_primary() -> None:
    r = run(SimConfig(seed=6, clients=2, requests=10, silent=(Silence(0),)))
    assert_clean(r, lagging=(0,))
    assert r.correct == (0, 1, 2, 3)  # silent but honest: still judged
    assert r.view_changes >= 1
    assert r.network["dropped"]["silent"] > 0


def test_seven_replicas_two_faults_and_clock_skew() -> None:
    r = run(SimConfig(seed=7, nodes=7, clients=3, requests=8, drop=0.03,
                      crashes=(Crash(0, 0.4), Crash(3, 0.5, 2.5)),
                      clock_skew_s={1: 0.2, 2: -0.2}))
    assert_clean(r)
    assert r.f == 2


def test_too_many_silent_nodes_fail_liveness_not_safety() -> None:
    r = run(SimConfig(seed=8, clients=1, requests=2, silent=(Silence(1), Silence(2)),
                      liveness_bound_s=3.0), until_s=10.0)
    assert r.safety_ok
    assert not r.liveness_ok and r.completed_requests == 0
    assert any(v.startswith("liveness: client 0 request 1 not completed") for v in r.violations)


@settings(max_examples=6, deadline=None)
@given(seed=st.integers(0, 2**32 - 1), drop=st.sampled_from([0.0, 0.05, 0.15]),
       crash=st.sampled_from([None, 0, 2]), restart=st.booleans())
def test_random_scenarios_hold(seed: int, drop: float, crash: int | None, restart: bool) -> None:
    crashes = () if crash is None else (Crash(crash, 0.25, 1.5 if restart else None),)
    r = run(SimConfig(seed=seed, clients=2, requests=10, drop=drop, duplicate=drop,
                      reorder=drop, crashes=crashes, cluster_overrides=SMALL_LOG))
    assert_clean(r)


def test_regression_stale_state_chunk_does_not_roll_back() -> None:
    """Found by the simulator: replica 3 started a state transfer to checkpoint 12,
    caught up through the log to seq 17 instead, and then installed the late
    snapshot of 12 anyway (Event state_transfer with behind=-5), rolling its
    state back and emitting SaveSnapshot(12) after SaveSnapshot(16), which
    MemoryStorage refuses (ValueError). Replay:
    bft sim --seed 2 --drop .15 --duplicate .15 --reorder .15 --checkpoint-interval 4 --log-window 8
    """
    r = run(SimConfig(seed=2, clients=2, requests=10, drop=0.15, duplicate=0.15, reorder=0.15,
                      cluster_overrides=SMALL_LOG))
    assert_clean(r)


def test_regression_backups_time_out_on_ordered_but_unexecuted_request() -> None:
    """Found by the simulator: with replica 2 crashed, replica 0 moved alone to view 4
    while 1 and 3 stayed in view 3; client 1's request was assigned a seq but
    never executed, and 1 and 3 dropped its retransmissions as duplicate_request
    without starting their view-change timer, so nothing ever happened again.
    Replay: bft sim --seed 2 --drop .15 --duplicate .15 --reorder .15 --crash 2@0.25
    --checkpoint-interval 4 --log-window 8
    """
    r = run(SimConfig(seed=2, clients=2, requests=10, drop=0.15, duplicate=0.15, reorder=0.15,
                      crashes=(Crash(2, 0.25),), cluster_overrides=SMALL_LOG), until_s=60.0)
    assert_clean(r)


# --------------------------------------------------------------------------
# Pluggable nodes, and checkers with teeth against the real replica
# --------------------------------------------------------------------------

FORGED = Result("value", value=b"forged").encode()


class LyingReplies:
    """Wraps a replica: every reply it sends carries a forged result (validly signed)."""

    def __init__(self, ctx: NodeContext, node) -> None:
        self.node = node
        self.signer = ctx.signer

    def __getattr__(self, name):  # view, last_executed, statistics()...
        return getattr(self.node, name)

    def _lie(self, effects):
        out = []
        for e in effects:
            if isinstance(e, Reply):
                st = e.reply.statement
                e = Reply(e.client, self.signer.sign(ReplyStatement(
                    st.view, st.timestamp, st.client, st.replica, st.request, FORGED)))
            out.append(e)
        return out

    def start(self, now, wall=None):
        return self._lie(self.node.start(now, wall))

    def receive(self, message, now, wall=None):
        return self._lie(self.node.receive(message, now, wall))

    def tick(self, now, wall=None):
        return self._lie(self.node.tick(now, wall))


def liars(ids):
    def wrap(ctx: NodeContext, node):
        return LyingReplies(ctx, node) if ctx.replica_id in ids else node
    return wrap


def test_f_liars_are_outvoted() -> None:
    r = run(SimConfig(seed=9, clients=2, requests=10, byzantine=frozenset({3}),
                      wrap_node=liars({3})))
    assert_clean(r)
    assert r.correct == (0, 1, 2) and r.byzantine == (3,)


def test_f_plus_one_colluding_liars_are_caught() -> None:
    # Two liars in a 4-replica cluster (f = 1) can make a client accept a forged
    # result: agreement among the correct replicas still holds, but the client's
    # history is not linearizable, and the checker must say so.
    r = run(SimConfig(seed=10, clients=2, requests=10, byzantine=frozenset({2, 3}),
                      wrap_node=liars({2, 3})))
    assert not r.safety_ok
    assert r.checkers["agreement"]["ok"]
    assert not r.checkers["linearizability"]["ok"]
    assert any(v.startswith("linearizability: client") and "forged" in v for v in r.violations)


def test_node_factory_and_wrapper_see_every_incarnation() -> None:
    seen = []

    def factory(ctx: NodeContext):
        seen.append(("factory", ctx.replica_id, ctx.incarnation, ctx.recovered is not None))
        return ctx.make_replica()

    def wrap(ctx: NodeContext, node):
        seen.append(("wrap", ctx.replica_id, ctx.incarnation, ctx.recovered is not None))
        return node

    r = run(SimConfig(seed=12, clients=1, requests=5, crashes=(Crash(2, 0.1, 0.5),),
                      node_factory=factory, wrap_node=wrap))
    assert_clean(r)
    assert seen[:8] == [(kind, i, 0, False) for i in range(4) for kind in ("factory", "wrap")]
    assert seen[8:] == [("factory", 2, 2, True), ("wrap", 2, 2, True)]


def test_invalid_configs_rejected() -> None:
    with pytest.raises(ConfigError, match="drop"):
        Simulation(SimConfig(drop=1.5))
    with pytest.raises(ConfigError, match="replica id 7"):
        Simulation(SimConfig(crashes=(Crash(7, 1.0),)))
    with pytest.raises(ConfigError, match="restart"):
        Simulation(SimConfig(crashes=(Crash(1, 2.0, 1.0),)))
    with pytest.raises(ConfigError, match="two groups"):
        Simulation(SimConfig(partitions=(Partition(((0, 1), (1, 2)), 0.0, 1.0),)))


def test_simulation_runs_once() -> None:
    sim = Simulation(SimConfig(seed=1, clients=1, requests=1))
    sim.run(10.0)
    with pytest.raises(RuntimeError):
        sim.run(10.0)


# --------------------------------------------------------------------------
# The `bft sim` command
# --------------------------------------------------------------------------


def parse(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="bft sim")
    add_sim_arguments(parser)
    return parser.parse_args(argv)


def test_cli_parses_fault_specs() -> None:
    args = parse(["--seed", "4", "--nodes", "7", "--partition", "0,1|2,3@2:5",
                  "--crash", "1@0.5", "--restart", "1@3", "--crash", "2",
                  "--silent", "4@1:2", "--delay-ms", "2:8", "--drop", "0.1"])
    config = build_sim_config(args)
    assert config.seed == 4 and config.nodes == 7
    assert config.partitions == (Partition(((0, 1), (2, 3)), 2.0, 5.0),)
    assert config.crashes == (Crash(1, 0.5, 3.0), Crash(2, 0.0, None))
    assert config.silent == (Silence(4, 1.0, 2.0),)
    assert config.delay_ms == (2.0, 8.0) and config.drop == 0.1


def test_cli_json_output_and_exit_code(capsys: pytest.CaptureFixture[str]) -> None:
    code = run_sim_command(parse(["--seed", "2", "--requests", "3", "--json"]))
    out = json.loads(capsys.readouterr().out)
    assert code == 0
    assert out["seed"] == 2 and out["safety_ok"] and out["liveness_ok"]
    assert out["completed_requests"] == 6
    for name in ("nodes", "f", "requests", "committed_seq", "violations", "view_changes",
                 "final_view", "messages_sent", "virtual_seconds", "wall_seconds",
                 "state_digests", "checkers"):
        assert name in out


def test_cli_failure_exit_code_and_summary(capsys: pytest.CaptureFixture[str]) -> None:
    code = run_sim_command(parse(["--seed", "3", "--requests", "2", "--silent", "1",
                                  "--silent", "2", "--until", "5", "--liveness-bound", "2"]))
    out = capsys.readouterr().out
    assert code == 1
    assert "liveness FAILED" in out and "result: FAIL" in out


def test_cli_prints_chosen_seed(capsys: pytest.CaptureFixture[str]) -> None:
    assert run_sim_command(parse(["--requests", "1"])) == 0
    first = capsys.readouterr().out.splitlines()[0]
    assert first.startswith("bft sim: seed ") and "--seed" in first


@pytest.mark.parametrize("argv", [
    ["--drop", "2"], ["--drop", "x"], ["--delay-ms", "5:1"], ["--partition", "0,1"],
    ["--partition", "0|0"], ["--partition", "0|1@5:2"], ["--crash", "a"],
    ["--restart", "1"], ["--nodes", "0"], ["--until", "-1"], ["--nodes", "4", "--config", "x"],
])
def test_cli_bad_arguments_are_usage_errors(argv: list[str],
                                            capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exc:
        parse(argv)
    assert exc.value.code == 2
    assert "error:" in capsys.readouterr().err


@pytest.mark.parametrize("argv", [
    ["--crash", "9"], ["--restart", "1@2"], ["--crash", "1@3", "--restart", "1@2"],
    ["--crash", "1", "--crash", "1"], ["--config", "/nonexistent/cluster.toml"],
])
def test_cli_inconsistent_arguments_are_usage_errors(argv: list[str],
                                                     capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exc:
        run_sim_command(parse(["--seed", "1", *argv]))
    assert exc.value.code == 2
    assert "error:" in capsys.readouterr().err


def test_cli_json_evidence_is_hex_not_python_bytes(capsys: pytest.CaptureFixture[str]) -> None:
    """Issue 23 item 4: `bft sim --json` shows the evidence's statements with their digests
    as hex, never Python bytes reprs (`b"..."`), so other tools can read them. Failed before
    the fix: `"statement": "PrePrepare(view=0, seq=1, digest=b\\"\\xa3X...\\", replica=0)"`."""
    run_sim_command(parse(["--seed", "2", "--requests", "3", "--byzantine", "0:equivocate",
                           "--json"]))
    out = json.loads(capsys.readouterr().out)
    assert out["evidence"], "the equivocating primary left no evidence"
    for proof in out["evidence"]:
        for side in ("first", "second"):
            statement = proof[side]["statement"]
            assert "b'" not in statement and 'b"' not in statement, statement
            assert re.search(r"digest=[0-9a-f]{64}\b", statement), statement
