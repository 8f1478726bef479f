"""The adversary in real processes: a `bft.node.NodeExtension` for a `bft.node.Node`.

`AdversaryExtension(scenario, seed=S, crash=not restarted)` plugs into a node through
its declared extension points (never by patching it):

* `wrap_replica`: the replica runs inside `adversary.behaviours.ByzantineNode` with the
  scenario's rules for this node (signing with `node.signer`); a `crash` rule ends the
  process (exit status 137, like SIGKILL: recovery goes through the WAL).
* `send_filter` / `recv_filter`: the scenario's network faults (`DatagramFaults`; targeted
  rules, by message kind, sender, receiver, view and seq, are applied there too: the
  filter decodes what the node sends, and what clients send it, and a message that
  carries no view counts in the node's current view), and the admin's cuts.
* `obey`: the admin's control actions that are the adversary's: pause (the wrapper holds
  every input and runs no timer, then resumes stale), resume, cut, heal, set and clear
  a live behaviour.
* `run`: the task that releases delayed datagrams; `status`: `behaviour` and `paused`
  for the telemetry; `drops`: datagrams dropped by a cut.

`bft node CONFIG --id N --scenario FILE` (or `--adversary`: no rules, the dashboard's
controls only) installs it (the `bft` plugin, adversary/commands.py). In a test:

    node.open()
    extension = install(node, scenario, seed=S)   # node.add_extension(AdversaryExtension(...))

Time windows count from the node's start.

For the launcher (`bft up CONFIG --scenario FILE`, `LocalCluster`):
`launcher_actions(scenario)` lists what only a launcher can do: SIGSTOP and
SIGCONT for `pause` rules with `mode = "sigstop"`, and restarting a node after
its `crash` rule (`restart_after_s`; pass `--adversary-restarted` to the new
incarnation so it does not crash again). `run_launcher(actions, ...)` carries
them out; `pause_process(pid, duration_s)` is the bare SIGSTOP/SIGCONT.
"""

from __future__ import annotations

import collections
import os
import random
import signal
from collections.abc import Awaitable, Callable, Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

import trio

from adversary.behaviours import (
    SIMULATOR_ONLY,
    BehaviourEnv,
    BehaviourRule,
    ByzantineNode,
    Collusion,
)
from adversary.netfaults import DatagramFaults
from adversary.scenario import Scenario
from bft.errors import ConfigError
from bft.node import NodeExtension
from bft.telemetry import ClearBehaviour, Cut, Heal, Pause, Resume, SetBehaviour

CRASH_EXIT_STATUS = 137


def _crash_process(node: Any) -> Callable[[BehaviourRule], None]:
    def crash(rule: BehaviourRule) -> None:
        log = getattr(node, "log", None)
        if log is not None:
            log.warning("adversary crash", extra={"fields": {"event": "crash",
                                                            "adversary": rule.to_dict()}})
            for h in log.handlers:
                h.flush()
        os._exit(CRASH_EXIT_STATUS)

    return crash


def check_real_processes(scenario: Scenario, node: int | None = None) -> None:
    """ConfigError naming the field for a rule that runs only in the simulator: Twins (two
    instances of one identity) and crash points (`crash-at`: a crash at an event of the
    replica and a restart relative to it need the simulator's driver; a launcher restarts
    only at times known in advance). `node`: only that replica's rules."""
    for k, r in enumerate(scenario.rules):
        if node is not None and r.node != node:
            continue
        if r.params.get("mode") == "twins":
            raise ConfigError("Twins (two instances of one identity) runs only in the simulator",
                              file=scenario.source, field=f"adversary[{k}].params.mode",
                              fix="run it with `bft sim --scenario`")
        if r.behaviour in SIMULATOR_ONLY:
            raise ConfigError(f"{r.behaviour} runs only in the simulator (a crash at an event "
                              "of the replica, restarted relative to it)",
                              file=scenario.source, field=f"adversary[{k}].behaviour",
                              fix="run it with `bft sim --scenario`, or use `crash` "
                              "(a crash at a time) in real processes")


class AdversaryExtension(NodeExtension):
    """The adversary's part of a node (see the module's docstring). One per node."""

    def __init__(self, scenario: Scenario | None = None, *, seed: int = 0, crash: bool = True,
                 on_crash: Callable[[BehaviourRule], None] | None = None) -> None:
        self.scenario = scenario if scenario is not None else Scenario()
        self.seed = seed
        self.crash = crash
        self.on_crash = on_crash
        self.node: Any = None
        self.wrapper: ByzantineNode | None = None
        self.env: BehaviourEnv | None = None
        self.faults: DatagramFaults | None = None
        self.rules: tuple[BehaviourRule, ...] = ()
        self.behaviour = ""  # the live behaviour switched on by the admin
        self.cut: set[Any] = set()  # addresses of the peers cut off by the admin
        self._drops: collections.Counter[str] = collections.Counter()
        self._peer_addr: dict[int, Any] = {}

    # -- NodeExtension

    def wrap_replica(self, node: Any, replica: Any) -> Any:
        """Check the scenario against the cluster (ConfigError naming the field: Twins,
        crash points, replicas outside the cluster), then wrap `replica`."""
        if self.wrapper is not None:
            raise RuntimeError("an AdversaryExtension serves one node")
        config = node.config
        scenario = self.scenario
        scenario.check_nodes(config.n)
        check_real_processes(scenario, node.id)
        rules = scenario.rules_for(node.id)
        if not self.crash:
            rules = tuple(r for r in rules if r.behaviour != "crash")
        rng = random.Random(f"{self.seed}/adversary/{node.id}")
        members = {r.node for r in scenario.rules if r.behaviour == "equivocate"}
        self.env = BehaviourEnv(node.id, config.n, node.signer, rng, Collusion(members),
                                external_sigstop=True,
                                reply_auth=getattr(replica, "reply_auth", None), config=config,
                                verifier=node.verifier)
        wrapper = self.wrapper = ByzantineNode(replica, rules, self.env,
                                               on_crash=self.on_crash or _crash_process(node))
        self.node = node
        self.rules = tuple(rules)
        self._peer_addr = {n.id: tuple(n.address) for n in config.nodes}
        if scenario.network:
            peer_of_addr = {tuple(n.address): n.id for n in config.nodes}
            self.faults = DatagramFaults(scenario.network, node.id, peer_of_addr,
                                         random.Random(f"{self.seed}/network/{node.id}"),
                                         self.elapsed_s, view_of=lambda: wrapper.view,
                                         limits=config.limits)
        return wrapper

    def send_filter(self, datagram: bytes, addr: Any) -> list[tuple[bytes, Any]]:  # type: ignore[override]
        if self.cut and tuple(addr) in self.cut:
            self._drops["cut"] += 1
            return []
        if self.faults is not None:
            return self.faults.send_filter(datagram, addr)
        return [(datagram, addr)]

    def recv_filter(self, datagram: bytes, addr: Any) -> list[tuple[bytes, Any]]:  # type: ignore[override]
        if self.cut and tuple(addr) in self.cut:
            self._drops["cut"] += 1
            return []
        if self.faults is not None:
            return self.faults.recv_filter(datagram, addr)
        return [(datagram, addr)]

    def obey(self, node: Any, action: Any, now: float) -> bool:
        wrapper = self.wrapper
        if wrapper is None:
            return False
        if isinstance(action, Pause):
            wrapper.pause_for(now, action.duration_ms / 1000)
        elif isinstance(action, Resume):
            wrapper.resume()
        elif isinstance(action, Cut):
            ids = set(action.peers) or set(self._peer_addr)
            self.cut = {self._peer_addr[i] for i in ids - {node.id} if i in self._peer_addr}
        elif isinstance(action, Heal):
            self.cut = set()
        elif isinstance(action, SetBehaviour):
            self.set_behaviour(action.name, dict(action.params))
        elif isinstance(action, ClearBehaviour):
            self.set_behaviour("", {})
        else:
            return False
        node.tick_soon()  # the wrapper holds (or replays what it held) from now on
        return True

    def status(self, now: float) -> dict[str, Any]:
        return {"behaviour": self.behaviour,
                "paused": self.wrapper is not None and self.wrapper.holding(now)}

    def drops(self) -> Mapping[str, int]:
        return self._drops

    async def run(self, node: Any) -> None:
        await self.release_delayed()

    # -- the rest

    def set_behaviour(self, name: str, params: dict[str, Any]) -> None:
        """Switch a live behaviour on ("" = none); refused (and logged) if unknown."""
        assert self.wrapper is not None
        try:
            self.wrapper.set_live_behaviour(name, params)
        except ConfigError as exc:
            log = getattr(self.node, "log", None)
            if log is not None:
                log.warning("behaviour refused", extra={"fields": {
                    "event": "behaviour_refused", "behaviour": name, "error": str(exc)}})
            return
        self.behaviour = name

    def elapsed_s(self) -> float:
        """Seconds since the node's start (the origin of every time window)."""
        assert self.env is not None
        now = trio.current_time()
        if self.env.origin_s is None:
            self.env.origin_s = now
        return now - self.env.origin_s

    async def release_delayed(self) -> None:
        """Forever: send delayed datagrams when they are due (bypassing the filter)."""
        if self.faults is None:
            return
        endpoint = self.node.endpoint
        while True:
            due = self.faults.next_due()
            now = self.elapsed_s()
            if due is not None and due <= now:
                for data, addr in self.faults.pop_due(now):
                    if endpoint.closed:
                        return
                    await endpoint.send_datagram(data, addr)
                continue
            await trio.sleep(0.01 if due is None else min(0.01, max(0.0005, due - now)))

    def statistics(self) -> dict[str, Any]:
        return {"network_faults": self.faults.statistics() if self.faults else {},
                "adversary": (self.wrapper.statistics().get("adversary", {})
                              if self.wrapper is not None else {}),
                "drops": dict(self._drops)}


def install(node: Any, scenario: Scenario, *, seed: int = 0, crash: bool = True,
            on_crash: Callable[[BehaviourRule], None] | None = None) -> AdversaryExtension:
    """Plug `scenario`'s rules for `node.id` and its network faults into an opened `node`
    (`node.add_extension`). Raises ConfigError for what cannot run in a real process
    (Twins) or a replica id outside the cluster. `crash=False` ignores crash rules (a
    restarted incarnation); `on_crash` replaces the process exit (tests)."""
    if node.replica is None or node.endpoint is None:
        raise RuntimeError("install() needs an opened node (call node.open() first)")
    ext = AdversaryExtension(scenario, seed=seed, crash=crash, on_crash=on_crash)
    node.add_extension(ext)
    return ext


# --------------------------------------------------------------------------
# The launcher's part
# --------------------------------------------------------------------------


@dataclass(frozen=True, order=True)
class LauncherAction:
    """At `at_s` seconds after the launch, do `action` ("sigstop", "sigcont", "restart") to
    node `node`."""

    at_s: float
    node: int
    action: str = field(compare=False)


def launcher_actions(scenario: Scenario) -> list[LauncherAction]:
    """What a launcher must do for `scenario`: SIGSTOP/SIGCONT of `pause` rules with
    `mode = "sigstop"`, and the restart after each `crash` rule that restarts."""
    out = []
    for r in scenario.rules:
        if r.behaviour == "pause" and r.params.get("mode") == "sigstop":
            start, end = r.window()
            out += [LauncherAction(start, r.node, "sigstop"), LauncherAction(end, r.node,
                                                                               "sigcont")]
        elif r.behaviour == "crash" and r.restart_at() is not None:
            out.append(LauncherAction(float(r.restart_at()), r.node, "restart"))  # type: ignore[arg-type]
    return sorted(out)


async def run_launcher(actions: Iterable[LauncherAction], *, pid_of: Callable[[int], int | None],
                       restart: Callable[[int], Awaitable[None]],
                       on_action: Callable[[LauncherAction], None] | None = None) -> None:
    """Carry out `actions` at their times (counted from now): signal the pid `pid_of(node)`
    gives (skipped if None), or `await restart(node)` (after the crashed process is gone)."""
    origin = trio.current_time()
    for action in sorted(actions):
        await trio.sleep_until(origin + action.at_s)
        if on_action is not None:
            on_action(action)
        if action.action == "restart":
            await restart(action.node)
            continue
        pid = pid_of(action.node)
        if pid is None:
            continue
        try:
            os.kill(pid, signal.SIGSTOP if action.action == "sigstop" else signal.SIGCONT)
        except ProcessLookupError:
            pass


async def pause_process(pid: int, duration_s: float) -> None:
    """A true process pause: SIGSTOP `pid`, wait `duration_s`, SIGCONT it (even if cancelled)."""
    os.kill(pid, signal.SIGSTOP)
    try:
        await trio.sleep(duration_s)
    finally:
        try:
            os.kill(pid, signal.SIGCONT)
        except ProcessLookupError:
            pass
