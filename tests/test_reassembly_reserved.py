"""Reserved reassembly budgets: strangers' fragment floods cannot evict a peer's partials.

Issue 21, item 3: with one global byte budget, a flood of never-completed fragments
from many source ports filled it and then evicted the oldest partial anywhere, an
honest replica's large message mid-reassembly included. Now the peers an endpoint
knows (its peer table: a replica's fellow replicas) each have a reserved budget, and
strangers share `max_total_bytes` and evict only one another.

`NoReservation` plants the old policy (every key a stranger): the flood tests must
fail with it.
"""

from __future__ import annotations

import random
import socket
from collections.abc import Hashable, Iterable

import pytest
import trio
from hypothesis import given, settings
from hypothesis import strategies as st

from transport.frame import Frame, decode_frame_untrusted, encode_frames
from transport.reassembly import FRAGMENT_OVERHEAD_BYTES, Reassembler
from transport.udp import UdpEndpoint

PEER = (("127.0.0.1", 9001), 1)  # a replica: its address and its own sender id


class NoReservation(Reassembler):
    """The old policy, planted: nobody is reserved, one pool for everyone."""

    def set_reserved(self, keys: Iterable[Hashable]) -> None:
        list(keys)


def small(cls: type[Reassembler] = Reassembler, **kwargs: object) -> Reassembler:
    one = 4000 + FRAGMENT_OVERHEAD_BYTES * 4
    bounds: dict = dict(max_message_bytes=4000, max_partial_per_peer=4, max_age_s=5.0,
                        max_peers=64, max_bytes_per_peer=2 * one, max_total_bytes=6 * one,
                        recent_ids_per_peer=16)
    bounds.update(kwargs)
    return cls(**bounds)


def frames(sender_id: int, message_id: int, payload: bytes,
           datagram_bytes: int = 1000) -> list[Frame]:
    return [decode_frame_untrusted(d)
            for d in encode_frames(sender_id, message_id, payload, datagram_bytes)]


def stranger_flood(rng: random.Random, count: int) -> list[tuple[Hashable, Frame]]:
    """First fragments of messages that never complete, from 200 source ports (some
    claiming the peer's sender id, one from the peer's own address with another id)."""
    out = []
    for i in range(count):
        port = rng.randrange(200)
        key = ((("127.0.0.1", 9001), 7) if port == 0
               else (("127.0.0.1", 30000 + port), rng.choice([1, 2, 2**32 - 1])))
        out.append((key, Frame(key[1], i, 0, 4, 3600, b"\x00" * 900)))
    return out


@pytest.mark.parametrize("cls", [Reassembler, NoReservation])
def test_a_stranger_flood_never_evicts_a_reserved_peers_partial(
        cls: type[Reassembler]) -> None:
    seed = 21
    print("seed", seed)
    rng = random.Random(seed)
    reassembler = small(cls, reserved=[PEER])
    message = bytes(rng.randrange(256) for _ in range(3800))
    own = frames(1, 77, message)
    assert len(own) > 2
    results = [reassembler.add(PEER, own[0], 0.0)]
    for i, (key, frame) in enumerate(stranger_flood(rng, 3000)):  # 15 times the strangers' share
        results.append(reassembler.add(key, frame, 0.1))
        if i % 1000 == 999 and i // 1000 + 1 < len(own) - 1:
            results.append(reassembler.add(PEER, own[i // 1000 + 1], 0.2))
    results.extend(reassembler.add(PEER, f, 0.3) for f in own[3:])
    held = reassembler._audit()
    stats = reassembler.statistics()
    assert held["total"] <= reassembler.max_held_bytes
    assert held["strangers"] <= reassembler.max_total_bytes
    assert stats["drops"]["evicted_total_bytes"] > 2000  # the flood did fill the pool
    if cls is NoReservation:
        assert message not in results  # the old policy evicted the replica's partial
        return
    assert results.count(message) == 1
    assert stats["drops"]["evicted_peer_bytes"] == stats["drops"]["evicted_partial_limit"] == 0


def test_reserved_budget_bounds_the_peer_itself() -> None:
    """A reserved peer (a faulty replica) evicts only its own partials, and holds at most
    `max_bytes_per_peer`; the strangers' partials stay."""
    reassembler = small(reserved=[PEER])
    stranger = (("127.0.0.1", 40000), 5)
    assert reassembler.add(stranger, Frame(5, 1, 0, 4, 3600, b"s" * 900), 0.0) is None
    for message_id in range(50):
        frame = Frame(1, message_id, 0, 4, 3600, b"p" * 900)
        assert reassembler.add(PEER, frame, 0.0) is None
    held = reassembler._audit()
    assert held["per_peer"][PEER] <= reassembler.max_bytes_per_peer
    assert held["per_peer"][stranger] == 900 + FRAGMENT_OVERHEAD_BYTES
    assert reassembler.statistics()["drops"]["evicted_partial_limit"] == 50 - 4


def test_set_reserved_moves_a_stranger_in_and_forgets_one_that_leaves() -> None:
    reassembler = small()
    assert reassembler.add(PEER, Frame(1, 1, 0, 2, 1800, b"a" * 900), 0.0) is None
    assert reassembler._audit()["strangers"] == 900 + FRAGMENT_OVERHEAD_BYTES
    reassembler.set_reserved([PEER])  # its partial comes along and completes
    assert reassembler._audit()["strangers"] == 0
    last = Frame(1, 1, 1, 2, 1800, b"b" * 900)
    assert reassembler.add(PEER, last, 0.0) == b"a" * 900 + b"b" * 900
    assert reassembler.add(PEER, Frame(1, 2, 0, 2, 1800, b"a" * 900), 0.0) is None
    reassembler.set_reserved([])
    assert reassembler.reserved == frozenset()
    assert reassembler._audit()["total"] == 0
    assert reassembler.statistics()["drops"]["evicted_peer"] == 1


def test_reserved_peers_are_never_forgotten_under_max_peers() -> None:
    reassembler = small(max_peers=2, reserved=[PEER])
    assert reassembler.add(PEER, Frame(1, 1, 0, 2, 1800, b"a" * 900), 0.0) is None
    for port in range(10):
        reassembler.add((("h", port), 3), Frame(3, 1, 0, 2, 4, b"ab"), 0.0)
    stats = reassembler.statistics()
    assert stats["peers"] == 3 and stats["reserved_peers"] == 1
    last = Frame(1, 1, 1, 2, 1800, b"b" * 900)
    assert reassembler.add(PEER, last, 0.0) == b"a" * 900 + b"b" * 900


@st.composite
def mixed_steps(draw: st.DrawFn) -> list[tuple[str, int, int]]:
    """A reserved peer's fragments (messages' fragment order shuffled) interleaved with
    bursts of 1..60 stranger fragments from up to 40 keys."""
    step = st.tuples(st.sampled_from(["peer", "peer", "stranger"]), st.integers(0, 39),
                     st.integers(1, 60))
    return draw(st.lists(step, max_size=60))


@settings(deadline=None)
@given(mixed_steps(), st.randoms(use_true_random=False))
def test_every_peer_message_completes_and_bounds_hold_whatever_strangers_send(
        steps: list[tuple[str, int, int]], rng: random.Random) -> None:
    """Property: every message of the reserved peer whose fragments all arrive is
    delivered (at most 2 in flight, within its own budget), and after every step the
    held bytes stay within their bounds."""
    reassembler = small(reserved=[PEER])
    pending: list[list[Frame]] = []
    sent: dict[int, bytes] = {}
    delivered: list[bytes] = []
    next_id = 0
    for who, port, burst in steps:
        if who == "peer":
            if len(pending) < 2:
                payload = rng.randbytes(rng.randrange(1500, 4000))
                sent[next_id] = payload
                pending.append(frames(1, next_id, payload))
                next_id += 1
            queue = rng.choice(pending)
            out = reassembler.add(PEER, queue.pop(rng.randrange(len(queue))), 0.0)
            if not queue:
                pending.remove(queue)
                assert out is not None
            if out is not None:
                delivered.append(out)
        else:
            for i in range(burst):
                key = (("10.0.0.9", (port + i) % 40), rng.choice([1, 9]))
                reassembler.add(key, Frame(key[1], rng.randrange(30), rng.randrange(4), 4, 3600,
                                           b"\x01" * rng.choice([1, 900])), 0.0)
        held = reassembler._audit()
        assert held["strangers"] <= reassembler.max_total_bytes
        assert held["total"] <= reassembler.max_held_bytes
        assert all(cost <= reassembler.max_bytes_per_peer for cost in held["per_peer"].values())
    complete = [sent[i] for i in range(next_id)
                if not any(q[0].message_id == i for q in pending)]
    assert sorted(delivered) == sorted(complete)


# ------------------------------------------------------------- real UDP


@pytest.mark.udp
@pytest.mark.parametrize("planted", [False, True])
async def test_udp_endpoint_keeps_a_peers_large_message_through_a_fragment_flood(
        planted: bool) -> None:
    """Endpoint A knows B as peer 1 (as a replica knows the others from the config); 200
    stranger sockets flood A with fragments that never complete while B's message is
    half received. B's message still arrives (with the old policy planted it does not)."""
    reassembler = small(NoReservation) if planted else small()
    with UdpEndpoint(1, "127.0.0.1", 0) as b:
        with UdpEndpoint(0, "127.0.0.1", 0, peers={1: b.address[:2]}, max_message_bytes=4000,
                         reassembler=reassembler) as a:
            strangers = [socket.socket(socket.AF_INET, socket.SOCK_DGRAM) for _ in range(200)]
            try:
                for s in strangers:
                    s.bind(("127.0.0.1", 0))
                message = random.Random(3).randbytes(3800)
                datagrams = encode_frames(1, 5, message, 1000)
                got: list[bytes] = []
                sent = 0

                def drain() -> None:  # loopback queues in order, before sendto returns
                    nonlocal got
                    got += [r.payload for r in a.receive_nowait()]
                    assert a.statistics()["received_datagrams"] == sent, "the kernel dropped"

                for d in datagrams[:2]:
                    await b.send_datagram(d, a.address)
                    sent += 1
                drain()
                for i in range(1200):  # in chunks: the socket buffer may be small
                    strangers[i % 200].sendto(
                        encode_frames(i % 3, i, b"\x00" * 3600, 1000)[0], a.address)
                    sent += 1
                    if i % 50 == 49:
                        drain()
                for d in datagrams[2:]:
                    await b.send_datagram(d, a.address)
                    sent += 1
                drain()
            finally:
                for s in strangers:
                    s.close()
            stats = a.statistics()
            assert stats["drops"]["evicted_total_bytes"] > 1000
            assert (message in got) is not planted
