"""Helpers to run a real cluster of `bft node` processes from a Trio test.

`Cluster` is the one launcher, `bft.launcher.LocalCluster`, over a throwaway
config with short timeouts and free ports in a test's temporary directory, with
keys made by `bft keygen`; it starts, kills, restarts and stops `python -m bft
node ...` processes (optionally inside a network namespace, through `ip netns
exec`). Every wait is bounded by a hard timeout, and `Cluster.cleanup()` (called
from fixture finalizers) SIGKILLs every process this object started that is
still running, by its pid. As a second line of defence each node dies with the
test process (the launcher's PR_SET_PDEATHSIG) even if the finalizer never runs.

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
import os
import subprocess
import sys
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import trio

from bft.app import Ops, decode_result
from bft.cli import main as bft_main
from bft.launcher import (
    LaunchError,
    LocalCluster,
    NodeProcess,
    config_to_toml,
    throwaway_config,
)
from bft.node import ClientError, ClusterClient
from transport.udp import free_udp_ports

START_TIMEOUT_S = 15.0
STOP_TIMEOUT_S = 10.0
_LIBC = ctypes.CDLL(None, use_errno=True)


# ---------------------------------------------------------------------- the cluster

NodeFailed = LaunchError  # the launcher's error: a node that did not start or stop cleanly


class Cluster(LocalCluster):
    """`bft.launcher.LocalCluster` of a throwaway config under `root` (short timeouts, free
    ports, fresh keys), optionally with each node in its own network namespace (`netns`)
    and the test's client sockets in `client_netns`, at `client_host`."""

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
        self.netns = list(netns) if netns is not None else None
        self.client_host = client_host
        self.client_netns = client_netns
        config_path = self.root / "cluster.toml"
        config_path.write_text(
            config_to_toml(throwaway_config(n, hosts=hosts, ports=ports, **config_options))
        )
        key_dir = self.root / "keys"
        with open(os.devnull, "w") as devnull:  # keygen prints every public key
            saved, sys.stdout = sys.stdout, devnull
            try:
                status = bft_main(["keygen", str(config_path), "--key-dir", str(key_dir)])
            finally:
                sys.stdout = saved
        assert status == 0, "bft keygen failed"
        super().__init__(
            config_path,
            state_dir=self.root / "state",
            key_dir=key_dir,
            output_dir=self.root,
            start_timeout_s=START_TIMEOUT_S,
            stop_timeout_s=STOP_TIMEOUT_S,
        )
        self.verifier = self.keyring.verifier()

    def command(self, node_id: int, extra_args: Sequence[str] = ()) -> list[str]:
        """The node's command line, inside its namespace if any."""
        cmd = super().command(node_id, extra_args)
        if self.netns is not None:
            cmd = ["ip", "netns", "exec", self.netns[node_id], *cmd]
        return cmd

    def problems(self) -> list[str]:
        """What no test here should ever see, all faults being crashes and partitions: a
        node that exited without being signalled, an error logged, evidence of
        equivocation, or a replica whose checkpoint diverged from the stable one."""
        found = []
        for proc in self.all_procs:
            status = proc.popen.poll()
            if status is not None and proc.pid not in self.signalled:
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

    # -- clients (in client_netns, at client_host)

    @contextmanager
    def _client_side(self) -> Iterator[None]:
        """Where client sockets are made: in `client_netns` if set, else right here."""
        if self.client_netns is None:
            yield
        else:
            with in_netns(self.client_netns):
                yield

    def client(self, client_id: int, *, host: str | None = None) -> ClusterClient:
        """An in-process client (its socket on `client_host`). Close it when done."""
        with self._client_side():
            return super().client(client_id, host=host or self.client_host)

    def client_endpoint(self, client_id: int, host: str = "127.0.0.1") -> Any:
        with self._client_side():
            return super().client_endpoint(client_id, self.client_host)

    async def barrier(
        self, node_ids: Sequence[int] | None = None, timeout_s: float = 20.0
    ) -> dict[int, bytes]:
        """`LocalCluster.barrier`; the replicas that replied must agree on the result."""
        results = await super().barrier(node_ids, timeout_s=timeout_s)
        assert len(set(results.values())) == 1, f"replicas disagree on the barrier: {results}"
        return results


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
    "config_to_toml",
    "decode",
    "events_since_last_start",
    "free_udp_ports",
    "in_netns",
    "read_back",
    "run_ip",
    "throwaway_config",
    "write_all",
    "writer",
]
