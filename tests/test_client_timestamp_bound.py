"""Issue 21, item 5: one request must not lock its client out.

A replica executes a client's requests in increasing request number and ignores
anything at or below the last executed one (PROTOCOL.md 4.1). A signed request
numbered 2**63 - 1 would make every later request of that client `old_request`: a
client bug or a clock jump forward would lock the id out for good. So request numbers
are bounded by agreed time: a batch may carry a request numbered at most its
batch_time (microseconds) plus `timeouts.client_timestamp_window_s`; a correct primary
proposes none above, backups refuse a batch with one (`batch_request_too_far_ahead`),
and execution skips one that got through anyway (`request_too_far_ahead`). Only the
agreed batch time and the config decide: every correct replica applies the same rule.

Real clients number requests from the time of day in microseconds, one more per request
(bft/node.py `claim_client_id`, `ClusterClient`): the tests run the step network
(tests/harness.py) at such a time of day, with such numbers, and check they are never
refused.
"""

from __future__ import annotations

from harness import Net, Ops

from bft import codec
from bft.crypto import batch_digest
from bft.messages import Batch, PrePrepare, Proposal, Request, Signed
from bft.replica import Replica

SEED = 1
#: the time of day the tests run at (2026-12-07), seconds since the epoch
NOW_S = 1_796_600_000.0
WINDOW_S = 60.0
SKEW_S = 1.0
US = 1_000_000


def make_net(**overrides) -> Net:
    net = Net(4, seed=SEED, client_timestamp_window_s=WINDOW_S, max_clock_skew_s=SKEW_S,
              **overrides)
    net.now = NOW_S
    return net


def sign(net: Net, client: int, timestamp: int, op: bytes) -> Signed:
    return net.keys.signer("client", client).sign(Request(op, timestamp, client))


def proposal_from_0(net: Net, seq: int, batch_time_us: int, requests: list[Signed]) -> Proposal:
    """A PRE-PREPARE(0, seq, d) signed with primary 0's key, with its batch."""
    batch = Batch(batch_time_us, tuple(requests))
    return Proposal(net.keys.signer("replica", 0).sign(PrePrepare(0, seq, batch_digest(batch), 0)),
                    batch)


def test_a_request_numbered_2_63_does_not_lock_its_client_out():
    """The attack of issue 21, item 5, through the correct replicas' whole path.

    Failed before the fix: the request numbered 2**63 - 1 executed everywhere, and the
    client's next request (numbered from its clock) was dropped as `old_request` by every
    replica: no reply, ever, for that client id."""
    print(f"seed={SEED}")
    net = make_net()
    net.request(0, Ops.put("k", b"poison"), timestamp=2**63 - 1)
    net.advance(1.0)
    honest = int(net.now * US)  # what `claim_client_id` would start this client at
    net.request(0, Ops.put("k", b"v1"), timestamp=honest)
    net.request(0, Ops.get("k"), timestamp=honest + 1)
    net.advance(1.0)
    assert net.completed(0, honest) is not None, "the client is locked out"
    assert net.completed(0, honest + 1) is not None
    assert net.completed(0, 2**63 - 1) is None
    for i in range(4):
        replica = net.replicas[i]
        assert net.executed_ops(i) == [(0, honest), (0, honest + 1)], i
        assert replica.drops["request_too_far_ahead"] == 1, (i, dict(replica.drops))
        assert replica.drops["old_request"] == 0
    assert len(set(net.digests().values())) == 1


def test_honest_numbers_pass_up_to_the_bound_and_one_more_is_refused():
    """A correct client's clock may be up to a skew ahead of the true time, and a correct
    replica's up to a skew behind: a request numbered up to the window minus a skew
    ahead of a replica's clock is held and executed; the bound is exact."""
    print(f"seed={SEED}")
    net = make_net()
    clock_us = int(net.now * US)
    edge = clock_us + int((WINDOW_S - SKEW_S) * US)
    net.request(1, Ops.put("a", b"1"), timestamp=edge + 1)
    net.deliver()
    for i in range(4):
        assert net.replicas[i].drops["request_too_far_ahead"] == 1, i
    net.request(1, Ops.put("a", b"2"), timestamp=edge)
    net.advance(1.0)
    assert net.completed(1, edge) is not None
    for i in range(4):
        assert net.executed_ops(i) == [(1, edge)], i


def test_a_byzantine_primarys_batch_with_a_request_too_far_ahead_is_refused():
    """Backups refuse a fresh batch carrying a request numbered above its batch_time plus
    the window (a counted drop, like the other batch checks of PROTOCOL.md rule 5); at the
    bound the same batch is accepted and executes."""
    print(f"seed={SEED}")
    net = make_net()
    net.crash(0)  # the Byzantine primary: its proposals are signed below with its key
    batch_time = int(net.now * US)
    bound = batch_time + int(WINDOW_S * US)
    honest = sign(net, 1, batch_time - 5, Ops.put("b", b"1"))
    ahead = sign(net, 2, bound + 1, Ops.put("c", b"1"))
    for j in (1, 2, 3):
        net.queue.append((0, j, proposal_from_0(net, 1, batch_time, [honest, ahead])))
    net.deliver()
    for i in (1, 2, 3):
        replica = net.replicas[i]
        assert replica.drops["batch_request_too_far_ahead"] == 1, (i, dict(replica.drops))
        assert replica.log.get(1) is None or replica.log.get(1).pre_prepare is None
        assert net.executed[i] == []

    at_bound = sign(net, 2, bound, Ops.put("c", b"1"))
    for j in (1, 2, 3):
        net.queue.append((0, j, proposal_from_0(net, 1, batch_time, [honest, at_bound])))
    net.deliver()
    for i in (1, 2, 3):
        assert net.executed_ops(i) == [(1, batch_time - 5), (2, bound)], i


def test_the_primary_does_not_propose_a_request_too_far_ahead():
    """A request held while the primary's clock read late can be too far ahead of the batch
    time it then proposes (its clock was set back): the primary leaves it out, counted,
    and proposes the rest, so its batch is not refused.

    Requests reach only the primary; max_in_flight = 1 holds them until seq 1 executes."""
    print(f"seed={SEED}")
    net = make_net(max_in_flight=1)
    first = net.request(0, Ops.put("x", b"1"), to=0)
    net.cut.update({(1, 0), (2, 0), (3, 0)})  # seq 1 waits for the backups' votes
    net.deliver()
    assert net.replicas[0].counters["proposed"] == 1 and net.executed_ops(0) == []
    net.now += 100.0
    ahead_t = int(net.now * US) + int((WINDOW_S - SKEW_S) * US)  # held: within the bound
    net.request(1, Ops.put("y", b"1"), to=0, timestamp=ahead_t)
    net.request(2, Ops.put("z", b"1"), to=0)
    net.deliver()
    assert len(net.replicas[0].pending) == 2
    net.clock_skew_s[0] = -50.0  # the primary's clock is set back 50 s
    net.heal()
    net.advance(1.0)  # loss recovery brings the votes: seq 1 executes, then seq 2 is proposed
    primary = net.replicas[0]
    assert primary.drops["request_too_far_ahead"] == 1, dict(primary.drops)
    assert net.executed_ops(0)[:1] == [(0, first.statement.timestamp)]
    seq2 = primary.log.get(2)
    assert seq2 is not None and seq2.batch is not None
    assert [s.statement.client for s in seq2.batch.requests] == [2]


class _NoBatchRequestCheck(Replica):
    """A backup whose acceptance check of request numbers is missing (a planted gap)."""

    def _batch_problem(self, batch, seq):
        problem = super()._batch_problem(batch, seq)
        return None if problem == "batch_request_too_far_ahead" else problem


def test_execution_skips_a_request_too_far_ahead_that_got_through():
    """The execution step enforces the bound itself, from replicated state only (the
    batch's agreed time and the config): with the acceptance check planted out, the batch
    commits, yet no replica executes the request or replies to it, every replica counts
    it, their states agree, and the client's next request executes."""
    print(f"seed={SEED}")
    net = make_net(replica_class=_NoBatchRequestCheck)
    net.crash(0)
    batch_time = int(net.now * US)
    ahead = sign(net, 2, 2**63 - 1, Ops.put("c", b"poison"))
    honest = sign(net, 1, batch_time, Ops.put("b", b"1"))
    for j in (1, 2, 3):
        net.queue.append((0, j, proposal_from_0(net, 1, batch_time, [honest, ahead])))
    net.deliver()
    for i in (1, 2, 3):
        replica = net.replicas[i]
        assert replica.last_executed == 1, i
        assert replica.drops["request_too_far_ahead"] == 1, (i, dict(replica.drops))
        assert 2 not in replica.client_table and replica.client_table[1][0] == batch_time
        assert net.executed[i][0].results[1] == b""
    assert net.completed(2, 2**63 - 1) is None and net.completed(1, batch_time) is not None
    assert len(set(net.digests().values())) == 1

    later = sign(net, 2, batch_time + 7, Ops.put("c", b"ok"))
    for j in (1, 2, 3):
        net.queue.append((0, j, proposal_from_0(net, 2, batch_time + 10, [later])))
    net.deliver()
    for i in (1, 2, 3):
        assert net.replicas[i].client_table[2][0] == batch_time + 7, i
    assert net.completed(2, batch_time + 7) is not None


def test_the_wire_carries_the_largest_request_number():
    """The attack needs no malformed message: 2**63 - 1 is a valid request number."""
    net = make_net()
    request = sign(net, 0, 2**63 - 1, b"op")
    assert codec.decode_untrusted(codec.encode(request), net.config.limits) == request


def test_the_linearizability_model_skips_what_the_replicas_skip():
    """The checkers' sequential model (adversary/checkers.py) applies the same bound, given
    the window, so the replicas' skipping is not taken for a divergence; without it, the
    model executes the request and reports every replica's result as wrong."""
    from adversary.checkers import LinearizabilityChecker

    net = make_net(replica_class=_NoBatchRequestCheck)
    net.crash(0)
    batch_time = int(net.now * US)
    ahead = sign(net, 2, 2**63 - 1, Ops.put("c", b"poison"))
    honest = sign(net, 2, batch_time, Ops.put("c", b"1"))
    for seq, requests in ((1, [ahead]), (2, [honest])):
        for j in (1, 2, 3):
            net.queue.append((0, j, proposal_from_0(net, seq, batch_time, requests)))
        net.deliver()
    assert all(net.replicas[i].last_executed == 2 for i in (1, 2, 3))

    window_us = int(WINDOW_S * US)
    faithful = LinearizabilityChecker({1, 2, 3}, max_clock_skew_us=int(SKEW_S * US),
                                      client_timestamp_window_us=window_us)
    unbounded = LinearizabilityChecker({1, 2, 3}, max_clock_skew_us=int(SKEW_S * US))
    for checker in (faithful, unbounded):
        for i in (1, 2, 3):
            for executed in net.executed[i]:
                checker.on_executed(i, executed, net.now)
        checker.finish(net.now)
    assert faithful.ok, faithful.violations
    assert faithful.data()["replica_results_checked"] == 3  # seq 2's put, at every replica
    assert not unbounded.ok and "differs from the sequential model" in unbounded.violations[0]
