"""bft.crypto: digests, both signature schemes, the verifier's cache and deep checks, key files."""

from __future__ import annotations

import hashlib
import os
import stat
from dataclasses import replace

import pytest
from hypothesis import given, settings

from bft import codec
from bft import messages as m
from bft.crypto import (
    Ed25519Keys,
    SignerProtocol,
    SimKeys,
    VerifierProtocol,
    batch_digest,
    generate_private_key,
    load_private_key,
    load_public_key,
    public_key_bytes,
    request_digest,
    save_private_key,
    save_public_key,
    sha256,
)
from bft.errors import ConfigError
from tests import strategies as ms

N = 4
CLIENTS = 3
DIGEST = bytes(range(32))


def make_keys(scheme: str, seed: int = 1):
    """A key set of the scheme: .signer(kind, id) and .verifier()."""
    if scheme == "ed25519":
        return Ed25519Keys(N, CLIENTS, seed=seed)
    return SimKeys(seed, n_replicas=N, n_clients=CLIENTS)


@pytest.fixture(params=["ed25519", "sim"])
def scheme(request):
    return request.param


@pytest.fixture
def keys(scheme):
    return make_keys(scheme)


def prepare(replica: int = 0, seq: int = 1) -> m.Prepare:
    return m.Prepare(view=0, seq=seq, digest=DIGEST, replica=replica)


def flip(data: bytes, index: int) -> bytes:
    return data[:index] + bytes([data[index] ^ 0x01]) + data[index + 1 :]


# --------------------------------------------------------------------------
# Digests
# --------------------------------------------------------------------------


def test_sha256_known_vector():
    assert sha256(b"abc").hex() == (
        "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"
    )


def test_batch_and_request_digests_cover_their_bytes(keys):
    request = keys.signer("client", 1).sign(m.Request(op=b"put k v", timestamp=7, client=1))
    batch = m.Batch(batch_time=123, requests=(request,))
    assert batch_digest(batch) == hashlib.sha256(codec.encode(batch)).digest()
    assert batch_digest(batch) != batch_digest(replace(batch, batch_time=124))
    assert batch_digest(m.NULL_BATCH) != batch_digest(batch)
    assert request_digest(request) == hashlib.sha256(request.body).digest()
    # The signature is not part of a request's digest.
    assert request_digest(replace(request, signature=bytes(64))) == request_digest(request)


# --------------------------------------------------------------------------
# Sign and verify (both schemes)
# --------------------------------------------------------------------------


def test_both_schemes_satisfy_the_protocols(keys):
    assert isinstance(keys.signer("replica", 0), SignerProtocol)
    assert isinstance(keys.verifier(), VerifierProtocol)


def test_sign_verify_round_trip(keys):
    statement = prepare(replica=2)
    signed = keys.signer("replica", 2).sign(statement)
    assert signed.statement is statement
    assert signed.body == codec.encode(statement)
    assert len(signed.signature) == m.SIGNATURE_SIZE
    verifier = keys.verifier()
    assert verifier.verify(signed) is True
    assert verifier.statistics()["verified"] == 1


def test_round_trip_through_the_codec(keys):
    """What a peer receives (decoded from bytes) verifies like the original."""
    signed = keys.signer("client", 0).sign(m.Request(op=b"get x", timestamp=1, client=0))
    received = codec.decode_untrusted(codec.encode(signed))
    assert keys.verifier().verify(received)


def test_signer_refuses_statements_of_others(keys):
    signer = keys.signer("replica", 1)
    with pytest.raises(ValueError):
        signer.sign(prepare(replica=2))
    with pytest.raises(ValueError):
        signer.sign(m.Request(op=b"x", timestamp=1, client=1))
    with pytest.raises(TypeError):
        signer.sign(m.NULL_BATCH)  # not a statement


def test_tampered_body_fails(keys):
    signed = keys.signer("replica", 0).sign(prepare())
    verifier = keys.verifier()
    for index in (0, len(signed.body) // 2, len(signed.body) - 1):
        assert verifier.verify(replace(signed, body=flip(signed.body, index))) is False
    # A consistent but different statement with the old signature.
    other = prepare(seq=2)
    forged = m.Signed(body=codec.encode(other), signature=signed.signature, statement=other)
    assert verifier.verify(forged) is False
    assert verifier.statistics()["failed_bad_signature"] == 1


def test_tampered_signature_fails(keys):
    signed = keys.signer("replica", 0).sign(prepare())
    verifier = keys.verifier()
    for index in (0, 31, 32, 63):  # both halves matter, in both schemes
        assert verifier.verify(replace(signed, signature=flip(signed.signature, index))) is False
    assert verifier.verify(replace(signed, signature=signed.signature[:63])) is False
    assert verifier.verify(replace(signed, signature=b"")) is False
    assert verifier.verify(signed) is True


def test_wrong_key_fails(scheme):
    mine, theirs = make_keys(scheme, seed=1), make_keys(scheme, seed=2)
    signed = theirs.signer("replica", 0).sign(prepare())
    assert mine.verifier().verify(signed) is False
    assert theirs.verifier().verify(signed) is True


def test_a_body_cannot_be_paired_with_another_statement(keys):
    """The signature vouches for the body; the statement must be the body's own."""
    signed = keys.signer("replica", 0).sign(prepare(seq=1))
    verifier = keys.verifier()
    assert verifier.verify(signed)  # now cached
    lie = m.Signed(body=signed.body, signature=signed.signature, statement=prepare(seq=9))
    assert verifier.verify(lie) is False
    # Claiming another signer for the same bytes does not work either.
    lie = m.Signed(body=signed.body, signature=signed.signature, statement=prepare(replica=1))
    assert verifier.verify(lie) is False
    assert verifier.statistics()["failed_body_mismatch"] == 2


def test_unknown_signer_fails(scheme, keys):
    # Replica 9 does not exist in a 4-replica key set. (For SimKeys, same seed: the
    # signature itself is right, only the identity bound rejects it.)
    big = Ed25519Keys(10, seed=1) if scheme == "ed25519" else SimKeys(1)
    signed = big.signer("replica", 9).sign(prepare(replica=9))
    verifier = keys.verifier()
    assert verifier.verify(signed) is False
    assert verifier.statistics()["failed_unknown_signer"] == 1


def test_sim_keys_hand_out_only_known_identities():
    keys = SimKeys(7, n_replicas=4, n_clients=2)
    with pytest.raises(ValueError):
        keys.signer("replica", 4)
    with pytest.raises(ValueError):
        keys.signer("client", 2)
    with pytest.raises(ValueError):
        keys.signer("admin", 1)
    with pytest.raises(ValueError):
        keys.signer("root", 0)


def test_sim_keys_are_deterministic_per_seed():
    statement = prepare()
    a = SimKeys(42).signer("replica", 0).sign(statement)
    b = SimKeys(42).signer("replica", 0).sign(statement)
    c = SimKeys(43).signer("replica", 0).sign(statement)
    assert a.signature == b.signature
    assert a.signature != c.signature
    # Each identity has its own secret.
    assert SimKeys(42).signer("replica", 1).sign_bytes(b"x") != SimKeys(42).signer(
        "replica", 0
    ).sign_bytes(b"x")


def test_seeded_ed25519_keys_are_deterministic():
    assert Ed25519Keys(2, 1, seed=9).public_keys == Ed25519Keys(2, 1, seed=9).public_keys
    assert Ed25519Keys(2, seed=9).public_keys != Ed25519Keys(2, seed=10).public_keys
    assert Ed25519Keys(2).public_keys != Ed25519Keys(2).public_keys  # fresh random keys


def test_sign_bytes_and_domain_separation(keys):
    admin = keys.signer("admin", 0)
    verifier = keys.verifier()
    signature = admin.sign_bytes(b"pause node 2")
    assert verifier.verify_bytes(("admin", 0), b"pause node 2", signature)
    assert not verifier.verify_bytes(("admin", 0), b"pause node 3", signature)
    assert not verifier.verify_bytes(("replica", 0), b"pause node 2", signature)
    assert not verifier.verify_bytes(("admin", 0), b"pause node 2", flip(signature, 40))
    assert not verifier.verify_bytes(("nobody", 0), b"pause node 2", signature)
    assert not verifier.verify_bytes("junk", b"pause node 2", signature)  # type: ignore[arg-type]
    # A raw-bytes signature of a body is not a statement signature, and vice versa.
    replica = keys.signer("replica", 0)
    signed = replica.sign(prepare())
    assert not verifier.verify(replace(signed, signature=replica.sign_bytes(signed.body)))
    assert not verifier.verify_bytes(("replica", 0), signed.body, signed.signature)


def test_verify_never_raises_on_junk(keys):
    verifier = keys.verifier()
    junk = [
        m.Signed(body=b"", signature=b"", statement=prepare()),
        m.Signed(body=b"\xff" * 10, signature=bytes(64), statement=prepare()),
        m.Signed(body=b"x", signature=bytes(64), statement=m.NULL_BATCH),  # type: ignore
        m.Signed(body=b"x", signature=bytes(64), statement=None),  # type: ignore
        m.Signed(body="text", signature=bytes(64), statement=prepare()),  # type: ignore
        m.Signed(
            body=b"x",
            signature=bytes(64),
            statement=m.Prepare(view=0, seq=1, digest=DIGEST, replica="0"),
        ),  # type: ignore
        m.Signed(
            body=b"x",
            signature=bytes(64),
            statement=m.Prepare(
                view=object(),
                seq=1,
                digest=DIGEST,  # type: ignore
                replica=0,
            ),
        ),
    ]
    for signed in junk:
        assert verifier.verify(signed) is False
        assert verifier.verify_deep(signed) is False
    assert verifier.statistics()["failed"] == 2 * len(junk)


@settings(max_examples=50, deadline=None)
@given(message=ms.wire_messages())
def test_verify_deep_rejects_random_signatures(message):
    """Messages with random signatures never verify, and verifying never raises."""
    assert SimKeys(0).verifier().verify_deep(message) is False


@settings(max_examples=50, deadline=None)
@given(statement=ms.statements())
def test_any_statement_round_trips(statement):
    keys = SimKeys(0)
    kind, id = m.signer_of(statement)
    signed = keys.signer(kind, id).sign(statement)
    verifier = keys.verifier()
    assert verifier.verify(signed)
    assert verifier.verify(codec.decode_untrusted(codec.encode(signed)))


# --------------------------------------------------------------------------
# The cache
# --------------------------------------------------------------------------


def test_cache_verifies_each_message_once(keys):
    verifier = keys.verifier()
    signed = keys.signer("replica", 0).sign(prepare())
    copy = codec.decode_untrusted(codec.encode(signed))  # equal, but another object
    assert verifier.verify(signed)
    assert verifier.verify(signed)
    assert verifier.verify(copy)
    stats = verifier.statistics()
    assert (stats["verified"], stats["cache_hits"], stats["failed"]) == (1, 2, 0)
    bad = replace(signed, signature=flip(signed.signature, 0))
    assert not verifier.verify(bad)
    assert not verifier.verify(bad)  # failures are not cached as successes
    stats = verifier.statistics()
    assert (stats["verified"], stats["cache_hits"], stats["failed"]) == (1, 2, 2)


def test_the_same_object_failing_again_is_not_checked_again(keys, monkeypatch):
    """A forged message asked twice in a row (the node, then the replica) costs one Ed25519
    check; each ask still counts as a failure, and nothing else is answered from it: an equal
    copy is checked afresh, and a good message after it verifies."""
    verifier = keys.verifier()
    checks = []
    real_check = verifier._check
    monkeypatch.setattr(verifier, "_check", lambda *a: checks.append(a) or real_check(*a))
    signed = keys.signer("client", 0).sign(m.Request(op=b"op", timestamp=1, client=0))
    bad = replace(signed, signature=flip(signed.signature, 0))
    assert not verifier.verify(bad)
    assert not verifier.verify(bad)
    assert len(checks) == 1
    stats = verifier.statistics()
    assert (stats["failed"], stats["failed_bad_signature"]) == (2, 2)
    copy = replace(bad)  # equal, another object
    assert not verifier.verify(copy)
    assert len(checks) == 2
    assert verifier.verify(signed)
    assert not verifier.verify(bad)  # no longer the last failure: checked again
    assert len(checks) == 4


def test_cache_is_bounded_lru(keys):
    verifier = keys.verifier(cache_entries=2)
    signer = keys.signer("replica", 0)
    a, b, c = (signer.sign(prepare(seq=s)) for s in (1, 2, 3))
    for signed in (a, b, a, c):  # touching a makes b the least recently used
        assert verifier.verify(signed)
    assert verifier.statistics()["cache_entries"] == 2
    assert verifier.verify(a)
    assert verifier.statistics()["cache_hits"] == 2
    assert verifier.verify(b)  # evicted: verified again
    stats = verifier.statistics()
    assert (stats["verified"], stats["cache_hits"]) == (4, 2)


def test_cache_is_bounded_in_bytes(keys):
    verifier = keys.verifier(cache_bytes=10)  # smaller than any body: nothing is kept
    signed = keys.signer("replica", 0).sign(prepare())
    assert verifier.verify(signed) and verifier.verify(signed)
    stats = verifier.statistics()
    assert (stats["verified"], stats["cache_hits"], stats["cache_entries"]) == (2, 0, 0)


# --------------------------------------------------------------------------
# verify_deep: every nesting place
# --------------------------------------------------------------------------


def corrupt(signed: m.Signed) -> m.Signed:
    return replace(signed, signature=flip(signed.signature, 5))


def build_messages(keys, bad: str | None):
    """Every nesting place: the message to check, with the part named `bad` corrupted."""

    def sign(kind, id, statement, name):
        signed = keys.signer(kind, id).sign(statement)
        return corrupt(signed) if name == bad else signed

    requests = tuple(
        sign("client", c, m.Request(op=b"op%d" % c, timestamp=1, client=c), f"request{c}")
        for c in range(CLIENTS)
    )
    batch = m.Batch(batch_time=5, requests=requests)
    header = sign(
        "replica",
        0,
        m.PrePrepare(view=0, seq=1, digest=batch_digest(batch), replica=0),
        "proposal.pre_prepare",
    )
    proposal = m.Proposal(pre_prepare=header, batch=batch)

    checkpoints = tuple(
        sign("replica", i, m.Checkpoint(seq=128, state_digest=DIGEST, replica=i), f"checkpoint{i}")
        for i in range(3)
    )
    cert_pp = sign(
        "replica", 0, m.PrePrepare(view=0, seq=129, digest=DIGEST, replica=0), "cert.pre_prepare"
    )
    cert_prepares = tuple(
        sign("replica", i, m.Prepare(view=0, seq=129, digest=DIGEST, replica=i), f"cert.prepare{i}")
        for i in (1, 2)
    )
    cert = m.PreparedCert(pre_prepare=cert_pp, prepares=cert_prepares)

    def view_change(i):
        return sign(
            "replica",
            i,
            m.ViewChange(
                view=1,
                stable_seq=128,
                state_digest=DIGEST,
                checkpoint_proof=checkpoints,
                prepared=(cert,),
                replica=i,
            ),
            f"view_change{i}",
        )

    vcs = tuple(view_change(i) for i in (1, 2, 3))
    re_issued = tuple(
        sign(
            "replica",
            1,
            m.PrePrepare(view=1, seq=129, digest=DIGEST, replica=1),
            "new_view.pre_prepare",
        )
        for _ in range(1)
    )
    new_view = sign(
        "replica",
        1,
        m.NewView(view=1, view_changes=vcs, pre_prepares=re_issued, replica=1),
        "new_view",
    )
    return {"proposal": proposal, "view_change": vcs[0], "new_view": new_view}


NESTING_PLACES = {
    # bad part -> the messages whose deep check must fail
    "request0": ["proposal"],
    "request2": ["proposal"],
    "proposal.pre_prepare": ["proposal"],
    "checkpoint0": ["view_change", "new_view"],
    "checkpoint2": ["view_change", "new_view"],
    "cert.pre_prepare": ["view_change", "new_view"],
    "cert.prepare2": ["view_change", "new_view"],
    "view_change1": ["view_change", "new_view"],
    "view_change3": ["new_view"],
    "new_view.pre_prepare": ["new_view"],
    "new_view": ["new_view"],
}


def test_verify_deep_accepts_good_messages(keys):
    verifier = keys.verifier()
    for message in build_messages(keys, bad=None).values():
        assert verifier.verify_deep(message) is True


@pytest.mark.parametrize("bad", sorted(NESTING_PLACES))
def test_verify_deep_catches_each_nesting_place(keys, bad):
    messages = build_messages(keys, bad=bad)
    verifier = keys.verifier()
    for name, message in messages.items():
        expected = name not in NESTING_PLACES[bad]
        assert verifier.verify_deep(message) is expected, (bad, name)


def test_shallow_verify_does_not_look_inside(keys):
    messages = build_messages(keys, bad="request1")
    verifier = keys.verifier()
    assert verifier.verify(messages["proposal"].pre_prepare) is True
    assert verifier.verify_deep(messages["proposal"]) is False


# --------------------------------------------------------------------------
# Key files
# --------------------------------------------------------------------------


def test_private_key_file_round_trip_and_mode(tmp_path):
    key = generate_private_key()
    path = tmp_path / "replica-0.key"
    save_private_key(path, key)
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert public_key_bytes(load_private_key(path)) == public_key_bytes(key)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["replica-0.key"]  # no temp files


def test_private_key_mode_ignores_a_permissive_umask(tmp_path):
    old = os.umask(0)
    try:
        save_private_key(tmp_path / "k.key", generate_private_key())
    finally:
        os.umask(old)
    assert stat.S_IMODE((tmp_path / "k.key").stat().st_mode) == 0o600


def test_key_files_refuse_to_overwrite(tmp_path):
    first, second = generate_private_key(), generate_private_key()
    key_path, pub_path = tmp_path / "a.key", tmp_path / "a.pub"
    save_private_key(key_path, first)
    save_public_key(pub_path, first)
    with pytest.raises(FileExistsError):
        save_private_key(key_path, second)
    with pytest.raises(FileExistsError):
        save_public_key(pub_path, second)
    assert public_key_bytes(load_private_key(key_path)) == public_key_bytes(first)
    assert load_public_key(pub_path) == public_key_bytes(first)
    save_private_key(key_path, second, force=True)
    save_public_key(pub_path, public_key_bytes(second), force=True)
    assert public_key_bytes(load_private_key(key_path)) == public_key_bytes(second)
    assert load_public_key(pub_path) == public_key_bytes(second)
    assert stat.S_IMODE(key_path.stat().st_mode) == 0o600
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.key", "a.pub"]


@pytest.mark.parametrize("loader", [load_private_key, load_public_key])
@pytest.mark.parametrize(
    "content", [None, b"", b"not hex at all\n", b"abcd\n", b"\xff\xfe", b"00" * 31 + b"\n"]
)
def test_missing_or_corrupt_key_files_name_the_file(tmp_path, loader, content):
    path = tmp_path / "replica-3.key"
    if content is not None:
        path.write_bytes(content)
    with pytest.raises(ConfigError) as info:
        loader(path)
    assert info.value.file == str(path)
    assert str(path) in str(info.value)
    assert "bft keygen" in str(info.value)


def test_loaded_keys_sign_and_verify(tmp_path):
    from bft.crypto import Signer, Verifier

    key = generate_private_key()
    save_private_key(tmp_path / "client-1.key", key)
    save_public_key(tmp_path / "client-1.pub", key)
    signer = Signer("client", 1, load_private_key(tmp_path / "client-1.key"))
    verifier = Verifier({("client", 1): load_public_key(tmp_path / "client-1.pub")})
    assert verifier.verify(signer.sign(m.Request(op=b"x", timestamp=3, client=1)))
