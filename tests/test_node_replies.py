"""Replies over real loopback UDP: MAC'd for the client when the keys are Ed25519 (bft/auth.py),
signed otherwise; a ClusterClient sends every request to every replica by default."""

from __future__ import annotations

import pytest
import trio
from test_node_inprocess import make_cluster

from bft.app import Ops, decode_result
from bft.crypto import SimKeys
from bft.node import ClusterClient, Node


async def run_calls(nodes, client, count: int) -> None:
    with trio.fail_after(20):
        for k in range(count):
            result = await client.call(Ops.put(f"k{k}", b"v"), timeout_s=10)
            assert str(decode_result(result)) == "ok"


async def test_replies_are_macd_for_the_client(tmp_path):
    config, keys, nodes = make_cluster(tmp_path)
    async with trio.open_nursery() as nursery:
        for node in nodes:
            await nursery.start(node.run)
        client = ClusterClient(config, 0, signer=keys.signer("client", 0), verifier=keys.verifier())
        assert client.client.send_to_all
        await run_calls(nodes, client, 5)
        stats = client.client.statistics()
        with trio.fail_after(20):  # every node executes all: then it processed the first request
            while len({n.replica.last_executed for n in nodes}) != 1:
                await trio.sleep(0.01)
        client.close()
        nursery.cancel_scope.cancel()
    # f+1 = 2 MAC'd replies completed each request; nothing failed a check
    assert stats["reply_auth"]["checked"] >= 2 * 5
    assert stats["reply_auth"]["failed"] == 0
    assert "bad_mac" not in stats["drops"] and "bad_signature" not in stats["drops"]
    sealed = [n.replica.reply_auth.statistics()["sealed"] for n in nodes]
    assert all(s >= 1 for s in sealed), sealed
    # every replica heard from the client itself (send_to_all), not through the primary's
    # batch alone: each knows where to reply
    assert all(0 in n.client_addrs for n in nodes)


@pytest.mark.parametrize("send_to_all", [True, False])
async def test_sim_keys_sign_replies_and_the_client_accepts_them(tmp_path, send_to_all):
    """Keys without Diffie-Hellman (the simulator's) keep signing replies."""
    config, _, _ = make_cluster(tmp_path)
    keys = SimKeys(1, n_replicas=config.n, n_clients=4)
    nodes = [Node(config, i, signer=keys.signer("replica", i), verifier=keys.verifier(),
                  state_dir=tmp_path / f"s{i}") for i in range(config.n)]
    async with trio.open_nursery() as nursery:
        for node in nodes:
            await nursery.start(node.run)
        client = ClusterClient(config, 1, signer=keys.signer("client", 1),
                               verifier=keys.verifier(), send_to_all=send_to_all)
        await run_calls(nodes, client, 3)
        stats = client.client.statistics()
        client.close()
        nursery.cancel_scope.cancel()
    assert stats["completed"] == 3 and stats["reply_auth"] is None
    assert all(n.replica.reply_auth is None for n in nodes)


async def test_a_replayed_request_from_another_socket_gets_no_reply(tmp_path):
    """Issue 21, item 7, over loopback UDP: an attacker replays a client's captured, validly
    signed requests (the last executed one, which every replica answers again from its
    reply cache, and an older one) from a socket of its own, with the client's sender id.
    The replies, that resent one included, keep going to the client's socket, and the
    attacker receives none of them nor of the client's later requests.

    Failed before the fix: each node verified the replay (it would change the address),
    moved the client's reply address to the attacker, and sent the attacker the cached
    reply (in the attack of the issue, 32 replies meant for the client)."""
    import time

    from bft import codec
    from bft.messages import Request
    from bft.node import CLIENT_SENDER_BASE
    from transport.udp import UdpEndpoint

    config, keys, nodes = make_cluster(tmp_path)
    first = time.time_ns() // 1000  # as a real client numbers its requests
    signer = keys.signer("client", 0)

    def executed(t: int) -> bool:
        return all(n.replica.client_table.get(0, (0,))[0] >= t for n in nodes)

    async def wait_for(predicate) -> None:
        while not predicate():
            await trio.sleep(0.01)

    async with trio.open_nursery() as nursery:
        for node in nodes:
            await nursery.start(node.run)
        client = ClusterClient(config, 0, signer=signer, verifier=keys.verifier(),
                               first_timestamp=first)
        attacker = UdpEndpoint(CLIENT_SENDER_BASE, "127.0.0.1", 0,
                               peers={n.id: n.address for n in config.nodes})
        with trio.fail_after(20):
            await run_calls(nodes, client, 2)  # requests first and first + 1
            await wait_for(lambda: executed(first + 1))
            home = client.endpoint.address
            assert all(n.client_addrs[0] == home for n in nodes)

            # Ed25519 signatures are deterministic: these are the captured datagrams' bytes
            for t in (first + 1, first):
                replay = codec.encode(signer.sign(Request(Ops.put(f"k{t - first}", b"v"), t, 0)))
                for n in config.nodes:
                    attacker.send_nowait(n.id, replay)
            await attacker.flush()
            # every replica answered the replay of its last executed request again...
            await wait_for(lambda: all(n.replica.counters["reply_resent"] >= 1
                                       and n.replica.drops["old_request"] >= 1 for n in nodes))

            await run_calls(nodes, client, 1)  # a later request of the client
            await wait_for(lambda: executed(first + 2))
        # ...to the client's socket: on loopback a datagram sent is already queued at its
        # receiver, so every reply the nodes sent to the attacker would be waiting here
        stolen = attacker.receive_nowait()
        assert stolen == [], f"the attacker received {len(stolen)} replies meant for the client"
        assert all(n.client_addrs[0] == home for n in nodes)
        attacker.close()
        client.close()
        nursery.cancel_scope.cancel()
