"""Fair queuing per client id in the node's receive path (issue 21 item "per-client fair
queuing"; Aardvark, Clement et al. NSDI'09, section 4.2: a faulty client must not starve
the others).

A faulty client WITH a valid key, sending from its own verified address, passes every
source check of `Node._fair_share`: before this change each of its requests was taken,
decoded, verified (a fresh number costs an Ed25519 check) and queued by the replica, as
many as the socket held. Now each client id gets at most `Node.client_per_batch` requests
in each batch the node drains (in the batch's order: the batch is handled in one pass, so
round-robin would take the same set); the rest are dropped unread and counted
(`shed_client_share`). Replica messages keep their reserved share.

Over loopback UDP, counted (not timed): node 1's socket is filled before it runs with
1,200 valid, freshly numbered requests from client 2 (its real key, its verified
address), one request of each of clients 0 and 1 and 12 STATUS from replica 0,
interleaved; then node 1 runs. Every honest request and every STATUS is checked and
reaches the replica, and the flooder is taken at most its share of each batch.

Failed before the fix: all 1,200 of the flooder's requests were verified and queued
(passed[client 2] == 1200 > client_per_batch x batches; no `shed_client_share` counter).
(Written with 4 requests of each honest client, before the one-outstanding rule of the
next test; now each honest client sends one, as a correct one with one outstanding does.)
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
        node._set_trusted_sources()  # (what the node does when it verifies their requests)
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
            if i in (150, 750):  # a correct client has one request outstanding
                c = 0 if i == 150 else 1
                honest += 1
                clients[c].sendto(frame(CLIENT_SENDER_BASE + c, keys.signer("client", c).sign(
                    Request(b"get", base_us + i, c))), node.endpoint.address)
        assert (status, honest) == (12, 2)
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
    assert verifier.passed.get(("client", 0)) == 1
    assert verifier.passed.get(("client", 1)) == 1
    assert node.core is not None
    queued = {key for key in node.core.pending if key[0] in (0, 1)}
    assert queued == {(0, base_us + 150), (1, base_us + 750)}
    # the flooder is taken at most its share of each batch, the rest shed unread; of
    # those taken, only the first costs a check: the others queue behind it
    # (`client_outstanding`, the next test)
    taken = verifier.passed.get(("client", 2), 0) + node.stats.drops["client_outstanding"]
    assert verifier.passed.get(("client", 2)) == 1
    assert taken <= node.client_per_batch * batches
    assert taken + shed == FLOOD
    assert node.stats.drops["shed_unknown_source"] == 0


async def test_a_request_behind_the_clients_outstanding_one_costs_no_check(
        tmp_path: Path) -> None:
    """Aardvark (NSDI'09, 4.2) keeps one outstanding request per client: a correct client
    sends request t+1 only after t completed. PROTOCOL.md 4.1 orders a client's requests
    by number; the replica (bft/normal.py `_on_request`) queued every fresh number it was
    given, up to MAX_PENDING_REQUESTS for all clients together, so a client with a valid
    key could fill that queue (`pending_full` for everyone). Now the node drops, before
    any check, a fresh request of a client whose freshest verified request is still
    pending at this replica (`client_outstanding`); the primary still takes it once it has
    proposed the earlier one, and a batch that carries it is checked as ever.

    Over loopback UDP, counted: node 1 (a backup, no primary running) gets request 1 of
    client 2 and then requests 2..100, and one request of client 0; the per-client share
    is lifted so that only this rule acts. Request 1 and client 0's are checked and queued;
    2..100 cost no check and none is queued.

    Failed before the fix: all 100 of client 2's requests were verified and queued
    (passed[client 2] == 100, 100 pending)."""
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
    node.client_per_batch = 10_000
    assert node.endpoint is not None
    clients = [socket.socket(socket.AF_INET, socket.SOCK_DGRAM) for _ in range(3)]
    mid = rng.getrandbits(40)
    base_us = 1_700_000_000_000_000

    def frame(sender: int, message: Any) -> bytes:
        nonlocal mid
        mid += 1
        [datagram] = encode_frames(sender, mid, codec.encode(message), 1400)
        return datagram

    try:
        for s in clients:
            s.bind(("127.0.0.1", 0))
        async with trio.open_nursery() as nursery:
            await nursery.start(node.run)
            flooder = keys.signer("client", 2)
            clients[2].sendto(frame(CLIENT_SENDER_BASE + 2, flooder.sign(
                Request(b"x", base_us, 2))), node.endpoint.address)
            with trio.fail_after(30):
                while node.client_latest.get(2) != base_us:
                    await trio.sleep(0.01)
            for i in range(1, 100):
                clients[2].sendto(frame(CLIENT_SENDER_BASE + 2, flooder.sign(
                    Request(b"x", base_us + i, 2))), node.endpoint.address)
            clients[0].sendto(frame(CLIENT_SENDER_BASE + 0, keys.signer("client", 0).sign(
                Request(b"get", base_us, 0))), node.endpoint.address)
            with trio.fail_after(30):
                while node.endpoint.statistics()["received_datagrams"] < 101:
                    await trio.sleep(0.01)
                while node.stats.steps + node.stats.drops["client_outstanding"] < 101:
                    await trio.sleep(0.01)
            nursery.cancel_scope.cancel()
    finally:
        for s in clients:
            s.close()
    assert node.core is not None
    print(f"passed={verifier.passed} drops={dict(node.stats.drops)}")
    assert verifier.passed.get(("client", 2)) == 1
    assert verifier.passed.get(("client", 0)) == 1
    assert sorted(k for k in node.core.pending if k[0] == 2) == [(2, base_us)]
    assert (0, base_us) in node.core.pending
    assert node.stats.drops["client_outstanding"] == 99
