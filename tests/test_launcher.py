"""bft/launcher.py, the one local-cluster launcher: readiness from the node's ready file, a
node that dies at start named with its output, stop (SIGTERM, then SIGKILL after the bound)
leaving no process behind, stop summaries collected, the parent-death signal, and `bft up`
on top of it. Real processes on loopback; every wait is bounded."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import textwrap
import time
from collections.abc import Sequence
from pathlib import Path

import pytest
import trio

from bft.config import ClusterConfig
from bft.launcher import (
    LaunchError,
    LocalCluster,
    config_to_toml,
    ensure_keys,
    read_ready_file,
    throwaway_config,
    write_ready_file,
)

pytestmark = pytest.mark.udp


def dead(pid: int) -> bool:
    """Whether process `pid` is gone or a zombie (a dead child nobody reaped yet)."""
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (OSError, IndexError):
        return True
    return state in ("Z", "X")


def make_cluster(root: Path, n: int = 4, **options) -> LocalCluster:  # type: ignore[no-untyped-def]
    path = root / "cluster.toml"
    root.mkdir(parents=True, exist_ok=True)
    path.write_text(config_to_toml(throwaway_config(n, name="launcher")))
    config = ClusterConfig.load(path)
    ensure_keys(config, root / "keys")
    return LocalCluster(path, config=config, state_dir=root / "state", key_dir=root / "keys",
                        **options)


class FakeNodes(LocalCluster):
    """Nodes that are a small Python script: `before`, then (if `ready`) the ready file,
    then sleep (for the paths a real node never takes)."""

    def __init__(self, root: Path, before: str = "", *, ready: bool = True,
                 **options) -> None:  # type: ignore[no-untyped-def]
        root.mkdir(parents=True, exist_ok=True)
        path = root / "cluster.toml"
        path.write_text(config_to_toml(throwaway_config(4, name="fake")))
        super().__init__(path, state_dir=root / "state", key_dir=root / "keys", **options)
        self.before, self.ready = before, ready

    def command(self, node_id: int, extra_args: Sequence[str] = ()) -> list[str]:
        ready = (f"from bft.launcher import write_ready_file\n"
                 f"write_ready_file({str(self.ready_path(node_id))!r}, id={node_id})\n")
        code = (f"import signal, sys, time\n{textwrap.dedent(self.before)}\n"
                f"{ready if self.ready else ''}time.sleep(60)\n")
        return [sys.executable, "-c", code]


def test_a_ready_file_counts_only_for_the_pid_that_wrote_it(tmp_path: Path) -> None:
    path = tmp_path / "node-0.ready"
    assert read_ready_file(path, os.getpid()) is None  # not there yet
    write_ready_file(path, id=0, view=3)
    assert read_ready_file(path, os.getpid()) == {"pid": os.getpid(), "id": 0, "view": 3}
    # planted: a file left by an earlier incarnation (another pid) is not readiness
    assert read_ready_file(path, os.getpid() + 1) is None
    path.write_text("{not json")  # half-written or damaged: not ready, no exception
    assert read_ready_file(path, os.getpid()) is None


async def test_start_waits_for_readiness_and_stop_collects_summaries(tmp_path: Path) -> None:
    cluster = make_cluster(tmp_path)
    try:
        with trio.fail_after(60):
            await cluster.start()
            ready = {i: p.ready for i, p in cluster.procs.items()}
            assert sorted(ready) == [0, 1, 2, 3]
            for i, info in ready.items():
                assert info is not None and info["pid"] == cluster.procs[i].pid
                assert info["address"] == str(cluster.config.node(i))
                assert (info["id"], info["view"], info["last_executed"]) == (i, 0, 0)
            await cluster.barrier()  # ready means serving: every replica executes a read
            pids = [p.pid for p in cluster.all_procs]
            alone = await cluster.stop(3)
            with pytest.raises(LaunchError, match="node 3 is not running"):
                await cluster.stop(3)
            summaries = await cluster.stop_all()
    finally:
        cluster.cleanup()
    assert sorted(summaries) == [0, 1, 2]
    summaries[3] = alone
    assert len({s["state_digest"] for s in summaries.values()}) == 1
    assert all(s["event"] == "stop" and s["last_executed"] >= 1 for s in summaries.values())
    # every spawned node sorted its traffic in the kernel (issue 21: transport/udp.py)
    assert all(s["transport"]["steering"] == "on" for s in summaries.values())
    assert all(p.returncode == 0 for p in cluster.all_procs)
    assert all(dead(pid) for pid in pids)
    assert "listening on" in cluster.output(0)  # the human line is still printed


async def test_a_node_that_dies_at_start_is_named_with_its_output(tmp_path: Path) -> None:
    cluster = make_cluster(tmp_path)
    blocker = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    blocker.bind(cluster.config.node(2).address)  # node 2 cannot bind its port
    try:
        with trio.fail_after(30), pytest.raises(LaunchError) as caught:
            await cluster.start(2)
    finally:
        blocker.close()
        cluster.cleanup()
    message = str(caught.value)
    out_path = tmp_path / "state" / "node-2.run1.out"
    assert message.startswith("node 2 exited with status 2 before it was ready")
    assert str(out_path) in message and "address already in use" in message
    assert "address already in use" in out_path.read_text()


async def test_a_node_not_ready_in_time_is_named_and_killed_by_cleanup(tmp_path: Path) -> None:
    cluster = FakeNodes(tmp_path, "print('still booting', flush=True)", ready=False,
                        start_timeout_s=3.0)
    try:
        with trio.fail_after(20), pytest.raises(LaunchError, match="node 1 was not ready within "
                                                "3 s") as caught:
            await cluster.start(1)
        assert "still booting" in str(caught.value)
    finally:
        cluster.cleanup()
    assert dead(cluster.procs[1].pid)


async def test_stop_kills_a_node_that_ignores_sigterm_and_says_so(tmp_path: Path) -> None:
    """The stop bound: a node that does not exit on SIGTERM is SIGKILLed after
    `stop_timeout_s`, and a strict stop reports it; no process is left either way."""
    cluster = FakeNodes(tmp_path, "signal.signal(signal.SIGTERM, signal.SIG_IGN)",
                        stop_timeout_s=0.5)
    try:
        with trio.fail_after(20):
            await cluster.start(0, 1)
            with pytest.raises(LaunchError) as caught:
                await cluster.stop_all()
    finally:
        cluster.cleanup()
    message = str(caught.value)
    assert "node 0 did not stop within 0.5 s of SIGTERM (killed)" in message
    assert "node 1 did not stop" in message
    assert [p.returncode for p in cluster.all_procs] == [-signal.SIGKILL] * 2
    assert all(dead(p.pid) for p in cluster.all_procs)


async def test_a_node_without_a_stop_summary_fails_a_strict_stop(tmp_path: Path) -> None:
    cluster = FakeNodes(tmp_path)  # dies of SIGTERM, logs nothing
    try:
        with trio.fail_after(20):
            await cluster.start(3)
            with pytest.raises(LaunchError, match=f"node 3 exited with status {-signal.SIGTERM}"):
                await cluster.stop_all()
            await cluster.start(3)
            assert await cluster.stop_all(strict=False) == {}  # lenient: what there is
    finally:
        cluster.cleanup()
    assert [p.node_id for p in cluster.all_procs] == [3, 3]
    assert cluster.all_procs[1].out_path.name == "node-3.run2.out"


def test_nodes_die_with_their_launcher(tmp_path: Path) -> None:
    """The parent-death signal: SIGKILL the launcher process, its nodes die too."""
    launcher = subprocess.Popen(
        [sys.executable, "-c", textwrap.dedent("""
            import subprocess, sys, time
            from bft.launcher import spawn
            child = spawn([sys.executable, "-c", "import time; time.sleep(60)"],
                          stdout=subprocess.DEVNULL)
            print(child.pid, flush=True)
            time.sleep(60)
        """)], stdout=subprocess.PIPE, text=True, cwd=tmp_path,
        env=dict(os.environ, PYTHONPATH=os.pathsep.join(sys.path)))
    child = 0
    try:
        assert launcher.stdout is not None
        child = int(launcher.stdout.readline())
        assert not dead(child)
        launcher.kill()
        launcher.wait(timeout=10)
        deadline = time.monotonic() + 10
        while not dead(child) and time.monotonic() < deadline:
            time.sleep(0.02)
        assert dead(child), f"node {child} outlived its launcher"
    finally:
        if launcher.poll() is None:
            launcher.kill()
            launcher.wait(timeout=10)
        if launcher.stdout is not None:
            launcher.stdout.close()
        if child and not dead(child):
            os.kill(child, signal.SIGKILL)


def test_bft_up_fails_clearly_when_a_node_cannot_start(tmp_path: Path) -> None:
    path = tmp_path / "cluster.toml"
    config = throwaway_config(4, name="up-fails")
    path.write_text(config_to_toml(config))
    blocker = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    blocker.bind(config.node(1).address)
    try:
        out = subprocess.run([sys.executable, "-m", "bft", "up", str(path), "--no-tui",
                              "--state-dir", str(tmp_path / "state"), "--duration", "20"],
                             capture_output=True, text=True, timeout=60, check=False)
    finally:
        blocker.close()
    # refused before any node is spawned (issue 23 item 3), naming the node and address
    assert out.returncode == 2, out.stdout + out.stderr
    assert (f"bft: error: address in use: node 1's 127.0.0.1:{config.node(1).port}"
            in out.stderr), out.stderr
    assert "started" not in out.stdout and not (tmp_path / "state" / "node-1.run1.out").exists()
