"""Do two signed messages prove that their signer misbehaved? (PROTOCOL.md "Evidence"; pure)

A proof is two validly signed messages from one replica that no correct
replica would both sign:

* two PRE-PREPAREs with the same (view, seq) and different digests;
* two PREPAREs, or two COMMITs, with the same (view, seq, replica) and
  different digests;
* two CHECKPOINTs with the same (seq, replica) and different state digests.

`check_evidence(first, second, verifier)` returns the `Conflict` the pair
proves, or raises `InvalidEvidence` with a `reason` saying why it proves
nothing. `check_evidence_untrusted` does the same from the bytes of the two
`Signed` envelopes (body and signature each), as a dashboard receives them;
it raises only `InvalidEvidence`. The cheap checks run first, the two
signature checks last. Anyone holding the cluster's public keys can run it:
the proof does not depend on who reports it.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from bft.codec import decode_statement_untrusted
from bft.errors import MalformedMessage
from bft.messages import Checkpoint, Commit, Prepare, PrePrepare, Signed

__all__ = [
    "EVIDENCE_KINDS",
    "Conflict",
    "InvalidEvidence",
    "check_evidence",
    "check_evidence_untrusted",
]

#: The statement types a proof may consist of, and the kind names the replica's
#: `Evidence` effects use for them.
EVIDENCE_KINDS: dict[type, str] = {
    PrePrepare: "pre_prepare",
    Prepare: "prepare",
    Commit: "commit",
    Checkpoint: "checkpoint",
}


class InvalidEvidence(Exception):
    """The two messages prove nothing; `reason` is one of `InvalidEvidence.REASONS`."""

    REASONS = (
        "malformed",  # a body is not a well-formed statement
        "not_comparable",  # not two statements of one evidence kind
        "different_signers",
        "different_slots",  # not the same (view, seq) / (seq)
        "no_conflict",  # the same digest: consistent, not conflicting
        "bad_signature",  # a signature does not verify with the config's keys
    )

    def __init__(self, reason: str, detail: str = "") -> None:
        assert reason in self.REASONS, reason
        super().__init__(f"{reason}: {detail}" if detail else reason)
        self.reason = reason


@dataclass(frozen=True, slots=True)
class Conflict:
    """What a valid proof shows: replica `culprit` signed `digests` (two different ones)
    for `slot` in messages of `kind`; `slot` is (view, seq), or (seq,) for checkpoints."""

    culprit: int
    kind: str
    slot: tuple[int, ...]
    digests: tuple[bytes, bytes]


def _slot_and_digest(statement: Any) -> tuple[tuple[int, ...], bytes]:
    if isinstance(statement, Checkpoint):
        return (statement.seq,), statement.state_digest
    return (statement.view, statement.seq), statement.digest


def check_evidence(first: Signed[Any], second: Signed[Any], verifier: Any) -> Conflict:
    """The conflict `first` and `second` prove; InvalidEvidence if they prove none.

    `verifier` is a `bft.crypto` verifier knowing the cluster's public keys;
    it checks that each body encodes its statement and is signed by the
    statement's signer.
    """
    a, b = first.statement, second.statement
    kind = EVIDENCE_KINDS.get(type(a))
    if kind is None or type(b) is not type(a):
        raise InvalidEvidence(
            "not_comparable", f"{type(a).__name__} and {type(b).__name__}"
        )
    if a.replica != b.replica:
        raise InvalidEvidence("different_signers", f"replicas {a.replica} and {b.replica}")
    slot_a, digest_a = _slot_and_digest(a)
    slot_b, digest_b = _slot_and_digest(b)
    if slot_a != slot_b:
        raise InvalidEvidence("different_slots", f"{slot_a} and {slot_b}")
    if digest_a == digest_b:
        raise InvalidEvidence("no_conflict", f"one digest for {kind} {slot_a}")
    if not (verifier.verify(first) and verifier.verify(second)):
        raise InvalidEvidence("bad_signature", f"{kind} of replica {a.replica}")
    return Conflict(a.replica, kind, slot_a, (digest_a, digest_b))


def _signed_untrusted(body: bytes, signature: bytes) -> Signed[Any]:
    try:
        statement = decode_statement_untrusted(body)
    except MalformedMessage as exc:
        raise InvalidEvidence("malformed", str(exc)) from None
    # the strict decoder accepts only canonical bytes: `body` encodes `statement`
    return Signed(body=body, signature=signature, statement=statement, checked=(body, statement))


def check_evidence_untrusted(
    first_body: bytes,
    first_signature: bytes,
    second_body: bytes,
    second_signature: bytes,
    verifier: Any,
) -> Conflict:
    """`check_evidence` on two signed messages given as bytes (from the network).

    Raises only InvalidEvidence, for bytes that are not statements as well as
    for statements that prove nothing.
    """
    for value in (first_body, first_signature, second_body, second_signature):
        if not isinstance(value, bytes):
            raise TypeError(f"expected bytes, got {type(value).__name__}")  # a caller's bug
    return check_evidence(
        _signed_untrusted(first_body, first_signature),
        _signed_untrusted(second_body, second_signature),
        verifier,
    )
