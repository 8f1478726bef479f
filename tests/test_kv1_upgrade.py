"""Upgrading a store written by the released code (snapshot format "kv1", commit a77e908)
to the per-client quotas (format "kv2", issue 21 item 6): no state directory is refused.

The design (bft/app.py, "Snapshot"): a kv1 key has no known writer, so it is owned by
nobody and charged to no client (owner null in kv2); it counts against the store's global
caps, as before. Its next writer takes it over and is charged for it, as for any key of
another client. A node keeps the stable checkpoint it restarts from exactly as stored:
its digest (over the kv1 bytes), its 2f+1 signed CHECKPOINTs and the kv1 bytes themselves,
which it still serves to a peer that fetches that checkpoint (the peer checks sha256 of
the bytes against the proof, then restores them with the same rule). The next checkpoint
is over kv2 bytes; every replica that restored the same kv1 state computes the same one.
"""

from __future__ import annotations

import shutil
from pathlib import Path

import cbor2
import pytest
import trio

from bft import walrecords
from bft.app import ExecContext, KVLimits, KVStore, LockInfo, Ops, Result, decode_result
from bft.config import ClusterConfig, NodeAddress
from bft.crypto import Ed25519Keys, sha256
from bft.node import ClusterClient, Node
from bft.storage import WalStorage
from transport.udp import free_udp_ports

FIXTURE = Path(__file__).parent / "fixtures" / "kv1_state"


def kv1_snapshot(data: dict[str, bytes], locks: dict[str, tuple[int, int, int]]) -> bytes:
    """The released code's snapshot encoding, frozen here: ["kv1", [[key, value]...],
    [[name, token, holder, expiry_us]...]], sorted, canonical CBOR."""
    return cbor2.dumps(["kv1", [[k, data[k]] for k in sorted(data)],
                        [[n, *locks[n]] for n in sorted(locks)]], canonical=True)


def ctx(seq: int, client: int) -> ExecContext:
    return ExecContext(seq=seq, index=0, batch_time_us=seq, client=client, timestamp=seq)


def test_a_kv1_snapshot_restores_with_its_keys_charged_to_nobody() -> None:
    """Failed before the fix: restore raised ValueError("snapshot: not a kv2 snapshot")."""
    old = kv1_snapshot({"a": b"1", "b": b"22", "ключ": b""}, {"L": (65537, 3, 500)})
    store = KVStore()
    store.restore(old)
    assert (store.value("a"), store.value("b"), store.value("ключ")) == (b"1", b"22", b"")
    assert store.lock_info("L") == LockInfo(65537, 3, 500)
    assert store.owner("a") is None and store._usage == {}
    assert store.statistics()["state_bytes"] == 1 + 1 + 1 + 2 + len("ключ".encode())
    # it re-encodes as kv2 with null owners, which restores to the same digest
    kind, entries, _ = cbor2.loads(store.snapshot())
    assert kind == "kv2" and entries[0] == ["a", b"1", None]
    again = KVStore()
    again.restore(store.snapshot())
    assert again.digest() == store.digest() and again.owner("b") is None


def test_the_next_writer_of_an_ownerless_key_is_charged_for_it() -> None:
    limits = KVLimits(max_keys_per_client=2, max_bytes_per_client=10)
    store = KVStore(limits)
    store.restore(kv1_snapshot({"a": b"1234", "b": b"", "c": b""}, {}))
    assert decode_result(store.execute(Ops.put("a", b"12345"), ctx(1, 7))).kind == "ok"
    assert store.owner("a") == 7 and store.client_usage(7) == (1, 6)
    assert decode_result(store.execute(Ops.put("b", b"1234"), ctx(2, 7))) == \
        Result("error", reason="client_byte_quota")  # 6 + 5 > 10: refused, b stays ownerless
    assert store.owner("b") is None
    assert decode_result(store.execute(Ops.delete("c"), ctx(3, 8))).kind == "ok"
    assert store.value("c") is None and store.client_usage(8) == (0, 0)
    assert store._usage == {7: [1, 6]}


def test_a_kv1_snapshot_is_read_as_strictly_as_a_kv2_one() -> None:
    for bad in (kv1_snapshot({"a": b"1"}, {}) + b"\x00",
                cbor2.dumps(["kv1", [["b", b"1"], ["a", b"2"]], []], canonical=True),
                cbor2.dumps(["kv1", [["a", b"1", 3]], []], canonical=True),  # kv1 has no owner
                cbor2.dumps(["kv2", [["a", b"1"]], []], canonical=True),  # kv2 has one
                cbor2.dumps(["kv3", [], []], canonical=True)):
        store = KVStore()
        with pytest.raises(ValueError):
            store.restore(bad)
        assert store.value("a") is None


def test_restore_keeps_a_client_over_a_lowered_quota() -> None:
    """An operator who lowers [quotas] and restarts loses nothing: the client keeps what it
    has and is refused further growth. Failed before the fix: restore raised ValueError
    ("a client over its quota") and the node could not start from its own snapshot."""
    big = KVStore(KVLimits(max_keys_per_client=5))
    for i in range(5):
        big.execute(Ops.put(f"k{i}", b"v"), ctx(i + 1, 1))
    small = KVStore(KVLimits(max_keys_per_client=2))
    small.restore(big.snapshot())
    assert small.client_usage(1) == (5, 15) and small.digest() == big.digest()
    assert decode_result(small.execute(Ops.put("k9", b"v"), ctx(9, 1))) == \
        Result("error", reason="client_key_quota")
    # over its quota, it may still overwrite without growing, and delete
    assert decode_result(small.execute(Ops.put("k0", b"w"), ctx(10, 1))).kind == "ok"
    assert decode_result(small.execute(Ops.delete("k1"), ctx(11, 1))).kind == "ok"
    assert small.client_usage(1) == (4, 12)


# -- a real state directory written by the released code ----------------------------------

EXPECTED = {  # what tests/fixtures/kv1_state/make.py wrote (see its WRITES)
    **{f"c0-k{i}": b"value %d of client 0" % i for i in range(5)},
    **{f"c1-k{i}": b"value %d of client 1" % i for i in range(6)},
    "shared": b"then by 1",
    "after-the-checkpoint": b"late",  # executed above the stable checkpoint: replayed
}


def fixture_config() -> ClusterConfig:
    ports = free_udp_ports(4)
    config = ClusterConfig.local(4, clients=4, checkpoint_interval=4, log_window=8,
                                 fsync="never")
    return ClusterConfig(**{**{f: getattr(config, f) for f in config.__dataclass_fields__},
                            "nodes": tuple(NodeAddress(i, "127.0.0.1", ports[i])
                                           for i in range(4))})


def stored_checkpoint(state_dir: Path, i: int) -> tuple[int, bytes, bytes]:
    """(seq, state digest, state bytes) of node i's snapshot file."""
    with WalStorage(state_dir / f"wal-{i}", fsync="never") as storage:
        stored = storage.load_snapshot()
    assert stored is not None
    seq, digest, state, _ = walrecords.decode_snapshot(stored[1], fixture_config().limits)
    return seq, digest, state


async def test_a_cluster_written_by_the_released_code_starts_and_keeps_its_data(
        tmp_path: Path) -> None:
    """Failed before the fix: every node raised at start (MalformedMessage "bad app
    snapshot: snapshot: not a kv2 snapshot") on its own snapshot."""
    for i in range(4):
        shutil.copytree(FIXTURE / f"n{i}", tmp_path / f"n{i}")
    old = [stored_checkpoint(tmp_path / f"n{i}", i) for i in range(4)]
    assert {cbor2.loads(cbor2.loads(state)[0])[0] for _, _, state in old} == {"kv1"}
    assert {(seq, sha256(state) == digest) for seq, digest, state in old} == {(16, True)}
    config = fixture_config()
    keys = Ed25519Keys(4, 4, seed=21)
    nodes = [Node(config, i, signer=keys.signer("replica", i), verifier=keys.verifier(),
                  state_dir=tmp_path / f"n{i}") for i in range(4)]
    async with trio.open_nursery() as nursery:
        for node in nodes:
            await nursery.start(node.run)
        # the stable checkpoint is the stored one: its kv1 digest and bytes, its proof
        for node, (seq, digest, state) in zip(nodes, old):
            r = node.replica
            assert (r.stable_seq, r.stable_digest, r.stable_snapshot) == (seq, digest, state)
        client = ClusterClient(config, 2, signer=keys.signer("client", 2),
                               verifier=keys.verifier())
        with trio.fail_after(60):
            for key, value in sorted(EXPECTED.items()):
                assert decode_result(await client.call(Ops.get(key), timeout_s=10)).value == value
            assert decode_result(await client.call(Ops.get("c0-k5"))).kind == "not_found"
            # new writes until a later checkpoint is stable everywhere
            n = 0
            while min(nd.replica.stable_seq for nd in nodes) <= 16 or n < 3:
                result = await client.call(Ops.put(f"new{n}", b"x"), timeout_s=10)
                assert decode_result(result).kind == "ok"
                n += 1
                top = max(nd.replica.last_executed for nd in nodes)
                while min(nd.replica.last_executed for nd in nodes) < top:
                    await trio.sleep(0.01)
        client.close()
        stable = {(nd.replica.stable_seq, nd.replica.stable_digest) for nd in nodes}
        for node in nodes:
            assert {k: node.app.value(k) for k in EXPECTED} == EXPECTED
            assert node.app.owner("shared") is None and node.app.owner("new0") == 2
            assert node.app.lock_info("L") is not None and node.app.lock_info("L").holder == 1
        nursery.cancel_scope.cancel()
    assert len(stable) == 1  # all four agree on the later checkpoint
    for i in range(4):
        seq, digest, state = stored_checkpoint(tmp_path / f"n{i}", i)
        assert seq > 16 and sha256(state) == digest
        assert cbor2.loads(cbor2.loads(state)[0])[0] == "kv2"


async def test_a_replica_fetches_the_kv1_checkpoint_from_upgraded_peers(tmp_path: Path) -> None:
    """State transfer (TOCS 5.3) of the checkpoint the upgraded nodes restarted from: node 3
    starts empty, nodes 0-2 from the released code's directories and no client writes, so
    the only stable checkpoint is the stored kv1 one. Node 3 gets its proof, fetches the
    kv1 bytes (sha256 matches the proven digest) and restores them. Failed before the fix:
    nodes 0-2 raised at start, and installing kv1 bytes raised MalformedMessage."""
    for i in range(3):
        shutil.copytree(FIXTURE / f"n{i}", tmp_path / f"n{i}")
    seq, digest, state = stored_checkpoint(tmp_path / "n0", 0)
    config = fixture_config()
    keys = Ed25519Keys(4, 4, seed=21)
    nodes = [Node(config, i, signer=keys.signer("replica", i), verifier=keys.verifier(),
                  state_dir=tmp_path / f"n{i}") for i in range(4)]
    async with trio.open_nursery() as nursery:
        for node in nodes:
            await nursery.start(node.run)
        fresh = nodes[3].replica
        with trio.fail_after(60):
            while fresh.stable_seq < seq:
                await trio.sleep(0.02)
        assert (fresh.stable_seq, fresh.stable_digest, fresh.stable_snapshot) == (seq, digest, state)
        assert fresh.last_executed >= seq
        app = nodes[3].app
        assert app.value("shared") == b"then by 1" and app.owner("shared") is None
        nursery.cancel_scope.cancel()
