"""Datagram transport: framing with a CRC32C checksum, bounded reassembly of
fragments, and a Trio UDP endpoint. Payloads are opaque bytes: nothing here
knows the protocol above it."""

from transport.frame import (
    DEFAULT_MAX_MESSAGE_BYTES,
    FRAME_DROP_REASONS,
    OVERHEAD_BYTES,
    Frame,
    FrameError,
    decode_frame_untrusted,
    encode_frames,
)
from transport.reassembly import REASSEMBLY_DROP_REASONS, Reassembler
from transport.udp import (
    DEFAULT_MAX_DATAGRAM_BYTES,
    RECEIVE_DROP_REASONS,
    Received,
    TransportError,
    UdpEndpoint,
)

__all__ = [
    "DEFAULT_MAX_DATAGRAM_BYTES",
    "DEFAULT_MAX_MESSAGE_BYTES",
    "FRAME_DROP_REASONS",
    "OVERHEAD_BYTES",
    "REASSEMBLY_DROP_REASONS",
    "RECEIVE_DROP_REASONS",
    "Frame",
    "FrameError",
    "Reassembler",
    "Received",
    "TransportError",
    "UdpEndpoint",
    "decode_frame_untrusted",
    "encode_frames",
]
