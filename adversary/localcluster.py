"""A real local cluster of node processes with an adversary scenario, for tests.

`LocalCluster(root, n=4, scenario=..., app=...)` is the one launcher,
`bft.launcher.LocalCluster`, over a throwaway config (short timeouts, free
loopback ports; `**config_options` set ClusterConfig fields) and fresh keys
under `root`, each replica a `bft node --scenario FILE` process. Use it inside
Trio:

    cluster = LocalCluster(tmp_path, scenario="configs/scenarios/paused-primary.toml")
    try:
        async with cluster.running():        # starts every node and the launcher's actions
            async with cluster.client(0) as client:
                await client.call(Ops.put("k", b"v"))
            await cluster.barrier([1, 2, 3])  # those replicas executed everything so far
        summaries = cluster.summaries         # each node's stop summary (state_digest, ...)
    finally:
        cluster.cleanup()                     # SIGKILL whatever this object started

Guarantees: the launcher's (every wait bounded, failing with the node's output;
only processes this object started are signalled, by pid; a stop SIGCONTs first,
so a paused node can exit).
"""

from __future__ import annotations

import os
import sys
from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import trio

from adversary.runtime import CRASH_EXIT_STATUS, LauncherAction, launcher_actions, run_launcher
from adversary.scenario import Scenario, load_scenario
from bft import launcher
from bft.launcher import config_to_toml, ensure_keys, throwaway_config
from transport.udp import free_udp_ports

__all__ = ["LocalCluster", "crashed_by_rule", "free_udp_ports"]


class LocalCluster(launcher.LocalCluster):
    """Node processes on loopback with an adversary scenario (see the module docstring)."""

    def __init__(self, root: str | Path, n: int = 4, *, scenario: Scenario | str | Path | None
                 = None, app: str | None = None, seed: int = 0, **config_options: Any) -> None:
        self.root = Path(root)
        self.root.mkdir(parents=True, exist_ok=True)
        config_options.setdefault("batch_max_requests", 64)
        config_path = self.root / "cluster.toml"
        config_path.write_text(config_to_toml(throwaway_config(n, name="adv", **config_options)))
        if isinstance(scenario, (str, Path)):
            scenario = load_scenario(scenario)
        self.scenario = scenario or Scenario()
        self.scenario_path = self.scenario.write(self.root / "scenario.toml")
        node_args = ["--scenario", str(self.scenario_path), "--adversary-seed", str(seed)]
        if app:
            node_args += ["--app", app]
        # whatever the caller can import (a user's --app module), the node can too
        path = [p for p in sys.path if p] + [os.environ.get("PYTHONPATH", "")]
        env = dict(os.environ, PYTHONPATH=os.pathsep.join(p for p in path if p))
        super().__init__(config_path, state_dir=self.root / "state", key_dir=self.root / "keys",
                         node_args=node_args, output_dir=self.root, env=env)
        self.scenario.check_nodes(self.config.n)
        ensure_keys(self.config, self.key_dir)
        self.verifier = self.keyring.verifier()
        self.app = app
        self.seed = seed
        self.actions_done: list[LauncherAction] = []
        self.summaries: dict[int, dict[str, Any]] = {}

    def command(self, node_id: int, extra_args: Sequence[str] = (), *,
                restarted: bool = False) -> list[str]:
        """The command line of node `node_id` (`restarted`: after its crash rule)."""
        extra = [*extra_args, "--adversary-restarted"] if restarted else list(extra_args)
        return super().command(node_id, extra)

    async def restart(self, node_id: int) -> None:
        """Restart a node after its crash rule (waits for the crashed process to be gone)."""
        proc = self.procs.get(node_id)
        if proc is not None:
            with trio.move_on_after(self.stop_timeout_s):
                while proc.running():
                    await trio.sleep(0.02)
        self.spawn(node_id, ["--adversary-restarted"])
        await self.wait_ready(node_id)

    @asynccontextmanager
    async def running(self) -> AsyncIterator[LocalCluster]:
        """Start every node, run the launcher's actions meanwhile; on exit stop every node
        cleanly and keep their stop summaries in `summaries`."""
        await self.start()
        async with trio.open_nursery() as nursery:
            nursery.start_soon(lambda: run_launcher(
                launcher_actions(self.scenario), pid_of=self.pid_of, restart=self.restart,
                on_action=self.actions_done.append))
            yield self
            nursery.cancel_scope.cancel()
        self.summaries = await self.stop_all()

    def honest(self) -> list[int]:
        """The replicas whose rules (if any) keep them judged as correct."""
        unjudged = {r.node for r in self.scenario.rules if not r.judged}
        return [i for i in range(self.n) if i not in unjudged]

    async def barrier(self, node_ids: Sequence[int] | None = None,  # type: ignore[override]
                      timeout_s: float = 30.0) -> dict[int, bytes]:
        """`bft.launcher.LocalCluster.barrier`, by default over the honest replicas."""
        return await super().barrier(node_ids if node_ids is not None else self.honest(),
                                     timeout_s=timeout_s)


def crashed_by_rule(status: int | None) -> bool:
    """Whether a node's exit status is the one a crash rule leaves."""
    return status == CRASH_EXIT_STATUS
