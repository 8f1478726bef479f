"""Protocol tests of the pure Replica, each naming the rule it checks.

Sections: PROTOCOL.md headings, and Castro & Liskov OSDI'99 section numbers
(TOCS'02 for state transfer). Driven by tests/harness.py: a step-by-step
network through the real codec, no wall clock, no randomness unless seeded.
"""

from __future__ import annotations

import random

import pytest
from harness import Net, Ops

from bft.app import decode_result
from bft.crypto import batch_digest
from bft.messages import (
    Batch,
    NewView,
    PrePrepare,
    Proposal,
    Request,
    ViewChange,
)


def put(k: str, v: bytes = b"v") -> bytes:
    return Ops.put(k, v)


def test_normal_case_commits_and_replies_4_2():
    """4.2: PRE-PREPARE -> PREPARE -> COMMIT -> execute in seq order -> f+1 matching replies."""
    net = Net(4)
    net.request(0, put("a", b"1"), to=0)
    net.deliver()
    assert str(decode_result(net.completed(0, 1))) == "ok"
    assert [r.last_executed for r in net.replicas] == [1, 1, 1, 1]
    assert len(set(net.digests().values())) == 1
    net.request(1, Ops.get("a"), to=0)
    net.deliver()
    assert decode_result(net.completed(1, 1)).value == b"1"


def test_pipelining_and_batching_4_2():
    """Several requests in flight inside the watermarks; all replicas execute the same order."""
    net = Net(4, batch_max_requests=4, max_in_flight=3)
    for k in range(40):
        net.request(k % 4, put(f"k{k}"), to=0)
    net.deliver()
    orders = [net.executed_ops(i) for i in range(4)]
    assert len(orders[0]) == 40
    assert all(o == orders[0] for o in orders)
    batches = [len(e.batch.requests) for e in net.executed[0]]
    assert max(batches) > 1  # requests were batched
    assert max(batches) <= 4


def test_exactly_once_and_cached_reply_4_1():
    """4.1: a retransmitted request is not executed again; the cached reply is resent."""
    net = Net(4)
    net.request(0, put("a", b"1"), to=0)
    net.deliver()
    before = len(net.replies[0])
    net.request(0, put("a", b"1"), timestamp=1)  # the same request again, to all
    net.deliver()
    assert all(net.executed_ops(i).count((0, 1)) == 1 for i in range(4))
    assert len(net.replies[0]) >= before + 4  # every replica resent its reply
    # an older timestamp is ignored
    net.request(0, put("a", b"2"), timestamp=2)
    net.deliver()
    net.request(0, put("a", b"0"), timestamp=1)
    net.deliver()
    assert net.executed_ops(0) == [(0, 1), (0, 2)]


def test_checkpoint_stable_and_garbage_collection_4_3():
    """4.3: every K seqs a checkpoint; 2f+1 matching make it stable; the log below is discarded."""
    net = Net(4, checkpoint_interval=4, log_window=8)
    for k in range(25):
        net.request(0, put(f"k{k}"), to=0)
        net.deliver()
    for r in net.replicas:
        assert r.last_executed == 25
        assert r.stable_seq == 24
        assert all(seq > 24 for seq in r.log.slots)
        assert r.log.high == 32
        assert max(r.checkpoints, default=25) > 24


def test_view_change_after_primary_crash_4_4():
    """4.4: backups time out on a pending request, change view, and the request completes."""
    net = Net(4)
    net.request(0, put("a"), to=0)
    net.deliver()
    net.crash(0)
    net.request(1, put("b"))  # the client broadcasts after its own timeout
    net.advance(5)
    assert net.completed(1, 1) is not None
    for r in net.replicas[1:]:
        assert r.view == 1 and not r.in_view_change
        assert r.last_executed == 2
    causes = {e.fields["cause"] for _, e in net.events if e.kind == "view_change_start"}
    assert causes == {"timeout"}


def test_view_change_keeps_prepared_requests_4_4():
    """4.4: a request prepared in view v is re-proposed with the same digest in view v+1."""
    net = Net(4)
    # let the pre-prepare and prepares flow but drop every COMMIT: seq 1 is prepared, not committed
    net.filter = lambda s, d, m: type(getattr(m, "statement", None)).__name__ != "Commit"
    net.request(0, put("a", b"1"), to=0)
    net.deliver()
    assert all(r.last_executed == 0 for r in net.replicas)
    digest = net.replicas[1].log.get(1).digest
    net.filter = None
    net.crash(0)
    net.request(1, put("b"))
    net.advance(5)
    for r in net.replicas[1:]:
        assert r.view == 1
        assert r.last_executed == 2
    assert net.executed[1][0].digest == digest
    assert net.completed(0, 1) is not None


def test_timeouts_double_on_failed_view_changes_4_5():
    """4.5: a view change that does not complete moves on to v+2 with a doubled timer."""
    net = Net(7)  # f = 2: primaries of views 0 and 1 both crash
    net.crash(0)
    net.crash(1)
    net.request(0, put("a"))
    net.advance(30, step=0.01)
    starts = [(net.now, e.fields["view"]) for i, e in net.events
              if e.kind == "view_change_start" and i == 2]
    views = [v for _, v in starts]
    assert views[:2] == [1, 2]
    assert net.replicas[2].view == 2 and not net.replicas[2].in_view_change
    assert net.completed(0, 1) is not None


def test_timeout_doubling_intervals_4_5():
    """4.5: successive view changes that get no NEW-VIEW wait T, 2T, 4T before moving on;
    PROTOCOL.md: T is bounded by the config (`view_change_max_s`), and nothing but a valid
    NEW-VIEW stops it: a would-be primary that is heard from (STATUS) gets no longer."""
    # a fixed base timeout (the detector's floor) so the doubling is what the gaps show
    net = Net(4, view_change_timeout_s=1.0, view_change_timeout_min_s=1.0,
              view_change_timeout_max_s=8.0)
    net.filter = lambda s, d, m: type(getattr(m, "statement", None)).__name__ != "NewView"
    net.crash(0)
    net.request(0, put("a"))
    net.advance(60, step=0.01)
    # the first time any replica starts each view (a primary of a view enters it at once with
    # its own NEW-VIEW, then joins the next view change late, so look across replicas)
    first: dict[int, float] = {}
    for i, e in net.events:
        if e.kind == "view_change_start":
            v = e.fields["view"]
            first[v] = min(first.get(v, e.fields["at"]), e.fields["at"])
    views = sorted(first)
    starts = [first[v] for v in views]
    assert len(starts) >= 7
    gaps = [b - a for a, b in zip(starts, starts[1:])]
    # T, 2T, 4T, then the cap of 8 s; a little slack for message delivery and tick steps
    expected = [min(2.0 ** k, 8.0) for k in range(len(gaps))]
    for got, want in zip(gaps, expected):
        assert want - 0.02 <= got <= want + 0.25, (gaps, expected)


def test_join_on_f_plus_1_view_changes_4_5():
    """4.5: f+1 valid VIEW-CHANGEs for a higher view make a replica join at once."""
    net = Net(4)
    net.queue.clear()
    for sender in (2, 3):
        vc = net.keys.signer("replica", sender).sign(
            ViewChange(6, 0, b"\0" * 32, (), (), sender))
        net.queue.append((sender, 1, vc))
    net.deliver(max_steps=1)
    assert net.replicas[1].view == 0  # one is not enough
    net.deliver(max_steps=1)
    assert net.replicas[1].view == 6 and net.replicas[1].in_view_change
    assert any(e.kind == "view_change_start" and e.fields["cause"] == "join"
               for i, e in net.events if i == 1)


def test_equivocating_primary_gives_evidence_and_view_change():
    """Evidence: two PRE-PREPAREs for one (v, seq) with different digests; the holder starts a
    view change at once instead of waiting for its timer."""
    net = Net(4)
    primary = net.keys.signer("replica", 0)
    client = net.keys.signer("client", 0)
    proposals = []
    for value in (b"x", b"y"):
        req = client.sign(Request(put("k", value), 1, 0))
        batch = Batch(1, (req,))
        pp = primary.sign(PrePrepare(0, 1, batch_digest(batch), 0))
        proposals.append(Proposal(pp, batch))
    net.replicas[0] = None  # the primary is the adversary here
    net.queue.append((0, 1, proposals[0]))
    net.queue.append((0, 1, proposals[1]))
    net.deliver()
    assert len(net.evidence) >= 1
    ev = net.evidence[0]
    assert ev.culprit == 0 and ev.kind == "pre_prepare"
    assert ev.first.statement.digest != ev.second.statement.digest
    assert any(i == 1 and e.kind == "view_change_start" and e.fields["cause"] == "evidence"
               for i, e in net.events)


def test_conflicting_prepares_give_evidence():
    """Evidence: two PREPAREs with the same (v, seq, i) and different digests."""
    from bft.messages import Prepare

    net = Net(4)
    s3 = net.keys.signer("replica", 3)
    net.queue.append((3, 1, s3.sign(Prepare(0, 1, b"\1" * 32, 3))))
    net.queue.append((3, 1, s3.sign(Prepare(0, 1, b"\2" * 32, 3))))
    net.deliver()
    assert [(e.culprit, e.kind) for e in net.evidence] == [(3, "prepare")]
    assert net.replicas[1].view == 0  # evidence against a backup starts no view change


def test_new_view_with_wrong_o_is_rejected_4_4():
    """4.4: a backup recomputes O from V and rejects a NEW-VIEW whose O differs."""
    net = Net(4)
    vcs = [net.keys.signer("replica", i).sign(ViewChange(1, 0, b"\0" * 32, (), (), i))
           for i in (1, 2, 3)]
    s1 = net.keys.signer("replica", 1)
    bogus_pp = s1.sign(PrePrepare(1, 1, b"\7" * 32, 1))  # O should be empty
    nv = s1.sign(NewView(1, tuple(vcs), (bogus_pp,), 1))
    net.queue.append((1, 2, nv))
    net.deliver()
    assert net.replicas[2].view == 0
    assert net.replicas[2].drops["new_view_wrong_o"] == 1
    good = s1.sign(NewView(1, tuple(vcs), (), 1))
    net.queue.append((1, 2, good))
    net.deliver()
    assert net.replicas[2].view == 1 and not net.replicas[2].in_view_change


def test_backup_rejects_batch_time_too_far_ahead_rule_6():
    """Normal case rule 6: batch_time within max_clock_skew of the backup's clock."""
    net = Net(4, max_clock_skew_s=0.5)
    primary = net.keys.signer("replica", 0)
    req = net.keys.signer("client", 0).sign(Request(put("a"), 1, 0))
    batch = Batch(int(10 * 1e6), (req,))  # 10 s ahead of everyone's clock
    net.replicas[0] = None
    net.queue.append((0, 1, Proposal(primary.sign(PrePrepare(0, 1, batch_digest(batch), 0)), batch)))
    net.deliver()
    assert net.replicas[1].drops["batch_time_too_far_ahead"] == 1
    assert net.replicas[1].log.get(1) is None or net.replicas[1].log.get(1).pre_prepare is None


def test_state_transfer_of_a_lagging_replica_tocs_5_3():
    """TOCS 5.3: a replica behind the stable checkpoint fetches the state, checks the digest."""
    net = Net(4, checkpoint_interval=4, log_window=8)
    net.isolate(3)
    for k in range(30):
        net.request(k % 3, put(f"k{k}"), to=0)
        net.deliver()
    assert net.replicas[3].last_executed == 0
    net.heal()
    net.advance(3)
    r3 = net.replicas[3]
    assert r3.last_executed >= 28
    assert any(e.kind == "state_transfer" for i, e in net.events if i == 3)
    assert net.replicas[3].app.digest() == net.replicas[0].app.digest() or r3.last_executed < 30
    net.request(0, put("after"), to=0)
    net.deliver()
    net.advance(1)
    assert len({r.last_executed for r in net.replicas}) == 1
    assert len({r.app.digest() for r in net.replicas}) == 1


def test_progress_under_heavy_loss_loss_recovery():
    """Loss recovery: with 30 % of messages dropped, status and retransmission still commit."""
    seed = 7
    print("seed", seed)
    rng = random.Random(seed)
    net = Net(4)
    net.filter = lambda s, d, m: rng.random() > 0.3
    for k in range(1, 11):
        op = put(f"k{k}")
        for _ in range(10):  # the client retransmits (to all) until f+1 replies match
            net.request(0, op, timestamp=k)
            net.advance(1, step=0.05)
            if net.completed(0, k) is not None:
                break
    assert all(net.completed(0, t) is not None for t in range(1, 11))
    execd = [r.last_executed for r in net.replicas]
    assert min(execd) >= 8
    assert len({tuple(net.executed_ops(i)[:8]) for i in range(4)}) == 1


def test_restart_never_contradicts_own_prepare_crash_recovery():
    """Crash recovery: a replica that prepared d before a crash never prepares d' after it."""
    net = Net(4)
    primary = net.keys.signer("replica", 0)
    client = net.keys.signer("client", 0)
    net.replicas[0] = None
    reqs = [client.sign(Request(put("k", v), 1, 0)) for v in (b"x", b"y")]
    props = []
    for r in reqs:
        batch = Batch(1, (r,))
        props.append(Proposal(primary.sign(PrePrepare(0, 1, batch_digest(batch), 0)), batch))
    net.queue.append((0, 1, props[0]))
    net.deliver()
    mine = net.replicas[1].log.get(1).prepares[1].statement.digest
    assert mine == props[0].pre_prepare.statement.digest
    net.crash(1)
    net.restart(1)
    net.queue.clear()
    net.queue.append((0, 1, props[1]))
    net.deliver()
    sent = [m for s, d, m in list(net.queue) if s == 1]
    assert all(getattr(m, "statement", None) is None or
               getattr(m.statement, "digest", mine) == mine for m in sent)
    assert net.replicas[1].log.get(1).prepares[1].statement.digest == mine


def test_primary_restart_does_not_reuse_sequence_numbers():
    """Crash recovery: a restarted primary does not assign a new batch to a seq it used."""
    net = Net(4)
    net.request(0, put("a"), to=0)
    net.deliver()
    net.crash(0)
    net.restart(0)
    net.request(0, put("b"), to=0)
    net.deliver()
    net.advance(2)
    assert net.completed(0, 2) is not None
    assert [e.seq for e in net.executed[1]] == [1, 2]


@pytest.mark.parametrize("n", [4, 7])
def test_replicas_agree_after_crash_and_restart_of_each_node(n):
    """Crash recovery with the WAL: restart each node in turn; all digests end equal."""
    net = Net(n, checkpoint_interval=4, log_window=8)
    t = 0
    for victim in range(n):
        net.crash(victim)
        for _ in range(5):
            t += 1
            net.request(0, put(f"k{t}"))
            net.advance(1.5)
        net.restart(victim)
        net.advance(2)
    net.advance(3)
    assert all(net.completed(0, x) is not None for x in range(1, t + 1))
    assert len({r.app.digest() for r in net.replicas}) == 1
