"""What one attack datagram costs a node: CPU microseconds per datagram, by `bft attack` kind.

Run (from the repository root, in the venv):

    python benchmarks/attack_cost.py [--rate 20000] [--duration 3] [--kinds ...] [--profile KIND]

Runs the 4 nodes of a fresh loopback cluster in this process (no client load) and, for
each kind, one `bft attack --target 1` process at `--rate` datagrams a second for
`--duration` seconds. It reports the datagrams node 1 received (the rest were dropped by
the kernel: its socket buffer was full), this process's CPU time meanwhile minus the same
time idle, and so the node CPU per received datagram; and the node's drops by reason.
`--profile KIND` also runs cProfile over that kind's attack and prints the functions with
the most time of their own (where a node spends its time under that attack).
"""

from __future__ import annotations

import argparse
import cProfile
import io
import pstats
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path
from typing import Any

import trio

from adversary.attack import KINDS
from bft.bench import local_config
from bft.config import load_keyring
from bft.launcher import config_to_toml, ensure_keys, reap, spawn
from bft.node import Node


def drops(node: Node) -> Counter[str]:
    assert node.endpoint is not None and node.replica is not None
    out: Counter[str] = Counter(node.stats.drops)
    out.update(node.replica.drops)
    out.update(node.endpoint.statistics()["drops"])
    out.update({f"control_{k}": v for k, v in node.control.statistics()["drops"].items()})
    return out


async def run(args: argparse.Namespace) -> list[dict[str, Any]]:
    root = Path(tempfile.mkdtemp(prefix="bft-attack-cost-"))
    config = local_config(4, name="cost", clients=2)
    path = root / "cluster.toml"
    path.write_text(config_to_toml(config))
    ensure_keys(config, root / "keys")
    keyring = load_keyring(config, root / "keys")
    nodes = [Node(config, i, signer=keyring.signer("replica", i), verifier=keyring.verifier(),
                  state_dir=root / f"n{i}") for i in range(4)]
    rows = []
    async with trio.open_nursery() as nursery:
        for node in nodes:
            await nursery.start(node.run)
        target = nodes[1]
        assert target.endpoint is not None
        await trio.sleep(1.0)
        c0 = time.process_time()
        await trio.sleep(args.duration)
        idle_cpu_per_s = (time.process_time() - c0) / args.duration
        for kind in args.kinds:
            cmd = [sys.executable, "-m", "bft", "attack", str(path), "--kind", kind, "--target",
                   "1", "--rate", repr(args.rate), "--duration", repr(args.duration),
                   "--state-dir", str(root / "state"), "--key-dir", str(root / "keys")]
            d0 = drops(target)
            rx0 = target.endpoint.statistics()["received_datagrams"]
            verified0 = target.verifier.statistics()
            profile = cProfile.Profile() if kind == args.profile else None
            with open(root / f"attack-{kind}.out", "wb") as out:
                proc = spawn(cmd, stdout=out)
            t0, c0 = time.monotonic(), time.process_time()
            if profile is not None:
                profile.enable()
            await reap(proc, args.duration + 30)
            # what is still in the socket's buffer: until node 1 received no more than its
            # peers' STATUS (a few every 0.1 s) in 0.2 s
            last = -1000
            while (rx := target.endpoint.statistics()["received_datagrams"]) - last > 50:
                last = rx
                await trio.sleep(0.2)
            if profile is not None:
                profile.disable()
            cpu = time.process_time() - c0 - idle_cpu_per_s * (time.monotonic() - t0)
            received = rx - rx0
            d = drops(target)
            d.subtract(d0)
            verified = target.verifier.statistics()
            summary = (root / f"attack-{kind}.out").read_text().splitlines()
            sent = next((line for line in summary if line.startswith("attack ") and
                         "datagrams in" in line), "?")
            rows.append({
                "kind": kind, "attacker": sent, "received": received,
                "cpu_s": round(cpu, 2),
                "us_per_datagram": round(cpu / received * 1e6, 1) if received else None,
                "ed25519_failed": verified["failed_bad_signature"]
                - verified0["failed_bad_signature"],
                "drops": dict((+d).most_common(6))})
            if profile is not None:
                text = io.StringIO()
                pstats.Stats(profile, stream=text).sort_stats("tottime").print_stats(14)
                rows[-1]["profile"] = text.getvalue()
            await trio.sleep(1.0)
        nursery.cancel_scope.cancel()
    return rows


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rate", type=float, default=20_000)
    parser.add_argument("--duration", type=float, default=3.0)
    parser.add_argument("--kinds", default=",".join(KINDS))
    parser.add_argument("--profile", default=None, metavar="KIND")
    args = parser.parse_args()
    args.kinds = [k for k in args.kinds.split(",") if k]
    rows = trio.run(run, args)
    print("| kind | attacker | received by node 1 | node CPU s | us per datagram | "
          "verifier failures* | drops |")
    print("|---|---|---|---|---|---|---|")
    for r in rows:
        print(f"| {r['kind']} | {r['attacker']} | {r['received']} | {r['cpu_s']} | "
              f"{r['us_per_datagram']} | {r['ed25519_failed']} | "
              f"{', '.join(f'{k} {v}' for k, v in r['drops'].items())} |")
    print("* failed signature checks as the verifier counts them: a forged request counts twice "
          "(the node's check for its reply address, then the replica's, answered from memory), "
          "one Ed25519 check")
    for r in rows:
        if "profile" in r:
            print(f"\ncProfile of node CPU under {r['kind']}:\n{r['profile']}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
