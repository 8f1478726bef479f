"""A request the client gave up on, against four real `bft node` processes over UDP
(issue 18, liveness bug 2.0; PROTOCOL.md "Requests and replies" and "View change").

Client 0's request t reaches the backups but not the primary (the client's datagram to the
primary is lost); the client moves on and sends t+1, which executes everywhere. Request t
is then done with: no replica keeps it pending, no timer runs for it, no view changes.

Waits are bounded; the fixture kills every process left.
"""

from __future__ import annotations

import pytest
import trio

from bft import codec
from bft.app import Ops
from bft.messages import Request
from bft.node import CLIENT_SENDER_BASE
from transport.udp import UdpEndpoint

from .util import Cluster, assert_same_state, decode

pytestmark = pytest.mark.udp


@pytest.fixture
def cluster(tmp_path):
    made = Cluster(tmp_path / "cluster")
    try:
        yield made
        problems = made.problems()
        assert not problems, "\n".join(problems)
    finally:
        made.cleanup()


async def test_a_superseded_request_causes_no_view_change(cluster):
    """Failed before the fix (in the simulator and the step network, the same replica code):
    the backups kept (0, t) pending for good, their timers fired, every later primary
    proposed it and every backup refused that batch, and views kept changing."""
    with trio.fail_after(90):
        await cluster.start()
        t = cluster.next_timestamp(0)
        lost = cluster.keyring.signer("client", 0).sign(Request(Ops.put("a", b"1"), t, 0))
        config = cluster.config
        endpoint = UdpEndpoint(CLIENT_SENDER_BASE, cluster.client_host, 0,
                               peers={nd.id: nd.address for nd in config.nodes},
                               max_datagram_bytes=config.max_datagram_bytes,
                               max_message_bytes=config.limits.max_message_bytes)
        try:
            for backup in (1, 2, 3):  # its datagram to primary 0 is lost
                await endpoint.send(backup, codec.encode(lost))
        finally:
            endpoint.close()
        client = cluster.client(0)  # request numbers above t
        try:
            assert decode(await client.call(Ops.put("a", b"2"), timeout_s=15)).kind == "ok"
        finally:
            client.close()
        # several view-change timers (view_change_max_s = 4 s in these configs, base 0.5 s)
        await trio.sleep(6)
        await cluster.barrier()
        summaries = await cluster.stop_all()
    assert_same_state(summaries)
    assert {s["view"] for s in summaries.values()} == {0}, summaries
    for node, summary in summaries.items():
        assert summary["replica_counters"].get("view_changes_started", 0) == 0, (node, summary)
    forgotten = [summaries[i]["replica_counters"].get("stale_requests_forgotten", 0)
                 for i in (1, 2, 3)]
    assert sum(forgotten) >= 1, forgotten
