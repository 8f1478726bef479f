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

import json
import os
import re
import shutil
import signal
import subprocess
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import pytest
import trio

from bft.launcher import LocalCluster, die_with_parent

from .util import (
    Cluster,
    Ledger,
    assert_same_state,
    events_since_last_start,
    in_netns,
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


# ---------------------------------------------------------------------- the multi-host recipe
#
# README "Running across several hosts", followed step by step with one network namespace
# per host (issue 23 item 1). Topology, all inside namespaces this test creates:
#
#   <prefix>-rhub : bridge br0 (no address), veths to every host
#   <prefix>-h<i> : node i, eth0 = 10.214.0.<i+1>/24 (i = 0..3)
#   <prefix>-hc   : the client host, eth0 = 10.214.0.100
#   <prefix>-ha   : the admin host and the monitor address, eth0 = 10.214.0.200
#
# Node 3's advertised address, 10.214.1.4, is on no interface of its host (as a cloud's
# public address is not): its host takes datagrams for it (a `local` route on lo, not an
# interface address) and sends from it (the source hint of its route to the subnet), the
# other hosts route it to 10.214.0.4. Node 3's config table says `listen = "0.0.0.0:7103"`.
# (A real 1:1 NAT would need netfilter or tc's nat action, which this machine lacks; with
# this setup binding 10.214.1.4 itself would also work, so what the test shows of `listen`
# is that a node listening on the wildcard while advertising an address that is not on its
# interface takes part fully: its peers send to the advertised address and accept what it
# sends.)

RECIPE_SUBNET = "10.214.0"
NODE3_PUBLIC = "10.214.1.4"
HOST_ADDRESSES = {**{f"h{i}": f"{RECIPE_SUBNET}.{i + 1}" for i in range(4)},
                  "hc": f"{RECIPE_SUBNET}.100", "ha": f"{RECIPE_SUBNET}.200"}
RECIPE_TIMEOUT_S = 120


class Hosts:
    """One namespace per host on a bridge (see above); `close()` deletes them all."""

    def __init__(self, prefix: str) -> None:
        self.hub = f"{prefix}-rhub"
        self.ns = {host: f"{prefix}-{host}" for host in HOST_ADDRESSES}
        self.created: list[str] = []

    def build(self) -> None:
        for ns in [self.hub, *self.ns.values()]:  # left over by a dead run with our pid
            run_ip("netns", "del", ns, check=False)
        run_ip("netns", "add", self.hub)
        self.created.append(self.hub)
        run_ip("-n", self.hub, "link", "add", "br0", "type", "bridge")
        run_ip("-n", self.hub, "link", "set", "br0", "up")
        for k, (host, ns) in enumerate(self.ns.items()):
            run_ip("netns", "add", ns)
            self.created.append(ns)
            run_ip("-n", ns, "link", "set", "lo", "up")
            run_ip(*f"-n {self.hub} link add v{k} type veth peer name eth0 netns {ns}".split())
            run_ip("-n", self.hub, "link", "set", f"v{k}", "master", "br0")
            run_ip("-n", self.hub, "link", "set", f"v{k}", "up")
            run_ip("-n", ns, "addr", "add", f"{HOST_ADDRESSES[host]}/24", "dev", "eth0")
            run_ip("-n", ns, "link", "set", "eth0", "up")
        h3 = self.ns["h3"]
        run_ip("-n", h3, "route", "add", "local", f"{NODE3_PUBLIC}/32", "dev", "lo")
        run_ip("-n", h3, "route", "replace", f"{RECIPE_SUBNET}.0/24", "dev", "eth0",
               "src", NODE3_PUBLIC)
        for host, ns in self.ns.items():
            if host != "h3":
                run_ip("-n", ns, "route", "add", f"{NODE3_PUBLIC}/32", "via",
                       HOST_ADDRESSES["h3"])

    def close(self) -> None:
        for ns in reversed(self.created):
            run_ip("netns", "del", ns, check=False)
        self.created.clear()


class _Barrier(LocalCluster):
    """Only for `barrier()` (no processes): from the client host's directory and keys,
    its socket made inside the client host's namespace."""

    def __init__(self, host_dir: Path, ns: str) -> None:
        super().__init__(host_dir / "cluster.toml", state_dir=host_dir / "barrier",
                         key_dir=host_dir / "keys")
        self.ns = ns

    def client_endpoint(self, client_id: int, host: str = "0.0.0.0") -> Any:
        with in_netns(self.ns):
            return super().client_endpoint(client_id, host)


class Recipe:
    """The hosts' directories (each: cluster.toml, keys/, state/) and their processes."""

    def __init__(self, root: Path, hosts: Hosts) -> None:
        self.root = root
        self.hosts = hosts
        self.nodes: dict[int, subprocess.Popen[bytes]] = {}
        self.all: list[subprocess.Popen[bytes]] = []
        self.runs: dict[int, int] = {}

    def dir(self, host: str) -> Path:
        path = self.root / host
        path.mkdir(parents=True, exist_ok=True)
        return path

    def _cmd(self, host: str, args: Sequence[str]) -> list[str]:
        return ["ip", "netns", "exec", self.hosts.ns[host], sys.executable, "-m", "bft", *args]

    async def bft(self, host: str, *args: str, timeout_s: float = 30) -> tuple[int, str, str]:
        """`bft ARGS` on `host` (in its namespace, in its directory): (status, out, err)."""
        with trio.fail_after(timeout_s):
            done = await trio.run_process(self._cmd(host, args), cwd=self.dir(host),
                                          capture_stdout=True, capture_stderr=True,
                                          check=False)
        return done.returncode, done.stdout.decode(), done.stderr.decode()

    def output(self, node_id: int) -> Path:
        return self.dir(f"h{node_id}") / f"node-{node_id}.run{self.runs.get(node_id, 0)}.out"

    async def start_node(self, node_id: int) -> None:
        """`bft node cluster.toml --id N --key-dir keys` on host hN, until it says it
        listens (bounded)."""
        self.runs[node_id] = self.runs.get(node_id, 0) + 1
        out = self.output(node_id)
        with open(out, "wb") as sink:
            proc = subprocess.Popen(
                self._cmd(f"h{node_id}", ["node", "cluster.toml", "--id", str(node_id),
                                          "--key-dir", "keys"]),
                cwd=self.dir(f"h{node_id}"), stdout=sink, stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL, start_new_session=True,
                preexec_fn=die_with_parent)  # noqa: PLW1509
        self.nodes[node_id] = proc
        self.all.append(proc)
        with trio.fail_after(20):
            while b"listening on" not in out.read_bytes():
                assert proc.poll() is None, f"node {node_id} exited: {out.read_text()}"
                await trio.sleep(0.05)

    async def wait_exit(self, node_id: int, timeout_s: float = 15) -> int:
        proc = self.nodes[node_id]
        with trio.fail_after(timeout_s):
            while proc.poll() is None:
                await trio.sleep(0.05)
        return proc.returncode

    def events(self, node_id: int) -> list[dict[str, Any]]:
        path = self.dir(f"h{node_id}") / "state" / "cluster" / f"node-{node_id}.log.jsonl"
        return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]

    def cleanup(self) -> None:
        """SIGKILL every process this test started that still runs, by its pid."""
        for proc in self.all:
            if proc.poll() is None:
                proc.kill()
                proc.wait(timeout=10)


def _printed_keys(out: str) -> dict[str, str]:
    """identity name -> public key hex, from `bft keygen --only`'s config lines."""
    return dict(re.findall(r'^\s*(\S+): .*public_key = "([0-9a-f]{64})"', out, re.M))


async def test_the_multi_host_recipe_on_one_namespace_per_host(tmp_path):
    """README "Running across several hosts", step by step, one namespace per host, each
    host's key directory holding only its own private key: config new, keygen --only on
    each host, the public key lines pasted into the config (every identity inline, the
    admin too; `listen` for node 3, whose advertised address is on no interface), the
    config copied everywhere, `bft node` on each node host, writes with `bft client` from
    the client host, `bft ctl ... crash` from the admin host (node 1 then exits; the others
    go on, node 3 being needed for the quorum), node 1 restarted and caught up, and all four
    stop with one state digest. Failed before the fix: `bft keygen --only admin` gave no
    config line and `[admin]` was an unknown section (ctl was refused on every other host),
    `listen` was an unknown key, and `bft client` on a host other than node 0's could not
    bind (it bound node 0's address)."""
    prefix = f"bftr{os.getpid()}"
    reason = _namespaces_unavailable(f"{prefix}-probe")
    if reason is not None:
        pytest.skip(reason)
    hosts = Hosts(prefix)
    recipe = Recipe(tmp_path, hosts)
    try:
        hosts.build()
        with trio.fail_after(RECIPE_TIMEOUT_S):
            await _follow_the_recipe(recipe)
    finally:
        recipe.cleanup()  # the processes first: a namespace lives on while they do
        hosts.close()


async def _follow_the_recipe(recipe: Recipe) -> None:
    node_hosts = [HOST_ADDRESSES[f"h{i}"] for i in range(3)] + [NODE3_PUBLIC]
    monitor = f"{HOST_ADDRESSES['ha']}:7199"
    # 1. one config, written anywhere (here: on the admin host)
    status, out, err = await recipe.bft(
        "ha", "config", "new", "--nodes", "4", "--hosts", ",".join(node_hosts),
        "--monitor", monitor, "--clients", "2", "--out", "cluster.toml")
    assert status == 0, err
    text = (recipe.dir("ha") / "cluster.toml").read_text()
    # 2. each host makes its own key pair and prints its public key line
    for host, names in [*((f"h{i}", f"replica-{i}") for i in range(4)),
                        ("hc", "client-0,client-1"), ("ha", "admin")]:
        if host != "ha":
            (recipe.dir(host) / "cluster.toml").write_text(text)
        status, out, err = await recipe.bft(host, "keygen", "cluster.toml", "--only", names,
                                            "--key-dir", "keys")
        assert status == 0, err
        printed = _printed_keys(out)
        assert sorted(printed) == sorted(names.split(",")), out
        # 3. paste the printed lines into the config
        for name, key in printed.items():
            kind, _, ident = name.partition("-")
            if kind == "replica":
                text, found = re.subn(rf'(\nid = {ident}\naddress = "[^"]*"\n)',
                                      rf'\1public_key = "{key}"\n', text)
                assert found == 1, text
            elif kind == "client":
                text = text.replace("[clients]\ncount = 2\n", "")
                text += f'\n[[clients]]\nid = {ident}\npublic_key = "{key}"\n'
            else:
                text += f'\n[admin]\npublic_key = "{key}"\n'
    # node 3's advertised address is not on its interface: it listens on the wildcard
    text, found = re.subn(r'(\nid = 3\naddress = "[^"]*"\n)', r'\1listen = "0.0.0.0:7103"\n',
                          text)
    assert found == 1
    # 4. the same config on every host; each host holds its own private key only
    for host in HOST_ADDRESSES:
        (recipe.dir(host) / "cluster.toml").write_text(text)
        own = {f"h{i}": [f"replica-{i}"] for i in range(4)}.get(
            host, ["client-0", "client-1"] if host == "hc" else ["admin"])
        keys = sorted(p.name for p in (recipe.dir(host) / "keys").iterdir())
        assert keys == sorted([f"{n}.key" for n in own] + [f"{n}.pub" for n in own])
        status, out, err = await recipe.bft(host, "config", "check", "cluster.toml",
                                            "--key-dir", "keys")
        assert status == 0 and "all 7 public keys found" in out, out + err
    # 5. a node on each node host
    for i in range(4):
        await recipe.start_node(i)
    assert "listening on 0.0.0.0:7103, advertised as 10.214.1.4:7103" in \
        recipe.output(3).read_text()
    # 6. clients from the client host
    for k in range(4):
        status, out, err = await recipe.bft("hc", "client", "cluster.toml", "--key-dir", "keys",
                                            "put", f"k{k}", f"v{k}")
        assert (status, out.strip()) == (0, "ok"), err
    status, out, err = await recipe.bft("hc", "client", "cluster.toml", "--key-dir", "keys",
                                        "get", "k2")
    assert (status, out) == (0, "v2\n"), err
    # 7. the admin, from its own host with only admin.key: crash node 1
    status, out, err = await recipe.bft("ha", "ctl", "cluster.toml", "--key-dir", "keys",
                                        "--node", "1", "crash")
    assert status == 0, err
    assert await recipe.wait_exit(1) == 137  # the node obeyed the signed command
    assert any(e.get("event") == "crash" for e in recipe.events(1))
    # the other three go on: 2f+1 = 3 of them, so node 3 (listen, advertised) takes part
    for k in range(4, 7):
        status, out, err = await recipe.bft("hc", "client", "cluster.toml", "--key-dir", "keys",
                                            "put", f"k{k}", f"v{k}")
        assert (status, out.strip()) == (0, "ok"), err
    await recipe.start_node(1)  # restarted by hand, as an operator would
    status, out, err = await recipe.bft("hc", "client", "cluster.toml", "--key-dir", "keys",
                                        "put", "after", "restart")
    assert (status, out.strip()) == (0, "ok"), err
    # every node executed everything (a read each of the four answers), then a clean stop
    await _Barrier(recipe.dir("hc"), recipe.hosts.ns["hc"]).barrier(timeout_s=30,
                                                                   host="0.0.0.0")
    for i in range(4):
        recipe.nodes[i].send_signal(signal.SIGTERM)
    for i in range(4):
        assert await recipe.wait_exit(i) == 0, recipe.output(i).read_text()[-2000:]
    summaries = {}
    for i in range(4):
        stops = [e for e in recipe.events(i) if e.get("event") == "stop"]
        assert stops, f"node {i} logged no stop summary"
        summaries[i] = stops[-1]
    assert_same_state(summaries)
    assert all(s["last_executed"] >= 9 for s in summaries.values()), summaries
    # nobody dropped a replica's datagram as coming from the wrong address: node 3's came
    # from its advertised address although it listens on the wildcard
    assert all(s["drops"].get("replica_address_mismatch", 0) == 0
               for s in summaries.values()), summaries
    start3 = [e for e in recipe.events(3) if e.get("event") == "start"][-1]
    assert (start3["address"], start3["listen"]) == (f"{NODE3_PUBLIC}:7103", "0.0.0.0:7103")
