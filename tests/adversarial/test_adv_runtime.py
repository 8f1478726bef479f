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
from bft.telemetry import ClearBehaviour, Crash, Cut, Heal, Pause, Resume, SetBehaviour


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
        assert node.extensions == [inst] and node.core is replica
        now = 1.0
        assert inst.obey(node, SetBehaviour("silent"), now)
        assert [b.name for b in node.replica.live] == ["silent"]
        assert inst.status(now)["behaviour"] == "silent"
        assert inst.obey(node, SetBehaviour("gossip"), now)  # refused and logged, goes on
        assert [b.name for b in node.replica.live] == ["silent"]
        assert inst.obey(node, ClearBehaviour(), now)
        assert node.replica.live == [] and inst.status(now)["behaviour"] == ""
        assert "adversary" in node.replica.statistics()
        assert not inst.obey(node, Crash(), now)  # the node's own, not the adversary's
    finally:
        node.close()


def test_the_admins_pause_holds_inputs_beside_a_live_behaviour_until_resume(
        tmp_path: Path) -> None:
    node = make_node(tmp_path)
    try:
        inst = install(node, Scenario())
        wrapper = node.replica
        wrapper.start(0.0)
        inst.obey(node, SetBehaviour("silent"), 1.0)
        assert not inst.status(1.0)["paused"]
        inst.obey(node, Pause(5000), 2.0)
        assert inst.status(2.5)["paused"] and wrapper.holding(6.9)
        assert not wrapper.holding(7.1)  # over after 5 s
        assert sorted(b.name for b in wrapper.live) == ["pause", "silent"]
        inst.obey(node, Resume(), 3.0)
        assert not inst.status(3.0)["paused"] and [b.name for b in wrapper.live] == ["silent"]
        inst.obey(node, Pause(5000), 4.0)
        inst.obey(node, ClearBehaviour(), 4.0)  # clears the behaviour, not the pause
        assert [b.name for b in wrapper.live] == ["pause"] and inst.status(4.5)["paused"]
    finally:
        node.close()


def test_the_admins_cut_drops_datagrams_to_and_from_the_peers_until_heal(
        tmp_path: Path) -> None:
    node = make_node(tmp_path)  # node 1
    try:
        inst = install(node, Scenario())
        send, recv = node.endpoint.send_filter, node.endpoint.recv_filter
        addr = {n.id: tuple(n.address) for n in node.config.nodes}
        client = ("127.0.0.1", 5555)
        assert send(b"d", addr[2]) == [(b"d", addr[2])]
        inst.obey(node, Cut((2,)), 1.0)
        assert send(b"d", addr[2]) == [] and recv(b"d", addr[2]) == []
        assert send(b"d", addr[3]) == [(b"d", addr[3])] and recv(b"d", client) == [(b"d", client)]
        assert inst.drops() == {"cut": 2} and node.summary()["drops"]["cut"] == 2
        inst.obey(node, Cut(), 1.0)  # every peer
        assert all(send(b"d", addr[i]) == [] for i in (0, 2, 3))
        inst.obey(node, Heal(), 1.0)
        assert all(send(b"d", addr[i]) == [(b"d", addr[i])] for i in (0, 2, 3))
    finally:
        node.close()


async def test_a_node_without_the_adversary_refuses_its_commands(tmp_path: Path) -> None:
    """The production node (`bft node` without --adversary or --scenario) is not wrapped and
    carries out no pause, cut or behaviour: each is counted and logged."""
    node = make_node(tmp_path)
    try:
        assert node.replica is node.core and node.extensions == []

        class Cmd:
            def __init__(self, action: object) -> None:
                self.action = action

            def describe(self) -> str:
                return "test"

        for action in (Pause(1000), Cut((2,)), SetBehaviour("lie")):
            await node._obey(Cmd(action), 1.0)
        assert node.stats.drops["control_unsupported"] == 3
        assert node._telemetry_status()["behaviour"] == ""
        assert node._telemetry_status()["paused"] is False
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
