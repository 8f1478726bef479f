"""What the defences cost in throughput when no one attacks (issue 21).

Run (from the repository root, in the venv):

    python benchmarks/defence_cost.py --old-python /path/to/old-worktree/.venv/bin/python
        [--rounds 3] [--clients 8] [--duration 10] [--fsync always|never] [--json FILE]

Runs `bft bench CONFIG --clients C --duration S` (a copy of configs/local-4.toml on
free loopback ports; each bench starts its own cluster in a temporary state directory)
in turn, `--rounds` times, for each variant:

* `old`: the `bft` and configs/local-4.toml of another worktree (`--old-python`, the python of its venv; the
  bench runs with that worktree as its working directory), e.g. a commit before the
  defences;
* `new`: this worktree's `bft`;
* `new, no fair share`: this worktree's `bft` with `Node._fair_share` replaced by the
  identity (through a `sitecustomize` module on PYTHONPATH, inherited by the nodes the
  bench spawns), to tell what the per-source and per-client shares cost from the rest;
* `new, no kernel steering`: this worktree's `bft` with `Node.kernel_steering` off (the
  same way): one socket for everyone, no kernel filter, to tell what the reuseport
  steering, the strangers' filter and rate cost.

Alternating the variants round by round spreads the shared machine's load changes over all
of them. Each line prints the variant, throughput, p50/p99 latency, the nodes' CPU
microseconds per request and the mean batch size (from `bft bench --json`) and the 1-minute
load average before the run; at the end, per variant, the runs and their mean. On a busy
machine throughput moves by 30 % between runs; CPU per request moves much less.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

from transport.udp import free_udp_ports

ROOT = Path(__file__).resolve().parent.parent
NO_FAIR_SHARE = ("import bft.node\n"
                 "bft.node.Node._fair_share = lambda self, batch, now: batch\n")
NO_STEERING = ("import bft.node\n"
               "_init = bft.node.Node.__init__\n"
               "def _no_steering(self, *args, **kwargs):\n"
               "    _init(self, *args, **kwargs)\n"
               "    self.kernel_steering = False\n"
               "bft.node.Node.__init__ = _no_steering\n")


def config_copy(root: Path, out: Path) -> Path:
    """`root`/configs/local-4.toml (each variant reads its own commit's) with its node and
    monitor ports moved to free ones."""
    text = (root / "configs" / "local-4.toml").read_text()
    ports = free_udp_ports(5)
    for old, new in zip((7100, 7101, 7102, 7103, 7199), ports):
        text = re.sub(rf"127\.0\.0\.1:{old}\b", f"127.0.0.1:{new}", text)
    out.write_text(text)
    return out


def loadavg() -> float:
    return os.getloadavg()[0]


def bench(python: str, cwd: Path, config: Path, args: argparse.Namespace, out: Path,
          env: dict[str, str]) -> dict[str, Any]:
    cmd = [python, "-m", "bft", "bench", str(config), "--clients", str(args.clients),
           "--duration", repr(args.duration), "--fsync", args.fsync, "--json", str(out),
           "--quiet"]
    proc = subprocess.run(cmd, cwd=cwd, env=env, stdout=subprocess.DEVNULL,
                          stderr=subprocess.PIPE, timeout=args.duration + 120)
    if proc.returncode != 0:
        return {"error": proc.stderr.decode(errors="replace")[-400:]}
    data = json.loads(out.read_text())
    if isinstance(data, list):
        data = data[-1]
    return data


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--old-python", required=True, metavar="PYTHON",
                        help="the python of the other worktree's venv (its bft is 'old')")
    parser.add_argument("--rounds", type=int, default=3, help="runs of each variant (default 3)")
    parser.add_argument("--clients", type=int, default=8, help="closed-loop clients (default 8)")
    parser.add_argument("--duration", type=float, default=10.0, help="seconds measured (default 10)")
    parser.add_argument("--fsync", choices=("always", "never"), default="always",
                        help="WAL fsync policy (default always, as configs/local-4.toml)")
    parser.add_argument("--json", type=Path, default=None, metavar="FILE",
                        help="also write every run as JSON to FILE")
    args = parser.parse_args()
    old_python = Path(args.old_python)
    if not old_python.exists():
        parser.error(f"--old-python {old_python}: no such file")
    work = Path(tempfile.mkdtemp(prefix="bft-defence-cost-"))
    patch_dir = work / "no-fair-share"
    patch_dir.mkdir()
    (patch_dir / "sitecustomize.py").write_text(NO_FAIR_SHARE)
    no_steering_dir = work / "no-steering"
    no_steering_dir.mkdir()
    (no_steering_dir / "sitecustomize.py").write_text(NO_STEERING)
    base_env = dict(os.environ)
    base_env.pop("PYTHONPATH", None)
    variants = [
        ("old", str(old_python), old_python.parent.parent.parent, base_env),
        ("new", sys.executable, ROOT, base_env),
        ("new, no fair share", sys.executable, ROOT, dict(base_env, PYTHONPATH=str(patch_dir))),
        ("new, no kernel steering", sys.executable, ROOT,
         dict(base_env, PYTHONPATH=str(no_steering_dir))),
    ]
    print(f"load average at start: {os.getloadavg()}; work dir {work}", file=sys.stderr)
    runs: list[dict[str, Any]] = []
    for r in range(args.rounds):
        for name, python, cwd, env in variants:
            config = config_copy(cwd, work / f"c-{r}-{len(runs)}.toml")
            load = loadavg()
            data = bench(python, cwd, config, args, work / f"r-{len(runs)}.json", env)
            ops = data.get("throughput_ops_per_s")
            lat = data.get("latency_ms") or {}
            row = {"round": r + 1, "variant": name, "ops_per_s": ops,
                   "p50_ms": lat.get("p50"), "p99_ms": lat.get("p99"),
                   "node_cpu_us_per_request": data.get("node_cpu_us_per_request"),
                   "batch_mean": (data.get("batch_size") or {}).get("mean"),
                   "loadavg_1m": load, "error": data.get("error")}
            runs.append(row)
            print(json.dumps(row), flush=True)
    print("\n| variant | runs (ops/s) | mean ops/s | of old |")
    print("|---|---|---|---|")
    means = {}
    for name, *_ in variants:
        vals = [r["ops_per_s"] for r in runs if r["variant"] == name and r["ops_per_s"]]
        means[name] = sum(vals) / len(vals) if vals else None
    for name, *_ in variants:
        vals = [r["ops_per_s"] for r in runs if r["variant"] == name and r["ops_per_s"]]
        mean = means[name]
        ratio = (f"{mean / means['old']:.2f}" if mean and means.get("old") else "-")
        print(f"| {name} | {', '.join(f'{v:.0f}' for v in vals)} | "
              f"{mean:.0f} | {ratio} |" if mean else f"| {name} | - | - | - |")
    print(f"\nload average at end: {os.getloadavg()}", file=sys.stderr)
    if args.json is not None:
        args.json.write_text(json.dumps(runs, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
