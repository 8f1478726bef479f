"""The adversary in real processes: install behaviours and network faults into a `bft.node.Node`.

For the node process (`bft node CONFIG --id N --scenario FILE`):

    node.open()                                   # binds, recovers node.replica
    installation = install(node, scenario, seed=S, crash=not restarted)
    trio.run(serve_until_signal, node, installation)

`install` wraps `node.replica` in `adversary.behaviours.ByzantineNode` with the
node's rules (signing with `node.signer`), sets `node.behaviour_hook` (the
dashboard's set-behaviour switches a behaviour on live; "" clears it), puts
the scenario's network faults on `node.endpoint` as its `send_filter` and
`recv_filter` (targeted rules, by message kind, sender, receiver, view and seq, are
applied there too: the filter decodes what the node sends, and what clients send
it, and a message that carries no view counts in the node's current view), and
arranges that a `crash` rule ends the process (exit status
137, like SIGKILL: recovery goes through the WAL). `serve_until_signal` runs
the node plus the task that releases delayed datagrams, until SIGINT/SIGTERM.
Time windows count from the node's start.

For the launcher (`bft up CONFIG --scenario FILE`, `LocalCluster`):
`launcher_actions(scenario)` lists what only a launcher can do: SIGSTOP and
SIGCONT for `pause` rules with `mode = "sigstop"`, and restarting a node after
its `crash` rule (`restart_after_s`; pass `--adversary-restarted` to the new
incarnation so it does not crash again). `run_launcher(actions, ...)` carries
them out; `pause_process(pid, duration_s)` is the bare SIGSTOP/SIGCONT.

`main()` is a stand-alone `bft node` with the adversary wired in:
`python -m adversary.runtime CONFIG --id N [--scenario FILE] [--app MODULE:FACTORY]
[--state-dir DIR] [--key-dir DIR] [--fsync never] [--seed S] [--adversary-restarted]`.
"""

from __future__ import annotations

import argparse
import os
import random
import signal
import sys
from collections.abc import Awaitable, Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
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
from adversary.scenario import Scenario, load_factory, load_scenario
from bft.errors import ConfigError

CRASH_EXIT_STATUS = 137


@dataclass
class Installation:
    """What `install` put into a node: the wrapper, the datagram faults, the shared clock."""

    node: Any
    wrapper: ByzantineNode
    env: BehaviourEnv
    faults: DatagramFaults | None = None
    rules: tuple[BehaviourRule, ...] = ()

    def elapsed_s(self) -> float:
        """Seconds since the node's start (the origin of every time window)."""
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
                "adversary": self.wrapper.statistics().get("adversary", {})}


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


def install(node: Any, scenario: Scenario, *, seed: int = 0, crash: bool = True,
            on_crash: Callable[[BehaviourRule], None] | None = None) -> Installation:
    """Put `scenario`'s rules for `node.id` and its network faults into an opened `node`.

    Requires `node.open()` first (the replica and the endpoint exist). Raises ConfigError
    for what cannot run in a real process (Twins) or a replica id outside the cluster.
    `crash=False` ignores crash rules (a restarted incarnation); `on_crash` replaces the
    process exit (tests).
    """
    if node.replica is None or node.endpoint is None:
        raise RuntimeError("install() needs an opened node (call node.open() first)")
    config = node.config
    scenario.check_nodes(config.n)
    rules = scenario.rules_for(node.id)
    check_real_processes(scenario, node.id)
    if not crash:
        rules = tuple(r for r in rules if r.behaviour != "crash")
    rng = random.Random(f"{seed}/adversary/{node.id}")
    members = {r.node for r in scenario.rules if r.behaviour == "equivocate"}
    env = BehaviourEnv(node.id, config.n, node.signer, rng, Collusion(members),
                       external_sigstop=True,
                       reply_auth=getattr(node.replica, "reply_auth", None), config=config,
                       verifier=getattr(node, "verifier", None))
    wrapper = ByzantineNode(node.replica, rules, env,
                            on_crash=on_crash or _crash_process(node))
    node.replica = wrapper
    installation = Installation(node, wrapper, env, rules=tuple(rules))

    def hook(name: str, params: dict[str, Any]) -> None:
        try:
            wrapper.set_live_behaviour(name, params)
        except ConfigError as exc:
            log = getattr(node, "log", None)
            if log is not None:
                log.warning("behaviour refused", extra={"fields": {
                    "event": "behaviour_refused", "behaviour": name, "error": str(exc)}})

    node.behaviour_hook = hook
    if scenario.network:
        peer_of_addr = {tuple(n.address): n.id for n in config.nodes}
        faults = DatagramFaults(scenario.network, node.id, peer_of_addr,
                                random.Random(f"{seed}/network/{node.id}"),
                                installation.elapsed_s, view_of=lambda: node.replica.view,
                                limits=config.limits)
        node.endpoint.send_filter = faults.send_filter
        node.endpoint.recv_filter = faults.recv_filter
        installation.faults = faults
    return installation


async def serve_until_signal(node: Any, installation: Installation | None = None,
                             announce: Callable[[], None] | None = None) -> None:
    """Run `node` (and the delayed-datagram task) until SIGINT or SIGTERM. `announce` runs
    once the signals are caught, so whoever waits for it may signal at once (a SIGTERM
    before that would kill the process, not stop the node cleanly)."""
    with trio.open_signal_receiver(signal.SIGINT, signal.SIGTERM) as signals:
        if announce is not None:
            announce()
        async with trio.open_nursery() as nursery:
            nursery.start_soon(node.run)
            if installation is not None:
                nursery.start_soon(installation.release_delayed)
            async for sig in signals:
                node.log.info("signal", extra={"fields": {"event": "signal", "signal": int(sig)}})
                nursery.cancel_scope.cancel()
                break


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


# --------------------------------------------------------------------------
# A `bft node` with the adversary wired in
# --------------------------------------------------------------------------


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m adversary.runtime",
        description="Run one replica like `bft node`, with an adversary scenario installed.")
    parser.add_argument("config", type=Path, help="cluster config (TOML)")
    parser.add_argument("--id", type=int, required=True, help="this node's id")
    parser.add_argument("--scenario", type=Path, default=None,
                        help="scenario file (default: the config's own [[adversary]] tables)")
    parser.add_argument("--app", default=None, metavar="MODULE:FACTORY",
                        help="replicate FACTORY()'s state machine instead of the KV store")
    parser.add_argument("--state-dir", type=Path, default=None)
    parser.add_argument("--key-dir", type=Path, default=None)
    parser.add_argument("--fsync", choices=["always", "never"], default=None)
    parser.add_argument("--seed", type=int, default=0, help="seed of the adversary's choices")
    parser.add_argument("--adversary-restarted", action="store_true",
                        help="this incarnation restarts after a crash rule: do not crash again")
    return parser


def main(argv: list[str] | None = None) -> int:
    """Run the node until SIGINT/SIGTERM; 2 with a one-line error for a bad configuration."""
    from bft.config import ClusterConfig, default_state_dir, load_keyring
    from bft.node import Node

    args = build_parser().parse_args(argv)
    try:
        config = ClusterConfig.load(args.config)
        config.node(args.id)
        scenario = load_scenario(args.scenario if args.scenario is not None else args.config)
        app = load_factory(args.app)() if args.app else None
        state_dir = args.state_dir or default_state_dir(config)
        key_dir = args.key_dir or config.key_dir or state_dir / "keys"
        keyring = load_keyring(config, key_dir)
        node = Node(config, args.id, signer=keyring.signer("replica", args.id),
                    verifier=keyring.verifier(), state_dir=state_dir, app=app, fsync=args.fsync)
        node.open()
        installation = install(node, scenario, seed=args.seed,
                               crash=not args.adversary_restarted)
    except (ConfigError, OSError) as exc:
        print(f"bft: error: {exc}", file=sys.stderr)
        return 2
    (state_dir / f"node-{args.id}.pid").write_text(f"{os.getpid()}\n")
    rules = ", ".join(f"{r.behaviour}@{r.start_s:g}s" for r in installation.rules) or "none"
    print(f"node {args.id} listening on {config.node(args.id)} (view {node.replica.view}, "
          f"executed {node.replica.last_executed}; adversary: {rules}; network faults: "
          f"{len(scenario.network)})", flush=True)
    trio.run(serve_until_signal, node, installation)
    return 0


if __name__ == "__main__":
    sys.exit(main())
