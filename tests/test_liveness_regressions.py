"""Regressions for the liveness bugs of issue 18 (outside reviews at c9f30a9).

Crafted schedules on tests/harness.py's step network and seeded simulator runs; each
names the PROTOCOL.md rule it checks and failed on the code of c9f30a9.
"""

from __future__ import annotations

from harness import Net, Ops

SEED = 1


def test_a_lost_request_superseded_by_a_newer_one_causes_no_view_change():
    """PROTOCOL.md "Requests and replies": a request with t below the client's last executed
    t is ignored; the view-change timer runs only while some request is pending and not
    executed (4.4). Once (c, t) executes, every pending (c, t' <= t) is done with.

    Schedule (issue 18, 2.0): client 0's request t=1 reaches the backups but not the
    primary; the client moves on and sends t=2, which executes everywhere.

    Failed before the fix: the backups kept (0, 1) pending for good, so their timers fired,
    the next primary proposed it, every backup refused that batch (batch_request_executed)
    and views kept changing; the next request of another client waited seconds."""
    print(f"seed={SEED}")
    net = Net(4, seed=SEED)
    net.filter = lambda src, dst, msg: not (src == -1 and dst == 0)
    net.request(0, Ops.put("a", b"1"), timestamp=1)
    net.deliver()
    net.filter = None
    net.request(0, Ops.put("a", b"2"), timestamp=2)
    net.deliver()
    assert net.completed(0, 2) is not None
    net.advance(10)
    assert [r.view for r in net.replicas] == [0, 0, 0, 0], "views changed over a stale request"
    assert all(not r.pending for r in net.replicas), [dict(r.pending) for r in net.replicas]
    assert [r.last_executed for r in net.replicas] == [1, 1, 1, 1]
    # and the cluster serves the next request of another client at once
    net.request(1, Ops.put("b", b"1"))
    net.deliver()
    assert net.completed(1, 1) is not None
