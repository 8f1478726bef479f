"""PBFT messages as frozen, slotted dataclasses, named as in the paper.

Two layers:

* *Statements* are what a party signs: `Request` (by a client), `PrePrepare`,
  `Prepare`, `Commit`, `Checkpoint`, `ViewChange`, `NewView`, `Reply`,
  `Status`, `Fetch`, `FetchState`, `StateChunk` (by a replica). Their
  canonical CBOR encoding (`bft.codec.encode`) is the body that is signed.
* `Signed` is the envelope that travels: the body bytes exactly as signed, the
  signature, and the decoded statement. Signatures and digests are always
  computed over the bytes as received, never over a re-encoding.
* `MacReply` is the other envelope of a `Reply`: the body authenticated for
  its one client by an HMAC-SHA256 under the pairwise key of that replica and
  that client (bft/auth.py), as PBFT authenticates replies (OSDI'99 4.1).

Unsigned carriers hold signed parts plus data authenticated by a digest:
`Proposal` (a signed pre-prepare header and its `Batch`, bound by
`digest = D(batch)`), and `PreparedCert` inside a view change.

Paper names (OSDI'99 section 4): REQUEST<o, t, c> is `Request(op, timestamp,
client)`; PRE-PREPARE<v, n, d> is `PrePrepare(view, seq, digest)`;
PREPARE/COMMIT<v, n, d, i>; REPLY<v, t, c, i, r>, extended by the digest d of
the request it answers and the agreed time it executed at, is `Reply(view, timestamp,
client, replica, request, result, agreed_us)`; CHECKPOINT<n, d, i>; VIEW-CHANGE<v+1, n, C, P, i>; NEW-VIEW<v+1, V, O>.

Field annotations use the `Annotated` kinds below; the codec reads them to
check every field's type, length and range when decoding untrusted bytes.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Annotated, Any, ClassVar, Generic, TypeAlias, TypeVar, Union


class Kind(enum.Enum):
    """How the codec checks a field."""

    U64 = "u64"  # int, 0 <= x < 2**63
    DIGEST = "digest"  # bytes, exactly 32 (SHA-256)
    SIGNATURE = "signature"  # bytes, exactly 64 (Ed25519)
    MAC = "mac"  # bytes, exactly 32 (HMAC-SHA256)
    OP = "op"  # bytes, at most limits.max_op_bytes
    BLOB = "blob"  # bytes, at most limits.max_message_bytes
    TEXT = "text"  # str, at most limits.max_text_chars


U64 = Annotated[int, Kind.U64]
Digest = Annotated[bytes, Kind.DIGEST]
SignatureBytes = Annotated[bytes, Kind.SIGNATURE]
MacBytes = Annotated[bytes, Kind.MAC]
Op = Annotated[bytes, Kind.OP]
Blob = Annotated[bytes, Kind.BLOB]
Text = Annotated[str, Kind.TEXT]

DIGEST_SIZE = 32
SIGNATURE_SIZE = 64
MAC_SIZE = 32
PUBLIC_KEY_SIZE = 32


# --------------------------------------------------------------------------
# Statements (signed bodies)
# --------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Request:
    """<REQUEST, o, t, c>_c: operation `op` of client `client`, request number `timestamp`.

    `timestamp` is the client's logical clock: strictly increasing per client.
    """

    TAG: ClassVar[int] = 1
    op: Op
    timestamp: U64
    client: U64


@dataclass(frozen=True, slots=True)
class PrePrepare:
    """<PRE-PREPARE, v, n, d>_p: the primary of `view` assigns `digest` to `seq`.

    `digest = D(batch)` of the `Batch` (batch_time and requests) carried beside
    it in a `Proposal`; `replica` is the signer and must be primary(view).
    """

    TAG: ClassVar[int] = 2
    view: U64
    seq: U64
    digest: Digest
    replica: U64


@dataclass(frozen=True, slots=True)
class Prepare:
    """<PREPARE, v, n, d, i>_i."""

    TAG: ClassVar[int] = 3
    view: U64
    seq: U64
    digest: Digest
    replica: U64


@dataclass(frozen=True, slots=True)
class Commit:
    """<COMMIT, v, n, d, i>_i."""

    TAG: ClassVar[int] = 4
    view: U64
    seq: U64
    digest: Digest
    replica: U64


@dataclass(frozen=True, slots=True)
class Reply:
    """<REPLY, v, t, c, i, d, r>_i: `result` of client `client`'s request `timestamp`.

    `request` is d, the digest of the signed request this reply answers
    (`bft.crypto.request_digest`: SHA-256 of the request's body as signed). Two
    different requests can share (c, t) (two processes using one client id); the
    digest tells the client which one was executed, so it never accepts the result
    of an operation it did not send (PROTOCOL.md "Requests and replies").

    `agreed_us` is the agreed time (microseconds) the request's batch executed at: the
    time the application saw, max(batch_time, the time of the batch before it), the same
    on every correct replica (PROTOCOL.md "Execution"). The client matches f+1 replies on
    it too, so one liar cannot fake it; histories record it (issue 22). It is the last
    field on the wire: a reply of the older 6-field format is refused by the codec. Its
    default 0 is for hand-built test replies only: replicas always set it.
    """

    TAG: ClassVar[int] = 5
    view: U64
    timestamp: U64
    client: U64
    replica: U64
    request: Digest
    result: Op
    agreed_us: U64 = 0


@dataclass(frozen=True, slots=True)
class Checkpoint:
    """<CHECKPOINT, n, d, i>_i: after executing `seq`, the state digest is `state_digest`."""

    TAG: ClassVar[int] = 6
    seq: U64
    state_digest: Digest
    replica: U64


@dataclass(frozen=True, slots=True)
class ViewChange:
    """<VIEW-CHANGE, v+1, n, C, P, i>_i.

    `view` is the new view v+1; `stable_seq` is n (h of the sender);
    `checkpoint_proof` is C: 2f+1 signed `Checkpoint`s for stable_seq (empty
    when stable_seq == 0) and `state_digest` their digest; `prepared` is P.
    """

    TAG: ClassVar[int] = 7
    view: U64
    stable_seq: U64
    state_digest: Digest
    checkpoint_proof: tuple[AnySigned, ...]
    prepared: tuple[PreparedCert, ...]
    replica: U64


@dataclass(frozen=True, slots=True)
class NewView:
    """<NEW-VIEW, v+1, V, O>_p: 2f+1 signed view changes and the re-issued pre-prepares."""

    TAG: ClassVar[int] = 8
    view: U64
    view_changes: tuple[AnySigned, ...]
    pre_prepares: tuple[AnySigned, ...]
    replica: U64


@dataclass(frozen=True, slots=True)
class Status:
    """Loss recovery: what the sender has, so peers resend what it lacks.

    `prepared` / `committed` list the seqs above `last_executed` for which the
    sender holds a prepared / committed certificate in `view`.
    """

    TAG: ClassVar[int] = 9
    view: U64
    stable_seq: U64
    last_executed: U64
    prepared: tuple[U64, ...]
    committed: tuple[U64, ...]
    in_view_change: U64
    replica: U64


@dataclass(frozen=True, slots=True)
class Fetch:
    """Ask for the batch with `digest` (assigned to `seq` in `view`); answered by a `Proposal`."""

    TAG: ClassVar[int] = 10
    view: U64
    seq: U64
    digest: Digest
    replica: U64


@dataclass(frozen=True, slots=True)
class FetchState:
    """State transfer: ask for the snapshot of stable checkpoint `seq` with `state_digest`."""

    TAG: ClassVar[int] = 11
    seq: U64
    state_digest: Digest
    replica: U64


@dataclass(frozen=True, slots=True)
class StateChunk:
    """State transfer: chunk `index` of `count` of the snapshot of checkpoint `seq`.

    The whole snapshot is checked against the proven `state_digest` once assembled.
    """

    TAG: ClassVar[int] = 12
    seq: U64
    state_digest: Digest
    index: U64
    count: U64
    data: Blob
    replica: U64


# --------------------------------------------------------------------------
# Envelope and carriers
# --------------------------------------------------------------------------


#: The statement type a `Signed` carries: `Signed[Prepare]` is a signed PREPARE.
S_co = TypeVar("S_co", bound="Statement", covariant=True)


@dataclass(frozen=True, slots=True)
class Signed(Generic[S_co]):
    """A signed statement as it travels: body bytes, signature, decoded statement.

    Generic in its statement for the type checker (`Signed[Prepare]`); at run time the
    codec decodes whatever statement the body holds, and the replica dispatches on its type.

    `statement` is decoded from `body` (never sent separately); two `Signed`
    are equal when body and signature are equal. `checked` is `(body, statement)`
    (the very objects) when `body` is known to be the canonical encoding of
    `statement`: `bft.codec` decoded `statement` from `body` (its strict
    decoder accepts only canonical encodings), or a signer encoded `body` from
    `statement`. A verifier then need not re-encode the statement; a copy with
    another body or statement (`dataclasses.replace`) no longer matches by
    identity and is checked in full. Not part of the wire format, not compared.
    """

    TAG: ClassVar[int] = 20
    body: Blob
    signature: SignatureBytes
    statement: S_co = field(compare=False, repr=False)
    checked: tuple[bytes, S_co] | None = field(default=None, compare=False, repr=False)

    def __repr__(self) -> str:  # short and readable in logs
        return f"Signed({self.statement!r})"


#: What a carrier (`ViewChange`, `NewView`, `Batch`, `Proposal`, `PreparedCert`) holds: a
#: `Signed` of any statement. The codec does not check which statement stands in a field
#: (a `Proposal.pre_prepare` may hold a PREPARE); the replica checks that, so for the type
#: checker this is `Signed[Any]`. At run time it is the plain class `Signed`: the codec
#: reads these annotations to build its readers and accepts only plain classes there.
if TYPE_CHECKING:
    AnySigned: TypeAlias = Signed[Any]
else:
    AnySigned = Signed


@dataclass(frozen=True, slots=True)
class Batch:
    """A batch of client requests proposed at agreed time `batch_time` (microseconds).

    `D(batch)` (SHA-256 of its canonical encoding) is the digest a pre-prepare
    assigns to a sequence number. The null request of a view change is
    `NULL_BATCH`: no requests, batch_time 0; executing it changes nothing.
    """

    TAG: ClassVar[int] = 21
    batch_time: U64
    requests: tuple[AnySigned, ...]


@dataclass(frozen=True, slots=True)
class Proposal:
    """A signed pre-prepare header with its batch (unsigned carrier: the digest binds it)."""

    TAG: ClassVar[int] = 22
    pre_prepare: AnySigned
    batch: Batch


@dataclass(frozen=True, slots=True)
class PreparedCert:
    """P entry of a view change: a signed pre-prepare and 2f signed matching prepares."""

    TAG: ClassVar[int] = 23
    pre_prepare: AnySigned
    prepares: tuple[AnySigned, ...]


@dataclass(frozen=True, slots=True)
class MacReply:
    """A REPLY authenticated for its client by a MAC instead of a signature.

    `body` is the canonical encoding of the `Reply` (`statement`, decoded from
    `body`, never sent separately) and `mac` the HMAC-SHA256 of the body under
    the key replica `statement.replica` shares with client `statement.client`
    (bft/auth.py). Only that client can check it, which is all a reply needs:
    PBFT (OSDI'99 4.1, TOCS'02 3.2) authenticates replies with MACs. Two
    `MacReply` are equal when body and MAC are equal. `checked` means what it
    means in `Signed`: `(body, statement)` (the very objects) when the codec
    decoded the statement from the body or `bft.auth` encoded the body from it.
    """

    TAG: ClassVar[int] = 24
    body: Blob
    mac: MacBytes
    statement: Reply = field(compare=False, repr=False)
    checked: tuple[bytes, Reply] | None = field(default=None, compare=False, repr=False)

    def __repr__(self) -> str:  # short and readable in logs
        return f"MacReply({self.statement!r})"


NULL_BATCH = Batch(batch_time=0, requests=())

Statement = Union[
    Request, PrePrepare, Prepare, Commit, Reply, Checkpoint, ViewChange, NewView,
    Status, Fetch, FetchState, StateChunk,
]

#: What may stand at the top of a datagram payload.
WireMessage = Union[AnySigned, Proposal, MacReply]

STATEMENT_TYPES = (
    Request, PrePrepare, Prepare, Commit, Reply, Checkpoint, ViewChange, NewView,
    Status, Fetch, FetchState, StateChunk,
)
CARRIER_TYPES: tuple[type, ...] = (Signed, Batch, Proposal, PreparedCert, MacReply)
ALL_TYPES: tuple[type, ...] = STATEMENT_TYPES + CARRIER_TYPES
TOP_LEVEL_TYPES: tuple[type, ...] = (Signed, Proposal, MacReply)


def signer_of(statement: Statement) -> tuple[str, int]:
    """The identity whose key must have signed `statement`: ("client", c) or ("replica", i)."""
    if isinstance(statement, Request):
        return ("client", statement.client)
    return ("replica", statement.replica)
