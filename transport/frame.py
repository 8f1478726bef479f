"""Datagram frames: header, fragmentation and a CRC32C checksum.

One datagram carries one frame, laid out in network byte order:

    offset size  field
    0      2     magic           b"\\xbf\\x75"
    2      1     version         1
    3      4     sender id       u32, as the sender claims it (not authenticated)
    7      8     message id      u64, the sender's per-message counter
    15     2     fragment index  u16, 0 <= index < count
    17     2     fragment count  u16, >= 1
    19     4     total length    u32, bytes of the whole message
    23     n     payload         this fragment's slice of the message
    23+n   4     CRC32C          over every byte before it

A message longer than one datagram is cut into `fragment count` consecutive
slices; every fragment of a message repeats the message id, the count and the
total length so the receiver can check they agree (see `transport.reassembly`).

The checksum catches corruption, not forgery: anyone can compute a CRC.
Authenticity is the business of the layer above (signed messages).
"""

from __future__ import annotations

import struct
from typing import NamedTuple

from crc32c import crc32c

MAGIC = b"\xbf\x75"
VERSION = 1

_HEADER = struct.Struct("!2sBIQHHI")
_CRC = struct.Struct("!I")

HEADER_BYTES = _HEADER.size  # 23
CHECKSUM_BYTES = _CRC.size  # 4
OVERHEAD_BYTES = HEADER_BYTES + CHECKSUM_BYTES  # 27

MAX_SENDER_ID = 2**32 - 1
MAX_MESSAGE_ID = 2**64 - 1
MAX_FRAGMENTS = 2**16 - 1
MAX_TOTAL_LENGTH = 2**32 - 1

#: Default bound on one reassembled message (matches bft.codec's default limit).
DEFAULT_MAX_MESSAGE_BYTES = 4 * 1024 * 1024

#: Every reason `decode_frame_untrusted` may give, each a stable counter key.
FRAME_DROP_REASONS = (
    "truncated",  # shorter than header + checksum
    "bad_magic",  # not one of our frames
    "bad_version",  # our magic, another version of the format
    "bad_checksum",  # corrupted in flight (or garbage that kept our magic)
    "bad_fragment",  # index/count/length fields that cannot describe a fragment
    "too_large",  # total length above the receiver's message limit
)


_new_tuple = tuple.__new__


class FrameError(Exception):
    """A datagram that is not a valid frame. `reason` is one of FRAME_DROP_REASONS."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


class Frame(NamedTuple):
    """One decoded frame. A NamedTuple (not a dataclass) because it is built once per
    datagram on the hot receive path and tuple construction is the cheapest."""

    sender_id: int
    message_id: int
    fragment_index: int
    fragment_count: int
    total_length: int
    payload: bytes


def encode_frames(
    sender_id: int, message_id: int, payload: bytes, max_datagram_bytes: int
) -> list[bytes]:
    """Frame `payload` into datagrams of at most `max_datagram_bytes` bytes each.

    Returns one datagram for a payload that fits (the empty payload included),
    otherwise `ceil(len(payload) / (max_datagram_bytes - OVERHEAD_BYTES))`
    fragments in index order, every one but the last full. Raises ValueError for
    arguments the format cannot carry (ids out of range, a datagram size that
    leaves no room for payload, more than MAX_FRAGMENTS fragments): those are
    bugs of the caller, not network conditions.
    """
    if not 0 <= sender_id <= MAX_SENDER_ID:
        raise ValueError(f"sender_id {sender_id} is not a u32")
    if not 0 <= message_id <= MAX_MESSAGE_ID:
        raise ValueError(f"message_id {message_id} is not a u64")
    chunk_bytes = max_datagram_bytes - OVERHEAD_BYTES
    if chunk_bytes < 1:
        raise ValueError(
            f"max_datagram_bytes {max_datagram_bytes} leaves no room for payload "
            f"(frame overhead is {OVERHEAD_BYTES} bytes)"
        )
    total = len(payload)
    if total > MAX_TOTAL_LENGTH:
        raise ValueError(f"payload of {total} bytes exceeds the u32 length field")
    count = max(1, -(-total // chunk_bytes))
    if count > MAX_FRAGMENTS:
        raise ValueError(
            f"payload of {total} bytes needs {count} fragments of {chunk_bytes} bytes; "
            f"at most {MAX_FRAGMENTS} fit the format"
        )
    pack = _HEADER.pack
    if count == 1:
        body = pack(MAGIC, VERSION, sender_id, message_id, 0, 1, total) + payload
        return [body + _CRC.pack(crc32c(body))]
    view = memoryview(payload)
    datagrams = []
    for index in range(count):
        start = index * chunk_bytes
        body = (
            pack(MAGIC, VERSION, sender_id, message_id, index, count, total)
            + view[start : start + chunk_bytes]
        )
        datagrams.append(body + _CRC.pack(crc32c(body)))
    return datagrams


def decode_frame_untrusted(
    datagram: bytes, *, max_message_bytes: int = DEFAULT_MAX_MESSAGE_BYTES
) -> Frame:
    """Decode one datagram from the network into a Frame.

    Raises only FrameError, whose `reason` says why. The cheap tests come first
    (length, magic, version), then the checksum, then the header fields, so no
    field of a corrupted frame is ever trusted. A frame that passes satisfies:
    `0 <= fragment_index < fragment_count`, `len(payload) <= total_length <=
    max_message_bytes`; a single-fragment frame carries the whole message
    (`len(payload) == total_length`); a fragment of a multi-fragment message
    carries at least one byte and `fragment_count <= total_length`.
    """
    size = len(datagram)
    if size < OVERHEAD_BYTES:
        raise FrameError("truncated")
    magic, version, sender_id, message_id, index, count, total = _HEADER.unpack_from(datagram)
    if magic != MAGIC:
        raise FrameError("bad_magic")
    if version != VERSION:
        raise FrameError("bad_version")
    end = size - CHECKSUM_BYTES
    # A slice is cheaper than a memoryview for small datagrams; past a few KiB the
    # copy would cost more than the checksum itself.
    body = datagram[:end] if end <= 4096 else memoryview(datagram)[:end]
    if crc32c(body) != _CRC.unpack_from(datagram, end)[0]:
        raise FrameError("bad_checksum")
    payload_bytes = end - HEADER_BYTES
    if total > max_message_bytes:
        raise FrameError("too_large")
    if index >= count or payload_bytes > total:
        raise FrameError("bad_fragment")
    if count == 1:
        if payload_bytes != total:
            raise FrameError("bad_fragment")
    elif payload_bytes == 0 or count > total:
        raise FrameError("bad_fragment")
    # tuple.__new__ builds the same Frame as Frame(...) at a quarter of the cost (a
    # NamedTuple's own __new__ is Python code): this runs once per datagram received.
    payload = datagram[HEADER_BYTES:end]
    return _new_tuple(Frame, (sender_id, message_id, index, count, total, payload))
