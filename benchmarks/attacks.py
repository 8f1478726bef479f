"""Honest throughput while `bft attack` attacks the cluster (issue 21).

Run (from the repository root, in the venv):

    python benchmarks/attacks.py [--clients 4] [--client-procs 1] [--window 5] [--settle 1]
                                 [--gap 2] [--rate 200000] [--kinds sigflood,control,...]
                                 [--json FILE]

Starts a fresh 4-node cluster (free loopback ports, fsync never, telemetry to this
script) and `--clients` closed-loop clients writing 64-byte values (`bft bench`'s
load workers, `--op put`), then measures, one after the other, in the same run:

* a baseline window of `--window` seconds without attack;
* for each kind: one `bft attack CONFIG --kind KIND --rate RATE` process (the attacker at
  its full rate: the rate defaults to the tool's maximum, every node a target in turn),
  started `--settle` seconds before a window of `--window` seconds and stopped at its end,
  then `--gap` seconds without attack (`clientflood` signs as a client id of its own,
  whose key the cluster's key directory has);
* the baseline again (the machine is shared: its load changes during a run).

For each window: honest throughput (completions / window) and its ratio to the first
baseline (the mean of the two no-attack windows), p50/p99 latency, the peak resident memory (VmRSS, sampled every 0.25 s) of any
node, the nodes' CPU seconds, the views entered, and the drops by reason summed over the
nodes (from their telemetry, which lists the 16 largest counters of each node). After the
load stops, every client reads back a key it wrote (no acknowledged write lost), and no
node may have exited. The machine's load average is printed at the start and the end.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path
from typing import Any

import trio

from adversary.attack import KINDS, MAX_RATE
from bft.bench import (
    LoadRun,
    TelemetryListener,
    local_config,
    monitored_cluster,
    percentiles,
    process_cpu_seconds,
)
from bft.launcher import reap, spawn

CPU_CONTROL = "cpu-hog"  # a control window: a process that only burns a core
CPU_HOG = "import time\nend = time.monotonic() + {}\nwhile time.monotonic() < end: pass\n"
VALUE = b"v" * 64  # what `--op put --op-size 64` writes (bft.bench._make_op)


def rss_kb(pid: int) -> int | None:
    try:
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1])
    except OSError:
        return None
    return None


def hwm_mb(pid: int) -> float | None:
    """The peak resident memory of a process so far (VmHWM), MB."""
    try:
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                if line.startswith("VmHWM:"):
                    return round(int(line.split()[1]) / 1024, 1)
    except OSError:
        return None
    return None


def loadavg() -> str:
    try:
        return " ".join(Path("/proc/loadavg").read_text().split()[:3])
    except OSError:
        return "?"


class Sampler:
    """Every 0.25 s: each node's VmRSS (kB), as (monotonic time, node, kB)."""

    def __init__(self, pids: dict[int, int]) -> None:
        self.pids = pids
        self.samples: list[tuple[float, int, int]] = []

    async def run(self) -> None:
        while True:
            now = time.monotonic()
            for node, pid in self.pids.items():
                kb = rss_kb(pid)
                if kb is not None:
                    self.samples.append((now, node, kb))
            await trio.sleep(0.25)

    def peak_mb(self, t0: float, t1: float) -> float | None:
        kbs = [kb for t, _, kb in self.samples if t0 <= t <= t1]
        return round(max(kbs) / 1024, 1) if kbs else None


def drops_now(listener: TelemetryListener) -> Counter[str]:
    out: Counter[str] = Counter()
    for seen in listener.nodes.values():
        out.update(seen.drops)
    return out


async def window(name: str, seconds: float, load: LoadRun, listener: TelemetryListener,
                 pids: dict[int, int]) -> dict[str, Any]:
    """Marks of one measured window (completions are taken from the load's result later)."""
    drops0 = drops_now(listener)
    cpu0 = {i: process_cpu_seconds(p) for i, p in pids.items()}
    views0 = max((s.view for s in listener.nodes.values()), default=0)
    t0 = time.monotonic()
    await trio.sleep(seconds)
    t1 = time.monotonic()
    drops = drops_now(listener)
    drops.subtract(drops0)
    cpu = sum((process_cpu_seconds(p) or 0.0) - (cpu0[i] or 0.0) for i, p in pids.items())
    return {"name": name, "t0": t0, "t1": t1, "drops": dict((+drops).most_common(8)),
            "node_cpu_s": round(cpu, 2),
            "views_entered": max((s.view for s in listener.nodes.values()), default=0) - views0,
            "loadavg": loadavg()}


async def read_back(config: Any, keys: Path, state: Path, client_ids: list[int],
                    spare: int) -> dict[str, Any]:
    """Every client that completed a write reads back its first key (b{id}-0)."""
    from bft.app import Ops, decode_result_untrusted
    from bft.config import load_keyring
    from bft.node import ClusterClient, claim_client_id

    keyring = load_keyring(config, keys)
    claim = claim_client_id(state, spare)
    bad = []
    with claim:
        client = ClusterClient(config, spare, signer=keyring.signer("client", spare),
                               verifier=keyring.verifier(), first_timestamp=claim.first_timestamp)
        try:
            for cid in client_ids:
                result = decode_result_untrusted(await client.call(Ops.get(f"b{cid}-0"),
                                                                   timeout_s=20))
                if result.kind != "value" or result.value != VALUE:
                    bad.append((cid, repr(result)[:80]))
        finally:
            client.close()
    return {"checked": len(client_ids), "lost": bad}


async def run(args: argparse.Namespace) -> dict[str, Any]:
    root = Path(tempfile.mkdtemp(prefix="bft-attacks-"))
    listener = TelemetryListener("127.0.0.1", 0, None)
    # the load's clients, one for `clientflood` to claim, and the spare that reads back
    config = local_config(4, name="attacks", clients=args.clients + 2)
    path, config, state, keys, cluster = monitored_cluster(root, config, listener)
    ids = [c.id for c in config.clients]
    load = LoadRun(path, keys, state, ids[:args.clients], processes=args.client_procs,
                   op="put", op_size=len(VALUE), work_dir=root / "load", timeout_s=30.0)
    windows: list[dict[str, Any]] = []
    attacks: dict[str, Any] = {}
    started_loadavg = loadavg()
    print(f"load average at start: {started_loadavg}; work dir {root}", file=sys.stderr)
    try:
        async with trio.open_nursery() as nursery:
            nursery.start_soon(listener.run)
            await cluster.start()
            pids = dict(cluster.pids())
            sampler = Sampler(pids)
            nursery.start_soon(sampler.run)
            await load.start(nursery)
            with trio.move_on_after(30):
                while load.primed() < args.clients:
                    await trio.sleep(0.05)
            await trio.sleep(args.settle)
            windows.append(await window("baseline", args.window, load, listener, pids))
            for kind in args.kinds:
                out = root / f"attack-{kind}.json"
                if kind == CPU_CONTROL:
                    # sends nothing: one process spinning on a core for the attack's time, so
                    # the table shows what losing a core to any process costs the cluster
                    cmd = [sys.executable, "-c", CPU_HOG.format(args.settle + args.window)]
                else:
                    cmd = [sys.executable, "-m", "bft", "attack", str(path), "--kind", kind,
                           "--rate", repr(args.rate),
                           "--duration", repr(args.settle + args.window),
                           "--state-dir", str(state), "--key-dir", str(keys),
                           "--json", str(out), "--seed", "21"]
                with open(root / f"attack-{kind}.out", "wb") as sink:
                    proc = spawn(cmd, stdout=sink)
                print(f"attack {kind} (pid {proc.pid})", file=sys.stderr)
                await trio.sleep(args.settle)
                w = await window(kind, args.window, load, listener, pids)
                status = await reap(proc, 15.0)
                try:
                    attacks[kind] = json.loads(out.read_text())
                except (OSError, ValueError):
                    attacks[kind] = {"error": (root / f"attack-{kind}.out").read_text()[-500:]}
                w["attacker_exit"] = status
                if kind != CPU_CONTROL and (status != 0 or "error" in attacks[kind]):
                    # a window without its attack measures nothing: say so, fail the run
                    print(f"attack {kind} FAILED (exit {status}): "
                          f"{attacks[kind].get('error', '')}", file=sys.stderr)
                w["nodes_alive"] = sum(1 for p in cluster.procs.values() if p.running)
                windows.append(w)
                await trio.sleep(args.gap)
            windows.append(await window("baseline (end)", args.window, load, listener, pids))
            result = await load.stop()
            alive = sum(1 for p in cluster.procs.values() if p.running)
            readback = await read_back(config, keys, state, ids[:args.clients], ids[-1])
            hwm = {i: hwm_mb(p) for i, p in pids.items()}
            summaries = await cluster.stop_all()
            nursery.cancel_scope.cancel()
    finally:
        load.cleanup()
        cluster.cleanup()
        listener.close()
    def completions(w: dict[str, Any]) -> list[float]:
        return [lat for t, lat in zip(result.times, result.latencies) if w["t0"] <= t < w["t1"]]

    # the baseline: the mean of the two no-attack windows (at the start and at the end)
    base_rates = [len(completions(w)) / (w["t1"] - w["t0"]) for w in (windows[0], windows[-1])]
    base = sum(base_rates) / 2
    rows = []
    for w in windows:
        lat = completions(w)
        ops = len(lat) / (w["t1"] - w["t0"])
        p = percentiles(lat)
        a = attacks.get(w["name"], {})
        rows.append({
            "window": w["name"], "ops_per_s": round(ops, 1),
            "of_baseline": round(ops / base, 2) if base else None,
            "p50_ms": round(p["p50"] * 1000, 1) if p["p50"] is not None else None,
            "p99_ms": round(p["p99"] * 1000, 1) if p["p99"] is not None else None,
            "rss_peak_mb": sampler.peak_mb(w["t0"], w["t1"]),
            "node_cpu_s": w["node_cpu_s"], "views_entered": w["views_entered"],
            "attack_sent": a.get("total"),
            "attack_rate": (round(a["total"] / a["elapsed_s"]) if a.get("elapsed_s") else None),
            "drops": w["drops"], "loadavg": w["loadavg"],
            "attacker_failed": (w["name"] in attacks and w["name"] != CPU_CONTROL
                                and (w.get("attacker_exit") != 0 or "error" in a))})
    digests = {s.get("last_executed"): set() for s in summaries.values()}
    for s in summaries.values():
        digests[s.get("last_executed")].add(s.get("state_digest"))
    return {"date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
            "machine_cores": os.cpu_count(), "loadavg_start": started_loadavg,
            "loadavg_end": loadavg(), "clients": args.clients, "rate": args.rate,
            "window_s": args.window, "rows": rows, "errors": result.errors,
            "nodes_alive_at_end": alive, "read_back": readback,
            "digests_agree": all(len(d) == 1 for d in digests.values()),
            "rss_hwm_mb": hwm}


def table(report: dict[str, Any]) -> str:
    lines = ["| window | ops/s | of baseline | p50 ms | p99 ms | RSS peak MB | node CPU s | "
             "views | attack datagrams (/s) | top drops |",
             "|---|---|---|---|---|---|---|---|---|---|"]
    for r in report["rows"]:
        sent = (f"{r['attack_sent']} ({r['attack_rate']}/s)" if r["attack_sent"] is not None
                else "-")
        drops = ", ".join(f"{k} {v}" for k, v in list(r["drops"].items())[:4]) or "-"
        lines.append(f"| {r['window']} | {r['ops_per_s']} | {r['of_baseline']} | {r['p50_ms']} "
                     f"| {r['p99_ms']} | {r['rss_peak_mb']} | {r['node_cpu_s']} | "
                     f"{r['views_entered']} | {sent} | {drops} |")
    return "\n".join(lines)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--clients", type=int, default=4)
    parser.add_argument("--client-procs", type=int, default=1)
    parser.add_argument("--window", type=float, default=5.0)
    parser.add_argument("--settle", type=float, default=1.0)
    parser.add_argument("--gap", type=float, default=2.0)
    parser.add_argument("--rate", type=float, default=MAX_RATE)
    parser.add_argument("--kinds", default=",".join((CPU_CONTROL,) + tuple(KINDS)),
                        help=f"comma-separated; {CPU_CONTROL} is a control window: a process "
                             "that sends nothing and spins on one core, what any attacker "
                             "process on this machine takes from the cluster")
    parser.add_argument("--json", type=Path, default=None)
    args = parser.parse_args()
    args.kinds = [k for k in args.kinds.split(",") if k]
    unknown = [k for k in args.kinds if k not in KINDS and k != CPU_CONTROL]
    if unknown:
        parser.error(f"unknown kinds {unknown} (known: {CPU_CONTROL}, {', '.join(KINDS)})")
    report = trio.run(run, args)
    print(table(report))
    print(f"\nload average start {report['loadavg_start']}, end {report['loadavg_end']}; "
          f"{report['machine_cores']} cores; {report['date']}")
    print(f"client errors {report['errors']}; nodes alive at the end "
          f"{report['nodes_alive_at_end']}/4; acknowledged writes read back "
          f"{report['read_back']['checked']}, lost {report['read_back']['lost']}; state "
          f"digests agree {report['digests_agree']}; node RSS high-water marks (MB) "
          f"{report['rss_hwm_mb']}")
    if args.json is not None:
        args.json.write_text(json.dumps(report, indent=2) + "\n")
    failed = [r["window"] for r in report["rows"] if r.get("attacker_failed")]
    if failed:
        print(f"attacks that did not run (their windows measure nothing): {failed}")
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
