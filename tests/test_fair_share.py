"""Fair shares in the node's receive path (issue 21, "per-source budgets and fair queuing").

Replica traffic (a replica's sender id from its configured address) and requests from a
client's verified address are always processed; datagrams from unknown sources (any other
address, or a replica's or client's id from another address) get at most
`Node.unknown_per_batch` places in each batch the loop drains from the socket, the rest
dropped unread (`shed_unknown_source`), before any decode or signature check. Measured
by `benchmarks/attack_cost.py`: a forged request costs a node one failed Ed25519 check,
~50-200 us; a flood of them at one Python process's rate kept node 1 busy with nothing
else (benchmarks/RESULTS.md, "Attacks").

Over loopback UDP, counted (not timed): node 1's socket is filled before it runs with
1,500 forged requests from a stranger's port, 20 genuine STATUS from replica 0's address
and 5 requests from a client at its verified address, interleaved; then node 1 runs. Every
replica message and every client request is checked and taken, while the forged requests
cost at most the unknown share of each batch.

Failed before the fix: node 1 checked all 1,500 forged requests (1,500 failed Ed25519
checks; no shed counter).

Run twice: with the kernel steering strangers to a socket of their own (the default,
transport/udp.py "Trusted sources and strangers": what does not fit the strangers' small
buffer is dropped by the kernel, `stranger_kernel_drop`, and the node reads at most its
share of the rest) and without it (`Node.kernel_steering = False`: one socket, the
shares taken in Python, `shed_unknown_source`).
"""

from __future__ import annotations

import random
import socket
from pathlib import Path
from typing import Any

import pytest
import trio

from bft import codec
from bft.config import CLIENT_SENDER_BASE, ClusterConfig, NodeAddress
from bft.crypto import Ed25519Keys, Verifier
from bft.messages import Request, Status
from bft.node import Node
from transport.frame import encode_frames
from transport.udp import free_udp_ports

SEED = 2121
pytestmark = pytest.mark.udp


class CountingVerifier(Verifier):
    """Counts Ed25519 checks by identity and outcome."""

    def __init__(self, public_keys: Any) -> None:
        super().__init__(public_keys)
        self.passed: dict[Any, int] = {}
        self.failed = 0

    def _check(self, identity: Any, data: bytes, signature: bytes) -> bool:
        ok = super()._check(identity, data, signature)
        if ok:
            self.passed[identity] = self.passed.get(identity, 0) + 1
        else:
            self.failed += 1
        return ok


@pytest.mark.parametrize("steering", [True, False], ids=["kernel", "python"])
async def test_replica_and_known_client_traffic_is_processed_under_a_flood(
        tmp_path: Path, steering: bool) -> None:
    print(f"seed={SEED}")
    rng = random.Random(SEED)
    ports = free_udp_ports(4)
    config = ClusterConfig.local(4, clients=2, fsync="never", nodes=tuple(
        NodeAddress(i, "127.0.0.1", ports[i]) for i in range(4)))
    keys = Ed25519Keys(4, 2, seed=SEED)
    verifier = CountingVerifier(keys.public_keys)
    node = Node(config, 1, signer=keys.signer("replica", 1), verifier=verifier,
                state_dir=tmp_path)
    node.kernel_steering = steering
    node.open()
    assert node.endpoint is not None
    assert node.endpoint.steering == ("on" if steering else "off")
    replica0 = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    stranger = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    client = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    try:
        replica0.bind(("127.0.0.1", ports[0]))
        stranger.bind(("127.0.0.1", 0))
        client.bind(("127.0.0.1", 0))
        # the client is known: its verified address is this socket's (as after its first
        # fresh request)
        node.client_addrs[0] = client.getsockname()
        node.client_latest[0] = 0
        node._set_trusted_sources()  # (what the node does when it verifies the request)
        forger = Ed25519Keys(4, 2, seed=SEED + 1).signer("client", 1)
        mid = rng.getrandbits(40)
        now_us = 1_700_000_000_000_000

        def frame(sender: int, message: Any) -> bytes:
            nonlocal mid
            mid += 1
            [datagram] = encode_frames(sender, mid, codec.encode(message), 1400)
            return datagram

        genuine_status = 0
        client_requests = 0
        for i in range(1500):
            stranger.sendto(frame(CLIENT_SENDER_BASE + 1,
                                  forger.sign(Request(b"x", now_us + i, 1))), node.endpoint.address)
            if i % 75 == 0:
                genuine_status += 1
                replica0.sendto(frame(0, keys.signer("replica", 0).sign(
                    Status(0, 0, genuine_status, (), (), 0, 0))), node.endpoint.address)
            if i % 300 == 0:
                client_requests += 1
                client.sendto(frame(CLIENT_SENDER_BASE + 0, keys.signer("client", 0).sign(
                    Request(b"get", 10 + i, 0))), node.endpoint.address)
        assert (genuine_status, client_requests) == (20, 5)
        async with trio.open_nursery() as nursery:
            await nursery.start(node.run)
            with trio.fail_after(30):
                while (node.endpoint.statistics()["received_datagrams"]
                       + kernel_drops(node) < 1525):
                    await trio.sleep(0.01)
            nursery.cancel_scope.cancel()
    finally:
        for s in (replica0, stranger, client):
            s.close()
    batches = node.stats.batches or 1
    shed = node.stats.drops["shed_unknown_source"] + kernel_drops(node)
    print(f"batches={node.stats.batches} shed={shed} failed={verifier.failed} "
          f"passed={verifier.passed}")
    # every replica message and every request of the known client was checked and taken
    assert verifier.passed.get(("replica", 0)) == genuine_status
    # (the first is checked and pending at this backup; the later ones would queue behind
    # it: dropped unchecked, `client_outstanding`, tests/test_client_share.py)
    assert verifier.passed.get(("client", 0)) == 1
    assert node.stats.drops["client_outstanding"] == client_requests - 1
    # the forged requests cost at most the unknown share of each batch
    assert verifier.failed <= node.unknown_per_batch * batches
    assert verifier.failed + shed == 1500
    if steering:  # the kernel dropped what did not fit the strangers' buffer
        assert kernel_drops(node) > 0


def kernel_drops(node: Node) -> int:
    assert node.endpoint is not None
    return int(node.endpoint.statistics()["drops"]["stranger_kernel_drop"])
