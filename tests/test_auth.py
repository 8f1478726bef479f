"""bft.auth: reply MACs over pairwise keys (PBFT authenticates replies with MACs, OSDI'99 4.1).

Properties: replica i and client c derive the same key and no other pair shares it (for
Ed25519-derived keys and the simulator's keys); a MacReply checks only for its client, under
the key of the replica it names, with its body and MAC exactly as sealed.
"""

from __future__ import annotations

import dataclasses
import itertools

import nacl.bindings
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from bft import codec
from bft.auth import (
    Ed25519PairwiseKeys,
    ReplyAuth,
    SimPairwiseKeys,
    authenticated_reply,
    reply_auth_for,
    reply_mac,
    sim_reply_auth,
)
from bft.crypto import Ed25519Keys, SimKeys
from bft.errors import MalformedMessage
from bft.messages import MacReply, Reply, Request

N, CLIENTS = 4, 3
D = bytes(range(32))  # the digest of the request a reply answers
ED_KEYS = Ed25519Keys(N, CLIENTS, seed=7)
ED_VERIFIER = ED_KEYS.verifier()


def ed_auth(kind: str, id: int) -> ReplyAuth:
    auth = reply_auth_for(ED_KEYS.signer(kind, id), ED_VERIFIER)
    assert auth is not None
    return auth


def sim_auth(kind: str, id: int) -> ReplyAuth:
    return sim_reply_auth(7, kind, id, n_replicas=N, n_clients=CLIENTS)


SCHEMES = {"ed25519": ed_auth, "sim": sim_auth}
# one ReplyAuth per party and scheme, built once (an Ed25519 key derivation takes ~100 us)
PARTIES = {
    (scheme, kind, id): make(kind, id)
    for scheme, make in SCHEMES.items()
    for kind, count in (("replica", N), ("client", CLIENTS))
    for id in range(count)
}


def party(scheme: str, kind: str, id: int) -> ReplyAuth:
    return PARTIES[(scheme, kind, id)]


def sealed(scheme: str, replica: int, client: int, result: bytes = b"ok", t: int = 5) -> MacReply:
    out = party(scheme, "replica", replica).seal(Reply(0, t, client, replica, D, result))
    assert out is not None
    return out


def over_the_wire(message: MacReply) -> MacReply:
    decoded = codec.decode_untrusted(codec.encode(message))
    assert isinstance(decoded, MacReply)
    return decoded


schemes = pytest.mark.parametrize("scheme", sorted(SCHEMES))


# --------------------------------------------------------------------------
# Pairwise keys
# --------------------------------------------------------------------------


@schemes
@settings(max_examples=30)
@given(replica=st.integers(0, N - 1), client=st.integers(0, CLIENTS - 1))
def test_replica_and_client_derive_the_same_key(scheme: str, replica: int, client: int) -> None:
    key = party(scheme, "replica", replica).keys.key(client)
    assert key is not None and len(key) == 32
    assert party(scheme, "client", client).keys.key(replica) == key


@schemes
def test_every_pair_has_its_own_key(scheme: str) -> None:
    keys = {(i, c): party(scheme, "replica", i).keys.key(c)
            for i, c in itertools.product(range(N), range(CLIENTS))}
    assert len(set(keys.values())) == len(keys)


def test_keys_depend_on_the_key_material() -> None:
    other = Ed25519Keys(N, CLIENTS, seed=8)
    auth = reply_auth_for(other.signer("replica", 0), other.verifier())
    assert auth is not None and auth.keys.key(0) != party("ed25519", "replica", 0).keys.key(0)
    assert sim_reply_auth(8, "replica", 0).keys.key(0) != party("sim", "replica", 0).keys.key(0)


def test_ed25519_key_is_the_x25519_agreement_through_hkdf() -> None:
    """Not the raw Diffie-Hellman secret (HKDF binds it to the pair), but derived from it."""
    seed = ED_KEYS.signer("replica", 1).private_seed
    _, sk = nacl.bindings.crypto_sign_seed_keypair(seed)
    peer = nacl.bindings.crypto_sign_ed25519_pk_to_curve25519(
        ED_VERIFIER.public_key(("client", 2)))
    raw = nacl.bindings.crypto_scalarmult(nacl.bindings.crypto_sign_ed25519_sk_to_curve25519(sk),
                                          peer)
    key = party("ed25519", "replica", 1).keys.key(2)
    assert key != raw
    # a party that lied about which identities it names in the key gets another key
    swapped = Ed25519PairwiseKeys("client", 1, seed, ED_VERIFIER.public_key)  # replica 1's seed
    assert swapped.key(2) is not None and swapped.key(2) != key


@pytest.mark.parametrize("peer_key", [
    None,
    b"short",
    bytes(32),  # the identity point: low order
    bytes([1]) + bytes(31),  # the neutral element
    bytes([0xEC]) + bytes([0xFF] * 30) + bytes([0x7F]),  # not canonical
], ids=["unknown", "short", "zero", "neutral", "noncanonical"])
def test_peer_without_a_usable_key_has_none(peer_key: bytes | None) -> None:
    keys = Ed25519PairwiseKeys("replica", 0, bytes(range(32)), lambda identity: peer_key)
    assert keys.key(1) is None
    auth = ReplyAuth(keys)
    assert auth.seal(Reply(0, 1, 1, 0, D, b"r")) is None
    assert auth.statistics()["seal_no_key"] == 1


@schemes
def test_unknown_and_junk_peers_have_no_key(scheme: str) -> None:
    assert party(scheme, "replica", 0).keys.key(CLIENTS) is None
    assert party(scheme, "client", 0).keys.key(N) is None
    for junk in (-1, 2**63, True, "1"):
        assert party(scheme, "client", 0).keys.key(junk) is None  # type: ignore[arg-type]


def test_sim_keys_without_limits_cover_every_id() -> None:
    a = SimPairwiseKeys(3, "replica", 9)
    b = SimPairwiseKeys(3, "client", 1000)
    assert a.key(1000) == b.key(9) is not None


def test_reply_auth_for_needs_ed25519_replica_or_client() -> None:
    sim = SimKeys(1, n_replicas=N, n_clients=CLIENTS)
    assert reply_auth_for(sim.signer("replica", 0), sim.verifier()) is None
    assert reply_auth_for(ED_KEYS.signer("admin", 0), ED_VERIFIER) is None
    auth = reply_auth_for(ED_KEYS.signer("client", 1), ED_VERIFIER)
    assert auth is not None and (auth.kind, auth.id) == ("client", 1)


# --------------------------------------------------------------------------
# Sealing and checking
# --------------------------------------------------------------------------


@schemes
def test_sealed_reply_checks_for_its_client_after_the_wire(scheme: str) -> None:
    message = sealed(scheme, 2, 1, b"result")
    assert message.mac == reply_mac(party(scheme, "client", 1).keys.key(2), message.body)
    assert message.statement == Reply(0, 5, 1, 2, D, b"result")
    client = party(scheme, "client", 1)
    assert client.check(message)
    assert client.check(over_the_wire(message))


@schemes
def test_mac_under_another_replicas_key_is_rejected(scheme: str) -> None:
    """Replica 3 cannot authenticate a reply as replica 2: the client checks under key (2, c)."""
    client = party(scheme, "client", 1)
    claim = Reply(0, 5, 1, 2, D, b"forged")
    body = codec.encode(claim)
    for liar in (0, 1, 3):
        mac = reply_mac(party(scheme, "replica", liar).keys.key(1), body)
        assert not client.check(MacReply(body, mac, claim))
    assert client.statistics()["failed_bad_mac"] == 3


@schemes
def test_mac_for_another_client_is_rejected(scheme: str) -> None:
    # a reply MAC'd for client 0, checked by client 0 ... and by client 1 it does not name
    message = sealed(scheme, 2, 0)
    assert party(scheme, "client", 0).check(message)
    assert not party(scheme, "client", 1).check(message)
    # a reply naming client 1 but MAC'd under the key replica 2 shares with client 0
    claim = Reply(0, 5, 1, 2, D, b"ok")
    body = codec.encode(claim)
    mac = reply_mac(party(scheme, "replica", 2).keys.key(0), body)
    assert not party(scheme, "client", 1).check(MacReply(body, mac, claim))


@schemes
@settings(max_examples=60)
@given(data=st.data())
def test_any_bit_flip_is_rejected(scheme: str, data: st.DataObject) -> None:
    """Flip one bit of the datagram: it no longer decodes, or its MAC no longer checks
    (or, for a flip in the client field, it no longer names this client)."""
    wire = bytearray(codec.encode(sealed(scheme, 1, 2, b"some result")))
    bit = data.draw(st.integers(0, 8 * len(wire) - 1), label="bit")
    wire[bit // 8] ^= 1 << (bit % 8)
    try:
        message = codec.decode_untrusted(bytes(wire))
    except MalformedMessage:
        return
    assert not (isinstance(message, MacReply) and party(scheme, "client", 2).check(message))


@schemes
def test_statement_that_is_not_the_body_is_rejected(scheme: str) -> None:
    message = sealed(scheme, 1, 2, b"truth")
    lie = dataclasses.replace(message, statement=Reply(0, 5, 2, 1, D, b"lie"), checked=None)
    client = party(scheme, "client", 2)
    assert not client.check(lie)
    assert client.statistics()["failed_body_mismatch"] >= 1
    # a stale `checked` pairing cannot vouch for another statement either
    stale = dataclasses.replace(message, statement=Reply(0, 5, 2, 1, D, b"lie"))
    assert not client.check(stale)


def test_check_never_raises_on_junk() -> None:
    client = party("sim", "client", 0)
    reply = Reply(0, 1, 0, 1, D, b"x")
    junk = [
        MacReply(b"", b"", reply),
        MacReply(codec.encode(reply), b"short", reply),
        MacReply(None, None, reply),  # type: ignore[arg-type]
        MacReply(codec.encode(reply), bytes(32), Request(b"", 1, 0)),  # type: ignore[arg-type]
        MacReply(codec.encode(reply), bytes(32), Reply(0, 1, 0, 2**70, D, b"x")),
        "not a message",
    ]
    for message in junk:
        assert client.check(message) is False  # type: ignore[arg-type]


def test_a_replica_seals_only_its_own_replies() -> None:
    replica = party("sim", "replica", 1)
    with pytest.raises(ValueError):
        replica.seal(Reply(0, 5, 0, 2, D, b"as replica 2"))
    with pytest.raises(ValueError):
        party("sim", "client", 0).seal(Reply(0, 5, 0, 0, D, b"a client"))
    assert replica.seal(Reply(0, 5, CLIENTS, 1, D, b"unknown client")) is None
    assert not replica.check(sealed("sim", 1, 0))  # replicas do not check replies


def test_authenticated_reply_accepts_both_forms() -> None:
    keys = SimKeys(7, n_replicas=N, n_clients=CLIENTS)
    verifier = keys.verifier()
    client = party("sim", "client", 0)
    signed = keys.signer("replica", 3).sign(Reply(0, 5, 0, 3, D, b"signed"))
    assert authenticated_reply(signed, verifier, client) == signed.statement
    assert authenticated_reply(signed, verifier, None) == signed.statement
    mac = sealed("sim", 1, 0, b"mac'd")
    assert authenticated_reply(mac, verifier, client) == mac.statement
    assert authenticated_reply(mac, verifier, None) is None
    assert authenticated_reply(sealed("sim", 1, 1), verifier, client) is None
    forged = dataclasses.replace(signed, signature=bytes(64))
    assert authenticated_reply(forged, verifier, client) is None
    request = keys.signer("client", 0).sign(Request(b"", 1, 0))
    assert authenticated_reply(request, verifier, client) is None
