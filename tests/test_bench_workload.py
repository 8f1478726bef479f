"""`bft bench --workload` (issue 22 item 1): the load workers run a bft.workload per client.
Failed before the fix: `--workload` was an unknown argument (usage error) and the workers
knew only the noop and put ops."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import pytest

from bft import bench
from bft.app import decode_op_untrusted
from bft.bench import config_to_toml, local_config
from bft.config import ClusterConfig


def test_a_workload_op_makes_each_client_its_own_mixed_stream():
    op_for = bench._make_op(bench.workload_op("mixed", 2), 0)
    ops = [decode_op_untrusted(op_for(client, i)) for client in (1, 2) for i in range(60)]
    kinds = {type(op).__name__ for op in ops}
    assert {"Get", "Put", "Cas", "Lock"} <= kinds, kinds
    keys = {getattr(op, "key", None) or getattr(op, "name") for op in ops}
    assert len(keys) <= 4 and all(k.startswith("b") for k in keys)  # k0, k1, L0, L1
    assert set(op_for.workloads) == {1, 2}  # observed through the worker


def test_bad_keys_is_a_usage_error(tmp_path: Path, capsys):
    config = tmp_path / "cluster.toml"
    config.write_text(config_to_toml(local_config(4, name="wl", clients=2)))
    parser = argparse.ArgumentParser()
    bench.add_bench_arguments(parser)
    args = parser.parse_args([str(config), "--workload", "mixed", "--keys", "0"])
    assert bench.run_bench_command(args) == 2
    assert "--keys must be >= 1" in capsys.readouterr().err


@pytest.mark.udp
def test_bench_runs_the_mixed_workload(tmp_path: Path):
    config = tmp_path / "cluster.toml"
    config.write_text(config_to_toml(local_config(4, name="wl", clients=2)))
    out = tmp_path / "bench.json"
    parser = argparse.ArgumentParser()
    bench.add_bench_arguments(parser)
    args = parser.parse_args([str(config), "--clients", "2", "--duration", "1", "--warmup",
                              "0.5", "--json", str(out), "--quiet", "--workload", "mixed",
                              "--keys", "2"])
    assert bench.run_bench_command(args) == 0
    report = json.loads(out.read_text())
    assert report["op"] == "workload=mixed,keys=2"
    assert report["completed"] > 0 and report["errors"] == 0
    assert report["nodes_agree_at_stop"] is True
    # issue 22 item 4: the load stopped, the nodes converged, digests compared at one seq
    assert report["stop_agreement"].startswith("digests agree at seq ")
    cluster = bench.LocalCluster(config, ClusterConfig.load(config), tmp_path / "s",
                                 tmp_path / "k", app="test_user_api_example:Ledger")
    assert cluster.node_args[-2:] == ["--app", "test_user_api_example:Ledger"]


def test_app_workload_needs_its_app(tmp_path: Path, capsys):
    config = tmp_path / "cluster.toml"
    config.write_text(config_to_toml(local_config(4, name="wl", clients=2)))
    parser = argparse.ArgumentParser()
    bench.add_bench_arguments(parser)
    args = parser.parse_args([str(config), "--workload", "app"])
    assert bench.run_bench_command(args) == 2
    assert "--workload app and --app MODULE:FACTORY go together" in capsys.readouterr().err
    args = parser.parse_args([str(config), "--workload", "app", "--app", "nosuchmodule:make"])
    assert bench.run_bench_command(args) == 2
    assert "cannot import 'nosuchmodule'" in capsys.readouterr().err


@pytest.mark.udp
def test_bench_runs_a_users_app_workload(tmp_path: Path, monkeypatch):
    """Issue 22 item 1: `bft bench --workload app --app MODULE:FACTORY` runs the user's
    application on every node and sends its random_op from every client. Failed before the
    fix: `app` was not a --workload choice (usage error). The clients' ops are the Ledger's
    transfers (checked against a Ledger of our own), every node is started with the app, and
    the run completes with the nodes' digests agreeing."""
    tests_dir = str(Path(__file__).parent)
    monkeypatch.syspath_prepend(tests_dir)
    monkeypatch.setenv("PYTHONPATH", tests_dir)  # the node and worker processes import it
    op_for = bench._make_op(bench.workload_op("app", 4, "test_user_api_example:Ledger"), 0)
    from test_user_api_example import Ledger

    ledger = Ledger()
    results = {ledger.execute(op_for(1, i), None) for i in range(40)}
    assert results <= {b"ok", b"insufficient"} and b"ok" in results
    config = tmp_path / "cluster.toml"
    config.write_text(config_to_toml(local_config(4, name="wl", clients=2)))
    out = tmp_path / "bench.json"
    parser = argparse.ArgumentParser()
    bench.add_bench_arguments(parser)
    args = parser.parse_args([str(config), "--clients", "2", "--duration", "1", "--warmup",
                              "0.5", "--json", str(out), "--quiet", "--workload", "app",
                              "--app", "test_user_api_example:Ledger"])
    assert bench.run_bench_command(args) == 0
    report = json.loads(out.read_text())
    assert report["op"] == "workload=app,keys=4,app=test_user_api_example:Ledger"
    assert report["completed"] > 0 and report["errors"] == 0
    assert report["stop_agreement"].startswith("digests agree at seq ")
    cluster = bench.LocalCluster(config, ClusterConfig.load(config), tmp_path / "s",
                                 tmp_path / "k", app="test_user_api_example:Ledger")
    assert cluster.node_args[-2:] == ["--app", "test_user_api_example:Ledger"]
