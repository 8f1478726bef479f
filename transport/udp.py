"""A Trio UDP endpoint: framed, fragmented, checksummed messages of opaque bytes.

`UdpEndpoint` owns one non-blocking UDP socket (IPv4 or IPv6). Sending frames a
payload (`transport.frame`) with the endpoint's message-id counter and sends
each datagram; receiving drains datagrams, drops and counts anything unusable,
reassembles fragments (`transport.reassembly`) and hands out complete messages
as `Received(addr, sender_id, payload)`.

Receive path. Receiving is pull-based: the task that calls `receive_batch()`
(or `receive()`, or iterates) waits with `trio.lowlevel.wait_readable` and then
drains the socket with non-blocking `recvfrom` until it would block (or
`max_batch` datagrams were read). This was chosen over a background task
feeding a memory channel because it has less overhead per message: no second
task, no channel hand-off and no task switch per message, one scheduler pass per
batch (measured on a pre-filled socket with 64-byte messages: about 3.7 us per
message, 270k/s, against 8.4 us, 120k/s, through a channel). It also needs no
extra queue to bound: while nobody receives, datagrams wait in the kernel's
receive buffer (SO_RCVBUF, raised to `socket_buffer_bytes`), and when that is
full the kernel drops them, which is UDP's own backpressure.
One task at a time may receive (Trio raises BusyResourceError otherwise).

Nothing a peer sends makes the endpoint raise: garbage, corrupt, oversize and
truncated datagrams, ICMP-caused errors and unreachable destinations are all
counted in `statistics()` and dropped. Local misuse raises: using a closed
endpoint (trio.ClosedResourceError), a payload over `max_message_bytes`, a
peer address that does not resolve to the endpoint's family (TransportError).

Addresses are `(host, port)`: `("127.0.0.1", 9000)`, `("::1", 9000)`. A host
name given to the constructor or to `set_peer` is resolved once, there (a
blocking lookup, meant for startup); `send_to` takes numeric addresses only,
such as those of received messages. Received IPv6
addresses are given as `(host, port)` unless they carry a scope id, in which case
the kernel's 4-tuple is kept so that the address can be replied to.

Send path. `send`/`send_to` are async: a cancellation point, then the
datagrams, then a scheduler pass. A task that sends many messages in a row (the
node sends every effect of a step) uses `send_nowait`/`send_to_nowait` instead:
they frame and call `sendto` at once, without any checkpoint, and only if the
kernel's send buffer is full (`BlockingIOError`) keep the datagrams in a bounded
send queue (`max_send_queue_bytes`) for `flush()`, which waits for room. A
datagram that does not fit in the queue is dropped and counted in
`statistics()["send_errors"]["send_queue_full"]`. So a burst costs one scheduler
pass (or none) instead of one per message.

Trusted sources and strangers (issue 21). Given `trusted_sources` (Linux), the
endpoint binds two sockets to its one address as a reuseport group, and a classic BPF
program (transport/bpf.py) steers every datagram from a trusted `(host, port)` to the
first and everything else to the second, the strangers' socket, which may carry a
socket filter of the caller's (`stranger_filter`) that drops in the kernel what no
stranger may send. A drain reads the trusted socket as before (up to `max_batch`) and
then at most `stranger_budget` datagrams of the strangers' socket, whose buffer is small
(`stranger_buffer_bytes`), and no more than `stranger_rate` a second in the long run (a
token bucket of `stranger_budget` tokens: while it is empty a receiver waits on the
trusted socket alone, until a token is due). What strangers send beyond that is dropped
by the kernel without costing this process anything (counted as
`stranger_kernel_drop`). So a flood from strangers costs the receiver a bounded number of
reads a second, whatever each costs above, and cannot fill the buffer the trusted
sources' datagrams wait in. `set_trusted_sources` changes the
set (a client's new verified address). The trusted socket is bound first without
SO_REUSEPORT, so that the port it gets is one no other socket holds, and only then
opened to the second; a process of the same user that binds the port with SO_REUSEPORT
could still join the group (it could as well read the node's memory). Where the kernel
refuses any of this the endpoint keeps one socket, as without `trusted_sources`, and
says why in `statistics()["steering"]`.

Fault injection: `send_filter` and `recv_filter` see every datagram (after
framing on send, before decoding on receive) as `filter(datagram, addr)` and
return the datagrams to pass on now, as `(datagram, addr)` pairs: none to drop,
two to duplicate, altered bytes to corrupt. To delay, a send filter keeps the
datagram and sends it later with `send_datagram` (which bypasses the filter).
Both send paths apply `send_filter` (a datagram queued for `flush()` has been
through it already).
"""

from __future__ import annotations

import errno
import ipaddress
import re
import secrets
import select
import socket
from collections import Counter, deque
from collections.abc import Callable, Iterable, Mapping
from typing import Any, NamedTuple, Self

import trio

from transport import bpf
from transport.frame import (
    DEFAULT_MAX_MESSAGE_BYTES,
    FRAME_DROP_REASONS,
    MAX_MESSAGE_ID,
    MAX_SENDER_ID,
    OVERHEAD_BYTES,
    FrameError,
    decode_frame_untrusted,
    encode_frames,
)
from transport.reassembly import REASSEMBLY_DROP_REASONS, Reassembler

Address = tuple[Any, ...]
DatagramFilter = Callable[[bytes, Address], Iterable[tuple[bytes, Address]]]

#: Fits one Ethernet MTU with IPv6 and UDP headers (1500 - 40 - 8 = 1452).
DEFAULT_MAX_DATAGRAM_BYTES = 1400
#: The largest UDP payload over IPv4.
MAX_UDP_PAYLOAD_BYTES = 65507
DEFAULT_SOCKET_BUFFER_BYTES = 4 * 1024 * 1024
DEFAULT_MAX_BATCH = 1024
#: Datagrams from strangers (sources outside the trusted set) read per pass, and the
#: receive buffer they queue in: see "Trusted sources and strangers" above.
DEFAULT_STRANGER_BUDGET = 64
DEFAULT_STRANGER_BUFFER_BYTES = 256 * 1024
#: Datagrams a second from strangers, at most, in the long run (bursts of up to
#: `stranger_budget`).
DEFAULT_STRANGER_RATE = 500.0
#: Bytes of datagrams `send_nowait` may keep for `flush()` while the kernel's send
#: buffer is full (one largest message by default).
DEFAULT_MAX_SEND_QUEUE_BYTES = 4 * 1024 * 1024

_MSG_ERRQUEUE = getattr(socket, "MSG_ERRQUEUE", 0)

#: Every receive drop reason of the endpoint (frame, size and reassembly reasons, and
#: `stranger_kernel_drop`: strangers' datagrams the kernel dropped, by the admission
#: filter or because their socket's buffer was full).
RECEIVE_DROP_REASONS = tuple(
    dict.fromkeys(("oversize",) + FRAME_DROP_REASONS + REASSEMBLY_DROP_REASONS
                  + ("stranger_kernel_drop",))
)


class TransportError(Exception):
    """A local problem with the endpoint: cannot bind, bad peer address, misuse."""


class Received(NamedTuple):
    """One complete message: who sent it (source address and claimed sender id)."""

    addr: Address
    sender_id: int
    payload: bytes


_new_tuple = tuple.__new__

_HOST_LABEL = r"[A-Za-z0-9](?:[A-Za-z0-9-]{0,61}[A-Za-z0-9])?"
_HOST_NAME = re.compile(rf"{_HOST_LABEL}(?:\.{_HOST_LABEL})*\.?")


def _resolve(
    host: str, port: int, *, family: int = socket.AF_UNSPEC, passive: bool = False
) -> tuple[int, Address]:
    """(family, sockaddr) of `host` and `port`; TransportError if there is none.

    An IP literal is converted without any lookup. A host name is resolved once,
    here, with a blocking lookup (so: at startup, not on a hot path); a string that
    is neither is refused without a lookup.
    """
    if not isinstance(port, int) or not 0 <= port <= 65535:
        raise TransportError(f"port {port!r} of {host!r} is not in 0..65535")
    flags = socket.AI_NUMERICSERV | (socket.AI_PASSIVE if passive else 0)
    try:
        literal = ipaddress.ip_address(host.split("%", 1)[0])
    except (ValueError, AttributeError):
        literal = None
    if literal is not None:
        literal_family = socket.AF_INET6 if literal.version == 6 else socket.AF_INET
        if family not in (socket.AF_UNSPEC, literal_family):
            raise TransportError(f"address {host!r} is not of the address family {family!r}")
        flags |= socket.AI_NUMERICHOST
    elif (
        not isinstance(host, str)
        or not _HOST_NAME.fullmatch(host)
        or (host.rstrip(".").rsplit(".", 1)[-1].isdigit())
    ):
        raise TransportError(f"{host!r} is neither a numeric IP address nor a host name")
    try:
        infos = socket.getaddrinfo(host, port, family, socket.SOCK_DGRAM, 0, flags)
    except (socket.gaierror, UnicodeError) as exc:
        raise TransportError(f"cannot resolve {host!r} port {port}: {exc}") from None
    if not infos:
        raise TransportError(f"{host!r} has no address")
    found_family, _, _, _, sockaddr = infos[0]
    return found_family, sockaddr


def _normal_address(family: int, sockaddr: Address) -> Address:
    if family == socket.AF_INET6 and sockaddr[3] == 0:
        return (sockaddr[0], sockaddr[1])
    return tuple(sockaddr)


class UdpEndpoint:
    """A bound UDP socket that sends and receives whole messages of opaque bytes.

    Guarantees: a received message is byte-identical to what some sender passed
    to `send`/`send_to` (up to a CRC32C collision or a forger: frames are not
    authenticated); a message is delivered at most once while its id is in the
    reassembler's recent window (see `transport.reassembly`); fragments of a
    message are reassembled per `(source address, sender id)`; nothing received
    raises; memory held for partial messages is bounded by the reassembler, and
    the peers of the peer table have reassembly budgets of their own that no
    other source can evict (`set_peer`).
    Delivery itself is not guaranteed (UDP).
    """

    def __init__(
        self,
        sender_id: int,
        host: str,
        port: int,
        *,
        peers: Mapping[int, tuple[str, int]] | None = None,
        max_datagram_bytes: int = DEFAULT_MAX_DATAGRAM_BYTES,
        max_message_bytes: int = DEFAULT_MAX_MESSAGE_BYTES,
        reassembler: Reassembler | None = None,
        socket_buffer_bytes: int = DEFAULT_SOCKET_BUFFER_BYTES,
        max_batch: int = DEFAULT_MAX_BATCH,
        max_send_queue_bytes: int = DEFAULT_MAX_SEND_QUEUE_BYTES,
        first_message_id: int | None = None,
        send_filter: DatagramFilter | None = None,
        recv_filter: DatagramFilter | None = None,
        trusted_sources: Iterable[tuple[str, int]] | None = None,
        stranger_filter: Iterable[bpf.Insn] | None = None,
        stranger_budget: int = DEFAULT_STRANGER_BUDGET,
        stranger_rate: float = DEFAULT_STRANGER_RATE,
        stranger_buffer_bytes: int = DEFAULT_STRANGER_BUFFER_BYTES,
    ) -> None:
        """Bind a UDP socket to `host` (an IP address, or a host name resolved now)
        and `port` (0 picks a free port).

        Raises TransportError, naming the address, if it cannot bind (port in use,
        address not local, no such host) or a peer address is unusable.
        `reassembler` defaults to `Reassembler(max_message_bytes)` with its default
        bounds. `max_send_queue_bytes` bounds the datagrams `send_nowait` keeps
        for `flush()` while the kernel's send buffer is full (0: keep none, drop
        and count them). The message-id counter starts at
        `first_message_id`, by default a random 48-bit number, so that a restarted
        sender's ids are not taken for recent duplicates. `trusted_sources`,
        `stranger_filter`, `stranger_budget`, `stranger_rate` and
        `stranger_buffer_bytes`: see "Trusted
        sources and strangers" in the module's text (None: one socket for everyone).
        """
        if not 0 <= sender_id <= MAX_SENDER_ID:
            raise TransportError(f"sender_id {sender_id} is not a u32")
        if not OVERHEAD_BYTES < max_datagram_bytes <= MAX_UDP_PAYLOAD_BYTES:
            raise TransportError(
                f"max_datagram_bytes must be in ({OVERHEAD_BYTES}, {MAX_UDP_PAYLOAD_BYTES}], "
                f"not {max_datagram_bytes}"
            )
        if max_batch < 1:
            raise TransportError("max_batch must be >= 1")
        if max_send_queue_bytes < 0:
            raise TransportError("max_send_queue_bytes must be >= 0")
        if stranger_budget < 1:
            raise TransportError("stranger_budget must be >= 1")
        if not stranger_rate > 0:
            raise TransportError("stranger_rate must be > 0")
        self.sender_id = sender_id
        self.max_datagram_bytes = max_datagram_bytes
        self.max_message_bytes = max_message_bytes
        self.max_batch = max_batch
        self.max_send_queue_bytes = max_send_queue_bytes
        self.send_filter = send_filter
        self.recv_filter = recv_filter
        self._reassembler = (
            reassembler if reassembler is not None else Reassembler(max_message_bytes)
        )
        if first_message_id is None:
            first_message_id = secrets.randbits(48)
        self._next_message_id = first_message_id & MAX_MESSAGE_ID

        family, sockaddr = _resolve(host, port, passive=True)
        self.family = family
        self._peers: dict[int, Address] = {}
        for peer_id, addr in (peers or {}).items():  # before binding: nothing to undo
            self.set_peer(peer_id, addr)
        sock = socket.socket(family, socket.SOCK_DGRAM)
        try:
            sock.setblocking(False)
            sock.bind(sockaddr)
        except OSError as exc:
            sock.close()
            where = f"[{host}]:{port}" if family == socket.AF_INET6 else f"{host}:{port}"
            if exc.errno == errno.EACCES:
                raise TransportError(f"cannot bind UDP {where}: permission denied") from exc
            if exc.errno == errno.EADDRINUSE:
                raise TransportError(f"cannot bind UDP {where}: address already in use") from exc
            raise TransportError(f"cannot bind UDP {where}: {exc.strerror or exc}") from exc
        self._sock = sock
        self.rcvbuf_bytes = self._set_buffer(socket.SO_RCVBUF, socket_buffer_bytes)
        self.sndbuf_bytes = self._set_buffer(socket.SO_SNDBUF, socket_buffer_bytes)
        self.address: Address = _normal_address(family, sock.getsockname())
        self._closed = False
        self.stranger_budget = stranger_budget
        self.stranger_rate = float(stranger_rate)
        self._tokens = float(stranger_budget)  # the strangers' token bucket
        self._tokens_at: float | None = None  # (trio time of the last refill)
        self._strangers: socket.socket | None = None
        self._epoll: Any = None
        self._wait_on: Any = sock  # what a receiver waits on: the socket, or an epoll of both
        self._trusted: frozenset[Address] = frozenset()
        self._steered = False  # a steering program is attached (until then: by hash)
        self._stranger_datagrams = 0
        self._stranger_kernel_drops = 0  # (as last read: kept after close)
        self.steering = "off"  # "on", "off" (not asked for) or why the kernel refused
        if trusted_sources is not None:
            self._split(trusted_sources, stranger_filter, stranger_buffer_bytes)

        self._pending: deque[Received] = deque()
        self._send_queue: deque[tuple[bytes, Address]] = deque()
        self._send_queue_bytes = 0
        self._send_queued = 0
        self._drops: Counter[str] = Counter()
        self._send_errors: Counter[str] = Counter()
        self._recv_errors: Counter[str] = Counter()
        self._sent_messages = 0
        self._sent_datagrams = 0
        self._sent_bytes = 0
        self._received_datagrams = 0
        self._received_bytes = 0
        self._received_messages = 0

    def _split(self, trusted: Iterable[tuple[str, int]], admit: Iterable[bpf.Insn] | None,
               buffer_bytes: int) -> None:
        """Open the strangers' socket beside the trusted one (see the module's text)."""
        sock = self._sock
        strangers = socket.socket(self.family, socket.SOCK_DGRAM)
        try:
            strangers.setblocking(False)
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
            strangers.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
            if admit is not None:  # before it can receive anything
                bpf.attach(strangers, bpf.SO_ATTACH_FILTER, list(admit))
            strangers.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, buffer_bytes)
            strangers.bind(sock.getsockname())
            self._strangers = strangers
            self.set_trusted_sources(trusted)
            epoll = select.epoll()
            epoll.register(sock.fileno(), select.EPOLLIN)
            epoll.register(strangers.fileno(), select.EPOLLIN)
        except (OSError, ValueError, AttributeError) as exc:
            self._strangers = None
            strangers.close()
            try:
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 0)
            except OSError:
                pass
            self.steering = f"refused by the kernel: {exc}"
            return
        self._epoll = epoll
        self._wait_on = epoll.fileno()
        self.steering = "on"

    def set_trusted_sources(self, sources: Iterable[tuple[str, int]]) -> int:
        """Steer datagrams from `sources` (numeric `(host, port)` of the endpoint's family;
        others are ignored) to the trusted socket from now on, everything else to the
        strangers'. At most `bpf.max_trusted_sources(family)` are kept (the first ones
        given). Returns how many are trusted; 0 (and no change) without a strangers'
        socket. OSError if the kernel refuses the program (the old one stays)."""
        strangers = self._strangers
        if strangers is None:
            return 0
        keep: dict[Address, None] = {}
        limit = bpf.max_trusted_sources(self.family)
        for addr in sources:
            try:
                ip = ipaddress.ip_address(str(addr[0]).split("%", 1)[0])
            except ValueError:
                continue
            if (ip.version == 6) != (self.family == socket.AF_INET6):
                continue
            keep[(addr[0], int(addr[1]))] = None
            if len(keep) >= limit:
                break
        trusted = frozenset(keep)
        if trusted != self._trusted or not self._steered:
            bpf.attach(self._sock, bpf.SO_ATTACH_REUSEPORT_CBPF,
                       bpf.steering_program(trusted, self.family))
            self._trusted = trusted
            self._steered = True
        return len(trusted)

    @property
    def trusted_sources(self) -> frozenset[Address]:
        """The sources steered to the trusted socket (empty without a strangers' socket)."""
        return self._trusted

    def _set_buffer(self, option: int, size: int) -> int:
        """Ask for `size` bytes; return what the kernel reports it granted (Linux caps
        the request at net.core.[rw]mem_max and reports twice what it allows for
        payload, to cover its bookkeeping)."""
        try:
            self._sock.setsockopt(socket.SOL_SOCKET, option, size)
        except OSError:
            pass  # keep the default; the granted size below tells
        return self._sock.getsockopt(socket.SOL_SOCKET, option)

    # ------------------------------------------------------------------ peers

    def set_peer(self, peer_id: int, addr: tuple[str, int]) -> None:
        """Add or change the address of `peer_id`: an IP address of this endpoint's
        family, or a host name resolved now (blocking) to one. TransportError if
        there is none.

        The peer's frames (from that address, with sender id `peer_id`) get a
        reserved reassembly budget: see `transport.reassembly`."""
        family, sockaddr = _resolve(addr[0], addr[1], family=self.family)
        self._peers[peer_id] = _normal_address(family, sockaddr)
        # Fragments from a peer of the table (its address and its own sender id) have a
        # reassembly budget of their own, which strangers' fragments cannot evict.
        self._reassembler.set_reserved(
            (peer_addr, pid) for pid, peer_addr in self._peers.items()
        )

    @property
    def peers(self) -> Mapping[int, Address]:
        """The peer table (a copy)."""
        return dict(self._peers)

    # ------------------------------------------------------------------ life

    @property
    def closed(self) -> bool:
        return self._closed

    def close(self) -> None:
        """Close the socket; a task waiting to receive gets trio.ClosedResourceError.
        Idempotent."""
        if self._closed:
            return
        self._closed = True
        self._send_queue.clear()
        self._send_queue_bytes = 0
        try:
            trio.lowlevel.notify_closing(self._wait_on)
        except RuntimeError:
            pass  # closed outside a Trio run: nobody can be waiting on it
        if self._epoll is not None:
            self._epoll.close()
        if self._strangers is not None:
            self._stranger_kernel_drops = bpf.kernel_drops(self._strangers)
            self._strangers.close()
        self._sock.close()

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def fileno(self) -> int:
        return self._sock.fileno()

    # ------------------------------------------------------------------ send

    async def send(self, peer_id: int, payload: bytes) -> bool:
        """Send `payload` to the peer `peer_id` of the peer table.

        Returns True if every datagram was handed to the kernel; False (counted)
        for an unknown peer or a send error. Never raises for network conditions.
        """
        addr = self._peers.get(peer_id)
        if addr is None:
            self._send_errors["unknown_peer"] += 1
            await trio.lowlevel.checkpoint()
            return False
        return await self.send_to(addr, payload)

    async def send_to(self, addr: Address, payload: bytes) -> bool:
        """Send `payload` to the numeric address `addr` as one message (one or more
        datagrams under a fresh message id).

        Cancellation: a send cancelled before it starts sends nothing; once started
        it runs to the end unless the kernel's send buffer is full, in which case a
        cancel while waiting for room leaves the message partly sent (the receiver
        drops the incomplete partial when it expires).

        Returns True if every datagram was handed to the kernel. An unreachable
        destination or an ICMP-caused error is counted in
        `statistics()["send_errors"]` and returns False; it never raises. Raises
        trio.ClosedResourceError if the endpoint is closed and TransportError for a
        payload over `max_message_bytes` (a bug of the caller: the receiver would
        drop it).
        """
        await trio.lowlevel.checkpoint_if_cancelled()
        datagrams = self._frame(payload)
        ok = True
        send_filter = self.send_filter
        for datagram in datagrams:
            if send_filter is None:
                sent = await self._send_one(datagram, addr)
            else:
                sent = True
                for out, out_addr in send_filter(datagram, addr):
                    sent = await self._send_one(out, out_addr) and sent
            if not sent:
                ok = False
                break  # the message cannot complete without this fragment
        await trio.lowlevel.cancel_shielded_checkpoint()
        return ok

    def send_nowait(self, peer_id: int, payload: bytes, *, sender_id: int | None = None) -> bool:
        """`send` without waiting and without a checkpoint (see `send_to_nowait`).

        False (counted as `unknown_peer`) for a peer not in the peer table."""
        addr = self._peers.get(peer_id)
        if addr is None:
            self._send_errors["unknown_peer"] += 1
            return False
        return self.send_to_nowait(addr, payload, sender_id=sender_id)

    def send_to_nowait(self, addr: Address, payload: bytes, *,
                       sender_id: int | None = None) -> bool:
        """`send_to` without waiting and without a checkpoint: for bursts.

        `sender_id` (default: the endpoint's own) is the sender id put in the frames
        of this message: one socket can send for several identities (a client
        process that multiplexes many clients over one socket). ValueError if it is
        not a u32.

        Every datagram (after `send_filter`) is handed to the kernel at once. If the
        kernel's send buffer is full, that datagram and every later one (of this
        message and of later messages, until `flush()` has sent them: order is
        kept) go to the send queue instead; the caller must then `await flush()`
        (`unsent_datagrams` tells whether there is anything to flush). The async
        `send`/`send_to` do not wait behind the queue: do not mix them in one burst
        if the order of datagrams matters.

        Returns True if every datagram was handed to the kernel or queued. False if
        one was dropped: a send error (counted as in `send_to`) or no room in the
        send queue (counted as `send_queue_full`); the rest of that message is then
        not sent. Raises like `send_to`: trio.ClosedResourceError if the endpoint is
        closed, TransportError for a payload over `max_message_bytes`.
        """
        datagrams = self._frame(payload, sender_id)
        send_filter = self.send_filter
        if send_filter is None and not self._send_queue and len(datagrams) == 1:
            sent = self._send_one_nowait(datagrams[0], addr)  # the common case: one datagram
            return self._enqueue(datagrams[0], addr) if sent is None else sent
        for datagram in datagrams:
            outs = ((datagram, addr),) if send_filter is None else send_filter(datagram, addr)
            sent = True
            for out, out_addr in outs:
                result = None if self._send_queue else self._send_one_nowait(out, out_addr)
                if result is None:
                    result = self._enqueue(out, out_addr)
                sent = result and sent
            if not sent:
                return False  # the message cannot complete without this fragment
        return True

    @property
    def unsent_datagrams(self) -> int:
        """Datagrams in the send queue (kept by `send_nowait` for `flush()`)."""
        return len(self._send_queue)

    async def flush(self) -> None:
        """Send every datagram in the send queue, waiting for room in the kernel's
        send buffer as needed. Always a checkpoint.

        Cancellation leaves the datagrams not yet sent in the queue, for the next
        `flush()`. Send errors are counted as in `send_to`, never raised. Raises
        trio.ClosedResourceError if the endpoint is closed (closing discards the
        queue)."""
        await trio.lowlevel.checkpoint_if_cancelled()
        if self._closed:
            raise trio.ClosedResourceError("the UDP endpoint is closed")
        queue = self._send_queue
        while queue:
            datagram, addr = queue[0]
            if self._send_one_nowait(datagram, addr) is None:
                await trio.lowlevel.wait_writable(self._sock)
                continue
            queue.popleft()
            self._send_queue_bytes -= len(datagram)
        await trio.lowlevel.cancel_shielded_checkpoint()

    async def send_datagram(self, datagram: bytes, addr: Address) -> bool:
        """Send one raw datagram as is (no framing, no send_filter): for fault
        injection and tests. Same error handling as `send_to`."""
        await trio.lowlevel.checkpoint_if_cancelled()
        if self._closed:
            raise trio.ClosedResourceError("the UDP endpoint is closed")
        ok = await self._send_one(datagram, addr)
        await trio.lowlevel.cancel_shielded_checkpoint()
        return ok

    def _frame(self, payload: bytes, sender_id: int | None = None) -> list[bytes]:
        """The datagrams of `payload` under a fresh message id (counted as a message
        sent), framed as from `sender_id` (default: this endpoint's). Raises for a
        closed endpoint or an oversize payload."""
        if self._closed:
            raise trio.ClosedResourceError("the UDP endpoint is closed")
        if len(payload) > self.max_message_bytes:
            raise TransportError(
                f"payload of {len(payload)} bytes exceeds max_message_bytes "
                f"{self.max_message_bytes}"
            )
        message_id = self._next_message_id
        self._next_message_id = (message_id + 1) & MAX_MESSAGE_ID
        self._sent_messages += 1
        return encode_frames(self.sender_id if sender_id is None else sender_id, message_id,
                             payload, self.max_datagram_bytes)

    async def _send_one(self, datagram: bytes, addr: Address) -> bool:
        while True:
            sent = self._send_one_nowait(datagram, addr)
            if sent is not None:
                return sent
            await trio.lowlevel.wait_writable(self._sock)

    def _send_one_nowait(self, datagram: bytes, addr: Address) -> bool | None:
        """Hand one datagram to the kernel: True if it took it, False if it failed
        (counted), None if the send buffer is full."""
        try:
            self._sock.sendto(datagram, addr)
        except BlockingIOError:
            return None
        except OSError as exc:
            return self._send_failed(exc, datagram, addr)
        self._sent_datagrams += 1
        self._sent_bytes += len(datagram)
        return True

    def _send_failed(self, exc: OSError, datagram: bytes, addr: Address) -> bool | None:
        self._send_errors[_errno_key(exc)] += 1
        if not isinstance(exc, ConnectionRefusedError):
            return False
        # An ICMP error left by an earlier datagram (to any destination) surfaced on
        # this call. It was counted; try this datagram once more.
        self._drain_error_queue()
        try:
            self._sock.sendto(datagram, addr)
        except BlockingIOError:
            return None
        except OSError as again:
            self._send_errors[_errno_key(again)] += 1
            return False
        self._sent_datagrams += 1
        self._sent_bytes += len(datagram)
        return True

    def _enqueue(self, datagram: bytes, addr: Address) -> bool:
        """Keep a datagram for `flush()`; False (counted) if the queue has no room."""
        size = len(datagram)
        if self._send_queue_bytes + size > self.max_send_queue_bytes:
            self._send_errors["send_queue_full"] += 1
            return False
        self._send_queue.append((datagram, addr))
        self._send_queue_bytes += size
        self._send_queued += 1
        return True

    # --------------------------------------------------------------- receive

    async def receive(self) -> Received:
        """The next complete message. Waits for one; raises trio.ClosedResourceError
        once the endpoint is closed. Checkpoints at least once per drained batch
        (a message already drained is returned without waiting)."""
        if not self._pending:
            self._pending.extend(await self.receive_batch())
        return self._pending.popleft()

    async def receive_batch(self) -> list[Received]:
        """Every complete message available now (at least one; waits for one).

        The fast path: one scheduler pass per batch of up to `max_batch` datagrams.
        Raises trio.ClosedResourceError once the endpoint is closed.
        """
        if self._pending:
            await trio.lowlevel.checkpoint()  # before taking them: a cancel loses nothing
            batch = list(self._pending)
            self._pending.clear()
            return batch
        while True:
            if self._closed:
                raise trio.ClosedResourceError("the UDP endpoint is closed")
            if self._strangers is not None and self._refill(trio.current_time()) + 1e-9 < 1:
                # no stranger may be read yet: wait for the trusted socket, or the token
                wait = max((1 - self._tokens) / self.stranger_rate, 1e-6)
                with trio.move_on_at(trio.current_time() + wait):
                    await trio.lowlevel.wait_readable(self._sock)
            else:
                await trio.lowlevel.wait_readable(self._wait_on)
            batch = self._drain()
            if batch:
                return batch

    def receive_nowait(self) -> list[Received]:
        """Every complete message available now, possibly none. Never waits and is
        not a checkpoint: for a loop that checkpoints by itself (the node tries this
        first and waits with `receive_batch` only when nothing is there). Raises
        trio.ClosedResourceError once the endpoint is closed."""
        if self._closed:
            raise trio.ClosedResourceError("the UDP endpoint is closed")
        if self._pending:
            batch = list(self._pending)
            self._pending.clear()
            return batch
        return self._drain()

    def __aiter__(self) -> UdpEndpoint:
        return self

    async def __anext__(self) -> Received:
        return await self.receive()

    def _drain(self) -> list[Received]:
        """Read datagrams until the socket would block (or max_batch), then at most
        `stranger_budget` of the strangers' socket; return the messages they complete.
        Never raises for anything received."""
        out: list[Received] = []
        if self._closed:
            return out
        now = trio.current_time()
        self._read(self._sock, self.max_batch, now, out)
        if self._strangers is not None:
            allowed = int(self._refill(now) + 1e-9)
            if allowed:
                read = self._read(self._strangers, allowed, now, out)
                self._tokens -= read
                self._stranger_datagrams += read
        self._received_messages += len(out)
        return out

    def _refill(self, now: float) -> float:
        """The strangers' tokens now (at most `stranger_budget`)."""
        if self._tokens_at is not None and now > self._tokens_at:
            self._tokens = min(float(self.stranger_budget),
                               self._tokens + (now - self._tokens_at) * self.stranger_rate)
        self._tokens_at = now
        return self._tokens

    def _read(self, sock: socket.socket, limit: int, now: float, out: list[Received]) -> int:
        """Read up to `limit` datagrams of `sock` into `out`; the number read."""
        recvfrom = sock.recvfrom
        bufsize = self.max_datagram_bytes + 1  # one more byte reveals a truncated datagram
        recv_filter = self.recv_filter
        datagrams = 0
        received_bytes = 0
        for _ in range(limit):
            try:
                data, addr = recvfrom(bufsize)
            except BlockingIOError:
                break
            except ConnectionRefusedError:
                # Linux reports an ICMP port-unreachable for an earlier send here.
                self._recv_errors["refused"] += 1
                self._drain_error_queue()
                continue
            except OSError as exc:
                self._recv_errors[_errno_key(exc)] += 1
                self._drain_error_queue()
                break
            datagrams += 1
            received_bytes += len(data)
            if recv_filter is None:
                self._accept(data, addr, now, out)
            else:
                for data_out, addr_out in recv_filter(data, addr):
                    self._accept(data_out, addr_out, now, out)
        self._received_datagrams += datagrams
        self._received_bytes += received_bytes
        return datagrams

    def _accept(self, data: bytes, addr: Address, now: float, out: list[Received]) -> None:
        if len(data) > self.max_datagram_bytes:
            self._drops["oversize"] += 1
            return
        try:
            frame = decode_frame_untrusted(data, max_message_bytes=self.max_message_bytes)
        except FrameError as exc:
            self._drops[exc.reason] += 1
            return
        if len(addr) == 4:
            addr = (addr[0], addr[1]) if addr[3] == 0 else addr
        sender_id = frame.sender_id
        message = self._reassembler.add((addr, sender_id), frame, now)
        if message is not None:
            # tuple.__new__: the same Received as Received(...), without the Python-level
            # __new__ of a NamedTuple (this runs once per message received).
            out.append(_new_tuple(Received, (addr, sender_id, message)))

    def _drain_error_queue(self) -> None:
        """Empty the socket's error queue (filled only where IP_RECVERR is on), so
        that a pending error cannot keep the socket readable forever."""
        if not _MSG_ERRQUEUE or self._closed:
            return
        for _ in range(1024):
            try:
                self._sock.recvmsg(1, 1024, _MSG_ERRQUEUE)
            except OSError:
                return

    # ----------------------------------------------------------- observation

    def statistics(self) -> dict:
        """Counters: messages/datagrams/bytes sent and received, `drops` by reason
        (every reason of RECEIVE_DROP_REASONS present; frame, size and reassembly
        reasons together), `send_errors` and `recv_errors` by errno name (and
        `unknown_peer`, `send_queue_full`), the send queue (`send_queued`: datagrams
        ever queued by `send_nowait`; `send_queue_datagrams`, `send_queue_bytes`:
        now), the socket buffer sizes the kernel granted, and the reassembler's
        gauges."""
        reassembly = self._reassembler.statistics()
        drops = {reason: self._drops[reason] for reason in RECEIVE_DROP_REASONS}
        for reason, count in reassembly["drops"].items():
            drops[reason] += count
        if self._strangers is not None and not self._closed:
            self._stranger_kernel_drops = bpf.kernel_drops(self._strangers)
        drops["stranger_kernel_drop"] = self._stranger_kernel_drops
        return {
            "address": self.address,
            "sent_messages": self._sent_messages,
            "sent_datagrams": self._sent_datagrams,
            "sent_bytes": self._sent_bytes,
            "received_datagrams": self._received_datagrams,
            "received_bytes": self._received_bytes,
            "received_messages": self._received_messages,
            "drops": drops,
            "send_errors": dict(self._send_errors),
            "recv_errors": dict(self._recv_errors),
            "send_queued": self._send_queued,
            "send_queue_datagrams": len(self._send_queue),
            "send_queue_bytes": self._send_queue_bytes,
            "rcvbuf_bytes": self.rcvbuf_bytes,
            "sndbuf_bytes": self.sndbuf_bytes,
            "steering": self.steering,
            "trusted_sources": len(self._trusted),
            "stranger_datagrams": self._stranger_datagrams,
            "reassembly": {k: v for k, v in reassembly.items() if k != "drops"},
        }


def _errno_key(exc: OSError) -> str:
    """A stable counter key for an OSError: 'refused', 'unreachable', 'gaierror' or
    the errno's symbolic name in lower case."""
    if isinstance(exc, ConnectionRefusedError):
        return "refused"
    if isinstance(exc, socket.gaierror):
        return "gaierror"
    name = errno.errorcode.get(exc.errno or 0)
    if name in ("ENETUNREACH", "EHOSTUNREACH"):
        return "unreachable"
    return name.lower() if name else "oserror"


def free_udp_ports(count: int, host: str = "127.0.0.1") -> list[int]:
    """`count` distinct UDP ports on `host`, free now and below the ephemeral range.

    For local clusters in tests and benchmarks: node ports must stay free across a node's
    restart, and clients bind port 0 (an ephemeral port), so ports below the ephemeral range
    cannot be taken by any client meanwhile. Probed by binding; parallel runs start probing
    at an offset derived from the process id. TransportError if there are not enough."""
    import os
    import time

    try:
        with open("/proc/sys/net/ipv4/ip_local_port_range") as f:
            low = int(f.read().split()[0])
    except (OSError, ValueError, IndexError):
        low = 32768
    first, last = 20000, min(low, 32768) - 1
    span = last - first + 1
    start = (os.getpid() * 7919 + time.monotonic_ns() // 1000) % span
    ports: list[int] = []
    for i in range(span):
        port = first + (start + i) % span
        with socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET,
                           socket.SOCK_DGRAM) as s:
            try:
                s.bind((host, port))
            except OSError:
                continue
        ports.append(port)
        if len(ports) == count:
            return ports
    raise TransportError(f"no {count} free UDP ports on {host} in {first}..{last}")

