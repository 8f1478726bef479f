"""The node runtime's per-message paths, on one opened (not running) Node over loopback.

- `_carry_out` hands a whole step's messages to the kernel without a scheduler pass
  per datagram (no yield at all while the kernel's send buffer has room), and waits
  for room, once, when it has none;
- `_step` records a client's address only for a fresh request (numbered above every
  one of that client verified before) whose signature verified, and verifies for that
  only a fresh request: a replayed old request moves nothing (issue 21, item 7).
"""

from __future__ import annotations

import dataclasses
import errno
from collections import Counter
from pathlib import Path
from typing import Any

import pytest
import trio

from bft import codec
from bft.config import ClusterConfig, NodeAddress
from bft.crypto import Ed25519Keys
from bft.effects import Broadcast, Reply, Send, SetTimer
from bft.messages import Commit, Prepare, Request
from bft.messages import Reply as ReplyMessage
from bft.node import CLIENT_SENDER_BASE, Node, NodeExtension
from transport.udp import Received, UdpEndpoint, free_udp_ports

pytestmark = pytest.mark.udp

N = 4


class StepCounter(trio.abc.Instrument):
    """Counts how often each task is resumed: a task that does not yield is not."""

    def __init__(self) -> None:
        self.steps: Counter[Any] = Counter()

    def before_task_step(self, task: Any) -> None:
        self.steps[task] += 1


class StallingSocket:
    """A socket whose `sendto` raises BlockingIOError (a full send buffer) for the next
    `stalls` calls; everything else goes to the real socket."""

    def __init__(self, real: Any, stalls: int) -> None:
        self.real, self.stalls, self.calls = real, stalls, 0

    def sendto(self, data: bytes, addr: Any) -> int:
        self.calls += 1
        if self.stalls > 0:
            self.stalls -= 1
            raise BlockingIOError(errno.EAGAIN, "send buffer full (simulated)")
        return self.real.sendto(data, addr)

    def __getattr__(self, name: str) -> Any:
        return getattr(self.real, name)


class CountingVerifier:
    """The real verifier, counting `verify` calls."""

    def __init__(self, inner: Any) -> None:
        self.inner, self.calls = inner, 0

    def verify(self, signed: Any) -> bool:
        self.calls += 1
        return self.inner.verify(signed)

    def __getattr__(self, name: str) -> Any:
        return getattr(self.inner, name)


class RecordingReplica:
    """Stands in for the replica: records what the node hands it, returns no effects."""

    def __init__(self) -> None:
        self.received: list[Any] = []

    def receive(self, message: Any, now: float, wall: Any = None) -> list[Any]:
        self.received.append(message)
        return []


@pytest.fixture
def keys() -> Ed25519Keys:
    return Ed25519Keys(N, 2, seed=1)


@pytest.fixture
def node(tmp_path: Path, keys: Ed25519Keys):
    ports = free_udp_ports(N)
    config = ClusterConfig.local(N, clients=2, fsync="never")
    config = dataclasses.replace(
        config, nodes=tuple(NodeAddress(i, "127.0.0.1", ports[i]) for i in range(N)))
    node = Node(config, 0, signer=keys.signer("replica", 0), verifier=keys.verifier(),
                state_dir=tmp_path / "n0")
    node.open()
    yield node
    node.close()


@pytest.fixture
def peers(node: Node):
    """UDP endpoints on the addresses of nodes 1..3, standing in for them."""
    endpoints = {n.id: UdpEndpoint(n.id, n.host, n.port) for n in node.config.nodes if n.id != 0}
    yield endpoints
    for e in endpoints.values():
        e.close()


def arrived(endpoint: UdpEndpoint) -> list[Any]:
    """Decoded messages that have arrived (loopback delivers within the sender's sendto)."""
    return [codec.decode_untrusted(r.payload) for r in endpoint.receive_nowait()]


def outgoing(keys: Ed25519Keys, client_id: int = 0) -> tuple[Any, Any, Any]:
    replica0 = keys.signer("replica", 0)
    prepare = replica0.sign(Prepare(0, 1, b"\x11" * 32, 0))
    commit = replica0.sign(Commit(0, 1, b"\x11" * 32, 0))
    reply = replica0.sign(ReplyMessage(0, 77, client_id, 0, b"\x22" * 32, b"ok"))
    return prepare, commit, reply


# ------------------------------------------------------------------ sending


async def test_a_step_of_messages_is_sent_without_yielding(node: Node, peers, keys) -> None:
    prepare, commit, reply = outgoing(keys)
    with UdpEndpoint(CLIENT_SENDER_BASE, "127.0.0.1", 0) as client:
        node.client_addrs[0] = client.address
        effects = [Broadcast(prepare), Send(2, commit), Reply(0, reply), SetTimer(123.0),
                   Reply(1, reply)]  # client 1: no address known
        counter = StepCounter()
        trio.lowlevel.add_instrument(counter)
        me = trio.lowlevel.current_task()
        try:
            await node._carry_out(effects)
        finally:
            trio.lowlevel.remove_instrument(counter)
        assert counter.steps[me] == 0  # no scheduler pass at all, let alone one per datagram
        assert arrived(peers[1]) == [prepare]
        assert arrived(peers[2]) == [prepare, commit]
        assert arrived(peers[3]) == [prepare]
        assert arrived(client) == [reply]
    assert node.stats.sent == 4
    assert node.stats.drops["reply_no_address"] == 1
    assert node.runner.deadline == 123.0
    assert node.endpoint.statistics()["sent_datagrams"] == 5


async def test_an_extensions_filters_see_what_the_node_sends(node: Node, peers, keys) -> None:
    """`NodeExtension.send_filter` (as the adversary's cut uses it) is on the node's endpoint:
    a filter that drops every datagram to node 2 leaves node 2 with nothing."""
    prepare, commit, _ = outgoing(keys)
    to2 = node.config.node(2).address

    class NotToTwo(NodeExtension):
        def send_filter(self, datagram: bytes, addr: Any) -> list[tuple[bytes, Any]]:  # type: ignore[override]
            return [] if tuple(addr) == tuple(to2) else [(datagram, addr)]

    node.add_extension(NotToTwo())
    await node._carry_out([Broadcast(prepare), Send(2, commit), Send(3, commit)])
    assert arrived(peers[1]) == [prepare]
    assert arrived(peers[2]) == []
    assert arrived(peers[3]) == [prepare, commit]


def test_an_extension_wraps_the_replica_and_the_core_stays_reachable(node: Node) -> None:
    core = node.replica

    class Wrapper:
        def __init__(self, inner: Any) -> None:
            self.inner = inner

        def __getattr__(self, name: str) -> Any:
            return getattr(self.inner, name)

    class Wrapping(NodeExtension):
        def wrap_replica(self, n: Node, replica: Any) -> Any:
            return Wrapper(replica)

    node.add_extension(Wrapping())
    assert isinstance(node.replica, Wrapper) and node.replica.inner is core
    assert node.core is core
    core.counters["status_resends"] += 1  # the summary reports the core's own counters
    assert node.summary()["replica_counters"] == {"status_resends": 1}


async def test_a_full_send_buffer_is_waited_for_once_and_nothing_is_lost(
    node: Node, peers, keys
) -> None:
    prepare, commit, _ = outgoing(keys)
    fake = StallingSocket(node.endpoint._sock, stalls=3)
    node.endpoint._sock = fake
    counter = StepCounter()
    trio.lowlevel.add_instrument(counter)
    me = trio.lowlevel.current_task()
    try:
        with trio.fail_after(10):
            await node._carry_out([Broadcast(prepare), Send(1, commit)])
    finally:
        trio.lowlevel.remove_instrument(counter)
    assert counter.steps[me] >= 1  # it waited for room
    assert node.endpoint.unsent_datagrams == 0
    assert arrived(peers[1]) == [prepare, commit]  # order kept
    assert arrived(peers[2]) == [prepare]
    assert arrived(peers[3]) == [prepare]
    assert node.endpoint.statistics()["send_queued"] == 4  # the first stalled, the rest queued


# ------------------------------------------------------------------ client addresses


def request_payload(keys: Ed25519Keys, client_id: int, timestamp: int, *,
                    forged: bool = False) -> bytes:
    """A client's signed request as it travels; `forged`: with a corrupted signature."""
    signed = keys.signer("client", client_id).sign(Request(b"op", timestamp, client_id))
    if forged:
        bad = bytes([signed.signature[0] ^ 1]) + signed.signature[1:]
        signed = dataclasses.replace(signed, signature=bad)
    return codec.encode(signed)


def test_client_address_recorded_only_for_fresh_verified_requests_and_verified_only_then(
    node: Node, keys, monkeypatch
) -> None:
    verifier = CountingVerifier(node.verifier)
    monkeypatch.setattr(node, "verifier", verifier)
    replica = RecordingReplica()
    monkeypatch.setattr(node, "replica", replica)
    home, elsewhere = ("127.0.0.1", 40001), ("127.0.0.1", 40002)
    wall = node.clock()

    def step(addr: tuple, payload: bytes, sender: int | None = None) -> None:
        client = codec.decode_untrusted(payload).statement.client
        sender = CLIENT_SENDER_BASE + client if sender is None else sender
        node._step(Received(addr, sender, payload), 1.0, wall)

    step(home, request_payload(keys, 0, 1))
    assert node.client_addrs == {0: home} and verifier.calls == 1
    step(home, request_payload(keys, 0, 2))  # fresh: verified (the replica's check is a hit)
    assert node.client_addrs == {0: home} and verifier.calls == 2
    step(home, request_payload(keys, 0, 2))  # a retransmission: nothing to learn, no verify
    assert node.client_addrs == {0: home} and verifier.calls == 2
    step(elsewhere, request_payload(keys, 0, 3, forged=True))  # a forger elsewhere
    assert node.client_addrs == {0: home} and verifier.calls == 3
    step(elsewhere, request_payload(keys, 0, 5))  # the client moved: verified, recorded
    assert node.client_addrs == {0: elsewhere} and node.client_latest == {0: 5}
    step(home, request_payload(keys, 1, 1))
    assert node.client_addrs == {0: elsewhere, 1: home}
    # a request relayed by a replica (from its address, with its sender id) teaches nothing
    replica_addr = node.config.nodes[1].address
    step(replica_addr, request_payload(keys, 1, 2), sender=1)
    step(elsewhere, request_payload(keys, 1, 3), sender=1)  # replica 1's id, not its address
    assert node.client_addrs == {0: elsewhere, 1: home}
    assert node.stats.drops["replica_address_mismatch"] == 1 and verifier.calls == 5
    # every other decodable message still goes to the replica, which does its own checks
    assert len(replica.received) == 7


def test_a_replayed_old_request_does_not_move_the_reply_address(
    node: Node, keys, monkeypatch
) -> None:
    """Issue 21, item 7: a client's captured, validly signed request replayed from another
    address moves nothing (no verify either); the client's next request from its own
    address keeps it there, and a request numbered too far ahead to ever execute
    (bft/normal.py) teaches nothing, so it cannot pin the address against a client that
    restarts from its clock.

    Failed before the fix: the replay of request 2 from the attacker's address was
    verified (it would change the address) and moved the client's replies there."""
    verifier = CountingVerifier(node.verifier)
    monkeypatch.setattr(node, "verifier", verifier)
    monkeypatch.setattr(node, "replica", RecordingReplica())
    home, attacker, new_home = ("127.0.0.1", 40001), ("127.0.0.1", 40666), ("127.0.0.1", 40002)
    wall = node.clock()
    t0 = wall.earliest_us  # real clients number from their clock

    def step(addr: tuple, payload: bytes) -> None:
        node._step(Received(addr, CLIENT_SENDER_BASE, payload), 1.0, wall)

    captured = request_payload(keys, 0, t0 + 2)
    step(home, request_payload(keys, 0, t0 + 1))
    step(home, captured)
    assert node.client_addrs == {0: home}
    checks = verifier.calls
    for replay in (captured, request_payload(keys, 0, t0 + 1)):
        step(attacker, replay)
    assert node.client_addrs == {0: home}, "a replay moved the client's replies"
    assert verifier.calls == checks  # and cost no signature check
    step(home, request_payload(keys, 0, t0 + 3))
    step(attacker, captured)
    assert node.client_addrs == {0: home}

    too_far = t0 + int(node.config.client_timestamp_window_s * 1_000_000)
    step(attacker, request_payload(keys, 0, too_far))
    assert node.client_addrs == {0: home} and node.client_latest == {0: t0 + 3}
    step(new_home, request_payload(keys, 0, t0 + 1_000_000))  # restarted, a second later
    assert node.client_addrs == {0: new_home}

    # A restarted node has learned no address yet, but it recovered what it executed: a
    # replay of a request below the last executed one is no fresher after the restart.
    node.client_addrs.clear()
    node.client_latest.clear()
    assert node.core is not None
    node.core.client_table[0] = (t0 + 1_000_001, b"", b"", 0)
    step(attacker, request_payload(keys, 0, t0 + 1_000_000))
    step(attacker, captured)
    assert node.client_addrs == {}
    # The last executed request itself still teaches: a backup may have executed it from
    # the primary's batch before the client's own datagram of it came.
    step(new_home, request_payload(keys, 0, t0 + 1_000_001))
    assert node.client_addrs == {0: new_home}
    step(attacker, request_payload(keys, 0, t0 + 1_000_001))  # and once only
    assert node.client_addrs == {0: new_home}


def test_a_client_signature_is_checked_once_between_node_and_replica(
    node: Node, keys, monkeypatch
) -> None:
    """The node checks a request's signature to learn the client's address, and the replica
    (sharing the verifier) checks it again: one Ed25519 check in all, forged or not. The
    address is learned only from a correctly signed request."""
    verifier = node.verifier
    checks = []
    real_check = verifier._check
    monkeypatch.setattr(verifier, "_check", lambda *a: checks.append(a) or real_check(*a))
    home, elsewhere = ("127.0.0.1", 40001), ("127.0.0.1", 40002)
    wall = node.clock()
    assert node.replica is not None
    drops = node.replica.drops

    node._step(Received(home, CLIENT_SENDER_BASE, request_payload(keys, 0, 1)), 1.0, wall)
    stats = verifier.statistics()
    assert len(checks) == 1 and (stats["verified"], stats["cache_hits"]) == (1, 1)
    assert node.client_addrs == {0: home}

    forged = request_payload(keys, 0, 2, forged=True)
    node._step(Received(elsewhere, CLIENT_SENDER_BASE, forged), 1.0, wall)
    stats = verifier.statistics()
    assert len(checks) == 2 and stats["failed_bad_signature"] == 2  # node's ask, replica's ask
    assert drops["bad_signature"] == 1
    assert node.client_addrs == {0: home}


def test_undecodable_payload_is_counted_not_stepped(node: Node, monkeypatch) -> None:
    replica = RecordingReplica()
    monkeypatch.setattr(node, "replica", replica)
    node._step(Received(("127.0.0.1", 40001), 5, b"\xff\x00garbage"), 1.0, node.clock())
    assert replica.received == []
    assert node.stats.drops["malformed"] == 1


def test_tune_gc_freezes_the_startup_heap_and_collects_less_often() -> None:
    """A node process (`bft node`) hides what it allocated while starting from the cyclic
    collector and raises the gen-0 threshold; a cycle made afterwards is still collected."""
    import gc

    from bft.node import GC_THRESHOLDS, tune_gc

    previous = tune_gc()
    try:
        assert gc.get_threshold() == GC_THRESHOLDS and GC_THRESHOLDS[0] > previous[0]
        assert gc.get_freeze_count() > 0
        cycle: list[Any] = []
        cycle.append(cycle)
        del cycle
        assert gc.collect() >= 1  # garbage made after the freeze is still found
    finally:
        gc.unfreeze()
        gc.set_threshold(*previous)


def test_a_node_whose_wal_lost_signed_records_restarts_without_voting_there(
        tmp_path: Path, keys: Ed25519Keys) -> None:
    """Issue 18 (weaker spot): `bft node` on a WAL damaged in the middle (records it may have
    signed are gone) warns and starts its replica with votes_lost, so it does not vote at or
    below its stable checkpoint + L; a torn tail (records never synced) changes nothing."""
    import cbor2

    from bft.replica import REC_SENT
    from bft.storage import WalStorage

    ports = free_udp_ports(N)
    config = ClusterConfig.local(N, clients=2, fsync="never")
    config = dataclasses.replace(
        config, nodes=tuple(NodeAddress(i, "127.0.0.1", ports[i]) for i in range(N)))
    votes = [keys.signer("replica", 0).sign(Prepare(0, seq, b"\x11" * 32, 0))
             for seq in (1, 2, 3)]

    def start(damage: str) -> Node:
        state = tmp_path / damage
        wal = WalStorage(state / "wal-0")
        for v in votes:
            wal.append(cbor2.dumps([REC_SENT, codec.encode(v)]))
        wal.sync()
        wal.close()
        segment = next((state / "wal-0").glob("*.log"))
        data = bytearray(segment.read_bytes())
        if damage == "middle":
            data[len(data) // 2] ^= 0x01
        else:
            data = data[:-3]
        segment.write_bytes(bytes(data))
        node = Node(config, 0, signer=keys.signer("replica", 0), verifier=keys.verifier(),
                    state_dir=state)
        node.open()
        return node

    damaged = start("middle")
    try:
        assert damaged.replica.votes_lost and damaged.replica.vote_floor is None
    finally:
        damaged.close()
    torn = start("torn")
    try:
        assert not torn.replica.votes_lost
    finally:
        torn.close()


# ------------------------------------------------------------------ the timer contract


async def test_the_node_ticks_its_replica_once_per_set_timer_deadline(
    node: Node, autojump_clock: Any
) -> None:
    """bft/driver.py's timer contract in the node's loop: ticked at each SetTimer's time,
    once, and at no other time (virtual time: the clock jumps while the loop waits)."""
    from tests.test_driver import TickRecorder

    stub = TickRecorder(0.25, 0.7, 3.0)
    stub.app = node.app  # type: ignore[attr-defined]  (the node's stop summary reads it)
    node.replica = stub  # type: ignore[assignment]
    async with trio.open_nursery() as nursery:
        nursery.start_soon(node.run)
        await trio.sleep(10.0)
        nursery.cancel_scope.cancel()
    assert stub.start_now is not None
    assert [t - stub.start_now for t in stub.ticks] == pytest.approx([0.25, 0.95, 1.65, 2.35])
