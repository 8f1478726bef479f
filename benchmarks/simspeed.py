"""Simulator speed and message cost: committed requests per wall second, messages per request.

Run (from the repository root, in the venv):

    python benchmarks/simspeed.py [--clients 8] [--requests 100] [--seeds 3]
                                  [--nodes 4,7,10,13] [--crypto sim|ed25519]

Part 1, speed: 4 replicas, `--clients` closed-loop clients each issuing
`--requests` ops, no faults and then 10 % datagram drop; for each, the
committed (completed) requests per wall-clock second of the simulator
(`SimResult.completed_requests / wall_seconds`), best over `--seeds` seeds.
Part 2, cost: messages sent per completed request (`messages_sent /
completed_requests`, every datagram of replicas and clients, the final drain
of status messages included) for each n of `--nodes`, no faults.

The simulator encodes and decodes every message (codec on) and signs with
keyed-BLAKE2b keys by default (`--crypto sim`); `--crypto ed25519` signs as the real
nodes do.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

from adversary.sim import SimConfig, Simulation


def one(n: int, drop: float, seed: int, args: argparse.Namespace) -> dict[str, Any]:
    cfg = SimConfig(seed=seed, nodes=n, clients=args.clients, requests=args.requests,
                    drop=drop, crypto=args.crypto)
    r = Simulation(cfg).run(until_s=args.until)
    done = r.completed_requests
    return {"n": n, "drop": drop, "seed": seed, "completed": done,
            "expected": args.clients * args.requests, "safety_ok": r.safety_ok,
            "liveness_ok": r.liveness_ok, "wall_s": round(r.wall_seconds, 3),
            "virtual_s": round(r.virtual_seconds, 3),
            "committed_per_wall_s": round(done / r.wall_seconds, 1) if r.wall_seconds else None,
            "messages_sent": r.messages_sent,
            "messages_per_request": round(r.messages_sent / done, 2) if done else None,
            "view_changes": r.view_changes}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--clients", type=int, default=8)
    ap.add_argument("--requests", type=int, default=100, help="requests per client")
    ap.add_argument("--seeds", type=int, default=3)
    ap.add_argument("--nodes", default="4,7,10,13")
    ap.add_argument("--crypto", choices=["sim", "ed25519"], default="sim")
    ap.add_argument("--until", type=float, default=600.0, help="virtual seconds at most")
    ap.add_argument("--json", type=Path, default=None)
    args = ap.parse_args()
    rows = []
    print(f"speed: 4 nodes, {args.clients} clients x {args.requests} requests, crypto "
          f"{args.crypto}, best of {args.seeds} seeds")
    for drop in (0.0, 0.1):
        runs = [one(4, drop, seed, args) for seed in range(1, args.seeds + 1)]
        rows += runs
        best = max(runs, key=lambda r: r["committed_per_wall_s"] or 0)
        ok = all(r["safety_ok"] and r["liveness_ok"] for r in runs)
        print(f"  drop {drop:4.0%}: {best['committed_per_wall_s']:>8.0f} committed requests per "
              f"wall second ({best['completed']}/{best['expected']} in {best['wall_s']} s wall, "
              f"{best['virtual_s']} s virtual); checks {'ok' if ok else 'FAILED'}", flush=True)
    print("messages per committed request (no faults, seed 1):")
    for n in [int(x) for x in args.nodes.split(",")]:
        r = one(n, 0.0, 1, args)
        rows.append(r)
        print(f"  n = {n:>2}: {r['messages_per_request']:>7.1f} messages per request "
              f"({r['messages_sent']} for {r['completed']}), "
              f"{r['committed_per_wall_s']:>6.0f} requests per wall second", flush=True)
    if args.json is not None:
        args.json.write_text(json.dumps(rows, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
