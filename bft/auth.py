"""Replies authenticated with MACs over pairwise keys, as PBFT authenticates them.

PBFT (OSDI'99 4.1, TOCS'02 3.2) signs nothing a single party consumes: a
reply is read by one client only, so a MAC under a key that replica i and
client c share convinces c that i sent it, and costs ~2 us instead of an
Ed25519 signature (~25 us) plus its verification (~70 us). Requests and every
replica-to-replica message stay signed: those must convince third parties.

Pairwise keys (`PairwiseKeys`: one party's view, `key(peer) -> bytes | None`):

* `Ed25519PairwiseKeys`: static Diffie-Hellman on the identities' own keys.
  Each Ed25519 key converts to an X25519 key (libsodium's
  `crypto_sign_ed25519_*_to_curve25519`); replica i computes
  X25519(x_i, X_c) and client c computes X25519(x_c, X_i), the same secret,
  which only the holders of i's or c's private key can compute. The 32-byte
  MAC key is HKDF-SHA256 of that secret with `info` naming the protocol, the
  replica id, the client id and both public keys, so each (replica, client)
  pair has its own key and no key serves another pair or another purpose.
  Keys are derived on first use (~100 us) and cached per peer.
* `SimPairwiseKeys`: the simulator's keys, a deterministic secret per
  (replica, client) derived from the simulation's seed (like `SimKeys`).

`ReplyAuth` is one party's side: a replica `seal`s its replies into
`MacReply`s, a client `check`s them. A replica seals only replies naming
itself, so a replica (a Byzantine one included) can MAC only as itself: its
keys are those it shares with clients, and every key names the replica.
`reply_auth_for(signer, verifier)` builds it from the keys a node or client
already has; `authenticated_reply` accepts either form of reply (tools).

Nothing here raises on bad input from the network: a check that fails is a
`False`, counted by reason in `statistics()`.
"""

from __future__ import annotations

import hmac
from collections.abc import Callable
from typing import Any, Protocol

import cbor2
import nacl.bindings
import nacl.exceptions
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

from bft import codec
from bft.crypto import sha256
from bft.messages import MAC_SIZE, PUBLIC_KEY_SIZE, MacReply, Reply, Signed

__all__ = [
    "MAX_CACHED_KEYS",
    "Ed25519PairwiseKeys",
    "PairwiseKeys",
    "ReplyAuth",
    "SimPairwiseKeys",
    "authenticated_reply",
    "reply_auth_for",
    "reply_mac",
    "sim_reply_auth",
]

_PARTIES = ("replica", "client")
_HKDF_SALT = b"bft-udp/v1/reply-mac"
_HKDF_INFO = b"bft-udp/v1/reply-mac-key\x00"
_SIM_DOMAIN = b"bft-udp/v1/sim-reply-key\x00"
_ID_BOUND = 2**63  # ids are U64 fields on the wire

#: Pairwise keys kept per party; more (only junk peer ids could get there) start afresh.
MAX_CACHED_KEYS = 65536


def reply_mac(key: bytes, body: bytes) -> bytes:
    """The MAC of a reply body: HMAC-SHA256 under the pairwise key (32 bytes)."""
    return hmac.digest(key, body, "sha256")


def _other(kind: str) -> str:
    return "client" if kind == "replica" else "replica"


def _check_party(kind: str, id: int) -> None:
    if kind not in _PARTIES:
        raise ValueError(f"reply keys are for replicas and clients, not {kind!r}")
    if isinstance(id, bool) or not isinstance(id, int) or not 0 <= id < _ID_BOUND:
        raise ValueError(f"identity id must be an int in [0, 2**63), got {id!r}")


class PairwiseKeys(Protocol):
    """One party's (`kind`, `id`) pairwise reply keys: the key it shares with each peer.

    A replica's peers are clients and a client's peers are replicas;
    `key(peer)` is the 32-byte key the two share (the peer computes the same
    one), or None when there is none (an unknown peer).
    """

    kind: str
    id: int

    def key(self, peer: int) -> bytes | None: ...


class _CachedKeys:
    """Caches derived keys per peer (bounded); subclasses provide `_derive`."""

    kind: str
    id: int

    def __init__(self, kind: str, id: int) -> None:
        _check_party(kind, id)
        self.kind = kind
        self.id = id
        self._keys: dict[int, bytes] = {}

    def _derive(self, peer: int) -> bytes | None:
        raise NotImplementedError

    def key(self, peer: int) -> bytes | None:
        """The key shared with `peer`, derived on first use; None for an unknown peer."""
        if type(peer) is not int:  # bool is an int subclass, and True == 1 in the cache
            return None
        key = self._keys.get(peer)
        if key is None:
            if not 0 <= peer < _ID_BOUND:
                return None
            key = self._derive(peer)
            if key is None:
                return None  # not cached: unknown ids come from the network
            if len(self._keys) >= MAX_CACHED_KEYS:
                self._keys.clear()
            self._keys[peer] = key
        return key

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.kind!r}, {self.id})"


class Ed25519PairwiseKeys(_CachedKeys):
    """Pairwise keys from Ed25519 identity keys: X25519 agreement, then HKDF-SHA256.

    `private_seed` is this party's 32-byte Ed25519 seed (`bft.crypto.Signer.private_seed`);
    `public_key(identity)` returns a peer's 32-byte Ed25519 public key or None
    (`bft.crypto.Verifier.public_key`). A peer whose key is unknown or cannot
    be converted (not a valid point, or one whose agreement is all zeros) has
    no key: its replies cannot be MAC'd (the replica signs them instead).
    """

    def __init__(self, kind: str, id: int, private_seed: bytes,
                 public_key: Callable[[tuple[str, int]], bytes | None]) -> None:
        super().__init__(kind, id)
        if not isinstance(private_seed, bytes) or len(private_seed) != 32:
            raise ValueError("an Ed25519 seed has 32 bytes")
        own_public, secret_key = nacl.bindings.crypto_sign_seed_keypair(private_seed)
        self._own_public = own_public
        self._x25519_secret = nacl.bindings.crypto_sign_ed25519_sk_to_curve25519(secret_key)
        self._public_key = public_key

    def _derive(self, peer: int) -> bytes | None:
        peer_public = self._public_key((_other(self.kind), peer))
        if not isinstance(peer_public, bytes) or len(peer_public) != PUBLIC_KEY_SIZE:
            return None
        try:
            peer_x25519 = nacl.bindings.crypto_sign_ed25519_pk_to_curve25519(peer_public)
            shared = nacl.bindings.crypto_scalarmult(self._x25519_secret, peer_x25519)
        except (nacl.exceptions.RuntimeError, nacl.exceptions.ValueError,
                nacl.exceptions.TypeError):
            return None  # not a point, or a low-order one (libsodium refuses a zero result)
        if self.kind == "replica":
            replica, client, replica_pk, client_pk = self.id, peer, self._own_public, peer_public
        else:
            replica, client, replica_pk, client_pk = peer, self.id, peer_public, self._own_public
        info = (_HKDF_INFO + replica.to_bytes(8, "big") + client.to_bytes(8, "big")
                + replica_pk + client_pk)
        return HKDF(algorithm=hashes.SHA256(), length=MAC_SIZE, salt=_HKDF_SALT,
                    info=info).derive(shared)


class SimPairwiseKeys(_CachedKeys):
    """The simulator's pairwise keys: SHA-256 of the seed and the (replica, client) pair.

    Deterministic and fast; not secure against a party that holds the seed
    (like `bft.crypto.SimKeys`): a simulated node is handed only its own
    `ReplyAuth`. With `n_replicas` / `n_clients`, peers outside `0..n-1`
    have no key.
    """

    def __init__(self, seed: int | bytes, kind: str, id: int, *,
                 n_replicas: int | None = None, n_clients: int | None = None) -> None:
        super().__init__(kind, id)
        if isinstance(seed, bool) or not isinstance(seed, (int, bytes)):
            raise TypeError(f"seed must be an int or bytes, got {type(seed).__name__}")
        self._seed = seed if isinstance(seed, bytes) else str(seed).encode("ascii")
        self._limit = n_clients if kind == "replica" else n_replicas

    def _derive(self, peer: int) -> bytes | None:
        if self._limit is not None and peer >= self._limit:
            return None
        replica, client = (self.id, peer) if self.kind == "replica" else (peer, self.id)
        return sha256(_SIM_DOMAIN + self._seed + f"/{replica}/{client}".encode("ascii"))


class ReplyAuth:
    """One party's reply MACs: a replica seals its replies, a client checks them.

    Guarantees: `seal` MACs only replies naming this replica (ValueError
    otherwise: a local bug), under the key of the client the reply names;
    `check` is True only for a `MacReply` naming this client whose MAC is
    right under the key shared with the replica it names and whose statement
    is exactly what its body encodes. Never raises on bad input.
    """

    def __init__(self, keys: PairwiseKeys) -> None:
        self.keys = keys
        self.kind = keys.kind
        self.id = keys.id
        self._stats = {
            "sealed": 0, "seal_no_key": 0, "checked": 0, "failed": 0,
            "failed_not_for_me": 0, "failed_unknown_peer": 0, "failed_body_mismatch": 0,
            "failed_bad_mac": 0,
        }

    def seal(self, reply: Reply) -> MacReply | None:
        """`reply` as a `MacReply` for its client, or None if there is no key for that client.

        Raises ValueError if this is not the replica the reply names (a party
        authenticates only its own replies) or this party is a client.
        """
        if self.kind != "replica" or not isinstance(reply, Reply) or reply.replica != self.id:
            raise ValueError(f"{self.kind} {self.id} cannot authenticate {reply!r}")
        key = self.keys.key(reply.client)
        if key is None:
            self._stats["seal_no_key"] += 1
            return None
        body = codec.encode(reply)
        self._stats["sealed"] += 1
        return codec.new_mac_reply(body, reply_mac(key, body), reply, (body, reply))

    def _fail(self, reason: str) -> bool:
        self._stats["failed"] += 1
        self._stats["failed_" + reason] += 1
        return False

    def check(self, message: MacReply) -> bool:
        """True iff `message` is a reply to this client that its replica MAC'd as is."""
        if self.kind != "client" or not isinstance(message, MacReply):
            return self._fail("not_for_me")
        reply, body, mac = message.statement, message.body, message.mac
        if not isinstance(reply, Reply) or reply.client != self.id:
            return self._fail("not_for_me")
        if not isinstance(body, bytes) or not isinstance(mac, bytes):
            return self._fail("bad_mac")
        key = self.keys.key(reply.replica)
        if key is None:
            return self._fail("unknown_peer")
        checked = message.checked
        if checked is None or checked[0] is not body or checked[1] is not reply:
            try:
                if codec.encode(reply) != body:
                    return self._fail("body_mismatch")
            except (TypeError, ValueError, cbor2.CBOREncodeError):
                return self._fail("body_mismatch")
        if not hmac.compare_digest(reply_mac(key, body), mac):
            return self._fail("bad_mac")
        self._stats["checked"] += 1
        return True

    def statistics(self) -> dict[str, int]:
        """Counters: sealed, seal_no_key, checked, failed (total and per reason)."""
        return dict(self._stats)

    def __repr__(self) -> str:
        return f"ReplyAuth({self.kind!r}, {self.id})"


def reply_auth_for(signer: Any, verifier: Any) -> ReplyAuth | None:
    """The `ReplyAuth` of the party `signer` signs as, from the keys it already has.

    Needs an Ed25519 signer (`private_seed`) and a verifier that hands out
    public keys (`public_key(identity)`), as `bft.crypto.Signer` / `Verifier`.
    Returns None for other schemes (`SimKeys`: use `sim_reply_auth`) and for
    identities other than replicas and clients: such a party signs or accepts
    signed replies only.
    """
    seed = getattr(signer, "private_seed", None)
    public_key = getattr(verifier, "public_key", None)
    kind, id = getattr(signer, "kind", None), getattr(signer, "id", None)
    if not isinstance(seed, bytes) or public_key is None or kind not in _PARTIES:
        return None
    return ReplyAuth(Ed25519PairwiseKeys(kind, id, seed, public_key))  # type: ignore[arg-type]


def sim_reply_auth(seed: int | bytes, kind: str, id: int, *, n_replicas: int | None = None,
                   n_clients: int | None = None) -> ReplyAuth:
    """The simulator's `ReplyAuth` of (`kind`, `id`); pass the seed given to `SimKeys`."""
    return ReplyAuth(SimPairwiseKeys(seed, kind, id, n_replicas=n_replicas, n_clients=n_clients))


def authenticated_reply(message: Any, verifier: Any, reply_auth: ReplyAuth | None) -> Reply | None:
    """The `Reply` in `message` if it is authentic for the client of `reply_auth`, else None.

    Accepts a `MacReply` that `reply_auth` checks and a `Signed` reply that
    `verifier` verifies (replies of replicas that sign them). For tools that
    wait for replies outside `bft.client.Client` (barriers).
    """
    if isinstance(message, MacReply):
        if reply_auth is not None and reply_auth.check(message):
            return message.statement
        return None
    if isinstance(message, Signed) and isinstance(message.statement, Reply):
        return message.statement if verifier.verify(message) else None
    return None
