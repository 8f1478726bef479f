"""The one strict reader of canonical CBOR from untrusted bytes (pure: no I/O).

Every decoder of network or disk bytes in bft/ reads CBOR item heads here, so
all of them apply one rule: an item head is accepted only in its shortest form
(canonical), never with an indefinite length or a reserved additional
information, and only of the major type the caller expects. Failures raise
`MalformedMessage` with the byte position (`at byte N: ...`).

Who uses it:

* `bft.codec`: its reference decoder reads every head with `read_head` (the
  codec's fast readers make the same checks inline, and fall back to the
  reference decoder whenever they give up: tests/test_codec_fastpath.py);
* `bft.telemetry`: its cursor reads every head with `read_head`;
* `bft.app`: ops, results and snapshots are plain values (`loads_untrusted`);
* `bft.client`: the reply peek reads the heads it needs with `read_head`.

What each decoder then does with the values (field types, ranges, lengths,
limits, which text it accepts) stays with that decoder.
"""

from __future__ import annotations

from typing import Any

from bft.errors import MalformedMessage

MAJOR_UINT, MAJOR_NEGINT, MAJOR_BYTES, MAJOR_TEXT, MAJOR_ARRAY = 0, 1, 2, 3, 4
MAJOR_NAMES = (
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
NULL = 0xF6  # the one simple value `loads_untrusted` accepts


def malformed(pos: int, what: str) -> MalformedMessage:
    """The error for what is wrong at byte `pos`."""
    return MalformedMessage(f"at byte {pos}: {what}")


def read_head(data: bytes, pos: int, major: int, what: str) -> tuple[int, int]:
    """Read the head of an item of CBOR major type `major` at `pos`.

    Returns (argument, position after the head). Rejects truncation, any
    other major type, reserved and indefinite-length heads, and arguments
    that are not in their shortest form. `what` names the expected item in
    the error.
    """
    try:
        initial = data[pos]
    except IndexError:
        raise malformed(pos, f"truncated: expected {what}") from None
    if initial >> 5 != major:
        raise malformed(pos, f"expected {what}, found {MAJOR_NAMES[initial >> 5]}")
    info = initial & 31
    if info < 24:
        return info, pos + 1
    if info > 27:
        if info == 31:
            raise malformed(pos, "indefinite length not allowed")
        raise malformed(pos, f"reserved additional information {info}")
    width = 1 << (info - 24)
    end = pos + 1 + width
    if end > len(data):
        raise malformed(pos, "truncated item head")
    arg = int.from_bytes(data[pos + 1 : end], "big")
    if arg < _MIN_FOR_WIDTH[width]:
        raise malformed(pos, "non-canonical (not shortest) item head")
    return arg, end


def loads_untrusted(data: bytes, max_depth: int) -> Any:
    """Decode `data` as exactly one canonical CBOR value made of arrays (lists), integers
    (unsigned or negative), byte strings, UTF-8 text strings and null (None).

    Raises `MalformedMessage` for anything else: maps, tags, floats, booleans
    and other simple values, indefinite lengths, heads not in their shortest
    form, invalid UTF-8, trailing bytes, and items nested deeper than
    `max_depth` (the value itself is at depth 0, the items of a top-level
    array at depth 1, and so on). So every value has exactly one encoding,
    `cbor2.dumps(value, canonical=True)`. Work is linear in `len(data)`;
    recursion is bounded by `max_depth`.
    """
    value, end = _read_value(data, 0, 0, max_depth)
    if end != len(data):
        raise malformed(end, f"{len(data) - end} trailing bytes after the value")
    return value


def _read_value(data: bytes, pos: int, depth: int, max_depth: int) -> tuple[Any, int]:
    if depth > max_depth:
        raise malformed(pos, f"nesting deeper than {max_depth}")
    try:
        initial = data[pos]
    except IndexError:
        raise malformed(pos, "truncated: expected a value") from None
    major = initial >> 5
    if major == 7 and initial == NULL:
        return None, pos + 1
    if major > MAJOR_ARRAY:
        raise malformed(pos, f"{MAJOR_NAMES[major]} is not allowed")
    arg, pos = read_head(data, pos, major, MAJOR_NAMES[major])
    if major == MAJOR_UINT:
        return arg, pos
    if major == MAJOR_NEGINT:
        return -1 - arg, pos
    if major == MAJOR_ARRAY:
        if arg > len(data) - pos:  # every item takes at least one byte
            raise malformed(pos, f"truncated: array of {arg} items does not fit")
        items = []
        for _ in range(arg):
            item, pos = _read_value(data, pos, depth + 1, max_depth)
            items.append(item)
        return items, pos
    end = pos + arg
    if end > len(data):
        raise malformed(pos, f"truncated: string of {arg} bytes does not fit")
    raw = data[pos:end]
    if major == MAJOR_BYTES:
        return raw, end
    try:
        return raw.decode("utf-8"), end  # strict: one encoding per string
    except UnicodeDecodeError:
        raise malformed(pos, "text is not valid UTF-8") from None
