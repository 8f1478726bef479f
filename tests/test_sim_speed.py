"""The simulator's speed-ups (issue 19) give exactly what the plain code gives.

Each fast path or memo is compared with the reference it replaces: WAL records and
digest snapshots written without cbor2, the KV store's snapshot and results written
directly, memos of parsed ops, decoded results, batch encodings and digests, and the
verifier's identity cache. These are equivalence checks, not bug regressions: they
pass on the code before the speed-ups and fail if a fast path writes other bytes or a
memo answers for another input.

Randomness: one seeded Random per test, its seed printed.
"""

from __future__ import annotations

import hashlib
import random
from dataclasses import replace

import cbor2
import pytest

from adversary.sim import SimConfig, Simulation
from bft import app as kv
from bft import codec
from bft.app import KVLimits, KVStore, LockInfo, Result, decode_result_untrusted, ops
from bft.config import ClusterConfig
from bft.crypto import SimKeys, batch_digest
from bft.messages import Batch, Prepare, PrePrepare, Proposal, Request, Signed
from bft.replica import REC_PROPOSAL, REC_SENT, Replica

SEED = 19


def _rng() -> random.Random:
    print(f"seed={SEED}")
    return random.Random(SEED)


def _replica() -> Replica:
    keys = SimKeys(SEED, n_replicas=4, n_clients=4)
    return Replica(ClusterConfig.local(4, clients=4), 1, signer=keys.signer("replica", 1),
                   verifier=keys.verifier(), app=KVStore())


# Lengths on both sides of every CBOR head width change.
EDGE_LENGTHS = (0, 1, 23, 24, 255, 256, 65535, 65536)
EDGE_INTS = (0, 1, 23, 24, 255, 256, 65535, 65536, 2**32 - 1, 2**32, 2**63 - 1)


def test_wal_records_are_the_cbor2_encoding() -> None:
    """Replica._persist writes [kind, encode(message)] as cbor2.dumps did, for bodies whose
    byte-string head has each width."""
    keys = SimKeys(SEED, n_replicas=4, n_clients=4)
    replica = _replica()
    client = keys.signer("client", 0)
    for size in EDGE_LENGTHS:
        request = client.sign(Request(b"x" * size, 1, 0))
        batch = Batch(1_600_000_000_000_000, (request,))
        pp = keys.signer("replica", 0).sign(PrePrepare(0, 1, batch_digest(batch), 0))
        for kind, message in ((REC_SENT, request), (REC_PROPOSAL, Proposal(pp, batch))):
            replica._out = []
            replica._persist(kind, message)
            (effect,) = replica._out
            assert effect.record == cbor2.dumps([kind, codec.encode(message)])


def test_digest_snapshot_is_the_cbor2_encoding() -> None:
    """Replica._snapshot (with its per-client memo) equals the canonical cbor2 encoding of
    [app snapshot, sorted client table, last batch time] as the table changes, and falls
    back to cbor2 for values of other types."""
    rng = _rng()
    replica = _replica()

    def reference() -> bytes:
        table = sorted((c, t, r, d) for c, (t, r, d) in replica.client_table.items())
        return cbor2.dumps([replica.app.snapshot(), [list(x) for x in table],
                            replica.last_batch_time], canonical=True)

    for step in range(300):
        client = rng.choice(EDGE_INTS[:6])
        replica.client_table[client] = (rng.choice(EDGE_INTS), b"r" * rng.choice(EDGE_LENGTHS[:6]),
                                        bytes(32))
        replica.last_batch_time = rng.choice(EDGE_INTS)
        assert replica._snapshot() == reference(), step
    replica.client_table[5] = (-1, b"", bytes(32))  # never from a decoded request: cbor2 writes it
    assert replica._snapshot() == reference()


def test_kv_snapshot_and_results_are_the_cbor2_encoding() -> None:
    """KVStore.snapshot and Result.encode, written directly, equal cbor2's canonical bytes."""
    rng = _rng()
    alphabet = "ab\u00e9\u20ac\U0001d11e"
    for _ in range(300):
        store = KVStore()
        for _ in range(rng.randrange(8)):
            key = "".join(rng.choice(alphabet) for _ in range(rng.choice((0, 1, 7, 30))))
            store._data[key] = b"v" * rng.choice(EDGE_LENGTHS[:6])
            store._owner[key] = rng.choice(EDGE_INTS)
        for _ in range(rng.randrange(3)):
            store._locks[f"L{rng.randrange(9)}"] = LockInfo(
                rng.choice(EDGE_INTS), rng.choice(EDGE_INTS), rng.choice(EDGE_INTS))
        data = [[k, store._data[k], store._owner[k]] for k in sorted(store._data)]
        locks = [[n, i.token, i.holder, i.expiry_us] for n, i in sorted(store._locks.items())]
        assert store.snapshot() == cbor2.dumps([kv.SNAPSHOT_VERSION, data, locks],
                                               canonical=True)
    for size in EDGE_LENGTHS:
        assert Result("value", value=b"v" * size).encode() == cbor2.dumps(
            ["value", b"v" * size], canonical=True)
    for token in EDGE_INTS:
        assert Result("granted", token=token, expiry_us=token).encode() == cbor2.dumps(
            ["granted", token, token], canonical=True)
    for kind in ("ok", "not_found", "stale_token"):
        assert Result(kind).encode() == cbor2.dumps([kind], canonical=True)


def test_remembered_ops_and_results_answer_only_for_their_input() -> None:
    """The op memo answers for the same bytes under the same limits only (a tighter limit
    gets its own verdict), and a bad op is refused again with the same reason; the result
    memo gives what decoding gives."""
    op = ops.put("k", b"v" * 100)
    roomy, tight = KVLimits(), KVLimits(max_value_bytes=10)
    assert kv._parse_op_memo(op, roomy) == kv._parse_op(op, roomy)
    with pytest.raises(kv._BadOp) as first:
        kv._parse_op_memo(op, tight)
    assert first.value.reason == "value_too_large"
    assert kv._parse_op_memo(op, roomy) == kv._parse_op(op, roomy)
    with pytest.raises(kv._BadOp) as again:
        kv._parse_op_memo(op, tight)
    assert again.value.reason == "value_too_large"
    for data in (Result("ok").encode(), Result("value", value=b"x").encode()):
        assert decode_result_untrusted(data) == decode_result_untrusted(bytes(data))


def test_batch_encoding_and_digest_memos_follow_the_batch() -> None:
    """A batch's encoding and digest are remembered per batch object: equal to the
    reference encoder's, and another batch (even one made by replace) gets its own."""
    keys = SimKeys(SEED, n_replicas=4, n_clients=4)
    client = keys.signer("client", 0)
    batch = Batch(7, (client.sign(Request(b"a", 1, 0)), client.sign(Request(b"b", 2, 0))))
    for _ in range(2):
        assert codec.encode(batch) == codec._encode_reference(batch)
        assert batch_digest(batch) == hashlib.sha256(codec._encode_reference(batch)).digest()
    other = replace(batch, batch_time=8)
    assert codec.encode(other) == codec._encode_reference(other) != codec.encode(batch)
    assert batch_digest(other) != batch_digest(batch)


def test_verifier_identity_cache_keeps_the_lru_semantics() -> None:
    """A Signed object verified before is a cache hit while its entry is cached, and is
    checked in full again once evicted; a copy with another statement is not vouched for
    by the original's identity."""
    keys = SimKeys(SEED, n_replicas=4, n_clients=4)
    verifier = keys.verifier(cache_entries=1)
    signer = keys.signer("replica", 0)
    a, b = signer.sign(Prepare(0, 1, bytes(32), 0)), signer.sign(Prepare(0, 2, bytes(32), 0))
    assert verifier.verify(a) and verifier.verify(a)
    assert verifier.statistics()["cache_hits"] == 1
    assert verifier.verify(b)  # evicts a
    assert verifier.verify(a)
    stats = verifier.statistics()
    assert (stats["verified"], stats["cache_hits"]) == (3, 1)
    lying = replace(a, statement=Prepare(0, 9, bytes(32), 0))
    assert not verifier.verify(lying)
    assert isinstance(lying, Signed)


def test_simulation_without_codec_or_on_a_faulty_network_replays() -> None:
    """The send fast path (no fault can touch a message) and the general path (faults, or
    messages not encoded) both give equal runs for equal configs."""
    print(f"seed={SEED}")
    for config in (SimConfig(seed=SEED, clients=3, requests=8, codec=False),
                   SimConfig(seed=SEED, clients=3, requests=8, drop=0.05, reorder=0.1),
                   SimConfig(seed=SEED, clients=3, requests=8,
                             link_delay_ms={(0, 1): (1.0, 2.0)})):
        first, second = Simulation(config).run(60.0), Simulation(config).run(60.0)
        assert first.ok, first.violations
        assert first.trace_hash == second.trace_hash
        assert first.completed_requests == 24
