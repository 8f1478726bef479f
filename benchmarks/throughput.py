"""Throughput and latency against client count, for one or more cluster sizes.

Run (from the repository root, in the venv):

    python benchmarks/throughput.py --nodes 4 --sweep 1,2,4,8,16,32,64,128
    python benchmarks/throughput.py --nodes 4,7,10,13 --sweep 32      # scale

For each n a fresh local cluster (f = (n-1)//3, free loopback ports, fsync
never, every message Ed25519-signed) is started by `bft.bench.run_benchmark`
(the engine of `bft bench`), each client count is measured for --duration
seconds after --warmup seconds, and the cluster is stopped. Prints one table
per n, a terminal plot of latency against throughput, and for several n the
throughput relative to the first. `--json FILE` writes every result.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
from functools import partial
from pathlib import Path

import trio

from bft.bench import ascii_plot, config_to_toml, format_table, local_config, run_benchmark


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--nodes", default="4", help="cluster sizes, e.g. 4,7,10,13 (default 4)")
    ap.add_argument("--sweep", default="1,8,32,128", help="client counts (default 1,8,32,128)")
    ap.add_argument("--duration", type=float, default=10.0, help="seconds measured per point")
    ap.add_argument("--warmup", type=float, default=3.0, help="seconds of load before")
    ap.add_argument("--op-size", type=int, default=0)
    ap.add_argument("--client-procs", type=int, default=None)
    ap.add_argument("--batch-max", type=int, default=None, help="override batching.max_requests")
    ap.add_argument("--batch-delay", type=float, default=None, help="override batching.delay_s")
    ap.add_argument("--max-in-flight", type=int, default=None,
                    help="override batching.max_in_flight")
    ap.add_argument("--json", type=Path, default=None)
    ap.add_argument("--state-dir", type=Path, default=None,
                    help="keep each cluster's state and node logs in STATE_DIR/n-N")
    args = ap.parse_args()
    sizes = [int(x) for x in args.nodes.split(",")]
    counts = [int(x) for x in args.sweep.split(",")]
    results = []
    with tempfile.TemporaryDirectory(prefix="bft-throughput-") as tmp:
        for n in sizes:
            overrides = {}
            if args.batch_max is not None:
                overrides["batch_max_requests"] = args.batch_max
            if args.max_in_flight is not None:
                overrides["max_in_flight"] = args.max_in_flight
            if args.batch_delay is not None:
                overrides["batch_delay_s"] = args.batch_delay
            config = local_config(n, name=f"bench-{n}", clients=max(counts) + 1, **overrides)
            path = Path(tmp) / f"bench-{n}.toml"
            path.write_text(config_to_toml(config))
            print(f"== n = {n}", flush=True)
            result = trio.run(partial(
                run_benchmark, path, counts=counts, warmup_s=args.warmup,
                duration_s=args.duration, op_size=args.op_size, client_procs=args.client_procs,
                state_dir=None if args.state_dir is None else args.state_dir / f"n-{n}"))
            results.append(result)
            print(format_table(result["runs"]))
            if len(counts) > 1:
                print(ascii_plot([(str(r["clients"]), r["throughput_ops_per_s"],
                                   r["latency_ms"]["p50"] or 0.0) for r in result["runs"]]))
            print(flush=True)
    if len(sizes) > 1:
        base = {r["clients"]: r["throughput_ops_per_s"] for r in results[0]["runs"]}
        print(f"{'n':>3} {'f':>2} {'clients':>7} {'ops/s':>8} {'p50 ms':>7} {'vs n=' + str(sizes[0]):>9}"
              f" {'ceiling':>8}")
        for res in results:
            for r in res["runs"]:
                rel = r["throughput_ops_per_s"] / base[r["clients"]] if base[r["clients"]] else 0
                p50 = r["latency_ms"]["p50"]
                print(f"{res['n']:>3} {res['f']:>2} {r['clients']:>7} "
                      f"{r['throughput_ops_per_s']:>8.0f} {p50 if p50 is not None else 0:>7.2f} "
                      f"{rel:>9.0%} {res['crypto_ceiling_ops_per_s']:>8.0f}")
    if args.json is not None:
        args.json.write_text(json.dumps(results, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
