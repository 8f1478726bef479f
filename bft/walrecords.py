"""What the replica writes to its stable storage (bft/storage.py keeps it as opaque bytes).

A WAL record is the CBOR array `[kind, body]`, body a byte string holding the canonical
encoding (`bft.codec.encode`) of:

* `REC_SENT`: a `Signed` message this replica signed and sent (PREPARE, COMMIT,
  CHECKPOINT, VIEW-CHANGE, NEW-VIEW);
* `REC_PROPOSAL`: a `Proposal` it proposed or accepted (keeps the batch);
* `REC_CERT`: a `PreparedCert`, durable before the COMMIT it allows is sent;
* `REC_NEW_VIEW`: a `Signed` NEW-VIEW it accepted (it entered that view).

A snapshot (`SaveSnapshot.data`) is the CBOR array `[seq, state_digest, state, proof]`:
the replica's state snapshot at stable checkpoint `seq` and the 2f+1 signed CHECKPOINTs
that prove it, each as `bft.codec.encode` bytes.

The format is the one written since the WAL exists (issue 20 moved it here unchanged):
existing WAL directories recover as they are. Decoding goes through `bft.codec`'s strict
decoders; anything else raises `MalformedMessage` naming the record's problem.
"""

from __future__ import annotations

from typing import Any, Union

import cbor2

from bft import codec
from bft.errors import MalformedMessage
from bft.messages import PreparedCert, Proposal, Signed

REC_SENT = 1  # a Signed message this replica signed and sent
REC_PROPOSAL = 2  # a Proposal this replica proposed or accepted (keeps the batch)
REC_CERT = 3  # a prepared certificate, durable before the COMMIT is sent
REC_NEW_VIEW = 4  # a NEW-VIEW this replica accepted (it entered that view)

RECORD_KINDS = (REC_SENT, REC_PROPOSAL, REC_CERT, REC_NEW_VIEW)

# The CBOR heads of a record [kind, body] up to its body's byte-string head: an array of
# two and the kind (each kind is below 24, so one byte)
_RECORD_HEADS = {kind: bytes((0x82, kind)) for kind in RECORD_KINDS}

Record = Union[Signed[Any], Proposal, PreparedCert]


def encode_record(kind: int, message: Record) -> bytes:
    """cbor2.dumps([kind, codec.encode(message)]), written directly (the same bytes)."""
    data = codec.encode(message)
    return b"".join((_RECORD_HEADS[kind], codec.bytes_head(len(data)), data))


def decode_record(raw: bytes, limits: codec.Limits) -> tuple[int, Record]:
    """(kind, message) of a record written by `encode_record`; MalformedMessage otherwise."""
    try:
        kind, body = cbor2.loads(raw)
    except (ValueError, TypeError, cbor2.CBORDecodeError) as e:
        raise MalformedMessage(f"bad WAL record: {e}") from e
    if type(body) is not bytes:
        raise MalformedMessage("bad WAL record: its body is not a byte string")
    if kind == REC_CERT:
        return kind, codec.decode_prepared_cert_untrusted(body, limits)
    if kind not in RECORD_KINDS:
        raise MalformedMessage(f"bad WAL record: unknown kind {kind!r} (known: {RECORD_KINDS})")
    message = codec.decode_untrusted(body, limits)
    expected = Proposal if kind == REC_PROPOSAL else Signed
    if not isinstance(message, expected):
        raise MalformedMessage(f"bad WAL record: kind {kind} holds a {type(message).__name__}")
    return kind, message


def encode_snapshot(seq: int, state_digest: bytes, state: bytes,
                    proof: tuple[Signed[Any], ...]) -> bytes:
    """The snapshot of stable checkpoint `seq` as `SaveSnapshot` carries it."""
    return cbor2.dumps([seq, state_digest, state, [codec.encode(s) for s in proof]])


def decode_snapshot(data: bytes,
                    limits: codec.Limits) -> tuple[int, bytes, bytes, tuple[Signed[Any], ...]]:
    """(seq, state_digest, state, proof) of a snapshot; MalformedMessage if it is not one."""
    try:
        seq, digest, state, proof_bytes = cbor2.loads(data)
    except (ValueError, TypeError, cbor2.CBORDecodeError) as e:
        raise MalformedMessage(f"bad snapshot: {e}") from e
    if (type(seq) is not int or seq < 0 or type(digest) is not bytes or type(state) is not bytes
            or type(proof_bytes) is not list
            or any(type(b) is not bytes for b in proof_bytes)):
        raise MalformedMessage("bad snapshot: expected [seq, digest, state, [proof...]]")
    proof = []
    for b in proof_bytes:
        s = codec.decode_untrusted(b, limits)
        if not isinstance(s, Signed):
            raise MalformedMessage(f"bad snapshot: its proof holds a {type(s).__name__}")
        proof.append(s)
    return seq, digest, state, tuple(proof)
