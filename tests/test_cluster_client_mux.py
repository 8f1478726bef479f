"""`ClusterClient` over real loopback UDP, on its own socket or sharing one (`ClientMux`).

Most tests answer with scripted fake replicas (UDP endpoints at the nodes' addresses that
reply with MAC'd replies, or forge them), so that what each client receives is exactly
known; one runs real in-process nodes.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, Self

import pytest
import trio

from bft import codec
from bft.app import Ops, decode_result
from bft.auth import reply_auth_for, reply_mac
from bft.client import ClientBusy
from bft.config import ClusterConfig, NodeAddress
from bft.crypto import Ed25519Keys, sha256
from bft.messages import MacReply, Reply, Request
from bft.node import CLIENT_SENDER_BASE, ClientError, ClientMux, ClusterClient
from transport.udp import Received, UdpEndpoint, free_udp_ports

GUARD_S = 20  # a failure guard for what must happen, not a timing assumption

# (replica id, the request, the received record) -> the messages to send back
Policy = Callable[[int, Request, Received], list[Any]]


def make_config(n: int = 4, **overrides: Any) -> ClusterConfig:
    ports = free_udp_ports(n)
    config = ClusterConfig.local(n, clients=4, fsync="never", **overrides)
    nodes = tuple(NodeAddress(i, "127.0.0.1", ports[i]) for i in range(n))
    return ClusterConfig(**{**{f: getattr(config, f) for f in config.__dataclass_fields__},
                            "nodes": nodes})


KEYS = Ed25519Keys(4, 4, seed=7)


class FakeReplicas:
    """The cluster's addresses, answered by a script: every request is recorded (with its
    source address and frame sender id) and `policy` says what to send back."""

    def __init__(self, config: ClusterConfig, policy: Policy | None = None) -> None:
        self.config = config
        self.endpoints = {n.id: UdpEndpoint(n.id, n.host, n.port) for n in config.nodes}
        self.auth = {i: reply_auth_for(KEYS.signer("replica", i), KEYS.verifier())
                     for i in self.endpoints}
        self.policy = policy or self.answer
        self.seen: list[tuple[int, Request, Received]] = []

    def seal(self, replica: int, request: Request, result: bytes, *,
             client: int | None = None) -> MacReply:
        """Replica `replica`'s reply to `request` (naming `client`, by default its own)."""
        sealed = self.auth[replica].seal(Reply(
            view=0, timestamp=request.timestamp,
            client=request.client if client is None else client, replica=replica,
            request=sha256(codec.encode(request)), result=result))
        assert sealed is not None
        return sealed

    def answer(self, replica: int, request: Request, rec: Received) -> list[Any]:
        """The honest answer: the op, tagged with the client's id."""
        return [self.seal(replica, request, b"%d:" % request.client + request.op)]

    async def serve(self, replica: int) -> None:
        endpoint = self.endpoints[replica]
        try:
            async for rec in endpoint:
                statement = codec.decode_untrusted(rec.payload).statement
                assert isinstance(statement, Request)
                self.seen.append((replica, statement, rec))
                for message in self.policy(replica, statement, rec):
                    endpoint.send_to_nowait(rec.addr, codec.encode(message))
        except trio.ClosedResourceError:
            pass

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(self, *exc: object) -> None:
        for endpoint in self.endpoints.values():
            endpoint.close()


def client_on(config: ClusterConfig, client_id: int, mux: ClientMux | None = None,
              first_timestamp: int = 1000) -> ClusterClient:
    return ClusterClient(config, client_id, signer=KEYS.signer("client", client_id),
                         verifier=KEYS.verifier(), first_timestamp=first_timestamp, mux=mux)


async def wait_until(predicate: Callable[[], bool]) -> None:
    with trio.fail_after(GUARD_S):
        while not predicate():
            await trio.sleep(0.005)


@pytest.fixture
async def cluster(nursery: trio.Nursery):
    """(config, fake replicas serving, a running shared socket)."""
    config = make_config(client_timeout_s=0.2)
    fakes = FakeReplicas(config)
    for replica in fakes.endpoints:
        nursery.start_soon(fakes.serve, replica)
    mux = ClientMux(config)
    await nursery.start(mux.run)
    yield config, fakes, mux
    mux.close()
    await fakes.__aexit__()


async def test_shared_socket_keeps_each_clients_requests_and_replies_apart(cluster) -> None:
    config, fakes, mux = cluster
    # the same request numbers on purpose: only the client id tells the replies apart
    clients = [client_on(config, cid, mux, first_timestamp=1000) for cid in (0, 1, 2)]
    results: dict[int, list[bytes]] = {c.id: [] for c in clients}

    async def run(c: ClusterClient) -> None:
        for k in range(5):
            results[c.id].append(await c.call(b"op%d" % k, timeout_s=GUARD_S))

    with trio.fail_after(GUARD_S):
        async with trio.open_nursery() as nursery:
            for c in clients:
                nursery.start_soon(run, c)
    for c in clients:
        assert results[c.id] == [b"%d:op%d" % (c.id, k) for k in range(5)]
        assert c.client.statistics()["completed"] == 5
    # Every request left the one socket, framed with its own client's sender id, so the
    # replicas learn one reply address per client id, as from separate sockets.
    assert len(fakes.seen) == 3 * 5 * 4
    for _, request, rec in fakes.seen:
        assert rec.addr == mux.endpoint.address
        assert rec.sender_id == CLIENT_SENDER_BASE + request.client
    assert {(r.client, r.timestamp) for _, r, _ in fakes.seen} == {
        (cid, 1000 + k) for cid in (0, 1, 2) for k in range(5)}
    for c in clients:
        c.close()


async def test_replies_naming_another_client_never_complete_a_request(cluster) -> None:
    """Client 1 has the same request number outstanding as client 0, and receives
    replies that name it but carry client 0's MACs: it must not complete; client 0
    completes on its own replies only."""
    config, fakes, mux = cluster

    def policy(replica: int, request: Request, rec: Received) -> list[Any]:
        if request.client != 0:
            return []
        genuine = fakes.seal(replica, request, b"for 0")
        # a reply to client 1's own request (b"x" under the same number): only its MAC,
        # made with client 0's key, gives it away
        answers = sha256(codec.encode(Request(b"x", request.timestamp, 1)))
        claim = Reply(view=0, timestamp=request.timestamp, client=1, replica=replica,
                      request=answers, result=b"for 0")
        body = codec.encode(claim)
        key_of_0 = fakes.auth[replica].keys.key(0)
        stolen = MacReply(body=body, mac=reply_mac(key_of_0, body), statement=claim)
        return [stolen, genuine, stolen]

    fakes.policy = policy
    a, b = client_on(config, 0, mux), client_on(config, 1, mux)
    async with trio.open_nursery() as nursery:
        async def b_call() -> None:
            with pytest.raises(ClientError):
                await b.call(b"x", timeout_s=1.0)

        nursery.start_soon(b_call)
        await wait_until(lambda: b.client.busy)
        for _ in range(3):
            assert await a.call(b"y", timeout_s=GUARD_S) == b"for 0"
    stats_b = b.client.statistics()
    assert stats_b["completed"] == 0 and stats_b["failed"] == 1
    # Client 1 saw only the replies that name it, each dropped for its MAC (those after
    # its deadline as stale); the genuine replies went to client 0 alone.
    assert stats_b["drops"].get("bad_mac", 0) >= 2
    assert set(stats_b["drops"]) <= {"bad_mac", "stale_timestamp"}
    assert stats_b["replies_received"] == sum(stats_b["drops"].values())
    assert stats_b["reply_auth"]["checked"] == 0
    assert "other_client" not in a.client.statistics()["drops"]
    assert a.client.statistics()["completed"] == 3


async def test_replies_after_the_deciding_ones_are_not_decoded(cluster, monkeypatch) -> None:
    config, _, mux = cluster
    decoded = []
    real_decode = codec.decode_untrusted

    def counting_decode(data: bytes, *args: Any) -> Any:
        message = real_decode(data, *args)
        if isinstance(message, MacReply):  # not the fake replicas' decoding of requests
            decoded.append(message)
        return message

    monkeypatch.setattr(codec, "decode_untrusted", counting_decode)
    c = client_on(config, 0, mux)
    calls = 6
    for k in range(calls):
        await c.call(b"op%d" % k, timeout_s=GUARD_S)
    await wait_until(lambda: c.client.statistics()["replies_received"] == 4 * calls)
    stats = c.client.statistics()
    assert len(decoded) == (config.f + 1) * calls == stats["replies_counted"]
    assert sum(stats["drops"].values()) == (4 - config.f - 1) * calls
    assert set(stats["drops"]) <= {"stale_timestamp", "duplicate_replica"}


async def test_one_call_at_a_time_per_client(cluster) -> None:
    config, fakes, mux = cluster
    release = trio.Event()
    held: list[tuple[int, Request, Received]] = []

    def hold(replica: int, request: Request, rec: Received) -> list[Any]:
        if not release.is_set():
            held.append((replica, request, rec))
            return []
        return fakes.answer(replica, request, rec)

    fakes.policy = hold
    c = client_on(config, 0, mux)
    got = []
    async with trio.open_nursery() as nursery:
        async def first() -> None:
            got.append(await c.call(b"first", timeout_s=GUARD_S))

        nursery.start_soon(first)
        await wait_until(lambda: c.client.busy)
        with pytest.raises(ClientBusy):
            await c.call(b"second", timeout_s=GUARD_S)
        release.set()
        for replica, request, rec in held:
            for message in fakes.answer(replica, request, rec):
                fakes.endpoints[replica].send_to_nowait(rec.addr, codec.encode(message))
    assert got == [b"0:first"]


async def test_bytes_for_no_client_of_the_socket_are_counted(cluster) -> None:
    config, fakes, mux = cluster
    c = client_on(config, 0, mux)
    sender = fakes.endpoints[0]
    sender.send_to_nowait(mux.endpoint.address, b"junk")
    sender.send_to_nowait(mux.endpoint.address,
                          codec.encode(fakes.seal(0, Request(b"", 1000, 3),
                                                  b"for a client not here")))
    await wait_until(lambda: sum(mux.statistics()["drops"].values()) == 2)
    assert mux.statistics()["drops"] == {"not_a_reply": 1, "unknown_client": 1}
    assert c.client.statistics()["replies_received"] == 0


async def test_retransmission_timer_of_a_shared_socket_client(cluster) -> None:
    config, fakes, mux = cluster
    first_copies: set[tuple[int, int]] = set()

    def lose_first_copy(replica: int, request: Request, rec: Received) -> list[Any]:
        if (replica, request.timestamp) not in first_copies:
            first_copies.add((replica, request.timestamp))
            return []
        return fakes.answer(replica, request, rec)

    fakes.policy = lose_first_copy
    c = client_on(config, 0, mux)
    with trio.fail_after(GUARD_S):
        assert await c.call(b"op", timeout_s=GUARD_S) == b"0:op"
    assert c.client.statistics()["retransmits"] == 1
    assert len(fakes.seen) == 8  # sent to all four twice


async def test_a_deadline_fails_one_call_while_others_go_on(cluster) -> None:
    config, fakes, mux = cluster
    silent = {1}
    fakes.policy = lambda r, req, rec: [] if req.client in silent else fakes.answer(r, req, rec)
    a, b = client_on(config, 0, mux), client_on(config, 1, mux)
    done_a = []
    async with trio.open_nursery() as nursery:
        async def run_a() -> None:
            while True:
                done_a.append(await a.call(b"a", timeout_s=GUARD_S))
                await trio.sleep(0.01)

        nursery.start_soon(run_a)
        with trio.fail_after(GUARD_S), pytest.raises(ClientError, match="deadline"):
            await b.call(b"b", timeout_s=0.5)
        assert not b.client.busy
        silent.clear()
        assert await b.call(b"again", timeout_s=GUARD_S) == b"1:again"
        nursery.cancel_scope.cancel()
    assert done_a and b.client.statistics()["failed"] == 1


async def test_a_cancelled_call_abandons_its_request(cluster) -> None:
    config, fakes, mux = cluster
    silent = {0}
    fakes.policy = lambda r, req, rec: [] if req.client in silent else fakes.answer(r, req, rec)
    c = client_on(config, 0, mux)
    with trio.move_on_after(0.3) as scope:
        await c.call(b"lost", timeout_s=GUARD_S)
    assert scope.cancelled_caught
    assert not c.client.busy and c.client.statistics()["abandoned"] == 1
    silent.clear()
    assert await c.call(b"next", timeout_s=GUARD_S) == b"0:next"
    # the next call used the next request number (the first one may have been resent)
    assert sorted({req.timestamp for r, req, _ in fakes.seen if r == 0}) == [1000, 1001]


async def test_own_socket_client_abandons_a_cancelled_call_too(nursery) -> None:
    config = make_config(client_timeout_s=0.2)
    async with FakeReplicas(config) as fakes:
        silent = {0}
        fakes.policy = lambda r, req, rec: [] if req.client in silent else fakes.answer(r, req, rec)
        for replica in fakes.endpoints:
            nursery.start_soon(fakes.serve, replica)
        async with client_on(config, 0) as c:
            with trio.move_on_after(0.3):
                await c.call(b"lost", timeout_s=GUARD_S)
            assert not c.client.busy
            silent.clear()
            assert await c.call(b"next", timeout_s=GUARD_S) == b"0:next"
            assert c.endpoint.statistics()["sent_messages"] >= 8
        assert c.endpoint.closed


async def test_misuse_of_a_shared_socket(nursery) -> None:
    config = make_config()
    mux = ClientMux(config)
    c = client_on(config, 0, mux)
    with pytest.raises(ValueError, match="already uses"):
        client_on(config, 0, mux)
    with pytest.raises(RuntimeError, match="not running"):
        await c.call(b"op")
    assert not c.client.busy
    with trio.CancelScope() as scope:  # cancelled first: a load loop being stopped
        scope.cancel()
        await c.call(b"op")
    assert scope.cancelled_caught and not c.client.busy
    await nursery.start(mux.run)
    with pytest.raises(RuntimeError, match="already running"):
        await mux.run()

    async def close_soon() -> None:
        await wait_until(lambda: c.client.busy)
        mux.close()

    nursery.start_soon(close_soon)
    with trio.fail_after(GUARD_S), pytest.raises(ClientError, match="socket stopped"):
        await c.call(b"op", timeout_s=GUARD_S)  # nobody answers; the socket closes
    assert not c.client.busy and not mux.running


async def test_sender_id_per_message() -> None:
    with UdpEndpoint(5, "127.0.0.1", 0) as a, UdpEndpoint(6, "127.0.0.1", 0) as b:
        a.send_to_nowait(b.address, b"own")
        a.send_to_nowait(b.address, b"as 9", sender_id=9)
        a.set_peer(1, b.address)
        a.send_nowait(1, b"as 10", sender_id=10)
        with pytest.raises(ValueError):
            a.send_to_nowait(b.address, b"x", sender_id=2**32)
        got: list[Received] = []
        with trio.fail_after(GUARD_S):
            while len(got) < 3:
                got += await b.receive_batch()
    assert [(r.sender_id, r.payload) for r in got] == [(5, b"own"), (9, b"as 9"), (10, b"as 10")]


async def test_shared_socket_against_real_nodes(tmp_path) -> None:
    from test_node_inprocess import make_cluster

    config, keys, nodes = make_cluster(tmp_path)
    async with trio.open_nursery() as nursery:
        for node in nodes:
            await nursery.start(node.run)
        mux = ClientMux(config)
        await nursery.start(mux.run)
        clients = [ClusterClient(config, cid, signer=keys.signer("client", cid),
                                 verifier=keys.verifier(), mux=mux) for cid in (0, 1, 2)]

        async def run(c: ClusterClient) -> None:
            for k in range(3):
                result = await c.call(Ops.put(f"c{c.id}-{k}", b"v"), timeout_s=10)
                assert str(decode_result(result)) == "ok"

        with trio.fail_after(GUARD_S):
            async with trio.open_nursery() as inner:
                for c in clients:
                    inner.start_soon(run, c)
        # every replica learned each client's address from the shared socket
        for node in nodes:
            assert all(node.client_addrs.get(c.id) == mux.endpoint.address for c in clients)
        for c in clients:
            stats = c.client.statistics()
            assert stats["completed"] == 3 and stats["reply_auth"]["failed"] == 0
            c.close()
        mux.close()
        nursery.cancel_scope.cancel()
