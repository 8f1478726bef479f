"""Two clients under one client id, against four real `bft node` processes over UDP
(issue 18, safety bug 1e; PROTOCOL.md "Requests and replies").

* Two clients that sign different requests under one (client id, t) (two processes
  sharing an id reached it easily): the second must not accept the result of the
  first one's request, and the first one's write stands.

Waits are bounded; the fixture kills every process left.
"""

from __future__ import annotations

import pytest
import trio

from bft.app import Ops
from bft.node import ClientError, ClusterClient

from .util import Cluster, assert_same_state, decode

pytestmark = pytest.mark.udp


@pytest.fixture
def cluster(tmp_path):
    """A 4-node cluster (not started). After the test: no node may have crashed by itself
    or logged an error or evidence; every process still running is killed."""
    made = Cluster(tmp_path / "cluster")
    try:
        yield made
        problems = made.problems()
        assert not problems, "\n".join(problems)
    finally:
        made.cleanup()


def _client_on(cluster: Cluster, client_id: int, first_timestamp: int) -> ClusterClient:
    return ClusterClient(cluster.config, client_id, verifier=cluster.verifier,
                         signer=cluster.keyring.signer("client", client_id),
                         host=cluster.client_host, first_timestamp=first_timestamp)


async def test_a_second_request_under_an_executed_number_gets_no_result(cluster):
    """Client A's `put x=1` executes under t; client B, same client id and same t, sends
    `put x=2`: B must get no result (every replica drops its request as
    `conflicting_request`), and x stays 1 at every replica.

    Failed before the fix: every replica resent A's cached reply to B's request and B's
    `put x=2` returned ok while x stayed 1 everywhere."""
    with trio.fail_after(60):
        await cluster.start()
        t = cluster.next_timestamp(0)
        a = _client_on(cluster, 0, t)
        try:
            assert decode(await a.call(Ops.put("x", b"1"), timeout_s=15)).kind == "ok"
        finally:
            a.close()
        b = _client_on(cluster, 0, t)
        try:
            with pytest.raises(ClientError):
                result = await b.call(Ops.put("x", b"2"), timeout_s=2)
                pytest.fail(f"B accepted {decode(result)}, the result of A's request")
        finally:
            b.close()
        reader = cluster.client(1)
        try:
            assert decode(await reader.call(Ops.get("x"), timeout_s=15)).value == b"1"
        finally:
            reader.close()
        await cluster.barrier()
        summaries = await cluster.stop_all()
    assert_same_state(summaries)
    for node, summary in summaries.items():
        assert summary["replica_drops"].get("conflicting_request", 0) >= 1, (node, summary)
