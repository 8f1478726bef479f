"""The one local-cluster launcher: every node of a config as a `bft node` process here.

    cluster = LocalCluster(config_path, state_dir=state, key_dir=keys)
    try:
        await cluster.start()                 # spawn every node, wait until each is ready
        ...                                   # clients, cluster.kill(i), cluster.start(i), ...
        summaries = await cluster.stop_all()  # each node's stop summary, by node id
    finally:
        cluster.cleanup()                     # SIGKILL what this object started and still runs

Each node runs as `python -m bft node CONFIG --id N --state-dir DIR --key-dir DIR
--ready-file STATE_DIR/node-N.ready [node_args...]`, its stdout and stderr going to
OUTPUT_DIR/node-N.runK.out (K counts the node's incarnations, from 1).

Readiness is machine-readable: the node writes its ready file (JSON: pid, id, address,
view, last_executed; `write_ready_file`) once it has bound its socket, recovered from its
WAL and caught SIGINT/SIGTERM, so from then on a SIGTERM stops it cleanly. The launcher
deletes the file before it spawns and accepts only one naming the pid it spawned.

Guarantees: every wait is bounded and fails with a `LaunchError` naming the node, its
status and its output file (with the output's tail); only processes this object started
are ever signalled, by pid; a stop is SIGCONT + SIGTERM, then SIGKILL after
`stop_timeout_s`; each child gets the parent-death signal SIGKILL (`die_with_parent`), so
no node outlives its launcher, however the launcher dies (the WAL makes that a crash
like any other).

`config_to_toml` is the one writer of cluster configs (read back equal by
`ClusterConfig.load`); `throwaway_config` builds the short-timeout config of a throwaway
local cluster on free loopback ports.
"""

from __future__ import annotations

import contextlib
import ctypes
import dataclasses
import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any

import trio

from bft.config import (
    FIELD_PATHS,
    ClusterConfig,
    NodeAddress,
    format_address,
    identities,
    inline_public_key,
    key_file_stem,
    load_keyring,
    toml_value,
)
from bft.crypto import generate_private_key, save_private_key, save_public_key
from transport.udp import free_udp_ports

__all__ = [
    "LaunchError",
    "LocalCluster",
    "NodeProcess",
    "config_to_toml",
    "die_with_parent",
    "ensure_keys",
    "read_ready_file",
    "reap",
    "spawn",
    "throwaway_config",
    "write_ready_file",
]

START_TIMEOUT_S = 30.0
STOP_TIMEOUT_S = 10.0
_PR_SET_PDEATHSIG = 1
_POLL_S = 0.02


class LaunchError(Exception):
    """A node did not become ready, did not stop cleanly, or left no stop summary."""


# --------------------------------------------------------------------------
# Config files
# --------------------------------------------------------------------------


def config_to_toml(config: ClusterConfig) -> str:
    """TOML text that `ClusterConfig.load` reads back as an equal config (source aside)."""
    sections: dict[str, list[str]] = {}
    for attr, path in FIELD_PATHS.items():
        if attr in ("nodes", "clients", "limits"):
            continue
        section, key = path.split(".")
        value = getattr(config, attr)
        if value is None:
            continue
        if attr == "monitor":
            value = format_address(*value)
        sections.setdefault(section, []).append(f"{key} = {toml_value(value)}")
    out = ["[cluster]", *sections.pop("cluster"), ""]
    for node in config.nodes:
        out += ["[[nodes]]", f"id = {node.id}", f"address = {toml_value(str(node))}"]
        if node.listen is not None:
            out.append(f"listen = {toml_value(format_address(*node.listen))}")
        if node.public_key is not None:
            out.append(f'public_key = "{node.public_key.hex()}"')
        out.append("")
    ids = [c.id for c in config.clients]
    if all(c.public_key is None for c in config.clients) and ids == list(range(len(ids))):
        out += ["[clients]", f"count = {len(ids)}", ""]
    else:
        for c in config.clients:
            out += ["[[clients]]", f"id = {c.id}"]
            if c.public_key is not None:
                out.append(f'public_key = "{c.public_key.hex()}"')
            out.append("")
    if config.admin_public_key is not None:
        out += ["[admin]", f'public_key = "{config.admin_public_key.hex()}"', ""]
    for section, lines in sections.items():
        out += [f"[{section}]", *lines, ""]
    out.append("[limits]")
    out += [f"{f.name} = {getattr(config.limits, f.name)}"
            for f in dataclasses.fields(config.limits)]
    return "\n".join(out) + "\n"


def throwaway_config(n: int = 4, *, name: str = "test", hosts: Sequence[str] | None = None,
                ports: Sequence[int] | None = None, clients: int = 8,
                **overrides: Any) -> ClusterConfig:
    """A throwaway local cluster: `n` nodes (f = (n-1)//3) on free ports of `hosts` (default
    loopback), short timeouts (fast view changes and retransmissions), K = 8, L = 16, fsync
    never. `overrides` set any ClusterConfig field."""
    hosts = list(hosts) if hosts is not None else ["127.0.0.1"] * n
    ports = list(ports) if ports is not None else free_udp_ports(n, hosts[0])
    values: dict[str, Any] = {
        "checkpoint_interval": 8, "log_window": 16, "batch_max_requests": 16,
        "batch_delay_s": 0.002, "max_in_flight": 8, "view_change_timeout_s": 0.5,
        "view_change_timeout_min_s": 0.2, "view_change_timeout_max_s": 4.0,
        "client_timeout_s": 0.25, "max_clock_skew_s": 1.0, "status_interval_s": 0.1,
        "fsync": "never"}
    values.update(overrides)
    return ClusterConfig.local(
        n, nodes=tuple(NodeAddress(i, h, p) for i, (h, p) in enumerate(zip(hosts, ports))),
        clients=clients, name=name, **values)


def ensure_keys(config: ClusterConfig, key_dir: Path) -> bool:
    """Generate every missing key pair of a local cluster into `key_dir` (identities with a
    public key in the config, or a key file already there, are skipped). True if any was
    made."""
    made = False
    for kind, id in identities(config):
        if inline_public_key(config, (kind, id)) is not None:
            continue
        stem = key_file_stem(kind, id)
        if (key_dir / f"{stem}.key").exists() or (key_dir / f"{stem}.pub").exists():
            continue
        key_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
        key = generate_private_key()
        save_private_key(key_dir / f"{stem}.key", key)
        save_public_key(key_dir / f"{stem}.pub", key)
        made = True
    return made


# --------------------------------------------------------------------------
# Readiness
# --------------------------------------------------------------------------


def write_ready_file(path: Path, **info: Any) -> None:
    """The node's side: write `info` (with this process's pid) as JSON, atomically."""
    path = Path(path)
    tmp = path.with_name(f"{path.name}.{os.getpid()}.tmp")
    tmp.write_text(json.dumps({"pid": os.getpid(), **info}) + "\n")
    os.replace(tmp, path)


def read_ready_file(path: Path, pid: int) -> dict[str, Any] | None:
    """The launcher's side: what process `pid` wrote to `path`, or None (not yet, or
    another process's file)."""
    try:
        info = json.loads(Path(path).read_text())
    except (OSError, ValueError):
        return None
    return info if isinstance(info, dict) and info.get("pid") == pid else None


# --------------------------------------------------------------------------
# Processes
# --------------------------------------------------------------------------


def die_with_parent() -> None:
    """In the child between fork and exec: the kernel SIGKILLs it when its parent dies
    (Linux PR_SET_PDEATHSIG, kept across exec). The signal follows the thread that forked:
    spawn from the thread that lives as long as the launcher (not a worker thread)."""
    with contextlib.suppress(OSError, AttributeError):
        ctypes.CDLL(None, use_errno=True).prctl(_PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)


def spawn(cmd: Sequence[str], *, stdout: IO[Any] | int | None,
          stderr: IO[Any] | int | None = subprocess.STDOUT,
          stdin: IO[Any] | int | None = subprocess.DEVNULL,
          env: dict[str, str] | None = None) -> subprocess.Popen[bytes]:
    """Start a child of this launcher (a node, a load worker): in its own session (a
    Ctrl-C to the terminal is not its), with the parent-death signal (`die_with_parent`)."""
    return subprocess.Popen(list(cmd), stdout=stdout, stderr=stderr, stdin=stdin, env=env,
                            start_new_session=True, preexec_fn=die_with_parent)  # noqa: PLW1509


async def reap(popen: subprocess.Popen[bytes], timeout_s: float = STOP_TIMEOUT_S) -> int:
    """Wait (bounded) for `popen` to exit; SIGKILL it after `timeout_s`. Its exit status."""
    with trio.move_on_after(timeout_s):
        while popen.poll() is None:
            await trio.sleep(_POLL_S)
    if popen.poll() is None:
        popen.kill()
        with trio.move_on_after(timeout_s):
            while popen.poll() is None:
                await trio.sleep(_POLL_S)
    return popen.returncode


def _tail(path: Path, limit: int = 3000) -> str:
    try:
        with open(path, "rb") as f:
            f.seek(max(0, f.seek(0, os.SEEK_END) - limit))
            return f.read().decode(errors="replace")
    except OSError:
        return ""


def digest_agreement(summaries: dict[int, dict[str, Any]],
                     node_ids: Sequence[int]) -> tuple[bool, str]:
    """Compare the nodes' stop summaries at the same executed seq: (True, "digests agree
    at seq N") when every node of `node_ids` stopped at the highest seq with one state
    digest; else False and which node differs (another digest at that seq), is behind
    (stopped at a lower seq: its digest cannot be compared) or left no summary."""
    seqs: dict[int, int] = {i: s["last_executed"] for i, s in summaries.items()
                            if isinstance(s.get("last_executed"), int)}
    if not seqs:
        return False, "no node left a stop summary to compare"
    top = max(seqs.values())
    at_top = {i: summaries[i].get("state_digest") for i in sorted(seqs) if seqs[i] == top}
    counts: dict[Any, int] = {}
    for d in at_top.values():
        counts[d] = counts.get(d, 0) + 1
    common = max(counts, key=lambda d: (counts[d], -min(i for i in at_top if at_top[i] == d)))
    agree = [i for i in at_top if at_top[i] == common]
    problems = [f"node {i} differs: digest {str(at_top[i])[:16]} at seq {top}, not "
                f"{str(common)[:16]}" for i in at_top if at_top[i] != common]
    problems += [f"node {i} is behind: stopped at seq {seqs[i]}" for i in sorted(seqs)
                 if seqs[i] < top]
    problems += [f"node {i} left no stop summary" for i in node_ids if i not in seqs]
    if not problems:
        return True, f"digests agree at seq {top} ({len(agree)} nodes)"
    return False, (f"digests agree at seq {top} on nodes {agree} only; " + "; ".join(problems))


@dataclass
class NodeProcess:
    """One incarnation of a node: its process, its output file, what it said when ready."""

    node_id: int
    popen: subprocess.Popen[bytes]
    out_path: Path
    ready: dict[str, Any] | None = None

    @property
    def pid(self) -> int:
        return self.popen.pid

    @property
    def returncode(self) -> int | None:
        """Its exit status, None while it runs."""
        return self.popen.poll()

    def running(self) -> bool:
        return self.popen.poll() is None

    def output(self) -> str:
        try:
            return self.out_path.read_text(errors="replace")
        except OSError:
            return ""

    def describe(self) -> str:
        """`node N (pid P)` and where its output is, with the output's tail."""
        tail = _tail(self.out_path).rstrip()
        return (f"node {self.node_id} (pid {self.pid}); its output, {self.out_path}:\n"
                f"{tail or '(nothing)'}")


class LocalCluster:
    """The node processes of one cluster on this machine (see the module docstring).

    `node_args` are appended to every node's command line (`--events`, `--scenario F`...);
    `extra_args` of `spawn`/`start` to one incarnation's. Override `command()` to wrap it
    (e.g. `ip netns exec NS ...`)."""

    def __init__(self, config_path: str | Path, *, state_dir: str | Path, key_dir: str | Path,
                 config: ClusterConfig | None = None, node_args: Sequence[str] = (),
                 output_dir: str | Path | None = None, env: dict[str, str] | None = None,
                 start_timeout_s: float = START_TIMEOUT_S,
                 stop_timeout_s: float = STOP_TIMEOUT_S) -> None:
        self.config_path = Path(config_path)
        self.config = config if config is not None else ClusterConfig.load(self.config_path)
        self.state_dir = Path(state_dir)
        self.key_dir = Path(key_dir)
        self.output_dir = Path(output_dir) if output_dir is not None else self.state_dir
        self.node_args = list(node_args)
        self.env = env
        self.start_timeout_s = start_timeout_s
        self.stop_timeout_s = stop_timeout_s
        self.procs: dict[int, NodeProcess] = {}  # the latest incarnation of each node
        self.all_procs: list[NodeProcess] = []
        self.signalled: set[int] = set()  # pids this object sent SIGTERM or SIGKILL to
        self._keyring: Any = None
        self._echoed: dict[Path, tuple[int, bytes]] = {}  # output file -> (offset, partial)
        self._echoed_exits: set[int] = set()
        self._last_timestamp: dict[int, int] = {}

    @property
    def n(self) -> int:
        return self.config.n

    # -- paths

    def ready_path(self, node_id: int) -> Path:
        return self.state_dir / f"node-{node_id}.ready"

    def log_path(self, node_id: int) -> Path:
        return self.state_dir / f"node-{node_id}.log.jsonl"

    # -- starting

    def command(self, node_id: int, extra_args: Sequence[str] = ()) -> list[str]:
        """The command line of node `node_id`."""
        return [sys.executable, "-m", "bft", "node", str(self.config_path), "--id", str(node_id),
                "--state-dir", str(self.state_dir), "--key-dir", str(self.key_dir),
                "--ready-file", str(self.ready_path(node_id)), *self.node_args, *extra_args]

    def spawn(self, node_id: int, extra_args: Sequence[str] = ()) -> NodeProcess:
        """Start node `node_id`, not waiting until it is ready (RuntimeError if it runs)."""
        old = self.procs.get(node_id)
        if old is not None and old.running():
            raise RuntimeError(f"node {node_id} is already running (pid {old.pid})")
        self.state_dir.mkdir(parents=True, exist_ok=True)
        self.output_dir.mkdir(parents=True, exist_ok=True)
        self.ready_path(node_id).unlink(missing_ok=True)
        k = 1 + sum(1 for p in self.all_procs if p.node_id == node_id)
        out_path = self.output_dir / f"node-{node_id}.run{k}.out"
        with open(out_path, "wb") as out:
            popen = spawn(self.command(node_id, extra_args), stdout=out,
                          env=dict(self.env or os.environ, PYTHONUNBUFFERED="1"))
        proc = NodeProcess(node_id, popen, out_path)
        self.procs[node_id] = proc
        self.all_procs.append(proc)
        return proc

    async def wait_ready(self, node_id: int, timeout_s: float | None = None) -> dict[str, Any]:
        """Wait until node `node_id` wrote its ready file; what it wrote. LaunchError naming
        the node and its output if it exits first or is not ready within `timeout_s`."""
        proc = self.procs[node_id]
        timeout_s = self.start_timeout_s if timeout_s is None else timeout_s
        with trio.move_on_after(timeout_s):
            while True:
                proc.ready = read_ready_file(self.ready_path(node_id), proc.pid)
                if proc.ready is not None:
                    return proc.ready
                if not proc.running():
                    raise LaunchError(f"node {node_id} exited with status "
                                      f"{proc.popen.returncode} before it was ready: "
                                      f"{proc.describe()}")
                await trio.sleep(_POLL_S)
        raise LaunchError(f"node {node_id} was not ready within {timeout_s:g} s: "
                          f"{proc.describe()}")

    async def start(self, *node_ids: int, extra_args: Sequence[str] = ()) -> None:
        """Spawn the given nodes (all if none given), then wait until each is ready."""
        ids = node_ids or tuple(n.id for n in self.config.nodes)
        for i in ids:
            self.spawn(i, extra_args)
        for i in ids:
            await self.wait_ready(i)

    def pid_of(self, node_id: int) -> int | None:
        """The pid of node `node_id`'s running process, if any."""
        proc = self.procs.get(node_id)
        return proc.pid if proc is not None and proc.running() else None

    def pids(self) -> dict[int, int]:
        """Node id -> pid of its running process."""
        return {i: p.pid for i, p in self.procs.items() if p.running()}

    # -- stopping

    def _signal(self, proc: NodeProcess, sig: int) -> None:
        if sig in (signal.SIGTERM, signal.SIGKILL):
            self.signalled.add(proc.pid)
        proc.popen.send_signal(sig)  # a no-op once the child has been reaped

    async def kill(self, node_id: int, sig: int = signal.SIGKILL) -> int:
        """Send `sig` (default SIGKILL: a crash) to node `node_id` and reap it (SIGKILL after
        `stop_timeout_s`); its exit status."""
        proc = self.procs[node_id]
        if proc.running():
            self._signal(proc, sig)
        self.signalled.add(proc.pid)
        return await reap(proc.popen, self.stop_timeout_s)

    async def stop(self, node_id: int) -> dict[str, Any]:
        """Stop node `node_id` cleanly (LaunchError if it is not running); its stop summary."""
        proc = self.procs[node_id]
        if not proc.running():
            raise LaunchError(f"node {node_id} is not running (status "
                              f"{proc.popen.returncode}): {proc.describe()}")
        return (await self._stop([proc], strict=True))[node_id]

    async def stop_all(self, *, strict: bool = True) -> dict[int, dict[str, Any]]:
        """SIGCONT and SIGTERM every running node, SIGKILL those still running after
        `stop_timeout_s`; their stop summaries by node id. Every process is gone when this
        returns or raises. With `strict`, LaunchError if a node had to be killed, exited
        with a non-zero status or left no stop summary; else those are left out."""
        return await self._stop([p for p in self.procs.values() if p.running()], strict)

    async def _stop(self, procs: list[NodeProcess], strict: bool) -> dict[int, dict[str, Any]]:
        for p in procs:
            self._signal(p, signal.SIGCONT)  # a paused node must run to stop
            self._signal(p, signal.SIGTERM)
        stuck: list[NodeProcess] = []
        with trio.move_on_after(self.stop_timeout_s):
            while any(p.running() for p in procs):
                await trio.sleep(_POLL_S)
        for p in procs:
            if p.running():
                stuck.append(p)
                self._signal(p, signal.SIGKILL)
                await reap(p.popen, self.stop_timeout_s)
        summaries, problems = {}, []
        for p in procs:
            summary = self.stop_summary(p.node_id)
            if p in stuck:
                problems.append(f"node {p.node_id} did not stop within {self.stop_timeout_s:g} s "
                                f"of SIGTERM (killed): {p.describe()}")
            elif p.popen.returncode != 0:
                problems.append(f"node {p.node_id} exited with status {p.popen.returncode}: "
                                f"{p.describe()}")
            elif summary is None:
                problems.append(f"node {p.node_id} left no stop summary in "
                                f"{self.log_path(p.node_id)}: {p.describe()}")
            else:
                summaries[p.node_id] = summary
        if problems and strict:
            raise LaunchError("\n".join(problems))
        return summaries

    def terminate_all(self) -> None:
        """`stop_all` for code outside Trio: SIGCONT + SIGTERM, SIGKILL after the bound."""
        procs = [p for p in self.all_procs if p.running()]
        for p in procs:
            self._signal(p, signal.SIGCONT)
            self._signal(p, signal.SIGTERM)
        for p in procs:
            try:
                p.popen.wait(timeout=self.stop_timeout_s)
            except subprocess.TimeoutExpired:
                self._signal(p, signal.SIGKILL)
        self.cleanup()

    def cleanup(self) -> None:
        """SIGKILL and reap every process this object started that still runs."""
        for p in self.all_procs:
            if p.running():
                self._signal(p, signal.SIGKILL)
            with contextlib.suppress(subprocess.TimeoutExpired):
                p.popen.wait(timeout=self.stop_timeout_s)  # unkillable (D state): leave it

    # -- clients

    @property
    def keyring(self) -> Any:
        """The cluster's keys (`bft.config.Keyring`), loaded from `key_dir` when first used."""
        if self._keyring is None:
            self._keyring = load_keyring(self.config, self.key_dir)
        return self._keyring

    def next_timestamp(self, client_id: int) -> int:
        """A request number above every one this object handed to `client_id` (wall-clock
        microseconds, so above those of an earlier launcher's clients too)."""
        ts = max(time.time_ns() // 1000, self._last_timestamp.get(client_id, 0) + 1_000_000)
        self._last_timestamp[client_id] = ts
        return ts

    def client(self, client_id: int, *, host: str = "127.0.0.1") -> Any:
        """A `bft.node.ClusterClient` with its socket on `host` (close it when done)."""
        from bft.node import ClusterClient

        return ClusterClient(self.config, client_id, signer=self.keyring.signer("client", client_id),
                             verifier=self.keyring.verifier(), host=host,
                             first_timestamp=self.next_timestamp(client_id))

    def client_endpoint(self, client_id: int, host: str = "127.0.0.1") -> Any:
        """A bare UDP endpoint speaking as client `client_id` (for `barrier`)."""
        from bft.config import CLIENT_SENDER_BASE
        from transport.udp import UdpEndpoint

        return UdpEndpoint(CLIENT_SENDER_BASE + client_id, host, 0,
                           peers={nd.id: nd.address for nd in self.config.nodes},
                           max_datagram_bytes=self.config.max_datagram_bytes,
                           max_message_bytes=self.config.limits.max_message_bytes)

    async def barrier(self, node_ids: Sequence[int] | None = None, *, timeout_s: float = 20.0,
                      host: str = "127.0.0.1") -> dict[int, bytes]:
        """Order one read and wait until each replica of `node_ids` (default: all) executed
        it and replied; replicas execute in sequence order, so each one that replied executed
        everything ordered before. The replies' results by replica; LaunchError naming the
        replicas that did not reply within `timeout_s`. The request comes from the highest
        client id of the config (keep it free of other clients)."""
        from bft import codec
        from bft.app import Ops
        from bft.auth import authenticated_reply, reply_auth_for
        from bft.errors import MalformedMessage
        from bft.messages import Request

        ids = set(node_ids if node_ids is not None else (nd.id for nd in self.config.nodes))
        cid = max(c.id for c in self.config.clients)
        signer, verifier = self.keyring.signer("client", cid), self.keyring.verifier()
        reply_auth = reply_auth_for(signer, verifier)  # replies come MAC'd (or signed)
        request = signer.sign(Request(Ops.get("__barrier__"), self.next_timestamp(cid), cid))
        data = codec.encode(request)
        results: dict[int, bytes] = {}
        endpoint = self.client_endpoint(cid, host)
        try:
            with trio.move_on_after(timeout_s):
                while not ids <= results.keys():
                    for nd in self.config.nodes:
                        if nd.id not in results:
                            await endpoint.send(nd.id, data)
                    with trio.move_on_after(self.config.client_timeout_s):
                        while not ids <= results.keys():
                            for rec in await endpoint.receive_batch():
                                try:
                                    msg = codec.decode_untrusted(rec.payload, self.config.limits)
                                except MalformedMessage:
                                    continue
                                r = authenticated_reply(msg, verifier, reply_auth)
                                if (r is not None and r.client == cid and r.replica in ids
                                        and r.timestamp == request.statement.timestamp):
                                    results.setdefault(r.replica, r.result)
        finally:
            endpoint.close()
        missing = sorted(ids - results.keys())
        if missing:
            raise LaunchError(f"replicas {missing} did not execute the barrier within "
                              f"{timeout_s:g} s (replied: {sorted(results)})")
        return results

    # -- load

    async def run_load(self, *, workload: str = "mixed", ops: int = 100,
                       clients: Sequence[int] | None = None, keys: int = 4, seed: int = 0,
                       prefix: str | None = None, app: Any = None, history: Any = None,
                       timeout_s: float = 10.0) -> Any:
        """Run `ops` operations of a `bft.workload` (mixed, puts, noop, app) from closed-loop
        clients (default: every client id of the config but the highest, which `barrier`
        uses), each recorded in `history` (a new `bft.history.History` if None), which is
        returned: check it with `bft.lincheck`. An op whose client gives up is recorded as
        info. `seed` seeds each client's workload (`random.Random(f"{seed}-{client}")`);
        `prefix` names this load's keys and locks (default: fresh per call); `app` is the
        application object for the app workload."""
        import random

        from bft.history import History, call_recorded
        from bft.workload import make_workload

        history = history if history is not None else History()
        ids = list(clients) if clients is not None else sorted(
            c.id for c in self.config.clients)[:-1] or [self.config.clients[0].id]
        self._loads = getattr(self, "_loads", 0) + 1
        prefix = prefix if prefix is not None else f"l{os.getpid()}.{self._loads}-"
        left = [ops]

        async def one(cid: int) -> None:
            w = make_workload(workload, cid, random.Random(f"{seed}-{cid}"), keys=keys,
                              prefix=prefix, app=app)
            client = self.client(cid)
            try:
                while left[0] > 0:
                    left[0] -= 1
                    result = await call_recorded(client, w.next_op(), history, process=cid,
                                                 clock_ns=time.monotonic_ns, timeout_s=timeout_s)
                    w.observe(result)
            finally:
                client.close()

        async with trio.open_nursery() as nursery:
            for cid in ids:
                nursery.start_soon(one, cid)
        return history

    # -- logs

    def output(self, node_id: int) -> str:
        """What the latest incarnation of node `node_id` printed."""
        proc = self.procs.get(node_id)
        return proc.output() if proc is not None else ""

    def echo_output(self, say: Callable[[str], None], *, final: bool = False) -> None:
        """Pass each complete line the nodes printed since the last call to `say`, as
        `[node N] line` (with `final`, an unfinished last line too), and once, each exit
        of a node this object did not signal (`[node N] exited by itself with status S`)."""
        for p in self.all_procs:
            self._echo_lines(p, say, final)
            if not p.running() and p.pid not in self.signalled and p.pid not in self._echoed_exits:
                self._echoed_exits.add(p.pid)
                say(f"[node {p.node_id}] exited by itself with status {p.returncode}")

    def _echo_lines(self, p: NodeProcess, say: Callable[[str], None], final: bool) -> None:
        offset, partial = self._echoed.get(p.out_path, (0, b""))
        try:
            with open(p.out_path, "rb") as f:
                f.seek(offset)
                data = f.read()
        except OSError:
            return
        *lines, partial = (partial + data).split(b"\n")
        if final and partial:
            lines, partial = [*lines, partial], b""
        self._echoed[p.out_path] = (offset + len(data), partial)
        for line in lines:
            say(f"[node {p.node_id}] {line.decode(errors='replace')}")

    async def follow_output(self, say: Callable[[str], None], interval_s: float = 0.1) -> None:
        """Forever: `echo_output` every `interval_s` (run it in a nursery)."""
        while True:
            self.echo_output(say)
            await trio.sleep(interval_s)

    def events(self, node_id: int) -> list[dict[str, Any]]:
        """Every JSON log line node `node_id` wrote (all incarnations), in order."""
        try:
            text = self.log_path(node_id).read_text(errors="replace")
        except FileNotFoundError:
            return []
        out = []
        for line in text.splitlines():
            if line.strip():
                try:
                    out.append(json.loads(line))
                except json.JSONDecodeError:  # a line torn by SIGKILL
                    continue
        return out

    def stop_summary(self, node_id: int) -> dict[str, Any] | None:
        """The `stop` line that ends node `node_id`'s log, None if it ends otherwise."""
        events = self.events(node_id)
        if events and events[-1].get("event") == "stop":
            return events[-1]
        return None
