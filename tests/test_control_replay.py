"""Admin control commands cannot be replayed across clusters or after a node restart.

README, dashboard: a node obeys only admin-signed commands made for its cluster
(`control_cluster_id` of its config and keys), issued within the last
`CONTROL_MAX_AGE_S` by the wall clock (with the config's max_clock_skew_s as
tolerance) and numbered above the last one it obeyed, which it keeps in its
state directory across restarts. The commands here are built as `bft ctl`
and the dashboard build them (`tui.net.ControlSender`) and checked as a
running node checks them (`Node.accept_control`).
"""

from __future__ import annotations

import socket
from collections.abc import Awaitable, Callable
from pathlib import Path

import pytest
import trio

from bft.config import ClusterConfig, NodeAddress
from bft.crypto import Ed25519Keys
from bft.node import Node, NodeExtension
from bft.telemetry import Action, Crash, Pause, control_cluster_id
from transport.frame import decode_frame_untrusted
from transport.udp import free_udp_ports
from tui.net import ControlSender

KEYS = Ed25519Keys(4, 1, seed=11, admin=True)
ALPHA = ClusterConfig.local(4, name="alpha")


def command(config: ClusterConfig, action: Action, keys: Ed25519Keys = KEYS) -> bytes:
    """The payload `bft ctl CONFIG --node 1 ...` sends, signed with `KEYS`' admin key."""
    sender = ControlSender(KEYS.signer("admin", 0), control_cluster_id(config, keys.verifier()))
    _cmd, [datagram] = sender.build(1, action)
    return decode_frame_untrusted(datagram).payload


def with_admin_of(keys: Ed25519Keys, seed: int) -> Ed25519Keys:
    """Replica and client keys of their own, the admin key of `keys`."""
    other = Ed25519Keys(4, 1, seed=seed, admin=False)
    admin = ("admin", 0)
    other.private_keys[admin] = keys.private_keys[admin]
    other.public_keys[admin] = keys.public_keys[admin]
    return other


class Obeys(NodeExtension):
    """Takes every action the node hands on (pause, cut, behaviours are an extension's:
    the adversary's), and keeps them."""

    def __init__(self) -> None:
        self.obeyed: list[Action] = []

    def obey(self, node: Node, action: Action, now: float) -> bool:
        self.obeyed.append(action)
        return True


def node(config: ClusterConfig, state_dir: Path, keys: Ed25519Keys = KEYS) -> Node:
    return Node(config, 1, signer=keys.signer("replica", 1), verifier=keys.verifier(),
                state_dir=state_dir, fsync="never", extensions=[Obeys()])


def test_a_command_captured_from_one_cluster_is_refused_by_another(tmp_path: Path) -> None:
    """Two clusters share the admin key; a command recorded on its way to node 1 of cluster
    alpha is sent to node 1 of cluster beta.

    Failed before the fix: a command named only its target node and a seq_no, so node 1 of
    beta (any cluster whose node had obeyed no later command) carried out alpha's crash."""
    beta = ClusterConfig.local(4, name="beta", base_port=7200)
    captured = command(ALPHA, Crash())
    node_b = node(beta, tmp_path / "beta")
    assert node_b.accept_control(captured) is None
    assert node_b.control.statistics()["drops"]["wrong_cluster"] == 1
    # the same config on another machine whose replicas have their own keys (the admin key
    # is shared): another cluster
    twin = node(ALPHA, tmp_path / "twin", keys=with_admin_of(KEYS, seed=12))
    assert twin.accept_control(captured) is None
    assert twin.control.statistics()["drops"]["wrong_cluster"] == 1
    # alpha's own node obeys it
    assert node(ALPHA, tmp_path / "alpha").accept_control(captured) is not None


def test_a_command_is_not_obeyed_again_after_a_restart(tmp_path: Path) -> None:
    """Node 1 obeys a crash command, restarts (a new process on the same state directory)
    and receives the recorded command again.

    Failed before the fix: a restarted node started its last seq_no at its wall clock minus
    max_clock_skew_s, so a command issued in the last second before the restart (the crash
    command itself) was obeyed again: the node crashed again."""
    crash = command(ALPHA, Crash())
    first = node(ALPHA, tmp_path)
    accepted = first.accept_control(crash)
    assert accepted is not None
    restarted = node(ALPHA, tmp_path)
    assert restarted.control.last_seq_no == accepted.seq_no  # remembered in the state dir
    assert restarted.accept_control(crash) is None
    assert restarted.control.statistics()["drops"]["stale_seq_no"] == 1
    assert restarted.accept_control(command(ALPHA, Pause(1000))) is not None  # a new one works


def test_a_damaged_control_file_falls_back_to_the_wall_clock(tmp_path: Path) -> None:
    """Bad input from the disk is no crash: the node starts as if it had no record."""
    first = node(ALPHA, tmp_path)
    assert first.accept_control(command(ALPHA, Pause(1000))) is not None
    for junk in ("", "not a number", "-5", "9" * 40):
        first.control_seq_no_file.write_text(junk)
        restarted = node(ALPHA, tmp_path)
        assert restarted.accept_control(command(ALPHA, Pause(1000))) is not None, junk


@pytest.mark.udp
async def test_a_running_node_obeys_bft_ctl_once_across_a_restart(tmp_path: Path) -> None:
    """End to end over UDP: `bft ctl`'s sender pauses node 1 of a running node process
    (as a Trio task); the node restarts on its state directory and the same datagram,
    replayed, is refused and counted."""
    ports = free_udp_ports(4)
    config = ClusterConfig.local(
        4, name="alpha", fsync="never",
        nodes=tuple(NodeAddress(i, "127.0.0.1", ports[i]) for i in range(4)))
    sender = ControlSender(KEYS.signer("admin", 0), control_cluster_id(config, KEYS.verifier()))
    cmd, [datagram] = sender.build(1, Pause(60_000))

    async def running(body: Callable[[Node], Awaitable[None]]) -> None:
        n = node(config, tmp_path)
        async with trio.open_nursery() as nursery:
            await nursery.start(n.run)
            await body(n)
            nursery.cancel_scope.cancel()

    with trio.fail_after(20), socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:

        async def obeys(n: Node) -> None:
            sock.sendto(datagram, ("127.0.0.1", ports[1]))
            while not n.extensions[0].obeyed:
                await trio.sleep(0.005)
            assert n.control.last_seq_no == cmd.seq_no and n.extensions[0].obeyed == [cmd.action]

        async def refuses_the_replay(n: Node) -> None:
            sock.sendto(datagram, ("127.0.0.1", ports[1]))
            while not n.control.statistics()["drops"]["stale_seq_no"]:
                await trio.sleep(0.005)
            assert not n.extensions[0].obeyed and n.control.accepted == 0

        await running(obeys)
        await running(refuses_the_replay)
