"""`bft up --load --history --scenario`: real node processes, a lying backup from a scenario
file, and a Jepsen-shaped history of every client operation (issue 5 item 6)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from bft.bench import config_to_toml, local_config
from bft.cli import main

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.udp
def test_bft_up_writes_a_history_under_a_scenario(tmp_path):
    config = local_config(4, name="up-history")
    cfg = tmp_path / "cluster.toml"
    cfg.write_text(config_to_toml(config))
    history = tmp_path / "history.jsonl"
    out = subprocess.run(
        [sys.executable, "-m", "bft", "up", str(cfg), "--no-tui", "--state-dir",
         str(tmp_path / "state"), "--load", "20", "--duration", "5", "--history", str(history),
         "--scenario", str(ROOT / "configs/scenarios/lying-backup.toml")],
        capture_output=True, text=True, timeout=60, check=False)
    assert out.returncode == 0, out.stdout + out.stderr
    lines = [json.loads(x) for x in history.read_text().splitlines()]
    assert len(lines) >= 20
    assert {e["type"] for e in lines} <= {"invoke", "ok", "fail", "info"}
    assert [e["index"] for e in lines] == list(range(len(lines)))
    oks = [e for e in lines if e["type"] == "ok"]
    # the mixed workload is the default with --history (issue 22 item 1), and the history
    # holds with one lying backup: `bft check` finds it linearizable
    assert len(oks) >= 10 and {"get", "put"} <= {e["f"] for e in oks}
    assert main(["check", str(history)]) == 0
    # every invoke is followed by exactly one completion of the same process
    open_ops: dict[int, dict] = {}
    for e in lines:
        if e["type"] == "invoke":
            assert e["process"] not in open_ops
            open_ops[e["process"]] = e
        else:
            assert open_ops.pop(e["process"])["key"] == e["key"]
