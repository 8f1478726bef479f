"""The Trio runtime: where the pure Replica and Client meet sockets, clocks and disks.

`Node` runs one replica: a UDP endpoint (transport/), the write-ahead log
(bft/storage.py), the monotonic clock for timers and an interval clock for
agreed time. One task drives everything (no interleaving of replica steps):

    wait for datagrams or the next timer
    -> decode (bad bytes are counted and dropped) -> replica.receive / tick
    -> carry out the effects of the whole drained batch through the effect
       runner (bft/driver.py): persist (one fsync per batch), then send and
       reply in order; tick the replica once per SetTimer deadline.

Persisting every record before any message of the same batch leaves the
process is the write-ahead rule (PROTOCOL.md "Crash recovery"); the runner
keeps it, and the timer contract, for the node and the simulator alike.

Extension points (`NodeExtension`): what a plugin such as the adversary adds to a node
without patching it: a wrapper around the replica, datagram filters on the endpoint,
the control actions the node does not carry out itself (pause, cut, behaviours), a task
beside the loop, and fields of the telemetry status. A node without extensions is the
production node: it runs the bare `Replica`.

`ClusterClient` is the network side of the pure `bft.client.Client`; `ClientMux`
lets many of them share one socket and one receiving task.
"""

from __future__ import annotations

import errno
import fcntl
import gc
import heapq
import ipaddress
import json
import logging
import math
import os
import signal
import socket
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Mapping, Sequence

import trio

from bft import codec
from bft.app import KVStore
from bft.auth import reply_auth_for
from bft.client import (
    Client,
    ClientTimer,
    Completed,
    Failed,
    SendAll,
    SendTo,
    is_old_reply_untrusted,
    peek_reply_untrusted,
)
from bft.clock import Interval
from bft.config import CLIENT_SENDER_BASE, ClusterConfig, format_address
from bft.driver import EffectIO, EffectRunner
from bft.effects import Event, Evidence, Executed
from bft.eventlines import iso_utc
from bft.errors import ClientIdInUse, MalformedMessage
from bft.messages import Fetch, FetchState, Request, Signed, StateChunk, Status
from bft.replica import Replica
from bft.storage import WalStorage, votes_may_be_lost
from bft.telemetry import (
    CONTROL_MAGIC,
    ControlGate,
    Crash,
    TelemetryAggregator,
    control_cluster_id,
    is_control,
    is_telemetry,
)
from transport import bpf
from transport.frame import HEADER_BYTES, MAGIC, OVERHEAD_BYTES, VERSION
from transport.udp import DatagramFilter, TransportError, UdpEndpoint

DEFAULT_CLOCK_UNCERTAINTY_US = 5_000
#: Requests from one client id (at its verified address) the node takes from each batch it
#: drains (the rest are dropped unread, `shed_client_share`): see `Node._fair_share`.
CLIENT_PER_BATCH = 8
#: How often at most the node re-steers its trusted sources when a client's verified
#: address changed (each change installs a new kernel program).
TRUSTED_UPDATE_INTERVAL_S = 0.05
#: A client whose requests were shed (more than its share of a batch: a correct client has
#: one request outstanding) is a stranger for this long: its datagrams go to the strangers'
#: socket, where the kernel drops what is beyond the strangers' rate.
CLIENT_DEMOTION_S = 10.0
#: Requests a second one client may send a node from its verified address before it is
#: demoted the same way. A correct client has one request outstanding, so it sends about
#: one per completed request (and a retransmission per timeout): far fewer than this on
#: any cluster whose latency is above 1 ms.
CLIENT_MAX_REQUESTS_PER_S = 1000


# ------------------------------------------------------- what strangers may send

#: In a socket filter on a UDP socket the datagram starts after the UDP header.
_UDP = 8
_SENDER = _UDP + 3
_INDEX = _UDP + 15
_MESSAGE = _UDP + HEADER_BYTES


def _array_head(items: int) -> int:
    assert items < 24
    return 0x80 + items


#: `[20, body, signature]`: the first two bytes of every encoded Signed.
SIGNED_PREFIX = (_array_head(3) << 8) | Signed.TAG
#: The first two bytes of an encoded Request: `[1, op, timestamp, client]`.
REQUEST_PREFIX = (_array_head(4) << 8) | Request.TAG


def stranger_program(replicas: int) -> list[bpf.Insn]:
    """The socket filter for the strangers' socket of a node of a cluster of `replicas`:
    what a stranger may send a node (issue 21).

    A node's strangers are every source outside its trusted set (the configured replicas,
    the monitor, clients at their verified addresses: transport/udp.py steers those to a
    socket of their own). From a stranger the node takes only two things (`Node._step`,
    `Node.accept_control`): a client's signed Request, and a control command.
    Everything else is dropped there after it has cost a receive, a checksum and a decode.
    `stranger_program` drops it in the kernel instead, by bytes at fixed offsets:

    * a frame shorter than a header and checksum, or not our magic and version
      (transport/frame.py);
    * a frame whose sender id is a replica's (below n): a replica's frames come from its
      configured address, which is trusted, so from anywhere else they are forgeries
      (the node counts them as `replica_address_mismatch`);
    * the first fragment of a message that is neither a control command (`BFTC`,
      bft/telemetry.py) nor a `Signed` Request: `[20, body, signature]` (0x83 0x14),
      `body` a byte string whose first bytes are `[1, ...]` (0x84 0x01), the Request's
      array head and tag (bft/codec.py). Later fragments carry no header of the message
      and pass: their first fragment decides whether the message can ever complete.

    What passes is still checked in full by the node (this only drops early what the
    node would drop later), and the strangers' socket is read only up to a budget per
    pass, so what passes costs a bounded share. A pure function: tests run the program in the kernel
    (tests/test_kernel_steering.py).
    """
    asm = bpf.Asm()
    asm.op(bpf.LD_W_LEN)
    asm.op(bpf.JGE_K, _UDP + OVERHEAD_BYTES, jf="drop")
    asm.op(bpf.LD_H_ABS, _UDP)
    asm.op(bpf.JEQ_K, int.from_bytes(MAGIC, "big"), jf="drop")
    asm.op(bpf.LD_B_ABS, _UDP + 2)
    asm.op(bpf.JEQ_K, VERSION, jf="drop")
    asm.op(bpf.LD_W_ABS, _SENDER)
    asm.op(bpf.JGE_K, replicas, jf="drop")
    asm.op(bpf.LD_H_ABS, _INDEX)
    asm.op(bpf.JEQ_K, 0, jf="accept")  # a later fragment
    asm.op(bpf.LD_W_ABS, _MESSAGE)
    asm.op(bpf.JEQ_K, int.from_bytes(CONTROL_MAGIC, "big"), jt="accept")
    asm.op(bpf.LD_H_ABS, _MESSAGE)
    asm.op(bpf.JEQ_K, SIGNED_PREFIX, jf="drop")
    # the body's byte-string head: 0x40-0x57 (length in the head), 0x58/0x59/0x5a (a
    # length of 1, 2 or 4 bytes after it); the statement starts after the head
    asm.op(bpf.LD_B_ABS, _MESSAGE + 2)
    asm.op(bpf.JGT_K, 0x57, jt="long")
    asm.op(bpf.JGE_K, 0x40, jf="drop")
    asm.op(bpf.LD_H_ABS, _MESSAGE + 3)
    asm.op(bpf.JA, jt="tag")
    asm.label("long")
    for head, skip in ((0x58, 1), (0x59, 2)):
        asm.op(bpf.JEQ_K, head, jf=f"not{head}")
        asm.op(bpf.LD_H_ABS, _MESSAGE + 3 + skip)
        asm.op(bpf.JA, jt="tag")
        asm.label(f"not{head}")
    asm.op(bpf.JEQ_K, 0x5A, jf="drop")
    asm.op(bpf.LD_H_ABS, _MESSAGE + 3 + 4)
    asm.label("tag")
    asm.op(bpf.JEQ_K, REQUEST_PREFIX, jf="drop")
    asm.label("accept")
    asm.ret(bpf.ACCEPT)
    asm.label("drop")
    asm.ret(bpf.DROP)
    return asm.assemble()


# ---------------------------------------------------------------------- clocks


def read_interval_clock(uncertainty_us: int = DEFAULT_CLOCK_UNCERTAINTY_US,
                        offset_s: float = 0.0) -> Interval:
    """The time-of-day as an interval [earliest, latest] (a confidence interval, as
    TrueTime): used only for agreed batch time, never to measure durations."""
    now_us = time.time_ns() // 1000 + int(offset_s * 1e6)
    return Interval(now_us - uncertainty_us, now_us + uncertainty_us)


# ---------------------------------------------------------------------- logging


# A node's objects live either for one message (freed by reference counting) or for the run
# (config, keys, log, caches); the cyclic collector finds little garbage but, at CPython's
# default gen-0 threshold of 700, runs every few hundred messages and keeps rescanning the
# long-lived heap (measured ~5-8 % of a node's CPU under load, benchmarks/RESULTS.md).
GC_THRESHOLDS = (20_000, 20, 50)


def tune_gc(thresholds: tuple[int, int, int] = GC_THRESHOLDS) -> tuple[int, int, int]:
    """For a node process, once it has started: move everything allocated so far out of the
    collector's sight (`gc.freeze`) and collect less often. Returns the previous thresholds."""
    previous = gc.get_threshold()
    gc.collect()
    gc.freeze()
    gc.set_threshold(*thresholds)
    return previous  # type: ignore[return-value]


class JsonFormatter(logging.Formatter):
    """One JSON object per line: ts (ISO-8601 UTC, microseconds), level, logger, msg and any
    `extra={"fields": {...}}`."""

    def format(self, record: logging.LogRecord) -> str:
        out: dict[str, Any] = {
            "ts": iso_utc(record.created, "microseconds"),
            "level": record.levelname.lower(),
            "logger": record.name,
            "msg": record.getMessage(),
        }
        fields = getattr(record, "fields", None)
        if isinstance(fields, dict):
            out.update(fields)
        if record.exc_info:
            out["exc"] = self.formatException(record.exc_info)
        return json.dumps(out, default=str, sort_keys=True)


def json_logger(name: str, path: Path | None, *, echo: bool = False) -> logging.Logger:
    """A logger writing JSON lines to `path` (and plain lines to stderr if `echo`)."""
    logger = logging.getLogger(name)
    logger.setLevel(logging.INFO)
    logger.propagate = False
    for h in list(logger.handlers):
        logger.removeHandler(h)
        h.close()
    if path is not None:
        path.parent.mkdir(parents=True, exist_ok=True)
        handler = logging.FileHandler(path, encoding="utf-8")
        handler.setFormatter(JsonFormatter())
        logger.addHandler(handler)
    if echo:
        h = logging.StreamHandler()
        h.setFormatter(logging.Formatter("%(name)s %(message)s"))
        logger.addHandler(h)
    return logger


# ---------------------------------------------------------------------- metrics


class Metrics:
    """Prometheus metrics of one node, served on config.metrics_port + node id when the
    config names a metrics port and prometheus-client is installed (`pip install
    bft-udp[metrics]`). Counters: commits, executed requests, view changes, drops by reason,
    signatures verified (`bft_signatures_verified_total`; the old gauge of that name without
    `_total` is gone: a counter's name may not be reused); gauges: view, primary, executed seq,
    stable checkpoint seq; a histogram of commit latency (pre-prepare accepted to executed).
    `url` is where it is served."""

    def __init__(self, node_id: int, port: int, host: str = "127.0.0.1") -> None:
        import prometheus_client as pc

        self.registry = pc.CollectorRegistry()
        label = {"node": str(node_id)}
        self.commits = pc.Counter("bft_commits", "Sequence numbers committed and executed "
                                  "(one batch each, null batches included)",
                                  registry=self.registry)
        self.requests = pc.Counter("bft_executed_requests", "Client requests executed",
                                   registry=self.registry)
        self.view_changes = pc.Counter("bft_view_changes", "View changes started",
                                       registry=self.registry)
        self.drops = pc.Counter("bft_drops", "Messages dropped, by reason", ["reason"],
                                registry=self.registry)
        self.verified_total = pc.Counter("bft_signatures_verified",
                                         "Signatures verified", registry=self.registry)
        self.view = pc.Gauge("bft_view", "Current view", registry=self.registry)
        self.primary = pc.Gauge("bft_primary", "Primary of the current view (node id)",
                                registry=self.registry)
        self.executed = pc.Gauge("bft_executed_seq", "Last executed sequence number",
                                 registry=self.registry)
        self.stable = pc.Gauge("bft_stable_checkpoint_seq",
                               "Sequence number of the last stable checkpoint",
                               registry=self.registry)
        self._verified_seen = 0
        self.url = f"http://{format_address(host, port)}/metrics"
        self.latency = pc.Histogram("bft_commit_latency_seconds",
                                    "Pre-prepare accepted to batch executed",
                                    buckets=(.0005, .001, .002, .005, .01, .02, .05, .1, .2, .5,
                                             1, 2, 5), registry=self.registry)
        self._drops_seen: Counter[str] = Counter()
        self.info = label
        self.server = pc.start_http_server(port, addr=host, registry=self.registry)

    def observe(self, e: Any, replica: Replica | None, now: float) -> None:
        if isinstance(e, Executed):
            self.commits.inc()
            self.requests.inc(len(e.batch.requests))
            slot = replica.log.get(e.seq) if replica is not None else None
            if slot is not None and slot.accepted_at is not None and slot.accepted_at > 0:
                self.latency.observe(max(0.0, now - slot.accepted_at))
        elif isinstance(e, Event) and e.kind == "view_change_start":
            self.view_changes.inc()

    def refresh(self, drops: dict[str, int], verified: int, view: int, primary: int = 0,
                executed: int = 0, stable: int = 0) -> None:
        for reason, count in drops.items():
            delta = count - self._drops_seen[reason]
            if delta > 0:
                self.drops.labels(reason=reason).inc(delta)
                self._drops_seen[reason] = count
        if verified > self._verified_seen:
            self.verified_total.inc(verified - self._verified_seen)
            self._verified_seen = verified
        self.view.set(view)
        self.primary.set(primary)
        self.executed.set(executed)
        self.stable.set(stable)

    def close(self) -> None:
        server = self.server[0] if isinstance(self.server, tuple) else None
        if server is not None:
            server.shutdown()
            server.server_close()


# ---------------------------------------------------------------------- node


class NodeExtension:
    """A declared extension point of `Node`: override what you need (this base does nothing).

    The node calls, in this order and nowhere else:

    * `wrap_replica(node, replica)` once the replica is recovered (in `open()`): return what
      the node drives instead (the replica's interface: `start/receive/tick(now, wall) ->
      effects`, its attributes). `node.core` stays the bare `Replica`.
    * `send_filter` / `recv_filter` (attributes, `transport.udp.DatagramFilter` or None):
      put on the endpoint after `wrap_replica`; the filters of several extensions are chained
      in their order (sending: first extension first; receiving: likewise).
    * `obey(node, action, now) -> bool` for an admin-signed control action the node does not
      carry out itself (pause, resume, cut, heal, set/clear behaviour): True if it was taken.
      Call `node.tick_soon()` for the replica (or its wrapper) to be ticked at once.
    * `status(now) -> dict` fields for the telemetry status (`behaviour`, `paused`) and
      `drops() -> {reason: count}` added to the node's drops there.
    * `async run(node)`: a task beside the node's loop while it serves (cancelled with it).
    """

    send_filter: DatagramFilter | None = None
    recv_filter: DatagramFilter | None = None

    def wrap_replica(self, node: Node, replica: Any) -> Any:
        return replica

    def obey(self, node: Node, action: Any, now: float) -> bool:
        return False

    def status(self, now: float) -> dict[str, Any]:
        return {}

    def drops(self) -> Mapping[str, int]:
        return {}

    async def run(self, node: Node) -> None:
        return None


#: messages a replica sends only in its own name: the signer must be the frame's sender
_UNRELAYED = (Status, Fetch, FetchState, StateChunk)


def _chain(first: DatagramFilter | None, then: DatagramFilter | None) -> DatagramFilter | None:
    if first is None or then is None:
        return first or then

    def chained(datagram: bytes, addr: Any) -> list[tuple[bytes, Any]]:
        return [out for d, a in first(datagram, addr) for out in then(d, a)]

    return chained


@dataclass
class NodeStats:
    received: int = 0
    sent: int = 0
    steps: int = 0
    batches: int = 0
    commits: int = 0
    executed_requests: int = 0
    view_changes: int = 0
    drops: Counter[str] = field(default_factory=Counter)
    commit_latency_s: list[float] = field(default_factory=list)


class _NodeIO(EffectIO):
    """A node's I/O behind its `EffectRunner`: UDP (a reply goes to
    the client's last verified address) and the node's observers (log, telemetry, metrics)."""

    __slots__ = ("node",)

    def __init__(self, node: Node) -> None:
        self.node = node

    def send(self, to: int, message: Any) -> None:
        node = self.node
        node.endpoint.send_nowait(to, node._encode(message))  # type: ignore[union-attr]
        node.stats.sent += 1

    def broadcast(self, message: Any) -> None:
        node = self.node
        peers = node._peer_ids  # (a cut peer's datagrams stop in an extension's send filter)
        data = node._encode(message)
        send = node.endpoint.send_nowait  # type: ignore[union-attr]
        for peer in peers:
            send(peer, data)
        node.stats.sent += len(peers)

    def reply(self, client: int, reply: Any) -> None:
        node = self.node
        addr = node.client_addrs.get(client)
        if addr is not None:
            node.endpoint.send_to_nowait(addr, node._encode(reply))  # type: ignore[union-attr]
        else:
            node.stats.drops["reply_no_address"] += 1

    def executed(self, effect: Executed) -> None:
        self.node._observe(effect)

    def evidence(self, effect: Evidence) -> None:
        self.node._observe(effect)

    def event(self, effect: Event) -> None:
        self.node._observe(effect)


class Node:
    """One replica process: `await node.run()` until cancelled (SIGINT/SIGTERM)."""

    def __init__(self, config: ClusterConfig, node_id: int, *, signer: Any, verifier: Any,
                 state_dir: Path, app: Any = None, fsync: str | None = None,
                 clock: Callable[[], Interval] | None = None,
                 on_effect: Callable[[Any], None] | None = None,
                 log_echo: bool = False, extensions: Sequence[NodeExtension] = ()) -> None:
        self.config = config
        self.id = node_id
        self.signer = signer
        self.verifier = verifier
        self.state_dir = Path(state_dir)
        self.app = app if app is not None else KVStore(config.kv_limits)
        self.fsync = fsync or config.fsync
        self.clock = clock or read_interval_clock
        self.on_effect = on_effect
        self.log = json_logger(f"bft.node.{node_id}",
                               self.state_dir / f"node-{node_id}.log.jsonl", echo=log_echo)
        self.stats = NodeStats()
        self.client_addrs: dict[int, Any] = {}
        # client -> the number of its freshest request whose signature verified here: the
        # reply address moves only with a request numbered above it (issue 21, item 7)
        self.client_latest: dict[int, int] = {}
        # a request numbered more than this ahead of this node's clock is never executed
        # (bft/normal.py `_request_time_bound`): it teaches no address
        self._fresh_ahead_us = (int(config.client_timestamp_window_s * 1_000_000)
                                - int(config.max_clock_skew_s * 1_000_000))
        self.replica: Any = None  # the core replica, or what an extension wrapped it in
        self.core: Replica | None = None  # the core replica itself
        self.extensions: list[NodeExtension] = []
        self.endpoint: UdpEndpoint | None = None
        self.storage: WalStorage | None = None
        self.runner: EffectRunner | None = None  # carries out the replica's effects (open())
        self._encoded: dict[int, bytes] = {}
        self.started = trio.Event()
        wall_us = time.time_ns() // 1000
        self.telemetry = (TelemetryAggregator(node_id, signer, first_seq_no=wall_us)
                          if config.monitor else None)
        self._telemetry_out: list[bytes] = []
        # the last command obeyed (kept across restarts), else those issued before this start
        self.control_seq_no_file = self.state_dir / f"node-{node_id}.control-seq-no"
        self.control = ControlGate(
            node_id, control_cluster_id(config, verifier),
            last_seq_no=max(_read_control_seq_no(self.control_seq_no_file),
                            wall_us - int(config.max_clock_skew_s * 1e6)),
            clock_tolerance_s=config.max_clock_skew_s,
            # the dashboard sends from the monitor address: a budget of its own
            trusted_sources=[config.monitor] if config.monitor else [])
        self._peer_of_addr = {n.address: n.id for n in config.nodes}
        self._n = len(config.nodes)
        # each replica's address as the socket reports a datagram's source (resolved in open())
        self._replica_addr: dict[int, Any] = {}
        self._peer_ids = tuple(n.id for n in config.nodes if n.id != node_id)
        self.metrics: Metrics | None = None
        self._metrics_due = 0.0
        self.unknown_per_batch = config.stranger_budget
        #: steer trusted sources and strangers apart in the kernel (issue 21; see
        #: transport/udp.py): set False before open() to keep one socket for everyone
        self.kernel_steering = True
        self._trusted_dirty = False
        self._trusted_due = 0.0
        self._demoted: dict[int, float] = {}  # client id -> until (trio time)
        self._demoted_next = math.inf  # the first demotion to end
        self._client_requests: dict[int, int] = {}  # this second's, by client id
        self._client_second = 0.0  # (when the count restarts)
        self.client_per_batch = CLIENT_PER_BATCH
        self._pending = list(extensions)  # plugged in by open()

    # -- lifecycle

    def open(self) -> None:
        """Bind the socket, open the WAL, recover the replica (raises clear errors)."""
        me = self.config.node(self.id)
        peers = {n.id: n.address for n in self.config.nodes if n.id != self.id}
        # bind `listen` if the config gives one (the advertised address may not be on this
        # host's interface: NAT, a cloud's public address); peers send to the advertised one
        bind_host, bind_port = me.bind_address
        try:
            self.endpoint = UdpEndpoint(
                self.id, bind_host, bind_port, peers=peers,
                max_datagram_bytes=self.config.max_datagram_bytes,
                max_message_bytes=self.config.limits.max_message_bytes,
                trusted_sources=() if self.kernel_steering else None,
                stranger_filter=stranger_program(self._n),
                stranger_budget=self.unknown_per_batch,
                stranger_rate=self.config.stranger_rate)
        except TransportError as exc:
            cause = exc.__cause__
            if (me.listen is None and isinstance(cause, OSError)
                    and cause.errno == errno.EADDRNOTAVAIL):
                listen = format_address("::" if ":" in me.host else "0.0.0.0", me.port)
                raise TransportError(
                    f"{exc}; {me} is not an address of this host: if peers reach this node "
                    f'there through a NAT (a cloud\'s public address), add listen = "{listen}" '
                    f"(or this host's own address) to nodes[{self.id}] in the config; "
                    f"otherwise run node {self.id} on the host that has {me.host}") from exc
            raise
        self._replica_addr = {**self.endpoint.peers, self.id: self.endpoint.address}
        if self.endpoint.steering == "on":
            self._set_trusted_sources()
        elif self.kernel_steering:
            self.log.warning("strangers are not steered apart in the kernel: every datagram "
                             "is read and sorted in Python", extra={"fields": {
                                 "event": "kernel_steering_off",
                                 "why": self.endpoint.steering}})
        self.storage = WalStorage(self.state_dir / f"wal-{self.id}", fsync=self.fsync)  # type: ignore[arg-type]
        self.runner = EffectRunner(self.storage, _NodeIO(self))
        if self.storage.recovered:
            self.log.warning("wal repaired on open", extra={"fields": {
                "event": "wal_repaired", **dict(self.storage.recovered)}})
        snapshot = self.storage.load_snapshot()
        records = self.storage.records()
        recovered = (snapshot, records) if (snapshot is not None or records) else None
        votes_lost = votes_may_be_lost(self.storage.recovered)
        if votes_lost:
            self.log.warning("stable storage lost records this node may have signed: it will "
                             "not vote where it may have voted before until it has caught up",
                             extra={"fields": {"event": "votes_lost",
                                               **dict(self.storage.recovered or {})}})
        self.replica = self.core = Replica(
            self.config, self.id, signer=self.signer, verifier=self.verifier, app=self.app,
            recovered=recovered, reply_auth=reply_auth_for(self.signer, self.verifier),
            votes_lost=votes_lost)
        for ext in self._pending:
            self._apply(ext)
            self.extensions.append(ext)
        self._pending = []
        if self.config.metrics_port is not None:
            try:
                self.metrics = Metrics(self.id, self.config.metrics_port + self.id, bind_host)
            except ImportError:
                self.log.warning("metrics disabled: prometheus-client is not installed "
                                 "(pip install 'bft-udp[metrics]')")
        self.log.info("node started", extra={"fields": {
            "event": "start", "id": self.id, "address": str(me),
            "listen": format_address(*self.endpoint.address[:2]),
            "recovered_records": len(records), "snapshot_seq": snapshot[0] if snapshot else None,
            "view": self.replica.view, "last_executed": self.replica.last_executed}})

    def add_extension(self, ext: NodeExtension) -> None:
        """Plug `ext` in (before or after `open()`; see `NodeExtension`)."""
        if self.replica is None:
            self._pending.append(ext)
            return
        self._apply(ext)  # raises (a scenario that cannot run here) before it counts
        self.extensions.append(ext)

    def _apply(self, ext: NodeExtension) -> None:
        assert self.endpoint is not None
        self.replica = ext.wrap_replica(self, self.replica)
        self.endpoint.send_filter = _chain(self.endpoint.send_filter, ext.send_filter)
        self.endpoint.recv_filter = _chain(self.endpoint.recv_filter, ext.recv_filter)

    def tick_soon(self) -> None:
        """Tick the replica at the loop's next turn (an extension changed what it holds):
        the replica's tick announces its next deadline again (bft/driver.py)."""
        if self.runner is not None:
            self.runner.deadline = -math.inf

    def close(self) -> None:
        self.log.info("node stopped", extra={"fields": {"event": "stop", **self.summary()}})
        if self.metrics is not None:
            self.metrics.close()
        if self.endpoint is not None:
            self.endpoint.close()
        if self.storage is not None:
            self.storage.close()
        for h in list(self.log.handlers):
            h.flush()

    async def run(self, *, task_status: Any = trio.TASK_STATUS_IGNORED) -> None:
        """Serve until cancelled. Opens (if not yet) and closes the node."""
        if self.replica is None:
            self.open()
        assert self.replica is not None and self.endpoint is not None
        try:
            await self._carry_out(self.replica.start(trio.current_time(), self.clock()))
            self.started.set()
            task_status.started()
            if self.extensions:
                async with trio.open_nursery() as nursery:
                    for ext in self.extensions:
                        nursery.start_soon(ext.run, self)
                    await self._loop()
            else:
                await self._loop()
        finally:
            self.close()

    async def _loop(self) -> None:
        replica, endpoint, runner = self.replica, self.endpoint, self.runner
        assert replica is not None and endpoint is not None and runner is not None
        while True:
            wake = runner.deadline
            if self.telemetry is not None:
                wake = min(wake, self.telemetry.next_due())
            # What is already there needs neither a timeout scope nor a wait: take it
            # and yield once (cancellation is checked first, so nothing taken is lost).
            await trio.lowlevel.checkpoint_if_cancelled()
            batch = endpoint.receive_nowait()
            if batch:
                await trio.lowlevel.cancel_shielded_checkpoint()
            else:
                with trio.move_on_at(wake):
                    batch = await endpoint.receive_batch()
            effects: list[Any] = []
            now = trio.current_time()
            wall = self.clock()
            self.stats.received += len(batch)
            if batch:
                self.stats.batches += 1
                if len(batch) > self.client_per_batch:
                    batch = self._fair_share(batch, now)
            for rec in batch:
                payload = rec.payload
                if is_control(payload):
                    cmd = self.accept_control(payload, rec.addr)
                    if cmd is not None:
                        await self._obey(cmd, now)
                    continue
                if is_telemetry(payload):
                    self.stats.drops["telemetry_to_node"] += 1
                    continue
                effects.extend(self._step(rec, now, wall))
            if now >= self._demoted_next:
                self._trusted_dirty = True
            if now >= self._client_second:
                self._client_requests.clear()
                self._client_second = now + 1.0
            if self._trusted_dirty and now >= self._trusted_due:
                self._set_trusted_sources(now)
                self._trusted_due = now + TRUSTED_UPDATE_INTERVAL_S
            if runner.take_due(now):  # the timer contract (bft/driver.py)
                effects.extend(replica.tick(now, wall))
            if effects:
                await self._carry_out(effects)
            if self.telemetry is not None and now >= self.telemetry.next_due():
                self._telemetry_out.extend(self.telemetry.poll(now, self._telemetry_status))
            if self._telemetry_out:
                await self._send_telemetry()
            if self.metrics is not None and now >= self._metrics_due:
                self._metrics_due = now + 1.0
                drops = dict(replica.drops)
                drops.update(self.stats.drops)
                core = self.core
                assert core is not None
                self.metrics.refresh(drops, self.verifier.statistics().get("verified", 0),
                                     replica.view, core.primary(), core.last_executed,
                                     core.stable_seq)

    def _set_trusted_sources(self, now: float = -math.inf) -> None:
        """Steer the replicas, the monitor and the clients' verified addresses (the most
        recently verified first, as many as one program holds) to the trusted socket."""
        assert self.endpoint is not None
        self._trusted_dirty = False
        self._demoted = {c: t for c, t in self._demoted.items() if t > now}
        self._demoted_next = min(self._demoted.values(), default=math.inf)
        sources = [a for i, a in self._replica_addr.items() if i != self.id]
        if self.config.monitor is not None:
            sources.append(self.config.monitor)
        sources.extend(a for c, a in reversed(list(self.client_addrs.items()))
                       if c not in self._demoted)
        try:
            self.endpoint.set_trusted_sources(sources)
        except (OSError, ValueError) as exc:  # the old program stays
            self.stats.drops["trusted_update_refused"] += 1
            self.log.warning("trusted sources not updated", extra={"fields": {
                "event": "trusted_update_refused", "why": str(exc)}})

    def _demote(self, client: int, now: float) -> None:
        """Steer `client` with the strangers for `CLIENT_DEMOTION_S` (from the next re-steer)."""
        self._demoted[client] = now + CLIENT_DEMOTION_S
        self._trusted_dirty = True

    def _fair_share(self, batch: list[Any], now: float) -> list[Any]:
        """The messages of `batch` the node takes (issue 21, Aardvark's fair queuing, by
        source): every message of a replica (its sender id, from its configured address),
        every control command (the ControlGate bounds their cost), at most
        `client_per_batch` requests of each client id from its verified address, and at
        most `unknown_per_batch` from anyone else (another address, or a replica's or
        client's id from an address not theirs). The rest are dropped before they cost a
        decode or a signature check, and counted (`shed_client_share`,
        `shed_unknown_source`). So a flood from unknown sources, or from a client with a
        valid key, costs at most its share of each batch in checks, and replicas are never
        shed. What is taken keeps its order in the batch: the whole batch is handled in one
        pass, so every client gets its places whatever the order (round-robin would take
        the same set); moving the requests after the replicas' messages made the primary's
        batches smaller (benchmarks/RESULTS.md, "What the defences cost"). A client that
        had requests shed is no longer trusted for `CLIENT_DEMOTION_S` (the kernel steers
        it with the strangers, see `_set_trusted_sources`)."""
        out = []
        budget = self.unknown_per_batch
        cap = self.client_per_batch
        n = self._n
        replica_addr = self._replica_addr
        client_addrs = self.client_addrs
        taken: dict[int, int] = {}
        shed = shed_client = 0
        for rec in batch:
            sender = rec.sender_id
            if sender < n:
                if replica_addr.get(sender) == rec.addr:
                    out.append(rec)
                    continue
            elif sender >= CLIENT_SENDER_BASE and client_addrs.get(
                    sender - CLIENT_SENDER_BASE) == rec.addr:
                k = taken.get(sender, 0)
                if k < cap:
                    taken[sender] = k + 1
                    out.append(rec)
                else:
                    shed_client += 1
                    if k == cap:
                        taken[sender] = k + 1
                        self._demote(sender - CLIENT_SENDER_BASE, now)
                continue
            if is_control(rec.payload):
                out.append(rec)
            elif budget > 0:
                budget -= 1
                out.append(rec)
            else:
                shed += 1
        if shed:
            self.stats.drops["shed_unknown_source"] += shed
        if shed_client:
            self.stats.drops["shed_client_share"] += shed_client
        return out

    def _step(self, rec: Any, now: float, wall: Interval) -> list[Any]:
        assert self.replica is not None
        # Cheapest checks first (issue 21, Aardvark): a datagram framed as from replica j
        # comes from j's configured address, or it is a forgery, dropped before it costs a
        # decode or a signature check.
        sender = rec.sender_id
        from_replica = sender < self._n
        if from_replica and self._replica_addr.get(sender) != rec.addr:
            self.stats.drops["replica_address_mismatch"] += 1
            return []
        try:
            msg = codec.decode_untrusted(rec.payload, self.config.limits)
        except MalformedMessage:
            self.stats.drops["malformed"] += 1
            return []
        if not from_replica and not (isinstance(msg, Signed) and type(msg.statement) is Request):
            # only replicas send replica messages (those they relay too: PRE-PREPAREs, proofs,
            # certificates): from anyone else such a message is dropped unverified
            self.stats.drops["replica_message_from_outsider"] += 1
            return []
        if (from_replica and isinstance(msg, Signed) and type(msg.statement) in _UNRELAYED
                and msg.statement.replica != sender):  # type: ignore[attr-defined]
            # a replica sends these only in its own name (nobody relays them): one naming
            # another replica is a replay aimed at that replica's peers, dropped unverified
            self.stats.drops["unrelayed_message_relayed"] += 1
            return []
        if isinstance(msg, Signed) and isinstance(msg.statement, Request):
            # Replies go to the address of the client's freshest request whose signature
            # verified (issue 21, item 7): numbered above every request of that client
            # verified here before, and not below its last executed one, which a restarted
            # node recovers (that one itself counts: a backup may execute it from the
            # primary's batch before the client's own datagram comes). So a replayed older
            # request, from anywhere, moves nothing and costs no check here; nor does a
            # retransmission. A fresh request is checked here, once: the replica shares the
            # verifier, which answers its check of this very object from memory (a cache
            # hit, or the failure it just found), one Ed25519 check in all. A request
            # numbered too far ahead to be executed (bft/normal.py) teaches nothing, so it
            # cannot pin the address either.
            # A request a replica relays (4.1: a backup forwards a retransmission to the
            # primary) comes from that replica's address: it says nothing of the client's.
            req = msg.statement
            client = req.client
            if not from_replica and self.client_addrs.get(client) == rec.addr:
                count = self._client_requests.get(client, 0) + 1
                self._client_requests[client] = count
                if count == CLIENT_MAX_REQUESTS_PER_S:  # no correct client sends that many
                    self._demote(client, now)
            core = self.core
            executed = core.client_table.get(client) if core is not None else None
            latest = self.client_latest.get(client, -1)
            if (not from_replica and core is not None and req.timestamp > latest
                    and (client, latest) in core.pending
                    and (executed is None or executed[0] < latest)):
                # One outstanding request per client (issue 21, Aardvark 4.2): a correct
                # client sends t+1 only after t completed. While its freshest verified
                # request is still pending here, a newer one would only queue behind it:
                # dropped before any check (a batch that carries it is checked as ever,
                # and the primary takes it once it has proposed the earlier one).
                self.stats.drops["client_outstanding"] += 1
                return []
            if (req.timestamp > latest
                    and (executed is None or req.timestamp >= executed[0])
                    and rec.addr not in self._peer_of_addr
                    and rec.sender_id == CLIENT_SENDER_BASE + client
                    and req.timestamp <= wall.earliest_us + self._fresh_ahead_us
                    and self.verifier.verify(msg)):
                self.client_latest[client] = req.timestamp
                if self.client_addrs.get(client) != rec.addr:
                    self.client_addrs.pop(client, None)  # (the newest last: see above)
                    self.client_addrs[client] = rec.addr
                    self._trusted_dirty = True
        self.stats.steps += 1
        return self.replica.receive(msg, now, wall)

    # -- control (admin-signed commands from the dashboard or `bft ctl`)

    def accept_control(self, payload: bytes, source: Any = None) -> Any:
        """The control command in `payload` (from the address `source`) to obey now,
        or None (counted by the gate, which also bounds the signature checks it does:
        see `ControlGate`).

        The command's seq_no is written to the state directory before it is
        obeyed, so a restarted node never obeys it again."""
        cmd = self.control.accept(payload, self.verifier, time.time_ns() // 1000, source)
        if cmd is not None:
            try:
                self.control_seq_no_file.parent.mkdir(parents=True, exist_ok=True)
                tmp = self.control_seq_no_file.with_name(self.control_seq_no_file.name + ".tmp")
                with open(tmp, "w") as out:
                    out.write(str(cmd.seq_no))
                    out.flush()
                    if self.fsync != "never":
                        os.fsync(out.fileno())
                os.replace(tmp, self.control_seq_no_file)
            except OSError as exc:  # obeyed anyway: the command's age still bounds a replay
                self.log.warning("control seq_no not saved", extra={"fields": {
                    "event": "control_seq_no_not_saved", "error": str(exc)}})
        return cmd

    async def _obey(self, cmd: Any, now: float) -> None:
        action = cmd.action
        self.log.warning("control", extra={"fields": {"event": "control", "action": cmd.describe()}})
        obeyed = Event("control", {"action": cmd.describe()})
        if self.on_effect is not None:  # `bft node --events` (and so `bft up`) print it
            self.on_effect(obeyed)
        if self.telemetry is not None:
            self._telemetry_out.extend(self.telemetry.observe(obeyed, now))
        if isinstance(action, Crash):
            self.log.warning("crash", extra={"fields": {"event": "crash"}})
            for h in self.log.handlers:
                h.flush()
            os._exit(137)  # no clean close: recovery goes through the WAL
        if not any(ext.obey(self, action, now) for ext in self.extensions):
            # pause, cut and behaviours are the adversary's (`bft node --adversary`)
            self.stats.drops["control_unsupported"] += 1
            self.log.warning("control unsupported", extra={"fields": {
                "event": "control_unsupported", "action": cmd.describe()}})

    # -- telemetry

    def _telemetry_status(self) -> dict[str, Any]:
        assert self.replica is not None
        st = self.replica.statistics()
        drops: Counter[str] = Counter(st.get("drops", {}))
        drops.update(self.stats.drops)
        if self.endpoint is not None:
            tstats = self.endpoint.statistics()
            drops.update({k: v for k, v in dict(tstats.get("drops", {})).items()
                          if isinstance(v, int)})
        drops.update({f"control_{k}": v for k, v in self.control.statistics().get("drops", {}).items()
                      if isinstance(v, int)})
        now = trio.current_time()
        extra: dict[str, Any] = {"behaviour": "", "paused": False}
        for ext in self.extensions:
            extra.update(ext.status(now))
            drops.update(ext.drops())
        suspected = {p: phi for p, phi in self.replica.timeout.suspected(now).items()
                     if isinstance(p, int)}
        st.update(msgs_in=self.stats.received, msgs_out=self.stats.sent, drops=dict(drops),
                  suspected=suspected, **extra)
        return st

    async def _send_telemetry(self) -> None:
        assert self.endpoint is not None
        out, self._telemetry_out = self._telemetry_out, []
        monitor = self.config.monitor
        if monitor is None:
            return
        for payload in out:
            self.endpoint.send_to_nowait(monitor, payload)
        if self.endpoint.unsent_datagrams:
            await self.endpoint.flush()

    # -- effects

    def _encode(self, message: Any) -> bytes:
        key = id(message)
        data = self._encoded.get(key)
        if data is None:
            data = self._encoded[key] = codec.encode(message)
        return data

    async def _carry_out(self, effects: list[Any]) -> None:
        """Carry out effects through the runner (bft/driver.py: persist, one sync, then send
        and reply in order), sending through `_NodeIO`.

        Sending does not wait: no scheduler pass per datagram (what does not fit the kernel's
        send buffer waits in the endpoint's queue); this awaits only when the kernel's send
        buffer was full (until the queued datagrams are sent)."""
        endpoint = self.endpoint
        assert endpoint is not None and self.runner is not None
        self._encoded.clear()
        try:
            self.runner.run(effects)
        finally:
            self._encoded.clear()
        if endpoint.unsent_datagrams:
            await endpoint.flush()  # the kernel's send buffer was full: wait for room

    def _observe(self, e: Any) -> None:
        if self.on_effect is not None:
            self.on_effect(e)
        if self.telemetry is not None:
            self._telemetry_out.extend(self.telemetry.observe(e, trio.current_time()))
        if self.metrics is not None:
            self.metrics.observe(e, self.replica, trio.current_time())
        if isinstance(e, Executed):
            self.stats.commits += 1
            self.stats.executed_requests += len(e.batch.requests)
            if e.seq % 100 == 0 or len(e.batch.requests) == 0:
                self.log.info("executed", extra={"fields": {
                    "event": "executed", "seq": e.seq, "view": e.view,
                    "requests": len(e.batch.requests)}})
        elif isinstance(e, Event):
            if e.kind == "view_change_start":
                self.stats.view_changes += 1
            self.log.info(e.kind, extra={"fields": {"event": e.kind, **e.fields}})
        elif isinstance(e, Evidence):
            self.log.warning("evidence", extra={"fields": {
                "event": "evidence", "culprit": e.culprit, "kind": e.kind}})

    # -- observability

    def summary(self) -> dict[str, Any]:
        r = self.replica
        out: dict[str, Any] = {
            "received": self.stats.received, "sent": self.stats.sent,
            "commits": self.stats.commits, "executed_requests": self.stats.executed_requests,
            "drops": dict(self.stats.drops),
        }
        for ext in self.extensions:  # (datagrams an extension dropped: the adversary's cuts)
            for reason, count in ext.drops().items():
                out["drops"][reason] = out["drops"].get(reason, 0) + count
        if r is not None:
            out.update(view=r.view, last_executed=r.last_executed, stable_seq=r.stable_seq,
                       state_digest=r.app.digest().hex(), replica_drops=dict(r.drops),
                       # the core replica's own (an adversary wrapper keeps its own `counters`)
                       replica_counters=dict(self.core.counters if self.core else {}))
        if self.endpoint is not None and not self.endpoint.closed:
            out["transport"] = self.endpoint.statistics()
        return out

    def state_digest(self) -> bytes:
        assert self.replica is not None
        return self.replica.app.digest()


async def serve_until_signal(node: Node, announce: Callable[[], None] | None = None) -> None:
    """Run `node` until SIGINT or SIGTERM, then shut down cleanly (`bft node`).

    `announce` runs once the signals are caught, so whoever waits for it may signal at once
    (a SIGTERM before that would kill the process, not stop the node cleanly)."""
    with trio.open_signal_receiver(signal.SIGINT, signal.SIGTERM) as signals:
        if announce is not None:
            announce()
        async with trio.open_nursery() as nursery:
            nursery.start_soon(node.run)
            async for sig in signals:
                node.log.info("signal", extra={"fields": {"event": "signal", "signal": int(sig)}})
                nursery.cancel_scope.cancel()
                break


# ---------------------------------------------------------------------- client


class ClientError(Exception):
    """A client operation did not complete (timeout, no f+1 matching replies)."""


def _client_host(host: str) -> str:
    """Where a client socket binds by default, given node 0's `host`: `host` itself if it
    is an address of this machine (a socket can bind it), else the wildcard address
    ("0.0.0.0" or "::") of its family, which sends to `host` from whatever address routes
    there."""
    try:
        family = (socket.AF_INET6 if ipaddress.ip_address(host.split("%", 1)[0]).version == 6
                  else socket.AF_INET)
        sockaddr: Any = (host, 0)
    except ValueError:  # a host name: the family it resolves to first, as a node's does
        try:
            family, _, _, _, sockaddr = socket.getaddrinfo(host, 0, type=socket.SOCK_DGRAM)[0]
        except (OSError, IndexError):
            return host  # the endpoint names the host it cannot resolve
    try:
        with socket.socket(family, socket.SOCK_DGRAM) as probe:
            probe.bind(sockaddr)
        return host
    except OSError:
        return "::" if family == socket.AF_INET6 else "0.0.0.0"


class ClientMux:
    """One UDP socket, and one task receiving on it, for many `ClusterClient`s.

    For load generators and tools that run many clients in one process: each client
    keeps its own identity (client id, keys, request numbers, pure `bft.client.Client`)
    but they share this socket. Every request leaves it framed with its client's
    sender id (`CLIENT_SENDER_BASE + client id`, as from a client's own socket), and
    the replicas reply to it (they reply to the address of a client's latest request,
    per client id). Run `run()` in a nursery while the clients call; it receives,
    routes each reply to the client whose id the reply's bytes name, fires the
    clients' retransmission timers and wakes a client's `call` once its request
    completed or failed.

    Guarantees: a reply reaches only the `Client` of the id it names, and that
    `Client` accepts it only after its own checks (it names that client and its
    outstanding request, and is authentic), so a client completes only on f+1
    matching authentic replies to its own request, however many clients share the
    socket. Replies that cannot count (for an idle client, another request number or
    another request, a replica already counted: most of the n - (f+1) replies that come
    after a request completed) are dropped before they are decoded
    (`bft.client.peek_reply_untrusted`, `Client.prescreen`) and counted in that client's
    statistics; bytes that do not look like a reply, or name no client of this socket,
    are counted in `statistics()["drops"]`.
    """

    def __init__(self, config: ClusterConfig, *, host: str | None = None,
                 sender_id: int = CLIENT_SENDER_BASE) -> None:
        self.config = config
        peers = {n.id: n.address for n in config.nodes}
        # by default node 0's host if it is an address of this machine (a local cluster),
        # else the wildcard of its family: a client may run on any host, not only on node 0's
        self.endpoint = UdpEndpoint(sender_id, host or _client_host(config.nodes[0].host), 0,
                                    peers=peers,
                                    max_datagram_bytes=config.max_datagram_bytes,
                                    max_message_bytes=config.limits.max_message_bytes)
        self._clients: dict[int, ClusterClient] = {}
        # (at, tie-breaker, client): at most one live entry per client (`ClusterClient._armed`)
        self._timers: list[tuple[float, int, ClusterClient]] = []
        self._timer_seq = 0
        self._flush_lock = trio.Lock()
        self._waiting: trio.CancelScope | None = None  # bounds the wait for datagrams
        self._drops: Counter[str] = Counter()
        self._running = False

    @property
    def running(self) -> bool:
        """True while `run()` receives for the clients."""
        return self._running

    def attach(self, client: ClusterClient) -> None:
        """Route replies naming `client.id` to `client` (ValueError if another has that id)."""
        if self._clients.get(client.id, client) is not client:
            raise ValueError(f"client {client.id} already uses this socket")
        self._clients[client.id] = client

    def detach(self, client: ClusterClient) -> None:
        """Stop routing replies to `client` (replies naming its id are then dropped)."""
        if self._clients.get(client.id) is client:
            del self._clients[client.id]

    def close(self) -> None:
        """Close the socket; `run()` returns and waiting calls fail. Idempotent."""
        self.endpoint.close()

    async def run(self, *, task_status: Any = trio.TASK_STATUS_IGNORED) -> None:
        """Receive and route replies, and fire timers, until cancelled or closed. Calls
        still waiting when it ends fail with ClientError."""
        if self._running:
            raise RuntimeError("this ClientMux is already running")
        self._running = True
        try:
            task_status.started()
            while True:
                await self._pump()
        except trio.ClosedResourceError:
            pass  # closed: nothing more to receive
        finally:
            self._running = False
            for client in list(self._clients.values()):
                client._stop("the shared client socket stopped")

    def statistics(self) -> dict[str, Any]:
        """Clients attached, `drops` by reason (not a reply, unknown client, malformed),
        and the socket's `transport` counters (see `UdpEndpoint.statistics`)."""
        return {"clients": len(self._clients), "drops": dict(self._drops),
                "transport": self.endpoint.statistics()}

    async def flush(self) -> None:
        """Send what the kernel's send buffer could not take yet (one task at a time)."""
        async with self._flush_lock:
            await self.endpoint.flush()

    async def _pump(self) -> None:
        """One round: take what is there (or wait for it, at most until the next timer),
        route it, fire due timers, flush. A checkpoint."""
        endpoint = self.endpoint
        await trio.lowlevel.checkpoint_if_cancelled()
        batch = endpoint.receive_nowait()
        if batch:
            await trio.lowlevel.cancel_shielded_checkpoint()
        else:
            timers = self._timers
            # a timer armed meanwhile (a client's call) moves this deadline earlier (`_arm`)
            scope = self._waiting = trio.CancelScope(deadline=timers[0][0] if timers else math.inf)
            try:
                with scope:
                    batch = await endpoint.receive_batch()
            finally:
                self._waiting = None
        now = trio.current_time()
        route = self._route_untrusted
        for rec in batch:
            route(rec.payload, now)
        timers = self._timers
        if timers and timers[0][0] <= now:
            self._fire_timers(now)
        if endpoint.unsent_datagrams:
            await self.flush()

    def _route_untrusted(self, payload: bytes, now: float) -> None:
        claim = peek_reply_untrusted(payload)
        if claim is None:
            # every well-formed reply has the shape the peek reads: this is none (a reply of
            # the format before agreed_us, from a node of an older version, is named)
            self._drops["old_reply_format" if is_old_reply_untrusted(payload)
                        else "not_a_reply"] += 1
            return
        owner = self._clients.get(claim[0])
        if owner is None:
            self._drops["unknown_client"] += 1
            return
        client = owner.client
        if not client.prescreen(claim[1], claim[2], claim[3]):
            return  # could not count: dropped (and counted) before decoding
        try:
            msg = codec.decode_untrusted(payload, self.config.limits)
        except MalformedMessage:
            self._drops["malformed"] += 1
            return
        owner._take(client.receive(msg, now))

    def _arm(self, client: ClusterClient, at: float) -> None:
        """Make sure `client` gets a `_fire_timers` look at or before `at`."""
        armed = client._armed
        if armed is None or at < armed:  # a later timer is re-armed when this one fires
            client._armed = at
            self._timer_seq += 1
            heapq.heappush(self._timers, (at, self._timer_seq, client))
            waiting = self._waiting
            if waiting is not None and at < waiting.deadline:
                waiting.deadline = at  # the receiving task waits until then at most

    def _fire_timers(self, now: float) -> None:
        timers = self._timers
        while timers and timers[0][0] <= now:
            at, _, client = heapq.heappop(timers)
            if client._armed != at:
                continue  # superseded by an earlier entry that already fired
            client._armed = None
            if client._timer <= now:
                client._timer = math.inf
                client._take(client.client.tick(now))
            elif client._timer != math.inf:
                self._arm(client, client._timer)


class ClusterClient:
    """Async client of a cluster: `await client.call(op)` returns the agreed result.

    Replies are accepted MAC'd (`bft.auth`, keys derived from `signer` and `verifier`
    when they are Ed25519) or signed. With `send_to_all` (the default) every request goes
    to every replica, so every backup watches the primary execute it; otherwise requests
    go to the primary, except the first, which introduces the client to every replica.

    Without `mux` the client has a socket of its own (bound on `host`) and `call`
    receives on it itself. With `mux` it shares that `ClientMux`'s socket with other
    clients, and `mux.run()` must be running while it calls. Either way, datagrams
    are sent without a scheduler pass each, replies that cannot count are dropped
    before they are decoded, and `call` does not return before f+1 authentic replies
    agreed (or raises ClientError).
    """

    def __init__(self, config: ClusterConfig, client_id: int, *, signer: Any, verifier: Any,
                 host: str | None = None, first_timestamp: int | None = None,
                 send_to_all: bool = True, mux: ClientMux | None = None) -> None:
        self.config = config
        self.id = client_id
        self._sender_id = CLIENT_SENDER_BASE + client_id
        self._owns_mux = mux is None
        self._mux = mux if mux is not None else ClientMux(config, host=host,
                                                          sender_id=self._sender_id)
        self.endpoint = self._mux.endpoint
        if first_timestamp is None:
            # a logical clock seeded from the time of day so a restarted client moves on
            first_timestamp = time.time_ns() // 1000
        self.client = Client(config, client_id, signer, verifier, first_timestamp=first_timestamp,
                             reply_auth=reply_auth_for(signer, verifier), send_to_all=send_to_all)
        self._peer_ids = [n.id for n in config.nodes]
        self._timer = math.inf  # the pure client's ClientTimer
        self._armed: float | None = None  # this client's live entry in the mux's timer heap
        self._introduced = False
        self._encoded: tuple[Signed, bytes] | None = None
        self._done: Completed | Failed | None = None
        #: The agreed time (microseconds) the last completed call's batch executed at, as
        #: f+1 matching replies report it (`Completed.agreed_us`); None before the first.
        self.last_agreed_us: int | None = None
        self._waiter: Any = None  # the task parked in `call` (shared socket)
        self._mux.attach(self)

    def close(self) -> None:
        """Stop using the socket (and close it when it is this client's own)."""
        self._mux.detach(self)
        self._stop("the client was closed")
        if self._owns_mux:
            self._mux.close()

    async def __aenter__(self) -> ClusterClient:
        return self

    async def __aexit__(self, *exc: object) -> None:
        self.close()

    def _take(self, effects: list[Any]) -> None:
        """Carry out the pure client's effects: send (without waiting), arm the timer,
        and on Completed / Failed wake the waiting `call`."""
        for e in effects:
            if isinstance(e, ClientTimer):
                self._timer = e.at
                self._mux._arm(self, e.at)
            elif isinstance(e, (SendTo, SendAll)):
                encoded = self._encoded
                if encoded is None or encoded[0] is not e.request:
                    encoded = self._encoded = (e.request, codec.encode(e.request))
                send, data, sender = self._mux.endpoint.send_nowait, encoded[1], self._sender_id
                if isinstance(e, SendTo) and self._introduced:
                    send(e.replica, data, sender_id=sender)
                else:
                    # the first request goes to every replica: that is how backups learn this
                    # client's address (they reply straight to it), instead of after a timeout
                    self._introduced = True
                    for peer in self._peer_ids:
                        send(peer, data, sender_id=sender)
            elif isinstance(e, (Completed, Failed)):
                self._done = e
                self._timer = math.inf
                self._encoded = None
                waiter = self._waiter
                if waiter is not None:
                    self._waiter = None
                    trio.lowlevel.reschedule(waiter)

    def _stop(self, reason: str) -> None:
        """Fail a call waiting on the shared socket (it stopped, or this client closed)."""
        if self._waiter is not None:
            timestamp = self.client.abandon()
            self._timer = math.inf
            self._take([Failed(timestamp or 0, reason)])

    def _abort(self, _raise_cancel: Any) -> Any:
        self._waiter = None
        return trio.lowlevel.Abort.SUCCEEDED

    async def call(self, op: bytes, timeout_s: float = 10.0) -> bytes:
        """Submit `op`, wait for f+1 matching replies; ClientError after `timeout_s`.

        If the call is cancelled, its request is abandoned (`Client.abandon`): the
        client can call again at once, with the next request number."""
        mux = self._mux
        await trio.lowlevel.checkpoint_if_cancelled()
        if not self._owns_mux and not mux.running:
            raise RuntimeError(f"client {self.id}: the shared ClientMux is not running "
                               f"(start `mux.run` in a nursery first)")
        now = trio.current_time()
        effects = self.client.submit(op, now, deadline=now + timeout_s)  # ClientBusy: in use
        self._done = None
        try:
            self._take(effects)
            if mux.endpoint.unsent_datagrams:
                await mux.flush()
            if self._owns_mux:
                while self._done is None:
                    await mux._pump()
            elif self._done is None:
                self._waiter = trio.lowlevel.current_task()
                await trio.lowlevel.wait_task_rescheduled(self._abort)
        except BaseException:
            if self._done is None:
                self._waiter = None
                self._timer = math.inf
                self.client.abandon()
            raise
        done, self._done = self._done, None
        if isinstance(done, Failed):
            raise ClientError(
                f"no f+1 = {self.config.f + 1} matching replies within {timeout_s} s ({done.reason})")
        assert done is not None
        self.last_agreed_us = done.agreed_us
        return done.result


def default_client_timestamp_file(state_dir: Path, client_id: int) -> Path:
    return state_dir / f"client-{client_id}.last"


def client_lock_file(state_dir: Path, client_id: int) -> Path:
    return state_dir / f"client-{client_id}.lock"


def _read_control_seq_no(path: Path) -> int:
    """The last control seq_no a node obeyed (0 when missing or unreadable)."""
    try:
        value = int(path.read_text().strip())
    except (OSError, ValueError):
        return 0
    return value if 0 <= value < 2**63 else 0


class ClientIdClaim:
    """This process's exclusive use of one client id, and the request number to start at.

    Two processes signing requests as one client id reach the same request numbers,
    and each replica executes only one request per number (issue 18, 1e). A claim
    holds an exclusive `flock` on `client-<id>.lock` in the state directory until
    `release()` (or the end of a `with` block, or the end of the process: the kernel
    drops the lock with the descriptor, so a crash never leaves an id taken; a claim
    merely forgotten holds its id until then).
    The lock is on a file of its own that is never replaced: the timestamp file
    `client-<id>.last` is replaced on every claim, and a lock on a replaced file
    would guard nothing.

    `first_timestamp` is above every request number any earlier claim of this id
    (in this state directory) handed out, and above the time of day in
    microseconds; a million numbers above it are reserved for this claim.
    Without a state directory (`state_dir` None) nothing is locked or stored and
    `first_timestamp` is the time of day in microseconds.
    """

    def __init__(self, client_id: int, first_timestamp: int, fd: int | None) -> None:
        self.client_id = client_id
        self.first_timestamp = first_timestamp
        self._fd = fd

    @property
    def held(self) -> bool:
        """True while this claim holds its lock."""
        return self._fd is not None

    def release(self) -> None:
        """Let other processes use the client id (idempotent)."""
        fd, self._fd = self._fd, None
        if fd is not None:
            os.close(fd)  # closing the only descriptor of the open file drops the flock

    def __enter__(self) -> ClientIdClaim:
        return self

    def __exit__(self, *exc: object) -> None:
        self.release()

    def __repr__(self) -> str:
        return f"ClientIdClaim({self.client_id}, held={self.held})"


def claim_client_id(state_dir: Path | None, client_id: int) -> ClientIdClaim:
    """Claim `client_id` for this process (see `ClientIdClaim`).

    Raises `ClientIdInUse` at once (no waiting) if another claim holds it, in this
    process or another; OSError if the state directory cannot hold the lock and
    the timestamp file."""
    now_us = time.time_ns() // 1000
    if state_dir is None:
        return ClientIdClaim(client_id, now_us, None)
    state_dir = Path(state_dir)
    state_dir.mkdir(parents=True, exist_ok=True)
    lock_path = client_lock_file(state_dir, client_id)
    fd = os.open(lock_path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        os.close(fd)
        raise ClientIdInUse(
            f"client id {client_id} is in use by another process (it holds {lock_path}); "
            f"pass --id with another client id of the config") from None
    except BaseException:
        os.close(fd)
        raise
    try:
        path = default_client_timestamp_file(state_dir, client_id)
        try:
            last = int(path.read_text().strip())
        except (OSError, ValueError):
            last = 0
        start = max(now_us, last + 1)
        # written whole or not at all (a crash leaves the old number), through a temporary
        # file of this process's own
        tmp = path.with_name(f"{path.name}.{os.getpid()}.tmp")
        tmp.write_text(str(start + 1_000_000))  # reserve a million request numbers
        os.replace(tmp, path)
    except BaseException:
        os.close(fd)
        raise
    return ClientIdClaim(client_id, start, fd)


def claim_free_client_ids(state_dir: Path | None, client_ids: list[int],
                          count: int = 1) -> list[ClientIdClaim]:
    """Claims of the first `count` ids of `client_ids` that no other claim holds, in
    order (fewer if fewer are free). Raises `ClientIdInUse` if none is free."""
    claims: list[ClientIdClaim] = []
    try:
        for client_id in client_ids:
            if len(claims) == count:
                break
            try:
                claims.append(claim_client_id(state_dir, client_id))
            except ClientIdInUse:
                continue
    except BaseException:
        for claim in claims:
            claim.release()
        raise
    if not claims:
        raise ClientIdInUse(
            f"every client id ({', '.join(map(str, client_ids))}) is in use by another "
            f"process; stop one, or add clients to the config")
    return claims
