"""Cheapest checks first (issue 21, item 1): a datagram framed as from replica j must come from
j's configured address, and replica messages come from replicas only; anything else is dropped,
counted, before any signature is checked. Real loopback UDP, all nodes in one process.
With the kernel steering strangers apart (the default, transport/udp.py) the kernel's filter
drops them before the node reads them (`stranger_kernel_drop`); without it the node does."""

from __future__ import annotations

from typing import Any

import pytest
import trio

from bft import codec
from bft.app import Ops, decode_result
from bft.config import CLIENT_SENDER_BASE
from bft.crypto import Ed25519Keys, SimKeys, batch_digest
from bft.messages import Batch, Prepare, PrePrepare, Proposal, Request, Status
from bft.node import ClusterClient
from tests.harness import Net
from tests.test_node_inprocess import make_cluster
from transport.udp import Received, UdpEndpoint

FORGER_SEED = 99  # keys nobody in the cluster knows: every signature they make is forged


def forged_status(replica: int, seq: int = 0) -> bytes:
    """A well-formed STATUS in `replica`'s name, signed with a key the cluster does not know,
    claiming to be far behind (what made a replica resend its log, issue 21 item 4)."""
    signer = Ed25519Keys(4, 1, seed=FORGER_SEED).signer("replica", replica)
    return codec.encode(signer.sign(Status(seq, 0, 0, (), (), 0, replica)))


def forged_prepare(replica: int, seq: int) -> bytes:
    signer = Ed25519Keys(4, 1, seed=FORGER_SEED).signer("replica", replica)
    return codec.encode(signer.sign(Prepare(0, seq, b"\x11" * 32, replica)))


@pytest.mark.parametrize("steering", [True, False], ids=["kernel", "python"])
async def test_forged_replica_datagrams_from_other_ports_cost_no_verify(
        tmp_path, steering: bool) -> None:
    config, keys, nodes = make_cluster(tmp_path)
    for n in nodes:
        n.kernel_steering = steering
    targets = {n.id: n.address for n in config.nodes}
    # one forger framing as replica j (its id, not its address), one framing as a client
    as_replica = [UdpEndpoint(j, "127.0.0.1", 0, peers=targets) for j in range(4)]
    as_client = UdpEndpoint(CLIENT_SENDER_BASE, "127.0.0.1", 0, peers=targets)
    sent = 0
    async with trio.open_nursery() as nursery:
        for node in nodes:
            await nursery.start(node.run)
        client = ClusterClient(config, 0, signer=keys.signer("client", 0), verifier=keys.verifier())
        with trio.fail_after(30):
            for k in range(20):
                for to in range(4):
                    for j in range(4):
                        if j != to:
                            as_replica[j].send_nowait(to, forged_status(j, k))
                            as_client.send_nowait(to, forged_prepare(j, k + 1))
                            sent += 1
                result = await client.call(Ops.put(f"k{k}", b"v"), timeout_s=10)
                assert str(decode_result(result)) == "ok"  # the cluster keeps committing
            while len({n.replica.last_executed for n in nodes}) != 1:
                await trio.sleep(0.01)
        client.close()
        nursery.cancel_scope.cancel()
    for e in (*as_replica, as_client):
        e.close()
    mismatch = sum(n.stats.drops["replica_address_mismatch"] for n in nodes)
    outsider = sum(n.stats.drops["replica_message_from_outsider"] for n in nodes)
    kernel = sum(n.endpoint.statistics()["drops"]["stranger_kernel_drop"]  # type: ignore[union-attr]
                 for n in nodes)
    # loopback loses nothing at this rate; at worst a datagram is lost, never let through
    if steering:
        assert mismatch == outsider == 0 and sent < kernel <= 2 * sent
    else:
        assert 0 < mismatch <= sent and 0 < outsider <= sent
        assert mismatch + outsider > sent  # (most arrived)
        assert kernel == 0
    for node in nodes:
        assert node.verifier.statistics()["failed"] == 0  # not one forged signature checked
        assert node.replica.drops.get("bad_signature", 0) == 0

    # the count has teeth: the same forged STATUS from replica 1's own address is verified
    node = nodes[0]
    failed = node.verifier.statistics()["failed"]
    node._step(Received(config.nodes[1].address, 1, forged_status(1)), 1.0, node.clock())
    assert node.verifier.statistics()["failed"] == failed + 1
    assert node.replica.drops["bad_signature"] == 1


def test_a_replica_does_not_relay_another_ones_status_or_fetch_state(tmp_path) -> None:
    """STATUS, FETCH, FETCH-STATE and STATE-CHUNK are sent only in the sender's own name: one
    that names another replica, even from a replica's address, is a replay (aimed at the named
    replica, whose peers would answer it) and is dropped unverified."""
    config, keys, nodes = make_cluster(tmp_path)
    node = nodes[0]
    node.open()
    try:
        genuine = codec.encode(keys.signer("replica", 2).sign(Status(0, 0, 0, (), (), 0, 2)))
        before = node.verifier.statistics()
        node._step(Received(config.nodes[1].address, 1, genuine), 1.0, node.clock())
        assert node.stats.drops["unrelayed_message_relayed"] == 1
        assert node.verifier.statistics() == before
        # from replica 2 itself it is taken (and verified)
        node._step(Received(config.nodes[2].address, 2, genuine), 1.0, node.clock())
        assert node.verifier.statistics()["verified"] == before["verified"] + 1
        assert node.stats.drops["unrelayed_message_relayed"] == 1
    finally:
        node.close()


def _proposal(net: Any, *, pp_forged: bool, requests_forged: bool, replica: int = 0,
              requests: int = 8) -> Any:
    """A Proposal for (view 0, seq 1) by `replica` of a batch of `requests` requests; the
    pre-prepare and the requests are signed with the cluster's keys or, if forged, with keys
    the cluster does not know."""
    forger = SimKeys(FORGER_SEED, n_replicas=4, n_clients=4)
    client = (forger if requests_forged else net.keys).signer("client", 0)
    reqs = tuple(client.sign(Request(b"x", t + 1, 0)) for t in range(requests))
    batch = Batch(1_600_000_000_000_000, reqs)
    signer = (forger if pp_forged else net.keys).signer("replica", replica)
    pp = signer.sign(PrePrepare(0, 1, batch_digest(batch), replica))
    return codec.decode_untrusted(codec.encode(Proposal(pp, batch)), net.config.limits)


def test_a_proposals_pre_prepare_is_checked_before_its_batch() -> None:
    """A proposal not from the primary of its view costs no signature check; one whose
    pre-prepare is forged costs one, not one per request of its batch."""
    net = Net(4)
    r1 = net.replicas[1]
    assert r1 is not None
    checks: list[Any] = []
    real = r1.verifier._check
    r1.verifier._check = lambda *a: checks.append(a) or real(*a)  # type: ignore[method-assign]
    r1.receive(_proposal(net, pp_forged=False, requests_forged=False, replica=2), net.now)
    assert checks == [] and r1.drops["pre_prepare_not_from_primary"] == 1
    r1.receive(_proposal(net, pp_forged=True, requests_forged=False), net.now)
    assert len(checks) == 1 and r1.drops["bad_signature"] == 1  # (not 8 requests + 1)
    # teeth: a well-signed pre-prepare does get its batch checked (and a forgery found)
    r1.receive(_proposal(net, pp_forged=False, requests_forged=True), net.now)
    assert len(checks) == 1 + 1 + 1 and r1.drops["bad_signature"] == 2
