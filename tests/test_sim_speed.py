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
        table = sorted((c, t, r, d, at) for c, (t, r, d, at) in replica.client_table.items())
        return cbor2.dumps([replica.app.snapshot(), [list(x) for x in table],
                            replica.last_batch_time], canonical=True)

    for step in range(300):
        client = rng.choice(EDGE_INTS[:6])
        replica.client_table[client] = (rng.choice(EDGE_INTS), b"r" * rng.choice(EDGE_LENGTHS[:6]),
                                        bytes(32), rng.choice(EDGE_INTS))
        replica.last_batch_time = rng.choice(EDGE_INTS)
        assert replica._snapshot() == reference(), step
    replica.client_table[5] = (-1, b"", bytes(32), 0)  # never from a decoded request: cbor2 writes it
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


# --------------------------------------------------------------------------
# Issue 19, final session: the vote tallies' early exits, the vote fast path of
# Replica._dispatch, reply prescreening in the simulator, keyed-BLAKE2b sim signatures
# --------------------------------------------------------------------------


def _reference_prepared(prepares, digest, primary, quorum):
    backups = sorted((s for r, s in prepares.items()
                      if s.statement.digest == digest and r != primary),
                     key=lambda s: s.statement.replica)
    return tuple(backups[:quorum - 1]) if len(backups) >= quorum - 1 else None


def _reference_commit(commits, digest, quorum):
    votes = [s for s in commits.values() if s.statement.digest == digest]
    return tuple(votes[:quorum]) if len(votes) >= quorum else None


def test_tallies_with_early_exits_match_their_definitions() -> None:
    """bft/quorum.py: prepared_certificate, commit_certificate(s) and vouched return early
    when there are too few voters at all; on every vote set (0..n voters, mixed digests)
    they give what counting the votes gives (OSDI'99 4.2: 2f PREPAREs of distinct backups,
    2f+1 COMMITs). An equivalence check: it passes on the code before the early exits too."""
    from bft.messages import Commit
    from bft.quorum import commit_certificate, commit_certificates, prepared_certificate, vouched

    rng = _rng()
    keys = SimKeys(SEED, n_replicas=7, n_clients=1)
    digests = (b"\x01" * 32, b"\x02" * 32)
    for _ in range(400):
        n = rng.choice((4, 7))
        f = (n - 1) // 3
        quorum = 2 * f + 1
        voters = rng.sample(range(n), rng.randint(0, n))
        prepares = {r: keys.signer("replica", r).sign(Prepare(0, 1, rng.choice(digests), r))
                    for r in voters}
        commits = {r: keys.signer("replica", r).sign(Commit(0, 1, rng.choice(digests), r))
                   for r in voters}
        primary = rng.randrange(n)
        for d in digests:
            assert prepared_certificate(prepares, d, primary, quorum) == \
                _reference_prepared(prepares, d, primary, quorum)
            assert commit_certificate(commits, d, quorum) == _reference_commit(commits, d, quorum)
            assert vouched(prepares, d, (primary,), f + 1) == (
                sum(1 for r, s in prepares.items()
                    if r != primary and s.statement.digest == d) >= f + 1)
        expected = [(d, c) for d in dict.fromkeys(s.statement.digest for s in commits.values())
                    if (c := _reference_commit(commits, d, quorum)) is not None]
        assert commit_certificates(commits, quorum) == expected


def test_vote_fast_path_keeps_the_dispatch_rules() -> None:
    """Replica._dispatch hands PREPAREs and COMMITs to NormalCase._on_vote_message: the same
    checks in the same order as the generic path (PROTOCOL.md "Peer input never breaks a
    replica"): a forged vote is dropped as bad_signature, a vote naming a replica outside the
    cluster as unknown_replica (after its signature), our own vote as own_message, and our
    own COMMIT of an earlier view relayed back counts toward a commit certificate. A
    regression guard (it passes on the code before the fast path)."""
    from bft.messages import Commit

    print(f"seed={SEED}")
    keys = SimKeys(SEED, n_replicas=4, n_clients=4)
    replica = _replica()  # replica 1 of 4, view 0
    digest = b"\x05" * 32
    forged = keys.signer("replica", 2).sign(Prepare(0, 1, digest, 2))
    forged = Signed(forged.body, bytes(64), forged.statement, forged.checked)
    replica.receive(forged, 1.0)
    assert replica.drops["bad_signature"] == 1
    wide = SimKeys(SEED, n_replicas=8, n_clients=4)  # a key the cluster does not know
    replica.receive(wide.signer("replica", 6).sign(Prepare(0, 1, digest, 6)), 1.0)
    assert replica.drops["bad_signature"] == 2  # unknown signer: its signature fails first
    replica.receive(keys.signer("replica", 1).sign(Prepare(0, 1, digest, 1)), 1.0)
    assert replica.drops["own_message"] == 1
    for kind in (Prepare, Commit):
        replica.receive(keys.signer("replica", 2).sign(kind(0, 1, digest, 2)), 1.0)
    slot = replica.log.get(1)
    assert slot is not None and set(slot.prepares) == {2} and set(slot.commits) == {2}
    # a later view: our own COMMIT of view 0 relayed back is a certificate vote
    replica.view = 4
    for r in (1, 2, 3):
        replica.receive(keys.signer("replica", r).sign(Commit(0, 2, digest, r)), 1.0)
    assert replica.log.get(2).decided == digest
    assert replica.counters["decided_by_certificate"] == 1


def test_replies_that_cannot_count_are_dropped_before_decoding(monkeypatch) -> None:
    """The simulator's clients screen a reply's bytes as the runtime's do (bft/node.py
    `_route_untrusted`, `Client.prescreen`): a reply to a request already completed is
    counted as `stale_timestamp` and never decoded. Only the f+1 replies that complete a
    request are decoded and checked. Failed before the fix: all n replies of every request
    were decoded (4 x 16 instead of 2 x 16)."""
    from bft.messages import MacReply

    decoded: list[str] = []
    real = codec.decode_untrusted

    def counting(data, *args, **kwargs):  # type: ignore[no-untyped-def]
        message = real(data, *args, **kwargs)
        decoded.append(type(message).__name__)
        return message

    monkeypatch.setattr(codec, "decode_untrusted", counting)
    print(f"seed={SEED}")
    simulation = Simulation(SimConfig(seed=SEED, nodes=4, clients=2, requests=8))
    result = simulation.run(60.0)
    assert result.ok, result.violations
    assert result.completed_requests == 16
    assert decoded.count(MacReply.__name__) == 16 * 2  # f+1 = 2 per request
    for client in simulation.clients:
        stats = client.statistics()
        assert stats["replies_received"] == 8 * 4 and stats["replies_counted"] == 8 * 2
        assert stats["drops"] == {"stale_timestamp": 8 * 2}


def test_sim_signatures_refuse_forgeries() -> None:
    """The simulator's signature scheme (keyed BLAKE2b-512 under a per-identity secret since
    issue 19; HMAC-SHA256 before) keeps a signature scheme's guarantees: a signature
    verifies only for its signer's identity and the very body signed; a signature of another
    identity, a changed body, a flipped bit, or one made under another seed's key fails as
    bad_signature. Deterministic: equal seeds, equal signatures."""
    rng = _rng()
    keys, other = SimKeys(SEED, n_replicas=4, n_clients=4), SimKeys(SEED + 1, n_replicas=4)
    verifier = keys.verifier(cache_entries=0)
    for _ in range(50):
        seq = rng.randrange(1, 1000)
        digest = rng.randbytes(32)
        good = keys.signer("replica", 2).sign(Prepare(0, seq, digest, 2))
        assert verifier.verify(good)
        assert good.signature == SimKeys(SEED, n_replicas=4).signer("replica", 2).sign(
            Prepare(0, seq, digest, 2)).signature
        as_other = keys.signer("replica", 3).sign(Prepare(0, seq, digest, 3))
        stolen = Signed(as_other.body, good.signature, as_other.statement, as_other.checked)
        flipped = bytearray(good.signature)
        flipped[rng.randrange(64)] ^= 1 << rng.randrange(8)
        bit = Signed(good.body, bytes(flipped), good.statement, good.checked)
        foreign = other.signer("replica", 2).sign(Prepare(0, seq, digest, 2))
        moved = keys.signer("replica", 2).sign(Prepare(0, seq + 1, digest, 2))
        swapped = Signed(moved.body, good.signature, moved.statement, moved.checked)
        for bad in (stolen, bit, foreign, swapped):
            failed = verifier.statistics()["failed_bad_signature"]
            assert not verifier.verify(bad)
            assert verifier.statistics()["failed_bad_signature"] == failed + 1


def test_fast_constructors_make_the_same_objects() -> None:
    """codec.fast_constructor(cls)(*values) is cls(*values): same type, equal, same hash and
    fields, for every class the replica makes that way; a class with a __post_init__ (whose
    checks must run) gets the class itself. An equivalence check (passes before the change,
    where the classes were called directly)."""
    from dataclasses import astuple, fields

    from bft import effects
    from bft.app import ExecContext
    from bft.messages import Commit, MacReply, PreparedCert, Reply

    keys = SimKeys(SEED, n_replicas=4, n_clients=4)
    prepare = keys.signer("replica", 1).sign(Prepare(0, 1, bytes(32), 1))
    pp = keys.signer("replica", 0).sign(PrePrepare(0, 1, bytes(32), 0))
    batch = Batch(7, ())
    reply = Reply(0, 5, 1, 0, bytes(32), b"ok")
    cases = [
        (Reply, (0, 5, 1, 0, bytes(32), b"ok", 9)), (Prepare, (0, 1, bytes(32), 1)),
        (Commit, (0, 1, bytes(32), 1)), (PreparedCert, (pp, (prepare,))),
        (Proposal, (pp, batch)), (MacReply, (b"body", bytes(32), reply, None)),
        (effects.Persist, (b"record",)), (effects.Broadcast, (prepare,)),
        (effects.Reply, (1, prepare)), (effects.SetTimer, (1.5,)),
        (effects.Executed, (1, 0, bytes(32), batch, (b"r",), bytes(32))),
    ]
    for cls, values in cases:
        made, plain = codec.fast_constructor(cls)(*values), cls(*values)
        assert type(made) is cls and made == plain and hash(made) == hash(plain)
        assert [getattr(made, f.name) for f in fields(cls)] == list(values)
        assert astuple(made) == astuple(plain)
    assert codec.fast_constructor(ExecContext) is ExecContext  # its __post_init__ checks run
