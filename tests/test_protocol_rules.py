"""PROTOCOL.md "Normal case": the six conditions under which a backup accepts a
PRE-PREPARE, one test per rule, each with a message a faulty primary (or an outsider) can
send. A refused pre-prepare is a counted drop with its reason, and no PREPARE is signed.

Each proposal goes to backup 1 of a 4-replica step network (tests/harness.py), through the
real codec, in view 0 with primary 0.
"""

from __future__ import annotations

import dataclasses
import hashlib

import pytest
from harness import Net, Ops

from bft import codec
from bft.crypto import batch_digest
from bft.effects import Broadcast, Evidence, Send
from bft.messages import Batch, Prepare, PrePrepare, Proposal, Request, Signed

SEED = 1


def proposal(net: Net, *, view: int = 0, seq: int = 1, signer: int = 0, replica: int = 0,
             requests: tuple[Signed, ...] | None = None, at_s: float | None = None,
             digest: bytes | None = None) -> Proposal:
    """A PRE-PREPARE signed by `signer` naming `replica` as its primary, with its batch."""
    if requests is None:
        requests = (net.keys.signer("client", 1).sign(Request(Ops.put("k", b"v"), 1, 1)),)
    batch = Batch(int((net.now if at_s is None else at_s) * 1_000_000), requests)
    pp = PrePrepare(view, seq, digest if digest is not None else batch_digest(batch), replica)
    return Proposal(net.keys.signer("replica", signer).sign(pp), batch)


def deliver(net: Net, message, to: int = 1) -> list:
    wire = codec.decode_untrusted(codec.encode(message), net.config.limits)
    effects = net.replicas[to].receive(wire, net.now, net.wall(to))
    net._apply(to, effects)
    return effects


def prepares(effects) -> list:
    return [e.message.statement for e in effects if isinstance(e, (Send, Broadcast))
            and isinstance(getattr(e.message, "statement", None), Prepare)]


def refused(net: Net, message, reason: str, to: int = 1) -> list:
    before = net.replicas[to].drops[reason]
    effects = deliver(net, message, to)
    assert not prepares(effects), f"a PREPARE was signed for a pre-prepare refused as {reason}"
    assert net.replicas[to].drops[reason] == before + 1, dict(net.replicas[to].drops)
    return effects


def test_an_acceptable_proposal_is_prepared():
    """The baseline the tests below depart from: every rule holds, a PREPARE is signed."""
    print(f"seed={SEED}")
    net = Net(4, seed=SEED)
    assert [p.seq for p in prepares(deliver(net, proposal(net)))] == [1]


def test_rule_1_every_signature_verifies():
    """Rule 1: the pre-prepare's signature and every request's signature verify."""
    print(f"seed={SEED}")
    net = Net(4, seed=SEED)
    good = proposal(net)
    forged_pp = dataclasses.replace(good.pre_prepare, signature=bytes(64), checked=None)
    refused(net, Proposal(forged_pp, good.batch), "bad_signature")
    req = good.batch.requests[0]
    forged_req = dataclasses.replace(req, signature=bytes(64), checked=None)
    refused(net, proposal(net, requests=(forged_req,)), "bad_signature")


def test_rule_2_in_view_v_from_primary_v_and_not_in_a_view_change():
    """Rule 2: i is in view v, not in a view change, and the sender is primary(v)."""
    print(f"seed={SEED}")
    net = Net(4, seed=SEED)
    refused(net, proposal(net, signer=2, replica=2), "pre_prepare_not_from_primary")
    refused(net, proposal(net, view=1, signer=1, replica=1), "wrong_view")
    from bft.messages import ViewChange

    for j in (2, 3):  # f+1 VIEW-CHANGEs: backup 1 joins the view change to view 2
        deliver(net, net.keys.signer("replica", j).sign(ViewChange(2, 0, b"\0" * 32, (), (), j)))
    assert net.replicas[1].in_view_change and net.replicas[1].view == 2
    # not prepared in the view change: held until view 2's NEW-VIEW comes, then judged by
    # every rule (tests/test_held_proposals.py); one of another view is refused outright
    held = net.replicas[1].counters["proposal_held_for_view"]
    assert not prepares(deliver(net, proposal(net, view=2, signer=2, replica=2)))
    assert net.replicas[1].counters["proposal_held_for_view"] == held + 1
    refused(net, proposal(net, view=1, signer=1, replica=1), "wrong_view")


@pytest.mark.parametrize("seq", [0, 129, 1_000])
def test_rule_3_sequence_number_within_the_watermarks(seq):
    """Rule 3: h < seq <= H (here h = 0, H = L = 128, the default log window)."""
    print(f"seed={SEED}")
    net = Net(4, seed=SEED, log_window=128)
    refused(net, proposal(net, seq=seq), "outside_watermarks")


def test_rule_4_one_digest_per_view_and_seq():
    """Rule 4: i has not accepted a different digest for (v, seq); the two signed
    pre-prepares are evidence against the primary."""
    print(f"seed={SEED}")
    net = Net(4, seed=SEED)
    deliver(net, proposal(net))
    other = (net.keys.signer("client", 2).sign(Request(Ops.put("k", b"w"), 1, 2)),)
    effects = refused(net, proposal(net, requests=other), "conflicting_pre_prepare")
    assert [(e.culprit, e.kind) for e in effects if isinstance(e, Evidence)] == [(0, "pre_prepare")]


def test_rule_5_the_batch_matches_and_holds_only_new_requests():
    """Rule 5: d == D(batch_time, B); no request in B already executed, already assigned to
    another seq, or twice in B."""
    print(f"seed={SEED}")
    net = Net(4, seed=SEED)
    refused(net, proposal(net, digest=hashlib.sha256(b"another batch").digest()),
            "bad_batch_digest")
    req = net.keys.signer("client", 1).sign(Request(Ops.put("k", b"v"), 1, 1))
    refused(net, proposal(net, requests=(req, req)), "batch_duplicate_request")
    deliver(net, proposal(net, seq=1, requests=(req,)))
    refused(net, proposal(net, seq=2, requests=(req,)), "batch_request_assigned")
    net = Net(4, seed=SEED)
    done = net.request(0, Ops.put("y", b"1"))  # executes everywhere at seq 1
    net.deliver()
    assert net.completed(0, 1) is not None
    refused(net, proposal(net, seq=2, requests=(done,)), "batch_request_executed")


def test_rule_6_agreed_time_within_the_skew_and_monotonic():
    """Rule 6, for a fresh proposal: batch_time within max_clock_skew of i's clock and not
    below the batch_time of the previous seq."""
    print(f"seed={SEED}")
    net = Net(4, seed=SEED)
    net.advance(10)
    skew = net.config.max_clock_skew_s
    refused(net, proposal(net, at_s=net.now + skew + 0.5), "batch_time_too_far_ahead")
    deliver(net, proposal(net, seq=1))
    later = (net.keys.signer("client", 2).sign(Request(Ops.put("k", b"w"), 1, 2)),)
    refused(net, proposal(net, seq=2, requests=later, at_s=net.now - 0.1),
            "batch_time_before_previous")
