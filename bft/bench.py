"""`bft bench`: closed-loop load against a cluster, and what it costs.

    bft bench CONFIG [--clients C] [--duration S] [--warmup S] [--op-size B]
                     [--json FILE] [--attach] [--sweep 1,8,32,128] [--plot FILE.png]

Without `--attach` the benchmark runs its own cluster: every node of CONFIG as
a `python -m bft node` child process, in a fresh temporary state directory
(or `--state-dir`) with freshly generated keys, enough client identities for
the largest client count, its own telemetry monitor address, and fsync
"never" unless `--fsync` or the config file's `[storage] fsync` says
otherwise. With `--attach` it drives a cluster that is already running (keys
and state directory as for `bft client`).

Load: `C` closed-loop clients (each sends its next request as soon as the
previous one completed with f+1 matching replies), spread over
`--client-procs` separate worker processes (`python -m bft.bench --worker`),
so the load generator's crypto does not run in the process that measures.
After `--warmup` seconds, and once every client has completed its first
request (its set-up; reported apart as first_request_ms; waited for at most
30 s), a window of `--duration` seconds is measured:

* throughput_ops_per_s: requests completed in the window / duration;
* latency_ms {p50, p90, p99, max, mean}: of the requests completed in it;
* batch_size {mean, max}: requests per executed batch, from the nodes'
  CommitBatch telemetry (or, failing that, their logs);
* view_changes: views entered during the window (StatusSnapshot telemetry);
* cpu_s_per_node: CPU seconds (user + system, /proc/PID/stat) each node
  process used in the window; client_cpu_s likewise for the workers;
* crypto_ceiling_ops_per_s = cores / (n x Ed25519 verify time), the verify
  time measured in this run, before the load starts.

Ops: `--op noop` (default) sends an opaque op of `--op-size` bytes that the
KV store answers with an error result without changing its state: the
ordering protocol does all its work, the application none (the usual
"0-byte op" microbenchmark). `--op put` writes `--op-size`-byte values to
1024 keys per client.

`--sweep 1,8,32` measures each client count in turn on the same cluster and
prints a table and a terminal plot of latency against throughput
(`--plot FILE.png` as well, when matplotlib is importable).

The building blocks (`LocalCluster`, `TelemetryListener`, `LoadRun`) are
public so the scripts in benchmarks/ can measure view changes and catch-up
with them; `LocalCluster` is bft.launcher's. Every process this module starts
is recorded and stopped by its pid, and dies with its parent (bft.launcher.spawn).

Like bft/node.py, this module does I/O (trio, subprocess, time): it is not
part of the pure core.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import json
import math
import os
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import trio

from bft import launcher
from bft.config import (
    ClientEntry,
    ClusterConfig,
    NodeAddress,
    default_state_dir,
    load_keyring,
)
from bft.eventlines import log_ts
from bft.errors import ConfigError
from bft.launcher import LaunchError, config_to_toml, ensure_keys, reap, spawn
from transport.udp import TransportError, free_udp_ports

__all__ = [
    "BenchError",
    "LoadRun",
    "LocalCluster",
    "TelemetryListener",
    "monitored_cluster",
    "add_bench_arguments",
    "ascii_plot",
    "bench_cluster_config",
    "config_to_toml",
    "crypto_ceiling_ops_per_s",
    "ensure_keys",
    "free_udp_ports",
    "local_config",
    "machine_cpu_times",
    "measure_verify_us",
    "percentiles",
    "process_cpu_seconds",
    "process_cpu_times",
    "run_bench_command",
    "run_benchmark",
]

START_TIMEOUT_S = 30.0
STOP_TIMEOUT_S = 10.0
PROGRESS_INTERVAL_S = 0.25
PRIME_TIMEOUT_S = 30.0  # the window waits at most this long for every client's first reply
MONITOR_SENDER_ID = 0xFFFF_FFFE  # the listener never sends; any id outside the nodes'


class BenchError(Exception):
    """A benchmark that cannot run (bad arguments, a node that does not start)."""


# --------------------------------------------------------------------------
# Small pure helpers
# --------------------------------------------------------------------------


def percentiles(values: Sequence[float]) -> dict[str, float | None]:
    """p50, p90, p99 (nearest rank), max and mean of `values`; all None when empty."""
    if not values:
        return {"p50": None, "p90": None, "p99": None, "max": None, "mean": None}
    ordered = sorted(values)
    n = len(ordered)

    def rank(p: float) -> float:
        return ordered[max(0, min(n - 1, math.ceil(p / 100 * n) - 1))]

    return {"p50": rank(50), "p90": rank(90), "p99": rank(99), "max": ordered[-1],
            "mean": sum(ordered) / n}


def crypto_ceiling_ops_per_s(cores: int, n: int, verify_us: float) -> float:
    """cores / (n x verify time): requests per second if every node's only work were one
    Ed25519 verification per request, all cores busy (an upper bound, not a prediction)."""
    return cores / (n * verify_us * 1e-6)


def process_cpu_times(pid: int) -> tuple[float, float] | None:
    """(user, system) CPU seconds of process `pid` so far (/proc/PID/stat), None if gone."""
    try:
        data = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    after_name = data[data.rindex(")") + 2:].split()  # fields 3.. (the name may hold spaces)
    hz = os.sysconf("SC_CLK_TCK")
    return int(after_name[11]) / hz, int(after_name[12]) / hz  # fields 14 and 15


def process_cpu_seconds(pid: int) -> float | None:
    """User + system CPU seconds of process `pid` so far (/proc/PID/stat), None if gone."""
    times = process_cpu_times(pid)
    return None if times is None else times[0] + times[1]


def machine_cpu_times() -> tuple[float, float] | None:
    """(busy, total) CPU seconds of the whole machine so far (/proc/stat), None if unknown."""
    try:
        first = Path("/proc/stat").read_text().split("\n", 1)[0].split()
    except OSError:
        return None
    ticks = [int(x) for x in first[1:]]
    total = sum(ticks[:8])  # user nice system idle iowait irq softirq steal
    idle = ticks[3] + ticks[4]
    hz = os.sysconf("SC_CLK_TCK")
    return (total - idle) / hz, total / hz


def cpu_count() -> int:
    """The cores this process may run on."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        return os.cpu_count() or 1



def local_config(n: int, *, host: str = "127.0.0.1", clients: int = 4,
                 **overrides: Any) -> ClusterConfig:
    """A cluster of `n` nodes (f = (n-1)//3) on free ports of `host`, fsync never unless
    overridden: for benchmarks and tests."""
    ports = free_udp_ports(n, host)
    overrides.setdefault("fsync", "never")
    nodes = tuple(NodeAddress(i, host, p) for i, p in enumerate(ports))
    return ClusterConfig.local(n, host=host, clients=clients, nodes=nodes, **overrides)



def bench_cluster_config(config: ClusterConfig, *, clients: int,
                         monitor: tuple[str, int] | None, fsync: str) -> ClusterConfig:
    """The config of a benchmark's own cluster: `config` with at least `clients` client
    identities, the given monitor address and fsync policy, and no inline public keys
    (the benchmark generates fresh keys for its throwaway cluster)."""
    entries = tuple(ClientEntry(c.id) for c in config.clients)
    if len(entries) < clients:
        taken = {c.id for c in entries}
        extra = (c for c in range(1_000_000) if c not in taken)
        entries += tuple(ClientEntry(next(extra)) for _ in range(clients - len(entries)))
    nodes = tuple(NodeAddress(n.id, n.host, n.port) for n in config.nodes)
    return dataclasses.replace(config, nodes=nodes, clients=entries, monitor=monitor,
                               fsync=fsync, key_dir=None, source=None)


def measure_verify_us(verifier_factory: Callable[..., Any], signer: Any,
                      seconds: float = 0.3) -> float:
    """Microseconds per uncached Ed25519 verification with the project's Verifier (the one
    the nodes use), over distinct signed requests; best of 3 rounds."""
    from bft.messages import Request

    verifier = verifier_factory(cache_entries=1)
    signed = [signer.sign(Request(b"", t, signer.id)) for t in range(1, 65)]
    for s in signed[:8]:  # warm up (and check the key pair belongs together)
        if not verifier.verify(s):
            raise BenchError("a freshly signed request does not verify: keys do not match")
    best = math.inf
    for _ in range(3):
        count, t0 = 0, time.perf_counter()
        deadline = t0 + seconds / 3
        while True:
            for s in signed:
                verifier.verify(s)
            count += len(signed)
            now = time.perf_counter()
            if now >= deadline:
                break
        best = min(best, (now - t0) / count)
    return best * 1e6


def ascii_plot(points: Sequence[tuple[str, float, float]], *, width: int = 60,
               height: int = 14, x_label: str = "throughput (ops/s)",
               y_label: str = "p50 latency (ms)") -> str:
    """A terminal scatter plot of `(label, x, y)` points, each drawn as `*` with its label."""
    if not points:
        return "(no points)"
    x_max = max(x for _, x, _ in points) * 1.05 or 1.0
    y_max = max(y for _, _, y in points) * 1.1 or 1.0
    grid = [[" "] * width for _ in range(height)]
    for label, x, y in points:
        col = min(width - 1, int(x / x_max * (width - 1)))
        row = height - 1 - min(height - 1, int(y / y_max * (height - 1)))
        grid[row][col] = "*"
        text = f" {label}"
        if col + len(text) < width:
            for i, ch in enumerate(text):
                if grid[row][col + 1 + i] == " ":
                    grid[row][col + 1 + i] = ch
    lines = [f"{y_label}"]
    for r, cells in enumerate(grid):
        tick = y_max * (height - 1 - r) / (height - 1)
        prefix = f"{tick:8.1f} |" if r % 3 == 0 or r == height - 1 else "         |"
        lines.append(prefix + "".join(cells).rstrip())
    lines.append("         +" + "-" * width)
    lines.append(f"          0{'':{width - 12}}{x_max:>10.0f}")
    lines.append(f"          {x_label:^{width}}")
    return "\n".join(lines)


def _fmt(value: float | None, spec: str = ".2f") -> str:
    return "-" if value is None else format(value, spec)


def format_table(runs: Sequence[Mapping[str, Any]]) -> str:
    """One line per run: clients, throughput, latency percentiles, batch, CPU."""
    head = (f"{'clients':>7} {'ops/s':>8} {'p50 ms':>7} {'p90 ms':>7} {'p99 ms':>7} "
            f"{'max ms':>7} {'batch':>6} {'vc':>3} {'node cpu %':>11} {'client cpu %':>12}")
    lines = [head, "-" * len(head)]
    for r in runs:
        lat = r["latency_ms"]
        cpu = r["cpu_s_per_node"].values()
        node_pct = (sum(v for v in cpu if v is not None) / r["duration_s"] * 100
                    if r["duration_s"] else 0.0)
        client_pct = sum(r["client_cpu_s"]) / r["duration_s"] * 100 if r["duration_s"] else 0.0
        batch = r["batch_size"]["mean"]
        lines.append(
            f"{r['clients']:>7} {r['throughput_ops_per_s']:>8.0f} {_fmt(lat['p50']):>7} "
            f"{_fmt(lat['p90']):>7} {_fmt(lat['p99']):>7} {_fmt(lat['max'], '.1f'):>7} "
            f"{_fmt(batch, '.1f'):>6} {_fmt(r['view_changes'], 'd'):>3} {node_pct:>11.0f} "
            f"{client_pct:>12.0f}")
    return "\n".join(lines)


# --------------------------------------------------------------------------
# Processes
# --------------------------------------------------------------------------


def _spawn_logged(cmd: list[str], log_path: Path, **kwargs: Any) -> subprocess.Popen[bytes]:
    """`bft.launcher.spawn` (own session, parent-death signal) with stderr (and stdout,
    unless given) appended to `log_path`; from this (the main) thread, as the parent-death
    signal follows the thread that forked."""
    with open(log_path, "ab") as sink:
        kwargs.setdefault("stdout", sink)
        return spawn(cmd, stderr=sink if kwargs["stdout"] is not sink else subprocess.STDOUT,
                     **kwargs)


def monitored_cluster(root: Path, config: ClusterConfig, listener: Any
                      ) -> tuple[Path, ClusterConfig, Path, Path, LocalCluster]:
    """Write `config` (reporting telemetry to `listener`) under `root`, create its keys, let
    the listener verify the nodes' telemetry, and return (config path, the config as loaded,
    state dir, key dir, a LocalCluster ready to start with fsync "never")."""
    config = dataclasses.replace(config, monitor=listener.address)
    path = root / "cluster.toml"
    path.write_text(config_to_toml(config))
    config = ClusterConfig.load(path)
    state, keys = root / "state", root / "keys"
    ensure_keys(config, keys)
    listener.verifier = load_keyring(config, keys).verifier()
    return path, config, state, keys, LocalCluster(path, config, state, keys, fsync="never")


class LocalCluster(launcher.LocalCluster):
    """`bft.launcher.LocalCluster` with the benchmarks' arguments: a node's output goes to
    STATE_DIR/node-N.runK.out; `stop_all` returns the stop summaries there are (a node
    that had to be killed has none) instead of raising."""

    def __init__(self, config_path: Path, config: ClusterConfig, state_dir: Path,
                 key_dir: Path, *, fsync: str | None = None, app: str | None = None) -> None:
        super().__init__(config_path, config=config, state_dir=state_dir, key_dir=key_dir,
                         node_args=(["--fsync", fsync] if fsync else [])
                         + (["--app", app] if app else []),
                         start_timeout_s=START_TIMEOUT_S, stop_timeout_s=STOP_TIMEOUT_S)
        self.fsync = fsync

    async def stop_all(self, *, strict: bool = False) -> dict[int, dict[str, Any]]:
        return await super().stop_all(strict=strict)


# --------------------------------------------------------------------------
# Telemetry
# --------------------------------------------------------------------------


@dataclass
class _NodeSeen:
    view: int = 0
    last_executed: int = 0
    in_view_change: bool = False
    snapshot_at: float = 0.0
    commits: int = 0
    requests: int = 0
    max_batch: int = 0
    drops: dict[str, int] = field(default_factory=dict)  # the largest drop counters (snapshot)


@dataclass
class TelemetryMark:
    """Counters of a TelemetryListener at one moment (for deltas over a window)."""

    at: float
    views: dict[int, int]
    commits: int
    requests: int
    snapshots: int


class TelemetryListener:
    """Receives the nodes' signed telemetry at the monitor address (trio).

    Keeps, per node, the latest StatusSnapshot (view, last_executed) and the commits and
    requests its CommitBatches reported; and every TelemetryEvent with the monotonic
    time it arrived. Payloads that do not decode or verify are counted, not raised.
    """

    def __init__(self, host: str, port: int, verifier: Any) -> None:
        from transport.udp import UdpEndpoint

        self.endpoint = UdpEndpoint(MONITOR_SENDER_ID, host, port)
        self.address: tuple[str, int] = self.endpoint.address
        self.verifier = verifier
        self.nodes: dict[int, _NodeSeen] = {}
        self.events: list[tuple[float, int, str, dict[str, Any]]] = []
        self.snapshots = 0
        self.bad = 0
        self.changed = trio.Event()

    def close(self) -> None:
        self.endpoint.close()

    async def run(self) -> None:
        """Receive until cancelled or closed."""
        from bft.errors import MalformedMessage
        from bft.telemetry import (
            CommitBatch,
            ControlCommand,
            StatusSnapshot,
            TelemetryEvent,
            decode_signed_untrusted,
            is_telemetry,
        )

        while True:
            try:
                batch = await self.endpoint.receive_batch()
            except trio.ClosedResourceError:
                return
            now = time.monotonic()
            for rec in batch:
                if not is_telemetry(rec.payload):
                    self.bad += 1
                    continue
                try:
                    msg, _ = decode_signed_untrusted(rec.payload, self.verifier)
                except MalformedMessage:
                    self.bad += 1
                    continue
                if isinstance(msg, ControlCommand):
                    self.bad += 1  # not telemetry a node sends
                    continue
                seen = self.nodes.setdefault(msg.node, _NodeSeen())
                if isinstance(msg, StatusSnapshot):
                    self.snapshots += 1
                    seen.view, seen.last_executed = msg.view, msg.last_executed
                    seen.in_view_change, seen.snapshot_at = msg.in_view_change, now
                    seen.drops = dict(msg.drops)
                elif isinstance(msg, CommitBatch):
                    seen.commits += len(msg.commits) + msg.more_commits
                    seen.requests += sum(c.size for c in msg.commits) + msg.more_requests
                    seen.max_batch = max([seen.max_batch, *(c.size for c in msg.commits)])
                elif isinstance(msg, TelemetryEvent):
                    self.events.append((now, msg.node, msg.kind, dict(msg.fields)))
            self.changed.set()
            self.changed = trio.Event()

    def mark(self) -> TelemetryMark:
        return TelemetryMark(time.monotonic(), {i: s.view for i, s in self.nodes.items()},
                             sum(s.commits for s in self.nodes.values()),
                             sum(s.requests for s in self.nodes.values()), self.snapshots)

    def max_batch(self) -> int:
        return max((s.max_batch for s in self.nodes.values()), default=0)

    async def wait_for(self, predicate: Callable[[], bool], timeout_s: float) -> bool:
        """Wait until `predicate()` holds after some telemetry arrived; False on timeout."""
        with trio.move_on_after(timeout_s):
            while not predicate():
                await self.changed.wait()
            return True
        return False


# --------------------------------------------------------------------------
# Load workers
# --------------------------------------------------------------------------


def workload_op(workload: str, keys: int, app: str | None = None) -> str:
    """The `op` of a load spec that runs the bft.workload `workload` (mixed, puts, noop, or
    app: the `random_op` of the application MODULE:FACTORY `app`)."""
    return f"workload={workload},keys={keys}" + (f",app={app}" if app else "")


def _make_op(kind: str, size: int) -> Callable[[int, int], bytes]:
    if kind.startswith("workload="):  # a bft.workload per client, seeded by its id
        import random

        from bft.workload import make_workload

        fields = dict(item.split("=", 1) for item in kind.split(","))
        prefix = f"b{os.getpid()}-"  # fresh keys per worker process and run
        made: dict[int, Any] = {}
        app = None
        if fields.get("app"):  # the user's StateMachine, for its random_op
            from bft.cliutil import load_factory

            app = load_factory(fields["app"])()

        def next_op(client: int, i: int) -> bytes:
            if client not in made:
                made[client] = make_workload(fields["workload"], client, random.Random(client),
                                             keys=int(fields["keys"]), prefix=prefix,
                                             op_size=size, app=app)
            return made[client].next_op()  # type: ignore[no-any-return]

        next_op.workloads = made  # type: ignore[attr-defined]  # (the worker's observe)
        return next_op
    if kind == "noop":
        data = b"\x00" * size
        return lambda client, i: data
    if kind == "put":
        from bft.app import Ops

        value = b"v" * size
        return lambda client, i: Ops.put(f"b{client}-{i % 1024}", value)
    raise BenchError(f"unknown op kind {kind!r} (noop or put)")


class _LineReader:
    def __init__(self, stream: Any) -> None:
        self.stream = stream
        self.buf = b""

    async def readline(self) -> str | None:
        while b"\n" not in self.buf:
            chunk = await self.stream.receive_some(65536)
            if not chunk:
                return None
            self.buf += chunk
        line, self.buf = self.buf.split(b"\n", 1)
        return line.decode(errors="replace")


async def _worker(spec: dict[str, Any]) -> None:
    """One load process: closed-loop clients until told to stop on stdin.

    Protocol on stdin/stdout: prints `ready`; waits for `go`; prints `progress C E P`
    (completed, errors, clients with a first completion) every PROGRESS_INTERVAL_S; on `stop` (or end of input) writes
    its completions to spec["out"] as JSON and prints `done`. The clients share one UDP
    socket (`bft.node.ClientMux`) unless spec["shared_socket"] is false."""
    from bft.node import ClientError, ClientMux, ClusterClient, claim_client_id

    config = ClusterConfig.load(spec["config"])
    keyring = load_keyring(config, spec["key_dir"])
    verifier = keyring.verifier()
    state_dir = Path(spec["state_dir"]) if spec.get("state_dir") else None
    op_for = _make_op(spec["op"], spec["op_size"])
    limit = spec.get("max_ops")
    # The clients of a worker share one socket and one receiving task (ClientMux) unless
    # the spec says not: one scheduler pass per batch of replies instead of one per reply.
    mux = ClientMux(config) if spec.get("shared_socket", True) else None
    # replies come MAC'd (bft/auth.py); requests go to every replica unless the spec says not
    # each client id is this process's own while it runs (ClientIdInUse: the worker does
    # not start, and the bench says why)
    claims = [claim_client_id(state_dir, cid) for cid in spec["clients"]]
    clients = [ClusterClient(config, claim.client_id, verifier=verifier,
                             signer=keyring.signer("client", claim.client_id),
                             first_timestamp=claim.first_timestamp,
                             send_to_all=spec.get("send_to_all", True), mux=mux)
               for claim in claims]
    times: list[float] = []
    latencies: list[float] = []
    views: list[int] = []
    first: list[float] = []  # each client's first completed request (connection set-up)
    errors = [0]
    stdin = _LineReader(trio.lowlevel.FdStream(os.dup(0)))
    print("ready", flush=True)
    if await stdin.readline() != "go":
        return

    async def one(client: Any, nursery: trio.Nursery) -> None:
        i = 0
        while limit is None or len(times) < limit:
            op = op_for(client.id, i)
            i += 1
            t0 = time.monotonic()
            try:
                result = await client.call(op, timeout_s=spec["timeout_s"])
            except ClientError:
                errors[0] += 1
                result = None
            workload = getattr(op_for, "workloads", {}).get(client.id)
            if workload is not None:
                workload.observe(result)
            if result is None:
                continue
            t1 = time.monotonic()
            if i == 1:
                first.append(t1 - t0)
            times.append(t1)
            latencies.append(t1 - t0)
            views.append(client.client.view)

    async def progress() -> None:
        while True:
            print(f"progress {len(times)} {errors[0]} {len(first)}", flush=True)
            await trio.sleep(PROGRESS_INTERVAL_S)

    try:
        async with trio.open_nursery() as nursery:
            if mux is not None:
                await nursery.start(mux.run)
            for c in clients:
                nursery.start_soon(one, c, nursery)
            nursery.start_soon(progress)
            while True:
                line = await stdin.readline()
                if line is None or line == "stop":
                    break
            nursery.cancel_scope.cancel()
    finally:
        stats: dict[str, int] = {}
        for c in clients:
            for k, v in c.client.statistics().items():
                if isinstance(v, int) and k not in ("view", "outstanding"):
                    stats[k] = stats.get(k, 0) + v
            c.close()
        if mux is not None:
            mux.close()
        for claim in claims:
            claim.release()
        Path(spec["out"]).write_text(json.dumps({
            "times": times, "latencies": latencies, "views": views, "errors": errors[0],
            "first": first, "client_stats": stats}))
        print(f"progress {len(times)} {errors[0]} {len(first)}", flush=True)
        print("done", flush=True)


def _worker_entry(argv: Sequence[str]) -> int:
    if len(argv) != 2 or argv[0] != "--worker":
        print("usage: python -m bft.bench --worker SPEC.json", file=sys.stderr)
        return 2
    spec = json.loads(Path(argv[1]).read_text())
    with contextlib.suppress(KeyboardInterrupt):
        trio.run(_worker, spec)
    return 0


@dataclass
class _WorkerProc:
    proc: subprocess.Popen[bytes]
    stdin: Any  # trio streams over the pipes
    stdout: Any
    spec_path: Path
    out_path: Path
    completed: int = 0
    errors: int = 0
    primed: int = 0
    ready: trio.Event = field(default_factory=trio.Event)
    done: trio.Event = field(default_factory=trio.Event)


@dataclass
class LoadResult:
    """Every completion of a load run: monotonic time, latency (s), client view; and each
    client's first latency (s)."""

    times: list[float]
    latencies: list[float]
    views: list[int]
    errors: int
    client_stats: dict[str, int]
    first: list[float] = field(default_factory=list)


class LoadRun:
    """Closed-loop clients in `processes` worker processes (`python -m bft.bench --worker`).

    Use inside a nursery: `await load.start(nursery)` (returns once every worker is
    ready and told to go), watch `load.completed()`, then `await load.stop()` returns
    the `LoadResult`. `max_ops` bounds the completions of each worker.
    """

    def __init__(self, config_path: Path, key_dir: Path, state_dir: Path | None,
                 client_ids: Sequence[int], *, processes: int, op: str = "noop",
                 op_size: int = 0, timeout_s: float = 30.0, work_dir: Path,
                 max_ops: int | None = None) -> None:
        if not client_ids:
            raise BenchError("no clients to run")
        processes = max(1, min(processes, len(client_ids)))
        self.groups = [list(client_ids[i::processes]) for i in range(processes)]
        self.base_spec = {"config": str(config_path), "key_dir": str(key_dir),
                          "state_dir": str(state_dir) if state_dir else None, "op": op,
                          "op_size": op_size, "timeout_s": timeout_s, "max_ops": max_ops}
        self.work_dir = Path(work_dir)
        self.workers: list[_WorkerProc] = []
        self.started_at: float | None = None

    async def _pump(self, w: _WorkerProc) -> None:
        reader = _LineReader(w.stdout)
        while (line := await reader.readline()) is not None:
            if line == "ready":
                w.ready.set()
            elif line.startswith("progress "):
                _, c, e, p = line.split()
                w.completed, w.errors, w.primed = int(c), int(e), int(p)
            elif line == "done":
                w.done.set()
        w.ready.set()
        w.done.set()

    async def start(self, nursery: trio.Nursery, timeout_s: float = START_TIMEOUT_S) -> None:
        """Start the workers, wait until all are ready, tell them to go."""
        self.work_dir.mkdir(parents=True, exist_ok=True)
        for k, group in enumerate(self.groups):
            spec_path = self.work_dir / f"worker-{k}.json"
            out_path = self.work_dir / f"worker-{k}.result.json"
            out_path.unlink(missing_ok=True)
            spec_path.write_text(json.dumps({**self.base_spec, "clients": group,
                                             "out": str(out_path)}))
            proc = _spawn_logged([sys.executable, "-m", "bft.bench", "--worker", str(spec_path)],
                                 self.work_dir / f"worker-{k}.err", stdin=subprocess.PIPE,
                                 stdout=subprocess.PIPE)
            assert proc.stdin is not None and proc.stdout is not None
            stdin = trio.lowlevel.FdStream(os.dup(proc.stdin.fileno()))
            stdout = trio.lowlevel.FdStream(os.dup(proc.stdout.fileno()))
            proc.stdin.close()
            proc.stdout.close()
            w = _WorkerProc(proc, stdin, stdout, spec_path, out_path)
            self.workers.append(w)
            nursery.start_soon(self._pump, w)
        with trio.move_on_after(timeout_s):
            for w in self.workers:
                await w.ready.wait()
        for k, w in enumerate(self.workers):
            if not w.ready.is_set() or w.proc.poll() is not None:
                raise BenchError(f"load worker {k} did not start:\n{self._err(k)}")
        for w in self.workers:
            await w.stdin.send_all(b"go\n")
        self.started_at = time.monotonic()

    def _err(self, k: int) -> str:
        try:
            return (self.work_dir / f"worker-{k}.err").read_text(errors="replace")[-2000:]
        except OSError:
            return ""

    def completed(self) -> int:
        """Requests completed so far (as last reported by the workers)."""
        return sum(w.completed for w in self.workers)

    def errors(self) -> int:
        return sum(w.errors for w in self.workers)

    def primed(self) -> int:
        """Clients that completed their first request."""
        return sum(w.primed for w in self.workers)

    def pids(self) -> list[int]:
        return [w.proc.pid for w in self.workers]

    async def stop(self) -> LoadResult:
        """Tell every worker to stop; gather their completions."""
        for w in self.workers:
            if w.proc.poll() is None:
                with contextlib.suppress(trio.BrokenResourceError, trio.ClosedResourceError):
                    await w.stdin.send_all(b"stop\n")
        result = LoadResult([], [], [], 0, {})
        for k, w in enumerate(self.workers):
            with trio.move_on_after(STOP_TIMEOUT_S):
                await w.done.wait()
            await reap(w.proc, STOP_TIMEOUT_S)
            try:
                data = json.loads(w.out_path.read_text())
            except (OSError, ValueError) as exc:
                raise BenchError(f"load worker {k} left no result ({exc}):\n{self._err(k)}") \
                    from None
            result.times += data["times"]
            result.latencies += data["latencies"]
            result.views += data["views"]
            result.errors += data["errors"]
            result.first += data["first"]
            for key, v in data["client_stats"].items():
                result.client_stats[key] = result.client_stats.get(key, 0) + v
        return result

    def cleanup(self) -> None:
        """SIGKILL and reap every worker still running; close the pipes."""
        for w in self.workers:
            if w.proc.poll() is None:
                w.proc.kill()
                with contextlib.suppress(subprocess.TimeoutExpired, OSError):
                    w.proc.wait(timeout=STOP_TIMEOUT_S)
            for stream in (w.stdin, w.stdout):
                with contextlib.suppress(OSError, trio.ClosedResourceError):
                    stream.close()


# --------------------------------------------------------------------------
# One measurement
# --------------------------------------------------------------------------


class _Progress:
    """One status line on stderr: redrawn in place on a terminal, else a line every 2 s."""

    def __init__(self, enabled: bool) -> None:
        self.enabled = enabled
        self.tty = enabled and sys.stderr.isatty()
        self._last_line = 0.0

    def show(self, text: str) -> None:
        if not self.enabled:
            return
        if self.tty:
            sys.stderr.write("\r\x1b[2K" + text)
            sys.stderr.flush()
        elif time.monotonic() - self._last_line >= 2.0:
            self._last_line = time.monotonic()
            print(text, file=sys.stderr, flush=True)

    def end(self) -> None:
        if self.tty:
            sys.stderr.write("\r\x1b[2K")
            sys.stderr.flush()


def _bar(fraction: float, width: int = 24) -> str:
    filled = int(max(0.0, min(1.0, fraction)) * width)
    return "[" + "#" * filled + "-" * (width - filled) + "]"


@dataclass
class _Target:
    """What a measurement drives and observes."""

    config: ClusterConfig
    config_path: Path
    key_dir: Path
    state_dir: Path | None
    node_pids: Callable[[], dict[int, int]]
    telemetry: TelemetryListener | None
    log_dir: Path | None  # node logs, for the fallback batch size / view changes
    work_dir: Path


def _log_window_facts(log_dir: Path, n: int, wall_from: float, wall_to: float) -> dict[str, Any]:
    """From node logs (the fallback when no telemetry arrives): sizes of the sampled
    executed batches (every 100th sequence number) and views entered, in the window."""
    sizes: list[int] = []
    views: set[int] = set()
    for i in range(n):
        try:
            text = (log_dir / f"node-{i}.log.jsonl").read_text(errors="replace")
        except OSError:
            continue
        for line in text.splitlines():
            if '"executed"' not in line and '"new_view"' not in line:
                continue
            try:
                e = json.loads(line)
            except ValueError:
                continue
            ts = log_ts(e.get("ts"))
            if ts is None or not wall_from <= ts <= wall_to:
                continue
            if e.get("event") == "executed" and e.get("requests"):
                sizes.append(int(e["requests"]))
            elif e.get("event") == "new_view":
                views.add(int(e.get("view", 0)))
    return {"sizes": sizes, "views": len(views)}


async def measure(target: _Target, clients: int, *, warmup_s: float, duration_s: float,
                  processes: int, op: str, op_size: int, progress: _Progress,
                  client_ids: Sequence[int] | None = None) -> dict[str, Any]:
    """Drive `clients` closed-loop clients for warmup + duration; measure the window."""
    ids = list(client_ids) if client_ids is not None else [c.id for c in target.config.clients]
    if len(ids) < clients:
        raise BenchError(f"the config has {len(ids)} client identities; {clients} needed "
                         "(raise [clients] count)")
    ids = ids[:clients]
    load = LoadRun(target.config_path, target.key_dir, target.state_dir, ids,
                   processes=processes, op=op, op_size=op_size, work_dir=target.work_dir)
    try:
        async with trio.open_nursery() as nursery:
            await load.start(nursery)
            assert load.started_at is not None
            t_from = load.started_at + warmup_s
            t_to = t_from + duration_s
            prime_by = load.started_at + max(warmup_s, PRIME_TIMEOUT_S)
            marks: dict[str, Any] = {}

            def sample() -> dict[str, Any]:
                pids = target.node_pids()
                return {"t": time.monotonic(), "wall": time.time(),
                        "nodes": {i: process_cpu_seconds(p) for i, p in pids.items()},
                        "node_times": [process_cpu_times(p) for p in pids.values()],
                        "workers": [process_cpu_seconds(p) for p in load.pids()],
                        "machine": machine_cpu_times(), "completed": load.completed(),
                        "primed": load.primed(),
                        "telemetry": target.telemetry.mark() if target.telemetry else None}

            last = (time.monotonic(), 0)
            rate = 0.0
            while True:
                now = time.monotonic()
                if "from" not in marks and now >= t_from:
                    if load.primed() < clients and now < prime_by:
                        # every client's first request (its set-up) stays out of the window
                        t_from, t_to = now + 0.05, now + 0.05 + duration_s
                    else:
                        marks["from"] = sample()
                if now >= t_to:
                    marks["to"] = sample()
                    break
                done = load.completed()
                if now - last[0] >= 1.0:
                    rate = (done - last[1]) / (now - last[0])
                    last = (now, done)
                phase = ("warm-up" if "from" not in marks else "measure")
                elapsed = now - load.started_at
                total_s = t_to - load.started_at
                progress.show(f"{clients:>4} clients {_bar(elapsed / total_s)} "
                              f"{phase} {elapsed:5.1f}/{total_s:.1f} s  "
                              f"{rate:7.0f} ops/s  done {done}  errors {load.errors()}")
                await trio.sleep(min(0.1, max(0.0, (t_from if "from" not in marks else t_to)
                                              - now)))
            result = await load.stop()
    finally:
        load.cleanup()
        progress.end()
    a, b = marks["from"], marks["to"]
    window = b["t"] - a["t"]
    in_window = [lat for t, lat in zip(result.times, result.latencies) if a["t"] <= t < b["t"]]
    lat_ms = {k: (v * 1000 if v is not None else None)
              for k, v in percentiles(in_window).items()}

    def delta(x: float | None, y: float | None) -> float | None:
        return None if x is None or y is None else round(y - x, 3)

    cpu_nodes = {i: delta(a["nodes"].get(i), b["nodes"].get(i)) for i in b["nodes"]}
    cpu_workers = [delta(x, y) or 0.0 for x, y in zip(a["workers"], b["workers"])]
    node_sys = node_all = 0.0
    for x, y in zip(a["node_times"], b["node_times"]):
        if x is not None and y is not None:
            node_sys += y[1] - x[1]
            node_all += (y[0] + y[1]) - (x[0] + x[1])
    machine_busy = None
    if a["machine"] and b["machine"]:
        busy = b["machine"][0] - a["machine"][0]
        total = b["machine"][1] - a["machine"][1]
        machine_busy = round(busy / total, 3) if total > 0 else None
    batch: dict[str, Any] = {"mean": None, "max": None, "commits": None, "source": None}
    view_changes: int | None = None
    ta, tb = a["telemetry"], b["telemetry"]
    if ta is not None and tb is not None and tb.snapshots > ta.snapshots:
        commits = tb.commits - ta.commits
        batch = {"mean": round((tb.requests - ta.requests) / commits, 2) if commits else None,
                 "max": target.telemetry.max_batch() if target.telemetry else None,
                 "commits": commits, "source": "telemetry (CommitBatch, all nodes)"}
        view_changes = max(0, max(tb.views.values(), default=0)
                           - max(ta.views.values(), default=0))
    elif target.log_dir is not None:
        facts = _log_window_facts(target.log_dir, target.config.n, a["wall"], b["wall"])
        sizes = facts["sizes"]
        batch = {"mean": round(sum(sizes) / len(sizes), 2) if sizes else None,
                 "max": max(sizes, default=None), "commits": None,
                 "source": "node logs (every 100th batch)"}
        view_changes = facts["views"]
    return {
        "clients": clients,
        "client_processes": len(load.groups),
        "op": op,
        "op_size": op_size,
        "warmup_s": warmup_s,
        "duration_s": round(window, 3),
        "completed": len(in_window),
        "errors": result.errors,
        "throughput_ops_per_s": round(len(in_window) / window, 1) if window > 0 else 0.0,
        "latency_ms": {k: (round(v, 3) if v is not None else None) for k, v in lat_ms.items()},
        "batch_size": batch,
        "view_changes": view_changes,
        "cpu_s_per_node": {str(i): v for i, v in sorted(cpu_nodes.items())},
        "node_cpu_system_fraction": round(node_sys / node_all, 3) if node_all > 0 else None,
        "node_cpu_us_per_request": (round(node_all / len(in_window) * 1e6 / len(cpu_nodes), 1)
                                    if in_window and cpu_nodes else None),
        "client_cpu_s": cpu_workers,
        "machine_cpu_busy": machine_busy,
        "client_retransmits": result.client_stats.get("retransmits", 0),
        "clients_primed_before_window": min(clients, a["primed"]),
        "first_request_ms": {k: (round(v * 1000, 3) if v is not None else None)
                             for k, v in percentiles(result.first).items() if k in ("p50", "max")},
    }


# --------------------------------------------------------------------------
# The command
# --------------------------------------------------------------------------


def add_bench_arguments(parser: argparse.ArgumentParser) -> None:
    """Declare the arguments of `bft bench` on `parser`."""
    parser.add_argument("config", metavar="CONFIG", type=Path, help="cluster config (TOML)")
    parser.add_argument("--clients", type=int, default=8, metavar="C",
                        help="closed-loop clients (default 8)")
    parser.add_argument("--duration", type=float, default=10.0, metavar="S",
                        help="seconds measured (default 10)")
    parser.add_argument("--warmup", type=float, default=2.0, metavar="S",
                        help="seconds of load before measuring (default 2)")
    parser.add_argument("--op-size", type=int, default=0, metavar="B",
                        help="bytes of each operation (default 0)")
    parser.add_argument("--op", choices=["noop", "put"], default="noop",
                        help="noop: an opaque op the store rejects unchanged (default); "
                        "put: write values of --op-size bytes")
    parser.add_argument("--workload", choices=["mixed", "puts", "noop", "app"], default=None,
                        help="instead of --op, a bft.workload: mixed = get/put/cas/delete/"
                        "lock/unlock and fenced writes over --keys contended keys; puts = "
                        "puts to 1,000 keys; noop = as --op noop; app = the random_op of "
                        "--app's application")
    parser.add_argument("--app", default=None, metavar="MODULE:FACTORY",
                        help="with --workload app: the application every node runs (its own "
                        "cluster only) and whose random_op the clients send")
    parser.add_argument("--keys", type=int, default=4, metavar="K",
                        help="--workload mixed: how many contended keys (default 4)")
    parser.add_argument("--json", type=Path, default=None, metavar="FILE",
                        help="also write the results as JSON")
    parser.add_argument("--attach", action="store_true",
                        help="drive a running cluster instead of starting one")
    parser.add_argument("--sweep", default=None, metavar="C1,C2,...",
                        help="measure each client count in turn (e.g. 1,8,32,128)")
    parser.add_argument("--plot", type=Path, default=None, metavar="FILE.png",
                        help="with --sweep: also draw latency against throughput "
                        "(needs matplotlib)")
    parser.add_argument("--client-procs", type=int, default=None, metavar="P",
                        help="load worker processes (default: 1 below 8 clients, else 2)")
    parser.add_argument("--state-dir", type=Path, default=None, metavar="DIR",
                        help="state directory (own cluster: default a temporary one, removed "
                        "after a successful run; --attach: the cluster's)")
    parser.add_argument("--key-dir", type=Path, default=None, metavar="DIR",
                        help="--attach: the key directory (default as for `bft client`)")
    parser.add_argument("--fsync", choices=["always", "never"], default=None,
                        help="own cluster: WAL fsync policy (default: the config file's "
                        "[storage] fsync if written there, else never)")
    parser.add_argument("--quiet", action="store_true", help="no progress line")


def _parse_sweep(text: str | None, clients: int) -> list[int]:
    if text is None:
        counts = [clients]
    else:
        try:
            counts = [int(x) for x in text.split(",") if x.strip()]
        except ValueError:
            raise BenchError(f"--sweep takes client counts like 1,8,32, not {text!r}") from None
    if not counts or any(c < 1 for c in counts):
        raise BenchError("client counts must be >= 1")
    return counts


def _configured_fsync(config_path: Path) -> str | None:
    import tomllib

    try:
        data = tomllib.loads(Path(config_path).read_text())
    except (OSError, ValueError):
        return None
    value = data.get("storage", {}).get("fsync")
    return value if value in ("always", "never") else None


def _default_procs(clients: int) -> int:
    return 1 if clients < 8 else 2


async def _probe(config: ClusterConfig, key_dir: Path, state_dir: Path | None, client_id: int,
                 timeout_s: float) -> None:
    """One request through the cluster: it serves before anything is measured."""
    from bft.errors import ClientIdInUse
    from bft.node import ClientError, ClusterClient, claim_client_id

    keyring = load_keyring(config, key_dir)
    try:
        claim = claim_client_id(state_dir, client_id)
    except ClientIdInUse as exc:
        raise BenchError(f"cannot probe the cluster: {exc}") from None
    client = ClusterClient(config, client_id, signer=keyring.signer("client", client_id),
                           verifier=keyring.verifier(), first_timestamp=claim.first_timestamp)
    try:
        await client.call(b"", timeout_s=timeout_s)
    except ClientError as exc:
        raise BenchError(f"the cluster did not answer a first request: {exc}") from None
    finally:
        client.close()
        claim.release()


async def run_benchmark(config_path: Path, *, counts: Sequence[int], warmup_s: float,
                        duration_s: float, op: str = "noop", op_size: int = 0,
                        attach: bool = False, state_dir: Path | None = None,
                        key_dir: Path | None = None, fsync: str | None = None,
                        client_procs: int | None = None, progress: bool = True,
                        say: Callable[[str], None] = print,
                        app: str | None = None) -> dict[str, Any]:
    """Measure each client count of `counts` against one cluster; the results as a dict
    with `runs` (one `measure()` result per count) and the facts common to them."""
    config = ClusterConfig.load(config_path)
    cores = cpu_count()
    work_root = Path(tempfile.mkdtemp(prefix="bft-bench-"))
    own_state = None
    if not attach:
        if state_dir is None:
            own_state = state_dir = work_root / "state"
        state_dir = Path(state_dir)
        key_dir = state_dir / "keys"
        fsync = fsync or _configured_fsync(config_path) or "never"
    else:
        state_dir = Path(state_dir) if state_dir is not None else default_state_dir(config)
        key_dir = Path(key_dir) if key_dir is not None else (config.key_dir or state_dir / "keys")
        fsync = config.fsync
    show = _Progress(progress)
    telemetry: TelemetryListener | None = None
    cluster: LocalCluster | None = None
    summaries: dict[int, dict[str, Any]] = {}
    agree_line: str | None = None  # digest agreement at the stop (own cluster only)
    ok = False
    try:
        async with trio.open_nursery() as nursery:
            if attach:
                run_config, run_config_path = config, Path(config_path)
                keyring = load_keyring(config, key_dir)
                if config.monitor is not None:
                    try:
                        telemetry = TelemetryListener(*config.monitor, keyring.verifier())
                    except (OSError, TransportError) as exc:  # the dashboard listens there
                        say(f"telemetry: {exc}; batch sizes from the node logs instead")
            else:
                telemetry = TelemetryListener(config.nodes[0].host, 0, None)
                run_config = bench_cluster_config(config, clients=max(counts),
                                                  monitor=telemetry.address, fsync=fsync)
                state_dir.mkdir(parents=True, exist_ok=True)
                run_config_path = state_dir / "bench-cluster.toml"
                run_config_path.write_text(config_to_toml(run_config))
                run_config = ClusterConfig.load(run_config_path)
                ensure_keys(run_config, key_dir)
                keyring = load_keyring(run_config, key_dir)
                telemetry.verifier = keyring.verifier()
            verify_us = measure_verify_us(keyring.verifier, keyring.signer("client", 0))
            ceiling = crypto_ceiling_ops_per_s(cores, config.n, verify_us)
            say(f"bench {config.name}: n={config.n} f={config.f}, {cores} cores, "
                f"{'attached to a running cluster' if attach else 'own cluster'} "
                f"(state {state_dir}, fsync {fsync}); Ed25519 verify {verify_us:.1f} us -> "
                f"crypto ceiling {ceiling:,.0f} ops/s")
            if telemetry is not None:
                nursery.start_soon(telemetry.run)
            if not attach:
                cluster = LocalCluster(run_config_path, run_config, state_dir, key_dir,
                                       fsync=fsync, app=app)
                await cluster.start()
                node_pids: Callable[[], dict[int, int]] = cluster.pids
            else:
                node_pids = lambda: _attached_pids(state_dir, config)
            await _probe(run_config, key_dir, state_dir, run_config.clients[0].id, 20.0)
            target = _Target(run_config, run_config_path, key_dir, state_dir, node_pids,
                             telemetry, state_dir, work_root / "load")
            runs = []
            for clients in counts:
                procs = client_procs or _default_procs(clients)
                run = await measure(target, clients, warmup_s=warmup_s, duration_s=duration_s,
                                    processes=procs, op=op, op_size=op_size, progress=show)
                runs.append(run)
                lat = run["latency_ms"]
                say(f"{clients:>4} clients: {run['throughput_ops_per_s']:,.0f} ops/s, "
                    f"p50 {_fmt(lat['p50'])} ms, p99 {_fmt(lat['p99'])} ms, "
                    f"batch {_fmt(run['batch_size']['mean'], '.1f')}, "
                    f"view changes {run['view_changes']}, errors {run['errors']}")
            if cluster is not None:
                # the load stopped: let every node execute the same seq, then compare there
                try:
                    await cluster.barrier(timeout_s=STOP_TIMEOUT_S)
                except LaunchError as exc:
                    say(f"nodes did not converge before stopping: {exc}")
                summaries = await cluster.stop_all()
                agree_line = launcher.digest_agreement(summaries,
                                                       [nd.id for nd in run_config.nodes])[1]
                say(agree_line)
            if telemetry is not None:
                telemetry.close()
            ok = True
    finally:
        if cluster is not None:
            cluster.cleanup()
        if telemetry is not None:
            telemetry.close()
        if ok:
            shutil.rmtree(work_root, ignore_errors=True)
        elif own_state is not None:
            say(f"node logs kept in {own_state}")
    digests = {s.get("state_digest") for s in summaries.values()}
    common = {
        "stop_agreement": agree_line,
        "config": str(config_path),
        "cluster": config.name,
        "n": config.n,
        "f": config.f,
        "cores": cores,
        "date": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "mode": "attach" if attach else "own",
        "fsync": fsync,
        "python": sys.version.split()[0],
        "loadavg_at_end": _loadavg(),
        "ed25519_verify_us": round(verify_us, 2),
        "crypto_ceiling_ops_per_s": round(ceiling, 1),
        "nodes_agree_at_stop": (len(digests) == 1 and len(summaries) == config.n)
        if summaries else None,
        "stop_summaries": {str(i): {k: s.get(k) for k in (
            "view", "last_executed", "commits", "executed_requests", "state_digest")}
            for i, s in sorted(summaries.items())},
    }
    for run in runs:
        run.update({k: common[k] for k in ("n", "f", "cores", "ed25519_verify_us",
                                           "crypto_ceiling_ops_per_s")})
    return {**common, "runs": runs}


def _loadavg() -> list[float] | None:
    try:
        return [float(x) for x in Path("/proc/loadavg").read_text().split()[:3]]
    except (OSError, ValueError):
        return None


def _attached_pids(state_dir: Path, config: ClusterConfig) -> dict[int, int]:
    """Pids of a running cluster's nodes from STATE_DIR/node-N.pid, when they still name a
    `bft node` process."""
    out = {}
    for node in config.nodes:
        try:
            pid = int((state_dir / f"node-{node.id}.pid").read_text().strip())
            cmdline = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
        except (OSError, ValueError):
            continue
        if b"node" in cmdline and any(b"bft" in part for part in cmdline):
            out[node.id] = pid
    return out


def _write_png(path: Path, runs: Sequence[Mapping[str, Any]], title: str) -> bool:
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return False
    xs = [r["throughput_ops_per_s"] for r in runs]
    fig, ax = plt.subplots(figsize=(6, 4))
    for key, style in (("p50", "o-"), ("p99", "s--")):
        ax.plot(xs, [r["latency_ms"][key] for r in runs], style, label=key)
    for r, x in zip(runs, xs):
        ax.annotate(str(r["clients"]), (x, r["latency_ms"]["p50"]))
    ax.set_xlabel("throughput (ops/s)")
    ax.set_ylabel("latency (ms)")
    ax.set_title(title)
    ax.legend()
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
    return True


def run_bench_command(args: argparse.Namespace) -> int:
    """Run `bft bench` with parsed `args`; 0 on success, 2 for a benchmark that cannot run."""
    try:
        counts = _parse_sweep(args.sweep, args.clients)
        if args.duration <= 0 or args.warmup < 0:
            raise BenchError("--duration must be > 0 and --warmup >= 0")
        if args.op_size < 0:
            raise BenchError("--op-size must be >= 0")
        if args.keys < 1:
            raise BenchError("--keys must be >= 1")
        if (args.workload == "app") != (args.app is not None):
            raise BenchError("--workload app and --app MODULE:FACTORY go together")
        if args.app is not None:
            from bft.cliutil import load_factory

            load_factory(args.app)  # a clear error now, not in every worker
            if args.attach:
                raise BenchError("--app needs the benchmark's own cluster (not --attach): the "
                                 "nodes must run the application")
        if not Path(args.config).exists():
            raise BenchError(f"config file not found: {args.config}")
        result = trio.run(_command_runner(args, counts))
    except (BenchError, LaunchError, ConfigError, OSError, TransportError) as exc:
        print(f"bft: error: {exc}", file=sys.stderr)
        return 2
    runs = result["runs"]
    print()
    print(format_table(runs))
    print(f"Ed25519 verify {result['ed25519_verify_us']} us on {result['cores']} cores: crypto "
          f"ceiling {result['crypto_ceiling_ops_per_s']:,.0f} ops/s for n={result['n']}")
    if len(runs) > 1:
        print()
        print(ascii_plot([(str(r["clients"]), r["throughput_ops_per_s"],
                           r["latency_ms"]["p50"] or 0.0) for r in runs]))
        if args.plot is not None:
            if _write_png(args.plot, runs, f"{result['cluster']} (n={result['n']})"):
                print(f"plot written to {args.plot}")
            else:
                print("matplotlib is not installed: --plot skipped", file=sys.stderr)
    out: Any = runs[0] | {k: v for k, v in result.items() if k != "runs"} \
        if len(runs) == 1 else result
    if args.json is not None:
        args.json.write_text(json.dumps(out, indent=2) + "\n")
        print(f"results written to {args.json}")
    return 0


def _command_runner(args: argparse.Namespace, counts: Sequence[int]) -> Callable[[], Any]:
    async def go() -> dict[str, Any]:
        return await run_benchmark(
            args.config, counts=counts, warmup_s=args.warmup, duration_s=args.duration,
            op=args.op if args.workload is None else workload_op(args.workload, args.keys,
                                                                 args.app),
            op_size=args.op_size, attach=args.attach, state_dir=args.state_dir,
            key_dir=args.key_dir, fsync=args.fsync, client_procs=args.client_procs,
            progress=not args.quiet, app=args.app)

    return go


def main(argv: Sequence[str] | None = None) -> int:
    """`python -m bft.bench CONFIG ...` (the same as `bft bench`)."""
    parser = argparse.ArgumentParser(prog="bft bench", description=__doc__.split("\n\n")[0])
    add_bench_arguments(parser)
    return run_bench_command(parser.parse_args(argv))


if __name__ == "__main__":
    argv = sys.argv[1:]
    sys.exit(_worker_entry(argv) if argv[:1] == ["--worker"] else main(argv))
