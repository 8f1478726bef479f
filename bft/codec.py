"""Canonical CBOR encoding of messages, and strict decoding of untrusted bytes.

Every message is a CBOR array `[TAG, field1, field2, ...]` in the dataclass's
field order; nested messages are nested arrays; `Signed` is
`[20, body, signature]` where `body` is the encoding of the statement, and
`MacReply` is `[24, body, mac]` where `body` is the encoding of a `Reply`. No
maps, no floats, no tags: one message has exactly one encoding.

Decoding (`decode_untrusted`, `decode_statement_untrusted`) does not use
cbor2 at all. It is a single forward pass over the bytes, directed by the
message schema (the `Annotated` kinds of `bft.messages`), that reads each CBOR
item head once and checks it before anything is allocated (with `bft.cbor.read_head`,
the one strict head reader that telemetry, the app and the client use too):

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

Speed. Each direction has a reference implementation and a fast path that
gives exactly the same results:

* `encode` writes heads and fields itself for the values a well-formed message
  holds (non-negative ints, bytes, tuples, the message classes) and leaves
  anything else to the reference, cbor2's canonical mode on the message as
  nested lists (`_encode_reference`): byte for byte the same output.
* Decoding first runs a fast reader generated per message type from the same
  schema (`_fast_source` shows one); it makes the same checks but only accepts
  or gives up, and whenever it gives up, the reference decoder
  (`_decode_whole`) decodes the bytes again and raises the precise error. See
  "The fast reader" below for why the two always agree;
  tests/test_codec_fastpath.py checks that they do.
"""

from __future__ import annotations

import linecache
import operator
import struct
import types
import typing
from collections.abc import Callable
from dataclasses import dataclass, fields
from typing import Any, Protocol, TypeVar

import cbor2

from bft import messages as m
from bft.cbor import MAJOR_ARRAY, MAJOR_BYTES, MAJOR_TEXT, MAJOR_UINT, malformed, read_head
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


def _encode_reference(message: Any) -> bytes:
    """The reference encoding: the message as nested lists, by cbor2 in canonical mode.

    `encode` gives the same bytes faster; it falls back to this for any value
    it does not write itself (so what cbor2 does with it, it still does).
    """
    return cbor2.dumps(_to_cbor(message), canonical=True)


class _Unsupported(Exception):
    """A value the direct encoder does not write (it leaves it to the reference encoder)."""


def _head(major: int, n: int) -> bytes:
    """The shortest CBOR head of major type `major` (its top 3 bits) and argument 0 <= n < 2**64."""
    if n < 0x100:
        return _HEADS_BELOW_256[major >> 5][n]
    if n < 0x10000:
        return _PACK_2(major | 25, n)
    if n < 0x100000000:
        return _PACK_4(major | 26, n)
    return _PACK_8(major | 27, n)


_SMALL_HEADS = tuple(bytes((b,)) for b in range(256))  # one-byte heads, indexed by the byte
# For each major type: the heads of the arguments 0..255 (one byte below 24, then two)
_HEADS_BELOW_256 = tuple(
    tuple(bytes((major << 5 | n,)) if n < 24 else bytes((major << 5 | 24, n)) for n in range(256))
    for major in range(8))
_BYTES_HEADS = _HEADS_BELOW_256[2]  # byte strings of 0..255 bytes
_PACK_2 = struct.Struct(">BH").pack
_PACK_4 = struct.Struct(">BI").pack
_PACK_8 = struct.Struct(">BQ").pack
_UINT, _BYTES, _ARRAY = 0 << 5, 2 << 5, 4 << 5
_U64_END = 2**64  # from here cbor2 writes a bignum tag: left to the reference encoder


def uint_bytes(n: int) -> bytes:
    """The CBOR encoding of the unsigned integer `n` (0 <= n < 2**64), shortest form."""
    return _SMALL_HEADS[n] if 0 <= n < 24 else _head(_UINT, n)


def array_head(n: int) -> bytes:
    """The shortest CBOR head of an array of `n` items (0 <= n < 2**64)."""
    return _head(_ARRAY, n)


def bytes_head(n: int) -> bytes:
    """The shortest CBOR head of a byte string of `n` bytes (0 <= n < 2**64), as cbor2 writes
    it: `bytes_head(len(b)) + b` is the encoding of `b`."""
    return _head(_BYTES, n)


def _wire_field_names(cls: type) -> tuple[str, ...]:
    """The fields of `cls` that are sent, in order (a `Signed`'s statement is not)."""
    if cls is m.Signed:
        return ("body", "signature")
    if cls is m.MacReply:
        return ("body", "mac")
    return tuple(f.name for f in fields(cls))


def _tag(cls: type) -> int:
    """The TAG of message class `cls` (each class of bft.messages declares one)."""
    tag: int = cls.TAG  # type: ignore[attr-defined]  # (`type` does not say it has one)
    return tag


def _encode_plan(cls: type) -> tuple[bytes, Callable[[Any], tuple[Any, ...]]]:
    names = _wire_field_names(cls)
    assert 2 <= len(names) < 23, cls  # attrgetter of one name would not return a tuple
    prefix = _head(_ARRAY, 1 + len(names)) + _head(_UINT, _tag(cls))
    return prefix, operator.attrgetter(*names)


# For each message class: the bytes of its array head and TAG, and a getter of its sent fields.
_ENCODE_PLANS = {cls: _encode_plan(cls) for cls in m.ALL_TYPES}


def _put(obj: Any, out: list[bytes]) -> None:
    """Append the canonical encoding of `obj` to `out`, exactly as `_encode_reference` writes it.

    Writes only non-negative ints below 2**64, bytes, tuples and the message
    classes themselves (exact types, no subclasses), which cbor2's canonical
    mode writes with shortest heads as below; raises `_Unsupported` for
    anything else.
    """
    t = type(obj)
    if t is int:
        if not 0 <= obj < _U64_END:
            raise _Unsupported
        out.append(_SMALL_HEADS[obj] if obj < 24 else _head(_UINT, obj))
    elif t is bytes:
        out.append(_head(_BYTES, len(obj)))
        out.append(obj)
    elif t is m.Signed and type(obj.body) is bytes and type(obj.signature) is bytes:
        out += (_SIGNED_PREFIX, _head(_BYTES, len(obj.body)), obj.body,
                _head(_BYTES, len(obj.signature)), obj.signature)
    elif t is tuple:
        out.append(_head(_ARRAY, len(obj)))
        for item in obj:
            _put(item, out)
    elif t is m.Batch:
        out.append(_encode_batch(obj))
    else:
        put_fields = _FIELD_WRITERS.get(t)
        if put_fields is None:
            raise _Unsupported
        put_fields(obj, out)


#: Batches whose encoding is remembered (see _encode_batch).
BATCH_MEMO_SIZE = 1024
BATCH_MEMO_MAX_BYTES = 64 * 1024  # larger batches are encoded each time
_batch_memo: dict[int, tuple[m.Batch, bytes]] = {}


def _encode_batch(batch: m.Batch) -> bytes:
    """The encoding of a Batch, made once per batch object: a replica encodes each batch for
    its digest, for its WAL record and to send it; batches are immutable, and the memo holds a
    reference to each, so an id is never reused while remembered. Raises _Unsupported as
    `_put` does (nothing is remembered then)."""
    hit = _batch_memo.get(id(batch))
    if hit is not None and hit[0] is batch:
        return hit[1]
    out: list[bytes] = []
    _FIELD_WRITERS[m.Batch](batch, out)
    data = b"".join(out)
    if len(data) <= BATCH_MEMO_MAX_BYTES:  # bounded memory: at most 64 MiB of batches
        if len(_batch_memo) >= BATCH_MEMO_SIZE:
            _batch_memo.clear()  # (cheaper than evicting one by one)
        _batch_memo[id(batch)] = (batch, data)
    return data


def encode(message: Any) -> bytes:
    """Canonical CBOR bytes of a message (same message, same bytes).

    Byte for byte what cbor2's canonical mode makes of the message as nested
    lists (`_encode_reference`), which it falls back to for any value other
    than the exact types a well-formed message holds.
    """
    if type(message) is m.Signed:  # the most common case, written at once
        body, signature = message.body, message.signature
        if type(body) is bytes and type(signature) is bytes:
            return b"".join((_SIGNED_PREFIX, _head(_BYTES, len(body)), body,
                             _head(_BYTES, len(signature)), signature))
    out: list[bytes] = []
    try:
        put_fields = _FIELD_WRITERS.get(type(message))
        if put_fields is not None and type(message) is not m.Batch:
            put_fields(message, out)
        else:
            _put(message, out)
    except _Unsupported:
        return _encode_reference(message)
    return b"".join(out)


_SIGNED_PREFIX = _ENCODE_PLANS[m.Signed][0]

# Source templates of the generated writers (`_put_<Name>(obj, out)`: what `_put` writes for
# a message of exactly that class): each field's usual type is written at once, anything
# else goes through `_put`, which writes it or raises `_Unsupported` as it always did.
_WRITE_U64 = """\
    v = obj.{name}
    if type(v) is int and 0 <= v < 24:
        append(_SMALL_HEADS[v])
    else:
        _put(v, out)
"""
_WRITE_BYTES = """\
    v = obj.{name}
    if type(v) is bytes:
        n = len(v)
        append(_BYTES_HEADS[n] if n < 256 else _head(0x40, n))
        append(v)
    else:
        _put(v, out)
"""
_WRITE_SIGNED_TUPLE = """\
    v = obj.{name}
    if type(v) is tuple:
        append(_head(0x80, len(v)))
        for x in v:
            if type(x) is Signed and type(x.body) is bytes and type(x.signature) is bytes:
                out += (_SIGNED_PREFIX, _head(0x40, len(x.body)), x.body,
                        _head(0x40, len(x.signature)), x.signature)
            else:
                _put(x, out)
    else:
        _put(v, out)
"""
_WRITE_ANY = """\
    _put(obj.{name}, out)
"""


def _writer_source(cls: type) -> str:
    """The source of `_put_<Name>(obj, out)` for message class `cls` (see the templates)."""
    hints = typing.get_type_hints(cls, include_extras=True)
    lines = [f"def _put_{cls.__name__}(obj, out):\n", "    append = out.append\n",
             f"    append({_ENCODE_PLANS[cls][0]!r})\n"]
    for name in _wire_field_names(cls):
        hint = hints[name]
        template = _WRITE_ANY
        if typing.get_origin(hint) is typing.Annotated:
            kind = hint.__metadata__[0]
            if kind is m.Kind.U64:
                template = _WRITE_U64
            elif kind in (m.Kind.DIGEST, m.Kind.SIGNATURE, m.Kind.MAC, m.Kind.OP, m.Kind.BLOB):
                template = _WRITE_BYTES
        elif typing.get_origin(hint) is tuple and typing.get_args(hint)[0] is m.Signed:
            template = _WRITE_SIGNED_TUPLE
        lines.append(template.format(name=name))
    return "".join(lines)


# Filled below, once _define exists: message class -> its generated writer.
_FIELD_WRITERS: dict[type, Callable[[Any, list[bytes]], None]] = {}


# --------------------------------------------------------------------------
# Strict decoding of untrusted bytes
# --------------------------------------------------------------------------

_U64_BOUND = 2**63
# Item heads are read by the one strict CBOR reader, `bft.cbor.read_head` (shortest form
# only, no indefinite lengths, the expected major type); the readers below check the fields.

# A field reader takes (data, pos, depth of the enclosing array, limits) and
# returns (value, position after the value).
_Reader = Callable[[bytes, int, int, Limits], tuple[Any, int]]

# TAG -> (the message's one-byte array head, its generated field reader): see `_fast_table`.
_FastTable = dict[int, tuple[int, _Reader]]


def _read_u64(data: bytes, pos: int, depth: int, limits: Limits) -> tuple[int, int]:
    value, after = read_head(data, pos, MAJOR_UINT, "an unsigned integer")
    if value >= _U64_BOUND:
        raise malformed(pos, f"integer {value} out of range (must be below 2**63)")
    return value, after


def _read_byte_string(data: bytes, pos: int, low: int, high: int, what: str) -> tuple[bytes, int]:
    length, start = read_head(data, pos, MAJOR_BYTES, "a byte string")
    if not low <= length <= high:
        if low == high:
            raise malformed(pos, f"{what} must be exactly {low} bytes, got {length}")
        raise malformed(pos, f"{what} of {length} bytes is over the limit of {high}")
    end = start + length
    if end > len(data):
        raise malformed(pos, f"truncated: byte string of {length} bytes does not fit")
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
    length, start = read_head(data, pos, MAJOR_TEXT, "a text string")
    # A character takes 1 to 4 bytes in UTF-8: bound the bytes before decoding.
    if length > 4 * limits.max_text_chars:
        raise malformed(pos, f"text of {length} bytes is over the limit")
    end = start + length
    if end > len(data):
        raise malformed(pos, f"truncated: text of {length} bytes does not fit")
    try:
        text = data[start:end].decode("utf-8")  # strict: one encoding per string
    except UnicodeDecodeError:
        raise malformed(pos, "text is not valid UTF-8") from None
    if len(text) > limits.max_text_chars:
        raise malformed(pos, f"text of {len(text)} characters is over the limit")
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
        raise malformed(pos, f"nesting deeper than {limits.max_depth}")
    count, after = read_head(data, pos, MAJOR_ARRAY, what)
    if count > limits.max_items:
        raise malformed(pos, f"array of {count} items is over the limit of {limits.max_items}")
    if count > len(data) - after:  # every item takes at least one byte
        raise malformed(pos, f"truncated: array of {count} items does not fit")
    return count, after


def _read_message(
    table: dict[int, type], data: bytes, pos: int, depth: int, limits: Limits
) -> tuple[Any, int]:
    """Read a message array `[TAG, fields...]` at nesting `depth` whose TAG is in `table`."""
    start = pos
    count, pos = _enter_array(data, pos, depth, limits, "a message (array)")
    if count == 0:
        raise malformed(start, "empty array where a message belongs")
    tag_pos = pos
    tag, pos = read_head(data, pos, MAJOR_UINT, "a message type (unsigned integer)")
    cls = table.get(tag)
    if cls is None:
        known = _ALL_BY_TAG.get(tag)
        if known is None:
            raise malformed(tag_pos, f"unknown message type {tag}")
        allowed = ", ".join(c.__name__ for c in table.values())
        raise malformed(tag_pos, f"{known.__name__} not allowed here (expected {allowed})")
    readers = _WIRE_FIELDS[cls]
    if count != 1 + len(readers):
        if cls is m.Reply and count - 1 == len(readers) - 1:
            raise malformed(start, "Reply has 7 fields, got 6: the format before agreed_us "
                                   "(the sender runs an older version)")
        raise malformed(start, f"{cls.__name__} has {len(readers)} fields, got {count - 1}")
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
    table = {_tag(cls): cls}

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
    return {_tag(cls): cls for cls in types}


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
        raise malformed(end, f"{len(data) - end} trailing bytes after the message")
    return message


# --------------------------------------------------------------------------
# The fast reader: the common case, in one tight pass
# --------------------------------------------------------------------------
#
# `_decode_whole` above is the reference decoder. The fast reader below makes
# the same checks with far less overhead, but reports nothing: at the first
# thing it does not accept it raises `_Reject` (or runs off the end of the
# bytes: IndexError), and `_decode` then runs the reference decoder, which
# raises the precise `MalformedMessage` (or, should the fast reader ever be
# stricter than it needs to be, decodes the message). What `_decode` returns or
# raises is therefore always what the reference decoder returns or raises,
# provided that whenever the fast reader returns a message, the reference
# decoder returns an equal one from the same bytes. The fast reader is built
# so: it accepts only shortest heads, and checks the same types, ranges,
# lengths, counts and depths; tests/test_codec_fastpath.py checks the property
# on random, mutated and spliced bytes.
#
# Its speed comes from one function per message type, generated from the
# schema like a dataclass's __init__ (`_fast_source` shows it): the fields are
# read in straight-line code, with one-byte heads (small integers, short byte
# strings, fixed-size digests and signatures) checked inline, and the message
# object is filled in through its slots without the frozen __init__'s
# `object.__setattr__` per field (the very same object results).


class _Reject(Exception):
    """The fast reader does not accept these bytes (the reference decoder says why)."""


def _fast_read_uint(data: bytes, pos: int, info: int) -> tuple[int, int]:
    """The argument of a head with additional information `info` at `pos`: (value, next pos).

    Accepts only 24 <= info <= 27, the shortest form, and values below 2**63.
    """
    if info == 24:
        value = data[pos + 1]
        if value < 24:
            raise _Reject
        return value, pos + 2
    if info == 25:
        value = data[pos + 1] << 8 | data[pos + 2]
        if value < 0x100:
            raise _Reject
        return value, pos + 3
    if info == 26:
        end = pos + 5
        low = 0x10000
    elif info == 27:
        end = pos + 9
        low = 0x100000000
    else:
        raise _Reject
    if end > len(data):
        raise _Reject
    value = int.from_bytes(data[pos + 1 : end], "big")
    if not low <= value < _U64_BOUND:
        raise _Reject
    return value, end


def _fast_read_bytes(data: bytes, pos: int, high: int) -> tuple[bytes, int]:
    """A byte string of at most `high` bytes at `pos`: (value, next pos)."""
    initial = data[pos]
    if 0x40 <= initial < 0x58:
        start = pos + 1
        end = start + initial - 0x40
    elif 0x58 <= initial < 0x5C:
        length, start = _fast_read_uint(data, pos, initial - 0x40)
        if length > high:
            raise _Reject
        end = start + length
    else:
        raise _Reject
    if end > len(data) or end - start > high:
        raise _Reject
    return data[start:end], end


def _fast_read_text(data: bytes, pos: int, limits: Limits) -> tuple[str, int]:
    """A text string of at most `limits.max_text_chars` characters at `pos`: (value, next pos)."""
    initial = data[pos]
    if 0x60 <= initial < 0x78:
        start = pos + 1
        length = initial - 0x60
    elif 0x78 <= initial < 0x7C:
        length, start = _fast_read_uint(data, pos, initial - 0x60)
    else:
        raise _Reject
    end = start + length
    if length > 4 * limits.max_text_chars or end > len(data):
        raise _Reject
    try:
        text = data[start:end].decode("utf-8")
    except UnicodeDecodeError:
        raise _Reject from None
    if len(text) > limits.max_text_chars:
        raise _Reject
    return text, end


def _fast_read_array(data: bytes, pos: int, depth: int, limits: Limits) -> tuple[int, int]:
    """The head of an array (not a message) at nesting `depth` at `pos`: (count, next pos)."""
    if depth > limits.max_depth:
        raise _Reject
    initial = data[pos]
    if 0x80 <= initial < 0x98:
        count = initial - 0x80
        pos += 1
    elif 0x98 <= initial < 0x9C:
        count, pos = _fast_read_uint(data, pos, initial - 0x80)
    else:
        raise _Reject
    if count > limits.max_items or count > len(data) - pos:
        raise _Reject
    return count, pos


def _fast_read_message(
    data: bytes, pos: int, table: _FastTable, depth: int, limits: Limits
) -> tuple[Any, int]:
    """A message `[TAG, fields...]` at nesting `depth` at `pos`: (message, next pos).

    `table` maps each allowed TAG to (the message's one-byte array head, its
    field reader): every message has fewer than 24 items.
    """
    if depth > limits.max_depth:
        raise _Reject
    head = data[pos]
    tag = data[pos + 1]
    if tag < 24:
        pos += 2
    elif tag == 24:
        tag = data[pos + 2]
        if tag < 24:
            raise _Reject
        pos += 3
    else:
        raise _Reject
    entry = table.get(tag)
    if entry is None or head != entry[0] or head - 0x80 > limits.max_items:
        raise _Reject
    return entry[1](data, pos, depth, limits)


def _fast_read_signed(
    data: bytes, pos: int, depth: int, limits: Limits
) -> tuple[m.Signed[m.Statement], int]:
    """The fields of a `Signed` at nesting `depth` (after its head and TAG): (Signed, next pos)."""
    initial = data[pos]
    if initial == 0x58:  # the usual body, of 24 to 255 bytes
        start = pos + 2
        pos = start + data[pos + 1]
        if pos - start < 24 or pos > len(data) or pos - start > limits.max_message_bytes:
            raise _Reject
        body = data[start:pos]
    else:
        body, pos = _fast_read_bytes(data, pos, limits.max_message_bytes)
    end = pos + 2 + m.SIGNATURE_SIZE
    if data[pos] != 0x58 or data[pos + 1] != m.SIGNATURE_SIZE or end > len(data):
        raise _Reject
    signature = data[pos + 2 : end]
    statement, body_end = _fast_read_message(body, 0, _FAST_STATEMENTS, depth + 1, limits)
    if body_end != len(body):
        raise _Reject
    return _decoded_signed(body, signature, statement, (body, statement)), end


def _fast_read_mac_reply(
    data: bytes, pos: int, depth: int, limits: Limits
) -> tuple[m.MacReply, int]:
    """The fields of a `MacReply` at nesting `depth` (after its head and TAG)."""
    body, pos = _fast_read_bytes(data, pos, limits.max_message_bytes)
    end = pos + 2 + m.MAC_SIZE
    if data[pos] != 0x58 or data[pos + 1] != m.MAC_SIZE or end > len(data):
        raise _Reject
    mac = data[pos + 2 : end]
    reply, body_end = _fast_read_message(body, 0, _FAST_REPLY, depth + 1, limits)
    if body_end != len(body):
        raise _Reject
    return _decoded_mac_reply(body, mac, reply, (body, reply)), end


# Source templates of the generated field readers. `pos` is the position of
# the field, `depth` the nesting of the message that holds it.
_READ_U64 = """\
    initial = data[pos]
    if initial < 24:
        v{i} = initial
        pos += 1
    else:
        v{i}, pos = _fast_read_uint(data, pos, initial)
"""
_READ_FIXED = """\
    end = pos + {end}
    if data[pos] != 0x58 or data[pos + 1] != {size} or end > len(data):
        raise _Reject
    v{i} = data[pos + 2 : end]
    pos = end
"""
_READ_VARIABLE = """\
    initial = data[pos]
    if 0x40 <= initial < 0x58:
        end = pos + initial - 0x3F
        if end > len(data) or initial - 0x40 > limits.{limit}:
            raise _Reject
        v{i} = data[pos + 1 : end]
        pos = end
    else:
        v{i}, pos = _fast_read_bytes(data, pos, limits.{limit})
"""
_READ_TEXT = """\
    v{i}, pos = _fast_read_text(data, pos, limits)
"""
_READ_MESSAGE = """\
    if data[pos] != 0x{head:02x} or data[pos + 1] != {tag} or depth + 1 > limits.max_depth \\
            or limits.max_items < {items}:
        raise _Reject
    v{i}, pos = _fast_read_{name}(data, pos + 2, depth + 1, limits)
"""
_READ_U64_TUPLE = """\
    n, pos = _fast_read_array(data, pos, depth + 1, limits)
    items = []
    for _ in range(n):
        initial = data[pos]
        if initial < 24:
            items.append(initial)
            pos += 1
        else:
            value, pos = _fast_read_uint(data, pos, initial)
            items.append(value)
    v{i} = tuple(items)
"""
_READ_MESSAGE_TUPLE = """\
    n, pos = _fast_read_array(data, pos, depth + 1, limits)
    if n and (depth + 2 > limits.max_depth or limits.max_items < {items}):
        raise _Reject
    items = []
    for _ in range(n):
        if data[pos] != 0x{head:02x} or data[pos + 1] != {tag}:
            raise _Reject
        value, pos = _fast_read_{name}(data, pos + 2, depth + 2, limits)
        items.append(value)
    v{i} = tuple(items)
"""
_FIXED_SIZES = {m.Kind.DIGEST: m.DIGEST_SIZE, m.Kind.SIGNATURE: m.SIGNATURE_SIZE,
                m.Kind.MAC: m.MAC_SIZE}
_VARIABLE_LIMITS = {m.Kind.OP: "max_op_bytes", m.Kind.BLOB: "max_message_bytes"}


def _message_format(cls: type, i: int) -> dict[str, Any]:
    """What the templates need to read a nested message of type `cls` (TAG below 24)."""
    items = 1 + len(_wire_field_names(cls))
    tag = _tag(cls)
    assert tag < 24 and items < 24  # one-byte heads
    return {"i": i, "head": 0x80 + items, "tag": tag, "items": items, "name": cls.__name__}


def _field_source(hint: Any, i: int, where: str) -> str:
    """The source that reads field `i` (annotation `hint`) into `v{i}`.

    Mirrors `_reader_for`: the same annotations, the same checks.
    """
    origin = typing.get_origin(hint)
    if origin is typing.Annotated:
        kind = hint.__metadata__[0]
        if kind is m.Kind.U64:
            return _READ_U64.format(i=i)
        if kind in _FIXED_SIZES:
            size = _FIXED_SIZES[kind]
            assert 24 <= size < 256  # the head is the two bytes 0x58, size
            return _READ_FIXED.format(i=i, size=size, end=2 + size)
        if kind in _VARIABLE_LIMITS:
            return _READ_VARIABLE.format(i=i, limit=_VARIABLE_LIMITS[kind])
        if kind is m.Kind.TEXT:
            return _READ_TEXT.format(i=i)
    elif origin is tuple:
        args = typing.get_args(hint)
        if len(args) == 2 and args[1] is Ellipsis:
            item = args[0]
            if typing.get_origin(item) is typing.Annotated and item.__metadata__[0] is m.Kind.U64:
                return _READ_U64_TUPLE.format(i=i)
            if item in m.ALL_TYPES:
                return _READ_MESSAGE_TUPLE.format(**_message_format(item, i))
    elif hint in m.ALL_TYPES:
        return _READ_MESSAGE.format(**_message_format(hint, i))
    raise TypeError(f"{where}: no fast reader for annotation {hint!r}")


def _fast_source(cls: type) -> str:
    """The source of the generated reader of `cls`'s fields, `_fast_read_<Name>`.

    `_fast_read_<Name>(data, pos, depth, limits)` reads the fields of a `cls` at
    nesting `depth` from `pos` (just after its TAG) and returns (message, next
    pos), or raises `_Reject` (or IndexError) for anything it does not accept.
    """
    hints = typing.get_type_hints(cls, include_extras=True)
    wire = _wire_field_names(cls)
    lines = [f"def _fast_read_{cls.__name__}(data, pos, depth, limits):\n"]
    for i, name in enumerate(wire):
        lines.append(f"    # {name}\n")
        lines.append(_field_source(hints[name], i, f"{cls.__name__}.{name}"))
    values = ", ".join(f"v{i}" for i in range(len(wire)))
    lines.append(f"    return _decoded_{cls.__name__}({values}), pos\n")
    return "".join(lines)


def _builder(cls: type) -> Callable[..., Any]:
    """A function of all of `cls`'s field values (in order) that returns `cls(*values)`.

    For a slotted dataclass whose __init__ only stores its arguments (no
    __post_init__), it fills the slots directly: the same object, made about
    twice as fast. Anything else gets its own constructor.
    """
    names = [f.name for f in fields(cls)]
    slots = [getattr(cls, name, None) for name in names]
    if hasattr(cls, "__post_init__") or not all(
        isinstance(slot, types.MemberDescriptorType) for slot in slots
    ):
        return cls
    namespace: dict[str, Any] = {"cls": cls, "object_new": object.__new__}
    for i, slot in enumerate(slots):
        namespace[f"set{i}"] = slot.__set__  # type: ignore[union-attr]  # (a slot: checked above)
    name = f"_decoded_{cls.__name__}"
    params = ", ".join(f"v{i}" for i in range(len(names)))
    body = "".join(f"    set{i}(obj, v{i})\n" for i in range(len(names)))
    return _define(f"def {name}({params}):\n    obj = object_new(cls)\n{body}    return obj\n",
                   name, namespace)


def _define(source: str, name: str, namespace: dict[str, Any]) -> Callable[..., Any]:
    """Run generated `source`, which defines function `name`, in `namespace`; return it.

    The source is made from the message schema only, never from input (as
    dataclasses make __init__). Tracebacks show its lines, and profilers count
    it as this file's (its file name starts with this file's path).
    """
    filename = f"{__file__} (generated: {name})"
    linecache.cache[filename] = (len(source), None, source.splitlines(True), filename)
    exec(compile(source, filename, "exec"), namespace)  # noqa: S102
    function: Callable[..., Any] = namespace[name]
    return function


_WRITERS_NAMESPACE: dict[str, Any] = {
    "_put": _put, "_head": _head, "_SMALL_HEADS": _SMALL_HEADS, "Signed": m.Signed,
    "_BYTES_HEADS": _BYTES_HEADS,
    "_SIGNED_PREFIX": _SIGNED_PREFIX,
}
for _cls in m.ALL_TYPES:
    _FIELD_WRITERS[_cls] = _define(_writer_source(_cls), f"_put_{_cls.__name__}",
                                   _WRITERS_NAMESPACE)

_S = TypeVar("_S", bound=m.Statement)


class _NewSigned(Protocol):
    def __call__(
        self, body: bytes, signature: bytes, statement: _S, checked: tuple[bytes, _S] | None, /
    ) -> m.Signed[_S]: ...


_decoded_signed: _NewSigned = _builder(m.Signed)
_decoded_mac_reply: Callable[[bytes, bytes, m.Reply, tuple[bytes, m.Reply] | None], m.MacReply] = (
    _builder(m.MacReply))

#: `Signed(body, signature, statement, checked)`, made without the frozen dataclass's
#: per-field `object.__setattr__` (the same object): for signers, who make many.
new_signed = _decoded_signed
#: `MacReply(body, mac, statement, checked)`, likewise.
new_mac_reply = _decoded_mac_reply
#: `fast_constructor(cls)`: a function of all of `cls`'s field values, in order, that makes
#: `cls(*values)` without a frozen dataclass's per-field `object.__setattr__` (the same
#: object; `cls` itself when it has a __post_init__). For the replica's hot path (bft/normal.py).
fast_constructor = _builder

# The generated readers share one namespace, so that each finds the readers of
# the messages it holds by name (`_fast_read_Batch`, ...) when it runs.
_GENERATED: dict[str, Any] = {
    "_Reject": _Reject, "_fast_read_uint": _fast_read_uint, "_fast_read_bytes": _fast_read_bytes,
    "_fast_read_text": _fast_read_text, "_fast_read_array": _fast_read_array,
    "_fast_read_Signed": _fast_read_signed, "_fast_read_MacReply": _fast_read_mac_reply,
}
for _cls in m.ALL_TYPES:
    if _cls not in (m.Signed, m.MacReply):
        _GENERATED[f"_decoded_{_cls.__name__}"] = _builder(_cls)
        _define(_fast_source(_cls), f"_fast_read_{_cls.__name__}", _GENERATED)


def _fast_table(types_: tuple[type, ...]) -> _FastTable:
    """TAG -> (one-byte array head, field reader) of the message types allowed at a place."""
    table: _FastTable = {}
    for cls in types_:
        items = 1 + len(_wire_field_names(cls))
        assert items < 24
        tag = _tag(cls)
        table[tag] = (0x80 + items, _GENERATED[f"_fast_read_{cls.__name__}"])
    return table


_FAST_TOP_LEVEL = _fast_table(m.TOP_LEVEL_TYPES)
_FAST_STATEMENTS = _fast_table(m.STATEMENT_TYPES)
_FAST_REPLY = _fast_table((m.Reply,))


def _decode(
    table: dict[int, type], fast_table: _FastTable, data: bytes, limits: Limits
) -> Any:
    """Decode `data` as one message whose TAG is in `table` (`fast_table` for the fast reader):
    what the fast reader returns, else what the reference decoder returns or raises."""
    if type(data) is not bytes and isinstance(data, (bytearray, memoryview)):
        data = bytes(data)
    if type(data) is bytes and len(data) <= limits.max_message_bytes:
        try:
            message, end = _fast_read_message(data, 0, fast_table, 1, limits)
        except (_Reject, IndexError):
            pass
        else:
            if end == len(data):
                return message
            # The reference decoder would read the same message up to `end`, then say this:
            raise malformed(end, f"{len(data) - end} trailing bytes after the message")
    return _decode_whole(table, data, 1, limits)


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
    first item that does not fit the schema (bytes the fast reader gives up
    on are read a second time, by the reference decoder, to say what is
    wrong: at most two passes). Accepts bytes, bytearray or
    memoryview; anything else is a caller's bug (TypeError).
    """
    # (the readers are made from the schema at run time: the table says which type comes back)
    return _decode(_TOP_LEVEL_BY_TAG, _FAST_TOP_LEVEL, data, limits)  # type: ignore[no-any-return]


def decode_statement_untrusted(body: bytes, limits: Limits = DEFAULT_LIMITS) -> m.Statement:
    """Decode the body of a `Signed` into its statement (one of `STATEMENT_TYPES`).

    Same guarantees as `decode_untrusted`; carriers (`Signed`, `Batch`,
    `Proposal`, `PreparedCert`, `MacReply`) are rejected at the top of a body.
    """
    # (the readers are made from the schema at run time: the table says which type comes back)
    return _decode(  # type: ignore[no-any-return]
        _STATEMENTS_BY_TAG, _FAST_STATEMENTS, body, limits)


_CERT_BY_TAG = _by_tag((m.PreparedCert,))
_FAST_CERT = _fast_table((m.PreparedCert,))


def decode_prepared_cert_untrusted(data: bytes, limits: Limits = DEFAULT_LIMITS) -> m.PreparedCert:
    """Decode a `PreparedCert` on its own: a replica's WAL keeps them (bft/walrecords.py).

    Same guarantees as `decode_untrusted`; any other message is rejected.
    """
    # (the readers are made from the schema at run time: the table says which type comes back)
    return _decode(_CERT_BY_TAG, _FAST_CERT, data, limits)  # type: ignore[no-any-return]
