"""Digests, signing and verification.

Two signature schemes share one interface (`SignerProtocol`,
`VerifierProtocol`), so replica and client code takes either:

* Ed25519 (`Signer`, `Verifier`): what real nodes use; keys live in files
  (`save_private_key`, `load_private_key`, ...) or in memory (`Ed25519Keys`).
  Signing and verification run in libsodium (PyNaCl): ~68 us per verify
  against ~120 us with `cryptography` (issue 7). Ed25519 libraries differ on
  edge-case signatures, so every node and client signs and verifies with this
  one; `cryptography` only reads and writes key objects.
* `SimKeys`: keyed BLAKE2b with one secret per identity, for the deterministic
  simulator, where an Ed25519 verification (~110 us) would dominate the run.
  A simulated node is handed only its own signer, so it can sign only as
  itself, which is all a signature scheme has to guarantee there.

What is signed is a domain-separation prefix naming the signer's kind followed
by the body: the canonical encoding of the statement (`bft.codec.encode`). A
signature over a statement can therefore never be replayed as a signature of
another kind of signer, nor as a raw `sign_bytes` signature, and vice versa.

Verification never raises for bad input: a wrong signature, an unknown
signer or a statement that does not match its body is a `False`, counted by
reason in `statistics()`.
"""

from __future__ import annotations

import hashlib
import hmac
import os
from collections import OrderedDict
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any, Protocol, TypeVar, runtime_checkable

import cbor2
import nacl.bindings
import nacl.exceptions
from cryptography.hazmat.primitives.asymmetric.ed25519 import (
    Ed25519PrivateKey,
    Ed25519PublicKey,
)
from cryptography.hazmat.primitives.serialization import (
    Encoding,
    NoEncryption,
    PrivateFormat,
    PublicFormat,
)

from bft import codec
from bft.errors import ConfigError
from bft.messages import (
    PUBLIC_KEY_SIZE,
    SIGNATURE_SIZE,
    STATEMENT_TYPES,
    Batch,
    Checkpoint,
    Commit,
    Fetch,
    FetchState,
    Prepare,
    PrePrepare,
    Proposal,
    Reply,
    Request,
    Signed,
    StateChunk,
    Statement,
    Status,
    signer_of,
)

__all__ = [
    "KINDS",
    "Ed25519Keys",
    "Identity",
    "Signer",
    "SignerProtocol",
    "SimKeys",
    "SimSigner",
    "SimVerifier",
    "Verifier",
    "VerifierProtocol",
    "batch_digest",
    "bytes_domain",
    "generate_private_key",
    "load_private_key",
    "load_public_key",
    "parse_public_key_hex",
    "private_key_from_seed",
    "public_key_bytes",
    "request_digest",
    "save_private_key",
    "save_public_key",
    "sha256",
    "statement_domain",
]

#: The kinds of identity that sign: replicas, clients and the one admin (id 0).
KINDS = ("replica", "client", "admin")

#: ("replica", i), ("client", c) or ("admin", 0).
Identity = tuple[str, int]

#: The statement a signer signs: `sign(Prepare(...))` is a `Signed[Prepare]`.
S = TypeVar("S", bound=Statement)

PRIVATE_KEY_SIZE = 32
_PREFIX = b"bft-udp/v1/"


# --------------------------------------------------------------------------
# Digests
# --------------------------------------------------------------------------


def sha256(data: bytes) -> bytes:
    """SHA-256 of `data` (32 bytes)."""
    return hashlib.sha256(data).digest()


#: Batches whose digest is remembered (see batch_digest).
BATCH_DIGEST_MEMO_SIZE = 1024
BATCH_DIGEST_MEMO_MAX_BYTES = 64 * 1024  # larger batches are not remembered (bounded memory)
_batch_digests: dict[int, tuple[Batch, bytes]] = {}


def batch_digest(batch: Batch) -> bytes:
    """D(batch): SHA-256 of the batch's canonical encoding (binds batch_time and requests).

    Computed once per batch object (several replicas of one simulation, and the checkers,
    digest the same decoded batch): batches are immutable, and the memo holds a reference to
    each, so an id is never reused while remembered."""
    hit = _batch_digests.get(id(batch))
    if hit is not None and hit[0] is batch:
        return hit[1]
    data = codec.encode(batch)
    digest = sha256(data)
    if type(batch) is Batch and len(data) <= BATCH_DIGEST_MEMO_MAX_BYTES:
        if len(_batch_digests) >= BATCH_DIGEST_MEMO_SIZE:
            _batch_digests.clear()  # (cheaper than evicting one by one)
        _batch_digests[id(batch)] = (batch, digest)
    return digest


def request_digest(signed_request: Signed[Request]) -> bytes:
    """Digest of a signed request: SHA-256 of its body as signed (the signature is excluded)."""
    return sha256(signed_request.body)


# --------------------------------------------------------------------------
# Domain separation
# --------------------------------------------------------------------------


def _check_identity(kind: str, id: int) -> None:
    if kind not in KINDS:
        raise ValueError(f"unknown identity kind {kind!r} (expected one of {KINDS})")
    if isinstance(id, bool) or not isinstance(id, int) or id < 0:
        raise ValueError(f"identity id must be a non-negative int, got {id!r}")
    if kind == "admin" and id != 0:
        raise ValueError(f"the admin identity has id 0, got {id}")


def statement_domain(kind: str) -> bytes:
    """The prefix signed before a statement body by a signer of `kind`."""
    return _PREFIX + kind.encode("ascii") + b"/statement\x00"


_STATEMENT_DOMAINS = {kind: statement_domain(kind) for kind in KINDS}


def bytes_domain(kind: str) -> bytes:
    """The prefix signed before raw bytes (`sign_bytes`) by a signer of `kind`."""
    return _PREFIX + kind.encode("ascii") + b"/bytes\x00"


# --------------------------------------------------------------------------
# Ed25519 keys and key files
# --------------------------------------------------------------------------


def generate_private_key() -> Ed25519PrivateKey:
    """A fresh Ed25519 private key from the operating system's randomness."""
    return Ed25519PrivateKey.generate()


def private_key_from_seed(seed: bytes) -> Ed25519PrivateKey:
    """A deterministic Ed25519 key derived from `seed` (for tests and reproducible runs only)."""
    return Ed25519PrivateKey.from_private_bytes(sha256(b"bft-udp/v1/test-key\x00" + seed))


def public_key_bytes(key: Ed25519PrivateKey | Ed25519PublicKey) -> bytes:
    """The 32 raw bytes of the public key of `key` (a private or a public key)."""
    public = key.public_key() if isinstance(key, Ed25519PrivateKey) else key
    return public.public_bytes(Encoding.Raw, PublicFormat.Raw)


def _private_bytes(key: Ed25519PrivateKey) -> bytes:
    return key.private_bytes(Encoding.Raw, PrivateFormat.Raw, NoEncryption())


def _write_atomically(path: Path, data: bytes, *, mode: int, force: bool) -> None:
    """Write `data` to `path` so that readers see either nothing or the whole file.

    The data goes to a temporary file in the same directory (created with
    `mode`, fsynced), which is then linked to `path` (fails if `path` exists)
    or, with `force`, renamed over it.
    """
    path = Path(path)
    if not force and path.exists():
        raise FileExistsError(f"{path} already exists (use force to overwrite)")
    tmp = path.with_name(f".{path.name}.{os.getpid()}.{os.urandom(4).hex()}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, mode)
    try:
        try:
            os.fchmod(fd, mode)  # the umask may have cleared bits we want
            os.write(fd, data)
            os.fsync(fd)
        finally:
            os.close(fd)
        if force:
            os.replace(tmp, path)
        else:
            os.link(tmp, path)  # atomic, and refuses to replace an existing file
    finally:
        tmp.unlink(missing_ok=True)
    try:  # make the new directory entry durable too (best effort)
        dir_fd = os.open(path.parent, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(dir_fd)
    except OSError:
        pass
    finally:
        os.close(dir_fd)


def save_private_key(
    path: str | os.PathLike[str], key: Ed25519PrivateKey, *, force: bool = False
) -> None:
    """Write `key` as a hex text file readable only by its owner (mode 0600).

    The file appears atomically (complete or not at all). An existing file is
    never overwritten unless `force=True` (raises FileExistsError).
    """
    data = (_private_bytes(key).hex() + "\n").encode("ascii")
    _write_atomically(Path(path), data, mode=0o600, force=force)


def save_public_key(
    path: str | os.PathLike[str],
    key: Ed25519PrivateKey | Ed25519PublicKey | bytes,
    *,
    force: bool = False,
) -> None:
    """Write a public key (a key object or its 32 raw bytes) as a hex text file (mode 0644).

    Atomic, and refuses to overwrite unless `force=True`, like `save_private_key`.
    """
    raw = key if isinstance(key, bytes) else public_key_bytes(key)
    if len(raw) != PUBLIC_KEY_SIZE:
        raise ValueError(f"a public key has {PUBLIC_KEY_SIZE} bytes, got {len(raw)}")
    _write_atomically(Path(path), (raw.hex() + "\n").encode("ascii"), mode=0o644, force=force)


def _read_hex_key(path: Path, what: str, size: int) -> bytes:
    fix = "run `bft keygen CONFIG` to create the keys"
    try:
        text = path.read_text(encoding="ascii")
    except FileNotFoundError:
        raise ConfigError(f"{what} file not found", file=str(path), fix=fix) from None
    except UnicodeDecodeError:
        raise ConfigError(
            f"{what} file is corrupt: not hex text",
            file=str(path),
            fix=fix + " (with --force to replace it)",
        ) from None
    except OSError as exc:
        raise ConfigError(f"cannot read {what} file: {exc.strerror}", file=str(path)) from None
    try:
        raw = bytes.fromhex(text.strip())
    except ValueError:
        raw = b""
    if len(raw) != size:
        raise ConfigError(
            f"{what} file is corrupt: expected {size * 2} hex digits",
            file=str(path),
            fix=fix + " (with --force to replace it)",
        )
    return raw


def load_private_key(path: str | os.PathLike[str]) -> Ed25519PrivateKey:
    """Read a private key written by `save_private_key`.

    Raises ConfigError naming the file when it is missing, unreadable or corrupt.
    """
    raw = _read_hex_key(Path(path), "private key", PRIVATE_KEY_SIZE)
    return Ed25519PrivateKey.from_private_bytes(raw)


def load_public_key(path: str | os.PathLike[str]) -> bytes:
    """Read the 32 raw bytes of a public key written by `save_public_key`.

    Raises ConfigError naming the file when it is missing, unreadable or corrupt.
    """
    raw = _read_hex_key(Path(path), "public key", PUBLIC_KEY_SIZE)
    parse_public_key_hex(raw.hex(), file=str(path))  # a point that is not on the curve
    return raw


def parse_public_key_hex(text: str, *, file: str | None = None, field: str | None = None) -> bytes:
    """The 32 raw bytes of a hex public key; ConfigError (naming file and field) if invalid."""
    try:
        raw = bytes.fromhex(text.strip())
    except ValueError:
        raw = b""
    if len(raw) != PUBLIC_KEY_SIZE:
        raise ConfigError(
            f"not a public key: expected {PUBLIC_KEY_SIZE * 2} hex digits",
            file=file,
            field=field,
            fix="paste the key printed by `bft keygen`",
        )
    try:
        Ed25519PublicKey.from_public_bytes(raw)
    except ValueError:
        raise ConfigError(
            "not a valid Ed25519 public key",
            file=file,
            field=field,
            fix="paste the key printed by `bft keygen`",
        ) from None
    return raw


# --------------------------------------------------------------------------
# The interface replica and client code use
# --------------------------------------------------------------------------


@runtime_checkable
class SignerProtocol(Protocol):
    """Signs as one identity (`kind`, `id`)."""

    kind: str
    id: int

    def sign(self, statement: S) -> Signed[S]:
        """The statement signed; ValueError if `signer_of(statement)` is not this identity."""
        ...

    def sign_bytes(self, data: bytes) -> bytes:
        """A 64-byte signature of raw `data` (separate domain from statements)."""
        ...


@runtime_checkable
class VerifierProtocol(Protocol):
    """Checks signatures of every known identity; never raises on bad input."""

    def verify(self, signed: Signed[Statement]) -> bool:
        """True iff `signed` is a valid signature of its statement's signer."""
        ...

    def verify_deep(self, message: Any) -> bool:
        """True iff every `Signed` in `message` (itself included) verifies."""
        ...

    def verify_bytes(self, identity: Identity, data: bytes, signature: bytes) -> bool:
        """True iff `signature` is `identity`'s `sign_bytes(data)`."""
        ...

    def statistics(self) -> dict[str, int]:
        """Counters: verified, failed (and by reason), cache_hits."""
        ...


# --------------------------------------------------------------------------
# Shared signer/verifier logic
# --------------------------------------------------------------------------


class _BaseSigner:
    """Signs statements as (`kind`, `id`); subclasses provide `_raw_sign`."""

    kind: str
    id: int

    def __init__(self, kind: str, id: int) -> None:
        _check_identity(kind, id)
        self.kind = kind
        self.id = id
        self._statement_domain = statement_domain(kind)
        self._bytes_domain = bytes_domain(kind)

    def _raw_sign(self, data: bytes) -> bytes:
        raise NotImplementedError

    def sign(self, statement: S) -> Signed[S]:
        """Encode `statement` canonically and sign the prefixed body.

        Raises ValueError if the statement names another signer than this
        identity (a local bug: a party signs only its own statements), and
        TypeError if it is not a statement at all.
        """
        if not isinstance(statement, STATEMENT_TYPES):
            raise TypeError(f"not a statement: {type(statement).__name__}")
        owner = signer_of(statement)
        if owner != (self.kind, self.id):
            raise ValueError(f"{self.kind} {self.id} cannot sign a statement of {owner}")
        body = codec.encode(statement)
        return codec.new_signed(body, self._raw_sign(self._statement_domain + body),
                                statement, (body, statement))

    def sign_bytes(self, data: bytes) -> bytes:
        """A 64-byte signature of `data`, in a domain no statement signature shares."""
        return self._raw_sign(self._bytes_domain + data)

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.kind!r}, {self.id})"


#: Objects that verified lately, remembered by identity (see _CachingVerifier._passed).
PASSED_MEMO_SIZE = 4096
#: A verified statement whose body is bigger than this is remembered by its cache key only
#: (a hit then needs the strict decoder's word that it came from exactly that body), and the
#: object is not remembered by identity: big requests would pin up to 64 MiB in the cache
#: and 4096 whole messages in the identity memo (issue 21, item 6: memory per stored byte).
CACHED_STATEMENT_MAX_BYTES = 4096

#: Statements with no Signed inside them (verify_deep checks just the one signature).
_FLAT_STATEMENTS = frozenset({Prepare, Commit, PrePrepare, Checkpoint, Status, Request, Reply,
                              Fetch, FetchState, StateChunk})


def _nested(obj: Any) -> Iterator[Any]:
    """The message-like values directly inside `obj` (fields, tuple items, a Signed's statement)."""
    if isinstance(obj, Signed):
        yield obj.statement
    elif isinstance(obj, tuple):
        yield from obj
    elif hasattr(obj, "__dataclass_fields__"):
        for name in obj.__dataclass_fields__:
            value = getattr(obj, name)
            if isinstance(value, tuple) or hasattr(value, "__dataclass_fields__"):
                yield value


class _CachingVerifier:
    """Verification with a bounded LRU cache and counters; subclasses provide `_check`.

    The cache maps (SHA-256 of body, signature) to the statement that was
    found to match the body, so a message is verified once however often it
    arrives, and a cached signature cannot vouch for a different statement.
    For a body over CACHED_STATEMENT_MAX_BYTES it maps to None: a hit then needs
    `Signed.checked` to say the statement was decoded from (or encoded to)
    exactly that body. It holds at most `cache_entries` entries and about
    `cache_bytes` bytes of bodies; the least recently used go first.
    """

    def __init__(self, *, cache_entries: int = 65536, cache_bytes: int = 64 * 1024 * 1024) -> None:
        if cache_entries < 0 or cache_bytes < 0:
            raise ValueError("cache bounds must be non-negative")
        self._cache: OrderedDict[bytes, tuple[Statement | None, int]] = OrderedDict()
        self._cache_entries = cache_entries
        self._cache_bytes = cache_bytes
        self._cached_bytes = 0
        # id -> (the very Signed, its cache key) for objects that verified lately: messages are
        # immutable, so while its entry stays cached the same object is a cache hit without
        # hashing its body (the simulator hands one decoded broadcast to every receiver)
        self._passed: dict[int, tuple[Signed[Statement], bytes]] = {}
        # (the very Signed, why) of the last failure: failures are not cached, but the same
        # (immutable) object asked again at once fails again for the same reason without a
        # second Ed25519 check (the node checks a client's request to learn its address, then
        # the replica checks it: a forged request would otherwise cost two)
        self._failed: tuple[Signed[Statement], str] | None = None
        self._stats = {
            "verified": 0,
            "failed": 0,
            "cache_hits": 0,
            "failed_unknown_signer": 0,
            "failed_bad_signature": 0,
            "failed_body_mismatch": 0,
            "failed_not_a_statement": 0,
        }

    # -- subclass hooks -------------------------------------------------

    def _knows(self, identity: Identity) -> bool:
        raise NotImplementedError

    def _check(self, identity: Identity, data: bytes, signature: bytes) -> bool:
        raise NotImplementedError

    # -- public API -----------------------------------------------------

    def _fail(self, reason: str, signed: Signed[Statement] | None = None) -> bool:
        self._stats["failed"] += 1
        self._stats["failed_" + reason] += 1
        if signed is not None:
            self._failed = (signed, reason)
        return False

    def verify(self, signed: Signed[Statement]) -> bool:
        """True iff the signer named by the statement signed exactly this body.

        Checks: the statement is one, its signer (`signer_of`) has a known
        key, the statement is what the body encodes (so a body cannot be
        paired with a different statement), and the signature over the
        signer's domain prefix and the body as received verifies. Never raises.
        """
        passed = self._passed.get(id(signed))
        if passed is not None and passed[0] is signed and passed[1] in self._cache:
            # this very (immutable) object verified, and its entry is still cached: a cache hit
            # found without hashing the body again
            self._cache.move_to_end(passed[1])
            self._stats["cache_hits"] += 1
            return True
        failed = self._failed
        if failed is not None and failed[0] is signed:
            return self._fail(failed[1])  # this very object just failed: it fails again
        statement = signed.statement
        if not isinstance(statement, STATEMENT_TYPES):
            return self._fail("not_a_statement", signed)
        body, signature = signed.body, signed.signature
        if not isinstance(body, bytes) or not isinstance(signature, bytes):
            return self._fail("bad_signature", signed)
        key = hashlib.sha256(body).digest() + signature
        cached = self._cache.get(key)
        if cached is not None and (
                cached[0] is statement or cached[0] == statement
                or (cached[0] is None and (checked := signed.checked) is not None
                    and checked[0] is body and checked[1] is statement)):
            self._cache.move_to_end(key)
            self._stats["cache_hits"] += 1
            if cached[0] is not None:  # (a big one is not remembered by identity)
                self._passed_now(signed, key)
            return True
        identity = signer_of(statement)
        if (
            isinstance(identity[1], bool)
            or not isinstance(identity[1], int)
            or not self._knows(identity)
        ):
            return self._fail("unknown_signer", signed)
        checked = signed.checked
        if checked is not None and checked[0] is body and checked[1] is statement:
            # decoded from exactly this body by the strict (canonical-only) decoder, or
            # encoded from exactly this statement by a signer: encode(statement) == body
            matches = True
        else:
            try:
                matches = codec.encode(statement) == body
            except (TypeError, ValueError, cbor2.CBOREncodeError):
                matches = False
        if not matches:
            return self._fail("body_mismatch", signed)
        domain = _STATEMENT_DOMAINS.get(identity[0])
        if domain is None:
            domain = statement_domain(identity[0])
        if len(signature) != SIGNATURE_SIZE or not self._check(identity, domain + body, signature):
            return self._fail("bad_signature", signed)
        self._stats["verified"] += 1
        if len(body) <= CACHED_STATEMENT_MAX_BYTES:
            self._remember(key, statement, len(body))
            self._passed_now(signed, key)
        else:
            self._remember(key, None, len(key))
        return True

    def _passed_now(self, signed: Signed[Statement], key: bytes) -> None:
        """Remember the cache key of this very (immutable) object, for `_passed`."""
        passed = self._passed
        if len(passed) >= PASSED_MEMO_SIZE:
            passed.clear()  # (cheaper than evicting one by one)
        passed[id(signed)] = (signed, key)  # holds the object: its id is not reused meanwhile

    def _remember(self, key: bytes, statement: Statement | None, size: int) -> None:
        if size > self._cache_bytes or self._cache_entries == 0:
            return
        old = self._cache.pop(key, None)
        if old is not None:
            self._cached_bytes -= old[1]
        self._cache[key] = (statement, size)
        self._cached_bytes += size
        while len(self._cache) > self._cache_entries or self._cached_bytes > self._cache_bytes:
            _, (_, dropped) = self._cache.popitem(last=False)
            self._cached_bytes -= dropped

    def verify_deep(self, message: Any) -> bool:
        """True iff `message` and every `Signed` nested in it verify.

        Walks the message iteratively (no recursion): a `Proposal`'s
        pre-prepare and the requests of its batch, a view change's checkpoint
        proof and prepared certificates, a new view's view changes and
        pre-prepares, and whatever else nests. Stops at the first failure.
        Checks signatures only, not the protocol's rules about them.
        """
        if type(message) is Signed and type(message.statement) in _FLAT_STATEMENTS:
            return self.verify(message)  # the common case: nothing nested to walk
        if type(message) is Proposal:
            return self._verify_proposal(message)
        return self._verify_walk(message)

    def _verify_walk(self, message: Any) -> bool:
        stack = [message]
        while stack:
            obj = stack.pop()
            if isinstance(obj, Signed) and not self.verify(obj):
                return False
            stack.extend(_nested(obj))
        return True

    def _verify_proposal(self, proposal: Proposal) -> bool:
        """verify_deep of a Proposal: the same checks in the same order as the walk (the
        batch's requests last to first, then the pre-prepare), without walking the fields."""
        pp, batch = proposal.pre_prepare, proposal.batch
        if type(pp) is not Signed or type(batch) is not Batch or type(batch.requests) is not tuple:
            return self._verify_walk(proposal)
        flat = _FLAT_STATEMENTS
        verify = self.verify
        for s in reversed(batch.requests):
            if type(s) is Signed and type(s.statement) in flat:
                if not verify(s):
                    return False
            elif not self._verify_walk(s):
                return False
        if type(pp.statement) in flat:
            if not verify(pp):
                return False
        elif not self._verify_walk(pp):
            return False
        return True

    def verify_bytes(self, identity: Identity, data: bytes, signature: bytes) -> bool:
        """True iff `signature` is `identity`'s `sign_bytes(data)`. Not cached; never raises."""
        if (
            not isinstance(identity, tuple)
            or len(identity) != 2
            or identity[0] not in KINDS
            or isinstance(identity[1], bool)
            or not isinstance(identity[1], int)
            or not self._knows(identity)
        ):
            return self._fail("unknown_signer")
        if (
            not isinstance(data, bytes)
            or not isinstance(signature, bytes)
            or len(signature) != SIGNATURE_SIZE
            or not self._check(identity, bytes_domain(identity[0]) + data, signature)
        ):
            return self._fail("bad_signature")
        self._stats["verified"] += 1
        return True

    def statistics(self) -> dict[str, int]:
        """Counters: verified, failed (total and per reason), cache_hits, cache_entries."""
        return {**self._stats, "cache_entries": len(self._cache)}


# --------------------------------------------------------------------------
# Ed25519
# --------------------------------------------------------------------------


class Signer(_BaseSigner):
    """Ed25519 signer for one identity: `Signer("replica", 2, private_key)`."""

    def __init__(self, kind: str, id: int, private_key: Ed25519PrivateKey) -> None:
        super().__init__(kind, id)
        #: The 32-byte Ed25519 seed (private key); for deriving pairwise keys (bft.auth).
        self.private_seed = _private_bytes(private_key)
        public, self._sodium_key = nacl.bindings.crypto_sign_seed_keypair(self.private_seed)
        self.public_key = public_key_bytes(private_key)
        assert public == self.public_key

    def _raw_sign(self, data: bytes) -> bytes:
        return nacl.bindings.crypto_sign(data, self._sodium_key)[:SIGNATURE_SIZE]


class Verifier(_CachingVerifier):
    """Ed25519 verifier for a fixed set of identities.

    `public_keys` maps identities (`("replica", i)`, `("client", c)`,
    `("admin", 0)`) to 32 raw key bytes or key objects. A malformed key raises
    ValueError here (local configuration); everything after that returns values.
    """

    def __init__(
        self,
        public_keys: Mapping[Identity, bytes | Ed25519PublicKey],
        *,
        cache_entries: int = 65536,
        cache_bytes: int = 64 * 1024 * 1024,
    ) -> None:
        super().__init__(cache_entries=cache_entries, cache_bytes=cache_bytes)
        self._keys: dict[Identity, bytes] = {}
        for identity, key in public_keys.items():
            _check_identity(*identity)
            if isinstance(key, bytes):
                Ed25519PublicKey.from_public_bytes(key)  # ValueError if malformed
            else:
                key = public_key_bytes(key)
            self._keys[identity] = key

    @property
    def identities(self) -> frozenset[Identity]:
        """Every identity this verifier holds a key of."""
        return frozenset(self._keys)

    def public_key(self, identity: Identity) -> bytes | None:
        """The 32 raw bytes of `identity`'s public key, or None if unknown."""
        return self._keys.get(identity)

    def _knows(self, identity: Identity) -> bool:
        return identity in self._keys

    def _check(self, identity: Identity, data: bytes, signature: bytes) -> bool:
        try:
            nacl.bindings.crypto_sign_open(signature + data, self._keys[identity])
        except (nacl.exceptions.BadSignatureError, nacl.exceptions.ValueError):
            return False
        return True


class Ed25519Keys:
    """In-memory Ed25519 keys for `n_replicas` replicas, `n_clients` clients and the admin.

    For tests and local tools. With a `seed` the keys are derived from it
    (reproducible); without one they are fresh random keys.
    """

    def __init__(
        self,
        n_replicas: int,
        n_clients: int = 0,
        *,
        seed: int | bytes | None = None,
        admin: bool = True,
    ) -> None:
        identities = [("replica", i) for i in range(n_replicas)]
        identities += [("client", c) for c in range(n_clients)]
        if admin:
            identities.append(("admin", 0))
        self.private_keys: dict[Identity, Ed25519PrivateKey] = {}
        for kind, id in identities:
            if seed is None:
                key = generate_private_key()
            else:
                key = private_key_from_seed(_seed_bytes(seed) + f"/{kind}/{id}".encode())
            self.private_keys[(kind, id)] = key
        self.public_keys: dict[Identity, bytes] = {
            identity: public_key_bytes(key) for identity, key in self.private_keys.items()
        }

    def signer(self, kind: str, id: int) -> Signer:
        """The signer of one identity (KeyError if it has no key here)."""
        return Signer(kind, id, self.private_keys[(kind, id)])

    def verifier(self, **cache: int) -> Verifier:
        """A verifier knowing every public key of this set."""
        return Verifier(self.public_keys, **cache)


# --------------------------------------------------------------------------
# The simulator's scheme: keyed BLAKE2b
# --------------------------------------------------------------------------


def _seed_bytes(seed: int | bytes) -> bytes:
    if isinstance(seed, bytes):
        return seed
    if isinstance(seed, bool) or not isinstance(seed, int):
        raise TypeError(f"seed must be an int or bytes, got {type(seed).__name__}")
    return str(seed).encode("ascii")


def _sim_signature(secret: bytes, data: bytes) -> bytes:
    """The simulator's 64-byte signature of `data`: keyed BLAKE2b-512 under the signer's
    32-byte secret (BLAKE2's keyed mode is a MAC, RFC 7693; until issue 19 it was HMAC-SHA256,
    which costs CPython about three times as much). Without the secret nobody can make
    one: forgeries fail as `bad_signature`."""
    return _blake2b(data, key=secret, digest_size=SIGNATURE_SIZE).digest()


_blake2b = hashlib.blake2b


class SimSigner(_BaseSigner):
    """The simulator's signer for one identity: keyed BLAKE2b under that identity's secret."""

    def __init__(self, kind: str, id: int, secret: bytes) -> None:
        super().__init__(kind, id)
        self._secret = secret

    def _raw_sign(self, data: bytes) -> bytes:
        return _sim_signature(self._secret, data)


class SimVerifier(_CachingVerifier):
    """The simulator's verifier: recomputes the identity's keyed BLAKE2b. Same behaviour as
    `Verifier`."""

    def __init__(self, keys: SimKeys, **cache: int) -> None:
        super().__init__(**cache)
        self._keys = keys

    def _knows(self, identity: Identity) -> bool:
        return self._keys.knows(identity)

    def _check(self, identity: Identity, data: bytes, signature: bytes) -> bool:
        expected = _sim_signature(self._keys._secret(*identity), data)
        return hmac.compare_digest(expected, signature)


class SimKeys:
    """Fast, deterministic keys for the simulator: one MAC secret per identity from `seed`.

    `signer(kind, id)` hands out the signer of one identity; give a simulated
    node only its own (a Byzantine one included), and it can sign only as
    itself. `verifier()` checks every identity. With `n_replicas` /
    `n_clients` given, identities outside `0..n-1` are unknown (their
    signatures fail as `unknown_signer`, and no signer is handed out for them).
    Not secure against a party that holds the seed: it is a simulation.
    """

    def __init__(
        self, seed: int | bytes, *, n_replicas: int | None = None, n_clients: int | None = None
    ) -> None:
        self._seed = _seed_bytes(seed)
        self._limits = {"replica": n_replicas, "client": n_clients, "admin": 1}
        self._secrets: dict[Identity, bytes] = {}

    def knows(self, identity: Identity) -> bool:
        """True iff `identity` is one this key set signs and verifies for."""
        kind, id = identity
        if kind not in self._limits or isinstance(id, bool) or not isinstance(id, int) or id < 0:
            return False
        limit = self._limits[kind]
        return limit is None or id < limit

    def _secret(self, kind: str, id: int) -> bytes:
        secret = self._secrets.get((kind, id))
        if secret is None:
            secret = sha256(b"bft-udp/v1/sim-key\x00" + self._seed + f"/{kind}/{id}".encode())
            self._secrets[(kind, id)] = secret
        return secret

    def signer(self, kind: str, id: int) -> SimSigner:
        """The signer of (`kind`, `id`); ValueError for an unknown identity."""
        _check_identity(kind, id)
        if not self.knows((kind, id)):
            raise ValueError(f"no such identity in this simulation: {kind} {id}")
        return SimSigner(kind, id, self._secret(kind, id))

    def verifier(self, **cache: int) -> SimVerifier:
        """A verifier for every identity of this key set."""
        return SimVerifier(self, **cache)
