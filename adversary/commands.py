"""The adversary's part of the `bft` command line (a `bft.plugins` plugin, pyproject.toml).

* `bft sim` and `bft explore` (adversary/simcli.py, adversary/explore.py);
* `bft node --scenario FILE` plays a scenario's rules for that node (and its network
  faults); `bft node --adversary` obeys the admin's pause, cut and behaviour commands
  (the dashboard's keys, `bft ctl`) without rules. Without either, `bft node` runs the
  production replica, unwrapped, and refuses those commands (counted, logged);
* `bft up --scenario FILE` checks the scenario before any node starts, passes it to
  every node, and carries out the launcher's part (SIGSTOP/SIGCONT pauses, restarts
  after crash rules). Every node `bft up` starts gets `--adversary`, so its dashboard
  and `bft ctl` can pause, cut and switch behaviours.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

__all__ = ["add_commands", "add_node_arguments", "add_up_arguments", "check_up",
           "node_extensions", "up_node_arguments", "up_task"]


# --------------------------------------------------------------------------
# bft sim, bft explore
# --------------------------------------------------------------------------


def add_commands(subparsers: argparse._SubParsersAction) -> None:
    """Add `bft sim` and `bft explore`."""
    from adversary.explore import add_explore_arguments, run_explore_command
    from adversary.simcli import add_sim_arguments, run_sim_command

    parser = subparsers.add_parser(
        "sim", help="run the deterministic simulator (same seed, same run)",
        description="Run n pure replicas and clients in the deterministic simulator over a "
        "simulated network with faults; check safety and liveness after every step. "
        "Exits 0 when every check holds, 1 when any fails.")
    add_sim_arguments(parser)
    parser.set_defaults(handler=run_sim_command)

    parser = subparsers.add_parser(
        "explore", help="a campaign of drawn adversarial simulations on every core",
        description="Draw scenarios (at most f faulty replicas at any time, faults while "
        "requests are in flight), simulate them in worker processes, stop at the first "
        "violation, shrink it and write it as a scenario file `bft sim --scenario` replays; "
        "print and write OUT/summary.json. Exits 0 without violations, 1 with, 2 for bad "
        "arguments.")
    add_explore_arguments(parser)
    parser.set_defaults(handler=run_explore_command, explore_parser=parser)


# --------------------------------------------------------------------------
# bft node
# --------------------------------------------------------------------------


def add_node_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--scenario", type=Path, default=None, metavar="FILE",
                        help="adversarial scenario ([[adversary]]/[[network]] tables) to play "
                        "on this node (implies --adversary)")
    parser.add_argument("--adversary", action="store_true",
                        help="obey the admin's pause, cut and behaviour commands (the "
                        "dashboard, `bft ctl`); without it or --scenario the node runs the "
                        "production replica and refuses them")
    parser.add_argument("--adversary-seed", type=int, default=0, help=argparse.SUPPRESS)
    parser.add_argument("--adversary-restarted", action="store_true", help=argparse.SUPPRESS)


def node_extensions(args: argparse.Namespace, config: Any, node_id: int) -> list[Any]:
    """An `AdversaryExtension` when `--scenario` or `--adversary` asks for one."""
    if args.scenario is None and not args.adversary:
        return []
    from adversary.runtime import AdversaryExtension
    from adversary.scenario import Scenario, load_scenario

    scenario = load_scenario(args.scenario) if args.scenario is not None else Scenario()
    if args.scenario is not None and not scenario.rules_for(node_id) and not scenario.network:
        targets = sorted({r.node for r in scenario.rules})
        print(f"bft node: {args.scenario} has no rule for node {node_id} (it targets node"
              f"{'s' if len(targets) != 1 else ''} {', '.join(map(str, targets)) or 'none'}): "
              f"node {node_id} runs honestly", file=sys.stderr, flush=True)
    return [AdversaryExtension(scenario, seed=args.adversary_seed,
                               crash=not args.adversary_restarted)]


# --------------------------------------------------------------------------
# bft up
# --------------------------------------------------------------------------


def add_up_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--scenario", type=Path, default=None, metavar="FILE",
                        help="adversarial scenario to play on the nodes ([[adversary]] and "
                        "[[network]] tables; see configs/scenarios/)")


def check_up(args: argparse.Namespace, config: Any) -> None:
    """ConfigError naming the field, before any node starts."""
    if args.scenario is None:
        return
    from adversary.runtime import check_real_processes
    from adversary.scenario import load_scenario

    scenario = load_scenario(args.scenario)
    scenario.check_nodes(config.n)
    check_real_processes(scenario)  # Twins, crash-at: simulator only


def up_node_arguments(args: argparse.Namespace, restarted: bool) -> list[str]:
    out = ["--adversary"]
    if args.scenario is not None:
        out += ["--scenario", str(args.scenario)]
        if restarted:
            out.append("--adversary-restarted")  # a scenario's crash happens once
    return out


def up_task(args: argparse.Namespace, config: Any) -> Any:
    """The launcher's part of a scenario (SIGSTOP/SIGCONT pauses, restarts after crashes),
    or None."""
    if args.scenario is None:
        return None
    from adversary.runtime import launcher_actions, run_launcher
    from adversary.scenario import load_scenario

    actions = launcher_actions(load_scenario(args.scenario))
    if not actions:
        return None

    async def run(pid_of: Any, restart: Any, say: Any) -> None:
        async def restart_said(node_id: int) -> None:
            say(f"[scenario] restarting node {node_id}")
            await restart(node_id)

        await run_launcher(actions, pid_of=pid_of, restart=restart_said,
                           on_action=lambda a: say(f"[scenario] {a.action} node {a.node}"))

    return run
