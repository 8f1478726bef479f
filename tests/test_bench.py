"""`bft bench`: its helpers, and a short smoke run against a real local cluster.

The smoke tests start four `bft node` processes on free loopback ports and
drive a tiny load (about a second); they assert that the JSON report has
every field and that the numbers are consistent with each other, never how
fast anything is.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import socket
import tomllib
from pathlib import Path

import pytest
import trio
from hypothesis import given, settings
from hypothesis import strategies as st

from bft import bench
from bft.bench import (
    BenchError,
    LocalCluster,
    ascii_plot,
    bench_cluster_config,
    config_to_toml,
    crypto_ceiling_ops_per_s,
    ensure_keys,
    local_config,
    percentiles,
    process_cpu_seconds,
    run_benchmark,
)
from bft.config import ClientEntry, ClusterConfig, NodeAddress

# ---------------------------------------------------------------------- helpers


def test_percentiles_nearest_rank() -> None:
    values = [float(x) for x in range(1, 101)]  # 1..100
    p = percentiles(list(reversed(values)))
    assert (p["p50"], p["p90"], p["p99"], p["max"]) == (50.0, 90.0, 99.0, 100.0)
    assert p["mean"] == pytest.approx(50.5)
    assert percentiles([]) == {"p50": None, "p90": None, "p99": None, "max": None, "mean": None}
    assert percentiles([7.0])["p99"] == 7.0


@given(st.lists(st.floats(min_value=0, max_value=1e6), min_size=1, max_size=200))
@settings(max_examples=50)
def test_percentiles_are_ordered_members(values: list[float]) -> None:
    p = percentiles(values)
    assert p["p50"] <= p["p90"] <= p["p99"] <= p["max"] == max(values)
    assert all(p[k] in values for k in ("p50", "p90", "p99"))


def test_crypto_ceiling_formula() -> None:
    # 2 cores, 4 nodes, 100 us per verify: 2 / (4 * 100e-6) = 5000 ops/s
    assert crypto_ceiling_ops_per_s(2, 4, 100.0) == pytest.approx(5000.0)
    assert crypto_ceiling_ops_per_s(2, 13, 100.0) == pytest.approx(2 / 13 / 1e-4)


def test_process_cpu_seconds_of_this_process_and_of_none() -> None:
    t0 = process_cpu_seconds(os.getpid())
    sum(i * i for i in range(200_000))  # burn a little CPU
    t1 = process_cpu_seconds(os.getpid())
    assert t0 is not None and t1 is not None and t1 >= t0 >= 0
    assert process_cpu_seconds(2**22 + 12345) is None  # above pid_max: never a process


def _key(n: int) -> bytes:
    """A distinct 32-byte inline key per n (one key per identity: bft.config checks it)."""
    return bytes(range(n, n + 32))


def _configs() -> list[ClusterConfig]:
    return [
        ClusterConfig.local(4),
        ClusterConfig.local(7, clients=130, fsync="never", batch_delay_s=0.0005,
                            monitor=("127.0.0.1", 7199), metrics_port=9100),
        ClusterConfig(name="odd", f=1,
                      nodes=tuple(NodeAddress(i, "::1", 9000 + i, _key(0) if i == 2 else None)
                                  for i in range(4)),
                      clients=(ClientEntry(3), ClientEntry(9, _key(1))),
                      view_change_timeout_s=2.5, key_dir=Path("/tmp/keys")),
    ]


@pytest.mark.parametrize("config", _configs(), ids=lambda c: c.name)
def test_config_to_toml_round_trips(config: ClusterConfig) -> None:
    back = ClusterConfig.from_dict(tomllib.loads(config_to_toml(config)))
    assert back == config


def test_bench_cluster_config_adds_clients_and_drops_inline_keys() -> None:
    config = ClusterConfig(name="x", f=1, clients=(ClientEntry(0), ClientEntry(5, _key(9))),
                           nodes=tuple(NodeAddress(i, "127.0.0.1", 9000 + i, _key(i))
                                       for i in range(4)))
    out = bench_cluster_config(config, clients=5, monitor=("127.0.0.1", 9999), fsync="never")
    assert [c.id for c in out.clients] == [0, 5, 1, 2, 3]
    assert all(c.public_key is None for c in out.clients)
    assert all(n.public_key is None for n in out.nodes)
    assert (out.monitor, out.fsync, out.key_dir) == (("127.0.0.1", 9999), "never", None)
    assert [n.address for n in out.nodes] == [n.address for n in config.nodes]


def test_ascii_plot_places_every_label() -> None:
    text = ascii_plot([("1", 100.0, 1.0), ("8", 500.0, 4.0), ("32", 900.0, 20.0)])
    assert all(label in text for label in (" 1", " 8", " 32"))
    assert text.count("*") == 3
    assert ascii_plot([]) == "(no points)"


def test_bad_sweep_is_a_usage_error(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    config = tmp_path / "c.toml"
    config.write_text(config_to_toml(ClusterConfig.local(4)))
    parser = argparse.ArgumentParser()
    bench.add_bench_arguments(parser)
    for extra in (["--sweep", "1,x"], ["--sweep", "0"], ["--duration", "0"]):
        args = parser.parse_args([str(config), *extra])
        assert bench.run_bench_command(args) == 2
        assert "bft: error:" in capsys.readouterr().err
    with pytest.raises(BenchError):
        bench._parse_sweep("", 1)


# ---------------------------------------------------------------------- smoke runs

def _write_config(tmp_path: Path, **overrides: object) -> Path:
    path = tmp_path / "cluster.toml"
    path.write_text(config_to_toml(local_config(4, name="smoke", clients=2, **overrides)))
    return path


def _check_run(run: dict, clients: int, *, telemetry: bool = True) -> None:
    assert run["clients"] == clients
    assert run["op_size"] == 0 and run["op"] == "noop"
    assert run["completed"] > 0 and run["errors"] == 0
    assert run["throughput_ops_per_s"] == pytest.approx(run["completed"] / run["duration_s"],
                                                        rel=0.01)
    lat = run["latency_ms"]
    assert 0 < lat["p50"] <= lat["p90"] <= lat["p99"] <= lat["max"]
    if telemetry:
        assert run["batch_size"]["mean"] >= 1 and run["batch_size"]["max"] >= 1
        assert run["batch_size"]["source"].startswith("telemetry")
    else:  # sampled from the node logs: every 100th batch, maybe none in a short window
        assert run["batch_size"]["source"].startswith("node logs")
        assert run["batch_size"]["mean"] is None or run["batch_size"]["mean"] >= 1
    assert run["view_changes"] == 0
    cpu = run["cpu_s_per_node"]
    assert sorted(cpu) == ["0", "1", "2", "3"]
    assert all(v is not None and 0 < v < 10 * run["duration_s"] for v in cpu.values())
    assert len(run["client_cpu_s"]) == run["client_processes"] >= 1
    assert run["n"] == 4 and run["f"] == 1 and run["cores"] >= 1
    assert run["crypto_ceiling_ops_per_s"] == pytest.approx(
        crypto_ceiling_ops_per_s(run["cores"], 4, run["ed25519_verify_us"]), rel=0.01)


@pytest.mark.udp
def test_bench_smoke_json(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """`bft bench CONFIG` with a tiny duration: a JSON report with sane numbers; the nodes
    agree at the end and the temporary state directory is removed."""
    config = _write_config(tmp_path)
    out = tmp_path / "bench.json"
    state = tmp_path / "state"
    parser = argparse.ArgumentParser()
    bench.add_bench_arguments(parser)
    args = parser.parse_args([str(config), "--clients", "2", "--duration", "1", "--warmup",
                              "0.5", "--json", str(out), "--quiet", "--state-dir", str(state)])
    assert bench.run_bench_command(args) == 0
    report = json.loads(out.read_text())
    _check_run(report, 2)
    assert report["mode"] == "own" and report["fsync"] == "never"
    assert report["nodes_agree_at_stop"] is True
    executed = {s["executed_requests"] for s in report["stop_summaries"].values()}
    assert len(executed) == 1 and executed.pop() >= report["completed"]
    printed = capsys.readouterr().out
    assert "ops/s" in printed and "crypto ceiling" in printed
    assert (state / "bench-cluster.toml").exists()  # a given state dir is kept


@pytest.mark.udp
def test_bench_sweep_prints_table_and_plot(tmp_path: Path,
                                           capsys: pytest.CaptureFixture[str]) -> None:
    config = _write_config(tmp_path)
    out = tmp_path / "sweep.json"
    parser = argparse.ArgumentParser()
    bench.add_bench_arguments(parser)
    args = parser.parse_args([str(config), "--sweep", "1,3", "--duration", "0.7", "--warmup",
                              "0.3", "--json", str(out), "--quiet"])
    assert bench.run_bench_command(args) == 0
    report = json.loads(out.read_text())
    assert [r["clients"] for r in report["runs"]] == [1, 3]  # more than the config's 2
    for run, clients in zip(report["runs"], (1, 3)):
        _check_run(run, clients)
    printed = capsys.readouterr().out
    assert "throughput (ops/s)" in printed and printed.count("*") >= 2


@pytest.mark.udp
@pytest.mark.parametrize("monitor_busy", [False, True])
async def test_bench_attaches_to_a_running_cluster(tmp_path: Path, monitor_busy: bool) -> None:
    """--attach: the nodes are found by their pid files, telemetry at the config's monitor;
    when something else holds the monitor address (a dashboard), batch sizes and view
    changes come from the node logs instead."""
    monitor_port = bench.free_udp_ports(1)[0]
    blocker = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    if monitor_busy:
        blocker.bind(("127.0.0.1", monitor_port))
    path = tmp_path / "cluster.toml"
    config = local_config(4, name="attached", clients=2, monitor=("127.0.0.1", monitor_port))
    path.write_text(config_to_toml(config))
    config = ClusterConfig.load(path)
    state, keys = tmp_path / "state", tmp_path / "state" / "keys"
    ensure_keys(config, keys)
    cluster = LocalCluster(path, config, state, keys)
    try:
        with trio.fail_after(60):
            await cluster.start()
            result = await run_benchmark(path, counts=[2], warmup_s=0.5, duration_s=1.0,
                                         attach=True, state_dir=state, progress=False,
                                         say=lambda line: None)
            summaries = await cluster.stop_all()
    finally:
        cluster.cleanup()
        blocker.close()
    assert result["mode"] == "attach"
    _check_run(result["runs"][0], 2, telemetry=not monitor_busy)
    assert len(summaries) == 4 and len({s["state_digest"] for s in summaries.values()}) == 1
    assert not math.isnan(result["ed25519_verify_us"])


# ---------------------------------------------------------------- pipeline benchmark

def test_pipeline_commits_every_request_and_charges_each_replica() -> None:
    """benchmarks/pipeline.py drives real replicas and clients over the real wire path:
    every request it submits completes, all replicas execute the same log, and
    the CPU it reports is split between every replica and the clients."""
    from benchmarks.pipeline import Pipeline

    p = Pipeline(4, 3)
    p.run(30)
    assert p.completed == 30
    assert len(p.latencies) == 30
    executed = {r.last_executed for r in p.replicas}
    digests = {r.app.digest() for r in p.replicas}
    assert len(executed) == 1 and executed.pop() > 0
    assert len(digests) == 1
    assert set(p.cpu) == {0, 1, 2, 3, "clients"}
    assert all(v > 0 for v in p.cpu.values())
