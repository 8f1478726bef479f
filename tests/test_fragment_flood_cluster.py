"""A 4-node cluster commits large requests while strangers flood it with fragments.

Issue 21, item 3, end to end over loopback UDP (all nodes in this process): 200
stranger sockets keep sending first fragments of messages that never complete to
every node, enough to fill each node's strangers' reassembly share many times over,
while a client writes values whose requests and pre-prepares need reassembly. The
replicas' messages are reassembled within their reserved budgets.

On loopback a replica's fragments arrive back to back, so few flood fragments fall
in between: with the old policy planted this test fails only at the reserved_peers
check. The tests that fail with the old policy, by interleaving the flood with a
peer's fragments, are in tests/test_reassembly_reserved.py.

Run with the kernel steering strangers apart (transport/udp.py) and without: with it, the
kernel drops the flood (first fragments framed with a replica's sender id from strangers'
ports: `stranger_kernel_drop`) and reassembly never sees it; without it, the flood fills
the strangers' reassembly share, which is what this test was written for.
"""

from __future__ import annotations

import socket
import struct
from pathlib import Path

import pytest
import trio
from crc32c import crc32c

from bft.app import Ops, decode_result
from bft.codec import Limits
from bft.config import ClusterConfig, NodeAddress
from bft.crypto import Ed25519Keys
from bft.node import ClusterClient, Node
from transport.frame import MAGIC, OVERHEAD_BYTES, VERSION, decode_frame_untrusted
from transport.udp import free_udp_ports

pytestmark = pytest.mark.udp


def first_fragment(message_id: int) -> bytes:
    """The first of 44 fragments of a 60,000-byte message from sender id 3."""
    body = struct.pack("!2sBIQHHI", MAGIC, VERSION, 3, message_id, 0, 44, 60_000)
    body += b"\x00" * (1400 - OVERHEAD_BYTES)
    return body + struct.pack("!I", crc32c(body))


def evicted(node: Node) -> int:
    assert node.endpoint is not None
    return int(node.endpoint.statistics()["drops"]["evicted_total_bytes"])


@pytest.mark.parametrize("steering", [True, False], ids=["kernel", "python"])
async def test_large_requests_commit_through_a_fragment_flood(tmp_path: Path,
                                                              steering: bool) -> None:
    ports = free_udp_ports(4)
    config = ClusterConfig.local(
        4, clients=1, fsync="never", limits=Limits(max_message_bytes=64 * 1024),
        nodes=tuple(NodeAddress(i, "127.0.0.1", ports[i]) for i in range(4)))
    keys = Ed25519Keys(4, 1, seed=1)
    nodes = [Node(config, i, signer=keys.signer("replica", i), verifier=keys.verifier(),
                  state_dir=tmp_path / f"n{i}") for i in range(4)]
    for n in nodes:
        n.kernel_steering = steering
    strangers = [socket.socket(socket.AF_INET, socket.SOCK_DGRAM) for _ in range(200)]
    for s in strangers:
        s.bind(("127.0.0.1", 0))
        s.setblocking(False)
    # first fragments of 60 KB messages that never complete, as a stranger would send
    junk = [first_fragment(mid) for mid in range(4000)]
    assert decode_frame_untrusted(junk[0]).fragment_count == 44
    flooded = 0

    async def flood() -> None:
        nonlocal flooded
        while True:
            for port in ports:
                try:
                    strangers[flooded // 4 % 200].sendto(junk[flooded // 4 % 4000],
                                                         ("127.0.0.1", port))
                except BlockingIOError:
                    pass
                flooded += 1
            if flooded % 40 == 0:
                await trio.sleep(0)

    try:
        async with trio.open_nursery() as nursery:
            for node in nodes:
                await nursery.start(node.run)
            nursery.start_soon(flood)
            client = ClusterClient(config, 0, signer=keys.signer("client", 0),
                                   verifier=keys.verifier())
            with trio.fail_after(60):
                # the flood fills every node's strangers' share before the writes start (or,
                # with the kernel's filter, is dropped there)
                reason = "stranger_kernel_drop" if steering else "evicted_total_bytes"
                while not all(n.endpoint.statistics()["drops"][reason]
                              for n in nodes if n.endpoint is not None):
                    await trio.sleep(0.01)
                before = [evicted(n) for n in nodes]
                for k in range(3):
                    value = bytes([k]) * 20_000  # ~15 datagrams a request, more a pre-prepare
                    result = await client.call(Ops.put(f"k{k}", value), timeout_s=10)
                    assert str(decode_result(result)) == "ok"
                while len({n.replica.last_executed for n in nodes}) != 1:
                    await trio.sleep(0.01)
            client.close()
            nursery.cancel_scope.cancel()
            during = [evicted(n) - b for n, b in zip(nodes, before, strict=True)]
    finally:
        for s in strangers:
            s.close()
    assert len({n.state_digest() for n in nodes}) == 1
    if steering:  # nothing of the flood reached reassembly
        assert during == [0, 0, 0, 0]
        assert all(n.endpoint is not None and n.endpoint.statistics()["drops"][
            "stranger_kernel_drop"] > 1000 for n in nodes)
    else:  # the strangers' share stayed full during the writes: the flood evicted its own
        assert all(d > 0 for d in during), during
    for n in nodes:
        assert n.endpoint is not None
        stats = n.endpoint.statistics()
        assert stats["reassembly"]["reserved_peers"] == 3
