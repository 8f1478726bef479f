"""Regression tests for replica bugs found by the real-process cluster tests.

Each test is the smallest deterministic replay (tests/harness.py: pure replicas,
a step network, no wall clock) of a failure seen over real UDP.
"""

from __future__ import annotations

from harness import Net, Ops

SEED = 1


def _partition_node_3_with_work_pending() -> tuple[Net, dict[str, bool]]:
    """Node 3 learns of a request, then is cut off before it executes: its progress timer
    fires and it starts a view change alone (view 1) while the others go on in view 0
    and move their stable checkpoint past node 3's log window (K = 4, L = 8)."""
    print(f"seed={SEED}")
    net = Net(4, seed=SEED, checkpoint_interval=4, log_window=8)
    cut = {"on": True}
    # node 3 hears clients (-1) but no replica, and no replica hears it
    net.filter = lambda src, dst, msg: not cut["on"] or src == -1 or 3 not in (src, dst)
    net.request(0, Ops.put("a", b"1"))  # a client broadcast: node 3 now waits for it
    net.deliver()
    net.advance(2)  # today: node 3's progress timer fires and it moves to view 1 alone
    for k in range(20):
        net.request(1, Ops.put(f"k{k}", b"v"), to=0)
        net.deliver()
    net.advance(1)
    assert net.replicas[0].view == 0 and net.replicas[0].stable_seq == 20
    return net, cut


def test_replica_alone_in_a_view_change_gets_the_stable_checkpoint_after_heal():
    """State transfer (TOCS 5.3) and loss recovery: once the partition heals, a replica
    behind the others' stable checkpoint learns its proof and fetches the state, whatever
    view it is in. Checkpoints are not bound to a view.

    Fails today: `Replica._on_status` returns early when the sender's view differs
    (`st.view < self.view`: node 3 only re-sends its VIEW-CHANGE; `st.view > self.view`:
    the others ignore node 3's STATUS) before the branch that sends the stable
    checkpoint proof to a peer that is behind, so node 3 stays at seq 0 until new
    checkpoints happen to be broadcast."""
    net, cut = _partition_node_3_with_work_pending()
    cut["on"] = False
    net.advance(5)  # no client traffic after the heal: only STATUS-driven recovery
    r3 = net.replicas[3]
    assert r3.last_executed >= net.replicas[0].stable_seq, (
        f"node 3 executed {r3.last_executed}, others' stable checkpoint is "
        f"{net.replicas[0].stable_seq}"
    )


def test_replica_alone_in_a_view_change_catches_up_with_the_others_after_heal():
    """After the partition heals and clients go on, the replica that started a view change
    alone ends up with the same executed prefix and state as the others.

    Fails today: node 3 stays in view 1 (in a view change nobody else joins: f+1 VIEW-CHANGEs
    are needed), drops every view-0 PRE-PREPARE/PREPARE/COMMIT as `wrong_view`, and only
    moves by checkpoint state transfer, so it lags the others by up to K-1 sequence numbers
    forever (until some later view change), never replies to those requests, and its state
    digest differs from theirs."""
    net, cut = _partition_node_3_with_work_pending()
    cut["on"] = False
    net.advance(2)
    for k in range(10):
        net.request(2, Ops.put(f"z{k}", b"v"), to=0)
        net.deliver()
    net.advance(5)
    executed = [r.last_executed for r in net.replicas]
    assert len(set(executed)) == 1, f"last executed per replica: {executed}"
    assert len({r.app.digest() for r in net.replicas}) == 1


def test_loss_recovery_resends_are_counted_and_only_when_something_was_lost():
    """Loss recovery (PROTOCOL.md "Loss recovery"): node 3 loses the first COMMIT from each
    peer, so its STATUS shows it stuck below the others, and they resend what it lacks,
    counted as `status_resends` (exposed per node in `Node.summary()["replica_counters"]`).
    The same run without the loss resends nothing."""
    print(f"seed={SEED}")
    from bft.messages import Commit

    def run(lose: bool) -> tuple[int, list[int]]:
        net = Net(4, seed=SEED)
        lost: set[int] = set()  # senders whose first COMMIT to node 3 was lost

        def deliver(src, dst, msg) -> bool:
            if lose and dst == 3 and isinstance(getattr(msg, "statement", None), Commit) \
                    and src not in lost:
                lost.add(src)
                return False
            return True

        net.filter = deliver
        net.request(0, Ops.put("a", b"1"))
        net.deliver()
        net.advance(1)
        return (sum(r.counters["status_resends"] for r in net.replicas),
                [r.last_executed for r in net.replicas])

    assert run(lose=False) == (0, [1, 1, 1, 1])
    resends, executed = run(lose=True)
    assert executed == [1, 1, 1, 1] and resends > 0


def test_a_stuck_peer_gets_a_lost_batch_from_two_replicas_not_from_all():
    """Loss recovery (PROTOCOL.md "Loss recovery"), n = 7: node 6 loses every message of the
    first request, so it is stuck below the others. At its first stuck STATUS only the two
    replicas after it in id order (0 and 1) resend the batch with its commit certificate;
    everyone did before, and at n = 13 under overload those copies were ~35 % of all
    messages sent (benchmarks/RESULTS.md). Node 6 still catches up."""
    print(f"seed={SEED}")
    from bft.messages import Proposal

    net = Net(7, seed=SEED)
    cut = {"on": True}
    batch_from: set[int] = set()

    def deliver(src, dst, msg) -> bool:
        if dst != 6 or src < 0:
            return True
        if cut["on"]:
            return False
        if isinstance(msg, Proposal):
            batch_from.add(src)
        return True

    net.filter = deliver
    net.request(0, Ops.put("a", b"1"), to=0)
    net.deliver()
    assert [r.last_executed for r in net.replicas] == [1] * 6 + [0]
    cut["on"] = False
    net.advance(1)
    assert net.replicas[6].last_executed == 1
    assert batch_from and batch_from <= {0, 1}, f"batches resent by {sorted(batch_from)}"


def test_a_restarted_replica_counts_its_own_checkpoint_inside_a_relayed_stable_proof():
    """Checkpoints and state transfer (PROTOCOL.md "Checkpoints", TOCS 4.3 and 5.3): node 3
    signs CHECKPOINT 4 but hears nobody's, then crashes and restarts from a WAL that holds no
    checkpoint. Node 2's CHECKPOINTs never get through, so the stable proof the others hold
    and relay is {0, 1, 3}: node 3's own pre-crash vote is one of the 2f+1. A valid signature
    of ours, it must count, or node 3 sees only 2 and never transfers the state.

    Failed before the fix: the dispatch dropped every message signed by the receiver as
    'own_message' (the sim found it, seed 329 in tests/test_sim_regressions.py; the
    same pattern as a relayed COMMIT certificate, seed 79)."""
    print(f"seed={SEED}")
    from bft.messages import Checkpoint

    net = Net(4, seed=SEED, checkpoint_interval=4, log_window=8)

    def is_cp(msg) -> bool:
        return isinstance(getattr(msg, "statement", None), Checkpoint)

    net.filter = lambda src, dst, msg: not (is_cp(msg) and (dst == 3 or msg.statement.replica == 2))
    for k in range(4):
        net.request(0, Ops.put(f"k{k}", b"v"), to=0)
        net.deliver()
    assert [(r.last_executed, r.stable_seq) for r in net.replicas] == [(4, 4)] * 3 + [(4, 0)]
    assert {c.statement.replica for c in net.replicas[0].stable_proof} == {0, 1, 3}
    net.crash(3)
    net.restart(3)
    assert net.replicas[3].last_executed == 0 and not net.replicas[3].checkpoints
    net.filter = lambda src, dst, msg: not (is_cp(msg) and msg.statement.replica == 2)
    net.advance(3)  # no client traffic: only STATUS-driven recovery
    r3 = net.replicas[3]
    assert (r3.last_executed, r3.stable_seq) == (4, 4), r3.drops
    assert r3.app.digest() == net.replicas[0].app.digest()
