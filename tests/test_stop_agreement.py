"""`bft up` and `bft bench` stop cleanly (issue 22 item 4): the load stops first, the nodes
converge on the same executed seq (a barrier read, bounded), and the stop report compares
state digests only at that seq: "digests agree at seq N", or the node that differs or is
behind is named. Failed before the fix: digest_agreement did not exist (ImportError) and
`bft up` printed each node's digest at whatever seq it had reached under load."""

from __future__ import annotations

import re
import subprocess
import sys

import pytest

from bft.bench import config_to_toml, local_config
from bft.launcher import digest_agreement

A, B = "aa" * 32, "bb" * 32


def summaries(*pairs: tuple[int, str]) -> dict[int, dict]:
    return {i: {"last_executed": seq, "state_digest": d} for i, (seq, d) in enumerate(pairs)}


def test_digests_agree_at_one_seq():
    assert digest_agreement(summaries((9, A), (9, A), (9, A), (9, A)), range(4)) == \
        (True, "digests agree at seq 9 (4 nodes)")


def test_the_node_that_differs_is_named():
    ok, line = digest_agreement(summaries((9, A), (9, A), (9, B), (9, A)), range(4))
    assert not ok and "node 2 differs" in line and "nodes [0, 1, 3]" in line


def test_a_node_behind_or_silent_is_named_not_compared():
    ok, line = digest_agreement(summaries((9, A), (7, B), (9, A)), range(4))
    assert not ok
    assert "node 1 is behind: stopped at seq 7" in line and "node 3 left no stop summary" in line
    assert "differs" not in line  # a digest at another seq is not a disagreement
    assert digest_agreement({}, range(4))[0] is False


@pytest.mark.udp
def test_bft_up_reports_agreement_at_the_converged_seq(tmp_path):
    cfg = tmp_path / "cluster.toml"
    cfg.write_text(config_to_toml(local_config(4, name="up-stop")))
    out = subprocess.run(
        [sys.executable, "-m", "bft", "up", str(cfg), "--no-tui", "--state-dir",
         str(tmp_path / "state"), "--load", "100", "--duration", "3"],
        capture_output=True, text=True, timeout=60, check=False)
    assert out.returncode == 0, out.stdout + out.stderr
    executed = {int(m) for m in re.findall(r"node \d: exit status 0, view \d+, executed (\d+)",
                                           out.stdout)}
    agreed = re.search(r"digests agree at seq (\d+) \(4 nodes\)", out.stdout)
    assert agreed is not None, out.stdout[-3000:]
    assert executed == {int(agreed.group(1))}


@pytest.mark.udp
def test_bft_up_names_a_node_that_is_down_at_the_stop(tmp_path):
    cfg = tmp_path / "cluster.toml"
    cfg.write_text(config_to_toml(local_config(4, name="up-stop-down")))
    scenario = tmp_path / "down.toml"
    scenario.write_text('description = "node 2 crashes for good"\n[[adversary]]\nnode = 2\n'
                        'behaviour = "crash"\nstart = 1.0\n'
                        'params = { restart_after_s = 1000.0 }\n')
    out = subprocess.run(
        [sys.executable, "-m", "bft", "up", str(cfg), "--no-tui", "--state-dir",
         str(tmp_path / "state"), "--load", "40", "--duration", "3", "--scenario",
         str(scenario)], capture_output=True, text=True, timeout=60, check=False)
    assert out.returncode == 0, out.stdout + out.stderr
    assert "nodes [2] are not running: the others converged" in out.stdout
    line = re.search(r"digests agree at seq (\d+) on nodes \[0, 1, 3\] only; node 2 left no "
                     r"stop summary", out.stdout)
    assert line is not None, out.stdout[-3000:]
