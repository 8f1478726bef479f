"""The nodes of a cluster on this machine: pid files, `bft status` and `bft down`.

Pid files. `bft node` writes STATE_DIR/node-N.pid (its pid) once it has bound its socket
and recovered from its WAL, never before, and removes it when it stops; `bft up` writes
STATE_DIR/up.pid the same way for itself. A pid file is trusted only when the process it
names is really that node (`is_node_process`: its command line, read from /proc, is
`... bft node CONFIG --id N` for the same config file), so a stale file whose pid the
kernel gave to another process is recognised as stale, never signalled.

`check_not_running` is what `bft up` asks before it touches anything (ready files, output
files, keys): CliError naming the nodes that run and the addresses in use.

`stop_cluster` (`bft down`): SIGTERM to the `bft up` process if one runs (it stops its nodes
cleanly and prints their summary), then SIGCONT + SIGTERM to every node still running,
a bounded wait, SIGKILL to what is left, and the pid files removed.

`collect_status` (`bft status`): the signed status snapshots the nodes send to the
monitor address, received for a bounded time (verified against the config's public keys,
single-datagram snapshots only; anything else is counted and dropped), joined with the
pid files into one row per node.
"""

from __future__ import annotations

import contextlib
import errno
import os
import signal
import socket
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from bft.cliutil import CliError
from bft.config import ClusterConfig, format_address
from bft.errors import MalformedMessage
from bft.telemetry import MAX_PAYLOAD_BYTES, StatusSnapshot, decode_signed_untrusted, is_telemetry
from transport.frame import FrameError, decode_frame_untrusted

__all__ = [
    "NodeStatus",
    "check_not_running",
    "collect_status",
    "is_node_process",
    "node_statuses",
    "pid_path",
    "read_pid_file",
    "remove_pid_file",
    "running_nodes",
    "stop_cluster",
    "up_pid_path",
    "write_pid_file",
]

STOP_TIMEOUT_S = 10.0
_POLL_S = 0.05


# --------------------------------------------------------------------------
# Pid files
# --------------------------------------------------------------------------


def pid_path(state_dir: Path, node_id: int) -> Path:
    return Path(state_dir) / f"node-{node_id}.pid"


def up_pid_path(state_dir: Path) -> Path:
    return Path(state_dir) / "up.pid"


def write_pid_file(path: Path) -> None:
    """Write this process's pid to `path`, atomically."""
    path = Path(path)
    tmp = path.with_name(f"{path.name}.{os.getpid()}.tmp")
    tmp.write_text(f"{os.getpid()}\n")
    os.replace(tmp, path)


def read_pid_file(path: Path) -> int | None:
    """The pid in `path`, None if there is no such file or it holds no pid."""
    try:
        text = Path(path).read_text().strip()
    except OSError:
        return None
    return int(text) if text.isdigit() and int(text) > 0 else None


def remove_pid_file(path: Path, pid: int | None = None) -> None:
    """Remove `path` if it names `pid` (default: this process); never another's file."""
    if read_pid_file(path) == (os.getpid() if pid is None else pid):
        with contextlib.suppress(OSError):
            Path(path).unlink()


def _command_line(pid: int) -> tuple[list[str], Path] | None:
    """The arguments and working directory of process `pid` (None: gone, a zombie, or not
    ours to read)."""
    try:
        raw = Path(f"/proc/{pid}/cmdline").read_bytes()
        cwd = Path(os.readlink(f"/proc/{pid}/cwd"))
    except OSError:
        return None
    args = [a.decode(errors="replace") for a in raw.split(b"\0") if a]
    return (args, cwd) if args else None


def _same_file(a: Path, b: Path) -> bool:
    try:
        return os.path.samefile(a, b)
    except OSError:
        return False


def is_node_process(pid: int, config_path: Path, node_id: int | None) -> bool:
    """Whether process `pid` runs `bft node CONFIG --id node_id` (node_id None: `bft up
    CONFIG`) for the config file `config_path`."""
    found = _command_line(pid)
    if found is None:
        return False
    args, cwd = found
    command = "up" if node_id is None else "node"
    starts = [i for i, a in enumerate(args) if a == command]
    for i in starts:
        if not any(Path(a).name == "bft" for a in args[:i]):
            continue
        rest = args[i + 1:]
        if not any(_same_file(cwd / a, config_path) for a in rest if not a.startswith("-")):
            continue
        if node_id is None:
            return True
        for j, a in enumerate(rest):
            if a == f"--id={node_id}" or (a == "--id" and rest[j + 1:j + 2] == [str(node_id)]):
                return True
    return False


def running_nodes(config: ClusterConfig, config_path: Path, state_dir: Path) -> dict[int, int]:
    """Node id -> pid of each node whose pid file names a live process of that node."""
    out = {}
    for node in config.nodes:
        pid = read_pid_file(pid_path(state_dir, node.id))
        if pid is not None and is_node_process(pid, config_path, node.id):
            out[node.id] = pid
    return out


def _address_in_use(host: str, port: int) -> bool:
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    with socket.socket(family, socket.SOCK_DGRAM) as sock:
        try:
            sock.bind((host, port))
        except OSError as exc:
            return exc.errno == errno.EADDRINUSE
    return False


def check_not_running(config: ClusterConfig, config_path: Path, state_dir: Path) -> None:
    """CliError if a node of this config already runs from `state_dir` or a node's address is
    in use; `bft up` calls it before it touches anything."""
    running = running_nodes(config, config_path, state_dir)
    up = read_pid_file(up_pid_path(state_dir))
    if running or (up is not None and is_node_process(up, config_path, None)):
        which = ", ".join(f"node {i} (pid {p})" for i, p in sorted(running.items()))
        raise CliError(
            f"cluster {config.name!r} is already running from {state_dir}"
            + (f": {which}" if which else f" (bft up, pid {up})")
            + f"; see `bft status {config_path}`, stop it with `bft down {config_path}`")
    busy = [n for n in config.nodes if _address_in_use(n.host, n.port)]
    if busy:
        which = ", ".join(f"node {n.id}'s {format_address(n.host, n.port)}" for n in busy)
        raise CliError(f"address in use: {which} (another cluster or program holds it; "
                       "is this cluster running from another state directory?)")


# --------------------------------------------------------------------------
# bft down
# --------------------------------------------------------------------------


def _signal(pid: int, sig: int) -> None:
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.kill(pid, sig)


def _wait_gone(targets: dict[int, int], config_path: Path, timeout_s: float,
               clock: Callable[[], float], sleep: Callable[[float], None]) -> set[int]:
    """Wait until no process of `targets` (node id (or -1: bft up) -> pid) is that node any
    more; the ids still running after `timeout_s`."""
    deadline = clock() + timeout_s
    left = set(targets)
    while left:
        left = {i for i in left
                if is_node_process(targets[i], config_path, None if i < 0 else i)}
        if not left or clock() >= deadline:
            break
        sleep(_POLL_S)
    return left


def stop_cluster(config: ClusterConfig, config_path: Path, state_dir: Path,
                 say: Callable[[str], None], *, timeout_s: float = STOP_TIMEOUT_S,
                 clock: Callable[[], float] = time.monotonic,
                 sleep: Callable[[float], None] = time.sleep) -> int:
    """`bft down`: stop the `bft up` process and the nodes of this config that run from
    `state_dir` (see the module docstring). Returns how many processes were stopped."""
    stopped = 0
    up_file = up_pid_path(state_dir)
    up = read_pid_file(up_file)
    if up is not None and is_node_process(up, config_path, None):
        say(f"stopping bft up (pid {up})")
        _signal(up, signal.SIGTERM)
        if _wait_gone({-1: up}, config_path, 2 * timeout_s, clock, sleep):
            say(f"bft up (pid {up}) did not stop within {2 * timeout_s:g} s: killed")
            _signal(up, signal.SIGKILL)
        stopped += 1
    elif up is not None:
        say(f"{up_file} names pid {up}, which is not `bft up {config_path}`: stale, removed")
    with contextlib.suppress(OSError):
        up_file.unlink()
    targets: dict[int, int] = {}
    for node in config.nodes:
        path = pid_path(state_dir, node.id)
        pid = read_pid_file(path)
        if pid is None:
            continue
        if is_node_process(pid, config_path, node.id):
            targets[node.id] = pid
        else:
            say(f"node {node.id}: {path} names pid {pid}, which is not that node: stale, "
                "removed")
            with contextlib.suppress(OSError):
                path.unlink()
    for node_id, pid in sorted(targets.items()):
        say(f"stopping node {node_id} (pid {pid})")
        _signal(pid, signal.SIGCONT)  # a paused node must run to stop
        _signal(pid, signal.SIGTERM)
    stuck = _wait_gone(targets, config_path, timeout_s, clock, sleep)
    for node_id in sorted(stuck):
        say(f"node {node_id} (pid {targets[node_id]}) did not stop within {timeout_s:g} s "
            "of SIGTERM: killed")
        _signal(targets[node_id], signal.SIGKILL)
    if stuck:
        _wait_gone({i: targets[i] for i in stuck}, config_path, timeout_s, clock, sleep)
    for node_id in targets:
        with contextlib.suppress(OSError):
            pid_path(state_dir, node_id).unlink()
    return stopped + len(targets)


# --------------------------------------------------------------------------
# bft status
# --------------------------------------------------------------------------


@dataclass(frozen=True)
class NodeStatus:
    """One row of `bft status`: `state` is up (telemetry received), running (a live process
    by its pid file, no telemetry) or down; the rest comes from the node's latest status
    snapshot (None without one); `lag` is how many sequence numbers it executed fewer than
    the node furthest ahead."""

    id: int
    address: str
    state: str
    pid: int | None
    view: int | None = None
    primary: int | None = None
    executed: int | None = None
    stable: int | None = None
    lag: int | None = None
    paused: bool = False
    behaviour: str = ""

    def as_json(self) -> dict[str, Any]:
        return {"id": self.id, "address": self.address, "state": self.state, "pid": self.pid,
                "view": self.view, "primary": self.primary, "executed": self.executed,
                "stable_checkpoint": self.stable, "lag_seqs": self.lag,
                "paused": self.paused, "behaviour": self.behaviour}


def snapshot_of_datagram_untrusted(datagram: bytes, verifier: Any) -> StatusSnapshot | None:
    """The verified status snapshot in one datagram (a one-fragment transport frame or a
    bare telemetry payload), None for anything else."""
    payload = datagram
    if not is_telemetry(payload):
        try:
            frame = decode_frame_untrusted(datagram, max_message_bytes=MAX_PAYLOAD_BYTES)
        except FrameError:
            return None
        if frame.fragment_count != 1:
            return None
        payload = frame.payload
    if not is_telemetry(payload):
        return None
    try:
        msg, _ = decode_signed_untrusted(payload, verifier)
    except MalformedMessage:
        return None
    return msg if isinstance(msg, StatusSnapshot) else None


def collect_status(config: ClusterConfig, verifier: Any, listen: tuple[str, int],
                   wait_s: float) -> dict[int, StatusSnapshot]:
    """The latest status snapshot of each node that sent one to `listen` within `wait_s`
    (returns early once every node sent one). OSError if `listen` cannot be bound."""
    family = socket.AF_INET6 if ":" in listen[0] else socket.AF_INET
    out: dict[int, StatusSnapshot] = {}
    ids = {n.id for n in config.nodes}
    with socket.socket(family, socket.SOCK_DGRAM) as sock:
        sock.bind(listen)
        deadline = time.monotonic() + wait_s
        while ids - out.keys():
            left = deadline - time.monotonic()
            if left <= 0:
                break
            sock.settimeout(left)
            try:
                data = sock.recv(65536)
            except TimeoutError:
                break
            snap = snapshot_of_datagram_untrusted(data, verifier)
            if snap is not None and snap.node in ids:
                old = out.get(snap.node)
                if old is None or snap.seq_no > old.seq_no:
                    out[snap.node] = snap
    return out


def node_statuses(config: ClusterConfig, snapshots: dict[int, StatusSnapshot],
                  pids: dict[int, int]) -> list[NodeStatus]:
    """One `NodeStatus` per node of `config` from the snapshots and the live pids."""
    top = max((s.last_executed for s in snapshots.values()), default=0)
    rows = []
    for node in config.nodes:
        snap = snapshots.get(node.id)
        pid = pids.get(node.id)
        if snap is None:
            rows.append(NodeStatus(node.id, str(node), "running" if pid else "down", pid))
            continue
        rows.append(NodeStatus(node.id, str(node), "up", pid, snap.view, snap.primary,
                               snap.last_executed, snap.stable_seq, top - snap.last_executed,
                               snap.paused, snap.behaviour))
    return rows


def format_status(rows: list[NodeStatus]) -> str:
    """The table `bft status` prints."""
    header = ("id", "address", "state", "pid", "view", "primary", "executed", "stable",
              "lag (seqs)")

    def cell(v: Any) -> str:
        return "-" if v is None else str(v)

    table = [header] + [
        (str(r.id), r.address, r.state + (" paused" if r.paused else "")
         + (f" byz:{r.behaviour}" if r.behaviour else ""), cell(r.pid), cell(r.view),
         cell(r.primary), cell(r.executed), cell(r.stable), cell(r.lag)) for r in rows]
    widths = [max(len(line[i]) for line in table) for i in range(len(header))]
    return "\n".join("  ".join(c.ljust(w) for c, w in zip(line, widths)).rstrip()
                     for line in table)


# --------------------------------------------------------------------------
# The commands
# --------------------------------------------------------------------------


def add_lifecycle_parsers(subparsers: Any) -> None:
    """Add `bft status` and `bft down` to the `bft` subcommands."""
    import argparse

    def common(parser: argparse.ArgumentParser) -> None:
        parser.add_argument("config", metavar="CONFIG", type=Path, help="cluster config (TOML)")
        parser.add_argument("--state-dir", type=Path, default=None, metavar="DIR",
                            help="state directory of the running nodes (default: "
                            "state/<cluster name>)")

    status = subparsers.add_parser(
        "status", help="show each node of a running cluster",
        description="One line per node: up (its signed status telemetry arrived), running "
        "(a live process by its pid file, no telemetry) or down; its view, the primary, "
        "the last executed sequence number, the stable checkpoint and its lag behind the "
        "node furthest ahead (in sequence numbers). Telemetry is received on the config's "
        "monitor address, so it is not available while a dashboard holds that address "
        "(then only the pid files are read). Exits 0 if every node is up, 1 otherwise.")
    common(status)
    status.add_argument("--key-dir", type=Path, default=None, metavar="DIR",
                        help="key directory (default: the config's key_dir, else "
                        "STATE_DIR/keys)")
    status.add_argument("--listen", default=None, metavar="HOST:PORT",
                        help="where to receive telemetry (default: the config's monitor)")
    status.add_argument("--wait", type=float, default=1.5, metavar="S",
                        help="how long to wait for telemetry (default: 1.5)")
    status.add_argument("--json", action="store_true",
                        help="print one JSON object (nodes: a list of rows) instead of a table")
    status.set_defaults(handler=cmd_status)
    down = subparsers.add_parser(
        "down", help="stop the nodes of a running cluster on this machine",
        description="Stop what `bft up CONFIG` or `bft node CONFIG` started from the state "
        "directory: the pids in STATE_DIR/up.pid and STATE_DIR/node-N.pid, each checked to "
        "really be that process (a stale pid file is removed, never signalled). SIGTERM, "
        "then SIGKILL after --timeout; the pid files are removed.")
    common(down)
    down.add_argument("--timeout", type=float, default=STOP_TIMEOUT_S, metavar="S",
                      help=f"seconds to wait after SIGTERM before SIGKILL (default: "
                      f"{STOP_TIMEOUT_S:g})")
    down.set_defaults(handler=cmd_down)


def cmd_status(args: Any) -> int:
    import json

    from bft.cliutil import key_dir, load_config, state_dir
    from bft.config import load_keyring, parse_address

    config = load_config(args.config)
    state = state_dir(config, args.state_dir)
    if not 0 < args.wait <= 60:
        raise CliError(f"--wait must be in (0, 60] seconds, got {args.wait:g}")
    listen = (parse_address(args.listen, field="--listen") if args.listen is not None
              else config.monitor)
    note = ""
    snapshots: dict[int, StatusSnapshot] = {}
    if listen is None:
        note = "the config has no monitor address: no telemetry, only the pid files were read"
    else:
        verifier = load_keyring(config, key_dir(config, args.state_dir, args.key_dir)).verifier()
        try:
            snapshots = collect_status(config, verifier, listen, args.wait)
        except OSError as exc:
            note = (f"cannot listen on {format_address(*listen)} for telemetry "
                    f"({exc.strerror or exc}; a dashboard holds it?): only the pid files "
                    "were read")
    rows = node_statuses(config, snapshots, running_nodes(config, args.config, state))
    if args.json:
        print(json.dumps({"cluster": config.name, "note": note or None,
                          "nodes": [r.as_json() for r in rows]}))
    else:
        print(format_status(rows))
        if note:
            print(f"note: {note}")
    return 0 if all(r.state == "up" for r in rows) else 1


def cmd_down(args: Any) -> int:
    from bft.cliutil import load_config, state_dir

    config = load_config(args.config)
    state = state_dir(config, args.state_dir)
    if not 0 < args.timeout <= 600:
        raise CliError(f"--timeout must be in (0, 600] seconds, got {args.timeout:g}")

    def say(line: str) -> None:
        print(line, flush=True)

    stopped = stop_cluster(config, args.config, state, say, timeout_s=args.timeout)
    if not stopped:
        say(f"no node of {config.name!r} runs from {state}")
    return 0


# --------------------------------------------------------------------------
# Restarts: from the dashboard (r on a dead node) and `bft up --restart-crashed`
# --------------------------------------------------------------------------


class Supervisor:
    """Restarts the crashed nodes of a `bft.launcher.LocalCluster`.

    A node *crashed* when its latest process exited without this launcher having signalled
    it (SIGKILL from outside, `bft ctl crash`, an error). `restart(i)` starts a crashed or
    stopped node again now (the dashboard's r). With `automatic`, `poll(now)` restarts each
    crashed node after a backoff (`backoff_s`, doubling per restart of that node, at most
    `max_backoff_s`), at most `max_restarts` times per node; then it says so and leaves the
    node down. Every spawn goes through the cluster (so its stop stops it too) and happens
    in the caller's thread: call both from the thread that lives as long as the launcher
    (the parent-death signal follows the thread that forked). `say` gets one line per
    decision; `extra_args(i)` the arguments of a restarted incarnation."""

    def __init__(self, cluster: Any, say: Callable[[str], None], *, automatic: bool = False,
                 max_restarts: int = 5, backoff_s: float = 1.0, max_backoff_s: float = 30.0,
                 extra_args: Callable[[int], list[str]] = lambda _i: []) -> None:
        self.cluster = cluster
        self.say = say
        self.automatic = automatic
        self.max_restarts = max_restarts
        self.backoff_s = backoff_s
        self.max_backoff_s = max_backoff_s
        self.extra_args = extra_args
        self.restarts: dict[int, int] = {}  # automatic restarts so far, by node
        self._due: dict[int, float] = {}  # node -> when its automatic restart is due
        self._seen: set[int] = set()  # pids whose crash was noticed
        self._given_up: set[int] = set()
        self.restarted_pids: set[int] = set()  # the processes this object started

    def crashed(self) -> dict[int, int | None]:
        """Node id -> exit status of each node whose latest process crashed."""
        return {i: p.returncode for i, p in self.cluster.procs.items()
                if not p.running() and p.pid not in self.cluster.signalled}

    def restart(self, node_id: int) -> str:
        """Start node `node_id` again now unless it runs; what was done, as a line."""
        proc = self.cluster.procs.get(node_id)
        if proc is not None and proc.running():
            return f"node {node_id} is running (pid {proc.pid}): not restarted"
        self._due.pop(node_id, None)
        new = self.cluster.spawn(node_id, self.extra_args(node_id))
        self.restarted_pids.add(new.pid)
        return f"node {node_id} restarted (pid {new.pid})"

    def poll(self, now: float) -> None:
        """Notice new crashes and carry out the automatic restarts that are due."""
        for node_id, status in sorted(self.crashed().items()):
            pid = self.cluster.procs[node_id].pid
            if pid in self._seen:
                continue
            self._seen.add(pid)
            if not self.automatic:
                continue  # the launcher's output says it exited; r restarts it
            done = self.restarts.get(node_id, 0)
            if done >= self.max_restarts:
                self._given_up.add(node_id)
                self.say(f"node {node_id} crashed (status {status}) after {done} restarts: "
                         f"left down (at most {self.max_restarts})")
                continue
            delay = min(self.backoff_s * 2 ** done, self.max_backoff_s)
            self._due[node_id] = now + delay
            self.say(f"node {node_id} crashed (status {status}): restart "
                     f"{done + 1}/{self.max_restarts} in {delay:g} s")
        for node_id, due in sorted(self._due.items()):
            if now >= due:
                self.restarts[node_id] = self.restarts.get(node_id, 0) + 1
                self.say(self.restart(node_id))
