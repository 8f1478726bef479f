"""bft.evidence: two signed messages prove misbehaviour only as PROTOCOL.md "Evidence" says.

The check has teeth: each way of faking a proof (messages that agree, that
are about different slots, of different kinds, signed by different replicas,
signed by someone else than the replica they name, or not statements at all)
is rejected, and every proof a correct replica really produces passes.
"""

from __future__ import annotations

import dataclasses

import pytest

from adversary.behaviours import make_rule
from adversary.sim import SimConfig, Simulation
from bft.codec import encode
from bft.crypto import Ed25519Keys
from bft.evidence import Conflict, InvalidEvidence, check_evidence, check_evidence_untrusted
from bft.messages import Checkpoint, Commit, Prepare, PrePrepare, Request

KEYS = Ed25519Keys(4, 1, seed=21)
VERIFIER = KEYS.verifier()
D1, D2 = b"\x01" * 32, b"\x02" * 32


def sign(statement):  # type: ignore[no-untyped-def]
    return KEYS.signer("replica", statement.replica).sign(statement)


def untrusted(first, second):  # type: ignore[no-untyped-def]
    return check_evidence_untrusted(
        first.body, first.signature, second.body, second.signature, VERIFIER
    )


def rejected(first, second) -> str:  # type: ignore[no-untyped-def]
    """The reason both entry points give for refusing the pair (they must agree)."""
    with pytest.raises(InvalidEvidence) as direct:
        check_evidence(first, second, VERIFIER)
    with pytest.raises(InvalidEvidence) as from_bytes:
        untrusted(first, second)
    assert direct.value.reason == from_bytes.value.reason
    return direct.value.reason


@pytest.mark.parametrize(
    "a, b, expected",
    [
        (PrePrepare(3, 7, D1, 3), PrePrepare(3, 7, D2, 3),
         Conflict(3, "pre_prepare", (3, 7), (D1, D2))),
        (Prepare(3, 7, D1, 1), Prepare(3, 7, D2, 1), Conflict(1, "prepare", (3, 7), (D1, D2))),
        (Commit(3, 7, D2, 2), Commit(3, 7, D1, 2), Conflict(2, "commit", (3, 7), (D2, D1))),
        (Checkpoint(8, D1, 0), Checkpoint(8, D2, 0), Conflict(0, "checkpoint", (8,), (D1, D2))),
    ],
)
def test_each_kind_of_conflict_is_a_proof(a, b, expected) -> None:  # type: ignore[no-untyped-def]
    """PROTOCOL.md Evidence: the four conflicts, each proving its signer faulty."""
    assert check_evidence(sign(a), sign(b), VERIFIER) == expected
    assert untrusted(sign(a), sign(b)) == expected


def test_messages_that_do_not_conflict_prove_nothing() -> None:
    """PROTOCOL.md Evidence: a proof needs the same slot and different digests."""
    p = sign(Prepare(3, 7, D1, 1))
    assert rejected(p, p) == "no_conflict"  # one message twice
    assert rejected(p, sign(Prepare(3, 7, D1, 1))) == "no_conflict"
    assert rejected(p, sign(Prepare(3, 8, D2, 1))) == "different_slots"  # another seq
    assert rejected(p, sign(Prepare(4, 7, D2, 1))) == "different_slots"  # another view
    assert rejected(sign(Checkpoint(8, D1, 1)), sign(Checkpoint(16, D2, 1))) == "different_slots"
    # a correct replica sends PREPARE and COMMIT for one slot; kinds never mix
    assert rejected(p, sign(Commit(3, 7, D2, 1))) == "not_comparable"
    assert rejected(sign(PrePrepare(3, 7, D1, 3)), sign(Prepare(3, 7, D2, 3))) == "not_comparable"
    client = KEYS.signer("client", 0)
    requests = [client.sign(Request(op, 1, 0)) for op in (b"a", b"b")]
    assert rejected(*requests) == "not_comparable"  # not an evidence kind at all


def test_two_replicas_disagreeing_prove_nothing_against_either() -> None:
    """PROTOCOL.md Evidence: both messages come from one node."""
    assert rejected(sign(Prepare(3, 7, D1, 1)), sign(Prepare(3, 7, D2, 2))) == "different_signers"


def test_a_message_not_signed_by_the_replica_it_names_is_no_proof() -> None:
    """A Byzantine replica 3 forges a second PREPARE "of" correct replica 1."""
    real = sign(Prepare(3, 7, D1, 1))
    statement = Prepare(3, 7, D2, 1)
    body = encode(statement)
    by_three = KEYS.signer("replica", 3).sign(Prepare(3, 7, D2, 3))
    outsider = Ed25519Keys(4, 1, seed=99).signer("replica", 1).sign(statement)
    good = sign(statement)
    flipped = bytes([good.signature[0] ^ 1]) + good.signature[1:]
    forgeries = {
        "signed by replica 3": dataclasses.replace(
            real, body=body, statement=statement, signature=by_three.signature, checked=None
        ),
        "signed with a key the config does not know": outsider,
        "signature bit flipped": dataclasses.replace(good, signature=flipped),
        "zero signature": dataclasses.replace(good, signature=bytes(64)),
    }
    for name, forged in forgeries.items():
        assert rejected(real, forged) == "bad_signature", name
        assert rejected(forged, real) == "bad_signature", name


def test_a_signature_moved_to_another_statement_is_no_proof() -> None:
    """The body the signature covers is the statement: a Signed whose statement is not what
    its body encodes proves nothing (the bytes path cannot even express it)."""
    real = sign(Prepare(3, 7, D1, 1))
    swapped = dataclasses.replace(real, statement=Prepare(3, 7, D2, 1), checked=None)
    with pytest.raises(InvalidEvidence) as info:
        check_evidence(real, swapped, VERIFIER)
    assert info.value.reason == "bad_signature"


def test_bytes_that_are_no_statement_are_malformed() -> None:
    real = sign(Prepare(3, 7, D1, 1))
    other = sign(Prepare(3, 7, D2, 1))
    non_canonical = other.body[:1] + b"\x18\x03" + other.body[2:]  # 3 in a two-byte head
    assert non_canonical != other.body
    for junk in (b"", b"\x00", b"hello", other.body[:-1], other.body + b"\x00", non_canonical):
        with pytest.raises(InvalidEvidence) as info:
            check_evidence_untrusted(real.body, real.signature, junk, other.signature, VERIFIER)
        assert info.value.reason == "malformed", junk


@pytest.mark.parametrize("culprit, kinds", [(0, {"pre_prepare"}), (2, {"prepare", "commit"})])
def test_every_proof_correct_replicas_produce_passes_the_check(
    culprit: int, kinds: set[str]
) -> None:
    """The check and the replica agree: an equivocating primary (0) or backup (2) in a
    seeded simulation; every Evidence a correct replica produced is a valid proof naming
    the replica it blames."""
    seed = 5
    print(f"seed={seed}")
    config = SimConfig(seed=seed, nodes=4, clients=2, requests=8,
                       adversary=(make_rule(culprit, "equivocate"),))
    simulation = Simulation(config)
    result = simulation.run(60.0)
    assert result.evidence, "the equivocating primary left no evidence"
    verifier = simulation.verifier
    for proof in result.evidence:
        first, second = proof["first"], proof["second"]
        conflict = check_evidence_untrusted(
            bytes.fromhex(first["body"]), bytes.fromhex(first["signature"]),
            bytes.fromhex(second["body"]), bytes.fromhex(second["signature"]), verifier)
        assert (conflict.culprit, conflict.kind) == (proof["culprit"], proof["kind"])
        assert conflict.culprit == culprit
    # each run shows the kinds expected of it; an equivocating primary also signs two COMMITs
    # for some slots, which correct replicas prove too
    found = {proof["kind"] for proof in result.evidence}
    assert kinds <= found <= {"pre_prepare", "prepare", "commit"}, found
