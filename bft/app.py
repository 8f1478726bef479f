"""The replicated application: the `StateMachine` protocol and the default `KVStore`.

`KVStore` is a key-value store plus a lock service that hands out fencing tokens
(Kleppmann, DDIA chapter 8, "Fencing tokens", Figure 8-5). Everything it does is
a deterministic function of its state, the op bytes and the `ExecContext`
(agreed sequence number, position in the batch, agreed batch time): no clock,
no randomness, no iteration-order dependence. Every correct replica that
executes the same ops in the same order reaches the same `digest()`.

Types: keys and lock names are `str` (at most `KVLimits.max_key_bytes` /
`max_name_bytes` once UTF-8 encoded); values are `bytes`.

Ops are canonical CBOR arrays (build them with `ops`):

    ["put",    key, value (, [lock, token])]       -> ok | stale_token
    ["get",    key]                                -> value | not_found
    ["delete", key (, [lock, token])]              -> ok | not_found | stale_token
    ["cas",    key, expected|null, new (, [lock, token])]
                                                   -> ok | cas_failed | stale_token
    ["lock",   name, ttl_ms]                       -> granted | locked
    ["unlock", name, token]                        -> ok | not_found | stale_token
                                                      | error(not_holder)

Anything else (wrong types, extra items, tags, floats, non-canonical encoding,
sizes over the limits) gives an `error(reason)` result; `execute` never raises
for a bad op.

Locks and fencing tokens:

* `lock(name, ttl_ms)` by client c grants a lease when the lock is free or its
  lease is over *in agreed time* by every correct clock: agreed time t is only
  known to be within `ctx.max_clock_skew_us` of each correct clock, so another
  client gets the lock only when `t - skew > expiry_us + skew` (PROTOCOL.md
  "Leases and agreed time"; Spanner's commit wait). The lease expires at
  `ctx.batch_time_us + ttl_ms * 1000` (the expiry reported). The token is
  `ctx.seq * 65536 + ctx.index`: a zxid analogue derived from the agreed order,
  so tokens strictly increase across the whole log (and so per lock), and every
  replica computes the same token without coordination. If c already holds a
  live lease (`t < expiry_us`), the lease is renewed: same token, new expiry;
  after that c gets a new grant. A lease of another client that is not over
  by every correct clock gives `locked(holder, expiry_us)`.
* `unlock(name, token)` releases the lock when `token` is the current token
  and the caller is the holder; the lock's record is then removed.
* A write carrying `fence=(lock, token)` is applied only when `token` is the
  lock's current token: one that was granted, not released, and not superseded
  by a newer grant. Otherwise the result is `stale_token` and nothing changes.
  As in DDIA Figure 8-5 the resource (this store) checks the token, so a client
  that paused while its lease expired and another client took the lock cannot
  overwrite the newer holder's data. Expiry alone does not invalidate a token:
  only a newer grant (or a release) does. When the lock table is full
  (`KVLimits.max_locks`), a new lock evicts the lock whose lease expired first
  among those over by every correct clock (and fails with
  `error(too_many_locks)` if there is none).

Per-client quotas (issue 21, item 6): every stored key is owned by the client
that last wrote it (put or a successful cas), and its key and value bytes count
against that client's quota: at most `KVLimits.max_keys_per_client` keys and
`max_bytes_per_client` bytes per client id. A write that would take its writer
over either gives `error(client_key_quota)` / `error(client_byte_quota)` and
changes nothing, so one client cannot fill the global caps (`too_many_keys`,
`store_full`) alone. A delete (by anyone) frees the owner's share.

Snapshot: canonical CBOR of `["kv2", [[key, value, owner]...], [[name, token,
holder, expiry_us]...]]`, both lists sorted by key / name; `digest() =
sha256(snapshot())`. The owners are in it, so the per-client accounting (a
function of the owners and sizes) is part of the digest, and `restore` recounts
it. `restore` accepts exactly that form (and rejects anything else with
ValueError), so `restore(snapshot())` reproduces the digest. A client over its
quota is accepted (the quota was lowered in the config): it keeps its keys and
is refused growth until it is under again.

Upgrade from "kv1" (the format before quotas: `["kv1", [[key, value]...],
locks]`): `restore` also accepts a kv1 snapshot, as strictly. Its keys are owned
by nobody (owner `null` in kv2) and charged to no client: who wrote them is
not recorded, and charging them to anyone would refuse writes of a client for
data it may never have written. They still count against the global caps,
exactly as before the upgrade. A key owned by nobody is taken over by its next
writer, who is charged for it like for another client's key; a delete frees it.
The conversion is a function of the kv1 bytes alone, so every replica that
restores the same kv1 state reaches the same kv2 state and digest.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field
from typing import Any, Protocol, TypeGuard, runtime_checkable

import cbor2

from bft.cbor import loads_untrusted
from bft.errors import InvariantViolation, MalformedMessage

#: Tokens are `seq * TOKEN_INDEX_SPAN + index`; a batch holds fewer requests than this.
TOKEN_INDEX_SPAN = 65536
#: Largest sequence number whose tokens still fit in an unsigned 63-bit integer.
MAX_TOKEN_SEQ = (2**63 - 1) // TOKEN_INDEX_SPAN - 1
#: Integers in ops, results and snapshots are in [0, U64_LIMIT) (as in the codec).
U64_LIMIT = 2**63

SNAPSHOT_VERSION = "kv2"
#: A snapshot up to this size is kept (cached) until the next change; a bigger one is not:
#: its bytes would be a second full copy of the state beside the replica's (own_snapshots,
#: stable_snapshot), and a replica asks for it once per checkpoint.
SNAPSHOT_CACHE_MAX_BYTES = 1 << 20
#: The format before per-client quotas (issue 20 and before): no owners. Still restored.
SNAPSHOT_VERSION_KV1 = "kv1"
# A snapshot's array head (three items) and its version text, as cbor2 writes them
_SNAPSHOT_HEAD = b"\x83" + bytes((0x60 | len(SNAPSHOT_VERSION),)) + SNAPSHOT_VERSION.encode()


# --------------------------------------------------------------------------
# Execution context and the StateMachine protocol
# --------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class ExecContext:
    """Where and when an op executes, as agreed by the replicas.

    `seq`: the committing sequence number; `index`: the request's position in
    its batch; `batch_time_us`: the batch's agreed time (microseconds; never
    below an earlier batch's); `client` and `timestamp`: the request's client
    id and request number; `max_clock_skew_us`: the cluster's bound on how far
    agreed time may be from any correct clock (`timeouts.max_clock_skew_s`),
    the same at every replica: agreed time t means "somewhere in [t - skew,
    t + skew]" by a correct clock. Raises ValueError on values no correct
    replica would pass (negative, or `index >= TOKEN_INDEX_SPAN`, or `seq >
    MAX_TOKEN_SEQ`).
    """

    seq: int
    index: int
    batch_time_us: int
    client: int
    timestamp: int
    max_clock_skew_us: int = 0

    def __post_init__(self) -> None:
        seq, index = self.seq, self.index
        if (type(seq) is int and type(index) is int and type(self.batch_time_us) is int
                and type(self.client) is int and type(self.timestamp) is int
                and type(self.max_clock_skew_us) is int and 0 <= seq <= MAX_TOKEN_SEQ
                and 0 <= index < TOKEN_INDEX_SPAN and 0 <= self.batch_time_us < U64_LIMIT
                and 0 <= self.client < U64_LIMIT and 0 <= self.timestamp < U64_LIMIT
                and 0 <= self.max_clock_skew_us < U64_LIMIT):
            return  # the usual case, in one test; otherwise say which value is wrong:
        for name in ("seq", "index", "batch_time_us", "client", "timestamp",
                     "max_clock_skew_us"):
            value = getattr(self, name)
            if type(value) is not int or not 0 <= value < U64_LIMIT:
                raise ValueError(f"ExecContext.{name} must be an int in [0, 2**63), got {value!r}")
        if self.index >= TOKEN_INDEX_SPAN:
            raise ValueError(f"ExecContext.index must be < {TOKEN_INDEX_SPAN}, got {self.index}")
        if self.seq > MAX_TOKEN_SEQ:
            raise ValueError(f"ExecContext.seq must be <= {MAX_TOKEN_SEQ}, got {self.seq}")

    @property
    def token(self) -> int:
        """The fencing token a lock granted at this position gets: seq * 65536 + index."""
        return self.seq * TOKEN_INDEX_SPAN + self.index


@runtime_checkable
class StateMachine(Protocol):
    """A deterministic replicated application.

    - `execute(op, ctx)` applies one op and returns its result bytes; for a bad
      op it returns an error result, it never raises.
    - `snapshot()` returns the canonical bytes of the whole state.
    - `restore(snapshot)` replaces the state; raises ValueError on bad bytes
      (and then leaves the state unchanged).
    - `digest()` is the 32-byte SHA-256 of the canonical state, independent of
      insertion or iteration order; `restore(snapshot())` keeps it.
    """

    def execute(self, op: bytes, ctx: ExecContext) -> bytes: ...

    def snapshot(self) -> bytes: ...

    def restore(self, snapshot: bytes) -> None: ...

    def digest(self) -> bytes: ...


# --------------------------------------------------------------------------
# Limits
# --------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class KVLimits:
    """Bounds on ops and on the state. Every replica must use the same limits.

    Defaults keep every result (a value plus a few bytes) below the codec's
    64 KiB op/result limit and the snapshot below about 64 MiB plus overhead.
    """

    max_op_bytes: int = 64 * 1024
    max_key_bytes: int = 256  # UTF-8 bytes of a key
    max_value_bytes: int = 32 * 1024
    max_name_bytes: int = 256  # UTF-8 bytes of a lock name
    max_keys: int = 100_000
    max_locks: int = 10_000
    max_state_bytes: int = 64 * 1024 * 1024  # sum of key and value bytes
    max_ttl_ms: int = 24 * 3600 * 1000
    # Per-client quotas (keys owned, and their key and value bytes): an eighth of the
    # global caps, so one client cannot refuse every other client's writes.
    max_keys_per_client: int = 12_500
    max_bytes_per_client: int = 8 * 1024 * 1024

    @property
    def max_snapshot_bytes(self) -> int:
        """Upper bound on a valid snapshot's size (state plus per-entry CBOR overhead)."""
        per_key = 48  # entry head, key and value heads, owner id
        per_lock = self.max_name_bytes + 48
        return 64 + self.max_state_bytes + self.max_keys * per_key + self.max_locks * per_lock


DEFAULT_KV_LIMITS = KVLimits()


# --------------------------------------------------------------------------
# Strict CBOR
# --------------------------------------------------------------------------


def _loads_strict(data: bytes, max_bytes: int, max_depth: int) -> Any:
    """Decode canonical CBOR made of arrays, unsigned/negative ints, bytes, text and null.

    Raises ValueError for anything else: too long, tags, maps, floats, booleans,
    indefinite lengths, trailing bytes, or bytes that are not the canonical
    encoding of what they decode to (so every value has exactly one encoding).
    The reading is `bft.cbor.loads_untrusted`'s (the one strict CBOR reader);
    its `MalformedMessage` becomes ValueError here.
    """
    if not isinstance(data, bytes):
        raise TypeError(f"expected bytes, got {type(data).__name__}")
    if len(data) > max_bytes:
        raise ValueError(f"{len(data)} bytes exceeds the limit of {max_bytes}")
    try:
        return loads_untrusted(data, max_depth)
    except MalformedMessage as exc:
        raise ValueError(f"undecodable CBOR: {exc}") from None


def _dumps(obj: Any) -> bytes:
    return cbor2.dumps(obj, canonical=True)


def _cbor_head(major: int, n: int) -> bytes:
    """The shortest CBOR head of major type `major` (its top 3 bits) and argument n."""
    if n < 24:
        return bytes((major | n,))
    if n < 0x100:
        return bytes((major | 24, n))
    if n < 0x10000:
        return bytes((major | 25,)) + n.to_bytes(2, "big")
    if n < 0x100000000:
        return bytes((major | 26,)) + n.to_bytes(4, "big")
    return bytes((major | 27,)) + n.to_bytes(8, "big")  # OverflowError past 2**64


def _cbor_uint(n: int) -> bytes:
    """The canonical CBOR of an unsigned int; TypeError or ValueError for anything else."""
    if type(n) is not int or not 0 <= n < 2**64:
        raise ValueError("not an unsigned 64-bit int")
    return _cbor_head(0, n)


def _is_u64(x: object) -> TypeGuard[int]:
    return type(x) is int and 0 <= x < U64_LIMIT


# --------------------------------------------------------------------------
# Ops
# --------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Fence:
    """A fencing token carried by a write: the lock's name and the token granted for it."""

    lock: str
    token: int


@dataclass(frozen=True, slots=True)
class Put:
    key: str
    value: bytes
    fence: Fence | None = None


@dataclass(frozen=True, slots=True)
class Get:
    key: str


@dataclass(frozen=True, slots=True)
class Delete:
    key: str
    fence: Fence | None = None


@dataclass(frozen=True, slots=True)
class Cas:
    """Compare-and-set: set `new` iff the current value is `expected` (None: key absent)."""

    key: str
    expected: bytes | None
    new: bytes
    fence: Fence | None = None


@dataclass(frozen=True, slots=True)
class Lock:
    name: str
    ttl_ms: int


@dataclass(frozen=True, slots=True)
class Unlock:
    name: str
    token: int


Op = Put | Get | Delete | Cas | Lock | Unlock


def _fence_cbor(fence: Fence | None) -> list[Any]:
    return [] if fence is None else [[fence.lock, fence.token]]


def encode_op(op: Op) -> bytes:
    """Canonical CBOR bytes of an op (what a client puts in Request.op).

    Raises TypeError/ValueError when a field has the wrong type or range (a
    caller's bug). Size limits are checked by the store, which answers
    `error(...)` for an op over them.
    """
    if isinstance(op, Put):
        _check_text(op.key, "key")
        _check_bytes(op.value, "value")
        _check_fence(op.fence)
        return _dumps(["put", op.key, op.value, *_fence_cbor(op.fence)])
    if isinstance(op, Get):
        _check_text(op.key, "key")
        return _dumps(["get", op.key])
    if isinstance(op, Delete):
        _check_text(op.key, "key")
        _check_fence(op.fence)
        return _dumps(["delete", op.key, *_fence_cbor(op.fence)])
    if isinstance(op, Cas):
        _check_text(op.key, "key")
        if op.expected is not None:
            _check_bytes(op.expected, "expected")
        _check_bytes(op.new, "new")
        _check_fence(op.fence)
        return _dumps(["cas", op.key, op.expected, op.new, *_fence_cbor(op.fence)])
    if isinstance(op, Lock):
        _check_text(op.name, "name")
        _check_u64(op.ttl_ms, "ttl_ms")
        return _dumps(["lock", op.name, op.ttl_ms])
    if isinstance(op, Unlock):
        _check_text(op.name, "name")
        _check_u64(op.token, "token")
        return _dumps(["unlock", op.name, op.token])
    raise TypeError(f"not an op: {op!r}")


def _check_text(x: object, what: str) -> None:
    if type(x) is not str:
        raise TypeError(f"{what} must be str, got {type(x).__name__}")


def _check_bytes(x: object, what: str) -> None:
    if type(x) is not bytes:
        raise TypeError(f"{what} must be bytes, got {type(x).__name__}")


def _check_u64(x: object, what: str) -> None:
    if not _is_u64(x):
        raise ValueError(f"{what} must be an int in [0, 2**63), got {x!r}")


def _check_fence(fence: object) -> None:
    if fence is None:
        return
    if not isinstance(fence, Fence):
        raise TypeError(f"fence must be a Fence or None, got {fence!r}")
    _check_text(fence.lock, "fence.lock")
    _check_u64(fence.token, "fence.token")


def _as_fence(fence: Fence | tuple[str, int] | None) -> Fence | None:
    if fence is None or isinstance(fence, Fence):
        return fence
    lock, token = fence
    return Fence(lock, token)


class Ops:
    """Builders of op bytes: `ops.put("k", b"v", fence=("lock", token))` and so on.

    `fence` is a `Fence`, a `(lock_name, token)` pair, or None.
    """

    @staticmethod
    def put(key: str, value: bytes, fence: Fence | tuple[str, int] | None = None) -> bytes:
        return encode_op(Put(key, value, _as_fence(fence)))

    @staticmethod
    def get(key: str) -> bytes:
        return encode_op(Get(key))

    @staticmethod
    def delete(key: str, fence: Fence | tuple[str, int] | None = None) -> bytes:
        return encode_op(Delete(key, _as_fence(fence)))

    @staticmethod
    def cas(
        key: str, expected: bytes | None, new: bytes, fence: Fence | tuple[str, int] | None = None
    ) -> bytes:
        return encode_op(Cas(key, expected, new, _as_fence(fence)))

    @staticmethod
    def lock(name: str, ttl_ms: int) -> bytes:
        return encode_op(Lock(name, ttl_ms))

    @staticmethod
    def unlock(name: str, token: int) -> bytes:
        return encode_op(Unlock(name, token))


ops = Ops()


class _BadOp(Exception):
    """Internal: an op that does not decode; `reason` goes into the error result."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


def _utf8_len(s: str) -> int:
    return len(s.encode("utf-8", "surrogatepass"))


def _parse_op(data: bytes, limits: KVLimits) -> Op:
    """Decode op bytes strictly and check them against `limits`; raises _BadOp(reason)."""
    if len(data) > limits.max_op_bytes:
        raise _BadOp("op_too_large")
    try:
        obj = _loads_strict(data, limits.max_op_bytes, max_depth=3)
    except ValueError:
        raise _BadOp("malformed") from None
    if type(obj) is not list or not obj or type(obj[0]) is not str:
        raise _BadOp("malformed")
    name, args = obj[0], obj[1:]

    def key(x: object, what: str = "key", max_bytes: int = limits.max_key_bytes) -> str:
        if type(x) is not str:
            raise _BadOp(f"bad_{what}")
        if _utf8_len(x) > max_bytes:
            raise _BadOp(f"{what}_too_long")
        return x

    def value(x: object, what: str = "value") -> bytes:
        if type(x) is not bytes:
            raise _BadOp(f"bad_{what}")
        if len(x) > limits.max_value_bytes:
            raise _BadOp(f"{what}_too_large")
        return x

    def u64(x: object, what: str) -> int:
        if not _is_u64(x):
            raise _BadOp(f"bad_{what}")
        return x

    def fence(rest: list[Any]) -> Fence | None:
        if not rest:
            return None
        if len(rest) != 1 or type(rest[0]) is not list or len(rest[0]) != 2:
            raise _BadOp("bad_fence")
        lock, token = rest[0]
        return Fence(key(lock, "fence_lock", limits.max_name_bytes), u64(token, "fence_token"))

    if name == "put" and len(args) in (2, 3):
        return Put(key(args[0]), value(args[1]), fence(args[2:]))
    if name == "get" and len(args) == 1:
        return Get(key(args[0]))
    if name == "delete" and len(args) in (1, 2):
        return Delete(key(args[0]), fence(args[1:]))
    if name == "cas" and len(args) in (3, 4):
        expected = None if args[1] is None else value(args[1], "expected")
        return Cas(key(args[0]), expected, value(args[2], "new"), fence(args[3:]))
    if name == "lock" and len(args) == 2:
        ttl_ms = u64(args[1], "ttl")
        if not 1 <= ttl_ms <= limits.max_ttl_ms:
            raise _BadOp("bad_ttl")
        return Lock(key(args[0], "name", limits.max_name_bytes), ttl_ms)
    if name == "unlock" and len(args) == 2:
        return Unlock(key(args[0], "name", limits.max_name_bytes), u64(args[1], "token"))
    if name in ("put", "get", "delete", "cas", "lock", "unlock"):
        raise _BadOp("bad_arity")
    raise _BadOp("unknown_op")


#: Parsed ops remembered by their bytes (see _parse_op_memo): each op is executed by every
#: replica and by the checkers' model, and parsing is a pure function of the bytes and limits.
OP_MEMO_SIZE = 4096
#: Only ops up to this size are remembered: a remembered op pins its bytes and its parsed
#: value, and 4096 big puts would pin ~256 MiB, values overwritten long ago included.
OP_MEMO_MAX_OP_BYTES = 1024
_op_memo: dict[bytes, tuple[KVLimits, Op | str]] = {}


def _parse_op_memo(data: bytes, limits: KVLimits) -> Op:
    """`_parse_op(data, limits)`, remembered for the last OP_MEMO_SIZE distinct op bytes (ops
    are immutable; a bad op is remembered by its reason and raises _BadOp again)."""
    hit = _op_memo.get(data)
    if hit is not None and hit[0] is limits:
        parsed = hit[1]
    else:
        try:
            parsed = _parse_op(data, limits)
        except _BadOp as exc:
            parsed = exc.reason
        if type(data) is bytes and len(data) <= OP_MEMO_MAX_OP_BYTES:  # bytes: a key must not change
            if len(_op_memo) >= OP_MEMO_SIZE:
                _op_memo.clear()  # (cheaper than evicting one by one)
            _op_memo[data] = (limits, parsed)
    if isinstance(parsed, str):
        raise _BadOp(parsed)
    return parsed


def decode_op_untrusted(data: bytes, limits: KVLimits = DEFAULT_KV_LIMITS) -> Op:
    """Decode op bytes strictly (as `KVStore.execute` does); raises only MalformedMessage."""
    try:
        return _parse_op(data, limits)
    except _BadOp as exc:
        raise MalformedMessage(f"bad op: {exc.reason}") from None


# --------------------------------------------------------------------------
# Results
# --------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Result:
    """The decoded result of an op. `kind` is one of:

    - `ok`: the write / unlock happened;
    - `value`: `value` is the key's value;
    - `not_found`: no such key (get, delete) or no such lock (unlock);
    - `granted`: the lock is yours with `token` until `expiry_us` (agreed time);
    - `locked`: client `holder` holds the lock until `expiry_us`;
    - `stale_token`: the fencing token is not the lock's current one; nothing changed;
    - `cas_failed`: the current value (`value`, None when absent) differs from expected;
    - `error`: a bad op; `reason` says why; nothing changed.

    `str(result)` is the readable form the CLI prints, e.g. `granted(token=65537,
    expiry_us=5000)`.
    """

    kind: str
    value: bytes | None = None
    token: int | None = None
    holder: int | None = None
    expiry_us: int | None = None
    reason: str | None = None

    def __str__(self) -> str:
        if self.kind == "value":
            return f"value({self.value!r})"
        if self.kind == "granted":
            return f"granted(token={self.token}, expiry_us={self.expiry_us})"
        if self.kind == "locked":
            return f"locked(holder={self.holder}, expiry_us={self.expiry_us})"
        if self.kind == "cas_failed":
            current = "absent" if self.value is None else repr(self.value)
            return f"cas_failed(current={current})"
        if self.kind == "error":
            return f"error({self.reason})"
        return self.kind

    def encode(self) -> bytes:
        """Canonical CBOR bytes of this result (what goes into Reply.result)."""
        kind = self.kind
        if kind == "value" and type(self.value) is bytes:  # the usual results, written directly
            return b"".join((_VALUE_HEAD, _cbor_head(0x40, len(self.value)), self.value))
        if kind == "granted" and type(self.token) is int and type(self.expiry_us) is int \
                and 0 <= self.token < 2**64 and 0 <= self.expiry_us < 2**64:
            return b"".join((_GRANTED_HEAD, _cbor_head(0, self.token),
                             _cbor_head(0, self.expiry_us)))
        bare = _BARE_RESULTS.get(kind)
        if bare is not None:
            return bare
        if self.kind == "value":
            return _dumps(["value", self.value])
        if self.kind == "granted":
            return _dumps(["granted", self.token, self.expiry_us])
        if self.kind == "locked":
            return _dumps(["locked", self.holder, self.expiry_us])
        if self.kind == "cas_failed":
            return _dumps(["cas_failed", self.value])
        if self.kind == "error":
            return _dumps(["error", self.reason])
        if self.kind in ("ok", "not_found", "stale_token"):
            return _BARE_RESULTS[self.kind]
        raise ValueError(f"unknown result kind {self.kind!r}")


_BARE_RESULTS = {kind: _dumps([kind]) for kind in ("ok", "not_found", "stale_token")}
_VALUE_HEAD = _dumps(["value", b""])[:-1]  # ["value", v] up to v's head
_GRANTED_HEAD = _dumps(["granted", 0, 0])[:-2]  # ["granted", token, expiry] up to token

OK = Result("ok")
NOT_FOUND = Result("not_found")
STALE_TOKEN = Result("stale_token")

_MAX_REASON_CHARS = 64


#: Decoded results remembered by their bytes (results repeat: ok, not_found, values read by
#: several clients); a Result is immutable, so callers may share one.
RESULT_MEMO_SIZE = 1024
_result_memo: dict[bytes, Result] = {}


def decode_result_untrusted(data: bytes) -> Result:
    """Decode result bytes from a reply (untrusted); raises only MalformedMessage."""
    hit = _result_memo.get(data) if type(data) is bytes else None
    if hit is not None:
        return hit
    result = _decode_result(data)
    if type(data) is bytes and len(data) <= 1024:  # bounded memory
        if len(_result_memo) >= RESULT_MEMO_SIZE:
            _result_memo.clear()  # (cheaper than evicting one by one)
        _result_memo[data] = result
    return result


def _decode_result(data: bytes) -> Result:
    try:
        obj = _loads_strict(data, 2 * DEFAULT_KV_LIMITS.max_op_bytes, max_depth=2)
    except ValueError as exc:
        raise MalformedMessage(f"bad result: {exc}") from None
    if type(obj) is not list or not obj or type(obj[0]) is not str:
        raise MalformedMessage("bad result: not [kind, ...]")
    kind, args = obj[0], obj[1:]
    if kind in ("ok", "not_found", "stale_token") and not args:
        return Result(kind)
    if kind == "value" and len(args) == 1 and type(args[0]) is bytes:
        return Result(kind, value=args[0])
    if kind == "cas_failed" and len(args) == 1 and (args[0] is None or type(args[0]) is bytes):
        return Result(kind, value=args[0])
    if kind == "granted" and len(args) == 2 and all(_is_u64(a) for a in args):
        return Result(kind, token=args[0], expiry_us=args[1])
    if kind == "locked" and len(args) == 2 and all(_is_u64(a) for a in args):
        return Result(kind, holder=args[0], expiry_us=args[1])
    if (
        kind == "error"
        and len(args) == 1
        and type(args[0]) is str
        and len(args[0]) <= _MAX_REASON_CHARS
    ):
        return Result(kind, reason=args[0])
    raise MalformedMessage(f"bad result: {kind!r} with {len(args)} fields")


#: The name the brief uses; the same strict function.
decode_result = decode_result_untrusted


# --------------------------------------------------------------------------
# The store
# --------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class LockInfo:
    """A lock's current grant: `token`, `holder` (client id), lease end `expiry_us`."""

    token: int
    holder: int
    expiry_us: int


def _lease_over(info: LockInfo, now_us: int, skew_us: int) -> bool:
    """Whether the lease is over by every correct clock at agreed time `now_us`.

    Agreed time t is within `skew_us` of every correct clock, and so was the grant's
    time: the lease is over everywhere once `t - skew_us > expiry_us + skew_us`
    (PROTOCOL.md "Leases and agreed time").
    """
    return now_us - skew_us > info.expiry_us + skew_us


@dataclass
class _Counters:
    executed: int = 0
    by_kind: dict[str, int] = field(default_factory=dict)
    errors: dict[str, int] = field(default_factory=dict)


class KVStore:
    """Key-value store plus lock service with fencing tokens (see the module docstring).

    Deterministic: the state after a sequence of `execute` calls depends only on
    the ops and their contexts. `statistics()` counts are local observations
    and are not part of the state (not in the snapshot or the digest).
    """

    def __init__(self, limits: KVLimits = DEFAULT_KV_LIMITS) -> None:
        self.limits = limits
        self._data: dict[str, bytes] = {}
        # key -> the client that last wrote it; no entry for a key owned by nobody (kv1's)
        self._owner: dict[str, int] = {}
        # client -> [keys owned, their key and value bytes]; no entry for a client owning none
        self._usage: dict[int, list[int]] = {}
        self._locks: dict[str, LockInfo] = {}
        self._state_bytes = 0  # sum of UTF-8 key bytes and value bytes
        self._snapshot_cache: bytes | None = None
        self._counters = _Counters()

    # -- StateMachine --------------------------------------------------

    def execute(self, op: bytes, ctx: ExecContext) -> bytes:
        """Apply `op` at `ctx` and return the encoded `Result`; never raises for a bad op."""
        self._counters.executed += 1
        try:
            parsed = _parse_op_memo(op, self.limits)
        except _BadOp as exc:
            result = Result("error", reason=exc.reason)
        else:
            result = self._apply(parsed, ctx)
        kind = result.kind
        self._counters.by_kind[kind] = self._counters.by_kind.get(kind, 0) + 1
        if kind == "error":
            reason = result.reason or ""
            self._counters.errors[reason] = self._counters.errors.get(reason, 0) + 1
        return result.encode()

    def snapshot(self) -> bytes:
        """Canonical CBOR of the sorted state (cached until the next change, when at most
        SNAPSHOT_CACHE_MAX_BYTES)."""
        cached = self._snapshot_cache
        if cached is not None:
            return cached
        try:
            out = self._encode_snapshot()
        except (TypeError, ValueError, UnicodeEncodeError):  # not the usual types
            data = [[k, self._data[k], self._owner.get(k)] for k in sorted(self._data)]
            locks = [
                [name, info.token, info.holder, info.expiry_us]
                for name, info in sorted(self._locks.items())
            ]
            out = _dumps([SNAPSHOT_VERSION, data, locks])
        if len(out) <= SNAPSHOT_CACHE_MAX_BYTES:
            self._snapshot_cache = out
        return out

    def _encode_snapshot(self) -> bytes:
        """`_dumps([SNAPSHOT_VERSION, data, locks])` as `snapshot` builds it, written directly
        (the same bytes); TypeError or ValueError for a value of another type than a key's
        str, a value's bytes or a lock's u64s (snapshot then leaves it to cbor2)."""
        data, owner = self._data, self._owner
        out = [_SNAPSHOT_HEAD, _cbor_head(0x80, len(data))]
        for k in sorted(data):
            v = data[k]
            if type(k) is not str or type(v) is not bytes:
                raise TypeError("not a str key and bytes value")
            kb = k.encode()
            o = owner.get(k)
            out += (b"\x83", _cbor_head(0x60, len(kb)), kb, _cbor_head(0x40, len(v)), v,
                    b"\xf6" if o is None else _cbor_uint(o))
        locks = self._locks
        out.append(_cbor_head(0x80, len(locks)))
        for name in sorted(locks):
            info = locks[name]
            if type(name) is not str:
                raise TypeError("not a str lock name")
            nb = name.encode()
            out += (b"\x84", _cbor_head(0x60, len(nb)), nb, _cbor_uint(info.token),
                    _cbor_uint(info.holder), _cbor_uint(info.expiry_us))
        return b"".join(out)

    def digest(self) -> bytes:
        """SHA-256 of `snapshot()`: equal states give equal digests, whatever the history."""
        return hashlib.sha256(self.snapshot()).digest()

    def restore(self, snapshot: bytes) -> None:
        """Replace the state with `snapshot`'s; ValueError (state unchanged) if it is not valid.

        Valid means: exactly the bytes `snapshot()` would produce for some state
        within `self.limits` (canonical, sorted, no duplicates, sizes in range; the
        per-client quotas excepted, see the module docstring), or exactly the bytes
        the released code's kv1 `snapshot()` produced for one (its keys then owned by
        nobody).
        """
        limits = self.limits
        obj = _loads_strict(snapshot, limits.max_snapshot_bytes, max_depth=4)
        if (type(obj) is not list or len(obj) != 3
                or obj[0] not in (SNAPSHOT_VERSION, SNAPSHOT_VERSION_KV1)):
            raise ValueError(f"snapshot: not a {SNAPSHOT_VERSION} (or "
                             f"{SNAPSHOT_VERSION_KV1}) snapshot")
        kv1 = obj[0] == SNAPSHOT_VERSION_KV1
        entry_len = 2 if kv1 else 3
        raw_data, raw_locks = obj[1], obj[2]
        if type(raw_data) is not list or type(raw_locks) is not list:
            raise ValueError("snapshot: bad layout")
        if len(raw_data) > limits.max_keys or len(raw_locks) > limits.max_locks:
            raise ValueError("snapshot: too many entries")
        data: dict[str, bytes] = {}
        owners: dict[str, int] = {}
        usage: dict[int, list[int]] = {}
        state_bytes = 0
        previous: str | None = None
        for entry in raw_data:
            if type(entry) is not list or len(entry) != entry_len:
                raise ValueError("snapshot: bad key entry")
            k, v = entry[0], entry[1]
            owner = None if kv1 else entry[2]
            if (type(k) is not str or type(v) is not bytes
                    or not (owner is None or _is_u64(owner))):
                raise ValueError("snapshot: bad key entry types")
            if _utf8_len(k) > limits.max_key_bytes or len(v) > limits.max_value_bytes:
                raise ValueError("snapshot: key or value over the limits")
            if previous is not None and not previous < k:
                raise ValueError("snapshot: keys not strictly sorted")
            previous = k
            data[k] = v
            size = _utf8_len(k) + len(v)
            state_bytes += size
            if owner is not None:
                owners[k] = owner
                used = usage.setdefault(owner, [0, 0])
                used[0] += 1
                used[1] += size
        if state_bytes > limits.max_state_bytes:
            raise ValueError("snapshot: state over max_state_bytes")
        # A client over its quota is not refused: a lowered quota must not make a node
        # refuse its own state (the client only cannot grow until it is under again).
        locks: dict[str, LockInfo] = {}
        previous = None
        for entry in raw_locks:
            if type(entry) is not list or len(entry) != 4:
                raise ValueError("snapshot: bad lock entry")
            name, token, holder, expiry_us = entry
            if type(name) is not str or _utf8_len(name) > limits.max_name_bytes:
                raise ValueError("snapshot: bad lock name")
            if not (_is_u64(token) and _is_u64(holder) and _is_u64(expiry_us)):
                raise ValueError("snapshot: bad lock fields")
            if previous is not None and not previous < name:
                raise ValueError("snapshot: locks not strictly sorted")
            previous = name
            locks[name] = LockInfo(token, holder, expiry_us)
        if kv1 and _dumps([SNAPSHOT_VERSION_KV1, [[k, data[k]] for k in data],
                           [[n, i.token, i.holder, i.expiry_us] for n, i in locks.items()]]
                          ) != snapshot:  # (dicts keep the sorted order checked above)
            raise InvariantViolation("restored kv1 snapshot does not re-encode to itself")
        self._data = data
        self._owner = owners
        self._usage = usage
        self._locks = locks
        self._state_bytes = state_bytes
        self._snapshot_cache = None
        if not kv1 and self.snapshot() != snapshot:
            # invariant: the checks above accept only canonical forms
            raise InvariantViolation("restored snapshot does not re-encode to itself")

    # -- read-only views (tests, CLI, dashboard) -------------------------

    def value(self, key: str) -> bytes | None:
        """The value stored under `key`, or None."""
        return self._data.get(key)

    def owner(self, key: str) -> int | None:
        """The client whose quota `key` counts against (its last writer), or None (no such
        key, or one restored from a kv1 snapshot and not written since: owned by nobody)."""
        return self._owner.get(key)

    def client_usage(self, client: int) -> tuple[int, int]:
        """(keys, key and value bytes) that count against `client`'s quota."""
        used = self._usage.get(client)
        return (0, 0) if used is None else (used[0], used[1])

    def lock_info(self, name: str) -> LockInfo | None:
        """The lock's current grant (possibly with an expired lease), or None if free."""
        return self._locks.get(name)

    def statistics(self) -> dict[str, Any]:
        """Counts of executed ops by result kind and error reason, and state sizes."""
        return {
            "executed": self._counters.executed,
            "results": dict(self._counters.by_kind),
            "errors": dict(self._counters.errors),
            "keys": len(self._data),
            "locks": len(self._locks),
            "state_bytes": self._state_bytes,
        }

    # -- op semantics ----------------------------------------------------

    def _apply(self, op: Op, ctx: ExecContext) -> Result:
        if isinstance(op, Get):
            v = self._data.get(op.key)
            return NOT_FOUND if v is None else Result("value", value=v)
        if isinstance(op, Lock):
            return self._lock(op, ctx)
        if isinstance(op, Unlock):
            return self._unlock(op, ctx)
        # Writes: the fence is checked first; a stale token changes nothing.
        if op.fence is not None and not self._fence_ok(op.fence):
            return STALE_TOKEN
        if isinstance(op, Put):
            return self._set(op.key, op.value, ctx.client)
        if isinstance(op, Delete):
            if op.key not in self._data:
                return NOT_FOUND
            self._remove(op.key)
            return OK
        if isinstance(op, Cas):
            current = self._data.get(op.key)
            if current != op.expected:
                return Result("cas_failed", value=current)
            return self._set(op.key, op.new, ctx.client)
        raise InvariantViolation(f"unhandled op {op!r}")

    def _fence_ok(self, fence: Fence) -> bool:
        info = self._locks.get(fence.lock)
        return info is not None and info.token == fence.token

    def _set(self, key: str, value: bytes, client: int) -> Result:
        """Store `value` under `key` for `client`, who then owns it (and is charged for it)."""
        limits = self.limits
        old = self._data.get(key)
        key_len = _utf8_len(key)
        grow = len(value) - (0 if old is None else len(old))
        if old is None:
            grow += key_len
        # The writer's quota first (its own doing), then the global caps.
        used = self._usage.get(client)
        used_keys, used_bytes = (0, 0) if used is None else used
        owner = self._owner.get(key)  # None: a new key, or one owned by nobody (kv1's)
        if old is not None and owner == client:
            new_keys, new_bytes = used_keys, used_bytes + len(value) - len(old)
        else:  # a new key, or another client's key taken over by this write
            new_keys, new_bytes = used_keys + 1, used_bytes + key_len + len(value)
        # Over a quota is refused only when the write grows it: a client left over a lowered
        # quota may still overwrite (not grow) and delete its keys.
        if new_keys > limits.max_keys_per_client and new_keys > used_keys:
            return Result("error", reason="client_key_quota")
        if new_bytes > limits.max_bytes_per_client and new_bytes > used_bytes:
            return Result("error", reason="client_byte_quota")
        if old is None and len(self._data) >= limits.max_keys:
            return Result("error", reason="too_many_keys")
        if self._state_bytes + grow > limits.max_state_bytes:
            return Result("error", reason="store_full")
        if old is not None and owner is not None and owner != client:
            self._uncharge(owner, key_len + len(old))
        if used is None:
            self._usage[client] = [new_keys, new_bytes]
        else:
            used[0], used[1] = new_keys, new_bytes
        self._data[key] = value
        self._owner[key] = client
        self._state_bytes += grow
        self._snapshot_cache = None
        return OK

    def _uncharge(self, client: int, size: int) -> None:
        """Take one key of `size` bytes off `client`'s usage."""
        used = self._usage[client]
        used[0] -= 1
        used[1] -= size
        if not used[0]:
            del self._usage[client]

    def _remove(self, key: str) -> None:
        value = self._data.pop(key)
        size = _utf8_len(key) + len(value)
        owner = self._owner.pop(key, None)
        if owner is not None:
            self._uncharge(owner, size)
        self._state_bytes -= size
        self._snapshot_cache = None

    def _lock(self, op: Lock, ctx: ExecContext) -> Result:
        now_us = ctx.batch_time_us
        expiry_us = now_us + op.ttl_ms * 1000
        info = self._locks.get(op.name)
        if (info is not None and info.holder != ctx.client
                and not _lease_over(info, now_us, ctx.max_clock_skew_us)):
            return Result("locked", holder=info.holder, expiry_us=info.expiry_us)
        if info is not None and now_us < info.expiry_us:
            # The holder renews its live lease: same token, new expiry.
            token = info.token
        else:
            full = info is None and len(self._locks) >= self.limits.max_locks
            if full and not self._evict_expired_lock(now_us, ctx.max_clock_skew_us):
                return Result("error", reason="too_many_locks")
            token = ctx.token
            if info is not None and token <= info.token:
                raise InvariantViolation(
                    f"lock {op.name!r}: token {token} not above {info.token}: "
                    "ops executed out of the agreed order"
                )
        self._locks[op.name] = LockInfo(token, ctx.client, expiry_us)
        self._snapshot_cache = None
        return Result("granted", token=token, expiry_us=expiry_us)

    def _evict_expired_lock(self, now_us: int, skew_us: int) -> bool:
        """Make room in a full lock table: drop the lock whose lease expired first among
        those over by every correct clock.

        Deterministic (earliest expiry, then smallest name). Its token then no
        longer fences anything, which is fine: its lease is over.
        """
        expired = [
            (info.expiry_us, name)
            for name, info in self._locks.items()
            if _lease_over(info, now_us, skew_us)
        ]
        if not expired:
            return False
        del self._locks[min(expired)[1]]
        return True

    def _unlock(self, op: Unlock, ctx: ExecContext) -> Result:
        info = self._locks.get(op.name)
        if info is None:
            return NOT_FOUND
        if info.token != op.token:
            return STALE_TOKEN
        if info.holder != ctx.client:
            return Result("error", reason="not_holder")
        del self._locks[op.name]
        self._snapshot_cache = None
        return OK
