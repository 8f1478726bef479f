"""Where a node's CPU time goes per committed request: py-spy on live node processes.

Run (from the repository root, in the venv, with `pip install py-spy`):

    python benchmarks/profile_cluster.py [--nodes 4] [--clients 32] [--seconds 10] [--rate 250]
                                 [--profile 0,1] [--out DIR]

Starts a fresh local cluster (free loopback ports, fsync never), drives
`--clients` closed-loop clients, and after a warm-up samples the primary and a
backup with `py-spy record --nonblocking` (no pauses of the target) for
`--seconds`. The collapsed stacks (`DIR/node-N.txt`, loadable in speedscope
or flamegraph.pl) are summarised as:

* CPU microseconds per committed request by category (the innermost frame of
  each sample that falls in a category decides: Ed25519 verify and sign,
  CBOR decode and encode, digests, transport, WAL, telemetry, logging, the
  replica's own logic, the node runtime, trio's scheduler and I/O wait), the
  requests counted from the node's CommitBatch telemetry over the same window;
* the functions with the most samples on top of the stack (self time) and in
  the stack (inclusive).

py-spy leaves out samples of a thread sleeping in a system call, but on a
machine with more runnable processes than cores it also samples threads that
are runnable yet waiting for a core: right after a wake-up (still inside
epoll_wait) or right after a sendto on loopback woke the receiver. Those
samples are not CPU. So the kernel-side categories (udp send, epoll) are
reported as the node's measured *system* CPU (/proc/PID/stat), and the other
categories share out its measured *user* CPU in proportion to their samples.
"""

from __future__ import annotations

import argparse
import re
import shutil
import subprocess
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path
from typing import Any

import trio

from bft.bench import (
    LoadRun,
    TelemetryListener,
    local_config,
    monitored_cluster,
    process_cpu_times,
)


# (category, predicate on (function, file)); the innermost matching frame decides.
def _in(f: str, *parts: str) -> bool:
    """True if file path `f` (as py-spy prints it, often relative) is in one of `parts`."""
    return any(f.startswith(p) or "/" + p in f for p in parts)


# (category, predicate on (function, file)); the innermost matching frame decides.
CATEGORIES: list[tuple[str, Any]] = [
    ("ed25519 verify", lambda fn, f: _in(f, "bft/crypto.py") and fn.endswith("._check")),
    ("ed25519 sign", lambda fn, f: _in(f, "bft/crypto.py") and fn.endswith("._raw_sign")),
    ("digests (sha256)", lambda fn, f: _in(f, "bft/crypto.py") and "digest" in fn),
    ("verify cache, bookkeeping", lambda fn, f: _in(f, "bft/crypto.py")),
    ("cbor decode", lambda fn, f: _in(f, "bft/cbor.py") or (_in(f, "bft/codec.py") and (
        "decode" in fn or "_read" in fn))),
    ("cbor encode", lambda fn, f: _in(f, "bft/codec.py")),
    ("udp send (syscall)", lambda fn, f: _in(f, "transport/") and "_send_one" in fn),
    ("transport (framing, receive)", lambda fn, f: _in(f, "transport/")),
    ("wal (storage)", lambda fn, f: _in(f, "bft/storage.py")),
    ("telemetry", lambda fn, f: _in(f, "bft/telemetry.py")),
    ("logging", lambda fn, f: _in(f, "logging/", "json/")),
    ("app (kv)", lambda fn, f: _in(f, "bft/app.py")),
    ("replica logic", lambda fn, f: _in(f, "bft/replica.py", "bft/state.py", "bft/normal.py",
                                        "bft/checkpoints.py", "bft/viewchange.py",
                                        "bft/lossrecovery.py", "bft/recovery.py", "bft/quorum.py",
                                        "bft/walrecords.py", "bft/log.py", "bft/detector.py",
                                        "bft/clock.py", "bft/messages.py")),
    ("node runtime", lambda fn, f: _in(f, "bft/node.py")),
    ("trio epoll wait/poll", lambda fn, f: _in(f, "trio/") and "get_events" in fn),
    ("trio scheduler", lambda fn, f: _in(f, "trio/")),
]
KERNEL_SIDE = ("udp send (syscall)", "trio epoll wait/poll")

_FRAME = re.compile(r"^(?P<fn>.*?) \((?P<file>[^()]*?)(?::\d+)?\)$")


def parse_collapsed(text: str) -> list[tuple[list[tuple[str, str]], int]]:
    """py-spy raw output: `frame;frame;... count` per line, outermost first."""
    out = []
    for line in text.splitlines():
        stack, _, count = line.rpartition(" ")
        if not stack or not count.isdigit():
            continue
        frames = []
        for part in stack.split(";"):
            m = _FRAME.match(part.strip())
            frames.append((m["fn"], m["file"]) if m else (part.strip(), ""))
        out.append((frames, int(count)))
    return out


def categorise(stacks: list[tuple[list[tuple[str, str]], int]]) -> Counter[str]:
    cats: Counter[str] = Counter()
    for frames, count in stacks:
        chosen = "other (python)"
        for fn, f in reversed(frames):
            hit = next((name for name, pred in CATEGORIES if pred(fn, f)), None)
            if hit is not None:
                chosen = hit
                break
        cats[chosen] += count
    return cats


def top_functions(stacks: list[tuple[list[tuple[str, str]], int]], k: int = 15
                  ) -> tuple[list[tuple[str, int]], list[tuple[str, int]]]:
    own: Counter[str] = Counter()
    incl: Counter[str] = Counter()
    for frames, count in stacks:
        names = [f"{fn} ({Path(f).name})" for fn, f in frames]
        if names:
            own[names[-1]] += count
        for name in set(names):
            incl[name] += count
    return own.most_common(k), incl.most_common(k)


async def run(root: Path, args: argparse.Namespace, out_dir: Path) -> dict[str, Any]:
    listener = TelemetryListener("127.0.0.1", 0, None)
    config = local_config(args.nodes, name="profile", clients=args.clients + 1)
    path, config, state, keys, cluster = monitored_cluster(root, config, listener)
    load = LoadRun(path, keys, state, [c.id for c in config.clients][:args.clients],
                   processes=args.client_procs, work_dir=root / "load")
    profiled = [int(x) for x in args.profile.split(",")]
    facts: dict[str, Any] = {}
    try:
        async with trio.open_nursery() as nursery:
            nursery.start_soon(listener.run)
            await cluster.start()
            await load.start(nursery)
            await trio.sleep(args.warmup)
            pids = cluster.pids()
            spies = {}
            for i in profiled:
                spies[i] = await trio.lowlevel.open_process(
                    ["py-spy", "record", "--pid", str(pids[i]), "--duration",
                     str(int(args.seconds)), "--rate", str(args.rate), "--nonblocking",
                     "--format", "raw", "--output", str(out_dir / f"node-{i}.txt")],
                    stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
            t0 = time.monotonic()
            cpu0 = {i: process_cpu_times(pids[i]) for i in profiled}
            req0 = {i: listener.nodes[i].requests for i in profiled}
            done0 = load.completed()
            await trio.sleep(args.seconds)
            cpu1 = {i: process_cpu_times(pids[i]) for i in profiled}
            req1 = {i: listener.nodes[i].requests for i in profiled}
            elapsed = time.monotonic() - t0
            facts["ops_per_s"] = (load.completed() - done0) / elapsed
            for i, spy in spies.items():
                with trio.move_on_after(args.seconds + 30):
                    await spy.wait()
                if spy.poll() is None:
                    spy.kill()
            for i in profiled:
                (u0, s0), (u1, s1) = cpu0[i] or (0, 0), cpu1[i] or (0, 0)
                facts[i] = {"cpu_s": (u1 + s1) - (u0 + s0), "user_s": u1 - u0, "sys_s": s1 - s0,
                            "requests": req1[i] - req0[i], "elapsed_s": elapsed}
            await load.stop()
            await cluster.stop_all()
            listener.close()
    finally:
        load.cleanup()
        cluster.cleanup()
        listener.close()
    return facts


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--nodes", type=int, default=4)
    ap.add_argument("--clients", type=int, default=32)
    ap.add_argument("--client-procs", type=int, default=2)
    ap.add_argument("--warmup", type=float, default=4.0)
    ap.add_argument("--seconds", type=float, default=10.0)
    ap.add_argument("--rate", type=int, default=250, help="samples per second")
    ap.add_argument("--profile", default="0,1", help="node ids to sample (default 0,1)")
    ap.add_argument("--out", type=Path, default=Path("profiles"))
    args = ap.parse_args()
    if shutil.which("py-spy") is None:
        print("py-spy is not installed: pip install py-spy", file=sys.stderr)
        return 2
    args.out.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="bft-profile-") as tmp:
        facts = trio.run(run, Path(tmp), args, args.out)
    print(f"{args.nodes} nodes, {args.clients} clients: {facts['ops_per_s']:.0f} ops/s while "
          f"sampling at {args.rate} Hz for {args.seconds:g} s")
    for i in [int(x) for x in args.profile.split(",")]:
        text = (args.out / f"node-{i}.txt").read_text()
        stacks = parse_collapsed(text)
        total = sum(c for _, c in stacks)
        f = facts[i]
        reqs = max(1, f["requests"])
        role = "primary" if i == 0 else "backup"
        print(f"\nnode {i} ({role}): {f['cpu_s']:.2f} CPU s over {f['elapsed_s']:.1f} s "
              f"({f['cpu_s'] / f['elapsed_s']:.0%} of a core), {f['requests']} requests "
              f"executed -> {f['cpu_s'] / reqs * 1e6:.0f} us CPU per request; "
              f"{total} samples")
        cats = categorise(stacks)
        user_samples = sum(c for name, c in cats.items() if name not in KERNEL_SIDE) or 1
        print(f"  user CPU {f['user_s']:.2f} s, system CPU {f['sys_s']:.2f} s; raw sample shares"
              f" of udp send {cats['udp send (syscall)'] / total:.0%} and epoll "
              f"{cats['trio epoll wait/poll'] / total:.0%} are mostly waiting for a core")
        print(f"  {'category':<30} {'of CPU':>7} {'us/request':>11}")
        rows = [("kernel: send, receive, epoll (system CPU)", f["sys_s"])]
        rows += [(name, count / user_samples * f["user_s"]) for name, count in cats.most_common()
                 if name not in KERNEL_SIDE]
        for name, cpu_s in sorted(rows, key=lambda r: -r[1]):
            share = cpu_s / f["cpu_s"] if f["cpu_s"] else 0
            print(f"  {name:<30} {share:>7.1%} {cpu_s / reqs * 1e6:>11.1f}")
        own, incl = top_functions(stacks)
        print("  top self:")
        for name, count in own:
            print(f"    {count / total:6.1%}  {name}")
        print("  top inclusive:")
        for name, count in incl:
            print(f"    {count / total:6.1%}  {name}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
