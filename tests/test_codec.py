"""bft.codec: canonical encoding and strict decoding of untrusted bytes.

Properties: every message round-trips; encoding is canonical; whatever bytes
arrive, decoding either raises `MalformedMessage` or returns the one message
whose encoding is exactly those bytes. Explicit cases cover each rejection
rule. Hypothesis prints the failing example and its reproduction seed.
"""

from __future__ import annotations

import time
import tracemalloc

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
PREPARE = m.Prepare(view=1, seq=2, digest=DIGEST, replica=3)
MAC = bytes(range(100, 132))
REPLY = m.Reply(view=1, timestamp=7, client=2, replica=3, request=DIGEST, result=b"ok")


def sign(statement: m.Statement) -> m.Signed:
    return m.Signed(body=encode(statement), signature=SIG, statement=statement)


def raw(obj: object) -> bytes:
    """Hand-built CBOR (may be invalid for us: floats, tags, negatives...)."""
    return cbor2.dumps(obj, canonical=True)


def raw_signed(body: bytes, signature: object = SIG) -> bytes:
    return raw([m.Signed.TAG, body, signature])


def prepare_body(
    view: object = 1, seq: object = 2, digest: object = DIGEST, replica: object = 3
) -> bytes:
    return raw([m.Prepare.TAG, view, seq, digest, replica])


def check_untrusted(data: bytes, limits: Limits = DEFAULT_LIMITS) -> None:
    """Decoding `data` raises only MalformedMessage, or yields the message encoded as `data`."""
    try:
        message = decode_untrusted(data, limits)
    except MalformedMessage:
        return
    assert isinstance(message, m.TOP_LEVEL_TYPES)
    assert encode(message) == data


def assert_malformed(
    data: bytes, match: str | None = None, limits: Limits = DEFAULT_LIMITS, statement: bool = False
) -> None:
    decode = decode_statement_untrusted if statement else decode_untrusted
    with pytest.raises(MalformedMessage, match=match):
        decode(data, limits)


# --------------------------------------------------------------------------
# Round trips and canonical form
# --------------------------------------------------------------------------

STATEMENT_STRATEGIES = {
    m.Request: s.requests,
    m.PrePrepare: s.pre_prepares,
    m.Prepare: s.prepares,
    m.Commit: s.commits,
    m.Reply: s.replies,
    m.Checkpoint: s.checkpoints,
    m.ViewChange: s.view_changes,
    m.NewView: s.new_views,
    m.Status: s.statuses,
    m.Fetch: s.fetches,
    m.FetchState: s.fetch_states,
    m.StateChunk: s.state_chunks,
}


def test_every_statement_type_has_a_strategy() -> None:
    assert set(STATEMENT_STRATEGIES) == set(m.STATEMENT_TYPES)


@pytest.mark.parametrize("cls", m.STATEMENT_TYPES, ids=lambda c: c.__name__)
@given(data=st.data())
def test_statement_round_trip(cls: type, data: st.DataObject) -> None:
    statement = data.draw(STATEMENT_STRATEGIES[cls]())
    body = encode(statement)
    assert decode_statement_untrusted(body) == statement
    envelope = decode_untrusted(encode(sign(statement)))
    assert isinstance(envelope, m.Signed)
    assert envelope.statement == statement
    assert envelope.body == body


@given(s.all_wire_messages())
def test_wire_message_round_trip(message: m.WireMessage) -> None:
    data = encode(message)
    decoded = decode_untrusted(data)
    assert decoded == message
    assert type(decoded) is type(message)
    if isinstance(message, (m.Signed, m.MacReply)):
        assert decoded.statement == message.statement
    else:
        assert decoded.pre_prepare.statement == message.pre_prepare.statement
    assert encode(decoded) == data


@given(s.all_wire_messages())
def test_encoding_is_canonical(message: m.WireMessage) -> None:
    # An equal message built independently encodes to the same bytes...
    copy = decode_untrusted(encode(message))
    assert copy is not message
    assert encode(copy) == encode(message)
    # ...and re-encoding with cbor2's own canonical mode changes nothing.
    assert raw(cbor2.loads(encode(message))) == encode(message)


def test_signed_statement_fields_decode_recursively() -> None:
    view_change = m.ViewChange(
        view=5,
        stable_seq=100,
        state_digest=DIGEST,
        checkpoint_proof=(sign(m.Checkpoint(100, DIGEST, 1)),),
        prepared=(m.PreparedCert(sign(m.PrePrepare(4, 101, DIGEST, 0)), (sign(PREPARE),)),),
        replica=1,
    )
    new_view = m.NewView(
        view=5,
        view_changes=(sign(view_change),),
        pre_prepares=(sign(m.PrePrepare(5, 101, DIGEST, 1)),),
        replica=1,
    )
    decoded = decode_untrusted(encode(sign(new_view)))
    inner = decoded.statement.view_changes[0].statement
    assert inner == view_change
    assert inner.prepared[0].prepares[0].statement == PREPARE


# --------------------------------------------------------------------------
# Untrusted bytes: random, mutated, spliced
# --------------------------------------------------------------------------


@given(st.binary(max_size=512))
def test_random_bytes_raise_only_malformed(data: bytes) -> None:
    check_untrusted(data)


@given(st.sampled_from([b"\x83\x14", b"\x83\x16", b"\x83\x14\x58", b"\x83\x18\x18"]),
       st.binary(max_size=256))
def test_random_bytes_after_a_valid_start(prefix: bytes, rest: bytes) -> None:
    check_untrusted(prefix + rest)


@given(s.all_wire_messages(), st.data())
def test_bit_flips(message: m.WireMessage, data: st.DataObject) -> None:
    encoded = bytearray(encode(message))
    for _ in range(data.draw(st.integers(1, 3), label="flips")):
        bit = data.draw(st.integers(0, 8 * len(encoded) - 1), label="bit")
        encoded[bit // 8] ^= 1 << (bit % 8)
    check_untrusted(bytes(encoded))


@given(s.all_wire_messages(), st.data())
def test_truncation_is_always_rejected(message: m.WireMessage, data: st.DataObject) -> None:
    encoded = encode(message)
    cut = data.draw(st.integers(0, len(encoded) - 1), label="cut")
    assert_malformed(encoded[:cut], match="truncated")


@given(s.all_wire_messages(), st.binary(min_size=1, max_size=16))
def test_appended_bytes_are_always_rejected(message: m.WireMessage, extra: bytes) -> None:
    assert_malformed(encode(message) + extra, match="trailing")


@given(s.all_wire_messages(), s.all_wire_messages(), st.data())
def test_splicing_two_encodings(a: m.WireMessage, b: m.WireMessage, data: st.DataObject) -> None:
    x, y = encode(a), encode(b)
    i = data.draw(st.integers(0, len(x)), label="i")
    j = data.draw(st.integers(0, len(y)), label="j")
    check_untrusted(x[:i] + y[j:])
    check_untrusted(x + y)


@given(s.all_wire_messages(), st.data())
def test_inserted_and_replaced_bytes(message: m.WireMessage, data: st.DataObject) -> None:
    encoded = encode(message)
    i = data.draw(st.integers(0, len(encoded)), label="at")
    chunk = data.draw(st.binary(min_size=1, max_size=9), label="chunk")
    check_untrusted(encoded[:i] + chunk + encoded[i:])
    check_untrusted(encoded[:i] + chunk + encoded[i + len(chunk) :])


HUGE_HEADS = [
    b"\x5b" + (2**63).to_bytes(8, "big"),  # byte string of 2**63 bytes
    b"\x5b" + (2**64 - 1).to_bytes(8, "big"),
    b"\x7b" + (2**63).to_bytes(8, "big"),  # text string
    b"\x9b" + (2**63).to_bytes(8, "big"),  # array of 2**63 items
    b"\x5a" + (2**32 - 1).to_bytes(4, "big"),
    b"\x9a" + (2**32 - 1).to_bytes(4, "big"),
]


def huge_head_inputs() -> list[bytes]:
    cases = []
    for head in HUGE_HEADS:
        cases += [
            head,  # top level
            b"\x83\x14" + head,  # as the body of a Signed
            b"\x83\x14\x58\x20" + DIGEST + head,  # as the signature of a Signed
            raw_signed(b"\x85\x03\x01\x02" + head),  # in a Signed body where a digest belongs
            b"\x83\x16" + raw_signed(prepare_body()) + b"\x83\x15\x00" + head,  # batch requests
            b"\x88\x09\x00\x00\x00" + head,  # Status.prepared (as a statement)
        ]
    return cases


@pytest.mark.parametrize("data", huge_head_inputs(), ids=lambda d: d[:12].hex())
def test_huge_length_prefixes_allocate_nothing(data: bytes) -> None:
    tracemalloc.start()
    try:
        with pytest.raises(MalformedMessage):
            decode_untrusted(data)
        with pytest.raises(MalformedMessage):
            decode_statement_untrusted(data)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert peak < 64 * 1024


def adversarial_big_inputs() -> dict[str, bytes]:
    size = DEFAULT_LIMITS.max_message_bytes
    return {
        "nested-arrays": b"\x81" * size,
        "zeros": b"\x00" * size,
        "array-of-zeros": b"\x9a" + (size - 5).to_bytes(4, "big") + b"\x00" * (size - 5),
        "signed-then-junk": b"\x83\x14" + b"\x81" * (size - 2),
        "status-max-items": raw([9, 0, 0, 0, [0] * DEFAULT_LIMITS.max_items, [1] * 70000, 0, 0]),
    }


@pytest.mark.parametrize("name", list(adversarial_big_inputs()))
def test_big_adversarial_inputs_are_rejected_early(name: str) -> None:
    """Junk of the maximum size is rejected at the first item that does not fit.

    Each case is rejected after a few bytes (or one array of max_items), in
    microseconds to milliseconds; the bound below is far above that.
    """
    data = adversarial_big_inputs()[name]
    started = time.perf_counter()
    with pytest.raises(MalformedMessage):
        decode_untrusted(data)
    with pytest.raises(MalformedMessage):
        decode_statement_untrusted(data)
    assert time.perf_counter() - started < 1.0


def test_message_over_the_size_limit_is_rejected_before_decoding() -> None:
    data = encode(sign(m.Request(op=b"x" * 200, timestamp=1, client=2)))
    decode_untrusted(data, Limits(max_message_bytes=len(data)))
    assert_malformed(data, "over the limit", Limits(max_message_bytes=len(data) - 1))


# --------------------------------------------------------------------------
# Explicit rejection rules
# --------------------------------------------------------------------------


def test_valid_hand_built_prepare_is_accepted() -> None:
    # The baseline for the cases below: only the named part differs.
    assert decode_statement_untrusted(prepare_body()) == PREPARE
    assert decode_untrusted(raw_signed(prepare_body())).statement == PREPARE


@pytest.mark.parametrize(
    "bad",
    [
        cbor2.CBORTag(2, b"\x01"),  # bignum
        cbor2.CBORTag(1, 5),  # epoch time
        cbor2.CBORTag(55799, 1),  # self-described CBOR
    ],
    ids=["bignum", "epoch", "self-described"],
)
def test_tags_are_rejected(bad: object) -> None:
    assert_malformed(prepare_body(view=bad), "CBOR tag", statement=True)
    assert_malformed(raw_signed(prepare_body(view=bad)), "CBOR tag")


def test_tag_around_a_whole_message_is_rejected() -> None:
    data = encode(sign(PREPARE))
    assert_malformed(b"\xd9\xd9\xf7" + data, "CBOR tag")  # 55799 self-described CBOR
    assert_malformed(raw(cbor2.CBORTag(24, data)), "CBOR tag")  # embedded CBOR


@pytest.mark.parametrize(
    "bad",
    [1.0, 0.0, float("nan"), True, False, None],
    ids=["float", "zero-float", "nan", "true", "false", "null"],
)
def test_floats_and_simple_values_where_ints_belong(bad: object) -> None:
    assert_malformed(prepare_body(seq=bad), "float or simple", statement=True)


@pytest.mark.parametrize(
    "head",
    [b"\xf9\x3c\x00", b"\xfa\x3f\x80\x00\x00", b"\xf7", b"\xff", b"\xe0", b"\xf8\x20"],
    ids=["half", "single", "undefined", "break", "simple0", "simple32"],
)
def test_major_type_7_is_rejected(head: bytes) -> None:
    assert_malformed(b"\x85\x03" + head + prepare_body()[2:], statement=True)


def test_trailing_bytes_are_rejected() -> None:
    assert_malformed(encode(sign(PREPARE)) + b"\x00", "trailing")
    assert_malformed(prepare_body() + b"\x00", "trailing", statement=True)
    # Trailing bytes inside a Signed body, too.
    assert_malformed(raw_signed(prepare_body() + b"\x00"), "trailing")


@pytest.mark.parametrize("bad", [-1, -(2**63)])
def test_negative_integers_are_rejected(bad: int) -> None:
    assert_malformed(prepare_body(replica=bad), "negative", statement=True)


@pytest.mark.parametrize("bad", [2**63, 2**64 - 1])
def test_integers_from_2_pow_63_are_rejected(bad: int) -> None:
    assert_malformed(prepare_body(view=bad), "out of range", statement=True)


def test_largest_u64_is_accepted() -> None:
    assert decode_statement_untrusted(prepare_body(view=2**63 - 1)).view == 2**63 - 1


@pytest.mark.parametrize("size", [0, 31, 33, 64])
def test_digest_of_wrong_length(size: int) -> None:
    assert_malformed(prepare_body(digest=bytes(size)), "digest", statement=True)


@pytest.mark.parametrize("size", [0, 32, 63, 65])
def test_signature_of_wrong_length(size: int) -> None:
    assert_malformed(raw_signed(prepare_body(), bytes(size)), "signature")


@pytest.mark.parametrize("bad", ["7", b"\x07", [7], 7.0], ids=["text", "bytes", "array", "float"])
def test_non_integers_where_integers_belong(bad: object) -> None:
    assert_malformed(prepare_body(view=bad), "expected an unsigned integer", statement=True)


@pytest.mark.parametrize("bad", ["d" * 32, [DIGEST], 7], ids=["text", "array", "int"])
def test_non_bytes_where_bytes_belong(bad: object) -> None:
    assert_malformed(prepare_body(digest=bad), "expected a byte string", statement=True)
    assert_malformed(raw_signed(prepare_body(), bad), "expected a byte string")


def test_map_where_a_message_belongs() -> None:
    assert_malformed(raw({20: 1}), "expected a message")
    assert_malformed(raw_signed(raw({3: 1})), "expected a message")


def test_op_size_limit() -> None:
    limit = DEFAULT_LIMITS.max_op_bytes
    at_limit = m.Request(op=b"o" * limit, timestamp=1, client=1)
    assert decode_statement_untrusted(encode(at_limit)) == at_limit
    over = raw([m.Request.TAG, b"o" * (limit + 1), 1, 1])
    assert_malformed(over, "op of", statement=True)
    small = Limits(max_op_bytes=3)
    assert_malformed(
        encode(m.Request(op=b"four", timestamp=1, client=1)), "op of", small, statement=True
    )
    result = raw([m.Reply.TAG, 0, 1, 1, 0, DIGEST, b"four", 0])  # ..., result, agreed_us
    assert_malformed(result, "op of", small, statement=True)


def test_blob_size_limit() -> None:
    chunk = m.StateChunk(seq=1, state_digest=DIGEST, index=0, count=1, data=b"d" * 300, replica=0)
    data = encode(chunk)
    assert decode_statement_untrusted(data, Limits(max_message_bytes=len(data))) == chunk
    assert_malformed(data, "over the limit", Limits(max_message_bytes=299), statement=True)


def test_depth_bomb_of_nested_arrays() -> None:
    bomb = b"\x81" * 100_000 + b"\x00"
    assert_malformed(bomb)
    assert_malformed(bomb, statement=True)
    # The same bomb inside a Signed body and where a tuple belongs.
    assert_malformed(raw_signed(bomb))
    assert_malformed(raw([m.Status.TAG, 0, 0, 0, [], [], 0, 0])[:5] + bomb, statement=True)


def nested_new_views(levels: int) -> m.Signed:
    """A Signed NewView whose view change is a Signed NewView... `levels` deep (3 arrays each)."""
    signed = sign(m.NewView(view=0, view_changes=(), pre_prepares=(), replica=0))
    for _ in range(levels - 1):
        signed = sign(m.NewView(view=0, view_changes=(signed,), pre_prepares=(), replica=0))
    return signed


def test_depth_limit_counts_signed_bodies() -> None:
    # Depth of `levels` nested NewViews: 3 * levels (NewView, its tuple, the Signed).
    fits = encode(nested_new_views(5))  # depth 15
    too_deep = encode(nested_new_views(6))  # depth 18
    assert decode_untrusted(fits) == nested_new_views(5)
    assert_malformed(too_deep, "nesting deeper than 16")
    assert decode_untrusted(too_deep, Limits(max_depth=18)) == nested_new_views(6)
    assert_malformed(too_deep, "nesting deeper than 17", Limits(max_depth=17))


def test_array_count_limit() -> None:
    status = m.Status(
        view=0,
        stable_seq=0,
        last_executed=0,
        prepared=tuple(range(10)),
        committed=(),
        in_view_change=0,
        replica=0,
    )
    assert decode_statement_untrusted(encode(status), Limits(max_items=10)) == status
    assert_malformed(encode(status), "over the limit of 9", Limits(max_items=9), statement=True)
    # The limit holds for every array, message arrays included (Status has 8 items).
    assert_malformed(encode(status), "array of 8 items", Limits(max_items=7), statement=True)
    batch_requests = tuple(sign(m.Request(b"", t, 1)) for t in range(10))
    proposal = m.Proposal(sign(m.PrePrepare(0, 1, DIGEST, 0)), m.Batch(0, batch_requests))
    assert decode_untrusted(encode(proposal), Limits(max_items=10)) == proposal
    assert_malformed(encode(proposal), "array of 10 items", Limits(max_items=9))


@pytest.mark.parametrize("tag", [0, 13, 19, 25, 99, 2**32, 2**63 - 1])
def test_unknown_message_types(tag: int) -> None:
    assert_malformed(raw([tag, 1, 2, DIGEST, 3]), "unknown message type", statement=True)
    assert_malformed(raw([tag, prepare_body(), SIG]), "unknown message type")


@pytest.mark.parametrize(
    "carrier",
    [
        sign(PREPARE),
        m.Batch(batch_time=0, requests=()),
        m.Proposal(sign(m.PrePrepare(0, 1, DIGEST, 0)), m.NULL_BATCH),
        m.PreparedCert(sign(m.PrePrepare(0, 1, DIGEST, 0)), ()),
        m.MacReply(encode(REPLY), MAC, REPLY),
    ],
    ids=lambda c: type(c).__name__,
)
def test_carrier_where_a_statement_belongs(carrier: object) -> None:
    assert_malformed(raw_signed(encode(carrier)), "not allowed here")
    assert_malformed(encode(carrier), "not allowed here", statement=True)


@pytest.mark.parametrize(
    "message",
    [
        PREPARE,
        m.Request(op=b"x", timestamp=1, client=1),
        m.Batch(batch_time=0, requests=()),
        m.PreparedCert(sign(m.PrePrepare(0, 1, DIGEST, 0)), ()),
    ],
    ids=lambda c: type(c).__name__,
)
def test_only_signed_and_proposal_at_top_level(message: object) -> None:
    assert_malformed(encode(message), "not allowed here")


def test_nested_message_fields_need_their_own_tag() -> None:
    pre_prepare = sign(m.PrePrepare(0, 1, DIGEST, 0))
    good = raw([m.Proposal.TAG, [20, pre_prepare.body, SIG], [21, 0, []]])
    assert isinstance(decode_untrusted(good), m.Proposal)
    wrong_batch = raw(
        [m.Proposal.TAG, [20, pre_prepare.body, SIG], [23, [20, pre_prepare.body, SIG], []]]
    )
    assert_malformed(wrong_batch, "PreparedCert not allowed here")
    wrong_signed = raw([m.Proposal.TAG, [21, 0, []], [21, 0, []]])
    assert_malformed(wrong_signed, "Batch not allowed here")


@pytest.mark.parametrize(
    "data",
    [
        raw([3, 1, 2, DIGEST]),  # a field missing
        raw([3, 1, 2, DIGEST, 3, 4]),  # a field too many
        raw([]),  # empty array
        raw([20, prepare_body()]),  # Signed without its signature
    ],
    ids=["missing", "extra", "empty", "signed-short"],
)
def test_wrong_field_counts(data: bytes) -> None:
    with pytest.raises(MalformedMessage):
        decode_untrusted(data)
    with pytest.raises(MalformedMessage):
        decode_statement_untrusted(data)


@pytest.mark.parametrize(
    "data",
    [
        b"\x9f\x03\x01\x02\x58\x20" + DIGEST + b"\x03\xff",  # indefinite array
        b"\x85\x03\x01\x02\x5f\x58\x20" + DIGEST + b"\xff\x03",  # indefinite byte string
        b"\x88\x09\x00\x00\x00\x9f\xff\x80\x00\x00",  # indefinite tuple in a Status
    ],
    ids=["array", "bytes", "tuple"],
)
def test_indefinite_lengths_are_rejected(data: bytes) -> None:
    assert_malformed(data, "indefinite", statement=True)


@pytest.mark.parametrize("info", [28, 29, 30])
def test_reserved_additional_information(info: int) -> None:
    assert_malformed(b"\x85\x03" + bytes([info]) + prepare_body()[3:], "reserved", statement=True)


@pytest.mark.parametrize(
    "head",
    [
        b"\x18\x05",  # 5 in one extra byte
        b"\x19\x00\x05",  # 5 in two
        b"\x19\x00\xff",  # 255 in two
        b"\x1a\x00\x00\xff\xff",  # 65535 in four
        b"\x1b\x00\x00\x00\x00\xff\xff\xff\xff",  # 2**32-1 in eight
    ],
    ids=["1", "2", "2b", "4", "8"],
)
def test_non_canonical_integer_heads(head: bytes) -> None:
    body = b"\x85\x03" + head + prepare_body()[3:]
    assert_malformed(body, "non-canonical", statement=True)
    assert_malformed(raw_signed(body), "non-canonical")


@pytest.mark.parametrize(
    "data",
    [
        b"\x98\x05\x03\x01\x02\x58\x20" + DIGEST + b"\x03",  # array count in an extra byte
        b"\x85\x03\x01\x02\x59\x00\x20" + DIGEST + b"\x03",  # digest length in two bytes
        b"\x98\x05" + b"\x03\x01\x02\x58\x20" + DIGEST + b"\x03",
    ],
    ids=["array", "bytes", "array-again"],
)
def test_non_canonical_length_heads(data: bytes) -> None:
    assert_malformed(data, "non-canonical", statement=True)


def test_non_canonical_tag_number_head() -> None:
    assert_malformed(b"\x85\x18\x03" + prepare_body()[2:], "non-canonical", statement=True)


def test_text_strings_are_checked() -> None:
    # No message has a TEXT field yet; the reader is checked on its own.
    limits = Limits(max_text_chars=3)
    assert codec._read_text(raw("héé"), 0, 1, limits) == ("héé", 6)
    with pytest.raises(MalformedMessage, match="characters"):
        codec._read_text(raw("four"), 0, 1, limits)
    with pytest.raises(MalformedMessage, match="UTF-8"):
        codec._read_text(b"\x62\xc3\x28", 0, 1, limits)
    with pytest.raises(MalformedMessage, match="truncated"):
        codec._read_text(b"\x63ab", 0, 1, limits)


def test_bytes_like_input_is_accepted() -> None:
    data = encode(sign(PREPARE))
    assert decode_untrusted(bytearray(data)) == decode_untrusted(memoryview(data)) == sign(PREPARE)


@pytest.mark.parametrize("wrong", [10**9, "text", None])
def test_non_bytes_input_is_a_callers_bug(wrong: object) -> None:
    # An int must not be taken as a size to allocate (bytes(10**9)).
    with pytest.raises(TypeError):
        decode_untrusted(wrong)  # type: ignore[arg-type]


# --------------------------------------------------------------------------
# MacReply: a reply authenticated by a MAC (bft/auth.py)
# --------------------------------------------------------------------------


def raw_mac_reply(body: object, mac: object = MAC) -> bytes:
    return raw([m.MacReply.TAG, body, mac])


def test_mac_reply_round_trip_keeps_the_body_as_received() -> None:
    data = raw_mac_reply(encode(REPLY))
    decoded = decode_untrusted(data)
    assert isinstance(decoded, m.MacReply)
    assert decoded.statement == REPLY
    assert decoded.body == encode(REPLY) and decoded.mac == MAC
    assert decoded.checked is not None and decoded.checked[0] is decoded.body
    assert decoded.checked[1] is decoded.statement
    assert encode(decoded) == data


@pytest.mark.parametrize("size", [0, 31, 33, 64])
def test_mac_of_wrong_length(size: int) -> None:
    assert_malformed(raw_mac_reply(encode(REPLY), bytes(size)), "mac must be exactly 32")


@pytest.mark.parametrize(
    "body",
    [PREPARE, m.Request(op=b"x", timestamp=1, client=1), m.Checkpoint(1, DIGEST, 0)],
    ids=lambda c: type(c).__name__,
)
def test_mac_reply_body_must_be_a_reply(body: m.Statement) -> None:
    # only a REPLY may be MAC'd: every other statement must stay signed
    assert_malformed(raw_mac_reply(encode(body)), "not allowed here")


@pytest.mark.parametrize(
    "data",
    [
        raw_mac_reply(encode(REPLY) + b"\x00"),  # trailing bytes inside the body
        raw_mac_reply(encode(REPLY)[:-1]),  # truncated body
        raw_mac_reply(raw([m.Reply.TAG, 1, 7, 2, 3, DIGEST])),  # a reply without its result
        raw_mac_reply(raw([m.Reply.TAG, 1, 7, 2, 3, b"ok"])),  # without the request digest
        raw_mac_reply(raw([m.Reply.TAG, 1, 7, 2, 3, DIGEST[1:], b"ok"])),  # digest of 31
        raw_mac_reply(raw([m.Reply.TAG, -1, 7, 2, 3, DIGEST, b"ok"])),  # negative view
        raw_mac_reply(encode(sign(REPLY))),  # a signed reply inside the MAC envelope
        raw([m.MacReply.TAG, encode(REPLY)]),  # no MAC
        raw([m.MacReply.TAG, encode(REPLY), MAC, MAC]),  # a field too many
        raw_mac_reply("text", MAC),  # body not a byte string
        raw_mac_reply(encode(REPLY), "m" * 32),  # MAC not a byte string
    ],
    ids=["trailing", "truncated", "short-reply", "no-digest", "short-digest", "negative",
         "signed-inside", "no-mac",
         "extra-field", "text-body", "text-mac"],
)
def test_malformed_mac_replies_are_rejected(data: bytes) -> None:
    assert_malformed(data)


def test_mac_reply_body_counts_toward_depth() -> None:
    data = raw_mac_reply(encode(REPLY))
    assert isinstance(decode_untrusted(data, Limits(max_depth=2)), m.MacReply)
    assert_malformed(data, "nesting deeper", Limits(max_depth=1))


def test_mac_reply_result_obeys_the_op_limit() -> None:
    big = m.Reply(view=1, timestamp=7, client=2, replica=3, request=DIGEST, result=b"r" * 101)
    assert isinstance(decode_untrusted(raw_mac_reply(encode(big)), Limits(max_op_bytes=101)),
                      m.MacReply)
    assert_malformed(raw_mac_reply(encode(big)), "over the limit", Limits(max_op_bytes=100))


def test_mac_reply_is_not_a_statement() -> None:
    assert_malformed(raw_mac_reply(encode(REPLY)), "MacReply not allowed here", statement=True)
    assert_malformed(raw_signed(raw_mac_reply(encode(REPLY))), "MacReply not allowed here")


@given(s.mac_replies())
def test_every_decoded_mac_reply_is_canonical(message: m.MacReply) -> None:
    """The `checked` pairing the codec sets is sound: the statement encodes to the body."""
    decoded = decode_untrusted(encode(message))
    assert isinstance(decoded, m.MacReply)
    assert decoded.checked == (decoded.body, decoded.statement)
    assert encode(decoded.statement) == decoded.body
