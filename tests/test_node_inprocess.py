"""The Trio runtime over real loopback UDP, all nodes in one process (fast)."""

from __future__ import annotations

import trio

from bft.app import Ops, decode_result
from bft.config import ClusterConfig
from bft.crypto import Ed25519Keys
from bft.node import ClusterClient, Node
from transport.udp import free_udp_ports


def make_cluster(tmp_path, n=4, **overrides):
    ports = free_udp_ports(n)
    from bft.config import NodeAddress

    config = ClusterConfig.local(n, clients=4, fsync="never", **overrides)
    config = ClusterConfig(**{**{f: getattr(config, f) for f in config.__dataclass_fields__},
                              "nodes": tuple(NodeAddress(i, "127.0.0.1", ports[i]) for i in range(n))})
    keys = Ed25519Keys(n, 4, seed=1)
    nodes = [Node(config, i, signer=keys.signer("replica", i), verifier=keys.verifier(),
                  state_dir=tmp_path / f"n{i}") for i in range(n)]
    return config, keys, nodes


async def test_four_nodes_commit_over_udp(tmp_path):
    config, keys, nodes = make_cluster(tmp_path)
    async with trio.open_nursery() as nursery:
        for node in nodes:
            await nursery.start(node.run)
        client = ClusterClient(config, 0, signer=keys.signer("client", 0), verifier=keys.verifier())
        with trio.fail_after(20):
            for k in range(20):
                result = await client.call(Ops.put(f"k{k}", b"v%d" % k), timeout_s=10)
                assert str(decode_result(result)) == "ok"
            got = await client.call(Ops.get("k7"))
            assert decode_result(got).value == b"v7"
            # every node executes the same sequence: wait until all have caught up
            while len({n.replica.last_executed for n in nodes}) != 1:
                await trio.sleep(0.01)
        client.close()
        digests = {n.state_digest() for n in nodes}
        assert len(digests) == 1
        # the summary (logged at stop) carries the replica's own counters: 21 requests executed
        assert [n.summary()["replica_counters"]["executed_requests"] for n in nodes] == [21] * 4
        nursery.cancel_scope.cancel()


async def test_prometheus_metrics_endpoint(tmp_path):
    """Observability: with a metrics port in the config, each node serves Prometheus text with
    commits, drops, signatures verified and the commit latency histogram."""
    import urllib.request

    base = free_udp_ports(1)[0]  # a TCP port is free too, in practice, on loopback
    config, keys, nodes = make_cluster(tmp_path, metrics_port=base)
    async with trio.open_nursery() as nursery:
        for node in nodes:
            await nursery.start(node.run)
        client = ClusterClient(config, 0, signer=keys.signer("client", 0), verifier=keys.verifier())
        with trio.fail_after(20):
            for k in range(5):
                await client.call(Ops.put(f"k{k}", b"v"), timeout_s=10)
            await trio.sleep(1.1)  # the node refreshes its gauges once a second

            def scrape() -> str:
                with urllib.request.urlopen(f"http://127.0.0.1:{base + 1}/metrics", timeout=5) as r:
                    return r.read().decode()

            text = await trio.to_thread.run_sync(scrape)
        client.close()
        nursery.cancel_scope.cancel()
    values = {line.split(" ")[0]: float(line.split(" ")[1]) for line in text.splitlines()
              if line and not line.startswith("#")}
    assert values["bft_commits_total"] >= 5
    assert values["bft_executed_requests_total"] >= 5
    assert values["bft_signatures_verified_total"] > 0  # issue 23 item 7: a counter's name
    assert values["bft_commit_latency_seconds_count"] >= 5
    # issue 23 item 7: gauges of the executed seq, the stable checkpoint and the primary,
    # and a help text that says what bft_commits_total counts (failed before: no gauges,
    # "bft_signatures_verified" without _total, help "Batches executed")
    assert values["bft_executed_seq"] >= 5
    assert values["bft_stable_checkpoint_seq"] >= 0 and values["bft_primary"] == 0
    assert "# HELP bft_commits_total Sequence numbers committed and executed" in text
    assert nodes[1].metrics is not None
    assert nodes[1].metrics.url == f"http://127.0.0.1:{base + 1}/metrics"
