"""Forged admin commands cost a node a bounded number of signature checks.

Issue 21, item 2: 10,000 forged control commands a second (labelled as the admin's,
badly signed, each with a fresh seq_no, so that every cheap check passes) cost ~75 %
of throughput, because each was verified. Now `ControlGate` checks signatures within
a budget (`CONTROL_VERIFY_PER_S`, `CONTROL_VERIFY_BURST`) for the dashboard's address
(the config's monitor address) and another for every other source together, and
penalizes a source whose command failed the check for `CONTROL_PENALTY_S`. Genuine
commands keep getting through.

The verifications are counted where they happen: `CountingVerifier` counts every call
of `verify_bytes`. `unbounded_gate` plants the old behaviour (no budget, no penalty).
"""

from __future__ import annotations

import random
import socket
from pathlib import Path
from typing import Any

import pytest
import trio

from bft.config import ClusterConfig, NodeAddress
from bft.crypto import Ed25519Keys
from bft.node import Node
from bft.telemetry import (
    CONTROL_VERIFY_BURST,
    CONTROL_VERIFY_PER_S,
    ControlCommand,
    ControlGate,
    Pause,
    Resume,
    control_cluster_id,
    encode_signed,
)
from transport.frame import encode_frames
from transport.udp import free_udp_ports
from tui.net import ControlSender

from test_control_replay import KEYS, Obeys

S = 1_000_000  # microseconds
NOW = 1_700_000_000 * S
MONITOR = ("127.0.0.1", 7199)
CLUSTER = control_cluster_id(ClusterConfig.local(4, name="alpha"), KEYS.verifier())
#: A key that is not the admin's: commands signed with it and labelled as the admin's.
FORGER = Ed25519Keys(4, 1, seed=99, admin=True).signer("admin", 0)


class CountingVerifier:
    """KEYS' verifier, counting its `verify_bytes` calls (each one an Ed25519 check)."""

    def __init__(self) -> None:
        self.inner = KEYS.verifier()
        self.checks = 0

    def verify_bytes(self, identity: Any, data: bytes, signature: bytes) -> bool:
        self.checks += 1
        return bool(self.inner.verify_bytes(identity, data, signature))

    def __getattr__(self, name: str) -> Any:
        return getattr(self.inner, name)


def forged(seq_no: int, target: int = 1) -> bytes:
    return encode_signed(ControlCommand(CLUSTER, target, seq_no, Pause(60_000)), FORGER)


def genuine(seq_no: int, target: int = 1) -> bytes:
    return encode_signed(ControlCommand(CLUSTER, target, seq_no, Resume()), KEYS.signer("admin", 0))


def unbounded_gate() -> ControlGate:
    """The old gate, planted: no budget worth the name, no penalty."""
    return ControlGate(1, CLUSTER, trusted_sources=[MONITOR], verify_per_s=1e12,
                       verify_burst=10**12, penalty_s=0)


def flood(gate: ControlGate, verifier: CountingVerifier, sources: list[Any],
          count: int, duration_s: float) -> None:
    """`count` forged commands spread evenly over `duration_s`, each with a fresh seq_no
    (its send time), from `sources` in turn."""
    for i in range(count):
        now = NOW + round(i * duration_s * S / count)
        assert gate.accept(forged(now), verifier, now, sources[i % len(sources)]) is None


@pytest.mark.parametrize("planted", [False, True])
@pytest.mark.parametrize("ports", [1, 200])
def test_a_flood_of_forged_commands_costs_at_most_the_budget(planted: bool, ports: int) -> None:
    """10,000 forged commands in one second from 1 or 200 source ports: at most the burst
    plus one second's refill are verified (the planted old gate verifies every one), and
    the dashboard's command (from the monitor address) and `bft ctl`'s (from a new port)
    still get through."""
    seed = 2021
    print("seed", seed)
    rng = random.Random(seed)
    gate = unbounded_gate() if planted else ControlGate(1, CLUSTER, trusted_sources=[MONITOR])
    verifier = CountingVerifier()
    attackers = [("127.0.0.1", 40000 + rng.randrange(20000)) for _ in range(ports)]
    flood(gate, verifier, attackers, 10_000, 1.0)
    budget = CONTROL_VERIFY_BURST + CONTROL_VERIFY_PER_S * 1.0
    drops = gate.statistics()["drops"]
    assert gate.statistics()["verified"] == verifier.checks == drops["bad_signature"]
    if planted:
        assert verifier.checks == 10_000  # what the count catches
        return
    assert verifier.checks <= budget
    assert drops["rate_limited"] + drops["source_penalized"] == 10_000 - verifier.checks
    now = NOW + S
    assert gate.accept(genuine(now), verifier, now, MONITOR) is not None
    if ports == 1:  # the one forging source is penalized: the others' budget is left
        assert gate.accept(genuine(now + 1), verifier, now + 1, ("127.0.0.1", 39999)) is not None
        assert drops["source_penalized"] > 9_000


def test_the_budget_refills_and_a_penalty_ends() -> None:
    gate = ControlGate(1, CLUSTER, verify_per_s=2.0, verify_burst=2, penalty_s=1.0)
    verifier = CountingVerifier()
    a, b, c = ("127.0.0.1", 1), ("127.0.0.1", 2), ("127.0.0.1", 3)
    assert gate.accept(forged(NOW), verifier, NOW, a) is None  # checked: a is penalized
    assert gate.accept(forged(NOW + 1), verifier, NOW + 1, a) is None  # not checked
    assert gate.accept(forged(NOW + 2), verifier, NOW + 2, b) is None  # checked: spent
    assert gate.accept(genuine(NOW + 3), verifier, NOW + 3, c) is None  # rate limited
    assert verifier.checks == 2
    later = NOW + 3 + S // 2  # one check refilled since the last take
    assert gate.accept(genuine(later), verifier, later, c) is not None
    later = NOW + S + 1  # a's penalty is over, and another check refilled
    assert gate.accept(genuine(later), verifier, later, a) is not None
    drops = gate.statistics()["drops"]
    assert (drops["source_penalized"], drops["rate_limited"], drops["bad_signature"]) == (1, 1, 2)
    with pytest.raises(ValueError):
        ControlGate(1, CLUSTER, verify_per_s=0)


def test_penalized_sources_are_bounded() -> None:
    gate = ControlGate(1, CLUSTER, verify_per_s=1e6, verify_burst=10**6, max_penalized=3)
    verifier = CountingVerifier()
    for port in range(10):
        gate.accept(forged(NOW + port), verifier, NOW + port, ("127.0.0.1", port))
    assert len(gate._penalized) == 3
    assert list(gate._penalized) == [("127.0.0.1", p) for p in (7, 8, 9)]


@pytest.mark.udp
async def test_a_running_node_under_a_control_flood_checks_within_its_budget(
        tmp_path: Path) -> None:
    """Over UDP: 2,000 forged, framed commands from 20 ports reach node 1, then the
    dashboard's genuine one (from the monitor address): the node obeys it, and it checked
    at most the budget of signatures of control commands."""
    ports = free_udp_ports(5)
    monitor = ("127.0.0.1", ports[4])
    config = ClusterConfig.local(
        4, name="alpha", fsync="never", monitor=monitor,
        nodes=tuple(NodeAddress(i, "127.0.0.1", ports[i]) for i in range(4)))
    cluster = control_cluster_id(config, KEYS.verifier())
    n = Node(config, 1, signer=KEYS.signer("replica", 1), verifier=KEYS.verifier(),
             state_dir=tmp_path, fsync="never", extensions=[Obeys()])
    attackers = [socket.socket(socket.AF_INET, socket.SOCK_DGRAM) for _ in range(20)]
    dashboard = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    try:
        dashboard.bind(monitor)
        for s in attackers:
            s.bind(("127.0.0.1", 0))
        with trio.fail_after(20):
            async with trio.open_nursery() as nursery:
                await nursery.start(n.run)
                started_s = trio.current_time()
                start = n.control.statistics()["drops"]
                for i in range(2000):
                    seq_no = ControlSender(FORGER, cluster).next_seq_no()
                    payload = encode_signed(ControlCommand(cluster, 1, seq_no, Pause(60_000)),
                                            FORGER)
                    attackers[i % 20].sendto(encode_frames(2**32 - 1, i, payload, 1400)[0],
                                             ("127.0.0.1", ports[1]))
                    if i % 50 == 49:  # let the node drain: its socket buffer may be small
                        while sum(n.control.statistics()["drops"].values()) - sum(
                                start.values()) < i + 1:
                            await trio.sleep(0.001)
                sender = ControlSender(KEYS.signer("admin", 0), cluster)
                cmd, [datagram] = sender.build(1, Resume())
                dashboard.sendto(datagram, ("127.0.0.1", ports[1]))
                while not n.extensions[0].obeyed:
                    await trio.sleep(0.005)
                elapsed_s = trio.current_time() - started_s
                nursery.cancel_scope.cancel()
    finally:
        dashboard.close()
        for s in attackers:
            s.close()
    stats = n.control.statistics()
    assert n.extensions[0].obeyed == [cmd.action]
    # both budgets' bursts and their refill over the whole run
    assert stats["verified"] <= 2 * (CONTROL_VERIFY_BURST + CONTROL_VERIFY_PER_S * elapsed_s)
    assert stats["drops"]["bad_signature"] == stats["verified"] - 1
    assert stats["drops"]["rate_limited"] + stats["drops"]["source_penalized"] > 1700


@pytest.mark.udp
def test_bft_ctl_sends_from_the_monitor_address_when_it_is_free() -> None:
    """`send_control_now(..., source)`: from `source` (a node's trusted source) when it can
    bind it, else from any port (a dashboard holds it), and the command is sent either way."""
    from tui.net import send_control_now

    free, taken = free_udp_ports(2)
    sender = ControlSender(KEYS.signer("admin", 0), CLUSTER)
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as node_sock, \
            socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as dashboard:
        node_sock.bind(("127.0.0.1", 0))
        node_sock.settimeout(5)
        dashboard.bind(("127.0.0.1", taken))
        send_control_now(sender, 1, Resume(), node_sock.getsockname(), ("127.0.0.1", free))
        assert node_sock.recvfrom(65536)[1] == ("127.0.0.1", free)
        send_control_now(sender, 1, Resume(), node_sock.getsockname(), ("127.0.0.1", taken))
        assert node_sock.recvfrom(65536)[1][1] != taken
