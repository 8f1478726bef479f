"""The dashboard's network side (asyncio): receive telemetry, send control commands.

Telemetry reaches the monitor address as transport frames (`transport.frame`,
as the node's UDP endpoint sends every payload) carrying a signed telemetry
payload (`bft.telemetry`). A bare telemetry payload (a datagram that starts
with `TELEMETRY_MAGIC`, no frame around it) is accepted too. `TelemetryReceiver`
does the checking without any I/O: frame, reassembly (bounded), magic, strict
decoding, signature against the config's public keys. Anything that fails is
dropped and counted by reason in `statistics()`; nothing a sender does makes
it raise.

`TelemetryProtocol` is the asyncio `DatagramProtocol` around it: every
verified message goes to a `sink` callback, called in the event loop's thread
(the dashboard's model is updated there and redrawn on a timer, never per
datagram).

`ControlSender` numbers, signs and frames control commands; `send_control_now`
sends one from a plain blocking socket (for `bft ctl`).
"""

from __future__ import annotations

import asyncio
import collections
import secrets
import socket
import time
from collections.abc import Callable
from typing import Any

from bft.errors import MalformedMessage
from bft.telemetry import (
    MAX_PAYLOAD_BYTES,
    TELEMETRY_MAGIC,
    Action,
    BadSignature,
    ControlCommand,
    TelemetryMessage,
    decode_signed_untrusted,
    encode_signed,
    is_telemetry,
)
from transport.frame import (
    MAGIC as FRAME_MAGIC,
)
from transport.frame import (
    MAX_MESSAGE_ID,
    FrameError,
    decode_frame_untrusted,
    encode_frames,
)
from transport.reassembly import Reassembler

#: The frame sender id the dashboard uses (frames' sender ids are not authenticated;
#: replicas use 0..n-1 and clients bft.config.CLIENT_SENDER_BASE + c).
ADMIN_FRAME_SENDER_ID = 2**32 - 1

DEFAULT_MAX_DATAGRAM_BYTES = 1400

Address = tuple[Any, ...]


class TelemetryReceiver:
    """Checks datagrams from the network and returns the verified telemetry in them.

    Drop reasons (`statistics()["drops"]`): frame errors (truncated, bad_magic,
    bad_checksum, ...), not_telemetry (a protocol or control payload, or
    neither frame nor telemetry), malformed, bad_signature; the reassembler
    counts its own. Multi-fragment messages are reassembled within small
    bounds (`MAX_PAYLOAD_BYTES` per message, 64 senders).
    """

    def __init__(self, verifier: Any) -> None:
        self.verifier = verifier
        self.received = 0
        self.accepted: collections.Counter[str] = collections.Counter()
        self.drops: collections.Counter[str] = collections.Counter()
        self._reassembler = Reassembler(
            max_message_bytes=MAX_PAYLOAD_BYTES,
            max_partial_per_peer=4,
            max_bytes_per_peer=4 * MAX_PAYLOAD_BYTES,
            max_total_bytes=64 * MAX_PAYLOAD_BYTES,
            max_peers=64,
            max_age_s=2.0,
        )

    def receive_datagram_untrusted(
        self, datagram: bytes, addr: Address, now: float
    ) -> TelemetryMessage | None:
        """The verified telemetry message of one datagram, or None (counted)."""
        self.received += 1
        if datagram[:4] == TELEMETRY_MAGIC:
            payload: bytes | None = bytes(datagram)
        elif datagram[:2] == FRAME_MAGIC:
            try:
                frame = decode_frame_untrusted(datagram, max_message_bytes=MAX_PAYLOAD_BYTES)
            except FrameError as exc:
                self.drops[exc.reason] += 1
                return None
            if frame.fragment_count == 1:
                payload = frame.payload
            else:
                payload = self._reassembler.add((addr, frame.sender_id), frame, now)
                if payload is None:
                    return None
        else:
            self.drops["not_telemetry"] += 1
            return None
        if not is_telemetry(payload):
            self.drops["not_telemetry"] += 1
            return None
        try:
            msg, _identity = decode_signed_untrusted(payload, self.verifier)
        except BadSignature:
            self.drops["bad_signature"] += 1
            return None
        except MalformedMessage:
            self.drops["malformed"] += 1
            return None
        self.accepted[type(msg).__name__] += 1
        return msg  # type: ignore[return-value]

    def statistics(self) -> dict[str, Any]:
        """received, accepted by type, drops by reason (the reassembler's included)."""
        drops = dict(self.drops)
        for reason, count in self._reassembler.statistics()["drops"].items():
            if count:
                drops[reason] = drops.get(reason, 0) + count
        return {
            "received": self.received,
            "accepted": dict(self.accepted),
            "drops": drops,
            "dropped": sum(drops.values()),
        }


class TelemetryProtocol(asyncio.DatagramProtocol):
    """asyncio UDP protocol: verified telemetry goes to `sink(message)`, the rest is counted."""

    def __init__(
        self, receiver: TelemetryReceiver, sink: Callable[[TelemetryMessage], None]
    ) -> None:
        self.receiver = receiver
        self.sink = sink
        self.transport: asyncio.DatagramTransport | None = None
        self.socket_errors = 0

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]

    def datagram_received(self, data: bytes, addr: Address) -> None:
        msg = self.receiver.receive_datagram_untrusted(data, addr, time.monotonic())
        if msg is not None:
            self.sink(msg)

    def error_received(self, exc: Exception) -> None:
        self.socket_errors += 1  # ICMP errors of earlier sends: nothing to do

    def connection_lost(self, exc: Exception | None) -> None:
        self.transport = None


def address_family(host: str) -> int:
    """AF_INET6 for an IPv6 literal, else AF_INET."""
    return socket.AF_INET6 if ":" in host else socket.AF_INET


async def open_endpoint(
    receiver: TelemetryReceiver,
    sink: Callable[[TelemetryMessage], None],
    listen: tuple[str, int] | None,
    *,
    family: int = socket.AF_INET,
) -> tuple[asyncio.DatagramTransport, TelemetryProtocol]:
    """A UDP endpoint bound to `listen` (or unbound, only for sending, if None)."""
    loop = asyncio.get_running_loop()
    if listen is not None:
        transport, protocol = await loop.create_datagram_endpoint(
            lambda: TelemetryProtocol(receiver, sink),
            local_addr=listen,
            family=address_family(listen[0]),
        )
    else:
        transport, protocol = await loop.create_datagram_endpoint(
            lambda: TelemetryProtocol(receiver, sink), family=family
        )
    return transport, protocol  # type: ignore[return-value]


class ControlSender:
    """Builds signed, framed control datagrams for the cluster `cluster`.

    `cluster` is `bft.telemetry.control_cluster_id(config, verifier)` of the
    cluster the commands are for. Sequence numbers are the wall clock in
    microseconds (the time the command is issued), made strictly increasing: a
    node accepts a command only if its seq_no is above the last one it
    accepted and not older than `CONTROL_MAX_AGE_S` by its own clock, and
    numbering by the clock keeps that true across runs of the dashboard and
    `bft ctl`.
    """

    def __init__(
        self,
        signer: Any,
        cluster: bytes,
        *,
        max_datagram_bytes: int = DEFAULT_MAX_DATAGRAM_BYTES,
        wall_clock_us: Callable[[], int] | None = None,
    ) -> None:
        self.signer = signer
        self.cluster = cluster
        self.max_datagram_bytes = max_datagram_bytes
        self._wall_clock_us = wall_clock_us or (lambda: time.time_ns() // 1000)
        self._last_seq_no = 0
        self._message_id = secrets.randbelow(MAX_MESSAGE_ID)
        self.sent = 0

    def next_seq_no(self) -> int:
        self._last_seq_no = max(self._last_seq_no + 1, self._wall_clock_us())
        return self._last_seq_no

    def build(self, target: int, action: Action) -> tuple[ControlCommand, list[bytes]]:
        """The command for `target` and the datagrams that carry it."""
        cmd = ControlCommand(self.cluster, target, self.next_seq_no(), action)
        payload = encode_signed(cmd, self.signer)
        self._message_id = (self._message_id + 1) & MAX_MESSAGE_ID
        self.sent += 1
        return cmd, encode_frames(
            ADMIN_FRAME_SENDER_ID, self._message_id, payload, self.max_datagram_bytes
        )


def send_control_now(
    sender: ControlSender,
    target: int,
    action: Action,
    address: tuple[str, int],
    source: tuple[str, int] | None = None,
) -> ControlCommand:
    """Send one control command from a fresh blocking UDP socket (no reply is expected).

    With `source` (`bft ctl` gives the config's monitor address), the socket is bound
    there if it is free (no dashboard listens): a node checks commands from the
    monitor address within a budget of their own, which forged commands from other
    sources cannot spend (`bft.telemetry.ControlGate`). Otherwise it sends from any
    free port."""
    cmd, datagrams = sender.build(target, action)
    with socket.socket(address_family(address[0]), socket.SOCK_DGRAM) as sock:
        if source is not None and address_family(source[0]) == address_family(address[0]):
            try:
                sock.bind(source)
            except OSError:
                pass  # taken (the dashboard's) or not local: any port will do
        for datagram in datagrams:
            sock.sendto(datagram, address)
    return cmd
