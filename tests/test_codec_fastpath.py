"""bft.codec's fast paths give exactly what the reference encoder and decoder give.

* `encode` writes the bytes itself for well-formed messages and leaves
  anything else to cbor2 (`_encode_reference`, the encoding as it always was):
  for any message, however odd its field values, `encode` returns the same
  bytes, or raises the same exception type, as the reference.
* `decode_untrusted` / `decode_statement_untrusted` try the fast reader first
  and run the reference decoder (`_decode_whole`) whenever it does not accept
  the bytes. Sound only if the fast reader never accepts what the reference
  decoder rejects, and never builds a different message: checked here on
  valid encodings, exhaustive single-byte substitutions, random mutations,
  splices and random bytes, under small random limits. The public functions
  must return an equal message or raise the same error (same text) as the
  reference.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import cbor2
import pytest
import strategies as s
from hypothesis import given
from hypothesis import strategies as st

from bft import codec
from bft import messages as m
from bft.codec import DEFAULT_LIMITS, Limits, decode_statement_untrusted, decode_untrusted, encode
from bft.errors import MalformedMessage

DIGEST = bytes(range(32))
SIG = bytes(range(64))


def sign(statement: m.Statement) -> m.Signed:
    return m.Signed(body=encode(statement), signature=SIG, statement=statement)


# --------------------------------------------------------------------------
# Encoding
# --------------------------------------------------------------------------


def outcome_of(fn: Any, *args: Any) -> tuple[str, Any]:
    try:
        return ("ok", fn(*args))
    except Exception as exc:  # noqa: BLE001 - the exception type is what is compared
        return ("raised", type(exc))


@given(s.all_wire_messages())
def test_encoding_of_wire_messages_is_the_reference(message: m.WireMessage) -> None:
    assert encode(message) == codec._encode_reference(message)


@given(st.one_of(s.statements(), s.batches(), s.prepared_certs()))
def test_encoding_of_statements_and_carriers_is_the_reference(message: Any) -> None:
    assert encode(message) == codec._encode_reference(message)


EDGE_INTS = [0, 1, 23, 24, 255, 256, 65535, 65536, 2**32 - 1, 2**32, 2**63 - 1, 2**63, 2**64 - 1]
EDGE_LENGTHS = [0, 1, 23, 24, 255, 256, 65535, 65536]


@pytest.mark.parametrize("value", EDGE_INTS)
def test_integer_heads_at_every_width_boundary(value: int) -> None:
    prepare = m.Prepare(view=value, seq=value, digest=DIGEST, replica=value)
    assert encode(prepare) == codec._encode_reference(prepare)
    status = m.Status(value, 0, 0, (value, value), (), 0, 0)
    assert encode(status) == codec._encode_reference(status)


@pytest.mark.parametrize("length", EDGE_LENGTHS)
def test_byte_string_and_array_heads_at_every_width_boundary(length: int) -> None:
    request = m.Request(op=b"o" * length, timestamp=1, client=2)
    assert encode(request) == codec._encode_reference(request)
    signed = m.Signed(body=b"b" * length, signature=b"s" * length, statement=request)
    assert encode(signed) == codec._encode_reference(signed)
    if length <= 256:  # tuples of that many items
        status = m.Status(0, 0, 0, tuple(range(length)), (), 0, 0)
        assert encode(status) == codec._encode_reference(status)
        batch = m.Batch(0, (sign(request),) * length)
        assert encode(batch) == codec._encode_reference(batch)


class IntSubclass(int):
    pass


class BytesSubclass(bytes):
    pass


@dataclasses.dataclass(frozen=True, slots=True)
class PrepareSubclass(m.Prepare):
    pass


# Values no well-formed message holds: the direct encoder leaves them to cbor2.
ODD_VALUES = [
    -1, -(2**64), 2**64, 2**100, True, False, None, 1.5, float("nan"), "text", "\ud800",
    bytearray(b"ba"), memoryview(b"mv"), [1, 2], [sign(m.Prepare(0, 1, DIGEST, 2))], {1: 2},
    frozenset({1}), object(), IntSubclass(5), BytesSubclass(b"x"), (1, "mixed", b"tuple"),
    PrepareSubclass(0, 1, DIGEST, 2), m.Prepare(0, 1, DIGEST, -3),
]


@pytest.mark.parametrize("odd", ODD_VALUES, ids=repr)
def test_odd_field_values_encode_as_the_reference_does(odd: Any) -> None:
    for message in [
        m.Prepare(view=odd, seq=1, digest=DIGEST, replica=2),
        m.Request(op=odd, timestamp=1, client=2),
        m.Status(0, 0, 0, (1, odd), (), 0, 0),
        m.Signed(body=odd, signature=SIG, statement=m.Prepare(0, 1, DIGEST, 2)),
        m.Signed(body=b"body", signature=odd, statement=m.Prepare(0, 1, DIGEST, 2)),
        m.Batch(0, (odd,)),
        m.Proposal(sign(m.PrePrepare(0, 1, DIGEST, 0)), m.Batch(odd, ())),
        m.MacReply(body=odd, mac=SIG[:32], statement=m.Reply(0, 1, 2, 3, DIGEST, b"r")),
        odd,
        (odd,),
    ]:
        assert outcome_of(encode, message) == outcome_of(codec._encode_reference, message)


CBORABLE = st.recursive(
    st.one_of(st.integers(min_value=-(2**65), max_value=2**65), st.binary(max_size=300),
              st.text(max_size=5), st.booleans(), st.none(), st.floats()),
    lambda inner: st.one_of(st.lists(inner, max_size=3).map(tuple), st.lists(inner, max_size=3)),
    max_leaves=6,
)


@given(st.sampled_from(m.ALL_TYPES), st.data())
def test_messages_with_arbitrary_field_values_encode_as_the_reference(
    cls: type, data: st.DataObject
) -> None:
    values = [data.draw(CBORABLE, label=f.name) for f in dataclasses.fields(cls)]
    message = cls(*values)
    assert outcome_of(encode, message) == outcome_of(codec._encode_reference, message)


# --------------------------------------------------------------------------
# Decoding: the fast reader against the reference decoder
# --------------------------------------------------------------------------


def deep(obj: Any) -> Any:
    """Everything a decoded message holds, statements included (`==` on Signed skips them).

    Also checks that `checked` pairs the very body and statement objects.
    """
    if isinstance(obj, tuple):
        return tuple(deep(x) for x in obj)
    if dataclasses.is_dataclass(obj):
        if isinstance(obj, (m.Signed, m.MacReply)):
            assert obj.checked is not None
            assert obj.checked[0] is obj.body and obj.checked[1] is obj.statement
        return (type(obj).__name__,) + tuple(
            deep(getattr(obj, f.name)) for f in dataclasses.fields(obj) if f.name != "checked"
        )
    assert type(obj) in (int, bytes, str)
    return obj


TABLES = [
    (codec._TOP_LEVEL_BY_TAG, codec._FAST_TOP_LEVEL, decode_untrusted),
    (codec._STATEMENTS_BY_TAG, codec._FAST_STATEMENTS, decode_statement_untrusted),
]


def check_against_reference(data: bytes, limits: Limits = DEFAULT_LIMITS) -> None:
    """The fast reader accepts only what the reference accepts, and builds the same message;
    the public decoders return or raise exactly what the reference does."""
    for table, fast_table, public in TABLES:
        try:
            expected: Any = deep(codec._decode_whole(table, data, 1, limits))
        except MalformedMessage as exc:
            expected = ("malformed", str(exc))
        if len(data) <= limits.max_message_bytes:
            try:
                message, end = codec._fast_read_message(data, 0, fast_table, 1, limits)
            except (codec._Reject, IndexError):
                pass
            else:
                if end == len(data):
                    assert deep(message) == expected, data.hex()
        try:
            got: Any = deep(public(data, limits))
        except MalformedMessage as exc:
            got = ("malformed", str(exc))
        assert got == expected, data.hex()


def sample_messages() -> list[Any]:
    view_change = m.ViewChange(
        view=5, stable_seq=300, state_digest=DIGEST,
        checkpoint_proof=(sign(m.Checkpoint(300, DIGEST, 1)),),
        prepared=(m.PreparedCert(sign(m.PrePrepare(4, 301, DIGEST, 0)), (sign(
            m.Prepare(4, 301, DIGEST, 2)),)),),
        replica=1,
    )
    requests = tuple(sign(m.Request(b"op%d" % t, 2**40 + t, 70_000)) for t in range(2))
    reply = m.Reply(view=1, timestamp=7, client=2, replica=3, request=DIGEST, result=b"ok" * 20)
    return [
        sign(m.Prepare(3, 1234, DIGEST, 1)),
        sign(m.Request(b"x" * 30, 5, 0)),
        m.Proposal(sign(m.PrePrepare(3, 70_000, DIGEST, 0)), m.Batch(2**50, requests)),
        m.MacReply(body=encode(reply), mac=SIG[:32], statement=reply),
        sign(m.Status(1, 2, 3, (4, 300), (5,), 0, 2)),
        sign(view_change),
        sign(m.NewView(6, (sign(m.ViewChange(6, 0, DIGEST, (), (), 3)),),
                       (sign(m.PrePrepare(6, 301, DIGEST, 2)),), 2)),
        sign(m.StateChunk(1, DIGEST, 0, 1, b"d" * 300, 0)),
    ]


SUBSTITUTES = sorted({0x00, 0x01, 0x14, 0x17, 0x18, 0x19, 0x1A, 0x1B, 0x1C, 0x1F, 0x20, 0x38,
                      0x40, 0x41, 0x57, 0x58, 0x59, 0x5A, 0x5B, 0x5F, 0x60, 0x61, 0x78, 0x7F,
                      0x80, 0x82, 0x83, 0x84, 0x97, 0x98, 0x9F, 0xA0, 0xC0, 0xD8, 0xF4, 0xF9,
                      0xFF})


def sample_encodings() -> list[bytes]:
    """The sample messages, and the statement bodies of the small ones on their own."""
    encodings = [encode(message) for message in sample_messages()]
    bodies = [encode(message.statement) for message in sample_messages()
              if isinstance(message, (m.Signed, m.MacReply)) and len(message.body) < 200]
    return encodings + bodies


def heads(data: bytes) -> list[tuple[int, int, int, int]]:
    """(position, major type, argument, head length) of every head of a canonical encoding,
    but not inside byte strings (a Signed body is opaque here)."""
    found = []

    def item(pos: int) -> int:
        major, info = data[pos] >> 5, data[pos] & 31
        width = 0 if info < 24 else 1 << (info - 24)
        argument = info if info < 24 else int.from_bytes(data[pos + 1 : pos + 1 + width], "big")
        found.append((pos, major, argument, 1 + width))
        pos += 1 + width
        if major in (2, 3):
            return pos + argument
        if major == 4:
            for _ in range(argument):
                pos = item(pos)
        return pos

    assert item(0) == len(data)
    return found


def widened(data: bytes) -> list[bytes]:
    """`data` with one head rewritten in a longer (non-canonical) form, every way possible."""
    variants = []
    for pos, major, argument, length in heads(data):
        for info, width in ((24, 1), (25, 2), (26, 4), (27, 8)):
            if 1 + width > length and argument < 256**width:
                head = bytes((major << 5 | info,)) + argument.to_bytes(width, "big")
                variants.append(data[:pos] + head + data[pos + length :])
    return variants


@pytest.mark.parametrize("index", range(len(sample_encodings())))
def test_every_single_byte_change_decodes_as_the_reference(index: int) -> None:
    """Each byte replaced by each interesting head byte and by its neighbours; an interesting
    byte inserted everywhere; every head widened; every truncation."""
    data = sample_encodings()[index]
    check_against_reference(data)
    for i, byte in enumerate(data):
        for new in SUBSTITUTES + [(byte + 1) % 256, (byte - 1) % 256]:
            if new != byte:
                check_against_reference(data[:i] + bytes((new,)) + data[i + 1 :])
        for new in (0x00, 0x18, 0x40, 0x58, 0x80, 0x83):
            check_against_reference(data[:i] + bytes((new,)) + data[i:])
    for variant in widened(data):
        check_against_reference(variant)
    for cut in range(len(data)):
        check_against_reference(data[:cut])


def limits_strategy() -> st.SearchStrategy[Limits]:
    return st.one_of(
        st.just(DEFAULT_LIMITS),
        st.builds(Limits, max_message_bytes=st.integers(0, 2000), max_op_bytes=st.integers(0, 70),
                  max_text_chars=st.integers(0, 10), max_items=st.integers(0, 10),
                  max_depth=st.integers(0, 18)),
    )


@given(st.one_of(s.all_wire_messages(), s.statements()), limits_strategy())
def test_valid_encodings_under_any_limits(message: Any, limits: Limits) -> None:
    check_against_reference(encode(message), limits)


@pytest.mark.parametrize("index", range(len(sample_messages())))
@given(limits=limits_strategy())
def test_sample_messages_under_any_limits(index: int, limits: Limits) -> None:
    check_against_reference(encode(sample_messages()[index]), limits)


@given(s.all_wire_messages(), st.data(), limits_strategy())
def test_mutated_encodings(message: m.WireMessage, data: st.DataObject, limits: Limits) -> None:
    encoded = bytearray(encode(message))
    for _ in range(data.draw(st.integers(1, 4), label="mutations")):
        i = data.draw(st.integers(0, len(encoded) - 1), label="at")
        encoded[i] = data.draw(st.integers(0, 255), label="byte")
    check_against_reference(bytes(encoded), limits)


@given(s.all_wire_messages(), s.all_wire_messages(), st.data())
def test_spliced_encodings(a: m.WireMessage, b: m.WireMessage, data: st.DataObject) -> None:
    x, y = encode(a), encode(b)
    i = data.draw(st.integers(0, len(x)), label="i")
    j = data.draw(st.integers(0, len(y)), label="j")
    check_against_reference(x[:i] + y[j:])


@given(st.binary(max_size=300))
def test_random_bytes(data: bytes) -> None:
    check_against_reference(data)


@given(st.sampled_from([b"\x83\x14", b"\x83\x16", b"\x83\x18\x18", b"\x84\x01", b"\x88\x09"]),
       st.binary(max_size=200))
def test_random_bytes_after_a_valid_start(prefix: bytes, rest: bytes) -> None:
    check_against_reference(prefix + rest)


def test_hand_built_cbor_the_fast_reader_must_leave_to_the_reference() -> None:
    body = encode(m.Prepare(1, 2, DIGEST, 3))
    cases = [
        cbor2.dumps([20, body, SIG]),
        cbor2.dumps([20, bytearray(body), SIG]),
        b"\x83\x14\x59\x00" + bytes((len(body),)) + body + b"\x58\x40" + SIG,  # long head
        b"\x98\x03\x14" + cbor2.dumps(body) + cbor2.dumps(SIG),  # array count in a byte
        b"\x83\x18\x14" + cbor2.dumps(body) + cbor2.dumps(SIG),  # tag in a byte
        b"\x83\x18\x18" + cbor2.dumps(encode(m.Reply(1, 2, 3, 4, DIGEST, b""))) + b"\x58\x20"
        + DIGEST,
        b"\x83\x18\x18" + cbor2.dumps(encode(m.Reply(1, 2, 3, 4, DIGEST, b""))) + b"\x58\x20"
        + DIGEST[1:],
        cbor2.dumps([20, cbor2.dumps([3, 1, 2, DIGEST, 2**63]), SIG]),
        cbor2.dumps([20, cbor2.dumps([3, 1, 2, DIGEST, 2**63 - 1]), SIG]),
        cbor2.dumps([20, cbor2.dumps([9, 0, 0, 0, list(range(30)), [], 0, 0]), SIG]),
        cbor2.dumps([20, cbor2.dumps([12, 0, DIGEST, 0, 1, b"x" * 70_000, 0]), SIG]),
        cbor2.dumps([20, encode(m.Request(b"abc", 1, 2)), SIG]),
        cbor2.dumps([24, encode(m.Reply(1, 2, 3, 4, DIGEST, b"ok")), DIGEST]),
    ]
    reply = encode(m.Reply(1, 2, 3, 4, DIGEST, b""))
    cases += [  # trailing bytes inside a body
        cbor2.dumps([20, body + b"\x00", SIG]),
        cbor2.dumps([24, reply + b"\x00", DIGEST]),
        cbor2.dumps([22, [20, body + b"\x00", SIG], [21, 0, []]]),
    ]
    for data in cases:
        for limits in [DEFAULT_LIMITS, Limits(max_items=2), Limits(max_items=8),
                       Limits(max_items=29), Limits(max_items=30), Limits(max_depth=1),
                       Limits(max_op_bytes=0), Limits(max_op_bytes=2), Limits(max_op_bytes=3),
                       Limits(max_message_bytes=100)]:
            check_against_reference(data, limits)


def test_the_fast_reader_takes_the_common_messages() -> None:
    """Not a correctness property: the fast reader must not silently stop working."""
    for message in sample_messages():
        data = encode(message)
        decoded, end = codec._fast_read_message(data, 0, codec._FAST_TOP_LEVEL, 1, DEFAULT_LIMITS)
        assert end == len(data)
        assert deep(decoded) == deep(codec._decode_whole(codec._TOP_LEVEL_BY_TAG, data, 1,
                                                         DEFAULT_LIMITS))
        assert decoded == message


def test_builders_make_the_same_objects_as_the_constructors() -> None:
    prepare = codec._GENERATED["_decoded_Prepare"](1, 2, DIGEST, 3)
    assert type(prepare) is m.Prepare and prepare == m.Prepare(1, 2, DIGEST, 3)
    assert hash(prepare) == hash(m.Prepare(1, 2, DIGEST, 3))
    signed = codec._decoded_signed(b"b", SIG, prepare, None)
    assert (signed.body, signed.signature, signed.statement, signed.checked) == (
        b"b", SIG, prepare, None)
    with pytest.raises(dataclasses.FrozenInstanceError):
        prepare.view = 5  # type: ignore[misc]


def test_a_class_with_post_init_keeps_its_constructor() -> None:
    @dataclasses.dataclass(frozen=True, slots=True)
    class Checked:
        x: int

        def __post_init__(self) -> None:
            if self.x < 0:
                raise ValueError("negative")

    assert codec._builder(Checked) is Checked
    assert codec._builder(m.Prepare) is not m.Prepare


@given(st.one_of(st.text(max_size=30).map(lambda t: cbor2.dumps(t)),
                 st.binary(max_size=40).map(lambda b: b"\x78" + bytes((len(b),)) + b),
                 st.binary(max_size=40)),
       st.integers(0, 12))
def test_fast_text_reads_as_the_reference(data: bytes, max_chars: int) -> None:
    """No message has a TEXT field yet: the fast text reader is checked on its own."""
    limits = Limits(max_text_chars=max_chars)
    try:
        expected: Any = codec._read_text(data, 0, 1, limits)
    except MalformedMessage:
        expected = "malformed"
    try:
        got = codec._fast_read_text(data, 0, limits)
    except (codec._Reject, IndexError):
        return
    assert got == expected
