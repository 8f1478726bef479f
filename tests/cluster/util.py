"""Helpers to run a real cluster of `bft node` processes from a Trio test.

`Cluster` writes a TOML config with short timeouts and free ports into a test's
temporary directory, generates keys with `bft keygen`, and starts, kills,
restarts and stops `python -m bft node ...` processes (optionally inside a
network namespace, through `ip netns exec`). Every wait is bounded by a hard
timeout, and `Cluster.cleanup()` (called from fixture finalizers) SIGKILLs
every process this object started that is still running, by its pid. As a
second line of defence each node is started with PR_SET_PDEATHSIG, so it dies
with the test process even if the finalizer never runs.

`Cluster.barrier(...)` is how a test waits, without guessing with sleeps,
until replicas have caught up: it sends one read request straight to the
replicas and waits until every replica asked for has executed it and
replied. Replicas execute in sequence order, so a replica that replied has
executed everything ordered before the barrier.

Node ports are probed free and kept outside the ephemeral range, so that a
client socket can never take the port of a node that is down (see
`free_udp_ports`).
"""

from __future__ import annotations

import ctypes
import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import trio

from bft import codec
from bft.app import Ops, decode_result
from bft.auth import authenticated_reply, reply_auth_for
from bft.cli import main as bft_main
from bft.config import ClusterConfig, load_keyring
from bft.errors import MalformedMessage
from bft.messages import Request, Signed
from bft.node import CLIENT_SENDER_BASE, ClientError, ClusterClient
from transport.udp import UdpEndpoint, free_udp_ports

START_TIMEOUT_S = 15.0
STOP_TIMEOUT_S = 10.0
_PR_SET_PDEATHSIG = 1


# ---------------------------------------------------------------------- ports


# ---------------------------------------------------------------------- config


def config_toml(
    *,
    name: str,
    f: int,
    addresses: Sequence[tuple[str, int]],
    clients: int = 8,
    fsync: str = "never",
    checkpoint_interval: int = 8,
    log_window: int = 16,
    max_in_flight: int = 8,
    batch_max_requests: int = 16,
    view_change_s: float = 0.5,
    view_change_min_s: float = 0.2,
    view_change_max_s: float = 4.0,
    client_s: float = 0.25,
    status_interval_s: float = 0.1,
) -> str:
    """The text of a cluster config in the layout of configs/local-4.toml."""
    lines = ["[cluster]", f'name = "{name}"', f"f = {f}", ""]
    for i, (host, port) in enumerate(addresses):
        lines += ["[[nodes]]", f"id = {i}", f'address = "{host}:{port}"', ""]
    lines += [
        "[clients]",
        f"count = {clients}",
        "",
        "[batching]",
        f"max_requests = {batch_max_requests}",
        "delay_s = 0.002",
        f"max_in_flight = {max_in_flight}",
        "",
        "[checkpoints]",
        f"interval = {checkpoint_interval}",
        f"log_window = {log_window}",
        "",
        "[timeouts]",
        f"view_change_s = {view_change_s}",
        f"view_change_min_s = {view_change_min_s}",
        f"view_change_max_s = {view_change_max_s}",
        f"client_s = {client_s}",
        "max_clock_skew_s = 1.0",
        "",
        "[network]",
        f"status_interval_s = {status_interval_s}",
        "",
        "[storage]",
        f'fsync = "{fsync}"',
        "",
    ]
    return "\n".join(lines)


# ---------------------------------------------------------------------- processes


_LIBC = ctypes.CDLL(None, use_errno=True)


def _die_with_parent() -> None:
    """Runs in the child between fork and exec: the kernel SIGKILLs the node when the
    test process dies (kept across exec, also through `ip netns exec`)."""
    _LIBC.prctl(_PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)


@dataclass
class NodeProcess:
    """One started `bft node` process (one incarnation of a node)."""

    node_id: int
    popen: subprocess.Popen[bytes]
    out_path: Path

    @property
    def pid(self) -> int:
        return self.popen.pid

    def running(self) -> bool:
        return self.popen.poll() is None

    def output(self) -> str:
        try:
            return self.out_path.read_text(errors="replace")
        except OSError:
            return ""


class NodeFailed(AssertionError):
    """A node process did not start, did not stop cleanly, or left no stop summary."""


class Cluster:
    """A cluster of real node processes sharing one state directory under `root`.

    Guarantees: every process it starts is recorded and `cleanup()` SIGKILLs and
    reaps those still running (only those, by pid); every wait has a hard timeout
    and fails with the node's output in the message.
    """

    def __init__(
        self,
        root: Path,
        n: int = 4,
        *,
        hosts: Sequence[str] | None = None,
        ports: Sequence[int] | None = None,
        netns: Sequence[str] | None = None,
        client_host: str = "127.0.0.1",
        client_netns: str | None = None,
        **config_options: Any,
    ) -> None:
        self.root = Path(root)
        self.root.mkdir(parents=True, exist_ok=True)
        hosts = list(hosts) if hosts is not None else ["127.0.0.1"] * n
        ports = list(ports) if ports is not None else free_udp_ports(n, hosts[0])
        self.netns = list(netns) if netns is not None else None
        self.client_host = client_host
        self.client_netns = client_netns
        self.config_path = self.root / "cluster.toml"
        self.state_dir = self.root / "state"
        self.key_dir = self.root / "keys"
        self.config_path.write_text(
            config_toml(
                name="test", f=(n - 1) // 3, addresses=list(zip(hosts, ports)), **config_options
            )
        )
        with open(os.devnull, "w") as devnull:  # keygen prints every public key
            saved, sys.stdout = sys.stdout, devnull
            try:
                status = bft_main(["keygen", str(self.config_path), "--key-dir", str(self.key_dir)])
            finally:
                sys.stdout = saved
        assert status == 0, "bft keygen failed"
        self.config = ClusterConfig.load(self.config_path)
        self.keyring = load_keyring(self.config, self.key_dir)
        self.verifier = self.keyring.verifier()
        self.procs: dict[int, NodeProcess] = {}
        self.all_procs: list[NodeProcess] = []
        self._signalled: set[int] = set()  # pids this object sent SIGKILL/SIGTERM to
        self._incarnation: dict[int, int] = {}
        self._last_timestamp: dict[int, int] = {}
        self._barrier_client = max(c.id for c in self.config.clients)

    @property
    def n(self) -> int:
        return self.config.n

    # -- starting and stopping

    def command(self, node_id: int) -> list[str]:
        """The command line that runs node `node_id` (inside its namespace, if any)."""
        cmd = [
            sys.executable,
            "-m",
            "bft",
            "node",
            str(self.config_path),
            "--id",
            str(node_id),
            "--state-dir",
            str(self.state_dir),
            "--key-dir",
            str(self.key_dir),
        ]
        if self.netns is not None:
            cmd = ["ip", "netns", "exec", self.netns[node_id], *cmd]
        return cmd

    def spawn(self, node_id: int) -> NodeProcess:
        """Start node `node_id` (not waiting for it to listen)."""
        if node_id in self.procs and self.procs[node_id].running():
            raise RuntimeError(f"node {node_id} is already running (pid {self.procs[node_id].pid})")
        k = self._incarnation[node_id] = self._incarnation.get(node_id, 0) + 1
        out_path = self.root / f"node-{node_id}.run{k}.out"
        env = dict(os.environ, PYTHONUNBUFFERED="1")
        with open(out_path, "wb") as out:
            popen = subprocess.Popen(
                self.command(node_id),
                stdout=out,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                env=env,
                start_new_session=True,
                preexec_fn=_die_with_parent,  # noqa: PLW1509 (tests fork from one thread)
            )
        proc = NodeProcess(node_id, popen, out_path)
        self.procs[node_id] = proc
        self.all_procs.append(proc)
        return proc

    async def wait_listening(self, node_id: int, timeout_s: float = START_TIMEOUT_S) -> None:
        """Wait until node `node_id` printed `listening on` (bound and recovered)."""
        proc = self.procs[node_id]
        with trio.move_on_after(timeout_s):
            while True:
                if "listening on" in proc.output():
                    return
                if not proc.running():
                    raise NodeFailed(
                        f"node {node_id} exited with status {proc.popen.returncode} "
                        f"before listening:\n{proc.output()}"
                    )
                await trio.sleep(0.02)
        raise NodeFailed(f"node {node_id} did not listen within {timeout_s} s:\n{proc.output()}")

    async def start(self, *node_ids: int) -> None:
        """Start the given nodes (all if none given) and wait until each listens."""
        ids = node_ids or tuple(range(self.n))
        for i in ids:
            self.spawn(i)
        for i in ids:
            await self.wait_listening(i)

    async def _wait_exit(self, proc: NodeProcess, timeout_s: float) -> int:
        with trio.move_on_after(timeout_s):
            while proc.popen.poll() is None:
                await trio.sleep(0.01)
            return proc.popen.returncode
        raise NodeFailed(
            f"node {proc.node_id} (pid {proc.pid}) did not exit within "
            f"{timeout_s} s:\n{proc.output()}"
        )

    async def kill(self, node_id: int) -> None:
        """SIGKILL node `node_id` (a crash: no clean shutdown) and reap it."""
        proc = self.procs[node_id]
        if proc.running():
            self._signal(proc, signal.SIGKILL)
        await self._wait_exit(proc, STOP_TIMEOUT_S)

    async def stop(self, node_id: int) -> dict[str, Any]:
        """SIGTERM node `node_id`, wait for a clean exit, return its stop summary."""
        proc = self.procs[node_id]
        if not proc.running():
            raise NodeFailed(
                f"node {node_id} is not running (status {proc.popen.returncode}):\n{proc.output()}"
            )
        self._signal(proc, signal.SIGTERM)
        status = await self._wait_exit(proc, STOP_TIMEOUT_S)
        if status != 0:
            raise NodeFailed(f"node {node_id} exited with status {status}:\n{proc.output()}")
        return self.stop_summary(node_id)

    async def stop_all(self) -> dict[int, dict[str, Any]]:
        """Stop every running node cleanly; their stop summaries by node id."""
        running = [i for i, p in self.procs.items() if p.running()]
        for i in running:
            self._signal(self.procs[i], signal.SIGTERM)
        out = {}
        for i in running:
            status = await self._wait_exit(self.procs[i], STOP_TIMEOUT_S)
            if status != 0:
                raise NodeFailed(f"node {i} exited with status {status}:\n{self.procs[i].output()}")
            out[i] = self.stop_summary(i)
        return out

    def _signal(self, proc: NodeProcess, sig: int) -> None:
        self._signalled.add(proc.pid)
        proc.popen.send_signal(sig)  # a no-op once the child has been reaped

    def cleanup(self) -> None:
        """SIGKILL and reap every process this cluster started that still runs."""
        for proc in self.all_procs:
            if proc.popen.poll() is None:
                self._signal(proc, signal.SIGKILL)
            try:
                proc.popen.wait(timeout=STOP_TIMEOUT_S)
            except subprocess.TimeoutExpired:
                pass  # unkillable (D state): nothing more we may do

    def problems(self) -> list[str]:
        """What no test here should ever see, all faults being crashes and partitions: a
        node that exited without being signalled, an error logged, evidence of
        equivocation, or a replica whose checkpoint diverged from the stable one."""
        found = []
        for proc in self.all_procs:
            status = proc.popen.poll()
            if status is not None and proc.pid not in self._signalled:
                found.append(
                    f"node {proc.node_id} (pid {proc.pid}) exited by itself with "
                    f"status {status}:\n{proc.output()[-3000:]}"
                )
        for i in range(self.n):
            for e in self.events(i):
                if e.get("level") in ("error", "critical") or e.get("event") in (
                    "evidence",
                    "diverged",
                ):
                    found.append(f"node {i} logged {e}")
        return found

    # -- logs

    def log_path(self, node_id: int) -> Path:
        return self.state_dir / f"node-{node_id}.log.jsonl"

    def events(self, node_id: int) -> list[dict[str, Any]]:
        """Every JSON log line node `node_id` wrote (all incarnations), in order."""
        try:
            text = self.log_path(node_id).read_text()
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

    def stop_summary(self, node_id: int) -> dict[str, Any]:
        """The `stop` line that ends node `node_id`'s log (NodeFailed if the log ends otherwise)."""
        events = self.events(node_id)
        if not events or events[-1].get("event") != "stop":
            last = events[-1] if events else None
            raise NodeFailed(f"node {node_id}'s log does not end with a stop line: {last}")
        return events[-1]

    # -- clients

    def next_timestamp(self, client_id: int) -> int:
        """A request number above every one this cluster object handed to `client_id`."""
        ts = max(time.time_ns() // 1000, self._last_timestamp.get(client_id, 0) + 1_000_000)
        self._last_timestamp[client_id] = ts
        return ts

    @contextmanager
    def _client_side(self) -> Iterator[None]:
        """Where client sockets are made: in `client_netns` if set, else right here."""
        if self.client_netns is None:
            yield
        else:
            with in_netns(self.client_netns):
                yield

    def client(self, client_id: int) -> ClusterClient:
        """An in-process client (its socket on `client_host`). Close it when done."""
        signer = self.keyring.signer("client", client_id)
        with self._client_side():
            return ClusterClient(
                self.config,
                client_id,
                signer=signer,
                verifier=self.verifier,
                host=self.client_host,
                first_timestamp=self.next_timestamp(client_id),
            )

    async def barrier(
        self, node_ids: Sequence[int] | None = None, timeout_s: float = 20.0
    ) -> dict[int, bytes]:
        """Order one read through the cluster and wait until each of `node_ids` replied.

        Returns the replies' results by replica. Raises AssertionError if they differ,
        NodeFailed naming the replicas that did not reply within `timeout_s`."""
        ids = set(node_ids if node_ids is not None else range(self.n))
        cid = self._barrier_client
        signer = self.keyring.signer("client", cid)
        reply_auth = reply_auth_for(signer, self.verifier)  # replies come MAC'd (or signed)
        request = signer.sign(Request(Ops.get("__barrier__"), self.next_timestamp(cid), cid))
        data = codec.encode(request)
        results: dict[int, bytes] = {}
        with self._client_side():
            endpoint = UdpEndpoint(
                CLIENT_SENDER_BASE + cid,
                self.client_host,
                0,
                peers={nd.id: nd.address for nd in self.config.nodes},
                max_datagram_bytes=self.config.max_datagram_bytes,
                max_message_bytes=self.config.limits.max_message_bytes,
            )
        try:
            with trio.move_on_after(timeout_s):
                while not ids <= results.keys():
                    for i in range(self.n):
                        if i not in results:
                            await endpoint.send(i, data)
                    with trio.move_on_after(self.config.client_timeout_s):
                        while not ids <= results.keys():
                            for rec in await endpoint.receive_batch():
                                self._take_reply(rec.payload, request, results, reply_auth)
        finally:
            endpoint.close()
        missing = sorted(ids - results.keys())
        if missing:
            raise NodeFailed(
                f"replicas {missing} did not execute the barrier within {timeout_s} s "
                f"(replied: {sorted(results)})"
            )
        assert len(set(results.values())) == 1, f"replicas disagree on the barrier: {results}"
        return results

    def _take_reply(self, payload: bytes, request: Signed, results: dict[int, bytes],
                    reply_auth: Any) -> None:
        try:
            msg = codec.decode_untrusted(payload, self.config.limits)
        except MalformedMessage:
            return
        r = authenticated_reply(msg, self.verifier, reply_auth)
        req = request.statement
        if (
            r is not None
            and (r.client, r.timestamp) == (req.client, req.timestamp)
            and 0 <= r.replica < self.n
        ):
            results.setdefault(r.replica, r.result)


def decode(result: bytes) -> Any:
    """An agreed result bytes as a `bft.app.Result`."""
    return decode_result(result)


# ---------------------------------------------------------------------- load

CALL_TIMEOUT_S = 15.0


class Ledger:
    """What clients got replies for: key -> value, and a way to wait for progress."""

    def __init__(self) -> None:
        self.acked: dict[str, bytes] = {}
        self.unknown: list[str] = []  # calls that timed out: applied or not, we cannot know
        self._waiters: list[tuple[int, trio.Event]] = []

    def record(self, key: str, value: bytes) -> None:
        self.acked[key] = value
        for count, event in self._waiters:
            if len(self.acked) >= count:
                event.set()

    async def wait_for(self, count: int, timeout_s: float = 30.0) -> None:
        """Wait until at least `count` writes were acknowledged (TooSlowError after timeout_s)."""
        if len(self.acked) >= count:
            return
        event = trio.Event()
        self._waiters.append((count, event))
        with trio.fail_after(timeout_s):
            await event.wait()


async def writer(
    cluster: Cluster,
    client_id: int,
    prefix: str,
    ledger: Ledger,
    *,
    count: int | None = None,
    stop: trio.Event | None = None,
    must_complete: bool = True,
) -> None:
    """Put unique keys `prefix<client>-<i>` until `count` are done or `stop` is set."""
    client = cluster.client(client_id)
    try:
        i = 0
        while (count is None or i < count) and not (stop is not None and stop.is_set()):
            key = f"{prefix}{client_id}-{i}"
            value = b"v-" + key.encode()
            i += 1
            try:
                result = await client.call(Ops.put(key, value), timeout_s=CALL_TIMEOUT_S)
            except ClientError:
                if must_complete:
                    raise
                ledger.unknown.append(key)
                continue
            assert decode(result).kind == "ok", decode(result)
            ledger.record(key, value)
    finally:
        client.close()


async def write_all(
    cluster: Cluster, clients: list[int], count: int, prefix: str, ledger: Ledger
) -> None:
    """Every client in `clients` puts `count` keys, concurrently; every put must complete."""
    async with trio.open_nursery() as nursery:
        for cid in clients:
            nursery.start_soon(lambda cid=cid: writer(cluster, cid, prefix, ledger, count=count))


async def read_back(cluster: Cluster, expected: dict[str, bytes], clients: Sequence[int]) -> None:
    """Every key in `expected` reads back with its value (gets ordered through consensus),
    the keys shared out among `clients`, which read concurrently."""
    items = sorted(expected.items())

    async def reader(k: int, client_id: int) -> None:
        client = cluster.client(client_id)
        try:
            for key, value in items[k :: len(clients)]:
                result = decode(await client.call(Ops.get(key), timeout_s=CALL_TIMEOUT_S))
                assert result.kind == "value" and result.value == value, (key, result)
        finally:
            client.close()

    async with trio.open_nursery() as nursery:
        for k, cid in enumerate(clients):
            nursery.start_soon(reader, k, cid)


def assert_same_state(summaries: dict[int, dict[str, Any]]) -> None:
    """The stop summaries agree on the state digest and the last executed sequence number."""
    digests = {i: s["state_digest"] for i, s in summaries.items()}
    executed = {i: s["last_executed"] for i, s in summaries.items()}
    assert len(set(digests.values())) == 1, f"state digests differ: {digests}"
    assert len(set(executed.values())) == 1, f"last executed differ: {executed}"


def events_since_last_start(cluster: Cluster, node_id: int) -> list[dict[str, Any]]:
    """Node `node_id`'s log lines from its latest `start` line on (its current incarnation)."""
    events = cluster.events(node_id)
    starts = [k for k, e in enumerate(events) if e.get("event") == "start"]
    return events[starts[-1] :] if starts else events


# ---------------------------------------------------------------------- network namespaces

_CLONE_NEWNET = 0x40000000


@contextmanager
def in_netns(name: str) -> Iterator[None]:
    """Run the body with this thread in network namespace `name` (sockets created
    inside stay in it for their whole life), then switch back, whatever happens."""
    libc = _LIBC
    own = os.open("/proc/thread-self/ns/net", os.O_RDONLY)
    target = os.open(f"/run/netns/{name}", os.O_RDONLY)
    try:
        if libc.setns(target, _CLONE_NEWNET) != 0:
            err = ctypes.get_errno()
            raise OSError(err, f"setns into {name}: {os.strerror(err)}")
        try:
            yield
        finally:
            if libc.setns(own, _CLONE_NEWNET) != 0:  # cannot go on in the wrong namespace
                err = ctypes.get_errno()
                os.write(
                    2, f"FATAL: cannot return from netns {name}: {os.strerror(err)}\n".encode()
                )
                os._exit(70)
    finally:
        os.close(target)
        os.close(own)


def run_ip(*args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    """Run `ip ARGS...` (bounded to 10 s); with `check`, RuntimeError naming the command
    and its stderr if it fails."""
    done = subprocess.run(["ip", *args], check=False, capture_output=True, text=True, timeout=10)
    if check and done.returncode != 0:
        raise RuntimeError(f"ip {' '.join(args)}: {done.stderr.strip() or done.returncode}")
    return done


__all__ = [
    "CALL_TIMEOUT_S",
    "Cluster",
    "Ledger",
    "NodeFailed",
    "NodeProcess",
    "assert_same_state",
    "config_toml",
    "decode",
    "events_since_last_start",
    "free_udp_ports",
    "in_netns",
    "read_back",
    "run_ip",
    "write_all",
    "writer",
]
