"""The adversary in a real node: `install` into a `bft.node.Node`, and the launcher's part
(SIGSTOP/SIGCONT and restarts) against real processes."""

from __future__ import annotations

import dataclasses
import subprocess
import sys
from pathlib import Path

import pytest
import trio

from adversary.behaviours import ByzantineNode, make_rule
from adversary.localcluster import free_udp_ports
from adversary.netfaults import make_network_rule
from adversary.runtime import (
    LauncherAction,
    install,
    launcher_actions,
    pause_process,
    run_launcher,
)
from adversary.scenario import Scenario
from bft.config import ClusterConfig, NodeAddress
from bft.crypto import SimKeys
from bft.errors import ConfigError
from bft.node import Node


def make_node(tmp_path: Path, node_id: int = 1) -> Node:
    nodes = tuple(NodeAddress(i, "127.0.0.1", port) for i, port in enumerate(free_udp_ports(4)))
    config = dataclasses.replace(ClusterConfig.local(4), nodes=nodes)
    keys = SimKeys(1, n_replicas=4, n_clients=4)
    node = Node(config, node_id, signer=keys.signer("replica", node_id),
                verifier=keys.verifier(), state_dir=tmp_path, fsync="never")
    node.open()
    return node


def test_install_wraps_the_replica_filters_the_endpoint_and_hooks_behaviours(
        tmp_path: Path) -> None:
    node = make_node(tmp_path)
    try:
        replica = node.replica
        scenario = Scenario((make_rule(1, "slow"), make_rule(2, "lie")),
                            (make_network_rule("drop", rate=0.1),))
        inst = install(node, scenario, seed=3)
        assert isinstance(node.replica, ByzantineNode) and node.replica.inner is replica
        assert [r.behaviour for r in inst.rules] == ["slow"]  # only this node's rules
        assert node.endpoint.send_filter is not None and node.endpoint.recv_filter is not None
        assert node.replica.view == 0 and node.summary()["state_digest"]  # the replica's
        replica.counters["status_resends"] += 2  # the core's counters, not the wrapper's
        assert node.summary()["replica_counters"] == {"status_resends": 2}
        node.set_behaviour("silent", {})
        assert [b.name for b in node.replica.live] == ["silent"] and node.behaviour == "silent"
        node.set_behaviour("gossip", {})  # refused and logged, the node goes on
        assert [b.name for b in node.replica.live] == ["silent"]
        node.set_behaviour("", {})
        assert node.replica.live == []
        assert "adversary" in node.replica.statistics()
    finally:
        node.close()


def test_install_refuses_twins_and_unknown_replicas(tmp_path: Path) -> None:
    node = make_node(tmp_path)
    try:
        with pytest.raises(ConfigError, match="simulator"):
            install(node, Scenario((make_rule(1, "twins"),)))
        with pytest.raises(ConfigError, match="not in 0..3"):
            install(node, Scenario((make_rule(9, "slow"),)))
    finally:
        node.close()


def test_launcher_actions_of_a_scenario() -> None:
    scenario = Scenario((
        make_rule(0, "pause", start_s=1.0, params={"duration_s": 2.0, "mode": "sigstop"}),
        make_rule(1, "pause", start_s=1.0),  # held in the process: nothing for the launcher
        make_rule(2, "crash", start_s=0.5, params={"restart_after_s": 1.0}),
        make_rule(3, "crash", params={"restart": False}),
    ))
    assert launcher_actions(scenario) == [
        LauncherAction(1.0, 0, "sigstop"), LauncherAction(1.5, 2, "restart"),
        LauncherAction(3.0, 0, "sigcont")]


def _state(pid: int) -> str:
    return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]


async def _wait_state(pid: int, want: str) -> None:
    with trio.fail_after(5):
        while _state(pid) != want:
            await trio.sleep(0.01)


@pytest.mark.skipif(not Path("/proc/self/stat").exists(), reason="needs /proc")
async def test_launcher_stops_and_continues_a_real_process() -> None:
    proc = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])  # noqa: ASYNC220
    restarted: list[int] = []
    done: list[LauncherAction] = []

    async def restart(node: int) -> None:
        restarted.append(node)

    try:
        actions = [LauncherAction(0.05, 0, "sigstop"), LauncherAction(0.4, 0, "sigcont"),
                   LauncherAction(0.45, 1, "restart")]
        async with trio.open_nursery() as nursery:
            nursery.start_soon(lambda: run_launcher(actions, pid_of=lambda i: proc.pid,
                                                    restart=restart, on_action=done.append))
            await _wait_state(proc.pid, "T")
            await _wait_state(proc.pid, "S")
        assert restarted == [1] and done == actions
        async with trio.open_nursery() as nursery:
            nursery.start_soon(pause_process, proc.pid, 0.3)
            await _wait_state(proc.pid, "T")
        await _wait_state(proc.pid, "S")
    finally:
        proc.kill()
        proc.wait(timeout=10)
