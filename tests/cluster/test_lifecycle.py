"""Lifecycle of a local cluster (issue 23 item 3): a second `bft up` refuses before it
touches anything, pid files exist only while their node runs, `bft status` and `bft down`.

Real `bft up` / `bft node` processes on loopback; every wait is on a condition (ready
files, pid files, exit) with a generous bound, never a sleep-and-hope."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import pytest
import trio

from bft.config import ClusterConfig
from bft.launcher import LocalCluster, config_to_toml, ensure_keys, throwaway_config
from bft.lifecycle import (
    is_node_process,
    pid_path,
    read_pid_file,
    stop_cluster,
    up_pid_path,
)
from transport.udp import free_udp_ports

pytestmark = pytest.mark.udp

WAIT_S = 90.0  # two cores shared with other test runs: generous, and only an upper bound


def wait_for(what: str, cond: Callable[[], bool], timeout_s: float = WAIT_S) -> None:
    deadline = time.monotonic() + timeout_s
    while not cond():
        if time.monotonic() > deadline:
            raise AssertionError(f"not within {timeout_s:g} s: {what}")
        time.sleep(0.05)


def make_config(root: Path) -> Path:
    root.mkdir(parents=True, exist_ok=True)
    monitor = free_udp_ports(1, "127.0.0.1")[0]
    path = root / "cluster.toml"
    path.write_text(config_to_toml(throwaway_config(4, name="life",
                                                    monitor=("127.0.0.1", monitor))))
    return path


def bft(*args: str, cwd: Path, timeout_s: float = WAIT_S) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "bft", *args], cwd=cwd, capture_output=True,
                          text=True, timeout=timeout_s)


def start_up(root: Path, config: Path, state: Path, *args: str) -> subprocess.Popen[str]:
    with open(root / "up.out", "w") as out:
        return subprocess.Popen([sys.executable, "-m", "bft", "up", str(config), "--no-tui",
                                 "--state-dir", str(state), *args], cwd=root, stdout=out,
                                stderr=subprocess.STDOUT, text=True, start_new_session=True)


def all_ready(state: Path, up: subprocess.Popen[str] | None = None) -> bool:
    if up is not None and up.poll() is not None:
        raise AssertionError(f"bft up exited with status {up.returncode}")
    return all((state / f"node-{i}.ready").exists() and pid_path(state, i).exists()
               for i in range(4))


def test_second_up_refuses_then_status_and_down(tmp_path):
    """Issue 23 item 3. A second `bft up` on a running config exits 2 with "already
    running", naming `bft down`, and leaves the running cluster's ready, pid and output
    files as they were. `bft status --json` shows every node up in view 0 with its
    executed seq, stable checkpoint and lag; `bft down` stops `bft up` (which stops its
    nodes cleanly), and no pid file is left; `bft status` then says down and exits 1.
    Failed before the fix: the second `bft up` printed "started 4 nodes", deleted the
    running nodes' ready files and truncated their node-N.run1.out; `bft status` and
    `bft down` did not exist; pid files stayed after a clean stop."""
    config = make_config(tmp_path)
    state = tmp_path / "state"
    up = start_up(tmp_path, config, state)
    try:
        wait_for("the first bft up's nodes are ready", lambda: all_ready(state, up))
        before = {p.name: p.read_bytes() for p in state.iterdir()
                  if p.suffix in (".ready", ".pid") or p.name.endswith(".run1.out")}
        second = bft("up", str(config), "--no-tui", "--state-dir", str(state),
                     "--duration", "1", cwd=tmp_path)
        print(second.stdout, second.stderr)
        assert second.returncode == 2
        assert "already running" in second.stderr and "bft down" in second.stderr
        assert "started" not in second.stdout
        for name, data in before.items():
            now = (state / name).read_bytes()
            assert now[:len(data)] == data, f"{name} was changed by the refused bft up"

        status = bft("status", str(config), "--state-dir", str(state), "--json", "--wait",
                     "30", cwd=tmp_path)
        print(status.stdout, status.stderr)
        assert status.returncode == 0
        report = json.loads(status.stdout)
        assert [n["state"] for n in report["nodes"]] == ["up"] * 4
        pids = {int(n["id"]): n["pid"] for n in report["nodes"]}
        assert pids == {i: read_pid_file(pid_path(state, i)) for i in range(4)}
        assert {n["view"] for n in report["nodes"]} == {0}
        assert {n["primary"] for n in report["nodes"]} == {0}
        top = max(n["executed"] for n in report["nodes"])
        for n in report["nodes"]:
            assert isinstance(n["stable_checkpoint"], int)
            assert n["lag_seqs"] == top - n["executed"]

        down = bft("down", str(config), "--state-dir", str(state), cwd=tmp_path)
        print(down.stdout, down.stderr)
        assert down.returncode == 0
        assert f"stopping bft up (pid {up.pid})" in down.stdout
        up.wait(timeout=WAIT_S)
        assert up.returncode == 0
        assert not list(state.glob("*.pid")), "pid files left after a clean stop"
        # issue 23 item 4: timestamped lines, no raw floats, and the stop summary
        out = (tmp_path / "up.out").read_text().splitlines()
        print("\n".join(out))
        assert all(re.match(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z ", line)
                   for line in out), out
        assert not any(re.search(r"\d+\.\d{4,}", line[25:]) for line in out), out
        assert sum(" up at 127.0.0.1:" in line for line in out) == 4
        for i in range(4):
            assert any(re.search(rf"Z node {i}: exit status 0, view 0, executed \d+, state "
                                 r"digest [0-9a-f]{16}, drops \d+ real", line) for line in out)
        assert re.search(r"Z state digests (agree|DIFFER)", out[-1]), out[-1]
        after = bft("status", str(config), "--state-dir", str(state), "--json", "--wait",
                    "0.5", cwd=tmp_path)
        assert after.returncode == 1
        assert [n["state"] for n in json.loads(after.stdout)["nodes"]] == ["down"] * 4
    finally:
        if up.poll() is None:
            up.kill()  # the nodes die with it (parent-death signal)
            up.wait(timeout=WAIT_S)


async def test_down_stops_nodes_started_by_bft_node(tmp_path):
    """Issue 23 item 3: a node's pid file names it while it runs and is removed by the node
    itself when it stops cleanly; `bft down` stops nodes started as `bft node` (no `bft
    up`) by the pids in their pid files: each exits 0 after SIGTERM (a clean stop, with its
    stop summary). Failed before the fix: no `bft down`, and the pid file stayed after
    node 3's clean stop."""
    config_path = make_config(tmp_path)
    config = ClusterConfig.load(config_path)
    ensure_keys(config, tmp_path / "keys")
    cluster = LocalCluster(config_path, config=config, state_dir=tmp_path / "state",
                           key_dir=tmp_path / "keys", start_timeout_s=WAIT_S)
    try:
        with trio.fail_after(2 * WAIT_S):
            await cluster.start()
            assert all(read_pid_file(pid_path(cluster.state_dir, i)) == cluster.procs[i].pid
                       for i in range(4))
            await cluster.stop(3)  # SIGTERM from elsewhere: the node removes its pid file
            assert not pid_path(cluster.state_dir, 3).exists()
            lines: list[str] = []
            stopped = await trio.to_thread.run_sync(
                lambda: stop_cluster(config, config_path, cluster.state_dir, lines.append,
                                     timeout_s=WAIT_S))
        print("\n".join(lines))
        assert stopped == 3
        # stop_cluster judges a node gone from /proc (its cmdline empties when the exiting
        # process lets go of its memory), a moment before the kernel makes it a zombie that
        # poll() can reap: reap with a bound, don't poll once (it flaked: [None]*3 + [0])
        codes = [p.popen.wait(timeout=WAIT_S) for p in cluster.procs.values()]
        assert codes == [0] * 4
        assert all(cluster.stop_summary(i) is not None for i in range(4))
        assert not list(cluster.state_dir.glob("*.pid"))
    finally:
        cluster.cleanup()


def test_down_never_signals_a_stale_pid(tmp_path):
    """A pid file whose pid is now another process (here: this test itself, and a process
    that runs `sleep`) is stale: `bft down` removes the file and signals nothing."""
    config_path = make_config(tmp_path)
    config = ClusterConfig.load(config_path)
    state = tmp_path / "state"
    state.mkdir()
    sleeper = subprocess.Popen(["sleep", "60"])
    try:
        pid_path(state, 0).write_text(f"{os.getpid()}\n")
        pid_path(state, 1).write_text(f"{sleeper.pid}\n")
        up_pid_path(state).write_text(f"{sleeper.pid}\n")
        assert not is_node_process(sleeper.pid, config_path, 1)
        lines: list[str] = []
        assert stop_cluster(config, config_path, state, lines.append, timeout_s=1) == 0
        print("\n".join(lines))
        assert sleeper.poll() is None  # not signalled
        assert not list(state.glob("*.pid"))
        assert sum("stale" in line for line in lines) == 3
    finally:
        sleeper.send_signal(signal.SIGKILL)
        sleeper.wait()


def test_up_restart_crashed_brings_a_killed_node_back(tmp_path):
    """Issue 23 item 3: under `bft up --restart-crashed`, a node killed from outside
    (SIGKILL, as a crash) is started again after the backoff, and the restarted node is
    stopped with the rest by `bft down` (SIGTERM to `bft up`). Failed before the fix:
    `bft up` had no --restart-crashed (usage error, exit 2) and nothing restarted."""
    config = make_config(tmp_path)
    state = tmp_path / "state"
    up = start_up(tmp_path, config, state, "--restart-crashed")
    try:
        wait_for("the nodes are ready", lambda: all_ready(state, up))
        old = read_pid_file(pid_path(state, 2))
        assert old is not None and is_node_process(old, config, 2)
        os.kill(old, signal.SIGKILL)

        def back() -> bool:
            pid = read_pid_file(pid_path(state, 2))
            return pid not in (None, old) and is_node_process(pid, config, 2)

        wait_for("node 2 is back", back)
        new = read_pid_file(pid_path(state, 2))
        down = bft("down", str(config), "--state-dir", str(state), cwd=tmp_path)
        assert down.returncode == 0, down.stdout + down.stderr
        up.wait(timeout=WAIT_S)
        out = (tmp_path / "up.out").read_text()
        print(out)
        assert "node 2 crashed (status -9): restart 1/5 in 1 s" in out
        assert f"node 2 restarted (pid {new})" in out
        assert up.returncode == 0
        assert new is not None and not is_node_process(new, config, 2)
        assert not list(state.glob("*.pid"))
    finally:
        if up.poll() is None:
            up.kill()
            up.wait(timeout=WAIT_S)
