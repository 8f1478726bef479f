"""Per-client quotas on the replicated store (issue 21, item 6): keys and bytes per client id."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import cbor2
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from bft.app import DEFAULT_KV_LIMITS, ExecContext, KVLimits, KVStore, Result, decode_result, ops
from bft.config import ClusterConfig
from bft.errors import ConfigError

# Small caps so the tests fill them quickly: 10 keys / 100 bytes in all, 4 keys / 40 bytes each.
TINY = KVLimits(max_keys=10, max_state_bytes=100, max_keys_per_client=4, max_bytes_per_client=40)


class Runner:
    def __init__(self, store: KVStore) -> None:
        self.store = store
        self.seq = 0

    def __call__(self, op: bytes, client: int) -> Result:
        self.seq += 1
        context = ExecContext(seq=self.seq, index=0, batch_time_us=self.seq, client=client,
                              timestamp=self.seq)
        return decode_result(self.store.execute(op, context))


def fairness_violation(make_store: Callable[[], KVStore]) -> str | None:
    """Client 1 writes as much as the store takes, in small and big values; then client 2's
    first small write must still succeed. Returns what went wrong, or None."""
    for value_size in (0, 9, 31):
        run = Runner(make_store())
        for i in range(200):
            if run(ops.put(f"{i:03}", b"x" * value_size), client=1).kind != "ok":
                break
        result = run(ops.put("mine", b"v"), client=2)
        if result.kind != "ok":
            return f"after client 1 filled the store ({value_size}-byte values): {result}"
    return None


def test_one_client_filling_its_quota_cannot_fail_another_clients_write() -> None:
    assert fairness_violation(lambda: KVStore(TINY)) is None


def test_planted_store_without_quotas_fails_the_fairness_check() -> None:
    no_quotas = KVLimits(max_keys=10, max_state_bytes=100, max_keys_per_client=10,
                         max_bytes_per_client=100)
    problem = fairness_violation(lambda: KVStore(no_quotas))
    assert problem is not None and ("too_many_keys" in problem or "store_full" in problem)


def test_default_quota_is_below_the_global_caps_and_bounds_one_client() -> None:
    d = DEFAULT_KV_LIMITS
    assert d.max_keys_per_client < d.max_keys and d.max_bytes_per_client < d.max_state_bytes
    run = Runner(KVStore())
    value = b"v" * d.max_value_bytes
    for i in range(d.max_bytes_per_client // d.max_value_bytes + 1):
        result = run(ops.put(f"k{i}", value), client=7)
        if result.kind != "ok":
            break
    assert result == Result("error", reason="client_byte_quota")
    keys, size = run.store.client_usage(7)
    assert size <= d.max_bytes_per_client < size + len(value) + 4
    assert run(ops.put("other", value), client=8).kind == "ok"


def test_over_quota_writes_get_the_error_and_change_nothing() -> None:
    run = Runner(KVStore(TINY))
    for i in range(4):
        assert run(ops.put(f"k{i}", b""), client=1).kind == "ok"
    before = run.store.digest()
    assert run(ops.put("k4", b""), client=1) == Result("error", reason="client_key_quota")
    assert run(ops.cas("k4", None, b""), client=1) == Result("error", reason="client_key_quota")
    assert run(ops.put("k0", b"x" * 36), client=1) == Result("error", reason="client_byte_quota")
    assert run.store.digest() == before and run.store.client_usage(1) == (4, 8)
    assert run(ops.put("k0", b"x" * 33), client=1) == Result("error", reason="client_byte_quota")
    assert run(ops.put("k0", b"x" * 32), client=1).kind == "ok"  # exactly 40 bytes: allowed
    assert run.store.client_usage(1) == (4, 40)
    assert run.store.statistics()["errors"] == {"client_key_quota": 2, "client_byte_quota": 2}


def test_a_write_charges_its_writer_and_a_delete_frees_the_owner() -> None:
    run = Runner(KVStore(TINY))
    assert run(ops.put("k", b"abc"), client=1).kind == "ok"
    assert run.store.owner("k") == 1 and run.store.client_usage(1) == (1, 4)
    # Client 2 overwrites client 1's key: the key and its new value count against client 2.
    assert run(ops.cas("k", b"abc", b"abcdef"), client=2).kind == "ok"
    assert run.store.owner("k") == 2
    assert (run.store.client_usage(1), run.store.client_usage(2)) == ((0, 0), (1, 7))
    # A takeover needs room in the new writer's quota.
    for i in range(3):
        assert run(ops.put(f"f{i}", b""), client=3).kind == "ok"
    assert run(ops.put("k", b""), client=3).kind == "ok"  # 4th key of client 3
    assert run(ops.put("f0", b""), client=1).kind == "ok"  # client 1 takes f0 from 3
    assert run(ops.put("k", b"z"), client=1).kind == "ok"
    assert run.store.client_usage(3) == (2, 4)
    assert run(ops.delete("k"), client=3).kind == "ok"  # anyone may delete; frees client 1
    assert run.store.client_usage(1) == (1, 2) and run.store.owner("k") is None


def test_snapshot_restore_keeps_the_accounting() -> None:
    run = Runner(KVStore(TINY))
    for i in range(4):
        assert run(ops.put(f"k{i}", b"1234"), client=1).kind == "ok"
    assert run(ops.put("z", b"1"), client=2).kind == "ok"
    restored = KVStore(TINY)
    restored.restore(run.store.snapshot())
    assert restored.digest() == run.store.digest()
    assert restored.client_usage(1) == (4, 24) and restored.owner("z") == 2
    # The restored store refuses the same write the original refuses, for the same reason.
    refused = Result("error", reason="client_key_quota")
    assert run(ops.put("k9", b""), client=1) == refused
    assert Runner(restored)(ops.put("k9", b""), client=1) == refused
    assert Runner(restored)(ops.put("k9", b""), client=3).kind == "ok"


def test_the_owner_is_in_the_digest_and_restore_rejects_bad_owners() -> None:
    """A kv1 snapshot and a client over its quota are accepted since the upgrade fix (see
    tests/test_kv1_upgrade.py); a bad owner is not."""
    a, b = Runner(KVStore(TINY)), Runner(KVStore(TINY))
    a(ops.put("k", b"v"), client=1)
    b(ops.put("k", b"v"), client=2)
    assert a.store.value("k") == b.store.value("k") and a.store.digest() != b.store.digest()
    for bad in (cbor2.dumps(["kv2", [["k", b"v", -1]], []], canonical=True),
                cbor2.dumps(["kv2", [["k", b"v", 2**63]], []], canonical=True),
                cbor2.dumps(["kv2", [["k", b"v", "1"]], []], canonical=True)):
        store = KVStore(TINY)
        with pytest.raises(ValueError):
            store.restore(bad)
        assert store.client_usage(1) == (0, 0) and store.value("k") is None


OP = st.tuples(
    st.sampled_from(["put", "cas", "delete"]),
    st.sampled_from(["a", "b", "c", "d", "e", "ключ"]),
    st.binary(max_size=20),
    st.integers(min_value=1, max_value=3),
)


@settings(max_examples=150, deadline=None)
@given(st.lists(OP, max_size=40))
def test_accounting_always_equals_a_recount_of_the_contents(
        steps: list[tuple[str, str, bytes, int]]) -> None:
    limits = KVLimits(max_keys=5, max_state_bytes=60, max_keys_per_client=3,
                      max_bytes_per_client=30)
    run = Runner(KVStore(limits))
    for kind, key, value, client in steps:
        if kind == "put":
            op = ops.put(key, value)
        elif kind == "cas":
            op = ops.cas(key, run.store.value(key), value)
        else:
            op = ops.delete(key)
        run(op, client)
        # Recount from the snapshot (the replicated state), independently of the store.
        _, entries, _ = cbor2.loads(run.store.snapshot())
        recount: dict[int, tuple[int, int]] = {}
        for k, v, owner in entries:
            keys, size = recount.get(owner, (0, 0))
            recount[owner] = (keys + 1, size + len(k.encode()) + len(v))
        for c in (1, 2, 3):
            assert run.store.client_usage(c) == recount.get(c, (0, 0))
            keys, size = recount.get(c, (0, 0))
            assert keys <= limits.max_keys_per_client and size <= limits.max_bytes_per_client
        assert run.store._usage.keys() == recount.keys()  # no empty entries left behind
    restored = KVStore(limits)
    restored.restore(run.store.snapshot())
    assert all(restored.client_usage(c) == run.store.client_usage(c) for c in (1, 2, 3))


def test_quotas_are_config_fields_with_checked_ranges() -> None:
    base = {"cluster": {"name": "q", "f": 0},
            "nodes": [{"id": 0, "address": "127.0.0.1:7100"}], "clients": {"count": 1}}
    default = ClusterConfig.from_dict(base)
    assert default.kv_limits is DEFAULT_KV_LIMITS
    cfg = ClusterConfig.from_dict(
        {**base, "quotas": {"max_keys_per_client": 5, "max_bytes_per_client": 1000}})
    assert (cfg.kv_limits.max_keys_per_client, cfg.kv_limits.max_bytes_per_client) == (5, 1000)
    assert cfg.kv_limits is ClusterConfig.from_dict(
        {**base, "quotas": {"max_keys_per_client": 5, "max_bytes_per_client": 1000}}).kv_limits
    for key, value in (("max_keys_per_client", 0), ("max_keys_per_client", 100_001),
                       ("max_bytes_per_client", 64 * 1024 * 1024 + 1),
                       ("max_bytes_per_client", "8MiB"), ("max_key_per_client", 3)):
        with pytest.raises(ConfigError) as err:
            ClusterConfig.from_dict({**base, "quotas": {key: value}})
        assert "quotas." in str(err.value)


def test_the_simulated_replicas_and_the_checkers_model_use_the_configs_quotas() -> None:
    from adversary.sim import SimConfig, Simulation

    sim = Simulation(SimConfig(seed=3, clients=2, requests=40, cluster_overrides={
        "max_keys_per_client": 2, "max_bytes_per_client": 64}))
    result = sim.run(60)
    assert result.safety_ok and result.liveness_ok  # linearizable against a quota'd model
    for app in sim.apps:
        assert app is not None and app.limits.max_keys_per_client == 2
        errors = app.statistics()["errors"]
        assert errors.get("client_key_quota", 0) + errors.get("client_byte_quota", 0) > 0


def test_a_node_stores_with_its_configs_quotas(tmp_path: Path) -> None:
    from bft.crypto import Ed25519Keys
    from bft.node import Node

    keys = Ed25519Keys(4, 1, seed=11)
    config = ClusterConfig.local(4, max_keys_per_client=3, max_bytes_per_client=100)
    node = Node(config, 1, signer=keys.signer("replica", 1), verifier=keys.verifier(),
                state_dir=tmp_path, fsync="never")
    assert isinstance(node.app, KVStore)
    assert (node.app.limits.max_keys_per_client, node.app.limits.max_bytes_per_client) == (3, 100)
