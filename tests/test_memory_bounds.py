"""Memory held per stored byte (issue 21, item 6): what a replica keeps besides the values
in its store is bounded by structure, not by what clients send. benchmarks/memory.py
measures the RSS (benchmarks/RESULTS.md); these tests check the copies it comes from.

Where the copies were (8 MB of 32 KiB values raised each node's RSS by 47-63 MiB, its
peak by 78-93 MiB): the store's values; the op memo (every op up to 4096, with its parsed
value: old values stayed pinned after being overwritten); the store's cached snapshot
bytes beside the replica's own copy of them (own_snapshots, then stable_snapshot); and
transient copies in the WAL's write_snapshot (header + data + crc, and every carried
record re-framed and joined twice).
"""

from __future__ import annotations

import random
import tracemalloc
from pathlib import Path

from bft import app as kv
from bft.app import ExecContext, KVStore, ops
from bft.storage import WalStorage
from tests.harness import Net

SEED = 21


def ctx(seq: int, client: int = 1) -> ExecContext:
    return ExecContext(seq=seq, index=0, batch_time_us=seq, client=client, timestamp=seq)


def test_the_op_memo_pins_no_big_op() -> None:
    """Failed before the fix: every 32 KiB put was remembered (op bytes and parsed value), up
    to 4096 of them (~256 MiB), also after the key was overwritten."""
    print(f"seed={SEED}")
    rng = random.Random(SEED)
    store = KVStore()
    kv._op_memo.clear()
    for i in range(300):
        store.execute(ops.put("same-key", rng.randbytes(32 * 1024)), ctx(i + 1))
    store.execute(ops.put("small", b"v"), ctx(301))
    assert kv._op_memo, "small ops are still remembered"
    assert max(len(op) for op in kv._op_memo) <= kv.OP_MEMO_MAX_OP_BYTES


def test_a_big_store_keeps_no_second_copy_of_its_snapshot() -> None:
    """Failed before the fix: the store kept its snapshot bytes after snapshot() (a full copy
    of the state beside the replica's own copy of the same bytes) until the next write."""
    print(f"seed={SEED}")
    rng = random.Random(SEED)
    store = KVStore()
    for i in range(64):
        store.execute(ops.put(f"k{i}", rng.randbytes(32 * 1024)), ctx(i + 1))
    first = store.snapshot()
    assert len(first) > kv.SNAPSHOT_CACHE_MAX_BYTES
    kept = store._snapshot_cache
    assert (0 if kept is None else len(kept)) == 0
    digest = store.digest()
    assert store.snapshot() == first and store.digest() == digest and len(digest) == 32
    small = KVStore()
    small.execute(ops.put("k", b"v"), ctx(1))
    assert small.snapshot() is small.snapshot()  # a small one is still cached


def test_a_replica_holds_one_state_copy_plus_its_unstable_checkpoints() -> None:
    """Between checkpoints a replica keeps its state serialized once (the stable snapshot,
    served to peers that fetch it) plus one per checkpoint executed but not yet stable
    (at most L/K), and no other copy. Failed before the fix: the store's cached snapshot
    was one more copy after every checkpoint."""
    print(f"seed={SEED}")
    rng = random.Random(SEED)
    net = Net(checkpoint_interval=4, log_window=8)
    window = net.config.log_window // net.config.checkpoint_interval
    seen_stable = 0
    for i in range(40):
        net.request(1, ops.put(f"k{i}", rng.randbytes(32 * 1024)))
        net.deliver()
        for r in net.replicas:
            assert r is not None
            big = len(r.app.snapshot()) > kv.SNAPSHOT_CACHE_MAX_BYTES
            assert len(r.own_snapshots) <= window
            kept = r.app._snapshot_cache
            if big:
                assert (0 if kept is None else len(kept)) == 0
            seen_stable = max(seen_stable, r.stable_seq)
    assert seen_stable >= 36 and all(r is not None and r.last_executed == 40 for r in net.replicas)


def test_write_snapshot_makes_no_copy_of_the_snapshot_or_the_carried_records(
        tmp_path: Path) -> None:
    """The WAL writes the snapshot file and the new segment piece by piece. Failed before
    the fix: header + data + crc and the framed, joined records were built in memory (a
    traced peak of about 2x the snapshot plus 3x the records)."""
    print(f"seed={SEED}")
    rng = random.Random(SEED)
    data = rng.randbytes(8 * 2**20)
    records = [rng.randbytes(32 * 1024) for _ in range(64)]  # 2 MiB
    with WalStorage(tmp_path / "wal", fsync="never") as storage:
        tracemalloc.start()
        try:
            storage.write_snapshot(1, data, carry_over=records)
            _, peak = tracemalloc.get_traced_memory()
        finally:
            tracemalloc.stop()
        assert storage.load_snapshot() == (1, data) and storage.records() == records
    assert peak < 2**20, f"write_snapshot allocated {peak} bytes at its peak"


def test_the_verifier_pins_no_big_request() -> None:
    """The signature cache remembers a big statement by its key only, and the identity memo
    does not hold big messages: a node's verifier kept every recent request's op (up to
    64 MiB of them) and 4096 whole messages (up to 256 MiB). A verified body decoded again
    is still a cache hit; a different statement paired with it is still refused. Failed
    before the fix: the cache held all 200 requests' statements (6.5 MB of ops)."""
    from bft import codec
    from bft.crypto import Ed25519Keys
    from bft.messages import Request, Signed

    print(f"seed={SEED}")
    rng = random.Random(SEED)
    keys = Ed25519Keys(4, 2, seed=SEED)
    verifier = keys.verifier()
    signer = keys.signer("client", 1)
    limits = codec.DEFAULT_LIMITS
    big = [signer.sign(Request(ops.put(f"k{i}", rng.randbytes(32 * 1024)), i + 1, 1))
           for i in range(200)]
    for signed in big:
        assert verifier.verify(codec.decode_untrusted(codec.encode(signed), limits))
    pinned = sum(len(entry[0].op) for entry in verifier._cache.values()
                 if entry[0] is not None and isinstance(entry[0], Request))
    pinned += sum(len(s.body) for s, _ in verifier._passed.values())
    assert pinned <= 4096 * 8, pinned
    verified = verifier.statistics()["verified"]
    again = codec.decode_untrusted(codec.encode(big[7]), limits)
    for _ in range(2):  # a hit, and again: not remembered by identity either
        assert verifier.verify(again) and verifier.statistics()["verified"] == verified
    assert all(s is not again for s, _ in verifier._passed.values())
    forged = Signed(big[7].body, big[7].signature, big[8].statement)
    assert not verifier.verify(forged)
    assert verifier.statistics()["failed_body_mismatch"] == 1


def test_the_batch_digest_memo_keeps_only_the_logs_batches() -> None:
    """The replica's batch-digest memo holds references to batches (1024 of any size: up to
    GiBs of big batches after they left the log). After a stable checkpoint it keeps only
    batches the log still holds, as `batches` does (OSDI'99 4.3: garbage collection).
    Failed before the fix: the memo held every batch since the start."""
    from bft.state import NULL_DIGEST

    print(f"seed={SEED}")
    rng = random.Random(SEED)
    net = Net(checkpoint_interval=4, log_window=8)
    for i in range(42):  # seqs 1..42: stable at 40, 41 and 42 above it
        net.request(1, ops.put(f"k{i}", rng.randbytes(1024)))
        net.deliver()
    for r in net.replicas:
        assert r is not None and r.stable_seq == 40 and r.last_executed == 42
        live = {NULL_DIGEST} | {d for s in r.log.slots.values() for d in (s.digest, s.decided)}
        held = [digest for _, digest in r._digest_memo.values()]
        assert held and set(held) <= live, (len(held), len(live))
