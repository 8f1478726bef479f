"""The endpoint's paths without a checkpoint: `send_nowait`, the send queue and
`flush()`, `receive_nowait`; and the reassembler's single-datagram fast path.

A full kernel send buffer cannot be produced on demand on loopback (the kernel hands
a datagram to the receiving socket, or drops it, within `sendto`), so tests put a
`StallingSocket` in front of the endpoint's socket: its `sendto` raises
BlockingIOError, as a full buffer does, for a given number of calls.
"""

from __future__ import annotations

import errno
import socket
import sys
from typing import Any

import pytest
import trio
import trio.testing

from transport.frame import OVERHEAD_BYTES, Frame, decode_frame_untrusted, encode_frames
from transport.reassembly import Reassembler
from transport.udp import Received, TransportError, UdpEndpoint

pytestmark = pytest.mark.udp

DEADLINE_S = 10  # a failure guard for datagrams that must come, not a timing assumption


class StallingSocket:
    """The endpoint's socket, except that `sendto` raises BlockingIOError (a full send
    buffer) for the next `stalls` calls (-1: until changed). Counts every call."""

    def __init__(self, real: socket.socket, stalls: int = -1) -> None:
        self.real = real
        self.stalls = stalls
        self.calls = 0
        self.on_stall: Any = None

    def sendto(self, data: bytes, addr: Any) -> int:
        self.calls += 1
        if self.stalls != 0:
            if self.stalls > 0:
                self.stalls -= 1
            if self.on_stall is not None:
                self.on_stall()
            raise BlockingIOError(errno.EAGAIN, "send buffer full (simulated)")
        return self.real.sendto(data, addr)

    def __getattr__(self, name: str) -> Any:
        return getattr(self.real, name)


def stall(endpoint: UdpEndpoint, stalls: int = -1) -> StallingSocket:
    fake = StallingSocket(endpoint._sock, stalls)
    endpoint._sock = fake  # type: ignore[assignment]
    return fake


def payloads_now(endpoint: UdpEndpoint) -> list[bytes]:
    """What has arrived (loopback delivers within the sender's sendto)."""
    return [r.payload for r in endpoint.receive_nowait()]


# ------------------------------------------------------------------ send_nowait


async def test_send_nowait_delivers_small_and_fragmented_messages_without_a_checkpoint() -> None:
    with (
        UdpEndpoint(1, "127.0.0.1", 0) as a,
        UdpEndpoint(2, "127.0.0.1", 0, peers={1: a.address}, max_datagram_bytes=256) as b,
    ):
        big = bytes(range(256)) * 8  # 2048 bytes: 9 fragments of 229
        # A burst of sends is plain synchronous calls: nothing here can switch tasks.
        assert b.send_nowait(1, b"small") is True
        assert b.send_to_nowait(a.address, big) is True
        assert b.send_to_nowait(a.address, b"") is True
        assert b.unsent_datagrams == 0
        assert payloads_now(a) == [b"small", big, b""]
        stats = b.statistics()
        assert stats["sent_messages"] == 3
        assert stats["sent_datagrams"] == 1 + 9 + 1
        assert stats["send_queued"] == 0 and stats["send_errors"] == {}


def test_send_nowait_is_synchronous_and_needs_no_trio_run() -> None:
    with (
        socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as raw,
        UdpEndpoint(2, "127.0.0.1", 0) as b,
    ):
        raw.bind(("127.0.0.1", 0))
        assert b.send_to_nowait(raw.getsockname(), b"outside trio") is True
        frame = decode_frame_untrusted(raw.recv(2048))
        assert (frame.sender_id, frame.payload) == (2, b"outside trio")


async def test_send_nowait_unknown_peer_closed_endpoint_and_oversize_payload() -> None:
    with UdpEndpoint(2, "127.0.0.1", 0, max_message_bytes=100) as b:
        assert b.send_nowait(99, b"who?") is False
        assert b.statistics()["send_errors"] == {"unknown_peer": 1}
        assert b.send_to_nowait(("::1", 9), b"wrong family") is False  # IPv6 from IPv4
        assert sum(b.statistics()["send_errors"].values()) == 2
        with pytest.raises(TransportError):
            b.send_to_nowait(b.address, b"x" * 101)
    with pytest.raises(trio.ClosedResourceError):
        b.send_to_nowait(("127.0.0.1", 9), b"closed")
    with pytest.raises(trio.ClosedResourceError):
        b.receive_nowait()


async def test_full_send_buffer_queues_in_order_and_flush_sends_the_rest() -> None:
    with (
        UdpEndpoint(1, "127.0.0.1", 0) as a,
        UdpEndpoint(2, "127.0.0.1", 0, max_datagram_bytes=128) as b,
    ):
        fake = stall(b, stalls=1)  # the first datagram finds the buffer full
        fragmented = b"f" * 300  # 3 fragments of 101
        assert b.send_to_nowait(a.address, b"first") is True
        # room again, but what follows must wait behind the queued datagram (order)
        assert b.send_to_nowait(a.address, fragmented) is True
        assert b.send_to_nowait(a.address, b"last") is True
        assert fake.calls == 1
        assert b.unsent_datagrams == 1 + 3 + 1
        stats = b.statistics()
        assert stats["send_queued"] == 5 and stats["send_queue_datagrams"] == 5
        assert stats["send_queue_bytes"] == 5 + 300 + 4 + 5 * OVERHEAD_BYTES
        assert payloads_now(a) == []
        await b.flush()
        assert b.unsent_datagrams == 0
        assert b.statistics()["send_queue_bytes"] == 0
        assert b.statistics()["sent_datagrams"] == 5
        assert payloads_now(a) == [b"first", fragmented, b"last"]
        # with the queue empty, sends go straight to the kernel again
        assert b.send_to_nowait(a.address, b"direct") is True
        assert b.unsent_datagrams == 0
        assert payloads_now(a) == [b"direct"]


async def test_flush_waits_for_room_and_retries() -> None:
    with UdpEndpoint(1, "127.0.0.1", 0) as a, UdpEndpoint(2, "127.0.0.1", 0) as b:
        fake = stall(b, stalls=4)  # one in send_to_nowait, three more in flush
        assert b.send_to_nowait(a.address, b"patient") is True
        assert b.unsent_datagrams == 1
        with trio.fail_after(DEADLINE_S):
            await b.flush()
        assert fake.calls == 5
        assert payloads_now(a) == [b"patient"]


async def test_cancelled_flush_keeps_the_rest_for_the_next_flush() -> None:
    with UdpEndpoint(1, "127.0.0.1", 0) as a, UdpEndpoint(2, "127.0.0.1", 0) as b:
        fake = stall(b)  # full until further notice
        for payload in (b"one", b"two"):
            assert b.send_to_nowait(a.address, payload) is True
        with trio.CancelScope() as scope:
            def cancel_on_third_attempt() -> None:
                if fake.calls == 3:  # send_to_nowait tried once, flush twice
                    scope.cancel()

            fake.on_stall = cancel_on_third_attempt
            await b.flush()
        assert scope.cancelled_caught
        assert b.unsent_datagrams == 2
        fake.stalls = 0
        await b.flush()
        assert payloads_now(a) == [b"one", b"two"]


async def test_send_queue_bound_drops_and_counts_and_cuts_the_message_short() -> None:
    with (
        UdpEndpoint(1, "127.0.0.1", 0) as a,
        UdpEndpoint(2, "127.0.0.1", 0, max_datagram_bytes=128, max_send_queue_bytes=256) as b,
    ):
        stall(b, stalls=-1)
        # 3 fragments of 128 bytes: two fit the queue, the third does not
        assert b.send_to_nowait(a.address, b"z" * 303) is False
        assert b.unsent_datagrams == 2
        assert b.statistics()["send_errors"] == {"send_queue_full": 1}
        assert b.send_to_nowait(a.address, b"no room") is False
        assert b.statistics()["send_errors"] == {"send_queue_full": 2}
        b._sock.stalls = 0  # type: ignore[attr-defined]
        await b.flush()
        # the two queued fragments alone never make a message
        assert payloads_now(a) == []
        assert a.statistics()["reassembly"]["partials"] == 1


async def test_zero_send_queue_drops_what_would_block() -> None:
    with (
        UdpEndpoint(1, "127.0.0.1", 0) as a,
        UdpEndpoint(2, "127.0.0.1", 0, max_send_queue_bytes=0) as b,
    ):
        stall(b, stalls=1)
        assert b.send_to_nowait(a.address, b"dropped") is False
        assert b.send_to_nowait(a.address, b"sent") is True
        assert b.unsent_datagrams == 0
        assert b.statistics()["send_errors"] == {"send_queue_full": 1}
        assert payloads_now(a) == [b"sent"]


def test_negative_send_queue_bound_is_refused() -> None:
    with pytest.raises(TransportError):
        UdpEndpoint(1, "127.0.0.1", 0, max_send_queue_bytes=-1)


async def test_close_discards_the_send_queue_and_flush_raises() -> None:
    a = UdpEndpoint(1, "127.0.0.1", 0)
    with UdpEndpoint(2, "127.0.0.1", 0) as b:
        stall(a)
        assert a.send_to_nowait(b.address, b"never") is True
        assert a.unsent_datagrams == 1
        a.close()
        assert a.unsent_datagrams == 0
        with pytest.raises(trio.ClosedResourceError):
            await a.flush()
        assert payloads_now(b) == []


async def test_send_filter_sees_every_datagram_of_send_nowait_even_queued_ones() -> None:
    seen: list[bytes] = []

    def duplicate(datagram: bytes, addr: tuple) -> list[tuple[bytes, tuple]]:
        seen.append(datagram)
        return [(datagram, addr), (datagram, addr)]

    def drop_all(datagram: bytes, addr: tuple) -> list[tuple[bytes, tuple]]:
        seen.append(datagram)
        return []

    with UdpEndpoint(1, "127.0.0.1", 0) as a, UdpEndpoint(2, "127.0.0.1", 0) as b:
        b.send_filter = duplicate
        assert b.send_to_nowait(a.address, b"twice") is True
        b.send_filter = drop_all
        assert b.send_to_nowait(a.address, b"never") is True  # dropped by the filter: not an error
        b.send_filter = duplicate
        stall(b, stalls=1)
        assert b.send_to_nowait(a.address, b"queued twice") is True
        assert b.unsent_datagrams == 2  # both copies, after the filter
        await b.flush()
        assert len(seen) == 3
        assert payloads_now(a) == [b"twice", b"queued twice"]  # duplicates delivered once
        assert a.statistics()["drops"]["duplicate_message"] == 2
        assert b.statistics()["sent_datagrams"] == 4


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="IP_RECVERR is Linux-only")
async def test_send_nowait_counts_an_icmp_refusal_and_retries_once() -> None:
    with UdpEndpoint(1, "127.0.0.1", 0) as a, UdpEndpoint(2, "127.0.0.1", 0) as b:
        with socket.fromfd(b.fileno(), socket.AF_INET, socket.SOCK_DGRAM) as alias:
            alias.setsockopt(socket.IPPROTO_IP, getattr(socket, "IP_RECVERR", 11), 1)
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as probe:
            probe.bind(("127.0.0.1", 0))
            nobody = probe.getsockname()
        assert b.send_to_nowait(nobody, b"refused") is True
        with trio.fail_after(DEADLINE_S):
            await trio.lowlevel.wait_readable(b.fileno())  # the ICMP error has arrived
        assert b.send_to_nowait(a.address, b"after refusal") is True  # retried after the error
        assert payloads_now(a) == [b"after refusal"]
        assert b.statistics()["send_errors"] == {"refused": 1}


# ------------------------------------------------------------------ receive_nowait


async def test_receive_nowait_returns_what_is_there_and_never_waits() -> None:
    with UdpEndpoint(1, "127.0.0.1", 0) as a, UdpEndpoint(2, "127.0.0.1", 0) as b:
        assert a.receive_nowait() == []
        for i in range(5):
            b.send_to_nowait(a.address, b"m%d" % i)
        got = a.receive_nowait()
        assert [r.payload for r in got] == [b"m%d" % i for i in range(5)]
        assert {(r.addr, r.sender_id) for r in got} == {(b.address, 2)}
        assert all(type(r) is Received for r in got)
        assert a.receive_nowait() == []
        assert a.statistics()["received_messages"] == 5


async def test_receive_nowait_hands_out_messages_left_over_by_receive_first() -> None:
    with UdpEndpoint(1, "127.0.0.1", 0) as a, UdpEndpoint(2, "127.0.0.1", 0) as b:
        for payload in (b"one", b"two", b"three"):
            b.send_to_nowait(a.address, payload)
        with trio.fail_after(DEADLINE_S):
            assert (await a.receive()).payload == b"one"  # drains all three, keeps two
        b.send_to_nowait(a.address, b"four")
        assert [r.payload for r in a.receive_nowait()] == [b"two", b"three"]
        assert [r.payload for r in a.receive_nowait()] == [b"four"]


# ---------------------------------------------------- reassembly: one-datagram path


PEER = (("127.0.0.1", 4000), 7)


def single(message_id: int, payload: bytes = b"p") -> Frame:
    return decode_frame_untrusted(encode_frames(7, message_id, payload, 1400)[0])


def test_decoded_frames_are_frames() -> None:
    frame = single(5, b"abc")
    assert type(frame) is Frame
    assert frame == Frame(7, 5, 0, 1, 3, b"abc")
    assert (frame.sender_id, frame.message_id, frame.payload) == (7, 5, b"abc")


def test_single_datagram_duplicates_are_dropped_within_the_window() -> None:
    r = Reassembler(recent_ids_per_peer=4)
    assert r.add(PEER, single(1, b"a"), 0.0) == b"a"
    assert r.add(PEER, single(1, b"a"), 0.0) is None
    assert r.add(("other", 7), single(1, b"a"), 0.0) == b"a"  # another peer, its own window
    for message_id in range(2, 6):
        assert r.add(PEER, single(message_id), 0.0) == b"p"
    # id 1 has left PEER's window of 4: delivered again (documented)
    assert r.add(PEER, single(1, b"a"), 0.0) == b"a"
    assert r.add(PEER, single(5), 0.0) is None
    stats = r.statistics()
    assert stats["delivered"] == 7
    assert stats["drops"]["duplicate_message"] == 2
    assert stats["partials"] == 0 and stats["buffered_bytes"] == 0
    assert r._audit()["recent_ids"][PEER] == 4


def test_single_datagram_window_of_zero_remembers_nothing() -> None:
    r = Reassembler(recent_ids_per_peer=0)
    assert r.add(PEER, single(1), 0.0) == b"p"
    assert r.add(PEER, single(1), 0.0) == b"p"
    assert r._audit()["recent_ids"][PEER] == 0


@pytest.mark.parametrize(
    ("frame", "reason"),
    [
        (Frame(7, 1, 1, 1, 1, b"p"), "bad_fragment"),  # index 1 of 1
        (Frame(7, 1, 0, 1, 2, b"p"), "bad_fragment"),  # shorter than announced
        (Frame(7, 1, 0, 1, 0, b"p"), "bad_fragment"),  # longer than announced
        (Frame(7, 1, 0, 0, 1, b"p"), "bad_fragment"),  # a count of zero
        (Frame(7, 1, 0, 1, 101, b"p" * 101), "too_large"),
    ],
)
def test_bad_single_frames_are_dropped_and_counted_without_state(frame: Frame, reason: str) -> None:
    r = Reassembler(max_message_bytes=100)
    assert r.add(PEER, frame, 0.0) is None
    stats = r.statistics()
    assert {k: v for k, v in stats["drops"].items() if v} == {reason: 1}
    assert stats["delivered"] == 0 and stats["partials"] == 0
    # the id was not remembered: a good frame with it is delivered
    assert r.add(PEER, Frame(7, 1, 0, 1, 1, b"p"), 0.0) == b"p"


def test_a_late_single_datagram_copy_of_a_fragmented_message_is_a_duplicate() -> None:
    r = Reassembler()
    fragments = [decode_frame_untrusted(d) for d in encode_frames(7, 9, b"q" * 3000, 1400)]
    assert len(fragments) == 3
    assert [r.add(PEER, f, 0.0) for f in fragments] == [None, None, b"q" * 3000]
    assert r.add(PEER, single(9, b"q"), 0.0) is None
    assert r.statistics()["drops"]["duplicate_message"] == 1
