"""What a Byzantine primary's validly signed batches can and cannot do to correct replicas.

Issue 18: a batch larger than the config allows (1f) and batch times that run
backwards across seqs (weaker spot "agreed time can run backwards"). Replica 0
is the primary of view 0; the tests crash it and sign its proposals themselves
with its key (tests/harness.py: pure replicas, a step network, no wall clock),
so the proposals are exactly what a Byzantine primary may send.
"""

from __future__ import annotations

from harness import Net, Ops

from bft.app import decode_result
from bft.crypto import batch_digest
from bft.messages import Batch, PrePrepare, Proposal, Request, Signed

SEED = 1


def signed_request(net: Net, client: int, timestamp: int, op: bytes) -> Signed:
    return net.keys.signer("client", client).sign(Request(op, timestamp, client))


def byzantine_proposal(net: Net, seq: int, batch_time_us: int,
                       requests: list[Signed]) -> Proposal:
    """A PRE-PREPARE(0, seq, d) signed with replica 0's key, with its batch."""
    batch = Batch(batch_time_us, tuple(requests))
    pre_prepare = PrePrepare(0, seq, batch_digest(batch), 0)
    return Proposal(net.keys.signer("replica", 0).sign(pre_prepare), batch)


def send_to_backups(net: Net, proposal: Proposal) -> None:
    for j in range(1, net.n):
        net.queue.append((0, j, proposal))


def test_a_batch_over_batch_max_requests_is_a_counted_drop_and_never_executes():
    """PROTOCOL.md "Peer input never breaks a replica" and Normal case rule 5: a batch
    of more requests than `batching.max_requests` is refused at acceptance (a counted
    drop, `batch_too_large`), so no batch that reaches execution can hold an index the
    application cannot turn into a fencing token (ExecContext raises for an index >=
    TOKEN_INDEX_SPAN; config validation bounds max_requests by it, tests/test_config.py).

    Failed before the fix: the three backups accepted, committed and executed the
    3-request batch although max_requests = 2 (with `[limits] max_items` = 70,000 and a
    batch of 65,537 requests the same path raised ValueError out of `receive()` on every
    correct replica, and again when it replayed the batch on restart).
    """
    print(f"seed={SEED}")
    net = Net(4, seed=SEED, batch_max_requests=2)
    net.crash(0)  # the Byzantine primary: its proposals are signed below with its key
    net.now = 10.0
    requests = [signed_request(net, c, 1, Ops.put(f"k{c}", b"v")) for c in range(3)]

    send_to_backups(net, byzantine_proposal(net, 1, 10_000_000, requests))
    net.deliver()
    for i in range(1, 4):
        replica = net.replicas[i]
        assert replica.drops["batch_too_large"] == 1, (i, dict(replica.drops))
        assert net.executed[i] == [] and replica.last_executed == 0

    # At the limit the batch is fine: the same seq with two of the requests executes.
    send_to_backups(net, byzantine_proposal(net, 1, 10_000_000, requests[:2]))
    net.deliver()
    for i in range(1, 4):
        assert net.executed_ops(i) == [(0, 1), (1, 1)]
    assert len(set(net.digests().values())) == 1


def test_agreed_time_seen_by_the_application_never_runs_backwards():
    """PROTOCOL.md Normal case, Execution: "The time the application sees is monotonic:
    a batch executes at max(its batch_time, the time of the batch before it)".

    A Byzantine primary proposes seq 1 at 10.9 s and seq 2 at 9.2 s (both within
    max_clock_skew = 1 s of the backups' clocks at 10.0 s) and delivers seq 2 first: each
    is checked only against what a backup holds below it, so both are accepted. The lock
    granted at seq 2 must expire no earlier than 10.9 s + its ttl.

    Failed before the fix: seq 2's lock was granted at 9.2 s (expiry_us 10,200,000), after
    seq 1's at 10.9 s: agreed time went backwards for the application.
    """
    print(f"seed={SEED}")
    net = Net(4, seed=SEED)
    net.crash(0)
    net.now = 10.0
    first = byzantine_proposal(net, 1, 10_900_000,
                               [signed_request(net, 0, 1, Ops.lock("L", 1000))])
    second = byzantine_proposal(net, 2, 9_200_000,
                                [signed_request(net, 1, 1, Ops.lock("M", 1000))])
    send_to_backups(net, second)
    net.deliver()
    send_to_backups(net, first)
    net.deliver()
    for i in range(1, 4):
        executed = net.executed[i]
        assert [e.seq for e in executed] == [1, 2], i
        expiries = [decode_result(e.results[0]).expiry_us for e in executed]
        assert expiries == [11_900_000, 11_900_000], (i, expiries)
        assert net.replicas[i].last_batch_time == 10_900_000
    assert len(set(net.digests().values())) == 1
