"""Memory: how much resident memory (RSS) each replica holds per byte stored in the KV store.

Run (from the repository root, in the venv):

    python benchmarks/memory.py [--bytes 8000000] [--value-bytes 32768] [--flush-ops 600]
                                [--seed 1] [--fsync never] [--json FILE]

A fresh 4-node cluster (free loopback ports; each node its own `bft node` process, as
`bft up` runs them). After a warm-up (200 small writes, so every lazily built structure
exists), each node's VmRSS is read from /proc/PID/status. Client 0 then stores `--bytes`
bytes of values (`--value-bytes` each, from a seeded random.Random: incompressible, no two
alike) under fresh keys, within its quota; client 1 then writes `--flush-ops` tiny values
(so the log window moves past the big writes: what remains is what the store holds, not the
log). VmRSS is read again, and VmHWM (the peak). Reported per node: RSS growth, its ratio
to the stored bytes (1.0 would be the values alone), the peak and the peak's growth over
the RSS before, per stored byte. The RSS after depends on where the allocator's free
memory happens to lie (a run-to-run spread of +-15 MiB); the peak is steadier.

Linux only (/proc). The cluster is killed at the end (only the processes this script
started, by pid).
"""

from __future__ import annotations

import argparse
import json
import platform
import random
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import trio

from bft.app import Ops, decode_result
from bft.bench import BenchError, TelemetryListener, local_config, monitored_cluster
from bft.config import load_keyring
from bft.launcher import LaunchError


def proc_memory_kib(pid: int) -> dict[str, int]:
    """VmRSS and VmHWM (peak) of process `pid`, in KiB (from /proc/PID/status)."""
    out: dict[str, int] = {}
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        key, _, rest = line.partition(":")
        if key in ("VmRSS", "VmHWM"):
            out[key] = int(rest.split()[0])
    return out


async def run(root: Path, args: argparse.Namespace) -> dict[str, Any]:
    from bft.node import ClusterClient

    listener = TelemetryListener("127.0.0.1", 0, None)
    config = local_config(4, name="memory", clients=2, fsync=args.fsync)
    path, config, state, keys, cluster = monitored_cluster(root, config, listener)
    cluster.node_args = ["--fsync", args.fsync]
    keyring = load_keyring(config, keys)
    rng = random.Random(args.seed)
    out: dict[str, Any] = {}
    try:
        await cluster.start()
        pids = cluster.pids()
        clients = [ClusterClient(config, c, signer=keyring.signer("client", c),
                                 verifier=keyring.verifier()) for c in (0, 1)]
        for i in range(200):
            await clients[1].call(Ops.put(f"warm{i % 10}", b"w"), timeout_s=30)
        await trio.sleep(1.0)
        before = {i: proc_memory_kib(pid) for i, pid in pids.items()}
        stored = puts = 0
        t0 = time.monotonic()
        while stored < args.bytes:
            value = rng.randbytes(min(args.value_bytes, args.bytes - stored))
            result = decode_result(await clients[0].call(Ops.put(f"m{puts}", value),
                                                         timeout_s=30))
            if result.kind != "ok":
                raise BenchError(f"put {puts} of client 0: {result}")
            stored += len(value)
            puts += 1
        store_s = time.monotonic() - t0
        for i in range(args.flush_ops):
            await clients[1].call(Ops.put(f"t{i % 10}", b"t"), timeout_s=30)
        await trio.sleep(1.0)
        after = {i: proc_memory_kib(pid) for i, pid in pids.items()}
        for c in clients:
            c.close()
        await cluster.stop_all()
    except LaunchError as exc:
        raise BenchError(str(exc)) from None
    finally:
        cluster.cleanup()
        listener.close()
    per_node = {}
    for i in sorted(before):
        growth = (after[i]["VmRSS"] - before[i]["VmRSS"]) * 1024
        per_node[i] = {
            "rss_before_mib": round(before[i]["VmRSS"] / 1024, 1),
            "rss_after_mib": round(after[i]["VmRSS"] / 1024, 1),
            "rss_growth_mib": round(growth / 2**20, 1),
            "rss_growth_per_stored_byte": round(growth / stored, 2),
            "peak_rss_mib": round(after[i]["VmHWM"] / 1024, 1),
            "peak_growth_per_stored_byte": round(
                (after[i]["VmHWM"] - before[i]["VmRSS"]) * 1024 / stored, 2),
        }
    out.update(stored_bytes=stored, puts=puts, value_bytes=args.value_bytes,
               flush_ops=args.flush_ops, store_s=round(store_s, 1), nodes=per_node,
               machine=f"{platform.machine()}, {len(__import__('os').sched_getaffinity(0))} cores",
               python=platform.python_version())
    return out


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--bytes", type=int, default=8_000_000,
                    help="value bytes client 0 stores (default 8000000, under its 8 MiB quota)")
    ap.add_argument("--value-bytes", type=int, default=32 * 1024,
                    help="bytes per value (default 32768, the store's largest)")
    ap.add_argument("--flush-ops", type=int, default=600,
                    help="tiny writes afterwards, so the log window moves on (default 600)")
    ap.add_argument("--seed", type=int, default=1, help="seed of the values (default 1)")
    ap.add_argument("--fsync", choices=["always", "never"], default="never")
    ap.add_argument("--json", type=Path, default=None, help="also write the result here")
    args = ap.parse_args()
    if not Path("/proc/self/status").exists():
        print("memory.py: needs Linux /proc", file=sys.stderr)
        return 2
    if not 0 < args.value_bytes <= 32 * 1024 or args.bytes <= 0:
        print("memory.py: --value-bytes must be in 1..32768 and --bytes positive",
              file=sys.stderr)
        return 2
    print(f"seed={args.seed}")
    try:
        with tempfile.TemporaryDirectory(prefix="bft-memory-") as tmp:
            out = trio.run(run, Path(tmp), args)
    except BenchError as exc:
        print(f"memory.py: {exc}", file=sys.stderr)
        return 1
    for k, v in out.items():
        if k != "nodes":
            print(f"{k:<14} {v}")
    print("node  rss before  rss after  growth MiB  growth/stored byte  peak rss MiB"
          "  peak growth/stored byte")
    for i, row in out["nodes"].items():
        print(f"{i:>4}  {row['rss_before_mib']:>10}  {row['rss_after_mib']:>9}  "
              f"{row['rss_growth_mib']:>10}  {row['rss_growth_per_stored_byte']:>18}  "
              f"{row['peak_rss_mib']:>12}  {row['peak_growth_per_stored_byte']:>23}")
    if args.json is not None:
        args.json.write_text(json.dumps(out, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
