"""The verification shortcuts of issue 7 keep their guarantees.

* A `Signed` built by the codec (or a signer) skips re-encoding its statement
  only while body and statement are the very objects checked; any copy with
  another body or statement is checked in full and fails.
* The shortcut is sound: every `Signed` the strict decoder builds, at any
  depth, has `encode(statement) == body`.
* A replica drops a PREPARE/COMMIT for a slot already prepared/decided on the
  same digest without verifying it (PROTOCOL.md "Normal case": such a vote
  changes nothing), but still verifies a vote with another digest.
"""

from __future__ import annotations

from dataclasses import replace

from harness import Net, Ops
from hypothesis import given
from hypothesis import strategies as st
from strategies import wire_messages

from bft import codec
from bft import messages as m
from bft.effects import Evidence
from bft.crypto import Ed25519Keys, SimKeys, _nested
from bft.errors import MalformedMessage


def _all_signed(message):
    stack, found = [message], []
    while stack:
        obj = stack.pop()
        if isinstance(obj, m.Signed):
            found.append(obj)
        stack.extend(_nested(obj))
    return found


def test_copies_of_a_decoded_message_are_checked_in_full():
    keys = Ed25519Keys(4, seed=1)
    signed = keys.signer("replica", 1).sign(m.Prepare(0, 1, bytes(32), 1))
    wire = codec.decode_untrusted(codec.encode(signed))
    verifier = keys.verifier(cache_entries=0)
    assert verifier.verify(wire)
    lie = replace(wire, statement=m.Prepare(0, 2, bytes(32), 1))
    assert not verifier.verify(lie)
    assert verifier.statistics()["failed_body_mismatch"] == 1
    tampered = replace(wire, body=codec.encode(m.Prepare(0, 2, bytes(32), 1)))
    assert not verifier.verify(tampered)
    assert verifier.statistics()["failed_body_mismatch"] == 2


@given(wire_messages())
def test_every_decoded_signed_is_canonical(message):
    for signed in _all_signed(codec.decode_untrusted(codec.encode(message))):
        assert signed.checked == (signed.body, signed.statement)
        assert codec.encode(signed.statement) == signed.body


@given(wire_messages(), st.data())
def test_mutated_bytes_that_decode_are_canonical(message, data):
    raw = bytearray(codec.encode(message))
    for _ in range(data.draw(st.integers(1, 4))):
        i = data.draw(st.integers(0, len(raw) - 1))
        raw[i] = data.draw(st.integers(0, 255))
    try:
        decoded = codec.decode_untrusted(bytes(raw))
    except MalformedMessage:
        return
    for signed in _all_signed(decoded):
        assert codec.encode(signed.statement) == signed.body


def _vote(keys: SimKeys, kind, view, seq, digest, replica, *, forged=False):
    signed = keys.signer("replica", replica).sign(kind(view, seq, digest, replica))
    if forged:
        signed = m.Signed(body=signed.body, signature=bytes(64), statement=signed.statement)
    return codec.decode_untrusted(codec.encode(signed))


def test_late_votes_are_dropped_unverified_and_others_still_verified():
    net = Net(4)
    net.request(0, Ops.put("a", b"1"), to=0)
    net.deliver()
    r = net.replicas[1]
    slot = r.log.get(1)
    assert slot.prepared and slot.decided == slot.digest
    before = r.verifier.statistics()
    late_before = r.drops["late_vote"]  # the normal case already had some (the 4th COMMIT)
    # forged copies of votes that can change nothing: dropped before the signature check
    for kind in (m.Prepare, m.Commit):
        r.receive(_vote(net.keys, kind, 0, 1, slot.digest, 2, forged=True), net.now)
    after = r.verifier.statistics()
    assert r.drops["late_vote"] == late_before + 2
    assert (after["verified"], after["failed"]) == (before["verified"], before["failed"])
    # a vote for another digest may be evidence: its signature is checked (and fails here)
    r.receive(_vote(net.keys, m.Prepare, 0, 1, bytes(32), 2, forged=True), net.now)
    assert r.verifier.statistics()["failed_bad_signature"] == before["failed_bad_signature"] + 1
    assert r.drops["bad_signature"] >= 1
    # a vote for an open slot is verified too
    r.receive(_vote(net.keys, m.Prepare, 0, 2, slot.digest, 2, forged=True), net.now)
    assert r.verifier.statistics()["failed_bad_signature"] == before["failed_bad_signature"] + 2
    assert r.drops["late_vote"] == late_before + 2


def test_a_late_vote_that_contradicts_the_senders_earlier_vote_is_still_verified():
    """Evidence (PROTOCOL.md "Evidence"): replica 2 first prepared another digest; its later
    PREPARE of the slot's digest conflicts with that and must be checked, not skipped."""
    net = Net(4)
    net.request(0, Ops.put("a", b"1"), to=0)
    net.deliver()
    r = net.replicas[1]
    slot = r.log.get(1)
    slot.prepares[2] = _vote(net.keys, m.Prepare, 0, 1, bytes(32), 2)  # its earlier vote
    late_before = r.drops["late_vote"]
    effects = r.receive(_vote(net.keys, m.Prepare, 0, 1, slot.digest, 2), net.now)
    assert r.drops["late_vote"] == late_before
    assert [e.culprit for e in effects if isinstance(e, Evidence)] == [2]
