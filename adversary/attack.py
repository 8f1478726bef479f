"""`bft attack`: the attacks of issue 21 as a toolkit, for anyone's test suite.

    bft attack CONFIG --kind KIND [--rate R] [--duration S] [--target N] [--seed N]

One process sends datagrams at the nodes of CONFIG, paced to `--rate` datagrams a
second (at most `MAX_RATE`; as fast as it can when it cannot keep up) for `--duration`
seconds (at most `MAX_DURATION_S`), so an attack is bounded in count (rate x
duration) and in time. It prints its progress once a second and a summary at the end:
datagrams sent by kind. Kinds:

* `sigflood`: well-formed datagrams signed with random keys in the names of the
  replicas (STATUS, framed as from the replica) and of the clients (Requests numbered
  just ahead of now, so that they look fresh): each one a node verifies costs it an
  Ed25519 check that fails.
* `control`: admin control commands (pause) with fresh seq numbers, signed with a
  random key: every cheap check passes, the signature does not.
* `fragments`: first fragments of messages that never complete (each starts as a
  signed Request, so that it passes a node's kernel filter), from `--sources` source
  ports (default 200): they fill the reassembly budget of strangers.
* `malformed`: corrupt frames (bad CRC32C, truncated, bad magic) and frames whose
  payload is not a message (random bytes, a message cut short).
* `replay`: acts as a legitimate client once, with a client key of the config's key
  directory, capturing its signed request and the replicas' replies; then replays
  them (the request re-framed under fresh message ids, and as the very datagram;
  the replies framed as from the replicas that sent them).
* `status`: STATUS messages claiming to be far behind and FETCH-STATE repeats, in the
  name of replica `--as-replica` (default: the last replica not targeted). Signed with
  that replica's key when the key directory has it, else with a random key. Sent from
  the replica's configured address when this process can bind it (the replica is not
  running: the attacker plays the faulty replica), else from a port of its own, where
  the nodes drop them before any signature check.
* `clientflood`: a faulty client WITH a valid key: a free client id whose private key
  the key directory has (claimed for the attack's duration, as `bft client` does) sends
  validly signed read requests from one port, each to every targeted node: three of
  four freshly numbered, the fourth a retransmission of the one before. Each fresh one
  passes every check; nodes take at most their per-client share of each batch
  (`shed_client_share`, bft/node.py `Node._fair_share`).

Safety of the tool itself: it attacks only loopback addresses (127.0.0.0/8 and ::1):
a node address of the config that is anything else is refused with an error before
anything is sent (`AttackRefused`). Datagrams are built with the project's own
framing (`transport.frame.encode_frames`), codec (`bft.codec.encode`) and signers.

`run_attack(spec, config, ...)` is the same attack as a Trio function (for tests and
`bft up --scenario` entries `[[attack]]`, adversary/scenario.py).
"""

from __future__ import annotations

import argparse
import errno
import ipaddress
import math
import random
import socket
import sys
import time
from collections import Counter
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import trio

from bft import codec
from bft.config import CLIENT_SENDER_BASE, ClusterConfig
from bft.crypto import Signer, private_key_from_seed
from bft.errors import ConfigError
from bft.messages import FetchState, Request, Status
from transport.frame import MAX_MESSAGE_ID, encode_frames

__all__ = ["DEFAULT_DURATION_S", "DEFAULT_RATE", "KINDS", "MAX_DURATION_S", "MAX_RATE",
           "MAX_SOURCES", "AttackRefused", "AttackSpec", "AttackSummary", "add_attack_arguments",
           "loopback_targets", "make_spec", "run_attack", "run_attack_command"]

KINDS = ("sigflood", "control", "fragments", "malformed", "replay", "status", "clientflood")
#: Datagrams per second at most (one process reaches less than this on loopback).
MAX_RATE = 200_000.0
DEFAULT_RATE = 1000.0
#: Seconds at most; the default when none is given.
MAX_DURATION_S = 600.0
DEFAULT_DURATION_S = 10.0
#: Source sockets at most (`fragments` uses many; the other kinds one).
MAX_SOURCES = 1000
DEFAULT_FRAGMENT_SOURCES = 200
#: Datagrams sent between two scheduler passes at most.
MAX_BURST = 256
#: The frame sender id of forged control commands (as `bft ctl` sends them).
CONTROL_SENDER_ID = 0xFFFF_FFFF

Address = tuple[Any, ...]


class AttackRefused(Exception):
    """An attack this tool will not send (a target outside loopback) or cannot send (no
    client key for `replay`, no reply from the cluster)."""


# --------------------------------------------------------------------------
# What to send, and where
# --------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class AttackSpec:
    """One bounded attack: `kind` at `rate` datagrams/s for `duration_s` seconds, at node
    `target` (None: every node), starting `at_s` seconds into a scenario."""

    kind: str
    rate: float = DEFAULT_RATE
    duration_s: float = DEFAULT_DURATION_S
    target: int | None = None
    seed: int = 0
    at_s: float = 0.0
    sources: int | None = None  # source sockets (default: 200 for fragments, else 1)
    as_replica: int | None = None  # status: whose name (default: the last not targeted)

    @property
    def max_datagrams(self) -> int:
        """The most datagrams this attack sends: rate x duration."""
        return math.ceil(self.rate * self.duration_s)

    def source_count(self) -> int:
        if self.sources is not None:
            return self.sources
        return DEFAULT_FRAGMENT_SOURCES if self.kind == "fragments" else 1

    def to_dict(self) -> dict[str, Any]:
        """The `[[attack]]` table of this attack (scenario files)."""
        out: dict[str, Any] = {"kind": self.kind, "rate": self.rate,
                               "duration": self.duration_s, "at": self.at_s}
        if self.target is not None:
            out["target"] = self.target
        if self.seed:
            out["seed"] = self.seed
        if self.sources is not None:
            out["sources"] = self.sources
        if self.as_replica is not None:
            out["as_replica"] = self.as_replica
        return out

    def check_nodes(self, n: int, file: str | None = None, where: str = "") -> None:
        """ConfigError if `target` or `as_replica` is not a replica of an n-node cluster."""
        for name, value in (("target", self.target), ("as_replica", self.as_replica)):
            if value is not None and not 0 <= value < n:
                raise ConfigError(f"replica {value} is not in 0..{n - 1}", file=file,
                                  field=f"{where}{name}")


def _number(value: Any, what: str, low: float, high: float, *, file: str | None, field: str,
            low_open: bool = False) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value) \
            or value > high or value < low or (low_open and value == low):
        bound = f"{'>' if low_open else '>='} {low:g} and <= {high:g}"
        raise ConfigError(f"{what} must be a number {bound}, got {value!r}", file=file,
                          field=field)
    return float(value)


def _int_or_none(value: Any, low: int, high: int, *, file: str | None, field: str) -> int | None:
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int) or not low <= value <= high:
        raise ConfigError(f"expected an integer in {low}..{high}, got {value!r}", file=file,
                          field=field)
    return value


def make_spec(kind: Any, *, rate: Any = DEFAULT_RATE, duration_s: Any = DEFAULT_DURATION_S,
              target: Any = None, seed: Any = 0, at_s: Any = 0.0, sources: Any = None,
              as_replica: Any = None, file: str | None = None, where: str = "--") -> AttackSpec:
    """A validated AttackSpec; ConfigError naming the field (`where` + name) otherwise:
    an unknown kind, a rate outside (0, MAX_RATE], a duration outside (0, MAX_DURATION_S]."""
    if kind not in KINDS:
        import difflib

        close = difflib.get_close_matches(str(kind), KINDS, n=1)
        raise ConfigError(f"unknown attack kind {kind!r}", file=file, field=f"{where}kind",
                          fix=f"did you mean {close[0]!r}?" if close else
                          f"known: {', '.join(KINDS)}")
    rate_f = _number(rate, "the rate (datagrams per second)", 0, MAX_RATE, file=file,
                     field=f"{where}rate", low_open=True)
    duration_f = _number(duration_s, "the duration (seconds)", 0, MAX_DURATION_S, file=file,
                         field=f"{where}duration", low_open=True)
    at_f = _number(at_s, "the start (seconds)", 0, 86_400, file=file, field=f"{where}at")
    seed_i = _int_or_none(seed, 0, 2**63 - 1, file=file, field=f"{where}seed") or 0
    return AttackSpec(kind, rate_f, duration_f,
                      _int_or_none(target, 0, 2**31, file=file, field=f"{where}target"),
                      seed_i, at_f,
                      _int_or_none(sources, 1, MAX_SOURCES, file=file, field=f"{where}sources"),
                      _int_or_none(as_replica, 0, 2**31, file=file, field=f"{where}as_replica"))


def _loopback_address(host: str, port: int) -> tuple[int, Address] | None:
    """(family, sockaddr) of host:port if every address it names is a loopback address,
    else None."""
    try:
        literal = ipaddress.ip_address(host.split("%", 1)[0])
    except ValueError:
        literal = None
    if literal is not None:
        if not literal.is_loopback:
            return None
        family = socket.AF_INET6 if literal.version == 6 else socket.AF_INET
        return family, (host, port)
    try:
        infos = socket.getaddrinfo(host, port, socket.AF_UNSPEC, socket.SOCK_DGRAM)
    except (socket.gaierror, UnicodeError):
        return None
    if not infos or not all(ipaddress.ip_address(str(i[4][0]).split("%", 1)[0]).is_loopback
                            for i in infos):
        return None
    return infos[0][0], tuple(infos[0][4][:2])


def loopback_targets(config: ClusterConfig, target: int | None) -> list[tuple[int, int, Address]]:
    """(node id, address family, address) of each node attacked: `target`, or every node.

    AttackRefused, naming the node and its address, if any node's address is not a
    loopback address (127.0.0.0/8 or ::1): this tool attacks only a cluster on this
    machine's loopback."""
    nodes = [n for n in config.nodes if target is None or n.id == target]
    if not nodes:
        raise AttackRefused(f"no node {target} in the config (nodes: "
                            f"{', '.join(str(n.id) for n in config.nodes)})")
    out = []
    for n in config.nodes:  # every node: a config that reaches off this machine is refused
        found = _loopback_address(n.host, n.port)
        if found is None:
            raise AttackRefused(
                f"node {n.id}'s address {n.host}:{n.port} is not a loopback address: "
                f"bft attack sends only to 127.0.0.0/8 and ::1 (a cluster on this machine)")
        if n in nodes:
            out.append((n.id, found[0], found[1]))
    return out


# --------------------------------------------------------------------------
# The summary
# --------------------------------------------------------------------------


@dataclass
class AttackSummary:
    """What an attack sent: datagrams by kind, send errors, time taken, notes."""

    kind: str
    targets: list[int]
    sent: Counter[str] = field(default_factory=Counter)
    errors: Counter[str] = field(default_factory=Counter)
    elapsed_s: float = 0.0
    notes: list[str] = field(default_factory=list)

    @property
    def total(self) -> int:
        return sum(self.sent.values())

    def to_dict(self) -> dict[str, Any]:
        return {"kind": self.kind, "targets": self.targets, "sent": dict(self.sent),
                "total": self.total, "errors": dict(self.errors),
                "elapsed_s": round(self.elapsed_s, 3), "notes": list(self.notes)}

    def lines(self) -> list[str]:
        rate = self.total / self.elapsed_s if self.elapsed_s > 0 else 0.0
        out = [f"attack {self.kind}: {self.total} datagrams in {self.elapsed_s:.1f} s "
               f"({rate:.0f}/s) to node{'s' if len(self.targets) != 1 else ''} "
               f"{', '.join(map(str, self.targets))}"]
        out += [f"  {label}: {count}" for label, count in sorted(self.sent.items())]
        if self.errors:
            out.append("  send errors: " + ", ".join(f"{k} {v}" for k, v in
                                                     sorted(self.errors.items())))
        out += [f"  note: {note}" for note in self.notes]
        return out


# --------------------------------------------------------------------------
# Datagram makers, one per kind
# --------------------------------------------------------------------------


def _random_signer(rng: random.Random, kind: str, id: int) -> Signer:
    """A signer in the name of (kind, id) with a random key (not the identity's)."""
    return Signer(kind, id, private_key_from_seed(rng.randbytes(32)))


class _Maker:
    """Makes the i-th datagram of an attack for a node: `make(i, node) -> (label, datagram,
    source index)`. `sockets_at` (if any) are addresses the sockets must bind instead of a
    free port."""

    bind_addresses: list[Address] | None = None

    def __init__(self, spec: AttackSpec, config: ClusterConfig, rng: random.Random) -> None:
        self.spec = spec
        self.config = config
        self.rng = rng
        self.max_datagram = config.max_datagram_bytes
        self.message_id = rng.getrandbits(48)
        self.client_ids = [c.id for c in config.clients] or [0]

    def frame(self, sender: int, payload: bytes) -> bytes:
        """The first datagram of `payload` framed as from `sender` under a fresh message id."""
        self.message_id = (self.message_id + 1) & MAX_MESSAGE_ID
        return encode_frames(sender, self.message_id, payload, self.max_datagram)[0]

    def make(self, i: int, node: int) -> tuple[str, bytes, int]:
        raise NotImplementedError

    def close(self) -> None:
        """Release what the maker holds (after the attack)."""


def _forged(statement: Any, signature: bytes) -> bytes:
    """The encoded Signed of `statement` carrying `signature` (made by another key)."""
    body = codec.encode(statement)
    return codec.encode(codec.new_signed(body, signature, statement, None))


class _SigFlood(_Maker):
    """STATUS in the replicas' names, framed as from them; Requests in the clients' names,
    numbered just ahead of now. Signed with random keys (each a signature that a real key
    made, so that checking it costs a whole Ed25519 verification)."""

    def __init__(self, spec: AttackSpec, config: ClusterConfig, rng: random.Random) -> None:
        super().__init__(spec, config, rng)
        self.replica_sig = {n.id: _random_signer(rng, "replica", n.id).sign(
            Status(0, 0, 0, (), (), 0, n.id)).signature for n in config.nodes}
        op = b"\x00" * 8
        self.client_sig = {c: _random_signer(rng, "client", c).sign(
            Request(op, 1, c)).signature for c in self.client_ids}
        self.op = op
        self.t0_us = time.time_ns() // 1000

    def make(self, i: int, node: int) -> tuple[str, bytes, int]:
        if i % 2 == 0:
            others = [r for r in self.replica_sig if r != node] or [node]
            j = others[(i // 2) % len(others)]
            status = Status(0, 0, i // 2, (), (), 0, j)
            return "status_forged", self.frame(j, _forged(status, self.replica_sig[j])), 0
        c = self.client_ids[(i // 2) % len(self.client_ids)]
        request = Request(self.op, self.t0_us + 1_000_000 + i, c)
        return ("request_forged",
                self.frame(CLIENT_SENDER_BASE + c, _forged(request, self.client_sig[c])), 0)


class _Control(_Maker):
    """Pause commands to the node, fresh seq numbers, signed with a random admin key."""

    def __init__(self, spec: AttackSpec, config: ClusterConfig, rng: random.Random,
                 verifier: Any) -> None:
        super().__init__(spec, config, rng)
        from bft.telemetry import control_cluster_id

        self.cluster = control_cluster_id(config, verifier)
        self.forger = _random_signer(rng, "admin", 0)
        self.signature = self.forger.sign_bytes(b"bft attack")
        self.seq_no = 0

    def make(self, i: int, node: int) -> tuple[str, bytes, int]:
        from bft.telemetry import ControlCommand, Pause, encode_signed

        self.seq_no = max(self.seq_no + 1, time.time_ns() // 1000)
        signature = self.signature

        class _Forger:  # the random key's one signature, on every command (none checks)
            kind, id = "admin", 0

            @staticmethod
            def sign_bytes(data: bytes) -> bytes:
                return signature

        payload = encode_signed(ControlCommand(self.cluster, node, self.seq_no, Pause(60_000)),
                                _Forger)
        return "control_forged", self.frame(CONTROL_SENDER_ID, payload), 0


class _Fragments(_Maker):
    """The first of two fragments of messages that never complete, from many ports, each
    port with a sender id of its own (a stranger's). Each message starts as a signed
    Request does (a forged one, its op two datagrams long), so that its first fragment
    passes what a node's kernel filter checks of a stranger's message (bft/node.py
    `stranger_program`)."""

    def __init__(self, spec: AttackSpec, config: ClusterConfig, rng: random.Random) -> None:
        super().__init__(spec, config, rng)
        chunk = self.max_datagram - 27
        c = self.client_ids[0]
        request = Request(rng.randbytes(2 * chunk), 1, c)
        self.payload = _forged(request, _random_signer(rng, "client", c).sign(
            Request(b"", 1, c)).signature)
        self.sources = spec.source_count()

    def make(self, i: int, node: int) -> tuple[str, bytes, int]:
        source = i % self.sources
        self.message_id = (self.message_id + 1) & MAX_MESSAGE_ID
        first = encode_frames(CLIENT_SENDER_BASE + 1_000_000 + source, self.message_id,
                              self.payload, self.max_datagram)[0]
        return "first_fragment", first, source


class _Malformed(_Maker):
    """Corrupt frames and frames of non-messages, in turn."""

    LABELS = ("bad_checksum", "truncated", "bad_magic", "bad_cbor", "cut_message")

    def __init__(self, spec: AttackSpec, config: ClusterConfig, rng: random.Random) -> None:
        super().__init__(spec, config, rng)
        c = self.client_ids[0]
        signer = _random_signer(rng, "client", c)
        self.message = codec.encode(signer.sign(Request(b"\x00" * 32, 1, c)))
        self.sender = CLIENT_SENDER_BASE + c

    def make(self, i: int, node: int) -> tuple[str, bytes, int]:
        label = self.LABELS[i % len(self.LABELS)]
        if label == "bad_cbor":
            return label, self.frame(self.sender, self.rng.randbytes(48)), 0
        if label == "cut_message":
            return label, self.frame(self.sender, self.message[: len(self.message) // 2]), 0
        good = bytearray(self.frame(self.sender, self.message))
        if label == "bad_checksum":
            good[-1] ^= 0xFF
        elif label == "truncated":
            del good[20:]
        else:  # bad_magic
            good[0] ^= 0xFF
        return label, bytes(good), 0


class _Status(_Maker):
    """STATUS claiming to be far behind, and one FETCH-STATE repeated, as replica r."""

    def __init__(self, spec: AttackSpec, config: ClusterConfig, rng: random.Random,
                 keyring: Any, notes: list[str]) -> None:
        super().__init__(spec, config, rng)
        ids = [n.id for n in config.nodes]
        r = spec.as_replica
        if r is None:
            r = max(i for i in ids if i != spec.target) if len(ids) > 1 else ids[0]
        self.replica = r
        signer: Any = None
        if keyring is not None:
            try:
                signer = keyring.signer("replica", r)
                notes.append(f"signed with replica {r}'s own key")
            except (ConfigError, OSError):
                signer = None
        if signer is None:
            signer = _random_signer(rng, "replica", r)
            notes.append(f"no private key of replica {r}: signed with a random key")
        self.status = codec.encode(signer.sign(Status(0, 0, 0, (), (), 0, r)))
        digest = rng.randbytes(32)
        self.fetch = codec.encode(signer.sign(
            FetchState(config.checkpoint_interval, digest, r)))
        if spec.as_replica is not None:
            self.bind_addresses = [config.node(r).address]

    def make(self, i: int, node: int) -> tuple[str, bytes, int]:
        if i % 2 == 0:
            return "status_behind", self.frame(self.replica, self.status), 0
        return "fetch_state_repeat", self.frame(self.replica, self.fetch), 0


class _Replay(_Maker):
    """The request and replies captured while acting as a client once, replayed."""

    def __init__(self, spec: AttackSpec, config: ClusterConfig, rng: random.Random,
                 request: bytes, request_datagrams: dict[int, bytes], client: int,
                 replies: list[tuple[int, bytes]]) -> None:
        super().__init__(spec, config, rng)
        self.request = request
        self.request_datagrams = request_datagrams
        self.client = client
        self.replies = replies

    def make(self, i: int, node: int) -> tuple[str, bytes, int]:
        turn = i % 4
        if turn == 0 and node in self.request_datagrams:
            return "request_replayed_as_is", self.request_datagrams[node], 0
        if turn == 3 and self.replies:
            j, payload = self.replies[(i // 4) % len(self.replies)]
            return "reply_replayed", self.frame(j, payload), 0
        return "request_replayed", self.frame(CLIENT_SENDER_BASE + self.client, self.request), 0


class _ClientFlood(_Maker):
    """Validly signed requests of one client id whose key the key directory has: request k
    goes to every targeted node in turn (as a client sends it); three of four are fresh,
    the fourth repeats the one before (a retransmission)."""

    def __init__(self, spec: AttackSpec, config: ClusterConfig, rng: random.Random,
                 keyring: Any, state_dir: Path | None, targets: int, notes: list[str]) -> None:
        from bft.app import Ops

        super().__init__(spec, config, rng)
        self.claim = _claim_keyed_client(config, keyring, state_dir,
                                         "the clientflood attack signs as a client")
        self.client = self.claim.client_id
        self.signer = keyring.signer("client", self.client)
        self.op = Ops.get("bft-attack-clientflood")
        self.targets = max(1, targets)
        self.number = -1
        self.payload = b""
        notes.append(f"flooding as client {self.client}")

    def make(self, i: int, node: int) -> tuple[str, bytes, int]:
        k = i // self.targets
        label = "request_retransmitted" if k % 4 == 3 else "request_fresh"
        if k != self.number:
            self.number = k
            if label == "request_fresh":
                self.payload = codec.encode(self.signer.sign(Request(
                    self.op, self.claim.first_timestamp + k, self.client)))
        return label, self.frame(CLIENT_SENDER_BASE + self.client, self.payload), 0

    def close(self) -> None:
        self.claim.release()


def _claim_keyed_client(config: ClusterConfig, keyring: Any, state_dir: Path | None,
                        why: str) -> Any:
    """Claim a free client id whose private key the key directory holds (the replay and
    clientflood attacks sign as a legitimate client); AttackRefused, starting with `why`,
    when there are no keys, no such client or every such id is in use."""
    from bft.errors import ClientIdInUse
    from bft.node import claim_free_client_ids

    if keyring is None:
        raise AttackRefused(f"{why}: it needs the config's keys (pass --state-dir or "
                            "--key-dir)")
    usable = []
    for c in config.clients:
        try:
            keyring.private_key("client", c.id)
        except (ConfigError, OSError):
            continue
        usable.append(c.id)
    if not usable:
        raise AttackRefused(f"{why}: no client's private key in {keyring.key_dir}")
    try:
        return claim_free_client_ids(state_dir, usable)[0]
    except ClientIdInUse as exc:
        raise AttackRefused(f"{why}: {exc}") from None


async def _capture_as_client(config: ClusterConfig, keyring: Any, state_dir: Path | None,
                             notes: list[str], timeout_s: float = 10.0
                             ) -> tuple[bytes, dict[int, bytes], int, list[tuple[int, bytes]]]:
    """Act as a legitimate client once (a free client id whose key the key directory
    has): sign one read request, send it to every replica, and keep the replies until
    f+1 replicas answered. Returns (the request's payload, {replica: the datagram sent to
    it}, client id, [(replica, reply payload)])."""
    from bft.app import Ops
    from transport.frame import FrameError, decode_frame_untrusted

    claim = _claim_keyed_client(config, keyring, state_dir,
                                "the replay attack acts as a client once")
    with claim:
        cid = claim.client_id
        signed = keyring.signer("client", cid).sign(
            Request(Ops.get("bft-attack-replay"), claim.first_timestamp, cid))
        payload = codec.encode(signed)
        node_of = {n.address: n.id for n in config.nodes}
        family = socket.AF_INET6 if ":" in config.nodes[0].host else socket.AF_INET
        sock = trio.socket.socket(family, socket.SOCK_DGRAM)
        as_sent: dict[int, bytes] = {}
        replies: dict[int, bytes] = {}
        try:
            await sock.bind(("::1" if family == socket.AF_INET6 else "127.0.0.1", 0))
            first_id = random.Random(cid).getrandbits(48)
            for k, n in enumerate(config.nodes):
                datagrams = encode_frames(CLIENT_SENDER_BASE + cid, first_id + k, payload,
                                          config.max_datagram_bytes)
                if len(datagrams) != 1:
                    raise AttackRefused("the replay attack's request does not fit one datagram")
                as_sent[n.id] = datagrams[0]
                await sock.sendto(datagrams[0], n.address)
            with trio.move_on_after(timeout_s):
                while len(replies) < config.f + 1:
                    data, addr = await sock.recvfrom(65536)
                    j = node_of.get((str(addr[0]), int(addr[1])))
                    try:
                        frame = decode_frame_untrusted(data)
                    except FrameError:
                        continue
                    if j is not None and frame.fragment_count == 1:
                        replies[j] = frame.payload
        finally:
            sock.close()
    if len(replies) < config.f + 1:
        raise AttackRefused(f"the replay attack's client request got {len(replies)} replies "
                            f"within {timeout_s:g} s (f+1 = {config.f + 1} needed): is the "
                            f"cluster up?")
    notes.append(f"captured as client {cid}: 1 request, {len(replies)} replies")
    return payload, as_sent, cid, sorted(replies.items())


# --------------------------------------------------------------------------
# Running one
# --------------------------------------------------------------------------


def _open_sockets(family: int, count: int, host: str,
                  bind: list[Address] | None) -> list[socket.socket]:
    socks: list[socket.socket] = []
    try:
        for k in range(count):
            s = socket.socket(family, socket.SOCK_DGRAM)
            socks.append(s)
            s.setblocking(False)
            if bind is not None:
                try:
                    s.bind(bind[k % len(bind)])
                except OSError as exc:
                    raise AttackRefused(
                        f"cannot bind {bind[k % len(bind)]}: {exc.strerror or exc} (the status "
                        f"attack with --as-replica plays that replica: stop its node first)"
                    ) from None
            else:
                s.bind((host, 0))
    except BaseException:
        for s in socks:
            s.close()
        raise
    return socks


async def run_attack(spec: AttackSpec, config: ClusterConfig, *, keyring: Any = None,
                     state_dir: Path | None = None,
                     say: Callable[[str], None] | None = None,
                     progress_interval_s: float = 1.0) -> AttackSummary:
    """Send the attack `spec` describes at the nodes of `config` (loopback only); return what
    was sent. Raises AttackRefused before sending anything if it cannot or will not run.

    Paced on Trio's clock: after `spec.duration_s` seconds, or `spec.max_datagrams`
    datagrams, whichever comes first, it stops."""
    targets = loopback_targets(config, spec.target)
    spec.check_nodes(config.n)
    rng = random.Random(spec.seed)
    summary = AttackSummary(spec.kind, [t[0] for t in targets])
    verifier = keyring.verifier() if keyring is not None else None
    maker: _Maker
    if spec.kind == "sigflood":
        maker = _SigFlood(spec, config, rng)
    elif spec.kind == "control":
        if verifier is None:
            summary.notes.append("no public keys: the commands name another cluster (each is "
                                 "dropped before its signature check)")
        maker = _Control(spec, config, rng, verifier)
    elif spec.kind == "fragments":
        maker = _Fragments(spec, config, rng)
    elif spec.kind == "malformed":
        maker = _Malformed(spec, config, rng)
    elif spec.kind == "status":
        maker = _Status(spec, config, rng, keyring, summary.notes)
    elif spec.kind == "clientflood":
        maker = _ClientFlood(spec, config, rng, keyring, state_dir, len(targets), summary.notes)
    else:
        captured = await _capture_as_client(config, keyring, state_dir, summary.notes)
        maker = _Replay(spec, config, rng, *captured)
    family = targets[0][1]
    host = "::1" if family == socket.AF_INET6 else "127.0.0.1"
    try:
        socks = _open_sockets(family, spec.source_count() if spec.kind == "fragments" else 1,
                              host, maker.bind_addresses)
    except BaseException:
        maker.close()
        raise
    if maker.bind_addresses is not None:
        summary.notes.append(f"sent from replica {spec.as_replica}'s own address")
    cap = spec.max_datagrams
    sent, errors = summary.sent, summary.errors
    start = trio.current_time()
    end = start + spec.duration_s
    next_progress = start + progress_interval_s
    i = 0
    try:
        while i < cap:
            now = trio.current_time()
            if now >= end:  # the time bound is hard: a process that fell behind stops too
                break
            # datagram k is due at start + k / rate
            due = min(cap, int((now - start) * spec.rate + 1e-6) + 1)
            for _ in range(min(due - i, MAX_BURST)):
                node, _, addr = targets[i % len(targets)]
                label, datagram, source = maker.make(i, node)
                try:
                    socks[source].sendto(datagram, addr)
                except BlockingIOError:
                    errors["send_buffer_full"] += 1
                except OSError as exc:
                    errors[errno.errorcode.get(exc.errno or 0, "oserror").lower()] += 1
                else:
                    sent[label] += 1
                i += 1
            if say is not None and now >= next_progress:
                next_progress += progress_interval_s
                say(f"[attack {spec.kind}] {now - start:5.1f}/{spec.duration_s:g} s: "
                    f"{summary.total} datagrams sent")
            if i >= due:  # on schedule: wait for the next datagram's time
                at = start + i / spec.rate
                if i >= cap or at >= end:
                    break
                await trio.sleep_until(max(at, now + 1e-6))
            else:
                await trio.sleep(0)  # behind: keep sending, but let others run
    finally:
        summary.elapsed_s = trio.current_time() - start
        for s in socks:
            s.close()
        maker.close()
    return summary


# --------------------------------------------------------------------------
# The command
# --------------------------------------------------------------------------


def add_attack_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("config", metavar="CONFIG", type=Path, help="cluster config (TOML)")
    parser.add_argument("--kind", required=True, choices=KINDS,
                        help="what to send (see the description)")
    parser.add_argument("--rate", type=float, default=DEFAULT_RATE, metavar="R",
                        help=f"datagrams per second (default {DEFAULT_RATE:g}, at most "
                        f"{MAX_RATE:g}; a process that cannot keep up sends as fast as it can)")
    parser.add_argument("--duration", type=float, default=DEFAULT_DURATION_S, metavar="S",
                        help=f"seconds (default {DEFAULT_DURATION_S:g}, at most "
                        f"{MAX_DURATION_S:g})")
    parser.add_argument("--target", type=int, default=None, metavar="N",
                        help="attack only node N (default: every node, in turn)")
    parser.add_argument("--seed", type=int, default=0, help="seed of the random keys and bytes")
    parser.add_argument("--sources", type=int, default=None, metavar="K",
                        help=f"source ports (default {DEFAULT_FRAGMENT_SOURCES} for fragments, "
                        "1 otherwise)")
    parser.add_argument("--as-replica", type=int, default=None, metavar="R",
                        help="status: send as replica R from its own address (its node must be "
                        "stopped) with its key; default: a port of its own, in the name of the "
                        "last replica not targeted")
    parser.add_argument("--state-dir", type=Path, default=None, metavar="DIR",
                        help="state directory (keys, client id locks; default: state/<cluster>)")
    parser.add_argument("--key-dir", type=Path, default=None, metavar="DIR",
                        help="key directory (default: the config's, else STATE_DIR/keys)")
    parser.add_argument("--json", type=Path, default=None, metavar="FILE",
                        help="also write the summary as JSON to FILE")


def run_attack_command(args: argparse.Namespace) -> int:
    """`bft attack`: exit 0 after the attack, 2 (with one line) if it is refused."""
    import json

    from bft.cliutil import CliError, key_dir, load_config, state_dir
    from bft.config import load_keyring

    config = load_config(args.config)
    spec = make_spec(args.kind, rate=args.rate, duration_s=args.duration, target=args.target,
                     seed=args.seed, sources=args.sources, as_replica=args.as_replica)
    spec.check_nodes(config.n, where="--")
    try:
        loopback_targets(config, spec.target)
    except AttackRefused as exc:
        raise CliError(str(exc)) from None
    states = state_dir(config, args.state_dir)
    try:
        keyring = load_keyring(config, key_dir(config, args.state_dir, args.key_dir))
    except ConfigError as exc:
        if spec.kind in ("replay", "clientflood"):
            raise CliError(f"the {spec.kind} attack signs as a client and needs the cluster's "
                           f"keys (--state-dir, --key-dir): {exc}") from None
        keyring = None

    def say(line: str) -> None:
        print(line, flush=True)

    say(f"attack {spec.kind}: at most {spec.max_datagrams} datagrams, {spec.rate:g}/s for "
        f"{spec.duration_s:g} s")
    try:
        summary = trio.run(lambda: run_attack(spec, config, keyring=keyring, state_dir=states,
                                              say=say))
    except AttackRefused as exc:
        raise CliError(str(exc)) from None
    for line in summary.lines():
        say(line)
    if args.json is not None:
        args.json.write_text(json.dumps(summary.to_dict(), indent=2) + "\n")
    return 0


def attack_command(spec: AttackSpec, config_path: Path, state_dir: Path | None) -> list[str]:
    """The `bft attack` command line of `spec` (for a launcher that runs it as a process)."""
    cmd = [sys.executable, "-m", "bft", "attack", str(config_path), "--kind", spec.kind,
           "--rate", repr(spec.rate), "--duration", repr(spec.duration_s),
           "--seed", str(spec.seed)]
    if spec.target is not None:
        cmd += ["--target", str(spec.target)]
    if spec.sources is not None:
        cmd += ["--sources", str(spec.sources)]
    if spec.as_replica is not None:
        cmd += ["--as-replica", str(spec.as_replica)]
    if state_dir is not None:
        cmd += ["--state-dir", str(state_dir)]
    return cmd


def parse_attacks(items: Any, file: str | None) -> tuple[AttackSpec, ...]:
    """The `[[attack]]` tables of a scenario, validated (ConfigError naming
    `attack[k].field`)."""
    if not isinstance(items, list) or not all(isinstance(v, Mapping) for v in items):
        raise ConfigError("expected an array of tables", file=file, field="attack",
                          fix="write each one as [[attack]]")
    known = ("kind", "rate", "duration", "at", "target", "seed", "sources", "as_replica")
    out = []
    for k, item in enumerate(items):
        where = f"attack[{k}]."
        for key in item:
            if key not in known:
                raise ConfigError(f"unknown key {key!r}", file=file, field=f"{where}{key}",
                                  fix=f"known: {', '.join(known)}")
        if "kind" not in item:
            raise ConfigError("missing", file=file, field=f"{where}kind",
                              fix=f"one of {', '.join(KINDS)}")
        out.append(make_spec(item["kind"], rate=item.get("rate", DEFAULT_RATE),
                             duration_s=item.get("duration", DEFAULT_DURATION_S),
                             target=item.get("target"), seed=item.get("seed", 0),
                             at_s=item.get("at", 0.0), sources=item.get("sources"),
                             as_replica=item.get("as_replica"), file=file, where=where))
    return tuple(out)
