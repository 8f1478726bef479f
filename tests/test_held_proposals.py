"""Proposals that reach a backup while it waits for the NEW-VIEW (PROTOCOL.md Normal case
rule 6 and the view-change liveness argument, OSDI'99 4.4 and 4.5.2).

The new primary proposes as soon as it sends its NEW-VIEW; a backup still in the view
change keeps those proposals (bounded) with the clock reading they arrived at, and judges
them by every acceptance rule once it enters the view, rule 6's clock check against that
reading (NormalCase._hold_for_view, _accept_held_proposals). Crafted schedules on the
step network (tests/harness.py); simulated time only. The simulator's version of the bug
is tests/test_viewchange_contention.py.
"""

from __future__ import annotations

from typing import Any

from bft import codec
from bft.crypto import batch_digest
from bft.messages import Batch, NewView, PrePrepare, Proposal, Request, Signed
from tests.harness import Net, Ops

SEED = 5
NEW_VIEW_DELAY_S = 1.2  # longer than max_clock_skew_s (1 s)


def _view_change_with_held_new_view(net: Net) -> list[tuple[int, int, Any]]:
    """Primary 0 crashes with a request of client 1 pending; replicas 1..3 change to view 1.
    Every NEW-VIEW is held back (returned) when replica 1 sends it: replicas 2 and 3 are
    left in the view change while replica 1, in view 1, proposes the request."""
    net.request(1, Ops.put("a", b"1"))
    net.advance(1.0)
    assert net.completed(1, 1) is not None
    net.crash(0)
    held: list[tuple[int, int, Any]] = []

    def hold_new_view(src: int, dst: int, msg: Any) -> bool:
        if isinstance(msg, Signed) and isinstance(msg.statement, NewView):
            held.append((src, dst, msg))
            return False
        return True

    net.filter = hold_new_view
    net.request(1, Ops.put("a", b"2"))
    while not held:
        net.advance(0.05)
    assert [(r.view, r.in_view_change) for r in net.replicas[1:]] == [
        (1, False), (1, True), (1, True)]
    return held


def _forged_proposal(net: Net, seq: int, client: int, timestamp: int,
                     at_s: float | None = None) -> Proposal:
    """A well-signed view-1 proposal of replica 1 (primary(1)) as a Byzantine one can send
    it: client's request put("b", ...) for seq, stamped at `at_s` (default: now)."""
    req = net.keys.signer("client", client).sign(
        Request(Ops.put("b", b"%d" % timestamp), timestamp, client))
    batch = Batch(int((net.now if at_s is None else at_s) * 1_000_000), (req,))
    pp = net.keys.signer("replica", 1).sign(PrePrepare(1, seq, batch_digest(batch), 1))
    return Proposal(pp, batch)


def _receive(net: Net, i: int, msg: Any) -> None:
    """Hand one message to replica i through the real codec at the network's clock."""
    wire = codec.decode_untrusted(codec.encode(msg), net.config.limits)
    net._apply(i, net.replicas[i].receive(wire, net.now, net.wall(i)))  # type: ignore[union-attr]


def _net() -> Net:
    # view-change timers above the NEW-VIEW's delay: the schedule, not a timer, decides
    return Net(4, seed=SEED, view_change_timeout_s=3.0, view_change_timeout_min_s=3.0)


def _release(net: Net, held: list[tuple[int, int, Any]], after_s: float) -> None:
    net.advance(after_s)
    net.filter = None
    net.queue.extend(held)
    net.deliver()


def test_a_proposal_made_before_a_slow_new_view_arrives_is_accepted_4_5_2() -> None:
    """PROTOCOL.md rule 6 and OSDI'99 4.5.2: view 1's NEW-VIEW takes 1.2 s (more than
    max_clock_skew_s) to reach replicas 2 and 3; replica 1's proposal of client 1's request
    reached them at once, while they were still in the view change. Once the NEW-VIEW
    comes, they accept it, judged by the clock as it was when it arrived, and the request
    completes in view 1.

    Failed before the fix: replicas 2 and 3 dropped the proposal (in_view_change); copies
    resent by loss recovery were more than 1 s old (batch_time_too_far_behind), held back
    until f+1 backups prepared them, which none did: 3 s after the NEW-VIEW the request had
    not completed. With held proposals judged by the clock at the NEW-VIEW's arrival
    instead (planted by hand) it fails too: 1.2 s after the proposal, it is too old."""
    print(f"seed={SEED}")
    net = _net()
    held = _view_change_with_held_new_view(net)
    _release(net, held, NEW_VIEW_DELAY_S)
    assert [(r.view, r.in_view_change) for r in net.replicas[1:]] == [(1, False)] * 3
    assert net.completed(1, 2) == net.completed(1, 1)  # "ok", in view 1
    for r in net.replicas[2:]:
        assert r.counters["proposal_held_for_view"] == 1
        assert r.drops["batch_time_too_far_behind"] == 0


def _held_forgery(stamp_s: float, arrive_s: float) -> Net:
    """Replica 1, the new primary, turned Byzantine: while replicas 2 and 3 wait for its
    NEW-VIEW it sends replica 3 a well-signed proposal for seq 3, `arrive_s` after it sent
    the NEW-VIEW, stamped `stamp_s` after that. The NEW-VIEW reaches replica 3 1.2 s after
    it was sent. Returns the network then."""
    net = _net()
    held = _view_change_with_held_new_view(net)
    sent_at = net.now
    net.advance(arrive_s)
    _receive(net, 3, _forged_proposal(net, 3, client=2, timestamp=1, at_s=sent_at + stamp_s))
    assert net.replicas[3].counters["proposal_held_for_view"] == 2  # the real one and this
    _release(net, held, NEW_VIEW_DELAY_S - arrive_s)
    return net


def _prepared_by_3(net: Net, seq: int) -> bool:
    slot = net.replicas[3].log.get(seq)
    return slot is not None and (slot.pre_prepare is not None or 3 in slot.prepares)


def test_a_held_proposal_stamped_too_far_behind_its_arrival_is_refused_rule_6() -> None:
    """PROTOCOL.md rule 6 (a faulty primary cannot stamp a batch far in the past): a
    proposal held through the view change is judged by replica 3's clock when it arrived.
    Stamped when the NEW-VIEW was sent (not below seq 2's batch, so agreed time would stay
    monotonic) but arriving 1.1 s later, more than max_clock_skew_s, it is refused (held
    back until f+1 backups vouch for it, which none does), and the view goes on.
    With the held proposals' time check planted away (by hand: `_accept_held_proposals`
    judging each against its own batch_time) this test fails: replica 3 prepares seq 3.
    Failed before the fix: nothing was held (the held count is 0)."""
    print(f"seed={SEED}")
    net = _held_forgery(0.0, 1.1)
    r3 = net.replicas[3]
    assert r3.drops["batch_time_too_far_behind"] == 1
    assert not _prepared_by_3(net, 3)
    assert net.completed(1, 2) is not None  # the correct part of the view goes on


def test_a_held_proposal_stamped_too_far_ahead_of_its_arrival_is_refused_rule_6() -> None:
    """PROTOCOL.md rule 6 (nor far in the future): stamped 1.5 s ahead of replica 3's clock
    at its arrival, the held proposal is refused, though by the NEW-VIEW's arrival 1.2 s
    later it is only 0.3 s ahead, within max_clock_skew_s: the fix judges against the
    arrival, not the NEW-VIEW (what option (c) of the bug report would have accepted).
    With the check planted to read the clock at the NEW-VIEW's arrival (by hand) this test
    fails: replica 3 prepares seq 3. Failed before the fix: nothing was held."""
    print(f"seed={SEED}")
    net = _held_forgery(1.5, 0.0)
    r3 = net.replicas[3]
    assert r3.drops["batch_time_too_far_ahead"] == 1
    assert not _prepared_by_3(net, 3)


def test_held_proposals_are_bounded_by_max_in_flight() -> None:
    """PROTOCOL.md "Peer input never breaks a replica" (no unbounded memory): a Byzantine new
    primary that sends proposals for many seqs during the view change has at most
    max_in_flight of them held; the rest are dropped and counted. Failed before the fix:
    nothing was held (the held count is 0)."""
    print(f"seed={SEED}")
    net = _net()
    _view_change_with_held_new_view(net)
    r3 = net.replicas[3]
    cap = net.config.max_in_flight
    for k in range(cap + 5):
        _receive(net, 3, _forged_proposal(net, 3 + k, client=2, timestamp=1 + k))
    assert r3.counters["proposal_held_for_view"] == cap  # the real seq 2 and cap - 1 forged
    assert len(r3._held_proposals) == cap
    assert r3.drops["held_proposals_full"] == 6  # (cap + 5) - (cap - 1)
