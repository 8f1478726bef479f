"""A real local cluster of node processes with an adversary scenario, for tests.

`LocalCluster(root, n=4, scenario=..., app=...)` writes a cluster config with
short timeouts and free loopback ports under `root`, generates keys, and runs
each replica as `python -m bft node --scenario` (a `bft node` with the
scenario installed). Use it inside Trio:

    cluster = LocalCluster(tmp_path, scenario="configs/scenarios/paused-primary.toml")
    try:
        async with cluster.running():        # starts every node and the launcher's actions
            async with cluster.client(0) as client:
                await client.call(Ops.put("k", b"v"))
            await cluster.barrier([1, 2, 3])  # those replicas executed everything so far
        summaries = cluster.summaries         # each node's stop summary (state_digest, ...)
    finally:
        cluster.cleanup()                     # SIGKILL whatever this object started

Guarantees: every wait is bounded and fails with the node's output; only
processes this object started are ever signalled, by pid; a process is
SIGCONTed before it is stopped, so a paused one can exit.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import trio

from adversary.runtime import CRASH_EXIT_STATUS, LauncherAction, launcher_actions, run_launcher
from adversary.scenario import Scenario, load_scenario
from transport.udp import free_udp_ports

START_TIMEOUT_S = 20.0
STOP_TIMEOUT_S = 10.0



def cluster_toml(name: str, f: int, ports: Sequence[int], *, host: str = "127.0.0.1",
                 clients: int = 8, checkpoint_interval: int = 8, log_window: int = 16,
                 view_change_s: float = 0.5, client_s: float = 0.25,
                 status_interval_s: float = 0.1) -> str:
    """A cluster config with short timeouts (fast view changes and retransmissions)."""
    lines = ["[cluster]", f'name = "{name}"', f"f = {f}", ""]
    for i, port in enumerate(ports):
        lines += ["[[nodes]]", f"id = {i}", f'address = "{host}:{port}"', ""]
    lines += ["[clients]", f"count = {clients}", "",
              "[checkpoints]", f"interval = {checkpoint_interval}", f"log_window = {log_window}",
              "", "[timeouts]", f"view_change_s = {view_change_s}", "view_change_min_s = 0.2",
              "view_change_max_s = 4.0", f"client_s = {client_s}", "",
              "[network]", f"status_interval_s = {status_interval_s}", "",
              "[storage]", 'fsync = "never"', ""]
    return "\n".join(lines)


class LocalCluster:
    """Node processes on loopback with an adversary scenario (see the module docstring)."""

    def __init__(self, root: str | Path, n: int = 4, *, scenario: Scenario | str | Path | None
                 = None, app: str | None = None, seed: int = 0, **config_options: Any) -> None:
        from bft.config import ClusterConfig, identities, key_file_stem, load_keyring
        from bft.crypto import generate_private_key, save_private_key, save_public_key

        self.root = Path(root)
        self.root.mkdir(parents=True, exist_ok=True)
        self.app = app
        self.seed = seed
        self.config_path = self.root / "cluster.toml"
        self.state_dir = self.root / "state"
        self.key_dir = self.root / "keys"
        ports = free_udp_ports(n)
        self.config_path.write_text(cluster_toml("adv", (n - 1) // 3, ports, **config_options))
        self.config = ClusterConfig.load(self.config_path)
        self.key_dir.mkdir(parents=True, exist_ok=True)
        for kind, ident in identities(self.config):
            key = generate_private_key()
            stem = key_file_stem(kind, ident)
            save_private_key(self.key_dir / f"{stem}.key", key)
            save_public_key(self.key_dir / f"{stem}.pub", key)
        self.keyring = load_keyring(self.config, self.key_dir)
        self.verifier = self.keyring.verifier()
        if isinstance(scenario, (str, Path)):
            scenario = load_scenario(scenario)
        self.scenario = scenario or Scenario()
        self.scenario.check_nodes(self.config.n)
        self.scenario_path = self.scenario.write(self.root / "scenario.toml")
        self.procs: dict[int, subprocess.Popen[bytes]] = {}
        self.all_procs: list[subprocess.Popen[bytes]] = []
        self.outputs: dict[int, list[Path]] = {}
        self.actions_done: list[LauncherAction] = []
        self.summaries: dict[int, dict[str, Any]] = {}
        self._timestamps: dict[int, int] = {}

    @property
    def n(self) -> int:
        return self.config.n

    # -- processes -------------------------------------------------------

    def command(self, node_id: int, restarted: bool = False) -> list[str]:
        """The command line of node `node_id`."""
        cmd = [sys.executable, "-m", "bft", "node", str(self.config_path), "--id",
               str(node_id), "--state-dir", str(self.state_dir), "--key-dir", str(self.key_dir),
               "--scenario", str(self.scenario_path), "--adversary-seed", str(self.seed)]
        if self.app:
            cmd += ["--app", self.app]
        if restarted:
            cmd.append("--adversary-restarted")
        return cmd

    def spawn(self, node_id: int, restarted: bool = False) -> subprocess.Popen[bytes]:
        """Start node `node_id` (without waiting for it to listen)."""
        outs = self.outputs.setdefault(node_id, [])
        out_path = self.root / f"node-{node_id}.run{len(outs) + 1}.out"
        outs.append(out_path)
        # whatever the caller can import (a user's --app module), the node can too
        path = [p for p in sys.path if p] + [os.environ.get("PYTHONPATH", "")]
        env = dict(os.environ, PYTHONUNBUFFERED="1",
                   PYTHONPATH=os.pathsep.join(p for p in path if p))
        with open(out_path, "wb") as out:
            proc = subprocess.Popen(self.command(node_id, restarted), stdout=out,
                                    stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, env=env,
                                    start_new_session=True)
        self.procs[node_id] = proc
        self.all_procs.append(proc)
        return proc

    def output(self, node_id: int) -> str:
        """What the latest incarnation of node `node_id` printed."""
        try:
            return self.outputs[node_id][-1].read_text(errors="replace")
        except (KeyError, IndexError, OSError):
            return ""

    async def wait_listening(self, node_id: int, timeout_s: float = START_TIMEOUT_S) -> None:
        """Wait until node `node_id` printed `listening on`; AssertionError with its output if
        it exits or takes longer than `timeout_s`."""
        proc = self.procs[node_id]
        with trio.move_on_after(timeout_s):
            while "listening on" not in self.output(node_id):
                if proc.poll() is not None:
                    raise AssertionError(f"node {node_id} exited with {proc.returncode} before "
                                         f"listening:\n{self.output(node_id)}")
                await trio.sleep(0.02)
            return
        raise AssertionError(f"node {node_id} did not listen within {timeout_s} s:\n"
                             f"{self.output(node_id)}")

    async def restart(self, node_id: int) -> None:
        """Restart a node after its crash rule (waits for the crashed process to be gone)."""
        proc = self.procs.get(node_id)
        if proc is not None:
            with trio.move_on_after(STOP_TIMEOUT_S):
                while proc.poll() is None:
                    await trio.sleep(0.02)
        self.spawn(node_id, restarted=True)
        await self.wait_listening(node_id)

    def pid_of(self, node_id: int) -> int | None:
        proc = self.procs.get(node_id)
        return proc.pid if proc is not None and proc.poll() is None else None

    @asynccontextmanager
    async def running(self) -> AsyncIterator[LocalCluster]:
        """Start every node, run the launcher's actions meanwhile; on exit stop every node
        cleanly and keep their stop summaries in `summaries`."""
        for i in range(self.n):
            self.spawn(i)
        for i in range(self.n):
            await self.wait_listening(i)
        async with trio.open_nursery() as nursery:
            nursery.start_soon(lambda: run_launcher(
                launcher_actions(self.scenario), pid_of=self.pid_of, restart=self.restart,
                on_action=self.actions_done.append))
            yield self
            nursery.cancel_scope.cancel()
        self.summaries = await self.stop_all()

    async def stop_all(self) -> dict[int, dict[str, Any]]:
        """SIGCONT then SIGTERM every running node; their stop summaries by id."""
        running = {i: p for i, p in self.procs.items() if p.poll() is None}
        for p in running.values():
            p.send_signal(signal.SIGCONT)
            p.send_signal(signal.SIGTERM)
        out = {}
        for i, p in running.items():
            with trio.move_on_after(STOP_TIMEOUT_S):
                while p.poll() is None:
                    await trio.sleep(0.02)
            if p.poll() is None:
                raise AssertionError(f"node {i} did not stop:\n{self.output(i)}")
            if p.returncode != 0:
                raise AssertionError(f"node {i} exited with {p.returncode}:\n{self.output(i)}")
            out[i] = self.stop_summary(i)
        return out

    def cleanup(self) -> None:
        """SIGKILL (after SIGCONT) and reap every process this object started still running."""
        for p in self.all_procs:
            if p.poll() is None:
                p.send_signal(signal.SIGCONT)
                p.kill()
            try:
                p.wait(timeout=STOP_TIMEOUT_S)
            except subprocess.TimeoutExpired:
                pass

    # -- logs ------------------------------------------------------------

    def events(self, node_id: int) -> list[dict[str, Any]]:
        """Every JSON log line of node `node_id` (all incarnations)."""
        path = self.state_dir / f"node-{node_id}.log.jsonl"
        try:
            text = path.read_text()
        except FileNotFoundError:
            return []
        out = []
        for line in text.splitlines():
            try:
                out.append(json.loads(line))
            except json.JSONDecodeError:
                continue
        return out

    def stop_summary(self, node_id: int) -> dict[str, Any]:
        """The `stop` line that ends node `node_id`'s log."""
        events = self.events(node_id)
        if not events or events[-1].get("event") != "stop":
            raise AssertionError(f"node {node_id}'s log does not end with a stop line")
        return events[-1]

    def honest(self) -> list[int]:
        """The replicas whose rules (if any) keep them judged as correct."""
        unjudged = {r.node for r in self.scenario.rules if not r.judged}
        return [i for i in range(self.n) if i not in unjudged]

    # -- clients ---------------------------------------------------------

    def _timestamp(self, client_id: int) -> int:
        ts = max(time.time_ns() // 1000, self._timestamps.get(client_id, 0) + 1_000_000)
        self._timestamps[client_id] = ts
        return ts

    def client(self, client_id: int) -> Any:
        """A `bft.node.ClusterClient` (an async context manager closing its socket)."""
        from bft.node import ClusterClient

        return ClusterClient(self.config, client_id,
                             signer=self.keyring.signer("client", client_id),
                             verifier=self.verifier, first_timestamp=self._timestamp(client_id))

    async def barrier(self, node_ids: Sequence[int] | None = None,
                      timeout_s: float = 30.0) -> dict[int, bytes]:
        """Order one read and wait until each replica of `node_ids` (default: the honest ones)
        executed it and replied; replicas execute in order, so each executed everything
        ordered before. AssertionError naming the missing ones after `timeout_s`."""
        from bft import codec
        from bft.app import Ops
        from bft.auth import authenticated_reply, reply_auth_for
        from bft.errors import MalformedMessage
        from bft.messages import Request
        from bft.node import CLIENT_SENDER_BASE
        from transport.udp import UdpEndpoint

        ids = set(node_ids if node_ids is not None else self.honest())
        cid = max(c.id for c in self.config.clients)
        signer = self.keyring.signer("client", cid)
        reply_auth = reply_auth_for(signer, self.verifier)  # replies come MAC'd (or signed)
        request = signer.sign(Request(Ops.get("__barrier__"), self._timestamp(cid), cid))
        data = codec.encode(request)
        results: dict[int, bytes] = {}
        endpoint = UdpEndpoint(CLIENT_SENDER_BASE + cid, "127.0.0.1", 0,
                               peers={nd.id: nd.address for nd in self.config.nodes},
                               max_datagram_bytes=self.config.max_datagram_bytes,
                               max_message_bytes=self.config.limits.max_message_bytes)
        try:
            with trio.move_on_after(timeout_s):
                while not ids <= results.keys():
                    for i in range(self.n):
                        if i not in results:
                            await endpoint.send(i, data)
                    with trio.move_on_after(self.config.client_timeout_s):
                        while not ids <= results.keys():
                            for rec in await endpoint.receive_batch():
                                try:
                                    msg = codec.decode_untrusted(rec.payload, self.config.limits)
                                except MalformedMessage:
                                    continue
                                r = authenticated_reply(msg, self.verifier, reply_auth)
                                if r is not None and r.client == cid and 0 <= r.replica < self.n \
                                        and r.timestamp == request.statement.timestamp:
                                    results.setdefault(r.replica, r.result)
        finally:
            endpoint.close()
        missing = sorted(ids - results.keys())
        if missing:
            raise AssertionError(f"replicas {missing} did not execute the barrier within "
                                 f"{timeout_s} s (replied: {sorted(results)})")
        return results


def crashed_by_rule(status: int | None) -> bool:
    """Whether a node's exit status is the one a crash rule leaves."""
    return status == CRASH_EXIT_STATUS
