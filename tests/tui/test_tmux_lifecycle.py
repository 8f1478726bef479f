"""Issue 23 items 3 and 4 in a real terminal (tmux): under `bft up`'s dashboard, `r` on a
crashed node brings it back, `q` stops every node (the restarted one included) and the
stop summary is printed after the dashboard closes; `bft down` stops a dashboard `bft up`
cleanly (SIGTERM quits it as q does). Every wait is on a condition with a generous bound.

Failed before the fix: `r` on a dead node only sent a Resume nobody received (node 2 stayed
down), nothing was printed after `q`, and a SIGTERM killed `bft up` at once (its nodes
died by the parent-death signal, without their clean stop)."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import pytest

from bft.launcher import config_to_toml, throwaway_config
from bft.lifecycle import is_node_process, pid_path, read_pid_file
from transport.udp import free_udp_ports

pytestmark = [
    pytest.mark.skipif(shutil.which("tmux") is None,
                       reason="tmux is not installed (CI installs it: apt-get install tmux)"),
    pytest.mark.udp,
]

WAIT_S = 90.0


def wait_for(what: str, cond: Callable[[], bool], screen: Callable[[], str]) -> None:
    deadline = time.monotonic() + WAIT_S
    while not cond():
        if time.monotonic() > deadline:
            pytest.fail(f"not within {WAIT_S:g} s: {what}; screen:\n{screen()}")
        time.sleep(0.2)


class Tmux:
    def __init__(self, name: str, cmd: str, cwd: Path) -> None:
        self.name = name
        subprocess.run(["tmux", "new-session", "-d", "-s", name, "-x", "120", "-y", "40", cmd],
                       check=True, cwd=cwd)
        subprocess.run(["tmux", "set-option", "-t", name, "remain-on-exit", "on"],
                       check=False, capture_output=True)

    def screen(self) -> str:
        return subprocess.run(["tmux", "capture-pane", "-t", self.name, "-p", "-S", "-60"],
                              capture_output=True, text=True, check=False).stdout

    def keys(self, *keys: str) -> None:
        subprocess.run(["tmux", "send-keys", "-t", self.name, *keys], check=True)

    def close(self) -> None:
        subprocess.run(["tmux", "kill-session", "-t", self.name], capture_output=True,
                       check=False)


def make_config(root: Path) -> Path:
    monitor = free_udp_ports(1, "127.0.0.1")[0]
    path = root / "cluster.toml"
    path.write_text(config_to_toml(throwaway_config(4, name="tmux-life",
                                                    monitor=("127.0.0.1", monitor))))
    return path


def node_pids(state: Path, config: Path) -> dict[int, int]:
    out = {}
    for i in range(4):
        pid = read_pid_file(pid_path(state, i))
        if pid is not None and is_node_process(pid, config, i):
            out[i] = pid
    return out


def row(screen: str, node: int) -> str:
    return next((line for line in screen.splitlines() if line.startswith(f"│ {node} ")), "")


def test_r_restarts_a_crashed_node_and_q_stops_it_with_a_summary(tmp_path):
    config = make_config(tmp_path)
    state = tmp_path / "state"
    bft = Path(sys.executable).with_name("bft")
    term = Tmux(f"bft-life-{os.getpid()}", f"{bft} up {config} --state-dir {state}", tmp_path)
    started: list[int] = []
    try:
        wait_for("every node up on the dashboard", lambda: len(node_pids(state, config)) == 4
                 and all(" up " in row(term.screen(), i) for i in range(4)), term.screen)
        old = node_pids(state, config)
        started += old.values()
        os.kill(old[2], signal.SIGKILL)  # a crash (a child of the bft up this test started)
        wait_for("node 2 shown down", lambda: " down " in row(term.screen(), 2), term.screen)
        term.keys("Down", "Down", "r")
        wait_for("node 2 restarted", lambda: node_pids(state, config).get(2) not in (None,
                                                                                  old[2]),
                 term.screen)
        new = node_pids(state, config)[2]
        started.append(new)
        wait_for("node 2 up again", lambda: " up " in row(term.screen(), 2), term.screen)
        term.keys("q")
        wait_for("the stop summary", lambda: "state digests" in term.screen(), term.screen)
        screen = term.screen()
        print(screen)
        assert all(not is_node_process(p, config, i) for i, p in {**old, 2: new}.items())
        for i in range(4):
            assert f"node {i}: exit status 0, view " in screen
        assert not list(state.glob("node-*.pid"))
    finally:
        term.close()
        for pid in started:
            if any(is_node_process(pid, config, i) for i in range(4)):
                os.kill(pid, signal.SIGKILL)


def test_bft_down_stops_a_dashboard_bft_up_cleanly(tmp_path):
    config = make_config(tmp_path)
    state = tmp_path / "state"
    bft = Path(sys.executable).with_name("bft")
    term = Tmux(f"bft-down-{os.getpid()}", f"{bft} up {config} --state-dir {state}", tmp_path)
    started: list[int] = []
    try:
        wait_for("every node running", lambda: len(node_pids(state, config)) == 4
                 and all((state / f"node-{i}.log.jsonl").exists() for i in range(4)),
                 term.screen)
        started += node_pids(state, config).values()
        down = subprocess.run([str(bft), "down", str(config), "--state-dir", str(state)],
                              capture_output=True, text=True, timeout=WAIT_S, cwd=tmp_path)
        print(down.stdout, down.stderr)
        assert down.returncode == 0
        wait_for("the stop summary", lambda: "state digests" in term.screen(), term.screen)
        assert not node_pids(state, config) and not list(state.glob("*.pid"))
        for i in range(4):  # each node stopped cleanly: its log ends with its stop line
            last = (state / f"node-{i}.log.jsonl").read_text().splitlines()[-1]
            assert '"event": "stop"' in last, last
    finally:
        term.close()
        for pid in started:
            if any(is_node_process(pid, config, i) for i in range(4)):
                os.kill(pid, signal.SIGKILL)
