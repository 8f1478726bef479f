"""bft.cbor, the one strict CBOR reader, and the decoders that use it (issue 20, item 5).

The codec's reference decoder, telemetry's cursor, the KV app's ops/results/snapshots and
the client's reply peek all read item heads through `bft.cbor`. These tests show that
moving them there changed nothing they accept or reject:

* the app's values against cbor2 (what `bft.app` used before: `cbor2.loads` refusing tags,
  then only lists/ints/bytes/str/None, then "re-encodes canonically to the same bytes");
* telemetry payloads against a reference head rule: a head is accepted exactly when it is
  the encoder's shortest head (`codec._head`) of the value it carries, of the major type
  expected (the rule telemetry's own `_Reader._head` applied before);
* the codec's own differential tests stay in tests/test_codec_fastpath.py.
"""

from __future__ import annotations

import random
from typing import Any

import cbor2
import pytest
from hypothesis import example, given, settings
from hypothesis import strategies as st

from bft import app, cbor, codec
from bft import telemetry as t
from bft.client import peek_reply_untrusted
from bft.crypto import Ed25519Keys
from bft.errors import MalformedMessage
from bft.messages import MacReply, Reply

SEED = 20
KEYS = Ed25519Keys(4, 2, seed=7, admin=True)

# --------------------------------------------------------------------------
# read_head: the rule, shown on planted heads
# --------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("data", "major", "match"),
    [
        (b"", cbor.MAJOR_UINT, "truncated"),
        (b"\x18\x05", cbor.MAJOR_UINT, "non-canonical"),  # 5 fits in the initial byte
        (b"\x19\x00\xff", cbor.MAJOR_UINT, "non-canonical"),
        (b"\x1a\x00\x00\xff\xff", cbor.MAJOR_UINT, "non-canonical"),
        (b"\x1b\x00\x00\x00\x00\xff\xff\xff\xff", cbor.MAJOR_UINT, "non-canonical"),
        (b"\x19\x01", cbor.MAJOR_UINT, "truncated item head"),
        (b"\x5f\x41a\xff", cbor.MAJOR_BYTES, "indefinite"),
        (b"\x9f\xff", cbor.MAJOR_ARRAY, "indefinite"),
        (b"\x1c", cbor.MAJOR_UINT, "reserved"),
        (b"\xc1\x00", cbor.MAJOR_UINT, "CBOR tag"),
        (b"\xf9\x3c\x00", cbor.MAJOR_UINT, "float"),
        (b"\xa0", cbor.MAJOR_ARRAY, "a map"),
        (b"\x20", cbor.MAJOR_UINT, "negative"),
    ],
)
def test_read_head_rejects(data: bytes, major: int, match: str) -> None:
    with pytest.raises(MalformedMessage, match=match):
        cbor.read_head(data, 0, major, "the item")


def _head_by_encoder(data: bytes, pos: int, major: int) -> tuple[int, int] | None:
    """The reference rule: (argument, end) when the bytes at `pos` are exactly the shortest
    head that the encoder writes for some argument of major type `major`, else None."""
    if pos >= len(data) or data[pos] >> 5 != major:
        return None
    width = {24: 1, 25: 2, 26: 4, 27: 8}.get(data[pos] & 31, 0 if data[pos] & 31 < 24 else -1)
    end = pos + 1 + width
    if width < 0 or end > len(data):
        return None
    arg = data[pos] & 31 if width == 0 else int.from_bytes(data[pos + 1 : end], "big")
    return (arg, end) if codec._head(major << 5, arg) == data[pos:end] else None


@settings(max_examples=400)
@given(st.binary(min_size=0, max_size=10), st.integers(0, 7))
@example(b"\x18\x17", 0)
@example(b"\x18\x18", 0)
@example(b"\x1b\x00\x00\x00\x01\x00\x00\x00\x00", 0)
def test_read_head_accepts_exactly_the_encoders_heads(data: bytes, major: int) -> None:
    expected = _head_by_encoder(data, 0, major)
    try:
        got = cbor.read_head(data, 0, major, "the item")
    except MalformedMessage:
        got = None
    assert got == expected


# --------------------------------------------------------------------------
# The app: ops, results and snapshots read exactly what cbor2 read before
# --------------------------------------------------------------------------


class _NoTags(dict):  # type: ignore[type-arg]
    def __missing__(self, tag: object) -> Any:
        return _reject_tag


def _reject_tag(*_args: object) -> Any:
    raise ValueError("tag")


def _plain(obj: Any) -> bool:
    if obj is None or type(obj) in (int, bytes, str):
        return True
    return type(obj) is list and all(_plain(x) for x in obj)


def cbor2_loads_strict(data: bytes, max_depth: int) -> Any:
    """How bft.app read CBOR before bft.cbor (cbor2, tags refused, plain values only, and
    the bytes must be the canonical encoding of what they decode to)."""
    try:
        obj = cbor2.loads(data, max_depth=max_depth, allow_indefinite=False,
                          semantic_decoders=_NoTags(), tag_hook=_reject_tag)
    except (cbor2.CBORError, ValueError, TypeError, OverflowError, RecursionError) as exc:
        raise MalformedMessage(f"undecodable: {exc}") from None
    if not _plain(obj) or cbor2.dumps(obj, canonical=True) != data:
        raise MalformedMessage("not plain canonical CBOR")
    return obj


def _outcome(f: Any, *args: Any, why: bool = False) -> Any:
    """("value", what f returns) or ("error", its type, and with `why` its message)."""
    try:
        return ("value", f(*args))
    except (MalformedMessage, ValueError) as exc:
        return ("error", type(exc).__name__, str(exc) if why else None)


def _mutants(data: bytes, rng: random.Random, count: int) -> list[bytes]:
    """`count` variants of `data`: bytes replaced, inserted or deleted, cut short."""
    out = []
    for _ in range(count):
        d = bytearray(data)
        for _ in range(rng.randrange(1, 4)):
            op = rng.randrange(4) if d else 1
            if op == 0:
                d[rng.randrange(len(d))] = rng.randrange(256)
            elif op == 1:
                d.insert(rng.randrange(len(d) + 1), rng.randrange(256))
            elif op == 2:
                del d[rng.randrange(len(d))]
            else:
                d = d[: rng.randrange(len(d) + 1)]
        out.append(bytes(d))
    return out


def _widen(data: bytes, rng: random.Random) -> bytes:
    """`data` with one head of one byte written in two (non-canonical), if it has one."""
    spots = [i for i, b in enumerate(data) if b >> 5 <= 4 and b & 31 < 24]
    if not spots:
        return data
    i = rng.choice(spots)
    return data[:i] + bytes(((data[i] & 0xE0) | 24, data[i] & 31)) + data[i + 1 :]


def _app_outcomes(data: bytes, loads: Any) -> list[Any]:
    """What the app's decoders make of `data` when they read CBOR with `loads`."""
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(app, "loads_untrusted", loads)
        store = app.KVStore()
        return [
            _outcome(loads, data, 3),
            _outcome(app.decode_op_untrusted, data, why=True),  # the reason a replica reports
            _outcome(app._decode_result, data),
            _outcome(store.restore, data),
            store.digest(),
        ]


def _containers(inner: st.SearchStrategy[Any]) -> st.SearchStrategy[Any]:
    return st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=3), inner, max_size=2)


plain_values = st.recursive(
    st.none() | st.integers(-(2**64), 2**64 - 1) | st.binary(max_size=30) | st.text(max_size=10)
    | st.booleans() | st.floats(allow_nan=False),
    _containers,
    max_leaves=12,
)
APP_SEEDS = [
    app.Ops.put("k", b"v", fence=("L", 65537)), app.Ops.get("key"), app.Ops.delete("k"),
    app.Ops.cas("k", None, b"new"), app.Ops.lock("L", 100), app.Ops.unlock("L", 7),
    app.Result("granted", token=65537, expiry_us=99).encode(), app.Result("ok").encode(),
    app.Result("cas_failed", value=None).encode(), app.Result("error", reason="x").encode(),
    cbor2.dumps(["kv1", [["a", b"1"], ["b", b""]], [["L", 65537, 2, 500]]], canonical=True),
    cbor2.dumps(["é€😀", -1, -24, -25, -256, -(2**63), 2**64 - 1, [[[[]]]]], canonical=True),
]


@settings(max_examples=150, deadline=None)
@given(value=plain_values, canonical=st.booleans(), seed=st.integers(0, 2**32))
def test_app_reads_what_it_read_before(value: Any, canonical: bool, seed: int) -> None:
    """Property: on CBOR of random values (including floats, booleans and maps), on the app's
    own ops, results and snapshots, and on mutations of all of these (bytes changed, heads
    widened to non-shortest forms), every app decoder returns or rejects exactly as with
    cbor2."""
    print(f"seed={seed}")
    rng = random.Random(seed)
    try:
        encoded = cbor2.dumps(value, canonical=canonical)
    except (ValueError, OverflowError):
        encoded = b""
    known = rng.choice(APP_SEEDS)
    for data in [encoded, _widen(encoded, rng), *_mutants(encoded, rng, 4), _widen(known, rng),
                 *_mutants(known, rng, 8),
                 bytes(rng.randrange(256) for _ in range(rng.randrange(12)))]:
        before = _app_outcomes(data, cbor2_loads_strict)
        after = _app_outcomes(data, cbor.loads_untrusted)
        assert after == before, data.hex()


def test_app_differential_has_teeth() -> None:
    """A reader that lets a non-shortest head through is told apart from cbor2's rule."""
    def lax(data: bytes, max_depth: int) -> Any:
        return cbor.loads_untrusted(data.replace(b"\x18\x05", b"\x05"), max_depth)

    data = b"\x83\x64lock\x61L\x18\x05"  # ["lock", "L", 5] with 5 written in two bytes
    assert _app_outcomes(data, lax) != _app_outcomes(data, cbor2_loads_strict)
    assert _app_outcomes(data, cbor.loads_untrusted) == _app_outcomes(data, cbor2_loads_strict)


def test_loads_untrusted_depth_is_cbor2s() -> None:
    """The value is at depth 0, its items at 1, ...: `[[1]]` needs max_depth 2, as in cbor2."""
    for max_depth in range(4):
        for value in ([], [[]], [[1]], [[[]]], [[[None]]], 7):
            data = cbor2.dumps(value, canonical=True)
            assert _outcome(cbor.loads_untrusted, data, max_depth) == _outcome(
                cbor2_loads_strict, data, max_depth), (value, max_depth)


# --------------------------------------------------------------------------
# Telemetry: payloads read exactly as under the reference head rule
# --------------------------------------------------------------------------


def _reference_head(self: Any, major: int, what: str) -> int:
    found = _head_by_encoder(self.data, self.pos, major)
    if found is None:
        raise MalformedMessage(f"at byte {self.pos}: not a shortest head of {what}")
    self.pos = found[1]
    return found[0]


REPLICA, ADMIN = KEYS.signer("replica", 1), KEYS.signer("admin", 0)
TELEMETRY_SEEDS = [
    (t.StatusSnapshot(1, 5, 1000, 2, 2, 40, 32, 32, 288, 3, False, ((0, 9500),), 1000, 900,
                      (("malformed", 2),), 3, "", False), REPLICA),
    (t.TelemetryEvent(1, 7, "view_change", (("view", 300), ("who", "x"), ("neg", -5000),
                                             ("b", True))), REPLICA),
    (t.CommitBatch(1, 8, (t.CommitInfo(5, 1, 2, "put k", 123456, b"\x01" * 32),), 0, 1),
     REPLICA),
    (t.EvidenceReport(1, 9, b"\x85" * 40, b"s" * 64, b"\x86" * 40, b"t" * 64), REPLICA),
    (t.ControlCommand(b"\xc1" * 32, 1, 77, t.SetBehaviour("lie", (("rate", 5),))), ADMIN),
    (t.ControlCommand(b"\xc1" * 32, 1, 2**40, t.Cut((1, 2, 300))), ADMIN),
    (t.ControlCommand(b"\xc1" * 32, 1, 79, t.Pause(300)), ADMIN),
]


def _telemetry_outcome(data: bytes) -> Any:
    try:
        opened = t._open_untrusted(data)
    except MalformedMessage:
        return "rejected"
    return opened.identity, opened.message


@settings(max_examples=120, deadline=None)
@given(seed=st.integers(0, 2**32))
def test_telemetry_reads_what_it_read_before(seed: int) -> None:
    """Property: payloads mutated in the envelope or inside the signed body (re-wrapped so
    the body is parsed), with heads widened to non-shortest forms, and random bytes after
    the magic: telemetry's decoder returns or rejects each as under the reference rule."""
    print(f"seed={seed}")
    rng = random.Random(seed)
    msg, signer = rng.choice(TELEMETRY_SEEDS)
    payload = t.encode_signed(msg, signer)
    magic, envelope = payload[:4], cbor2.loads(payload[4:])
    inputs = [payload, magic + _widen(payload[4:], rng)]
    inputs += [magic + m for m in _mutants(payload[4:], rng, 6)]
    for body in [_widen(envelope[2], rng), *_mutants(envelope[2], rng, 6)]:
        inputs.append(magic + cbor2.dumps([*envelope[:2], body, envelope[3]], canonical=True))
    inputs.append(magic + bytes(rng.randrange(256) for _ in range(rng.randrange(20))))
    for data in inputs:
        after = _telemetry_outcome(data)
        with pytest.MonkeyPatch.context() as mp:
            mp.setattr(t._Reader, "_head", _reference_head)
            before = _telemetry_outcome(data)
        assert after == before, data.hex()


def _lax_head(self: Any, major: int, what: str) -> int:
    """A planted fault: a head reader that takes a two-byte head for a one-byte argument."""
    data, pos = self.data, self.pos
    if data[pos] >> 5 == major and data[pos] & 31 == 24 and data[pos + 1] < 24:
        self.pos = pos + 2
        return data[pos + 1]
    return _reference_head(self, major, what)


def test_telemetry_rejects_widened_heads_and_the_differential_has_teeth(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The body's array head, its message type, and the envelope's signer kind, each written
    in two bytes, are rejected; a lax head reader would take them, and the comparison above
    would tell it apart."""
    msg, signer = TELEMETRY_SEEDS[1]
    payload = t.encode_signed(msg, signer)
    magic, envelope = payload[:4], cbor2.loads(payload[4:])
    body = envelope[2]
    assert body[:2] == bytes((0x85, msg.TAG))  # [TAG, node, seq_no, kind, fields]
    wide = [magic + cbor2.dumps([*envelope[:2], w, envelope[3]], canonical=True)
            for w in (b"\x98\x05" + body[1:], body[:1] + b"\x18" + body[1:])]
    assert payload[4:6] == b"\x84\x00"  # [signer kind 0, ...
    wide.append(payload[:5] + b"\x18\x00" + payload[6:])
    for data in wide:
        with pytest.raises(MalformedMessage, match="non-canonical"):
            t._open_untrusted(data)
        with monkeypatch.context() as mp:
            mp.setattr(t._Reader, "_head", _lax_head)
            assert _telemetry_outcome(data) == (("replica", 1), msg)


# --------------------------------------------------------------------------
# The client's reply peek
# --------------------------------------------------------------------------


def test_peek_reads_heads_with_the_strict_reader() -> None:
    """The peek claims what a well-formed reply says, and a reply whose claimed fields are
    written in a non-shortest head is no well-formed reply (the decoder would reject it)."""
    reply = Reply(view=0, timestamp=5, client=3, replica=1, request=b"\x07" * 32, result=b"r")
    body = codec.encode(reply)
    good = codec.encode(MacReply(body=body, mac=b"\x02" * 32, statement=reply))
    assert peek_reply_untrusted(good) == (3, 5, 1, b"\x07" * 32)
    assert body[:3] == b"\x88\x05\x00"  # [TAG, view=0, timestamp=5, ... (8 items)
    wide_body = body[:3] + b"\x18\x05" + body[4:]  # timestamp 5 written in two bytes
    wide = codec.encode(MacReply(body=wide_body, mac=b"\x02" * 32, statement=reply))
    with pytest.raises(MalformedMessage, match="non-canonical"):
        codec.decode_untrusted(wide)
    assert peek_reply_untrusted(wide) is None
