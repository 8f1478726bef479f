"""Fair queuing per client id in the node's receive path (issue 21 item "per-client fair
queuing"; Aardvark, Clement et al. NSDI'09, section 4.2: a faulty client must not starve
the others).

A faulty client WITH a valid key, sending from its own verified address, passes every
source check of `Node._fair_share`: before this change each of its requests was taken,
decoded, verified (a fresh number costs an Ed25519 check) and queued by the replica, as
many as the socket held. Now each client id gets at most `Node.client_per_batch` requests
in each batch the node drains, taken round-robin across client ids; the rest are dropped
unread and counted (`shed_client_share`). Replica messages keep their reserved share.

Over loopback UDP, counted (not timed): node 1's socket is filled before it runs with
1,200 valid, freshly numbered requests from client 2 (its real key, its verified
address), 4 requests from each of clients 0 and 1 and 12 STATUS from replica 0,
interleaved; then node 1 runs. Every honest request and every STATUS is checked and
reaches the replica, and the flooder costs at most its share of each batch.

Failed before the fix: all 1,200 of the flooder's requests were verified and queued
(passed[client 2] == 1200 > client_per_batch x batches; no `shed_client_share` counter).
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
from bft.crypto import Ed25519Keys
from bft.messages import Request, Status
from bft.node import Node
from tests.test_fair_share import CountingVerifier
from transport.frame import encode_frames
from transport.udp import free_udp_ports

SEED = 2122
pytestmark = pytest.mark.udp

FLOOD = 1200


async def test_a_flooding_client_with_a_valid_key_is_capped_per_batch(tmp_path: Path) -> None:
    print(f"seed={SEED}")
    rng = random.Random(SEED)
    ports = free_udp_ports(4)
    config = ClusterConfig.local(4, clients=3, fsync="never", nodes=tuple(
        NodeAddress(i, "127.0.0.1", ports[i]) for i in range(4)))
    keys = Ed25519Keys(4, 3, seed=SEED)
    verifier = CountingVerifier(keys.public_keys)
    node = Node(config, 1, signer=keys.signer("replica", 1), verifier=verifier,
                state_dir=tmp_path)
    node.open()
    assert node.endpoint is not None
    replica0 = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    clients = [socket.socket(socket.AF_INET, socket.SOCK_DGRAM) for _ in range(3)]
    try:
        replica0.bind(("127.0.0.1", ports[0]))
        for c, s in enumerate(clients):
            s.bind(("127.0.0.1", 0))
            # every client is known: its verified address is this socket's
            node.client_addrs[c] = s.getsockname()
            node.client_latest[c] = 0
        mid = rng.getrandbits(40)
        base_us = 1_700_000_000_000_000

        def frame(sender: int, message: Any) -> bytes:
            nonlocal mid
            mid += 1
            [datagram] = encode_frames(sender, mid, codec.encode(message), 1400)
            return datagram

        status = honest = 0
        flooder = keys.signer("client", 2)
        for i in range(FLOOD):
            clients[2].sendto(frame(CLIENT_SENDER_BASE + 2, flooder.sign(
                Request(b"x", base_us + i, 2))), node.endpoint.address)
            if i % 100 == 0:
                status += 1
                replica0.sendto(frame(0, keys.signer("replica", 0).sign(
                    Status(0, 0, status, (), (), 0, 0))), node.endpoint.address)
            if i % 300 == 150:
                for c in (0, 1):
                    honest += 1
                    clients[c].sendto(frame(CLIENT_SENDER_BASE + c, keys.signer("client", c).sign(
                        Request(b"get", base_us + i, c))), node.endpoint.address)
        assert (status, honest) == (12, 8)
        total = FLOOD + status + honest
        async with trio.open_nursery() as nursery:
            await nursery.start(node.run)
            with trio.fail_after(30):
                while node.endpoint.statistics()["received_datagrams"] < total:
                    await trio.sleep(0.01)
            nursery.cancel_scope.cancel()
    finally:
        for s in (replica0, *clients):
            s.close()
    batches = node.stats.batches or 1
    shed = node.stats.drops["shed_client_share"]
    print(f"batches={node.stats.batches} shed={shed} passed={verifier.passed}")
    # every replica message and every honest request was checked and taken
    assert verifier.passed.get(("replica", 0)) == status
    assert verifier.passed.get(("client", 0)) == 4
    assert verifier.passed.get(("client", 1)) == 4
    assert node.core is not None
    queued = {key for key in node.core.pending if key[0] in (0, 1)}
    assert len(queued) == 8
    # the flooder costs at most its share of each batch, the rest shed unread
    flooded = verifier.passed.get(("client", 2), 0)
    assert flooded <= node.client_per_batch * batches
    assert flooded + shed == FLOOD
    assert node.stats.drops["shed_unknown_source"] == 0
