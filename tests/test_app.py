"""The replicated application: KV store, lock service, fencing tokens, determinism."""

from __future__ import annotations

import hashlib

import cbor2
import pytest
from hypothesis import given, note
from hypothesis import strategies as st

from bft.app import (
    TOKEN_INDEX_SPAN,
    ExecContext,
    Fence,
    KVLimits,
    KVStore,
    Lock,
    Put,
    Result,
    StateMachine,
    decode_op_untrusted,
    decode_result,
    decode_result_untrusted,
    encode_op,
    ops,
)
from bft.errors import MalformedMessage

# --------------------------------------------------------------------------
# helpers
# --------------------------------------------------------------------------


def ctx(seq: int, index: int = 0, time_us: int = 0, client: int = 1,
        skew_us: int = 0) -> ExecContext:
    return ExecContext(seq=seq, index=index, batch_time_us=time_us, client=client, timestamp=seq,
                       max_clock_skew_us=skew_us)


def run(store: KVStore, op: bytes, context: ExecContext) -> Result:
    return decode_result(store.execute(op, context))


KEYS = st.sampled_from(["a", "b", "c", "ключ"])
LOCKS = st.sampled_from(["L", "M"])
VALUES = st.binary(max_size=6)
CLIENTS = st.integers(min_value=1, max_value=3)


class Driver:
    """Executes drawn ops in agreed order: seq grows per batch, index within it, time grows."""

    def __init__(self, store: KVStore, skew_us: int = 0) -> None:
        self.store = store
        self.skew_us = skew_us
        self.seq = 1
        self.index = 0
        self.time_us = 1_000_000
        self.granted: dict[str, list[int]] = {}

    def next_ctx(self, data: st.DataObject) -> ExecContext:
        if data.draw(st.booleans(), label="new batch"):
            self.seq += data.draw(st.integers(1, 3), label="seq step")
            self.index = 0
            self.time_us += data.draw(st.integers(0, 3_000_000), label="time step us")
        else:
            self.index += 1
        return ctx(self.seq, self.index, self.time_us, data.draw(CLIENTS, label="client"),
                   self.skew_us)

    def draw_token(self, data: st.DataObject) -> int:
        known = [t for tokens in self.granted.values() for t in tokens]
        if known and data.draw(st.booleans(), label="known token"):
            return data.draw(st.sampled_from(known), label="token")
        return data.draw(st.integers(0, 2**40), label="token")

    def draw_fence(self, data: st.DataObject) -> Fence | None:
        if data.draw(st.booleans(), label="fenced"):
            return Fence(data.draw(LOCKS, label="fence lock"), self.draw_token(data))
        return None

    def draw_op(self, data: st.DataObject) -> bytes:
        kind = data.draw(st.sampled_from(["put", "get", "delete", "cas", "lock", "unlock"]))
        if kind == "put":
            return ops.put(data.draw(KEYS), data.draw(VALUES), fence=self.draw_fence(data))
        if kind == "get":
            return ops.get(data.draw(KEYS))
        if kind == "delete":
            return ops.delete(data.draw(KEYS), fence=self.draw_fence(data))
        if kind == "cas":
            expected = data.draw(st.none() | VALUES)
            return ops.cas(
                data.draw(KEYS), expected, data.draw(VALUES), fence=self.draw_fence(data)
            )
        if kind == "lock":
            return ops.lock(data.draw(LOCKS), data.draw(st.integers(1, 5000)))
        return ops.unlock(data.draw(LOCKS), self.draw_token(data))

    def step(self, data: st.DataObject) -> tuple[bytes, ExecContext, Result]:
        op = self.draw_op(data)
        context = self.next_ctx(data)
        result = run(self.store, op, context)
        note(f"{decode_op_untrusted(op)} at {context} -> {result}")
        if result.kind == "granted":
            name = decode_op_untrusted(op).name  # type: ignore[union-attr]
            assert result.token is not None
            self.granted.setdefault(name, []).append(result.token)
        return op, context, result


# --------------------------------------------------------------------------
# basic semantics
# --------------------------------------------------------------------------


def test_kvstore_is_a_state_machine() -> None:
    assert isinstance(KVStore(), StateMachine)


def test_put_get_delete() -> None:
    s = KVStore()
    assert run(s, ops.get("k"), ctx(1)).kind == "not_found"
    assert run(s, ops.put("k", b"v1"), ctx(2)) == Result("ok")
    assert run(s, ops.get("k"), ctx(3)) == Result("value", value=b"v1")
    assert run(s, ops.put("k", b"v2"), ctx(4)).kind == "ok"
    assert run(s, ops.get("k"), ctx(5)).value == b"v2"
    assert run(s, ops.delete("k"), ctx(6)).kind == "ok"
    assert run(s, ops.delete("k"), ctx(7)).kind == "not_found"
    assert s.value("k") is None


def test_cas() -> None:
    s = KVStore()
    assert run(s, ops.cas("k", None, b"a"), ctx(1)).kind == "ok"
    failed = run(s, ops.cas("k", None, b"b"), ctx(2))
    assert failed == Result("cas_failed", value=b"a")
    assert run(s, ops.cas("k", b"x", b"b"), ctx(3)) == Result("cas_failed", value=b"a")
    assert run(s, ops.cas("k", b"a", b"b"), ctx(4)).kind == "ok"
    assert s.value("k") == b"b"
    assert run(s, ops.cas("absent", b"a", b"b"), ctx(5)) == Result("cas_failed", value=None)


def test_lock_token_is_seq_times_65536_plus_index() -> None:
    s = KVStore()
    r = run(s, ops.lock("L", 250), ctx(7, index=3, time_us=1_000))
    assert r == Result("granted", token=7 * TOKEN_INDEX_SPAN + 3, expiry_us=1_000 + 250_000)
    assert s.lock_info("L") is not None


def test_lock_held_by_other_live_lease_reports_holder_and_expiry() -> None:
    s = KVStore()
    run(s, ops.lock("L", 100), ctx(1, time_us=0, client=1))
    r = run(s, ops.lock("L", 100), ctx(2, time_us=99_999, client=2))
    assert r == Result("locked", holder=1, expiry_us=100_000)
    # Past the expiry (agreed time, max_clock_skew 0) another client gets the lock:
    # PROTOCOL.md "Leases and agreed time", t' - skew > t + d + skew.
    r = run(s, ops.lock("L", 100), ctx(3, time_us=100_000, client=2))
    assert r == Result("locked", holder=1, expiry_us=100_000)
    r = run(s, ops.lock("L", 100), ctx(4, time_us=100_001, client=2))
    assert r == Result("granted", token=4 * TOKEN_INDEX_SPAN, expiry_us=200_001)


def test_holder_renews_live_lease_with_same_token() -> None:
    s = KVStore()
    first = run(s, ops.lock("L", 100), ctx(1, time_us=0))
    renewed = run(s, ops.lock("L", 100), ctx(2, time_us=50_000))
    assert renewed == Result("granted", token=first.token, expiry_us=150_000)
    # After expiry the same client gets a new, larger token.
    again = run(s, ops.lock("L", 100), ctx(3, time_us=150_000))
    assert again.token is not None and first.token is not None and again.token > first.token


def test_a_lease_lasts_its_full_term_by_every_correct_clock() -> None:
    """PROTOCOL.md "Leases and agreed time": a lease granted at t for d seconds goes to
    someone else only at an agreed time t' with t' - max_clock_skew > t + d + max_clock_skew
    (issue 18: leases ended early by up to 2 x max_clock_skew).

    Failed before the fix: with max_clock_skew 1 s, a 1.9 s lease granted at 9.0 s went
    to another client at 11.0 s, when a correct clock could still read 10.0 s.
    """
    s = KVStore()
    skew = 1_000_000
    first = run(s, ops.lock("L", 1900), ctx(1, time_us=9_000_000, client=1, skew_us=skew))
    assert first == Result("granted", token=TOKEN_INDEX_SPAN, expiry_us=10_900_000)
    for seq, time_us in ((2, 11_000_000), (3, 12_900_000)):
        r = run(s, ops.lock("L", 1000), ctx(seq, time_us=time_us, client=2, skew_us=skew))
        assert r == Result("locked", holder=1, expiry_us=10_900_000), time_us
    r = run(s, ops.lock("L", 1000), ctx(4, time_us=12_900_001, client=2, skew_us=skew))
    assert r == Result("granted", token=4 * TOKEN_INDEX_SPAN, expiry_us=13_900_001)


def test_the_holder_renews_and_sees_its_expiry_as_without_skew() -> None:
    """The skew margin protects the holder from others; the holder's own renewal and the
    expiry it is told stay as in agreed time alone."""
    s = KVStore()
    skew = 1_000_000
    first = run(s, ops.lock("L", 100), ctx(1, time_us=0, skew_us=skew))
    assert first.expiry_us == 100_000
    renewed = run(s, ops.lock("L", 100), ctx(2, time_us=50_000, skew_us=skew))
    assert renewed == Result("granted", token=first.token, expiry_us=150_000)
    again = run(s, ops.lock("L", 100), ctx(3, time_us=150_000, skew_us=skew))
    assert again == Result("granted", token=3 * TOKEN_INDEX_SPAN, expiry_us=250_000)


def test_a_full_lock_table_evicts_only_a_lease_over_by_every_correct_clock() -> None:
    """PROTOCOL.md "Leases and agreed time", for the eviction that makes room in a full lock
    table: evicting a lock ends its lease for its holder as surely as a new grant.

    Failed before the fix: the lease that expired at 1 ms was evicted at 1 ms, 2 x skew
    before every correct clock is past it.
    """
    s = KVStore(KVLimits(max_locks=1))
    skew = 1_000
    assert run(s, ops.lock("L", 1), ctx(1, time_us=0, skew_us=skew)).kind == "granted"
    for seq, time_us in ((2, 1_000), (3, 3_000)):
        r = run(s, ops.lock("M", 1), ctx(seq, time_us=time_us, client=2, skew_us=skew))
        assert r == Result("error", reason="too_many_locks"), time_us
    r = run(s, ops.lock("M", 1), ctx(4, time_us=3_001, client=2, skew_us=skew))
    assert r.kind == "granted"
    assert s.lock_info("L") is None


@given(st.data())
def test_no_correct_clock_sees_two_lease_holders(data: st.DataObject) -> None:
    """PROTOCOL.md "Leases and agreed time", for any ops and skew: while a lock's record
    names a holder, another client's lock is granted iff t' - skew > expiry + skew."""
    skew = data.draw(st.integers(0, 2_000_000), label="max_clock_skew_us")
    d = Driver(KVStore(), skew_us=skew)
    for _ in range(data.draw(st.integers(1, 40), label="ops")):
        before = {name: d.store.lock_info(name) for name in ("L", "M")}
        op, context, result = d.step(data)
        parsed = decode_op_untrusted(op)
        if not isinstance(parsed, Lock):
            continue
        info = before[parsed.name]
        if info is not None and info.holder != context.client:
            over = context.batch_time_us - skew > info.expiry_us + skew
            assert result.kind == ("granted" if over else "locked")


def test_unlock_rules() -> None:
    s = KVStore()
    t = run(s, ops.lock("L", 1000), ctx(1, client=1)).token
    assert t is not None
    assert run(s, ops.unlock("L", t + 1), ctx(2, client=1)).kind == "stale_token"
    assert run(s, ops.unlock("L", t), ctx(3, client=2)) == Result("error", reason="not_holder")
    assert run(s, ops.unlock("L", t), ctx(4, client=1)).kind == "ok"
    assert s.lock_info("L") is None
    assert run(s, ops.unlock("L", t), ctx(5, client=1)).kind == "not_found"
    # A released token no longer fences anything; the lock is free for anyone.
    assert run(s, ops.put("k", b"v", fence=("L", t)), ctx(6, client=1)).kind == "stale_token"
    assert run(s, ops.lock("L", 1000), ctx(7, client=2)).kind == "granted"


def test_fenced_write_with_current_token_is_applied_even_after_expiry() -> None:
    # Expiry alone does not invalidate a token: only a newer grant or a release does.
    s = KVStore()
    t = run(s, ops.lock("L", 1), ctx(1, time_us=0)).token
    assert t is not None
    assert run(s, ops.put("k", b"v", fence=("L", t)), ctx(2, time_us=10_000_000)).kind == "ok"
    assert run(s, ops.delete("k", fence=("L", t)), ctx(3, time_us=10_000_000)).kind == "ok"


def test_fence_on_unknown_lock_or_never_granted_token_is_stale() -> None:
    s = KVStore()
    assert run(s, ops.put("k", b"v", fence=("nolock", 5)), ctx(1)).kind == "stale_token"
    t = run(s, ops.lock("L", 1000), ctx(2)).token
    assert t is not None
    assert run(s, ops.put("k", b"v", fence=("L", t + 1)), ctx(3)).kind == "stale_token"
    assert run(s, ops.cas("k", None, b"v", fence=("L", t - 1)), ctx(4)).kind == "stale_token"
    assert s.value("k") is None


def test_ddia_fencing_story() -> None:
    """DDIA Figure 8-5: a paused lease holder's late write is rejected by its fencing token."""
    s = KVStore()
    ttl_ms = 10_000
    # Client 1 takes the lease at agreed time 1 s and gets token t1.
    g1 = run(s, ops.lock("file", ttl_ms), ctx(10, index=0, time_us=1_000_000, client=1))
    assert g1.kind == "granted" and g1.token is not None
    t1 = g1.token
    # Client 1 pauses (GC). Its lease expires in agreed time; client 2 asks for the lock.
    g2 = run(s, ops.lock("file", ttl_ms), ctx(20, index=2, time_us=12_000_000, client=2))
    assert g2.kind == "granted" and g2.token is not None
    t2 = g2.token
    assert t2 > t1
    # Client 2 writes with t2: accepted.
    assert run(s, ops.put("data", b"client 2", fence=("file", t2)), ctx(21, client=2)).kind == "ok"
    before = s.digest()
    # Client 1 wakes up, still believing it holds the lease, and writes with t1.
    late = run(s, ops.put("data", b"client 1", fence=("file", t1)), ctx(22, client=1))
    assert late.kind == "stale_token"
    assert s.value("data") == b"client 2"
    assert s.digest() == before
    # Its delete and cas are refused too.
    assert run(s, ops.delete("data", fence=("file", t1)), ctx(23, client=1)).kind == "stale_token"
    cas = ops.cas("data", b"client 2", b"client 1", fence=("file", t1))
    assert run(s, cas, ctx(24, client=1)).kind == "stale_token"
    assert s.value("data") == b"client 2"


# --------------------------------------------------------------------------
# bad ops
# --------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("op", "reason"),
    [
        (b"", "malformed"),
        (b"\xff", "malformed"),
        (cbor2.dumps({"put": 1}), "malformed"),
        (cbor2.dumps([]), "malformed"),
        (cbor2.dumps([1, "k"]), "malformed"),
        (cbor2.dumps(["frobnicate", "k"]), "unknown_op"),
        (cbor2.dumps(["get"]), "bad_arity"),
        (cbor2.dumps(["get", "k", "extra"]), "bad_arity"),
        (cbor2.dumps(["get", b"k"]), "bad_key"),
        (cbor2.dumps(["put", "k", "text value"]), "bad_value"),
        (cbor2.dumps(["put", "k", b"v", ["L"]]), "bad_fence"),
        (cbor2.dumps(["put", "k", b"v", None]), "bad_fence"),
        (cbor2.dumps(["put", "k", b"v", ["L", -1]]), "bad_fence_token"),
        (cbor2.dumps(["put", "k", b"v", ["L", True]]), "malformed"),  # no booleans
        (cbor2.dumps(["lock", "L", 0]), "bad_ttl"),
        (cbor2.dumps(["lock", "L", 1.5]), "malformed"),  # floats are not allowed at all
        (cbor2.dumps(["lock", "L", 2**64]), "malformed"),  # bignum tag
        (cbor2.dumps(["lock", "L", 10**12]), "bad_ttl"),
        (cbor2.dumps(["unlock", "L", -5]), "bad_token"),
        (cbor2.dumps(["get", "k"]) + b"\x00", "malformed"),  # trailing bytes
        (b"\x82\x63get\x78\x01k", "malformed"),  # non-canonical text length
        (b"\x9f\x63get\x61k\xff", "malformed"),  # indefinite-length array
        (b"\xd8\x20\x82\x63get\x61k", "malformed"),  # tagged
        (cbor2.dumps(["get", "x" * 257]), "key_too_long"),
        (cbor2.dumps(["put", "k", b"x" * (32 * 1024 + 1)]), "value_too_large"),
        (b"\x00" * (64 * 1024 + 1), "op_too_large"),
    ],
)
def test_bad_op_gives_error_and_changes_nothing(op: bytes, reason: str) -> None:
    s = KVStore()
    run(s, ops.put("k", b"v"), ctx(1))
    before = s.snapshot()
    r = run(s, op, ctx(2))
    assert r == Result("error", reason=reason)
    assert s.snapshot() == before
    assert s.statistics()["errors"] == {reason: 1}
    with pytest.raises(MalformedMessage):
        decode_op_untrusted(op)


@given(st.binary(max_size=64))
def test_random_bytes_never_raise(op: bytes) -> None:
    s = KVStore()
    before = s.digest()
    result = decode_result_untrusted(s.execute(op, ctx(1)))
    try:
        decode_op_untrusted(op)
    except MalformedMessage:
        assert result.kind == "error"
        assert s.digest() == before


_PLAIN = st.recursive(
    st.none()
    | st.booleans()
    | st.integers(-(2**70), 2**70)
    | st.floats(allow_nan=False)
    | st.binary(max_size=8)
    | st.text(max_size=8)
    | st.sampled_from(["put", "get", "delete", "cas", "lock", "unlock", "k", "L"]),
    lambda inner: (
        st.lists(inner, max_size=5) | st.dictionaries(st.text(max_size=3), inner, max_size=3)
    ),
    max_leaves=12,
)


@given(_PLAIN)
def test_random_cbor_values_never_raise(value: object) -> None:
    op = cbor2.dumps(value, canonical=True)
    s = KVStore()
    before = s.digest()
    result = decode_result(s.execute(op, ctx(1, time_us=5)))
    try:
        decode_op_untrusted(op)
    except MalformedMessage:
        assert result.kind == "error"
        assert s.digest() == before
    else:
        assert result.kind != "error"


def test_limits_on_state() -> None:
    limits = KVLimits(max_keys=2, max_state_bytes=10, max_locks=1)
    s = KVStore(limits)
    assert run(s, ops.put("a", b"1234"), ctx(1)).kind == "ok"  # 5 bytes
    assert run(s, ops.put("b", b"123456"), ctx(2)) == Result("error", reason="store_full")
    assert run(s, ops.put("b", b"123"), ctx(3)).kind == "ok"  # 9 bytes
    assert run(s, ops.put("c", b""), ctx(4)) == Result("error", reason="too_many_keys")
    assert run(s, ops.put("a", b"12345"), ctx(5)).kind == "ok"  # replacing: 10 bytes
    assert s.statistics()["state_bytes"] == 10
    assert run(s, ops.delete("b"), ctx(6)).kind == "ok"
    assert s.statistics()["state_bytes"] == 6
    # One lock slot: a second lock waits while the first lease lives, then evicts it.
    assert run(s, ops.lock("L", 1), ctx(7, time_us=0)).kind == "granted"
    assert run(s, ops.lock("M", 1), ctx(8, time_us=999)) == Result("error", reason="too_many_locks")
    # At the expiry instant the lease is not over yet (PROTOCOL.md "Leases and agreed time").
    assert run(s, ops.lock("M", 1), ctx(9, time_us=1000)).reason == "too_many_locks"
    assert run(s, ops.lock("M", 1), ctx(10, time_us=1001)).kind == "granted"
    assert s.lock_info("L") is None


def test_exec_context_validation() -> None:
    with pytest.raises(ValueError):
        ExecContext(seq=1, index=TOKEN_INDEX_SPAN, batch_time_us=0, client=1, timestamp=1)
    with pytest.raises(ValueError):
        ExecContext(seq=-1, index=0, batch_time_us=0, client=1, timestamp=1)
    with pytest.raises(ValueError):
        ExecContext(seq=2**62, index=0, batch_time_us=0, client=1, timestamp=1)
    with pytest.raises(ValueError):
        ExecContext(seq=True, index=0, batch_time_us=0, client=1, timestamp=1)  # type: ignore


def test_encode_op_rejects_wrong_types() -> None:
    with pytest.raises(TypeError):
        ops.put(b"k", b"v")  # type: ignore[arg-type]
    with pytest.raises(TypeError):
        ops.put("k", "v")  # type: ignore[arg-type]
    with pytest.raises(ValueError):
        ops.lock("L", -1)
    with pytest.raises(TypeError):
        encode_op("get k")  # type: ignore[arg-type]
    assert encode_op(Put("k", b"v", Fence("L", 3))) == ops.put("k", b"v", fence=("L", 3))
    assert decode_op_untrusted(ops.lock("L", 5)) == Lock("L", 5)


# --------------------------------------------------------------------------
# results
# --------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("result", "text"),
    [
        (Result("ok"), "ok"),
        (Result("not_found"), "not_found"),
        (Result("stale_token"), "stale_token"),
        (Result("value", value=b"v"), "value(b'v')"),
        (Result("granted", token=65537, expiry_us=5000), "granted(token=65537, expiry_us=5000)"),
        (Result("locked", holder=3, expiry_us=9), "locked(holder=3, expiry_us=9)"),
        (Result("cas_failed", value=None), "cas_failed(current=absent)"),
        (Result("cas_failed", value=b"x"), "cas_failed(current=b'x')"),
        (Result("error", reason="bad_key"), "error(bad_key)"),
    ],
)
def test_result_round_trip_and_readable_form(result: Result, text: str) -> None:
    assert decode_result_untrusted(result.encode()) == result
    assert str(result) == text


@pytest.mark.parametrize(
    "data",
    [
        b"",
        b"\xa0",
        cbor2.dumps(["ok", 1]),
        cbor2.dumps(["value"]),
        cbor2.dumps(["granted", 1]),
        cbor2.dumps(["locked", -1, 2]),
        cbor2.dumps(["error", "x" * 65]),
        cbor2.dumps(["what"]),
        cbor2.dumps(["value", "text"]),
    ],
)
def test_decode_result_rejects_garbage(data: bytes) -> None:
    with pytest.raises(MalformedMessage):
        decode_result_untrusted(data)


# --------------------------------------------------------------------------
# determinism: snapshot, restore, digest
# --------------------------------------------------------------------------


@given(st.dictionaries(st.text(max_size=6), st.binary(max_size=6), max_size=12), st.data())
def test_digest_independent_of_insertion_order(
    items: dict[str, bytes], data: st.DataObject
) -> None:
    order = data.draw(st.permutations(sorted(items)), label="insertion order")
    a, b = KVStore(), KVStore()
    for i, k in enumerate(sorted(items)):
        run(a, ops.put(k, items[k]), ctx(i + 1))
    for i, k in enumerate(order):
        run(b, ops.put(k, b"garbage first"), ctx(2 * i + 1))
        run(b, ops.put(k, items[k]), ctx(2 * i + 2))
    run(b, ops.put("\x00extra", b"x"), ctx(1000))
    run(b, ops.delete("\x00extra"), ctx(1001))
    assert a.digest() == b.digest()
    assert a.snapshot() == b.snapshot()
    assert a.digest() == hashlib.sha256(a.snapshot()).digest()
    assert len(a.digest()) == 32


@given(st.data())
def test_snapshot_restore_round_trip(data: st.DataObject) -> None:
    d = Driver(KVStore())
    for _ in range(data.draw(st.integers(0, 25), label="ops before")):
        d.step(data)
    copy = KVStore()
    copy.restore(d.store.snapshot())
    assert copy.digest() == d.store.digest()
    assert copy.snapshot() == d.store.snapshot()
    # The restored copy behaves identically from here on.
    for _ in range(data.draw(st.integers(0, 10), label="ops after")):
        op, context, result = d.step(data)
        assert run(copy, op, context) == result
    assert copy.digest() == d.store.digest()


@given(st.data())
def test_tokens_strictly_increase_per_lock(data: st.DataObject) -> None:
    d = Driver(KVStore())
    for _ in range(data.draw(st.integers(1, 40), label="ops")):
        d.step(data)
    for name, tokens in d.granted.items():
        # Equal tokens only come from a holder renewing its live lease; a new grant is larger.
        assert tokens == sorted(tokens), name
        distinct = sorted(set(tokens))
        assert [t for i, t in enumerate(tokens) if i == 0 or t != tokens[i - 1]] == distinct


@given(st.data())
def test_stale_token_write_is_rejected_and_changes_nothing(data: st.DataObject) -> None:
    d = Driver(KVStore())
    for _ in range(data.draw(st.integers(0, 20), label="ops")):
        d.step(data)
    name = data.draw(LOCKS, label="lock")
    info = d.store.lock_info(name)
    token = d.draw_token(data)
    if info is not None and token == info.token:
        token += 1
    before = d.store.snapshot()
    key = data.draw(KEYS, label="key")
    write = data.draw(
        st.sampled_from(
            [
                ops.put(key, b"late", fence=(name, token)),
                ops.delete(key, fence=(name, token)),
                ops.cas(key, d.store.value(key), b"late", fence=(name, token)),
            ]
        ),
        label="write",
    )
    assert run(d.store, write, ctx(d.seq + 1)).kind == "stale_token"
    assert d.store.snapshot() == before


@pytest.mark.parametrize(
    "snapshot",
    [
        b"",
        b"\x00",
        cbor2.dumps(["kv0", [], []]),
        cbor2.dumps(["kv1", [], []]) + b"\x00",
        cbor2.dumps(["kv1", [["b", b"1"], ["a", b"2"]], []]),  # unsorted
        cbor2.dumps(["kv1", [["a", b"1"], ["a", b"2"]], []]),  # duplicate
        cbor2.dumps(["kv1", [["a", "text"]], []]),
        cbor2.dumps(["kv1", [], [["L", 1, 2]]]),
        cbor2.dumps(["kv1", [], [["L", 1, 2, -3]]]),
        cbor2.dumps(["kv1", [["k" * 300, b""]], []]),
        cbor2.dumps(["kv1", [], [], []]),
    ],
)
def test_restore_rejects_bad_snapshots_and_keeps_state(snapshot: bytes) -> None:
    s = KVStore()
    run(s, ops.put("k", b"v"), ctx(1))
    run(s, ops.lock("L", 10), ctx(2))
    before = s.snapshot()
    with pytest.raises(ValueError):
        s.restore(snapshot)
    assert s.snapshot() == before


def test_restore_of_empty_state() -> None:
    s = KVStore()
    run(s, ops.put("k", b"v"), ctx(1))
    s.restore(KVStore().snapshot())
    assert s.digest() == KVStore().digest()
    assert s.statistics()["keys"] == 0 and s.statistics()["state_bytes"] == 0
