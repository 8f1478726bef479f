"""Workloads for real clusters (issue 22 item 1): the mixed workload makes a rich, contended
history (every op kind, fenced writes, refusals) that the simulator's checker and `bft check`
both accept; `bft up --load --history` uses it by default and its history checks.
Failed before the fix: bft/workload.py and `bft up --workload` did not exist (ImportError,
usage error), and `bft up --history` wrote puts only (a history that proves nothing).
"""

from __future__ import annotations

import collections
import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from bft.bench import config_to_toml, local_config
from bft.cli import main
from bft.lincheck import check, format_verdict, parse_history
from bft.workload import WORKLOADS, MixedWorkload, make_workload

SEED = 22


class _Counted:
    """A workload with the simulator's `remaining` count."""

    def __init__(self, workload: Any, requests: int) -> None:
        self.workload, self.remaining = workload, requests

    def next_op(self) -> bytes:
        self.remaining -= 1
        return self.workload.next_op()

    def observe(self, result: bytes) -> None:
        self.workload.observe(result)


@pytest.mark.parametrize("seed", [SEED, SEED + 1, SEED + 2])
def test_mixed_workload_under_the_simulator_is_rich_and_linearizable(seed):
    from adversary.sim import SimConfig, Simulation

    print(f"seed={seed}")

    def factory(cid: int, requests: int, rng: Any) -> Any:
        return _Counted(make_workload("mixed", cid, rng, keys=2, prefix="t-"), requests)

    sim = Simulation(SimConfig(seed=seed, clients=4, requests=80, workload_factory=factory,
                               history=True, think_ms=(0.0, 300.0), drop=0.02))
    result = sim.run(120)
    assert result.ok, result.violations
    assert sim.history is not None
    entries = sim.history.entries
    kinds = collections.Counter((e["f"], e.get("result")) for e in entries
                                if e["type"] in ("ok", "fail"))
    print(sorted(kinds.items()))
    for f, result_kind in [("get", "value"), ("put", "ok"), ("cas", "ok"), ("cas", "cas_failed"),
                           ("delete", "ok"), ("lock", "granted"), ("lock", "locked"),
                           ("unlock", "ok")]:
        assert kinds[(f, result_kind)] > 0, (f, result_kind)
    assert any("fence" in e and e["type"] == "ok" for e in entries)
    assert {e["key"] for e in entries} <= {"t-k0", "t-k1", "t-L0", "t-L1"}
    verdict = check(parse_history(sim.history.lines()))
    print(format_verdict(verdict))
    assert verdict.ok and verdict.partitions == 2  # key i with its lock i


def test_a_holder_that_walked_away_writes_with_its_old_token():
    """The stale-holder step of DDIA figure 8-5: after a grant, a fenced write, then (when
    the client walks away instead of unlocking) a later write fenced with the old token."""
    from bft.app import Result, decode_op_untrusted

    class Scripted:
        def __init__(self, draws: list[float]) -> None:
            self.draws = draws

        def random(self) -> float:
            return self.draws.pop(0)

        def randrange(self, n: int) -> int:
            return 0

        def choice(self, seq: Any) -> Any:
            return seq[0]

    w = MixedWorkload(5, Scripted([0.1, 0.1, 0.1, 0.0]), keys=1, prefix="p-")
    lock = decode_op_untrusted(w.next_op())
    assert (type(lock).__name__, lock.name) == ("Lock", "p-L0")
    w.observe(Result("granted", token=65536, expiry_us=1).encode())
    put = decode_op_untrusted(w.next_op())
    assert put.fence.token == 65536 and put.key == "p-k0"
    w.observe(Result("ok").encode())
    stale = decode_op_untrusted(w.next_op())  # walked away (0.1 < 0.15), then the old token
    assert (type(stale).__name__, stale.fence.lock, stale.fence.token) == ("Put", "p-L0", 65536)


def test_workload_kinds_and_their_errors():
    import random

    rng = random.Random(SEED)
    print(f"seed={SEED}")
    assert set(WORKLOADS) == {"mixed", "puts", "noop", "app"}
    assert make_workload("noop", 1, rng, op_size=3).next_op() == b"\x00\x00\x00"
    assert make_workload("puts", 1, rng).next_op()
    with pytest.raises(ValueError, match="unknown workload"):
        make_workload("nope", 1, rng)
    with pytest.raises(ValueError, match="needs the application"):
        make_workload("app", 1, rng)
    with pytest.raises(ValueError, match="random_op"):
        make_workload("app", 1, rng, app=object())


def test_bft_up_workload_errors_are_clear(tmp_path, capsys):
    cfg = tmp_path / "cluster.toml"
    cfg.write_text(config_to_toml(local_config(4, name="wl-errors")))
    base = ["up", str(cfg), "--no-tui", "--state-dir", str(tmp_path / "state")]
    assert main([*base, "--workload", "mixed"]) == 2
    assert "--workload needs --load" in capsys.readouterr().err
    assert main([*base, "--load", "10", "--workload", "app"]) == 2
    assert "--workload app needs --app" in capsys.readouterr().err
    assert main([*base, "--load", "10", "--keys", "0"]) == 2
    assert "--keys must be >= 1" in capsys.readouterr().err


@pytest.mark.udp
def test_bft_up_mixed_history_is_checked_linearizable(tmp_path):
    cfg = tmp_path / "cluster.toml"
    cfg.write_text(config_to_toml(local_config(4, name="up-mixed")))
    history = tmp_path / "history.jsonl"
    out = subprocess.run(
        [sys.executable, "-m", "bft", "up", str(cfg), "--no-tui", "--state-dir",
         str(tmp_path / "state"), "--load", "60", "--duration", "4", "--history", str(history),
         "--keys", "2"],
        capture_output=True, text=True, timeout=60, check=False)
    assert out.returncode == 0, out.stdout + out.stderr
    assert "[load] workload mixed" in out.stdout
    entries = [json.loads(x) for x in history.read_text().splitlines()]
    fs = {e["f"] for e in entries if e["type"] == "ok"}
    assert {"get", "put", "cas", "lock"} <= fs, fs
    assert len({e["key"].split("-", 1)[1] for e in entries}) <= 4  # k0, k1, L0, L1
    status = main(["check", str(history), "--json"])
    assert status == 0
