"""`bft nemesis`: a seeded fault schedule against a real local cluster under a checked load.

    bft nemesis CONFIG --faults kill,pause,partition,clock,restart --interval 10 \\
        --duration 600 --seed 1 [--beyond-f] [--history FILE] [--json]

It starts every node of CONFIG as a process (`bft.launcher.LocalCluster`, each node with
`--adversary` so it obeys admin-signed cuts and behaviours) in a fresh state directory,
runs the mixed workload (`LocalCluster.run_load`, every op recorded in a history) for
`--duration` seconds, and meanwhile plays a fault schedule (`make_schedule`, a pure
function of the seed) on the real processes:

* kill: SIGKILL, down for the fault's span, then started again (it recovers from its WAL);
* restart: a clean stop (SIGTERM) and a start at once;
* pause: SIGSTOP, SIGCONT at the end of the span;
* partition: the node drops every datagram to and from the nodes outside its group
  (an admin-signed Cut; Heal at the end);
* clock: the node's interval clock (its agreed-time source) is off by a few seconds, more
  than `max_clock_skew_s` (the `clock-skew` behaviour; cleared at the end).

At most f nodes are faulty at any time (f+1 with `--beyond-f`, where the cluster may lose
liveness but must keep safety): each interval holds one fault, which is undone before the
next interval starts, and the last before the load stops. At the end it undoes everything
(SIGCONT, heal, clear, start what is down), waits (bounded) until every node executed one
barrier read, stops them, compares their state digests at the same seq
(`bft.launcher.digest_agreement`) and checks the history (`bft.lincheck.check`). One
verdict (`judge`): exit 0 when every check holds, 1 when one fails.

Only loopback clusters: a config naming any other address is refused. Only the processes
this command started are signalled, by pid.
"""

from __future__ import annotations

import json
import math
import random
import secrets
import signal
import socket
import tempfile
import time
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from ipaddress import ip_address
from pathlib import Path
from typing import Any

import trio

from bft.config import ClusterConfig
from bft.history import History
from bft.launcher import LaunchError, LocalCluster, digest_agreement, ensure_keys
from bft.lincheck import Verdict, check, parse_history
from bft.telemetry import (
    Action,
    ClearBehaviour,
    ControlCommand,
    Cut,
    Heal,
    SetBehaviour,
    control_cluster_id,
    encode_signed,
)
from transport.frame import MAX_MESSAGE_ID, encode_frames

__all__ = ["FAULT_KINDS", "Fault", "NemesisOptions", "format_report", "injection_problems", "judge",
           "make_schedule", "op_counts", "report_json", "run_nemesis", "schedule_problems",
           "self_exits"]

FAULT_KINDS = ("kill", "pause", "partition", "clock", "restart")
#: The sender id of admin control frames (as the dashboard and `bft ctl` send them).
ADMIN_FRAME_SENDER_ID = 2**32 - 1
#: Clock offsets drawn for a `clock` fault, whole seconds (either sign).
CLOCK_OFFSET_S = (2, 8)
CONVERGE_TIMEOUT_S = 60.0
CHECK_TIMEOUT_S = 300.0
OP_TIMEOUT_S = 5.0
#: How long a fault still in progress when the load stops may take to finish.
FINISH_FAULT_TIMEOUT_S = 60.0


# --------------------------------------------------------------------------
# The schedule (pure)
# --------------------------------------------------------------------------


@dataclass(frozen=True)
class Fault:
    """One fault: `kind` on `nodes` from `at_s` until `heal_s` (seconds from the load's
    start). A clock fault shifts the nodes' clocks by `offset_s`; a partition cuts each
    node of `nodes` off from every node outside them."""

    at_s: float
    heal_s: float
    kind: str
    nodes: tuple[int, ...]
    offset_s: int = 0

    def describe(self) -> str:
        who = "node" + ("s " if len(self.nodes) > 1 else " ") + ",".join(map(str, self.nodes))
        extra = f" by {self.offset_s:+d} s" if self.kind == "clock" else ""
        return f"{self.kind} {who}{extra} for {self.heal_s - self.at_s:.1f} s"


def make_schedule(kinds: Sequence[str], *, n: int, f: int, interval_s: float,
                  duration_s: float, rng: random.Random, beyond_f: bool = False) -> list[Fault]:
    """The faults of a run, drawn from `rng`: one per interval [k*I, (k+1)*I) that ends
    inside `duration_s`, starting 10-30 % into it and lasting 40-60 % of it, so no two
    overlap and every one is undone before the load stops. Each touches 1..f nodes (f+1
    with `beyond_f`). The first len(kinds) intervals take every kind once (shuffled), the
    rest draw kinds at random. ValueError if the duration holds fewer intervals than kinds
    or the arguments make no sense."""
    kinds = list(kinds)
    unknown = [k for k in kinds if k not in FAULT_KINDS]
    if unknown or not kinds or len(set(kinds)) != len(kinds):
        raise ValueError(f"faults must be distinct kinds among {','.join(FAULT_KINDS)}; "
                         f"got {','.join(kinds) or 'none'}")
    if not (interval_s > 0 and math.isfinite(interval_s) and duration_s > 0
            and math.isfinite(duration_s)):
        raise ValueError("--interval and --duration must be positive numbers")
    if f < 1 or n < 3 * f + 1:
        raise ValueError(f"a cluster of n={n} with f={f} tolerates no fault to inject")
    slots = int(duration_s // interval_s)
    if slots < len(kinds):
        raise ValueError(f"--duration {duration_s:g} holds {slots} intervals of "
                         f"{interval_s:g} s: fewer than the {len(kinds)} fault kinds")
    order = list(kinds)
    rng.shuffle(order)
    order += [rng.choice(kinds) for _ in range(slots - len(kinds))]
    out = []
    for k, kind in enumerate(order):
        start = (k + rng.uniform(0.1, 0.3)) * interval_s
        span = rng.uniform(0.4, 0.6) * interval_s
        count = f + 1 if beyond_f else rng.randint(1, f)
        nodes = tuple(sorted(rng.sample(range(n), count)))
        offset = 0
        if kind == "clock":
            offset = rng.choice((-1, 1)) * rng.randint(*CLOCK_OFFSET_S)
        out.append(Fault(round(start, 3), round(start + span, 3), kind, nodes, offset))
    return out


def schedule_problems(schedule: Sequence[Fault], kinds: Sequence[str], *, n: int, f: int,
                      duration_s: float, beyond_f: bool = False) -> list[str]:
    """What is wrong with a schedule (empty: nothing): more than f nodes faulty at one time
    (f+1 with `beyond_f`), a fault on no node or an unknown one, a kind of `kinds` never
    drawn or one not asked for, a fault not undone within `duration_s`."""
    limit = f + 1 if beyond_f else f
    out = []
    for x in schedule:
        if (not x.nodes or any(not 0 <= i < n for i in x.nodes)
                or len(set(x.nodes)) != len(x.nodes)):
            out.append(f"{x.describe()} at {x.at_s:g} s: nodes {x.nodes} are not distinct ids "
                       f"of 0..{n - 1}")
        if not 0 <= x.at_s <= x.heal_s <= duration_s:
            out.append(f"{x.describe()} at {x.at_s:g} s is not undone within {duration_s:g} s")
        if x.kind not in kinds:
            out.append(f"{x.kind} at {x.at_s:g} s was not asked for")
    for t in sorted({x.at_s for x in schedule}):
        faulty = {i for x in schedule if x.at_s <= t < x.heal_s for i in x.nodes}
        if len(faulty) > limit:
            out.append(f"{len(faulty)} nodes faulty at {t:g} s: {sorted(faulty)} (at most {limit})")
    missing = [k for k in kinds if k not in {x.kind for x in schedule}]
    if missing:
        out.append(f"kinds never drawn: {', '.join(missing)}")
    return out


def injection_problems(injected: Sequence[dict[str, Any]], scheduled: int) -> list[str]:
    """What went wrong with the injection: faults of the schedule not injected, or injected
    once the load had stopped (they test nothing)."""
    out = []
    if len(injected) != scheduled:
        out.append(f"{len(injected)} of {scheduled} faults injected")
    late = [x for x in injected if not x.get("during_load")]
    if late:
        out.append(f"{len(late)} faults landed after the load stopped "
                   f"({', '.join(x['kind'] for x in late)})")
    return out


def self_exits(procs: Sequence[tuple[int, int, int | None]], signalled: set[int]) -> list[str]:
    """Node processes, (node id, pid, exit status or None while it runs), that exited
    although nobody signalled them: a crash of the node itself, never a fault injected."""
    return [f"node {node} (pid {pid}) exited by itself with status {status}"
            for node, pid, status in procs if status is not None and pid not in signalled]


# --------------------------------------------------------------------------
# The verdict (pure)
# --------------------------------------------------------------------------


def op_counts(history_entries: Sequence[dict[str, Any]]) -> dict[str, int]:
    """Completed operations of a history by outcome: ok, fail, info."""
    counts = Counter(e.get("type") for e in history_entries)
    return {t: counts.get(t, 0) for t in ("ok", "fail", "info")}


def judge(*, lincheck: Verdict, digests: tuple[bool, str], converged: tuple[bool, str],
          problems: Sequence[str] = ()) -> dict[str, Any]:
    """Every check with whether it holds and why: `ok` is True only when the history is
    linearizable, every node converged to one seq, their digests agree there, and no fault
    went wrong (`problems`: a node that did not restart, ...)."""
    lin_ok = lincheck.ok is True
    if lincheck.ok is None:
        lin_detail = f"out of time: {lincheck.message}"
    elif lin_ok:
        lin_detail = (f"linearizable: {lincheck.operations} operations in "
                      f"{lincheck.partitions} partitions")
    else:
        lin_detail = f"NOT linearizable: {lincheck.partition}: {lincheck.why}"
    checks = {
        "linearizable": {"ok": lin_ok, "detail": lin_detail},
        "converged": {"ok": converged[0], "detail": converged[1]},
        "digests": {"ok": digests[0], "detail": digests[1]},
        "faults": {"ok": not problems,
                   "detail": "; ".join(problems) or "every fault injected and undone"},
    }
    return {"ok": all(c["ok"] for c in checks.values()), "checks": checks}


# --------------------------------------------------------------------------
# Running it
# --------------------------------------------------------------------------


@dataclass
class NemesisOptions:
    config_path: Path
    faults: list[str]
    interval_s: float
    duration_s: float
    seed: int = 0
    beyond_f: bool = False
    history_path: Path | None = None
    state_dir: Path | None = None  # None: a fresh temporary directory, removed afterwards
    converge_timeout_s: float = CONVERGE_TIMEOUT_S
    check_timeout_s: float = CHECK_TIMEOUT_S
    op_timeout_s: float = OP_TIMEOUT_S
    keys: int = 4


def check_loopback(config: ClusterConfig) -> None:
    """ValueError unless every node of `config` is on a loopback address."""
    for nd in config.nodes:
        for host in (nd.host, nd.listen[0] if nd.listen else nd.host):
            try:
                loop = ip_address(host).is_loopback
            except ValueError:
                loop = host == "localhost"
            if not loop:
                raise ValueError(f"node {nd.id} is at {host}: bft nemesis runs only "
                                 "clusters on loopback addresses (127.0.0.0/8, ::1)")


class _Control:
    """Admin-signed control commands to the nodes (as `bft ctl` sends them), from one
    loopback UDP socket; each is sent twice (a copy is refused as a replay)."""

    def __init__(self, cluster: LocalCluster) -> None:
        config = cluster.config
        keyring = cluster.keyring
        self.signer = keyring.signer("admin", 0)
        self.cluster_id = control_cluster_id(config, keyring.verifier())
        self.addresses = {nd.id: nd.address for nd in config.nodes}
        self.max_datagram_bytes = config.max_datagram_bytes
        self.last_seq_no = 0
        self.message_id = secrets.randbelow(MAX_MESSAGE_ID)
        family = socket.AF_INET6 if ":" in config.nodes[0].host else socket.AF_INET
        self.sock = socket.socket(family, socket.SOCK_DGRAM)

    def send(self, node_id: int, action: Action) -> None:
        self.last_seq_no = max(self.last_seq_no + 1, time.time_ns() // 1000)
        cmd = ControlCommand(self.cluster_id, node_id, self.last_seq_no, action)
        payload = encode_signed(cmd, self.signer)
        self.message_id = (self.message_id + 1) & MAX_MESSAGE_ID
        for datagram in encode_frames(ADMIN_FRAME_SENDER_ID, self.message_id, payload,
                                      self.max_datagram_bytes) * 2:
            try:
                self.sock.sendto(datagram, self.addresses[node_id])
            except OSError:
                pass  # a full buffer: the end of the run heals again

    def close(self) -> None:
        self.sock.close()


@dataclass
class _Run:
    cluster: LocalCluster
    control: _Control
    say: Callable[[str], None]
    t0: float = 0.0
    load_end: float = math.inf
    injected: list[dict[str, Any]] = field(default_factory=list)
    problems: list[str] = field(default_factory=list)
    down: set[int] = field(default_factory=set)

    def t(self) -> float:
        return trio.current_time() - self.t0

    async def start_node(self, node_id: int) -> None:
        try:
            self.cluster.spawn(node_id, ["--adversary"])
            await self.cluster.wait_ready(node_id)
            self.down.discard(node_id)
        except (LaunchError, RuntimeError) as exc:
            self.problems.append(f"node {node_id} did not start again: {exc}"[:2000])

    async def inject(self, fault: Fault) -> None:
        c, nodes = self.cluster, fault.nodes
        if fault.kind == "kill":
            for i in nodes:
                if c.pid_of(i) is not None:
                    await c.kill(i, signal.SIGKILL)
                self.down.add(i)
        elif fault.kind == "restart":
            for i in nodes:
                if c.pid_of(i) is not None:
                    status = await c.kill(i, signal.SIGTERM)
                    if status != 0:  # it had to be killed, or failed on its way out
                        self.problems.append(f"node {i} did not stop cleanly on SIGTERM "
                                             f"(status {status}): {c.procs[i].describe()}"[:2000])
                await self.start_node(i)
        elif fault.kind == "pause":
            for i in nodes:
                pid = c.pid_of(i)
                if pid is not None:
                    c.procs[i].popen.send_signal(signal.SIGSTOP)
        elif fault.kind == "partition":
            outside = tuple(nd.id for nd in c.config.nodes if nd.id not in nodes)
            for i in nodes:
                self.control.send(i, Cut(outside))
        elif fault.kind == "clock":
            for i in nodes:
                self.control.send(i, SetBehaviour("clock-skew", (("offset_s", fault.offset_s),)))

    async def undo(self, fault: Fault) -> None:
        c = self.cluster
        for i in fault.nodes:
            if fault.kind == "kill":
                await self.start_node(i)
            elif fault.kind == "pause" and c.pid_of(i) is not None:
                c.procs[i].popen.send_signal(signal.SIGCONT)
            elif fault.kind == "partition":
                self.control.send(i, Heal())
            elif fault.kind == "clock":
                self.control.send(i, ClearBehaviour())

    async def play(self, schedule: Sequence[Fault]) -> None:
        for fault in schedule:
            await trio.sleep_until(self.t0 + fault.at_s)
            at = self.t()
            in_load = at < self.load_end - self.t0
            self.injected.append({"kind": fault.kind, "nodes": list(fault.nodes),
                                  "at_s": round(at, 3), "during_load": in_load})
            self.say(f"[nemesis] t={at:6.1f}s fault {len(self.injected)}/{len(schedule)}: "
                     f"{fault.describe()}" + ("" if in_load else " (after the load)"))
            await self.inject(fault)
            await trio.sleep_until(self.t0 + fault.heal_s)
            await self.undo(fault)
            self.say(f"[nemesis] t={self.t():6.1f}s healed {fault.kind} "
                     f"{','.join(map(str, fault.nodes))}")

    async def heal_all(self) -> None:
        """Undo whatever may still be in effect: every fault of every kind, on every node."""
        c = self.cluster
        self.problems += self_exits([(p.node_id, p.pid, p.returncode) for p in c.all_procs],
                                    c.signalled)
        for nd in c.config.nodes:
            if c.pid_of(nd.id) is None:
                await self.start_node(nd.id)
            elif nd.id in c.procs:
                c.procs[nd.id].popen.send_signal(signal.SIGCONT)
        for nd in c.config.nodes:
            self.control.send(nd.id, Heal())
            self.control.send(nd.id, ClearBehaviour())


async def _progress(run: _Run, history: History, every_s: float) -> None:
    while True:
        await trio.sleep(every_s)
        counts = op_counts(history.entries)
        run.say(f"[nemesis] t={run.t():6.1f}s ops ok {counts['ok']} fail {counts['fail']} "
                f"info {counts['info']}; faults {len(run.injected)}; "
                f"down {sorted(run.down) or 'none'}")


def _cluster_events(cluster: LocalCluster) -> dict[str, int]:
    views: set[int] = set()
    transfers = 0
    for nd in cluster.config.nodes:
        for e in cluster.events(nd.id):
            if e.get("event") == "new_view" and isinstance(e.get("view"), int):
                views.add(e["view"])
            elif e.get("event") == "state_transfer":
                transfers += 1
    return {"view_changes": len(views), "state_transfers": transfers}


async def run_nemesis(opts: NemesisOptions, say: Callable[[str], None]) -> dict[str, Any]:
    """Run it (module docstring); the report: `ok`, the checks, the counts, the schedule.
    ValueError for arguments or a config it cannot run (before any process starts)."""
    config = ClusterConfig.load(opts.config_path)
    check_loopback(config)
    schedule = make_schedule(opts.faults, n=config.n, f=config.f, interval_s=opts.interval_s,
                             duration_s=opts.duration_s, rng=random.Random(opts.seed),
                             beyond_f=opts.beyond_f)
    wrong = schedule_problems(schedule, opts.faults, n=config.n, f=config.f,
                              duration_s=opts.duration_s, beyond_f=opts.beyond_f)
    assert not wrong, wrong  # make_schedule's own promise: a bug if broken
    tmp = None
    if opts.state_dir is None:
        tmp = tempfile.TemporaryDirectory(prefix="bft-nemesis-")
        state_dir = Path(tmp.name)
    else:
        state_dir = opts.state_dir
    key_dir = config.key_dir if config.key_dir is not None else state_dir / "keys"
    ensure_keys(config, key_dir)
    cluster = LocalCluster(opts.config_path, config=config, state_dir=state_dir,
                           key_dir=key_dir)
    history = History()
    control = None
    try:
        drawn = sorted(Counter(x.kind for x in schedule).items())
        say(f"[nemesis] seed {opts.seed}: {len(schedule)} faults "
            f"({', '.join(f'{k} {v}' for k, v in drawn)}) over {opts.duration_s:g} s on "
            f"{config.n} nodes (f={config.f}{', beyond f' if opts.beyond_f else ''}); "
            f"state in {state_dir}")
        control = _Control(cluster)  # no admin key: ConfigError before any node starts
        await cluster.start(extra_args=["--adversary"])
        run = _Run(cluster, control, say)
        run.t0 = trio.current_time()
        run.load_end = run.t0 + opts.duration_s
        async with trio.open_nursery() as nursery:
            nursery.start_soon(_progress, run, history, max(5.0, min(30.0, opts.interval_s)))

            faults_done = trio.Event()

            async def faults() -> None:
                await run.play(schedule)
                faults_done.set()

            nursery.start_soon(faults)
            with trio.move_on_after(opts.duration_s):
                await cluster.run_load(workload="mixed", ops=2**62, seed=opts.seed,
                                       keys=opts.keys, history=history,
                                       timeout_s=opts.op_timeout_s)
            history.finish(time.monotonic_ns())
            say(f"[nemesis] t={run.t():6.1f}s load stopped")
            # a fault still being injected or undone (a slow restart) finishes first
            with trio.move_on_after(FINISH_FAULT_TIMEOUT_S):
                await faults_done.wait()
            say(f"[nemesis] t={run.t():6.1f}s healing every node")
            nursery.cancel_scope.cancel()
        await run.heal_all()
        running = sorted(cluster.pids())
        try:
            await cluster.barrier(running, timeout_s=opts.converge_timeout_s)
            converged = (len(running) == config.n,
                         f"every node executed the barrier read" if len(running) == config.n
                         else f"only nodes {running} run")
        except (LaunchError, OSError) as exc:
            converged = (False, str(exc))
        say(f"[nemesis] converged: {converged[1]}")
        summaries = await cluster.stop_all(strict=False)
        digests = digest_agreement(summaries, [nd.id for nd in config.nodes])
        say(f"[nemesis] {digests[1]}")
        if opts.history_path is not None:
            history.write(opts.history_path)
            say(f"[nemesis] history of {len(history.entries)} events written to "
                f"{opts.history_path}")
        ops = parse_history(list(history.lines()))
        deadline_at = time.monotonic() + opts.check_timeout_s
        lin = check(ops, skew_us=int(config.max_clock_skew_s * 1e6),
                    deadline=lambda: time.monotonic() > deadline_at)
        problems = run.problems + injection_problems(run.injected, len(schedule))
        report = judge(lincheck=lin, digests=digests, converged=converged, problems=problems)
        report.update(
            config=str(opts.config_path), seed=opts.seed, duration_s=opts.duration_s,
            interval_s=opts.interval_s, beyond_f=opts.beyond_f,
            operations=op_counts(history.entries),
            faults=dict(Counter(x["kind"] for x in run.injected)),
            faults_during_load=sum(1 for x in run.injected if x["during_load"]),
            injected=run.injected, schedule=[asdict(x) for x in schedule],
            **_cluster_events(cluster))
        return report
    finally:
        if control is not None:
            control.close()
        cluster.cleanup()
        if tmp is not None:
            tmp.cleanup()


def format_report(report: dict[str, Any]) -> str:
    """The verdict as lines: PASS/FAIL, each check, the counts."""
    ops, faults = report["operations"], report["faults"]
    lines = [f"nemesis {'PASS' if report['ok'] else 'FAIL'}: "
             f"operations ok {ops['ok']} fail {ops['fail']} info {ops['info']}; "
             f"faults {sum(faults.values())} ("
             + "".join(f"{k} {v}, " for k, v in sorted(faults.items()))
             + f"{report['faults_during_load']} during the load); "
             f"view changes {report['view_changes']}; "
             f"state transfers {report['state_transfers']}"]
    for name, c in report["checks"].items():
        lines.append(f"  {'ok  ' if c['ok'] else 'FAIL'} {name}: {c['detail']}")
    return "\n".join(lines)


def report_json(report: dict[str, Any]) -> str:
    return json.dumps(report, sort_keys=True)

