"""Catch-up: a node restarted after many operations; time until it reaches the others' state.

Run (from the repository root, in the venv):

    python benchmarks/catchup.py [--ops 100000] [--clients 32] [--max-load-s 300]
                                 [--op put] [--keys 1024]

A fresh 4-node cluster (free loopback ports, fsync never); once it serves,
node 3 (a backup) is SIGKILLed. `--clients` closed-loop clients then run
until `--ops` operations completed (or `--max-load-s` passed: the number
reached is reported), and stop. Node 3 is restarted from its write-ahead log
and the script waits (at most `--max-catchup-s`) until node 3's telemetry
reports the others' last executed sequence number; finally every node is
stopped and their state digests (from the stop summaries) must agree.

Reported: operations and sequence numbers node 3 missed, restart -> listening
(process start, WAL recovery), listening -> caught up, and the catch-up rate
in operations of log per second (missed operations / (restart -> caught up)).
Telemetry status snapshots arrive every 0.25 s, which bounds the resolution.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import trio

from bft.bench import (
    BenchError,
    LoadRun,
    TelemetryListener,
    local_config,
    monitored_cluster,
)

LAGGARD = 3


async def run(root: Path, args: argparse.Namespace) -> dict[str, Any]:
    listener = TelemetryListener("127.0.0.1", 0, None)
    config = local_config(4, name="catchup", clients=args.clients + 1)
    path, config, state, keys, cluster = monitored_cluster(root, config, listener)
    load = LoadRun(path, keys, state, [c.id for c in config.clients][:args.clients],
                   processes=args.client_procs, op=args.op, op_size=args.op_size,
                   work_dir=root / "load", timeout_s=60.0)
    out: dict[str, Any] = {}
    try:
        async with trio.open_nursery() as nursery:
            nursery.start_soon(listener.run)
            await cluster.start()
            await load.start(nursery)
            # let every node (the laggard too) execute something, then crash the laggard
            if not await listener.wait_for(
                    lambda: all(listener.nodes.get(i) and listener.nodes[i].last_executed > 0
                                for i in range(config.n)), 30):
                raise BenchError("the cluster did not start executing")
            await cluster.kill(LAGGARD)
            lag_from = listener.nodes[LAGGARD].last_executed
            t0 = time.monotonic()
            last_print = t0
            while load.completed() < args.ops and time.monotonic() - t0 < args.max_load_s:
                await trio.sleep(0.2)
                if time.monotonic() - last_print >= 10:
                    last_print = time.monotonic()
                    print(f"  load: {load.completed()} ops in {last_print - t0:.0f} s",
                          file=sys.stderr, flush=True)
            load_s = time.monotonic() - t0
            result = await load.stop()
            await trio.sleep(0.6)  # the last commits reach every live node's telemetry
            others = [i for i in range(config.n) if i != LAGGARD]
            target = max(listener.nodes[i].last_executed for i in others)
            t_restart = time.monotonic()
            cluster.spawn(LAGGARD)
            await cluster.wait_ready(LAGGARD, timeout_s=120)
            t_listening = time.monotonic()
            caught = await listener.wait_for(
                lambda: listener.nodes[LAGGARD].last_executed >= target
                and listener.nodes[LAGGARD].snapshot_at > t_listening, args.max_catchup_s)
            t_caught = time.monotonic()
            summaries = await cluster.stop_all()
            listener.close()
    finally:
        load.cleanup()
        cluster.cleanup()
        listener.close()
    digests = {i: s.get("state_digest") for i, s in summaries.items()}
    missed_ops = len(result.times)
    out = {
        "ops_while_down": missed_ops, "load_s": round(load_s, 1),
        "load_ops_per_s": round(missed_ops / load_s, 1) if load_s else None,
        "seqs_behind": target - lag_from, "target_seq": target, "caught_up": caught,
        "restart_to_listening_s": round(t_listening - t_restart, 3),
        "listening_to_caught_up_s": round(t_caught - t_listening, 3),
        "restart_to_caught_up_s": round(t_caught - t_restart, 3),
        "catchup_ops_per_s": round(missed_ops / (t_caught - t_restart), 1) if caught else None,
        "digests_agree": len(set(digests.values())) == 1 and len(digests) == config.n,
        "digests": digests,
        "laggard_events": [e for e in _events(state, LAGGARD)
                           if e.get("event") in ("start", "state_transfer_start",
                                                 "state_transfer", "wal_repaired")],
    }
    return out


def _events(state: Path, node: int) -> list[dict[str, Any]]:
    try:
        lines = (state / f"node-{node}.log.jsonl").read_text().splitlines()
    except OSError:
        return []
    return [json.loads(x) for x in lines if x.startswith("{")]


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--ops", type=int, default=100_000, help="operations while node 3 is down")
    ap.add_argument("--clients", type=int, default=32)
    ap.add_argument("--client-procs", type=int, default=2)
    ap.add_argument("--op", choices=["noop", "put"], default="put")
    ap.add_argument("--op-size", type=int, default=16)
    ap.add_argument("--max-load-s", type=float, default=300.0)
    ap.add_argument("--max-catchup-s", type=float, default=120.0)
    ap.add_argument("--json", type=Path, default=None)
    ap.add_argument("--keep", type=Path, default=None, metavar="DIR",
                    help="work in DIR and keep it (config, keys, node logs)")
    args = ap.parse_args()
    if args.keep is not None:
        args.keep.mkdir(parents=True, exist_ok=True)
        out = trio.run(run, args.keep, args)
    else:
        with tempfile.TemporaryDirectory(prefix="bft-catchup-") as tmp:
            out = trio.run(run, Path(tmp), args)
    for k, v in out.items():
        if k not in ("digests", "laggard_events"):
            print(f"{k:<26} {v}")
    for e in out["laggard_events"]:
        print("  node 3:", {k: e[k] for k in e if k not in ("logger", "level")})
    if args.json is not None:
        args.json.write_text(json.dumps(out, indent=2) + "\n")
    return 0 if out["caught_up"] and out["digests_agree"] else 1


if __name__ == "__main__":
    sys.exit(main())
