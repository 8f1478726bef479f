"""Telemetry and control datagrams between nodes and the dashboard (pure: no I/O, no clock).

Nodes push signed *telemetry* to the monitor address of the config; the
dashboard (or `bft ctl`) sends signed *control commands* to a node. Both travel
as ordinary transport payloads (inside `transport.frame` frames, like protocol
messages) and are told apart from protocol payloads by a 4-byte magic prefix:

    TELEMETRY_MAGIC b"BFTT"   StatusSnapshot, TelemetryEvent, CommitBatch, EvidenceReport
    CONTROL_MAGIC   b"BFTC"   ControlCommand

A protocol payload is a CBOR array and starts with a byte 0x80..0x9f, so a
receiver can look at the first bytes (`is_telemetry`, `is_control`) before
choosing a decoder.

Layout of a payload (canonical CBOR, no maps, tags, floats or null):

    MAGIC || [signer_kind, signer_id, body (bytes), signature (64 bytes)]
    body = [TAG, field, ...]                     one of the message types below

`signer_kind` is 0 for a replica and 2 for the admin (the index in
`bft.crypto.KINDS`; clients never sign telemetry). The signature is the
signer's `sign_bytes(SIGNING_PREFIX + MAGIC + body)`: the prefix keeps these
signatures apart from any other use of `sign_bytes`, and the magic keeps a
telemetry body from being replayed as a control command. A telemetry message
is always signed by the replica it names (`msg.node`), so a node can speak
only for itself; a control command is accepted by `ControlGate` only when the
admin signed it for this cluster and node, recently, and it is newer than the
last one obeyed (see `ControlCommand`).

Decoding untrusted bytes (`decode_signed_untrusted`) is strict: every item head
in its shortest form (read by `bft.cbor.read_head`, as the codec reads its heads), exact array lengths, exact types (a bool is not an int),
bounded sizes (`MAX_PAYLOAD_BYTES`, `MAX_*` below), text only printable ASCII
(so nothing a node sends can put control characters on the operator's
terminal), no trailing bytes; hence `encode(decode(x)) == x`. It raises only
`MalformedMessage`, and its subclass `BadSignature` when the bytes are well
formed but the signature does not verify. Floats never travel: durations are
integer milliseconds and phi values are integer thousandths.

`TelemetryAggregator` turns what a node sees (effects, replica statistics)
into the datagrams to send and when; `ControlGate` decides which control
commands a node obeys. Both take `now` (monotonic seconds) from their caller.
"""

from __future__ import annotations

import collections
import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import cbor2

from bft.app import decode_op_untrusted
from bft.cbor import malformed, read_head
from bft.crypto import sha256
from bft.effects import Event, Evidence, Executed
from bft.errors import MalformedMessage

__all__ = [
    "CLUSTER_ID_BYTES",
    "CONTROL_MAGIC",
    "CONTROL_MAX_AGE_S",
    "MAX_EVIDENCE_BODY_BYTES",
    "MAX_PAYLOAD_BYTES",
    "SIGNING_PREFIX",
    "TELEMETRY_MAGIC",
    "Action",
    "BadSignature",
    "ClearBehaviour",
    "CommitBatch",
    "CommitInfo",
    "ControlCommand",
    "ControlGate",
    "Crash",
    "Cut",
    "EvidenceReport",
    "Heal",
    "Pause",
    "Resume",
    "SetBehaviour",
    "StatusSnapshot",
    "TelemetryAggregator",
    "TelemetryEvent",
    "TelemetryMessage",
    "control_cluster_id",
    "decode_signed_untrusted",
    "encode_signed",
    "is_control",
    "is_telemetry",
    "shorten_ops",
]

TELEMETRY_MAGIC = b"BFTT"
CONTROL_MAGIC = b"BFTC"
SIGNING_PREFIX = b"bft-udp/v1/telemetry\x00"

#: Bounds of what a decoder accepts (and an encoder produces).
MAX_PAYLOAD_BYTES = 16 * 1024  # a whole payload, magic included
MAX_NAME_CHARS = 48  # kinds, drop reasons, field keys, behaviour names
MAX_VALUE_CHARS = 96  # text values, shortened ops
MAX_FIELDS = 12  # fields of an event, params of a behaviour
MAX_DROP_REASONS = 16
MAX_SUSPECTED = 64
MAX_COMMITS = 16  # commits listed in one CommitBatch
MAX_PEERS = 1024  # peers of a Cut
MAX_DIGEST_BYTES = 32
SIGNATURE_BYTES = 64
#: A signed PRE-PREPARE, PREPARE, COMMIT or CHECKPOINT body is under 100 bytes.
MAX_EVIDENCE_BODY_BYTES = 256
CLUSTER_ID_BYTES = 32
#: A control command is obeyed only this long after it was issued (wall clock, plus the
#: config's max_clock_skew_s as tolerance): commands are about the operator's present.
CONTROL_MAX_AGE_S = 10.0
#: Signature checks of control commands a node does per second (and at most in a burst)
#: for the dashboard's address, and again for every other source together: a flood of
#: forged admin commands costs a node at most this many Ed25519 verifications.
CONTROL_VERIFY_PER_S = 10.0
CONTROL_VERIFY_BURST = 10
#: A source whose command failed its signature check gets no other check this long.
CONTROL_PENALTY_S = 1.0

_U63 = 2**63  # unsigned integers are below this (as in bft.codec)

Scalar = int | str | bool
Fields = tuple[tuple[str, Scalar], ...]

_KIND_CODES = {"replica": 0, "admin": 2}
_CODE_KINDS = {code: kind for kind, code in _KIND_CODES.items()}


class BadSignature(MalformedMessage):
    """Well-formed telemetry or control bytes whose signature does not verify."""


# --------------------------------------------------------------------------
# Messages
# --------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class StatusSnapshot:
    """A node's periodic status.

    `time_ms` is the node's monotonic clock (for rates between snapshots, not a
    time of day); `suspected` lists `(peer, phi * 1000)` for the peers the node
    suspects; `drops` the largest drop counters `(reason, count)` and
    `drops_total` the sum of all of them; `behaviour` the adversary behaviour
    switched on ("" when honest); `paused` whether protocol processing is paused.
    """

    TAG = 1
    node: int
    seq_no: int
    time_ms: int
    view: int
    primary: int
    last_executed: int
    stable_seq: int
    low_watermark: int
    high_watermark: int
    pending: int
    in_view_change: bool
    suspected: tuple[tuple[int, int], ...]
    msgs_in: int
    msgs_out: int
    drops: tuple[tuple[str, int], ...]
    drops_total: int
    behaviour: str
    paused: bool


@dataclass(frozen=True, slots=True)
class TelemetryEvent:
    """An `Event` of a node's replica: `kind` and its fields as (name, scalar) pairs."""

    TAG = 2
    node: int
    seq_no: int
    kind: str
    fields: Fields

    def field(self, name: str, default: Any = None) -> Any:
        """The value of field `name`, or `default`."""
        for key, value in self.fields:
            if key == name:
                return value
        return default


@dataclass(frozen=True, slots=True)
class CommitInfo:
    """One executed batch: `size` requests, `ops` a short readable text of them,
    `batch_time_us` the agreed time, `digest` a prefix of the batch digest."""

    seq: int
    view: int
    size: int
    ops: str
    batch_time_us: int
    digest: bytes


@dataclass(frozen=True, slots=True)
class CommitBatch:
    """Commits of one node over an interval: some listed, the rest only counted
    (`more_commits` batches holding `more_requests` requests)."""

    TAG = 3
    node: int
    seq_no: int
    commits: tuple[CommitInfo, ...]
    more_commits: int
    more_requests: int


@dataclass(frozen=True, slots=True)
class EvidenceReport:
    """Node `node` holds a proof: two signed messages that, it says, conflict.

    `first_body`/`first_signature` and `second_body`/`second_signature` are the
    two `Signed` envelopes as the replica received them (the statement's
    canonical bytes and its signer's signature), so whoever receives the
    report checks the proof itself (`bft.evidence.check_evidence_untrusted`)
    instead of trusting the reporter: the report names no culprit, the proof
    does. Bodies are at most `MAX_EVIDENCE_BODY_BYTES`.
    """

    TAG = 4
    node: int
    seq_no: int
    first_body: bytes
    first_signature: bytes
    second_body: bytes
    second_signature: bytes


@dataclass(frozen=True, slots=True)
class Pause:
    """Stop processing protocol messages and timers for `duration_ms` (as a GC or VM pause)."""

    TAG = 1
    duration_ms: int


@dataclass(frozen=True, slots=True)
class Resume:
    """End a pause now."""

    TAG = 2


@dataclass(frozen=True, slots=True)
class SetBehaviour:
    """Switch on the adversary behaviour `name` with `params` (replacing any other)."""

    TAG = 3
    name: str
    params: Fields = ()


@dataclass(frozen=True, slots=True)
class ClearBehaviour:
    """Back to honest behaviour."""

    TAG = 4


@dataclass(frozen=True, slots=True)
class Cut:
    """Drop every datagram to and from `peers` (an empty tuple: every peer)."""

    TAG = 5
    peers: tuple[int, ...] = ()


@dataclass(frozen=True, slots=True)
class Heal:
    """Undo every Cut."""

    TAG = 6


@dataclass(frozen=True, slots=True)
class Crash:
    """Stop the process at once, without a clean shutdown."""

    TAG = 7


Action = Pause | Resume | SetBehaviour | ClearBehaviour | Cut | Heal | Crash
_ACTIONS: dict[int, type] = {
    cls.TAG: cls for cls in (Pause, Resume, SetBehaviour, ClearBehaviour, Cut, Heal, Crash)
}

#: Readable names of the actions (as `bft ctl` spells them).
ACTION_NAMES: dict[type, str] = {
    Pause: "pause",
    Resume: "resume",
    SetBehaviour: "behaviour",
    ClearBehaviour: "clear",
    Cut: "cut",
    Heal: "heal",
    Crash: "crash",
}


@dataclass(frozen=True, slots=True)
class ControlCommand:
    """An admin's command to node `target` of the cluster `cluster`.

    `cluster` is `control_cluster_id` of the target's cluster, so a command
    recorded on its way to one cluster means nothing to another that shares
    the admin key. `seq_no` is the time the command was issued, wall-clock
    microseconds since the epoch, made strictly increasing by its sender: a
    node obeys it only while it is fresh (`CONTROL_MAX_AGE_S`) and only if it
    is above the last one the node obeyed (`ControlGate`), so a recorded
    command cannot be replayed.
    """

    TAG = 16
    cluster: bytes
    target: int
    seq_no: int
    action: Action

    def describe(self) -> str:
        """A short readable form, e.g. `pause 5 s`, `behaviour lie`, `cut 1,2`."""
        a = self.action
        name = ACTION_NAMES[type(a)]
        if isinstance(a, Pause):
            return f"{name} {a.duration_ms / 1000:g} s"
        if isinstance(a, SetBehaviour):
            params = " ".join(f"{k}={v}" for k, v in a.params)
            return f"{name} {a.name}" + (f" {params}" if params else "")
        if isinstance(a, Cut):
            return f"{name} " + (",".join(map(str, a.peers)) if a.peers else "all")
        return name


TelemetryMessage = StatusSnapshot | TelemetryEvent | CommitBatch | EvidenceReport
_TELEMETRY_TYPES: dict[int, type] = {
    cls.TAG: cls for cls in (StatusSnapshot, TelemetryEvent, CommitBatch, EvidenceReport)
}


# Both magics start with this byte, which starts no protocol message (a CBOR
# byte string of 2 bytes: messages are arrays), so the usual datagram is told
# apart by one byte, without a copy (a one-byte slice is a cached object).
_MAGIC_FIRST_BYTE = TELEMETRY_MAGIC[:1]
assert CONTROL_MAGIC[:1] == _MAGIC_FIRST_BYTE


def is_telemetry(payload: bytes) -> bool:
    """True if `payload` claims to be telemetry (by its magic; nothing is checked)."""
    return payload[:1] == _MAGIC_FIRST_BYTE and payload[:4] == TELEMETRY_MAGIC


def is_control(payload: bytes) -> bool:
    """True if `payload` claims to be a control command (by its magic; nothing is checked)."""
    return payload[:1] == _MAGIC_FIRST_BYTE and payload[:4] == CONTROL_MAGIC


# --------------------------------------------------------------------------
# Encoding
# --------------------------------------------------------------------------


def _body_items(msg: Any) -> list[Any]:
    if isinstance(msg, StatusSnapshot):
        return [
            msg.TAG,
            msg.node,
            msg.seq_no,
            msg.time_ms,
            msg.view,
            msg.primary,
            msg.last_executed,
            msg.stable_seq,
            msg.low_watermark,
            msg.high_watermark,
            msg.pending,
            msg.in_view_change,
            [list(p) for p in msg.suspected],
            msg.msgs_in,
            msg.msgs_out,
            [list(d) for d in msg.drops],
            msg.drops_total,
            msg.behaviour,
            msg.paused,
        ]
    if isinstance(msg, TelemetryEvent):
        return [msg.TAG, msg.node, msg.seq_no, msg.kind, [list(f) for f in msg.fields]]
    if isinstance(msg, CommitBatch):
        commits = [[c.seq, c.view, c.size, c.ops, c.batch_time_us, c.digest] for c in msg.commits]
        return [msg.TAG, msg.node, msg.seq_no, commits, msg.more_commits, msg.more_requests]
    if isinstance(msg, EvidenceReport):
        return [
            msg.TAG,
            msg.node,
            msg.seq_no,
            msg.first_body,
            msg.first_signature,
            msg.second_body,
            msg.second_signature,
        ]
    if isinstance(msg, ControlCommand):
        a = msg.action
        if isinstance(a, Pause):
            action: list[Any] = [a.TAG, a.duration_ms]
        elif isinstance(a, SetBehaviour):
            action = [a.TAG, a.name, [list(p) for p in a.params]]
        elif isinstance(a, Cut):
            action = [a.TAG, list(a.peers)]
        elif isinstance(a, (Resume, ClearBehaviour, Heal, Crash)):
            action = [a.TAG]
        else:
            raise TypeError(f"not a control action: {a!r}")
        return [msg.TAG, msg.cluster, msg.target, msg.seq_no, action]
    raise TypeError(f"not a telemetry or control message: {type(msg).__name__}")


def _signer_of(msg: Any) -> tuple[str, int] | None:
    """The identity that must sign `msg` (None: the admin, checked by the gate)."""
    if isinstance(msg, ControlCommand):
        return None
    return ("replica", msg.node)


def encode_signed(msg: TelemetryMessage | ControlCommand, signer: Any) -> bytes:
    """The signed payload of `msg` (magic included), signed by `signer`.

    `signer` needs `kind`, `id` and `sign_bytes(data)` (a `bft.crypto` signer).
    A telemetry message must be signed by the replica it names. Raises
    ValueError when `msg` breaks a bound the decoder enforces or the signer is
    the wrong one (a caller's bug: what is encoded always decodes), TypeError
    for something that is not a message.
    """
    magic = CONTROL_MAGIC if isinstance(msg, ControlCommand) else TELEMETRY_MAGIC
    body = cbor2.dumps(_body_items(msg), canonical=True)
    expected = _signer_of(msg)
    if expected is not None and (signer.kind, signer.id) != expected:
        raise ValueError(f"{signer.kind} {signer.id} cannot sign telemetry of {expected}")
    if signer.kind not in _KIND_CODES:
        raise ValueError(f"a {signer.kind} does not sign telemetry or control")
    try:
        decoded = _decode_body(magic, body)
    except MalformedMessage as exc:
        raise ValueError(f"{type(msg).__name__} breaks a telemetry bound: {exc}") from None
    if decoded != msg:
        raise ValueError(f"{type(msg).__name__} has a field of the wrong type")
    signature = signer.sign_bytes(SIGNING_PREFIX + magic + body)
    envelope = cbor2.dumps([_KIND_CODES[signer.kind], signer.id, body, signature], canonical=True)
    payload = magic + envelope
    if len(payload) > MAX_PAYLOAD_BYTES:
        raise ValueError(f"payload of {len(payload)} bytes is over {MAX_PAYLOAD_BYTES}")
    return payload


# --------------------------------------------------------------------------
# Strict decoding
# --------------------------------------------------------------------------

_PRINTABLE_ASCII = bytes(range(0x20, 0x7F))


class _Reader:
    """A cursor over untrusted bytes; every read checks type, form and bounds (item heads
    are read by `bft.cbor.read_head`, the one strict CBOR head reader)."""

    __slots__ = ("data", "pos")

    def __init__(self, data: bytes, pos: int = 0) -> None:
        self.data = data
        self.pos = pos

    def _fail(self, what: str) -> MalformedMessage:
        return malformed(self.pos, what)

    def _head(self, major: int, what: str) -> int:
        """The argument of the head of major type `major` here (the one strict head reader,
        `bft.cbor.read_head`: shortest form, no indefinite lengths); moves past the head."""
        arg, self.pos = read_head(self.data, self.pos, major, what)
        return arg

    def peek_major(self) -> int:
        if self.pos >= len(self.data):
            raise self._fail("truncated")
        return self.data[self.pos] >> 5

    def uint(self, what: str) -> int:
        value = self._head(0, f"{what} (an unsigned integer)")
        if value >= _U63:
            raise self._fail(f"{what} out of range")
        return value

    def int_(self, what: str) -> int:
        if self.peek_major() == 1:
            value = -1 - self._head(1, what)
            if value < -_U63:
                raise self._fail(f"{what} out of range")
            return value
        return self.uint(what)

    def bool_(self, what: str) -> bool:
        if self.pos >= len(self.data):
            raise self._fail(f"truncated: expected {what}")
        initial = self.data[self.pos]
        if initial not in (0xF4, 0xF5):
            raise self._fail(f"{what} must be true or false")
        self.pos += 1
        return initial == 0xF5

    def bytes_(self, what: str, low: int, high: int) -> bytes:
        length = self._head(2, f"{what} (a byte string)")
        if not low <= length <= high:
            raise self._fail(f"{what} of {length} bytes (must be {low}..{high})")
        end = self.pos + length
        if end > len(self.data):
            raise self._fail(f"truncated {what}")
        value = self.data[self.pos : end]
        self.pos = end
        return value

    def text(self, what: str, max_chars: int) -> str:
        length = self._head(3, f"{what} (a text string)")
        if length > max_chars:
            raise self._fail(f"{what} of {length} characters is over {max_chars}")
        end = self.pos + length
        if end > len(self.data):
            raise self._fail(f"truncated {what}")
        raw = self.data[self.pos : end]
        if raw.translate(None, _PRINTABLE_ASCII):  # a byte outside 0x20..0x7E is left
            raise self._fail(f"{what} is not printable ASCII")
        self.pos = end
        return raw.decode("ascii")

    def array(self, what: str, low: int, high: int) -> int:
        count = self._head(4, f"{what} (an array)")
        if not low <= count <= high:
            raise self._fail(f"{what} has {count} items (must be {low}..{high})")
        if count > len(self.data) - self.pos:
            raise self._fail(f"truncated {what}")
        return count

    def exact_array(self, what: str, count: int) -> None:
        self.array(what, count, count)

    def scalar(self, what: str) -> Scalar:
        major = self.peek_major()
        if major in (0, 1):
            return self.int_(what)
        if major == 3:
            return self.text(what, MAX_VALUE_CHARS)
        return self.bool_(what)

    def fields(self, what: str) -> Fields:
        out = []
        for _ in range(self.array(what, 0, MAX_FIELDS)):
            self.exact_array(f"{what} entry", 2)
            key = self.text(f"{what} name", MAX_NAME_CHARS)
            out.append((key, self.scalar(f"{what} {key}")))
        return tuple(out)

    def end(self) -> None:
        if self.pos != len(self.data):
            raise self._fail(f"{len(self.data) - self.pos} trailing bytes")


def _read_status(r: _Reader) -> StatusSnapshot:
    (node, seq_no, time_ms, view, primary, last_executed, stable_seq, low_watermark,
     high_watermark, pending) = (
        r.uint(name)
        for name in (
            "node",
            "seq_no",
            "time_ms",
            "view",
            "primary",
            "last_executed",
            "stable_seq",
            "low_watermark",
            "high_watermark",
            "pending",
        )
    )
    in_view_change = r.bool_("in_view_change")
    suspected = []
    for _ in range(r.array("suspected", 0, MAX_SUSPECTED)):
        r.exact_array("suspected entry", 2)
        suspected.append((r.uint("suspected peer"), r.uint("phi")))
    msgs_in, msgs_out = r.uint("msgs_in"), r.uint("msgs_out")
    drops = []
    for _ in range(r.array("drops", 0, MAX_DROP_REASONS)):
        r.exact_array("drops entry", 2)
        drops.append((r.text("drop reason", MAX_NAME_CHARS), r.uint("drop count")))
    drops_total = r.uint("drops_total")
    behaviour = r.text("behaviour", MAX_NAME_CHARS)
    paused = r.bool_("paused")
    return StatusSnapshot(
        node,
        seq_no,
        time_ms,
        view,
        primary,
        last_executed,
        stable_seq,
        low_watermark,
        high_watermark,
        pending,
        in_view_change,
        tuple(suspected),
        msgs_in,
        msgs_out,
        tuple(drops),
        drops_total,
        behaviour,
        paused,
    )


def _read_event(r: _Reader) -> TelemetryEvent:
    return TelemetryEvent(
        r.uint("node"), r.uint("seq_no"), r.text("kind", MAX_NAME_CHARS), r.fields("fields")
    )


def _read_commits(r: _Reader) -> CommitBatch:
    node, seq_no = r.uint("node"), r.uint("seq_no")
    commits = []
    for _ in range(r.array("commits", 0, MAX_COMMITS)):
        r.exact_array("commit", 6)
        commits.append(
            CommitInfo(
                r.uint("seq"),
                r.uint("view"),
                r.uint("size"),
                r.text("ops", MAX_VALUE_CHARS),
                r.uint("batch_time_us"),
                r.bytes_("digest", 0, MAX_DIGEST_BYTES),
            )
        )
    return CommitBatch(
        node, seq_no, tuple(commits), r.uint("more_commits"), r.uint("more_requests")
    )


def _read_evidence(r: _Reader) -> EvidenceReport:
    return EvidenceReport(
        r.uint("node"),
        r.uint("seq_no"),
        r.bytes_("first body", 1, MAX_EVIDENCE_BODY_BYTES),
        r.bytes_("first signature", SIGNATURE_BYTES, SIGNATURE_BYTES),
        r.bytes_("second body", 1, MAX_EVIDENCE_BODY_BYTES),
        r.bytes_("second signature", SIGNATURE_BYTES, SIGNATURE_BYTES),
    )


_FIELD_COUNTS = {
    StatusSnapshot: 18,
    TelemetryEvent: 4,
    CommitBatch: 5,
    EvidenceReport: 6,
    ControlCommand: 4,
}
_READERS: dict[type, Callable[[_Reader], Any]] = {
    StatusSnapshot: _read_status,
    TelemetryEvent: _read_event,
    CommitBatch: _read_commits,
    EvidenceReport: _read_evidence,
}
_ACTION_FIELD_COUNTS = {Pause: 1, SetBehaviour: 2, Cut: 1}


def _read_control(r: _Reader) -> ControlCommand:
    cluster = r.bytes_("cluster", CLUSTER_ID_BYTES, CLUSTER_ID_BYTES)
    target, seq_no = r.uint("target"), r.uint("seq_no")
    count = r.array("action", 1, 3)
    tag = r.uint("action type")
    cls = _ACTIONS.get(tag)
    if cls is None:
        raise MalformedMessage(f"unknown action {tag}")
    if count != 1 + _ACTION_FIELD_COUNTS.get(cls, 0):
        raise r._fail(f"{cls.__name__} has {count - 1} fields")
    action: Action
    if cls is Pause:
        action = Pause(r.uint("duration_ms"))
    elif cls is SetBehaviour:
        action = SetBehaviour(r.text("behaviour", MAX_NAME_CHARS), r.fields("params"))
    elif cls is Cut:
        action = Cut(tuple(r.uint("peer") for _ in range(r.array("peers", 0, MAX_PEERS))))
    else:
        action = cls()
    return ControlCommand(cluster, target, seq_no, action)


def _decode_body(magic: bytes, body: bytes) -> Any:
    r = _Reader(body)
    count = r.array("message", 1, 32)
    tag = r.uint("message type")
    if magic == CONTROL_MAGIC:
        if tag != ControlCommand.TAG:
            raise MalformedMessage(f"message type {tag} is not a control command")
        cls: type = ControlCommand
    else:
        found = _TELEMETRY_TYPES.get(tag)
        if found is None:
            raise MalformedMessage(f"unknown telemetry message type {tag}")
        cls = found
    if count != 1 + _FIELD_COUNTS[cls]:
        raise MalformedMessage(f"{cls.__name__} has {_FIELD_COUNTS[cls]} fields, got {count - 1}")
    msg = _read_control(r) if cls is ControlCommand else _READERS[cls](r)
    r.end()
    return msg


@dataclass(frozen=True, slots=True)
class _Opened:
    """A well-formed payload before its signature is checked."""

    magic: bytes
    identity: tuple[str, int]
    body: bytes
    signature: bytes
    message: Any


def _open_untrusted(data: bytes) -> _Opened:
    """Parse a payload strictly without checking the signature (raises MalformedMessage)."""
    if not isinstance(data, (bytes, bytearray, memoryview)):
        raise TypeError(f"expected bytes, got {type(data).__name__}")  # a caller's bug
    data = bytes(data)
    if len(data) > MAX_PAYLOAD_BYTES:
        raise MalformedMessage(f"payload of {len(data)} bytes is over {MAX_PAYLOAD_BYTES}")
    magic = data[:4]
    if magic not in (TELEMETRY_MAGIC, CONTROL_MAGIC):
        raise MalformedMessage("not a telemetry or control payload (bad magic)")
    r = _Reader(data, 4)
    r.exact_array("envelope", 4)
    code = r.uint("signer kind")
    kind = _CODE_KINDS.get(code)
    if kind is None:
        raise MalformedMessage(f"signer kind {code} may not sign telemetry or control")
    signer_id = r.uint("signer id")
    body = r.bytes_("body", 1, MAX_PAYLOAD_BYTES)
    signature = r.bytes_("signature", SIGNATURE_BYTES, SIGNATURE_BYTES)
    r.end()
    if kind == "admin" and signer_id != 0:
        raise MalformedMessage(f"the admin has id 0, not {signer_id}")
    message = _decode_body(magic, body)
    expected = _signer_of(message)
    if expected is not None and expected != (kind, signer_id):
        raise MalformedMessage(f"{kind} {signer_id} signed telemetry of {expected}")
    return _Opened(magic, (kind, signer_id), body, signature, message)


def _verify(opened: _Opened, verifier: Any) -> bool:
    return bool(
        verifier.verify_bytes(
            opened.identity, SIGNING_PREFIX + opened.magic + opened.body, opened.signature
        )
    )


def decode_signed_untrusted(
    data: bytes, verifier: Any
) -> tuple[TelemetryMessage | ControlCommand, tuple[str, int]]:
    """Decode and verify a telemetry or control payload from the network.

    Returns `(message, signer_identity)`: `("replica", message.node)` for
    telemetry, `("admin", 0)` or `("replica", i)` for a control command (the
    caller decides whom it obeys; `ControlGate` obeys only the admin).

    Raises only `MalformedMessage`: for bytes that are not exactly a canonical,
    in-bounds payload, and (as its subclass `BadSignature`) for a well-formed
    payload whose signature `verifier.verify_bytes` rejects. The bytes are
    fully parsed before the (costlier) signature check.
    """
    opened = _open_untrusted(data)
    if not _verify(opened, verifier):
        raise BadSignature(f"bad signature of {opened.identity[0]} {opened.identity[1]}")
    return opened.message, opened.identity


# --------------------------------------------------------------------------
# The node's side: which commands to obey
# --------------------------------------------------------------------------


def control_cluster_id(config: Any, verifier: Any = None) -> bytes:
    """The 32-byte identity of a cluster that control commands name (`ControlCommand.cluster`).

    SHA-256 of the config's cluster name, f and every node's id, host and
    port, and of each replica's public key as `verifier.public_key` gives it
    (a `bft.crypto.Verifier`; a verifier without public keys, as the
    simulator's, adds none). Every node, the dashboard and `bft ctl` compute
    it from the same config and keys; two clusters differing in any of these
    (another name, other addresses, replicas with other keys) differ here,
    even when they share the admin key.
    """
    public_key = getattr(verifier, "public_key", None)
    nodes = []
    for node in sorted(config.nodes, key=lambda n: n.id):
        key = public_key(("replica", node.id)) if public_key is not None else None
        nodes.append([node.id, node.host.lower(), node.port, key or b""])
    identity = ["bft-udp/v1/cluster", config.name, config.f, nodes]
    return sha256(cbor2.dumps(identity, canonical=True))


class _TokenBucket:
    """At most `burst` takes at once, refilled at `per_s` a second (wall-clock us)."""

    __slots__ = ("burst", "last_us", "per_s", "tokens")

    def __init__(self, per_s: float, burst: int) -> None:
        self.per_s = per_s
        self.burst = burst
        self.tokens = float(burst)
        self.last_us: int | None = None

    def take(self, now_us: int) -> bool:
        if self.last_us is not None and now_us > self.last_us:
            self.tokens = min(self.burst, self.tokens + (now_us - self.last_us) * self.per_s / 1e6)
        self.last_us = now_us  # a clock stepped back: no refill until it moves on
        if self.tokens < 1:
            return False
        self.tokens -= 1
        return True


class ControlGate:
    """Decides which control payloads node `node_id` of cluster `cluster` obeys (pure).

    `accept(payload, verifier, wall_us, source)` returns the command only if the
    payload is a well-formed `ControlCommand` for this cluster
    (`control_cluster_id`) and this node, validly signed by the admin, issued
    (its `seq_no`) at most `max_age_s` before `wall_us` and at most
    `clock_tolerance_s` after it (wall-clock microseconds; the tolerance
    widens the age too), and numbered strictly above the last one accepted;
    otherwise None, and the reason is counted in `statistics()["drops"]`:
    not_control, malformed, not_admin, wrong_cluster, wrong_target,
    stale_seq_no (a replay or a reordered older command), expired,
    too_far_ahead (a clock far off), source_penalized, rate_limited,
    bad_signature. The cheap checks run before the signature check.

    The signature check is the one costly step, and a forger can pass every cheap
    check (a fresh seq_no is just the time), so its work is bounded: commands from
    a `trusted_sources` address (the node gives the config's monitor address, where
    the dashboard sends from) have a budget of `verify_per_s` checks a second (up to
    `verify_burst` at once), and every other source (or an unknown one, None)
    shares another such budget; past it a command is dropped as `rate_limited`
    before any check. An untrusted source whose command failed the check is
    remembered (the last `max_penalized` of them) and its commands are dropped as
    `source_penalized` for `penalty_s`, so one forging address cannot keep the
    others' budget spent.

    `last_seq_no` starts where the caller says: a node keeps the last accepted
    one in its state directory and starts from it after a restart (or, with no
    record, from its wall clock minus the tolerance), so a command it obeyed
    before the restart is not obeyed again.
    """

    DROP_REASONS = (
        "not_control",
        "malformed",
        "not_admin",
        "wrong_cluster",
        "wrong_target",
        "stale_seq_no",
        "expired",
        "too_far_ahead",
        "source_penalized",
        "rate_limited",
        "bad_signature",
    )

    def __init__(
        self,
        node_id: int,
        cluster: bytes,
        *,
        last_seq_no: int = 0,
        max_age_s: float = CONTROL_MAX_AGE_S,
        clock_tolerance_s: float = 1.0,
        trusted_sources: Sequence[Any] = (),
        verify_per_s: float = CONTROL_VERIFY_PER_S,
        verify_burst: int = CONTROL_VERIFY_BURST,
        penalty_s: float = CONTROL_PENALTY_S,
        max_penalized: int = 1024,
    ) -> None:
        if len(cluster) != CLUSTER_ID_BYTES:
            raise ValueError(f"a cluster id has {CLUSTER_ID_BYTES} bytes")
        if verify_per_s <= 0 or verify_burst < 1 or penalty_s < 0 or max_penalized < 0:
            raise ValueError("verify_per_s > 0, verify_burst >= 1, penalty_s >= 0 and "
                             "max_penalized >= 0 are required")
        self.node_id = node_id
        self.cluster = cluster
        self.last_seq_no = last_seq_no
        self.max_age_us = round(max_age_s * 1e6)
        self.tolerance_us = round(clock_tolerance_s * 1e6)
        self.trusted_sources = frozenset(trusted_sources)
        self._trusted_budget = _TokenBucket(verify_per_s, verify_burst)
        self._others_budget = _TokenBucket(verify_per_s, verify_burst)
        self.penalty_us = round(penalty_s * 1e6)
        self.max_penalized = max_penalized
        self._penalized: collections.OrderedDict[Any, int] = collections.OrderedDict()
        self.accepted = 0
        self.verified = 0  # signature checks done
        self.drops: collections.Counter[str] = collections.Counter()

    def accept(self, payload: bytes, verifier: Any, wall_us: int,
               source: Any = None) -> ControlCommand | None:
        """The command to carry out at wall-clock time `wall_us`, or None (counted).
        `source`: the address it came from (None: unknown)."""
        if not is_control(payload):
            self.drops["not_control"] += 1
            return None
        try:
            opened = _open_untrusted(payload)
        except MalformedMessage:
            self.drops["malformed"] += 1
            return None
        cmd = opened.message
        assert isinstance(cmd, ControlCommand)
        if opened.identity != ("admin", 0):
            self.drops["not_admin"] += 1
            return None
        if cmd.cluster != self.cluster:
            self.drops["wrong_cluster"] += 1
            return None
        if cmd.target != self.node_id:
            self.drops["wrong_target"] += 1
            return None
        if cmd.seq_no <= self.last_seq_no:
            self.drops["stale_seq_no"] += 1
            return None
        if cmd.seq_no < wall_us - self.max_age_us - self.tolerance_us:
            self.drops["expired"] += 1
            return None
        if cmd.seq_no > wall_us + self.tolerance_us:
            self.drops["too_far_ahead"] += 1
            return None
        trusted = source is not None and source in self.trusted_sources
        if not trusted and source is not None and source in self._penalized:
            if wall_us < self._penalized[source]:
                self.drops["source_penalized"] += 1
                return None
            del self._penalized[source]
        budget = self._trusted_budget if trusted else self._others_budget
        if not budget.take(wall_us):
            self.drops["rate_limited"] += 1
            return None
        self.verified += 1
        if not _verify(opened, verifier):
            self.drops["bad_signature"] += 1
            if not trusted and source is not None and self.max_penalized:
                self._penalized.pop(source, None)
                self._penalized[source] = wall_us + self.penalty_us
                if len(self._penalized) > self.max_penalized:
                    self._penalized.popitem(last=False)
            return None
        self.last_seq_no = cmd.seq_no
        self.accepted += 1
        return cmd

    def statistics(self) -> dict[str, Any]:
        """accepted, last_seq_no, verified (signature checks done) and drops by reason
        (every reason present)."""
        return {
            "accepted": self.accepted,
            "last_seq_no": self.last_seq_no,
            "verified": self.verified,
            "drops": {reason: self.drops[reason] for reason in self.DROP_REASONS},
        }


# --------------------------------------------------------------------------
# The node's side: what to send and when
# --------------------------------------------------------------------------


def _printable(text: str, limit: int) -> str:
    """`text` as printable ASCII (others replaced by '?'), cut to `limit` chars ('...' marks a cut)."""
    clean = "".join(c if " " <= c <= "~" else "?" for c in text)
    if len(clean) > limit:
        return clean[: max(0, limit - 3)] + "..."
    return clean


def _short_op(op: Any) -> str:
    name = type(op).__name__.lower()
    if name == "put":
        value = op.value.decode("utf-8", "replace") if isinstance(op.value, bytes) else op.value
        return f"put {op.key}={value}"
    if name in ("get", "delete"):
        return f"{'del' if name == 'delete' else 'get'} {op.key}"
    if name == "cas":
        return f"cas {op.key}"
    if name == "lock":
        return f"lock {op.name} {op.ttl_ms}ms"
    if name == "unlock":
        return f"unlock {op.name} {op.token}"
    return name


def shorten_ops(
    ops: Sequence[bytes], limit: int = 48, show: int = 3, total: int | None = None
) -> str:
    """A short printable text of a batch's op bytes: `put k1=v; get k2 +5`.

    Decodes at most `show` of `ops` (KV ops; anything else shows as `?`);
    `total` is the batch's size when `ops` holds only its first ops (default
    `len(ops)`); the count of the ops not shown follows as `+N`. The result
    has at most `limit` characters. An empty batch (the null request of a
    view change) is `(null)`.
    """
    total = len(ops) if total is None else total
    if not total:
        return "(null)"
    parts = []
    for data in ops[:show]:
        try:
            parts.append(_short_op(decode_op_untrusted(data)))
        except MalformedMessage:
            parts.append("?")
    text = "; ".join(parts)
    if total > len(parts):
        text += f" +{total - len(parts)}"
    return _printable(text, limit)


def _scalar(value: Any) -> Scalar:
    if isinstance(value, bool):
        return value
    if isinstance(value, int):
        return value if -_U63 <= value < _U63 else _printable(str(value), MAX_VALUE_CHARS)
    if isinstance(value, (bytes, bytearray)):
        return bytes(value).hex()[:32]
    if isinstance(value, str):
        return _printable(value, MAX_VALUE_CHARS)
    return _printable(str(value), MAX_VALUE_CHARS)


def event_fields(fields: Mapping[str, Any]) -> Fields:
    """An Event's fields as telemetry scalars (at most MAX_FIELDS, in order).

    A float becomes integer milliseconds: `duration_s` -> `duration_ms`, any
    other key `k` -> `k_ms`; bytes become hex (cut to 32 digits); text is made
    printable and cut; anything else is its printable `str()`.
    """
    out: list[tuple[str, Scalar]] = []
    for key, value in list(fields.items())[:MAX_FIELDS]:
        name = str(key)
        if isinstance(value, float):
            name = name[:-2] + "_ms" if name.endswith("_s") else name + "_ms"
            value = round(value * 1000) if math.isfinite(value) else str(value)
        out.append((_printable(name, MAX_NAME_CHARS), _scalar(value)))
    return tuple(out)


def _uint(value: Any) -> int:
    """A counter from a statistics dict as an unsigned integer (missing or odd: 0)."""
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not value >= 0:
        return 0
    if isinstance(value, float) and not math.isfinite(value):
        return _U63 - 1
    return min(int(value), _U63 - 1)


class TelemetryAggregator:
    """Turns what a node sees into the signed telemetry payloads to send, and when.

    Pure: the node hands in `now` (monotonic seconds). Usage in the runtime:

    * `observe(effect, now)` for every effect the node carries out; returns
      payloads to send at once: a `TelemetryEvent` per `Event` (except kind
      "evidence", which the `EvidenceReport` of the matching `Evidence` effect
      covers), an `EvidenceReport` per `Evidence` (carrying its two signed
      messages; one whose bodies are over `MAX_EVIDENCE_BODY_BYTES` is only
      counted, as `evidence_unsendable`). Both share a token bucket
      (`max_events_per_s`, burst `max_event_burst`); what it refuses is counted
      as `events_suppressed` (and shown in the status drops). `Executed`
      effects are only remembered (cheap: no formatting, no signing).
    * `poll(now, status_source)` whenever `now >= next_due()`; returns a
      `CommitBatch` of the commits of the last `commit_interval_s` (the newest
      `max_commits_per_batch` listed, the others counted) and, every
      `status_interval_s`, a `StatusSnapshot` built from `status_source()`,
      which is called only then.

    `status_source()` returns a mapping with the keys of
    `Replica.statistics()` (view, primary, in_view_change, last_executed,
    stable_seq, low_watermark, high_watermark, pending_requests, drops) and
    optionally msgs_in, msgs_out (counters), suspected ({peer: phi}),
    behaviour (str) and paused (bool); missing keys count as 0 / empty.

    Every payload carries the next `seq_no` (strictly increasing from
    `first_seq_no + 1`); start it at the wall clock in microseconds so a
    restarted node keeps numbering upwards. Bounded: at most one CommitBatch
    per interval of at most `max_commits_per_batch` commits (which fit one
    datagram), at most `max_event_burst` events at once.
    """

    def __init__(
        self,
        node_id: int,
        signer: Any,
        *,
        status_interval_s: float = 0.25,
        commit_interval_s: float = 0.1,
        max_commits_per_batch: int = 8,
        max_events_per_s: float = 20.0,
        max_event_burst: int = 20,
        first_seq_no: int = 0,
        ops_chars: int = 48,
    ) -> None:
        if not 1 <= max_commits_per_batch <= MAX_COMMITS:
            raise ValueError(f"max_commits_per_batch must be in 1..{MAX_COMMITS}")
        if not 0 < ops_chars <= MAX_VALUE_CHARS:
            raise ValueError(f"ops_chars must be in 1..{MAX_VALUE_CHARS}")
        self.node_id = node_id
        self.signer = signer
        self.status_interval_s = status_interval_s
        self.commit_interval_s = commit_interval_s
        self.max_commits_per_batch = max_commits_per_batch
        self.max_events_per_s = max_events_per_s
        self.max_event_burst = max_event_burst
        self.ops_chars = ops_chars
        self._seq_no = first_seq_no
        self._status_due: float | None = None  # None: at the first poll
        self._commit_due = math.inf
        self._commits: collections.deque[Executed] = collections.deque(maxlen=max_commits_per_batch)
        self._pending_commits = 0
        self._pending_requests = 0
        self._tokens = float(max_event_burst)
        self._tokens_at: float | None = None
        self._sent: collections.Counter[str] = collections.Counter()
        self.events_suppressed = 0
        self.evidence_unsendable = 0

    def _next_seq_no(self) -> int:
        self._seq_no += 1
        return self._seq_no

    def _sign(self, msg: Any) -> bytes:
        self._sent[type(msg).__name__] += 1
        return encode_signed(msg, self.signer)

    def _take_token(self, now: float) -> bool:
        if self._tokens_at is not None and now > self._tokens_at:
            self._tokens = min(
                float(self.max_event_burst),
                self._tokens + (now - self._tokens_at) * self.max_events_per_s,
            )
        self._tokens_at = now if self._tokens_at is None else max(now, self._tokens_at)
        if self._tokens >= 1.0:
            self._tokens -= 1.0
            return True
        self.events_suppressed += 1
        return False

    def observe(self, effect: Any, now: float) -> list[bytes]:
        """Note one effect; returns the payloads to send now (possibly none)."""
        if isinstance(effect, Executed):
            if not self._pending_commits:
                self._commit_due = now + self.commit_interval_s
            self._commits.append(effect)
            self._pending_commits += 1
            self._pending_requests += len(effect.batch.requests)
            return []
        if isinstance(effect, Event):
            if effect.kind == "evidence" or not self._take_token(now):
                return []
            return [
                self._sign(
                    TelemetryEvent(
                        self.node_id,
                        self._next_seq_no(),
                        _printable(effect.kind, MAX_NAME_CHARS),
                        event_fields(effect.fields),
                    )
                )
            ]
        if isinstance(effect, Evidence):
            first, second = effect.first, effect.second
            if not all(
                isinstance(s.body, bytes)
                and 0 < len(s.body) <= MAX_EVIDENCE_BODY_BYTES
                and isinstance(s.signature, bytes)
                and len(s.signature) == SIGNATURE_BYTES
                for s in (first, second)
            ):
                self.evidence_unsendable += 1  # never for the four kinds a replica proves
                return []
            if not self._take_token(now):
                return []
            return [
                self._sign(
                    EvidenceReport(
                        self.node_id,
                        self._next_seq_no(),
                        first.body,
                        first.signature,
                        second.body,
                        second.signature,
                    )
                )
            ]
        return []

    def next_due(self) -> float:
        """The monotonic time by which `poll` should run next (-inf before the first poll)."""
        status_due = -math.inf if self._status_due is None else self._status_due
        return min(status_due, self._commit_due)

    def poll(self, now: float, status_source: Callable[[], Mapping[str, Any]]) -> list[bytes]:
        """The payloads that are due at `now`: a CommitBatch and/or a StatusSnapshot."""
        out = []
        if self._pending_commits and now >= self._commit_due:
            out.append(self._flush_commits())
        if self._status_due is None or now >= self._status_due:
            out.append(self._sign(self.snapshot(now, status_source())))
            self._status_due = now + self.status_interval_s
        return out

    def _flush_commits(self) -> bytes:
        listed = []
        for e in self._commits:
            ops = [r.statement.op for r in e.batch.requests[:3]]
            text = shorten_ops(ops, self.ops_chars, total=len(e.batch.requests))
            listed.append(
                CommitInfo(
                    e.seq, e.view, len(e.batch.requests), text, e.batch.batch_time, e.digest[:8]
                )
            )
        listed_requests = sum(c.size for c in listed)
        batch = CommitBatch(
            self.node_id,
            self._next_seq_no(),
            tuple(listed),
            self._pending_commits - len(listed),
            max(0, self._pending_requests - listed_requests),
        )
        self._commits.clear()
        self._pending_commits = self._pending_requests = 0
        self._commit_due = math.inf
        return self._sign(batch)

    def snapshot(self, now: float, stats: Mapping[str, Any]) -> StatusSnapshot:
        """The StatusSnapshot for `stats` (the mapping `status_source` returns), numbered next."""
        drops = {str(k): _uint(v) for k, v in dict(stats.get("drops") or {}).items()}
        if self.events_suppressed:
            drops["telemetry_events_suppressed"] = self.events_suppressed
        if self.evidence_unsendable:
            drops["telemetry_evidence_unsendable"] = self.evidence_unsendable
        top = sorted(drops.items(), key=lambda kv: (-kv[1], kv[0]))[:MAX_DROP_REASONS]
        suspected = sorted(
            (_uint(peer), _uint(round(phi * 1000)))
            for peer, phi in dict(stats.get("suspected") or {}).items()
            if isinstance(phi, (int, float)) and math.isfinite(phi)
        )
        return StatusSnapshot(
            node=self.node_id,
            seq_no=self._next_seq_no(),
            time_ms=_uint(round(now * 1000)),
            view=_uint(stats.get("view")),
            primary=_uint(stats.get("primary")),
            last_executed=_uint(stats.get("last_executed")),
            stable_seq=_uint(stats.get("stable_seq")),
            low_watermark=_uint(stats.get("low_watermark")),
            high_watermark=_uint(stats.get("high_watermark")),
            pending=_uint(stats.get("pending_requests", stats.get("pending"))),
            in_view_change=bool(stats.get("in_view_change")),
            suspected=tuple(suspected[:MAX_SUSPECTED]),
            msgs_in=_uint(stats.get("msgs_in")),
            msgs_out=_uint(stats.get("msgs_out")),
            drops=tuple((_printable(k, MAX_NAME_CHARS), v) for k, v in top),
            drops_total=min(sum(drops.values()), _U63 - 1),
            behaviour=_printable(str(stats.get("behaviour") or ""), MAX_NAME_CHARS),
            paused=bool(stats.get("paused")),
        )

    def statistics(self) -> dict[str, Any]:
        """Payloads sent by type, events suppressed, commits waiting for the next batch."""
        return {
            "sent": dict(self._sent),
            "events_suppressed": self.events_suppressed,
            "evidence_unsendable": self.evidence_unsendable,
            "pending_commits": self._pending_commits,
            "seq_no": self._seq_no,
        }
