"""Canonical CBOR encoding of messages, and strict decoding of untrusted bytes.

Every message is a CBOR array `[TAG, field1, field2, ...]` in the dataclass's
field order; nested messages are nested arrays; `Signed` is
`[20, body, signature]` where `body` is the encoding of the statement, and
`MacReply` is `[24, body, mac]` where `body` is the encoding of a `Reply`. No
maps, no floats, no tags: one message has exactly one encoding.

Decoding (`decode_untrusted`, `decode_statement_untrusted`) does not use
cbor2 at all. It is a single forward pass over the bytes, directed by the
message schema (the `Annotated` kinds of `bft.messages`), that reads each CBOR
item head once and checks it before anything is allocated:

* only unsigned integers, byte strings, text strings and definite-length
  arrays are accepted: tags, floats, simple values (true/false/null), maps,
  negative integers and indefinite lengths raise `MalformedMessage`;
* every head must be in its shortest form (canonical), so that, together with
  the exact field counts, a decoded message re-encodes to exactly the bytes it
  came from: `encode(decode_untrusted(data)) == data`;
* a length is never trusted beyond the bytes that remain, array counts are
  bounded by `Limits.max_items`, nesting by `Limits.max_depth` (the arrays
  inside a `Signed` or `MacReply` body count as nested one level below it);
* a field that has the wrong type, range or length stops decoding at once.

Because the schema drives the reading, junk is rejected at the first item that
does not fit, and the work is linear in the input size (checking shortest heads
while reading is cheaper than re-encoding and comparing). Recursion follows
message nesting only, so its depth is bounded by `Limits.max_depth` (keep that
small: it is 16 by default).
"""

from __future__ import annotations

import typing
from collections.abc import Callable
from dataclasses import dataclass, fields
from typing import Any

import cbor2

from bft import messages as m
from bft.errors import MalformedMessage


@dataclass(frozen=True, slots=True)
class Limits:
    """Bounds on what a decoder accepts from the network."""

    max_message_bytes: int = 4 * 1024 * 1024
    max_op_bytes: int = 64 * 1024
    max_text_chars: int = 4096
    max_items: int = 65536  # elements of any one array
    max_depth: int = 16  # nesting of arrays (Signed bodies included)


DEFAULT_LIMITS = Limits()


def _to_cbor(obj: Any) -> Any:
    if isinstance(obj, m.Signed):
        return [m.Signed.TAG, obj.body, obj.signature]
    if isinstance(obj, m.MacReply):
        return [m.MacReply.TAG, obj.body, obj.mac]
    if isinstance(obj, tuple):
        return [_to_cbor(x) for x in obj]
    tag = getattr(type(obj), "TAG", None)
    if tag is not None:
        return [tag, *(_to_cbor(getattr(obj, f.name)) for f in fields(obj))]
    return obj


def encode(message: Any) -> bytes:
    """Canonical CBOR bytes of a message (same message, same bytes)."""
    return cbor2.dumps(_to_cbor(message), canonical=True)


# --------------------------------------------------------------------------
# Strict decoding of untrusted bytes
# --------------------------------------------------------------------------

_U64_BOUND = 2**63
# CBOR major types that can appear in a message (the others never do).
_MAJOR_UINT, _MAJOR_BYTES, _MAJOR_TEXT, _MAJOR_ARRAY = 0, 2, 3, 4
_MAJOR_NAMES = (
    "an unsigned integer",
    "a negative integer",
    "a byte string",
    "a text string",
    "an array",
    "a map",
    "a CBOR tag",
    "a float or simple value (true/false/null/break)",
)
# Smallest argument that needs each additional-info width (shortest-form rule).
_MIN_FOR_WIDTH = {1: 24, 2: 1 << 8, 4: 1 << 16, 8: 1 << 32}

# A field reader takes (data, pos, depth of the enclosing array, limits) and
# returns (value, position after the value).
_Reader = Callable[[bytes, int, int, Limits], tuple[Any, int]]


def _malformed(pos: int, what: str) -> MalformedMessage:
    return MalformedMessage(f"at byte {pos}: {what}")


def _expect(data: bytes, pos: int, major: int, what: str) -> tuple[int, int]:
    """Read the head of an item of CBOR major type `major` at `pos`.

    Returns (argument, position after the head). Rejects truncation, any
    other major type, reserved and indefinite-length heads, and arguments
    that are not in their shortest form.
    """
    try:
        initial = data[pos]
    except IndexError:
        raise _malformed(pos, f"truncated: expected {what}") from None
    if initial >> 5 != major:
        raise _malformed(pos, f"expected {what}, found {_MAJOR_NAMES[initial >> 5]}")
    info = initial & 31
    if info < 24:
        return info, pos + 1
    if info > 27:
        if info == 31:
            raise _malformed(pos, "indefinite length not allowed")
        raise _malformed(pos, f"reserved additional information {info}")
    width = 1 << (info - 24)
    end = pos + 1 + width
    if end > len(data):
        raise _malformed(pos, "truncated item head")
    arg = int.from_bytes(data[pos + 1 : end], "big")
    if arg < _MIN_FOR_WIDTH[width]:
        raise _malformed(pos, "non-canonical (not shortest) item head")
    return arg, end


def _read_u64(data: bytes, pos: int, depth: int, limits: Limits) -> tuple[int, int]:
    value, after = _expect(data, pos, _MAJOR_UINT, "an unsigned integer")
    if value >= _U64_BOUND:
        raise _malformed(pos, f"integer {value} out of range (must be below 2**63)")
    return value, after


def _read_byte_string(data: bytes, pos: int, low: int, high: int, what: str) -> tuple[bytes, int]:
    length, start = _expect(data, pos, _MAJOR_BYTES, "a byte string")
    if not low <= length <= high:
        if low == high:
            raise _malformed(pos, f"{what} must be exactly {low} bytes, got {length}")
        raise _malformed(pos, f"{what} of {length} bytes is over the limit of {high}")
    end = start + length
    if end > len(data):
        raise _malformed(pos, f"truncated: byte string of {length} bytes does not fit")
    return data[start:end], end


def _read_digest(data: bytes, pos: int, depth: int, limits: Limits) -> tuple[bytes, int]:
    return _read_byte_string(data, pos, m.DIGEST_SIZE, m.DIGEST_SIZE, "digest")


def _read_signature(data: bytes, pos: int, depth: int, limits: Limits) -> tuple[bytes, int]:
    return _read_byte_string(data, pos, m.SIGNATURE_SIZE, m.SIGNATURE_SIZE, "signature")


def _read_mac(data: bytes, pos: int, depth: int, limits: Limits) -> tuple[bytes, int]:
    return _read_byte_string(data, pos, m.MAC_SIZE, m.MAC_SIZE, "mac")


def _read_op(data: bytes, pos: int, depth: int, limits: Limits) -> tuple[bytes, int]:
    return _read_byte_string(data, pos, 0, limits.max_op_bytes, "op")


def _read_blob(data: bytes, pos: int, depth: int, limits: Limits) -> tuple[bytes, int]:
    return _read_byte_string(data, pos, 0, limits.max_message_bytes, "blob")


def _read_text(data: bytes, pos: int, depth: int, limits: Limits) -> tuple[str, int]:
    length, start = _expect(data, pos, _MAJOR_TEXT, "a text string")
    # A character takes 1 to 4 bytes in UTF-8: bound the bytes before decoding.
    if length > 4 * limits.max_text_chars:
        raise _malformed(pos, f"text of {length} bytes is over the limit")
    end = start + length
    if end > len(data):
        raise _malformed(pos, f"truncated: text of {length} bytes does not fit")
    try:
        text = data[start:end].decode("utf-8")  # strict: one encoding per string
    except UnicodeDecodeError:
        raise _malformed(pos, "text is not valid UTF-8") from None
    if len(text) > limits.max_text_chars:
        raise _malformed(pos, f"text of {len(text)} characters is over the limit")
    return text, end


_KIND_READERS: dict[m.Kind, _Reader] = {
    m.Kind.U64: _read_u64,
    m.Kind.DIGEST: _read_digest,
    m.Kind.SIGNATURE: _read_signature,
    m.Kind.MAC: _read_mac,
    m.Kind.OP: _read_op,
    m.Kind.BLOB: _read_blob,
    m.Kind.TEXT: _read_text,
}


def _enter_array(data: bytes, pos: int, depth: int, limits: Limits, what: str) -> tuple[int, int]:
    """Read the head of an array at nesting `depth`; return (count, position after the head)."""
    if depth > limits.max_depth:
        raise _malformed(pos, f"nesting deeper than {limits.max_depth}")
    count, after = _expect(data, pos, _MAJOR_ARRAY, what)
    if count > limits.max_items:
        raise _malformed(pos, f"array of {count} items is over the limit of {limits.max_items}")
    if count > len(data) - after:  # every item takes at least one byte
        raise _malformed(pos, f"truncated: array of {count} items does not fit")
    return count, after


def _read_message(
    table: dict[int, type], data: bytes, pos: int, depth: int, limits: Limits
) -> tuple[Any, int]:
    """Read a message array `[TAG, fields...]` at nesting `depth` whose TAG is in `table`."""
    start = pos
    count, pos = _enter_array(data, pos, depth, limits, "a message (array)")
    if count == 0:
        raise _malformed(start, "empty array where a message belongs")
    tag_pos = pos
    tag, pos = _expect(data, pos, _MAJOR_UINT, "a message type (unsigned integer)")
    cls = table.get(tag)
    if cls is None:
        known = _ALL_BY_TAG.get(tag)
        if known is None:
            raise _malformed(tag_pos, f"unknown message type {tag}")
        allowed = ", ".join(c.__name__ for c in table.values())
        raise _malformed(tag_pos, f"{known.__name__} not allowed here (expected {allowed})")
    readers = _WIRE_FIELDS[cls]
    if count != 1 + len(readers):
        raise _malformed(start, f"{cls.__name__} has {len(readers)} fields, got {count - 1}")
    values = []
    for reader in readers:
        value, pos = reader(data, pos, depth, limits)
        values.append(value)
    if cls is m.Signed:
        body, signature = values
        statement = _decode_whole(_STATEMENTS_BY_TAG, body, depth + 1, limits)
        return m.Signed(body=body, signature=signature, statement=statement,
                        checked=(body, statement)), pos
    if cls is m.MacReply:
        body, mac = values
        reply = _decode_whole(_REPLY_BY_TAG, body, depth + 1, limits)
        return m.MacReply(body=body, mac=mac, statement=reply, checked=(body, reply)), pos
    return cls(*values), pos


def _message_reader(cls: type) -> _Reader:
    table = {cls.TAG: cls}  # type: ignore[attr-defined]

    def read(data: bytes, pos: int, depth: int, limits: Limits) -> tuple[Any, int]:
        return _read_message(table, data, pos, depth + 1, limits)

    return read


def _tuple_reader(item: _Reader) -> _Reader:
    def read(data: bytes, pos: int, depth: int, limits: Limits) -> tuple[tuple[Any, ...], int]:
        count, pos = _enter_array(data, pos, depth + 1, limits, "an array")
        items = []
        for _ in range(count):
            value, pos = item(data, pos, depth + 1, limits)
            items.append(value)
        return tuple(items), pos

    return read


def _reader_for(hint: Any, where: str) -> _Reader:
    """The reader for one field annotation of bft.messages (a schema bug raises TypeError)."""
    origin = typing.get_origin(hint)
    if origin is typing.Annotated:
        kind = hint.__metadata__[0]
        if kind in _KIND_READERS:
            return _KIND_READERS[kind]
    elif origin is tuple:
        args = typing.get_args(hint)
        if len(args) == 2 and args[1] is Ellipsis:
            return _tuple_reader(_reader_for(args[0], where))
    elif hint in m.ALL_TYPES:
        return _message_reader(hint)
    raise TypeError(f"{where}: no decoder for annotation {hint!r}")


def _wire_fields(cls: type) -> tuple[_Reader, ...]:
    hints = typing.get_type_hints(cls, include_extras=True)
    names = [f.name for f in fields(cls)]
    if cls is m.Signed:
        names = ["body", "signature"]  # `statement` is decoded from `body`, never sent
    elif cls is m.MacReply:
        names = ["body", "mac"]  # likewise
    return tuple(_reader_for(hints[name], f"{cls.__name__}.{name}") for name in names)


def _by_tag(types: tuple[type, ...]) -> dict[int, type]:
    return {cls.TAG: cls for cls in types}  # type: ignore[attr-defined]


_WIRE_FIELDS: dict[type, tuple[_Reader, ...]] = {cls: _wire_fields(cls) for cls in m.ALL_TYPES}
_ALL_BY_TAG = _by_tag(m.ALL_TYPES)
_TOP_LEVEL_BY_TAG = _by_tag(m.TOP_LEVEL_TYPES)
_STATEMENTS_BY_TAG = _by_tag(m.STATEMENT_TYPES)
_REPLY_BY_TAG = _by_tag((m.Reply,))


def _decode_whole(table: dict[int, type], data: bytes, depth: int, limits: Limits) -> Any:
    """Decode `data` as exactly one message whose TAG is in `table`, rooted at nesting `depth`."""
    if type(data) is not bytes:
        if not isinstance(data, (bytearray, memoryview)):
            raise TypeError(f"expected bytes, got {type(data).__name__}")  # a caller's bug
        data = bytes(data)
    if len(data) > limits.max_message_bytes:
        raise MalformedMessage(
            f"message of {len(data)} bytes is over the limit of {limits.max_message_bytes}"
        )
    message, end = _read_message(table, data, 0, depth, limits)
    if end != len(data):
        raise _malformed(end, f"{len(data) - end} trailing bytes after the message")
    return message


def decode_untrusted(data: bytes, limits: Limits = DEFAULT_LIMITS) -> m.WireMessage:
    """Decode network bytes into a `Signed`, `Proposal` or `MacReply` (`TOP_LEVEL_TYPES`).

    Raises only `MalformedMessage`, for anything that is not exactly the
    canonical encoding of a well-formed message within `limits`: every field
    has its declared type, range and length, every `Signed` body is itself a
    well-formed statement (decoded into `Signed.statement`), every `MacReply`
    body a well-formed `Reply` (decoded into `MacReply.statement`), and
    `encode(decode_untrusted(data)) == data`. Signatures, MACs and digests are
    not checked here, nor which statement type a `Signed` field holds (a
    `Proposal.pre_prepare` may hold any statement: the replica checks that).

    Work is linear in `len(data)` (byte strings are copied once per enclosing
    `Signed` body, so at most `max_depth` times); junk is rejected at the
    first item that does not fit the schema. Accepts bytes, bytearray or
    memoryview; anything else is a caller's bug (TypeError).
    """
    return _decode_whole(_TOP_LEVEL_BY_TAG, data, 1, limits)


def decode_statement_untrusted(body: bytes, limits: Limits = DEFAULT_LIMITS) -> m.Statement:
    """Decode the body of a `Signed` into its statement (one of `STATEMENT_TYPES`).

    Same guarantees as `decode_untrusted`; carriers (`Signed`, `Batch`,
    `Proposal`, `PreparedCert`, `MacReply`) are rejected at the top of a body.
    """
    return _decode_whole(_STATEMENTS_BY_TAG, body, 1, limits)
