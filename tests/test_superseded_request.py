"""A faulty client cannot stall the pipeline with an older request number (issue 21,
`bft attack --kind clientflood`; PROTOCOL.md "Normal case", rule 5, and "Requests and
replies" 4.1: a request numbered at or below its client's last executed one is not
executed again; Aardvark, Clement et al. NSDI'09, 4.2: the primary orders what it is
given, and a faulty client must not be able to start view changes).

Found from the clientflood attack's node logs: the progress timer fired at every backup
with seq s missing its pre-prepare (every backup had dropped it as
`batch_request_executed`) and s+1..s+7 decided behind it. The flooding client's requests
reach the primary out of order (in one attack run, 90 numbered below one the primary had
already ordered came straight from the client, 1 forwarded by a backup; probably because,
once the client is demoted (bft/node.py, CLIENT_DEMOTION_S), its newer datagrams come
through the strangers' socket while older ones still wait in the trusted socket's
backlog). The primary, whose execution trails the backups', had already
ordered (c, t2) at seq s-k but not executed it, took (c, t1 < t2) as new and proposed it
at seq s. A backup that had executed s-k refuses the whole batch under rule 5 (t1 is not
above c's last executed number), so s never prepares, nothing after it executes, the
honest clients wait and the backups change views. The request could never execute
anyway: after s-k, c's last executed number is t2 > t1.

Now the primary drops such a request before it proposes (`request_superseded`): one
numbered below a request of the same client it already assigned to an earlier seq.

Failed before the fix: the primary proposed (1, 1) at seq 2, every backup dropped it (and
every resend of it: `batch_request_executed` 14-15 times), the honest request (2, 1) never
executed at the backups and they started a view change (cause "timeout").
"""

from __future__ import annotations

from harness import Net, Ops

from bft.effects import Event


def _view_changes(net: Net) -> list[tuple[int, Event]]:
    return [(i, e) for i, e in net.events if e.kind == "view_change_start"]


def test_primary_drops_a_request_its_order_already_superseded() -> None:
    net = Net(4)
    put = Ops.put("k", b"v")
    # (1, 2) is ordered at seq 1 and executes at the backups; the primary hears none of
    # their votes, so it has not executed it (it trails the backups)
    net.filter = lambda src, dst, msg: dst != 0 or src == -1
    net.request(1, put, timestamp=2)
    net.deliver()
    assert all(net.executed_ops(i) == [(1, 2)] for i in (1, 2, 3))
    assert net.executed_ops(0) == []
    # now the primary gets the client's older request (1, 1): a backup's forward, a
    # reordered datagram of a flood
    net.request(1, put, timestamp=1, to=0)
    net.deliver()
    net.filter = None
    # an honest client's request must execute everywhere, in view 0, with no view change
    net.request(2, Ops.get("k"))
    net.advance(5.0)
    for i in range(4):
        assert (2, 1) in net.executed_ops(i), f"replica {i} never executed the honest request"
        assert (1, 1) not in net.executed_ops(i)
    assert net.completed(2, 1) is not None
    assert _view_changes(net) == []
    primary = net.replicas[0]
    assert primary is not None
    assert primary.drops["request_superseded"] == 1
    for i in (1, 2, 3):
        backup = net.replicas[i]
        assert backup is not None
        assert backup.drops["batch_request_executed"] == 0


def test_a_batch_never_carries_a_request_after_a_newer_one_of_its_client() -> None:
    """Both numbers pending at the primary at once, the newer first (the older one came
    late): the older one would be skipped at execution, so it is not proposed at all.
    Failed before the fix: the batch carried (1, 2) and then (1, 1)."""
    net = Net(4)
    put = Ops.put("k", b"v")
    # seq 1 executes at the backups only: the primary's next batch waits for it
    net.filter = lambda src, dst, msg: dst != 0 or src == -1
    net.request(3, put)
    net.deliver()
    net.request(1, put, timestamp=2, to=0)
    net.request(1, put, timestamp=1, to=0)
    net.deliver()  # both wait in the primary's queue, the newer first
    net.filter = None
    net.advance(1.0)
    batches = [[(s.statement.client, s.statement.timestamp) for s in e.batch.requests]
               for e in net.executed[1]]
    assert [(3, 1)] in batches and [(1, 2)] in batches
    assert all((1, 1) not in b for b in batches)
    assert _view_changes(net) == []
    primary = net.replicas[0]
    assert primary is not None
    assert primary.drops["request_superseded"] == 1
