"""A real partition: four node processes in their own network namespaces, one link cut.

Topology, all inside namespaces this test creates (nothing is added to the
host's own network namespace, and no namespace has a route to anywhere
outside 10.213.0.0/24):

    <prefix>-hub : bridge br0 (10.213.0.100/24, where the test's clients live)
                   veth v0..v3 enslaved to br0
    <prefix>-n<i>: eth0 = 10.213.0.<i+1>/24, the other end of v<i>; node i runs here

`ip -n <prefix>-n3 link set eth0 down` cuts node 3 off from everyone (its sends
fail with ENETUNREACH, nothing reaches it), `... up` heals the partition.
Blackhole routes between node 3 and the other nodes cut only the replica links,
so that clients still reach node 3 (a partial partition).
Skipped where namespaces cannot be made (not root, no `ip`, EPERM in a container).
"""

from __future__ import annotations

import os
import shutil
import subprocess

import pytest
import trio

from .util import (
    Cluster,
    Ledger,
    assert_same_state,
    events_since_last_start,
    run_ip,
    write_all,
    writer,
)

pytestmark = pytest.mark.udp

SUBNET = "10.213.0"
CLIENT_ADDRESS = f"{SUBNET}.100"
NODE_PORT = 7100  # every node has its own namespace, so one port for all


def _namespaces_unavailable(probe: str) -> str | None:
    """Why network namespaces cannot be used here, or None if they can."""
    if os.geteuid() != 0:
        return "network namespaces need root (CAP_SYS_ADMIN, CAP_NET_ADMIN)"
    if shutil.which("ip") is None:
        return "the `ip` binary (iproute2) is not installed"
    if not os.path.exists("/proc/thread-self/ns/net"):
        return "no /proc/thread-self/ns/net (not Linux, or /proc not mounted)"
    try:
        made = run_ip("netns", "add", probe, check=False)
    except (OSError, subprocess.TimeoutExpired) as exc:
        return f"`ip netns add` failed: {exc}"
    if made.returncode != 0:
        return f"`ip netns add` failed: {made.stderr.strip() or made.returncode}"
    try:
        veth = run_ip(
            "-n", probe, "link", "add", "p0", "type", "veth", "peer", "name", "p1", check=False
        )
        if veth.returncode != 0:
            return f"cannot create veth pairs: {veth.stderr.strip() or veth.returncode}"
    finally:
        run_ip("netns", "del", probe, check=False)
    return None


class Topology:
    """The hub namespace with the bridge and one namespace per node; `close()` deletes all."""

    def __init__(self, prefix: str, n: int) -> None:
        self.hub = f"{prefix}-hub"
        self.nodes = [f"{prefix}-n{i}" for i in range(n)]
        self.created: list[str] = []

    def build(self) -> None:
        """Create the namespaces, the bridge and the links (all up)."""
        hub = self.hub
        for ns in [hub, *self.nodes]:  # left over by an earlier run with our pid that died
            run_ip("netns", "del", ns, check=False)
        self._add(hub)
        run_ip("-n", hub, "link", "set", "lo", "up")
        run_ip("-n", hub, "link", "add", "br0", "type", "bridge")
        run_ip("-n", hub, "addr", "add", f"{CLIENT_ADDRESS}/24", "dev", "br0")
        run_ip("-n", hub, "link", "set", "br0", "up")
        for i, ns in enumerate(self.nodes):
            self._add(ns)
            run_ip("-n", ns, "link", "set", "lo", "up")
            run_ip(*f"-n {hub} link add v{i} type veth peer name eth0 netns {ns}".split())
            run_ip("-n", hub, "link", "set", f"v{i}", "master", "br0")
            run_ip("-n", hub, "link", "set", f"v{i}", "up")
            run_ip("-n", ns, "addr", "add", f"{SUBNET}.{i + 1}/24", "dev", "eth0")
            run_ip("-n", ns, "link", "set", "eth0", "up")

    def _add(self, ns: str) -> None:
        run_ip("netns", "add", ns)
        self.created.append(ns)

    def link(self, node_id: int, state: str) -> None:
        """Set node `node_id`'s only link "down" (partitioned) or "up"."""
        run_ip("-n", self.nodes[node_id], "link", "set", "eth0", state)

    def cut_replica_links(self, node_id: int, *, heal: bool = False) -> None:
        """Blackhole traffic between node `node_id` and every other node, both ways (or
        remove those routes, with `heal`); the hub (clients) still reaches everyone."""
        action = "del" if heal else "add"
        for other in range(len(self.nodes)):
            if other != node_id:
                run_ip(
                    "-n",
                    self.nodes[node_id],
                    "route",
                    action,
                    "blackhole",
                    f"{SUBNET}.{other + 1}/32",
                )
                run_ip(
                    "-n",
                    self.nodes[other],
                    "route",
                    action,
                    "blackhole",
                    f"{SUBNET}.{node_id + 1}/32",
                )

    def close(self) -> None:
        """Delete every namespace made (their veths and bridge go with them)."""
        for ns in reversed(self.created):
            run_ip("netns", "del", ns, check=False)
        self.created.clear()


@pytest.fixture
def netns_cluster(tmp_path):
    prefix = f"bftt{os.getpid()}"
    reason = _namespaces_unavailable(f"{prefix}-probe")
    if reason is not None:
        pytest.skip(reason)
    topology = Topology(prefix, 4)
    cluster = None
    try:
        topology.build()
        cluster = Cluster(
            tmp_path / "cluster",
            4,
            hosts=[f"{SUBNET}.{i + 1}" for i in range(4)],
            ports=[NODE_PORT] * 4,
            netns=topology.nodes,
            client_host=CLIENT_ADDRESS,
            client_netns=topology.hub,
        )
        yield topology, cluster
        problems = cluster.problems()
        assert not problems, "\n".join(problems)
    finally:
        if cluster is not None:
            cluster.cleanup()  # the processes first: a namespace lives on while they do
        topology.close()


async def test_partitioned_node_catches_up_after_link_returns(netns_cluster):
    """Node 3's link goes down under load: the other three keep serving; once the link is
    back, node 3 catches up (by state transfer: the others' stable checkpoint moved past
    its log window) and all four stop with the same executed prefix and state digest."""
    topology, cluster = netns_cluster
    ledger = Ledger()
    with trio.fail_after(60):
        await cluster.start()
        await write_all(cluster, [0, 1], 5, "before", ledger)
        await cluster.barrier()
        async with trio.open_nursery() as nursery:
            # the link goes down while clients are writing
            nursery.start_soon(lambda: writer(cluster, 0, "cut", ledger, count=40))
            await ledger.wait_for(len(ledger.acked) + 3)
            topology.link(3, "down")
        acked_while_cut = len(ledger.acked)
        await write_all(cluster, [1], 5, "cut", ledger)  # the other three go on without node 3
        assert len(ledger.acked) == acked_while_cut + 5
        await cluster.barrier([0, 1, 2])
        topology.link(3, "up")
        await cluster.barrier(timeout_s=15)  # node 3 replies once it caught up
        await write_all(cluster, [2], 3, "after", ledger)
        await cluster.barrier()
        summaries = await cluster.stop_all()
    assert_same_state(summaries)
    node3 = events_since_last_start(cluster, 3)
    assert any(e.get("event") == "state_transfer" for e in node3), (
        "node 3 caught up without a state transfer: the partition was too short"
    )


async def wait_for_event(cluster: Cluster, node_id: int, kind: str, timeout_s: float) -> dict:
    """The first log line of `kind` of node `node_id`'s current run, once it is written."""
    with trio.fail_after(timeout_s):
        while True:
            for e in events_since_last_start(cluster, node_id):
                if e.get("event") == kind:
                    return e
            await trio.sleep(0.05)


async def test_node_cut_off_from_replicas_alone_in_a_view_change_catches_up(netns_cluster):
    """Node 3 loses its links to the other replicas but still hears clients: a request
    reaches it that it cannot see ordered, so it starts a view change that nobody joins,
    while the other three go on in view 0 past its log window. Once the links are back,
    node 3 must catch up with no further help than the traffic of one request (a
    barrier) and end with the others' executed prefix and state digest.

    (The replica-level replay of this failure: tests/test_replica_regressions.py.)"""
    topology, cluster = netns_cluster
    ledger = Ledger()
    with trio.fail_after(60):
        await cluster.start()
        await write_all(cluster, [0, 1], 5, "before", ledger)
        await cluster.barrier()
        topology.cut_replica_links(3)
        await cluster.barrier([0, 1, 2])  # sent to node 3 too: it waits for it in vain
        alone = await wait_for_event(cluster, 3, "view_change_start", timeout_s=10)
        assert alone["view"] == 1
        await write_all(cluster, [0], 40, "cut", ledger)  # K = 8, L = 16: past its window
        await cluster.barrier([0, 1, 2])
        topology.cut_replica_links(3, heal=True)
        await cluster.barrier(timeout_s=15)  # node 3 replies once it caught up
        summaries = await cluster.stop_all()
    assert_same_state(summaries)
    assert all(s["view"] == 0 for i, s in summaries.items() if i != 3)
