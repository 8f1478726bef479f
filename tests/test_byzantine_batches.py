"""What a Byzantine primary's validly signed batches can and cannot do to correct replicas.

Issue 18: a batch larger than the config allows (1f) and batch times that run
backwards across seqs (weaker spot "agreed time can run backwards"). Replica 0
is the primary of view 0; the tests crash it and sign its proposals themselves
with its key (tests/harness.py: pure replicas, a step network, no wall clock),
so the proposals are exactly what a Byzantine primary may send.
"""

from __future__ import annotations

from harness import Net, Ops

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

