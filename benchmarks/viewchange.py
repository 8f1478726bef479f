"""View change under load: SIGKILL the primary, measure until client operations complete again.

Run (from the repository root, in the venv):

    python benchmarks/viewchange.py [--trials 3] [--clients 8] [--before 3] [--after 8]
                                    [--client-timeout S] [--vc-timeout S] [--vc-min S]

Each trial starts a fresh 4-node cluster (free loopback ports, fsync never),
drives `--clients` closed-loop clients for `--before` seconds, SIGKILLs the
primary of the current view (a process this script started), keeps the load
on for `--after` seconds, and stops. From the clients' completion times
(monotonic clock, shared by all processes on the machine) and the nodes'
telemetry it reports, relative to the kill:

* view_change_start_s: the first live node that started a view change (telemetry);
* new_view_s: the first NEW-VIEW event a live node reported (telemetry);
* service_back_s: the first request completed in a view above the old one
  (the number this benchmark is about);
* first_new_request_s: the first completion of a request submitted after the kill;
* gap_s: the longest stretch without any completion around the kill;
* rate_back_s: when throughput (100 ms buckets) is back to half its rate before the kill.
"""

from __future__ import annotations

import argparse
import itertools
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import trio

from bft.bench import (
    LoadRun,
    TelemetryListener,
    local_config,
    monitored_cluster,
)


async def trial(root: Path, args: argparse.Namespace) -> dict[str, Any]:
    listener = TelemetryListener("127.0.0.1", 0, None)
    overrides: dict[str, Any] = {}
    if args.client_timeout is not None:
        overrides["client_timeout_s"] = args.client_timeout
    if args.vc_timeout is not None:
        overrides["view_change_timeout_s"] = args.vc_timeout
    if args.vc_min is not None:
        overrides["view_change_timeout_min_s"] = args.vc_min
    config = local_config(4, name="vc", clients=args.clients + 1, **overrides)
    path, config, state, keys, cluster = monitored_cluster(root, config, listener)
    load = LoadRun(path, keys, state, [c.id for c in config.clients][:args.clients],
                   processes=args.client_procs, work_dir=root / "load", timeout_s=60.0)
    try:
        async with trio.open_nursery() as nursery:
            nursery.start_soon(listener.run)
            await cluster.start()
            await load.start(nursery)
            with trio.move_on_after(30):  # every client's first request (its set-up) is done
                while load.primed() < args.clients:
                    await trio.sleep(0.05)
            await trio.sleep(args.before)
            view0 = max((s.view for s in listener.nodes.values()), default=0)
            primary = view0 % config.n
            t_kill = time.monotonic()
            await cluster.kill(primary)
            await trio.sleep(args.after)
            result = await load.stop()
            summaries = await cluster.stop_all()
            listener.close()
    finally:
        load.cleanup()
        cluster.cleanup()
        listener.close()
    pairs = sorted(zip(result.times, result.latencies, result.views))
    before = [t for t, _, _ in pairs if t_kill - 2.0 <= t < t_kill]
    rate_before = len(before) / 2.0

    def first(pred: Any) -> float | None:
        return next((t - t_kill for t, lat, v in pairs if t > t_kill and pred(t, lat, v)), None)

    service_back = first(lambda t, lat, v: v > view0)
    first_new = first(lambda t, lat, v: t - lat > t_kill)
    times = [t_kill - 1.0] + [t for t, _, _ in pairs if t >= t_kill - 1.0]
    gap = max((b - a for a, b in itertools.pairwise(times)), default=None)
    rate_back = None
    bucket = 0.1
    k = 0
    while t_kill + (k + 1) * bucket <= t_kill + args.after:
        lo, hi = t_kill + k * bucket, t_kill + (k + 1) * bucket
        n_in = sum(1 for t, _, v in pairs if lo <= t < hi and v > view0)
        if rate_before and n_in / bucket >= rate_before / 2:
            rate_back = hi - t_kill
            break
        k += 1
    new_view = next((at - t_kill for at, node, kind, _ in listener.events
                     if kind == "new_view" and at > t_kill and node != primary), None)
    vc_start = next((at - t_kill for at, node, kind, _ in listener.events
                     if kind == "view_change_start" and at > t_kill and node != primary), None)
    causes = sorted({str(f.get("cause")) for at, node, kind, f in listener.events
                     if kind == "view_change_start" and at > t_kill})
    views = {i: s.get("view") for i, s in summaries.items()}
    return {"killed": primary, "view_before": view0, "views_at_stop": views,
            "rate_before_ops_per_s": rate_before, "view_change_start_s": vc_start,
            "causes": causes, "new_view_s": new_view,
            "service_back_s": service_back, "first_new_request_s": first_new, "gap_s": gap,
            "rate_back_s": rate_back, "completed": len(pairs), "errors": result.errors,
            "client_retransmits": result.client_stats.get("retransmits", 0),
            "client_broadcasts": result.client_stats.get("broadcasts", 0)}


def _r(x: float | None) -> str:
    return "-" if x is None else f"{x:.3f}"


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--trials", type=int, default=3)
    ap.add_argument("--clients", type=int, default=8)
    ap.add_argument("--client-procs", type=int, default=1)
    ap.add_argument("--before", type=float, default=3.0, help="seconds of load before the kill")
    ap.add_argument("--after", type=float, default=8.0, help="seconds of load after the kill")
    ap.add_argument("--client-timeout", type=float, default=None, help="timeouts.client_s")
    ap.add_argument("--vc-timeout", type=float, default=None, help="timeouts.view_change_s")
    ap.add_argument("--vc-min", type=float, default=None, help="timeouts.view_change_min_s")
    ap.add_argument("--json", type=Path, default=None)
    args = ap.parse_args()
    rows = []
    for k in range(args.trials):
        with tempfile.TemporaryDirectory(prefix="bft-vc-") as tmp:
            row = trio.run(trial, Path(tmp), args)
        rows.append(row)
        print(f"trial {k + 1}: killed node {row['killed']} at {row['rate_before_ops_per_s']:.0f} "
              f"ops/s; first view-change start {_r(row['view_change_start_s'])} s ({','.join(row['causes'])}), new view {_r(row['new_view_s'])} s, service back "
              f"{_r(row['service_back_s'])} s, first new request {_r(row['first_new_request_s'])} "
              f"s, gap {_r(row['gap_s'])} s, half rate {_r(row['rate_back_s'])} s; "
              f"views at stop {row['views_at_stop']}", flush=True)
    backs = [r["service_back_s"] for r in rows if r["service_back_s"] is not None]
    if backs:
        print(f"service back after the kill: median {statistics.median(backs):.3f} s, "
              f"min {min(backs):.3f}, max {max(backs):.3f} ({len(backs)}/{len(rows)} trials)")
    else:
        print("service never came back within --after in any trial")
    if args.json is not None:
        args.json.write_text(json.dumps(rows, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
