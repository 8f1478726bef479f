"""Datagram frames (transport.frame) and bounded reassembly (transport.reassembly)."""

from __future__ import annotations

import struct

import pytest
from crc32c import crc32c
from hypothesis import given, settings
from hypothesis import strategies as st

from transport.frame import (
    CHECKSUM_BYTES,
    FRAME_DROP_REASONS,
    HEADER_BYTES,
    MAGIC,
    OVERHEAD_BYTES,
    VERSION,
    Frame,
    FrameError,
    decode_frame_untrusted,
    encode_frames,
)
from transport.reassembly import FRAGMENT_OVERHEAD_BYTES, REASSEMBLY_DROP_REASONS, Reassembler

PEER = (("127.0.0.1", 9000), 7)


def raw_frame(
    sender_id: int,
    message_id: int,
    index: int,
    count: int,
    total: int,
    payload: bytes,
    *,
    magic: bytes = MAGIC,
    version: int = VERSION,
) -> bytes:
    """A datagram with any header fields and a correct checksum."""
    body = (
        struct.pack("!2sBIQHHI", magic, version, sender_id, message_id, index, count, total)
        + payload
    )
    return body + struct.pack("!I", crc32c(body))


def reason_of(datagram: bytes, **kwargs: int) -> str:
    with pytest.raises(FrameError) as info:
        decode_frame_untrusted(datagram, **kwargs)
    return info.value.reason


def frames_of(
    sender_id: int, message_id: int, payload: bytes, max_datagram_bytes: int
) -> list[Frame]:
    return [
        decode_frame_untrusted(d)
        for d in encode_frames(sender_id, message_id, payload, max_datagram_bytes)
    ]


# ---------------------------------------------------------------- frame format


def test_layout_is_the_documented_one() -> None:
    (datagram,) = encode_frames(0x01020304, 0x1122334455667788, b"hello", 100)
    assert HEADER_BYTES == 23 and CHECKSUM_BYTES == 4 and OVERHEAD_BYTES == 27
    assert datagram[:2] == MAGIC
    assert datagram[2] == VERSION
    assert datagram[3:7] == bytes.fromhex("01020304")
    assert datagram[7:15] == bytes.fromhex("1122334455667788")
    assert datagram[15:19] == bytes.fromhex("0000 0001")  # index 0, count 1
    assert datagram[19:23] == (5).to_bytes(4, "big")
    assert datagram[23:28] == b"hello"
    assert datagram[28:] == crc32c(datagram[:28]).to_bytes(4, "big")


def test_checksum_is_crc32c_castagnoli() -> None:
    assert crc32c(b"123456789") == 0xE3069283  # the CRC-32C check value, not zlib's CRC-32


def test_single_frame_round_trip() -> None:
    (datagram,) = encode_frames(3, 41, b"payload", 1400)
    assert decode_frame_untrusted(datagram) == Frame(3, 41, 0, 1, 7, b"payload")


def test_empty_payload_is_one_frame() -> None:
    (datagram,) = encode_frames(3, 0, b"", 1400)
    assert len(datagram) == OVERHEAD_BYTES
    assert decode_frame_untrusted(datagram) == Frame(3, 0, 0, 1, 0, b"")


def test_fragments_fill_datagrams_and_cover_the_payload() -> None:
    payload = bytes(range(256)) * 40  # 10240 bytes
    datagrams = encode_frames(1, 2, payload, 1000)
    chunk = 1000 - OVERHEAD_BYTES
    assert len(datagrams) == -(-len(payload) // chunk)
    assert all(len(d) == 1000 for d in datagrams[:-1])
    assert len(datagrams[-1]) <= 1000
    frames = [decode_frame_untrusted(d) for d in datagrams]
    assert [f.fragment_index for f in frames] == list(range(len(frames)))
    assert {(f.fragment_count, f.total_length, f.message_id) for f in frames} == {
        (len(frames), len(payload), 2)
    }
    assert b"".join(f.payload for f in frames) == payload


@given(
    payload=st.binary(max_size=3000),
    max_datagram_bytes=st.integers(OVERHEAD_BYTES + 1, 600),
    sender_id=st.integers(0, 2**32 - 1),
    message_id=st.integers(0, 2**64 - 1),
)
def test_encode_decode_reassemble_round_trip(
    payload: bytes, max_datagram_bytes: int, sender_id: int, message_id: int
) -> None:
    datagrams = encode_frames(sender_id, message_id, payload, max_datagram_bytes)
    assert all(len(d) <= max_datagram_bytes for d in datagrams)
    reassembler = Reassembler(max_message_bytes=4096)
    results = [reassembler.add(PEER, decode_frame_untrusted(d), 0.0) for d in datagrams]
    assert results[:-1] == [None] * (len(datagrams) - 1)
    assert results[-1] == payload
    assert all(decode_frame_untrusted(d).sender_id == sender_id for d in datagrams)


@pytest.mark.parametrize(
    "kwargs",
    [
        {"sender_id": -1},
        {"sender_id": 2**32},
        {"message_id": -1},
        {"message_id": 2**64},
        {"max_datagram_bytes": OVERHEAD_BYTES},
        {"payload": bytes(70000), "max_datagram_bytes": 28},
    ],
)
def test_encode_rejects_what_the_format_cannot_carry(kwargs: dict) -> None:
    args = {"sender_id": 1, "message_id": 1, "payload": b"x", "max_datagram_bytes": 100} | kwargs
    with pytest.raises(ValueError):
        encode_frames(**args)


# ------------------------------------------------------------- untrusted decode


@pytest.mark.parametrize("size", range(OVERHEAD_BYTES))
def test_short_datagrams_are_truncated(size: int) -> None:
    (datagram,) = encode_frames(1, 1, b"", 100)
    assert reason_of(datagram[:size]) == "truncated"


def test_bad_magic_and_bad_version() -> None:
    assert reason_of(raw_frame(1, 1, 0, 1, 1, b"x", magic=b"GE")) == "bad_magic"
    assert reason_of(raw_frame(1, 1, 0, 1, 1, b"x", version=VERSION + 1)) == "bad_version"
    assert reason_of(b"GET / HTTP/1.1\r\nHost: example\r\n\r\n") == "bad_magic"


def test_every_single_bit_flip_is_detected() -> None:
    (datagram,) = encode_frames(9, 1234, b"some payload bytes", 1400)
    for bit in range(len(datagram) * 8):
        corrupted = bytearray(datagram)
        corrupted[bit // 8] ^= 1 << (bit % 8)
        reason = reason_of(bytes(corrupted))
        if bit >= 24:  # past magic and version: only the checksum can tell
            assert reason == "bad_checksum", bit
        else:
            assert reason in ("bad_magic", "bad_version"), bit


def test_fields_are_checked_after_the_checksum() -> None:
    assert reason_of(raw_frame(1, 1, 0, 0, 1, b"x")) == "bad_fragment"  # count 0
    assert reason_of(raw_frame(1, 1, 2, 2, 10, b"x")) == "bad_fragment"  # index >= count
    assert reason_of(raw_frame(1, 1, 0, 1, 5, b"x")) == "bad_fragment"  # single, not whole
    assert reason_of(raw_frame(1, 1, 0, 2, 1, b"xx")) == "bad_fragment"  # payload > total
    assert reason_of(raw_frame(1, 1, 0, 2, 10, b"")) == "bad_fragment"  # empty fragment
    assert reason_of(raw_frame(1, 1, 0, 9, 5, b"x")) == "bad_fragment"  # count > total
    assert reason_of(raw_frame(1, 1, 0, 2, 101, b"x"), max_message_bytes=100) == "too_large"
    assert decode_frame_untrusted(raw_frame(1, 1, 1, 2, 100, b"x"), max_message_bytes=100)


@given(st.binary(max_size=200))
def test_garbage_raises_only_frame_error(datagram: bytes) -> None:
    try:
        decode_frame_untrusted(datagram)
    except FrameError as exc:
        assert exc.reason in FRAME_DROP_REASONS


@given(
    sender_id=st.integers(0, 2**32 - 1),
    message_id=st.integers(0, 2**64 - 1),
    index=st.integers(0, 2**16 - 1),
    count=st.integers(0, 2**16 - 1),
    total=st.integers(0, 2**32 - 1),
    payload=st.binary(max_size=64),
)
def test_checksummed_nonsense_raises_only_frame_error_or_decodes_consistently(
    sender_id: int, message_id: int, index: int, count: int, total: int, payload: bytes
) -> None:
    try:
        frame = decode_frame_untrusted(
            raw_frame(sender_id, message_id, index, count, total, payload), max_message_bytes=1000
        )
    except FrameError as exc:
        assert exc.reason in ("bad_fragment", "too_large")
        return
    assert 0 <= frame.fragment_index < frame.fragment_count
    assert len(frame.payload) <= frame.total_length <= 1000
    assert frame.fragment_count > 1 or len(frame.payload) == frame.total_length


# ------------------------------------------------------------------ reassembly


def drops(reassembler: Reassembler) -> dict[str, int]:
    return {k: v for k, v in reassembler.statistics()["drops"].items() if v}


def test_single_fragment_passes_through_without_copy() -> None:
    frame = decode_frame_untrusted(encode_frames(1, 5, b"abc" * 10, 1400)[0])
    reassembler = Reassembler()
    assert reassembler.add(PEER, frame, 0.0) is frame.payload
    assert reassembler.statistics()["partials"] == 0


def test_reordered_fragments_complete_once() -> None:
    payload = bytes(range(200)) * 10
    frames = frames_of(1, 5, payload, 100)
    reassembler = Reassembler()
    results = [reassembler.add(PEER, f, 0.0) for f in reversed(frames)]
    assert results[-1] == payload and results[:-1] == [None] * (len(frames) - 1)
    stats = reassembler.statistics()
    assert stats["partials"] == 0 and stats["buffered_bytes"] == 0
    assert stats["delivered_fragmented"] == 1


def test_duplicate_fragment_ignored_and_whole_message_delivered_once() -> None:
    payload = b"z" * 500
    frames = frames_of(1, 5, payload, 100)
    reassembler = Reassembler()
    assert reassembler.add(PEER, frames[0], 0.0) is None
    assert reassembler.add(PEER, frames[0], 0.0) is None
    delivered = [reassembler.add(PEER, f, 0.0) for f in frames[1:]]
    assert delivered[-1] == payload
    # a replay of every fragment after completion is not delivered again
    assert [reassembler.add(PEER, f, 0.0) for f in frames] == [None] * len(frames)
    assert drops(reassembler) == {"duplicate_fragment": 1, "duplicate_message": len(frames)}


def test_duplicate_single_fragment_message_is_delivered_once() -> None:
    frame = frames_of(1, 5, b"once", 1400)[0]
    reassembler = Reassembler()
    assert reassembler.add(PEER, frame, 0.0) == b"once"
    assert reassembler.add(PEER, frame, 0.0) is None
    # the same message id from another peer key is another message
    assert reassembler.add((PEER[0], 8), frame, 0.0) == b"once"
    assert drops(reassembler) == {"duplicate_message": 1}


def test_recent_id_window_is_bounded_and_old_duplicates_are_delivered_again() -> None:
    reassembler = Reassembler(recent_ids_per_peer=3)
    old = frames_of(1, 0, b"old", 1400)[0]
    assert reassembler.add(PEER, old, 0.0) == b"old"
    for message_id in (1, 2, 3):
        assert reassembler.add(PEER, frames_of(1, message_id, b"new", 1400)[0], 0.0) == b"new"
    # id 0 has left the window of 3: a (very late) duplicate is delivered again, by design
    assert reassembler.add(PEER, old, 0.0) == b"old"


def test_inconsistent_fragment_dropped_and_message_still_completes() -> None:
    payload = b"q" * 300
    frames = frames_of(1, 5, payload, 127)  # 3 fragments of 100 bytes
    reassembler = Reassembler()
    assert reassembler.add(PEER, frames[0], 0.0) is None
    liar = frames[1]._replace(total_length=301)
    assert reassembler.add(PEER, liar, 0.0) is None
    liar = frames[1]._replace(fragment_count=4)
    assert reassembler.add(PEER, liar, 0.0) is None
    assert reassembler.add(PEER, frames[1], 0.0) is None
    assert reassembler.add(PEER, frames[2], 0.0) == payload
    assert drops(reassembler) == {"inconsistent_fragment": 2}


def test_lengths_that_do_not_add_up_drop_the_partial() -> None:
    reassembler = Reassembler()
    too_much = [Frame(1, 5, 0, 2, 10, b"x" * 8), Frame(1, 5, 1, 2, 10, b"y" * 8)]
    too_little = [Frame(1, 6, 0, 2, 10, b"x" * 3), Frame(1, 6, 1, 2, 10, b"y" * 3)]
    assert [reassembler.add(PEER, f, 0.0) for f in too_much + too_little] == [None] * 4
    assert drops(reassembler) == {"bad_length": 2}
    assert reassembler.statistics()["buffered_bytes"] == 0


def test_frames_out_of_range_are_dropped() -> None:
    reassembler = Reassembler(max_message_bytes=100)
    assert reassembler.add(PEER, Frame(1, 1, 0, 2, 101, b"x"), 0.0) is None
    assert reassembler.add(PEER, Frame(1, 1, 3, 2, 10, b"x"), 0.0) is None
    assert reassembler.add(PEER, Frame(1, 1, 0, 1, 10, b"x"), 0.0) is None
    assert drops(reassembler) == {"too_large": 1, "bad_fragment": 2}


def test_old_partials_expire() -> None:
    frames = frames_of(1, 5, b"e" * 300, 127)
    reassembler = Reassembler(max_age_s=2.0)
    assert reassembler.add(PEER, frames[0], 10.0) is None
    assert reassembler.add(PEER, frames[1], 11.9) is None
    # the partial started at 10.0 is dropped at 12.0; the last fragment starts a new one
    assert reassembler.add(PEER, frames[2], 12.0) is None
    assert drops(reassembler) == {"expired": 1}
    assert reassembler.expire(14.0) == 1
    assert reassembler.statistics()["partials"] == 0
    assert reassembler.statistics()["buffered_bytes"] == 0


def test_partials_per_peer_are_bounded_oldest_evicted() -> None:
    reassembler = Reassembler(max_partial_per_peer=2)
    messages = {mid: frames_of(1, mid, bytes([mid]) * 200, 127) for mid in (1, 2, 3)}
    for mid in (1, 2, 3):
        assert reassembler.add(PEER, messages[mid][0], 0.0) is None
    assert drops(reassembler) == {"evicted_partial_limit": 1}
    assert reassembler.statistics()["partials"] == 2
    # message 1 was evicted: its remaining fragment starts over; 2 and 3 still complete
    assert reassembler.add(PEER, messages[2][1], 0.0) == bytes([2]) * 200
    assert reassembler.add(PEER, messages[3][1], 0.0) == bytes([3]) * 200
    assert reassembler.add(PEER, messages[1][1], 0.0) is None


def test_bytes_per_peer_and_overall_are_bounded() -> None:
    one = 1000 + FRAGMENT_OVERHEAD_BYTES * 2  # one message of 1000 bytes in 500-byte fragments
    reassembler = Reassembler(
        max_message_bytes=1000,
        max_partial_per_peer=10,
        max_bytes_per_peer=one + 200,
        max_total_bytes=2 * one + 300,
    )
    first = [Frame(1, mid, 0, 2, 1000, b"a" * 500) for mid in range(3)]
    assert reassembler.add(PEER, first[0], 0.0) is None
    assert reassembler.add(PEER, first[1], 0.0) is None
    # a third half-message would pass the peer's bound: the peer's oldest partial goes
    assert reassembler.add(PEER, first[2], 0.0) is None
    assert drops(reassembler) == {"evicted_peer_bytes": 1}
    assert reassembler.peer_buffered_bytes(PEER) <= one + 200
    others = [((f"10.0.0.{i}", 1), 1) for i in range(3)]
    for key in others:
        assert reassembler.add(key, Frame(1, 9, 0, 2, 1000, b"b" * 500), 1.0) is None
    assert reassembler.statistics()["buffered_bytes"] <= 2 * one + 300
    assert drops(reassembler)["evicted_total_bytes"] >= 1


def test_peers_are_bounded_least_recently_active_forgotten() -> None:
    reassembler = Reassembler(max_peers=2)
    frame = Frame(1, 1, 0, 2, 4, b"ab")
    for port in (1, 2, 3):
        assert reassembler.add((("h", port), 1), frame, 0.0) is None
    stats = reassembler.statistics()
    assert stats["peers"] == 2 and stats["partials"] == 2
    assert drops(reassembler) == {"evicted_peer": 1}


def test_constructor_rejects_bounds_that_cannot_hold_one_message() -> None:
    with pytest.raises(ValueError):
        Reassembler(max_message_bytes=10_000, max_bytes_per_peer=5_000)
    with pytest.raises(ValueError):
        Reassembler(max_message_bytes=1000, max_bytes_per_peer=10_000, max_total_bytes=5_000)
    with pytest.raises(ValueError):
        Reassembler(max_age_s=0)


def test_statistics_list_every_drop_reason() -> None:
    assert set(Reassembler().statistics()["drops"]) == set(REASSEMBLY_DROP_REASONS)


# ----------------------------------------------------------- properties


@st.composite
def lossy_deliveries(draw: st.DrawFn) -> tuple[dict, list]:
    """Several messages from two peers, fragmented; each fragment delivered 0..3 times
    (0 = lost), all in a random order."""
    messages = {}
    deliveries = []
    for peer_port in (1, 2):
        for message_id in range(draw(st.integers(1, 4))):
            payload = draw(st.binary(min_size=0, max_size=200))
            key = (("127.0.0.1", peer_port), 5)
            messages[(key, message_id)] = payload
            for frame in frames_of(5, message_id, payload, OVERHEAD_BYTES + 5):
                copies = draw(st.integers(0, 3))
                deliveries += [(key, frame)] * copies
    order = draw(st.permutations(range(len(deliveries))))
    return messages, [deliveries[i] for i in order]


@given(lossy_deliveries())
def test_loss_duplication_reordering_deliver_intact_messages_at_most_once(case) -> None:
    messages, deliveries = case
    # bounds wide enough for everything to fit: this test is about loss, not limits
    reassembler = Reassembler(max_message_bytes=200, max_bytes_per_peer=100_000)
    delivered: list[tuple] = []
    for key, frame in deliveries:
        result = reassembler.add(key, frame, 0.0)
        if result is not None:
            delivered.append((key, frame.message_id, result))
    ids = [(key, mid) for key, mid, _ in delivered]
    assert len(ids) == len(set(ids)), "a message was delivered twice"
    for key, mid, payload in delivered:
        assert payload == messages[(key, mid)]
    # every message all of whose fragments arrived at least once was delivered
    arrived: dict[tuple, set] = {}
    counts: dict[tuple, int] = {}
    for key, frame in deliveries:
        arrived.setdefault((key, frame.message_id), set()).add(frame.fragment_index)
        counts[(key, frame.message_id)] = frame.fragment_count
    complete = {k for k, got in arrived.items() if len(got) == counts[k]}
    assert complete == set(ids)


@st.composite
def adversarial_frames(draw: st.DrawFn) -> Frame:
    """Frames an attacker may send: mostly consistent fragments of a few message
    shapes (so that partials grow and the byte bounds bite), some arbitrary ones."""
    message_id = draw(st.integers(0, 5))
    if draw(st.integers(0, 4)):
        count = 2 + message_id % 2
        total = 1800 + message_id * 37  # fragments of 600..990 bytes: the byte bounds bite
        size = draw(st.sampled_from([total // count, total // count, total // count + 1, 1]))
        index = draw(st.integers(0, count - 1))
    else:
        count = draw(st.integers(0, 6))
        total = draw(st.integers(0, 2500))
        size = draw(st.integers(0, 900))
        index = draw(st.integers(0, 6))
    return Frame(
        sender_id=draw(st.integers(0, 1)),
        message_id=message_id,
        fragment_index=index,
        fragment_count=count,
        total_length=total,
        payload=b"\x00" * size,
    )


@settings(max_examples=200)
@given(
    st.lists(
        st.tuples(
            st.sampled_from([0, 0, 0, 1, 1, 2]),
            adversarial_frames(),
            st.sampled_from([0.0] * 6 + [0.01, 0.6]),
        ),
        max_size=150,
    )
)
def test_held_bytes_never_exceed_bounds_under_adversarial_frames(steps) -> None:
    bounds = {"max_bytes_per_peer": 3000, "max_total_bytes": 7000}
    reassembler = Reassembler(
        max_message_bytes=2000,
        max_partial_per_peer=3,
        max_age_s=1.0,
        max_peers=4,
        recent_ids_per_peer=8,
        **bounds,
    )
    now = 0.0
    for port, frame, advance_s in steps:
        now += advance_s
        reassembler.add((("10.1.1.1", port), frame.sender_id), frame, now)
        held = reassembler._audit()
        stats = reassembler.statistics()
        assert held["total"] == stats["buffered_bytes"] <= bounds["max_total_bytes"]
        assert all(cost <= bounds["max_bytes_per_peer"] for cost in held["per_peer"].values())
        assert held["payload_bytes"] <= held["total"]
        assert stats["peers"] <= 4 and stats["partials"] <= 4 * 3
        assert all(n <= 3 for n in held["partials"].values())
        assert all(n <= 8 for n in held["recent_ids"].values())
