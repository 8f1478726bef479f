"""The adversary's part of the `bft` command line (a `bft.plugins` plugin, pyproject.toml).

* `bft sim` and `bft explore` (adversary/simcli.py, adversary/explore.py);
* `bft nemesis` (adversary/nemesis.py): a seeded fault schedule on a real local cluster
  under a recorded load, then one verdict (linearizable, converged, one digest);
* `bft node --scenario FILE` plays a scenario's rules for that node (and its network
  faults); `bft node --adversary` obeys the admin's pause, cut and behaviour commands
  (the dashboard's keys, `bft ctl`) without rules. Without either, `bft node` runs the
  production replica, unwrapped, and refuses those commands (counted, logged);
* `bft up --scenario FILE` checks the scenario before any node starts, passes it to
  every node, and carries out the launcher's part (SIGSTOP/SIGCONT pauses, restarts
  after crash rules) and its `[[attack]]` entries (a `bft attack` process each, at its
  time). Every node `bft up` starts gets `--adversary`, so its dashboard
  and `bft ctl` can pause, cut and switch behaviours;
* `bft attack` sends one bounded attack at a local cluster (adversary/attack.py).
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
    _add_nemesis_parser(subparsers)

    from adversary.attack import add_attack_arguments, run_attack_command

    parser = subparsers.add_parser(
        "attack", help="send one bounded attack at a cluster on this machine (loopback only)",
        description="Send datagrams of one KIND at the nodes of CONFIG, RATE a second for "
        "DURATION seconds (bounded: at most 200000/s and 600 s), and print what was sent. "
        "sigflood: STATUS and Requests in the replicas' and clients' names, signed with "
        "random keys; control: forged admin commands with fresh seq numbers; fragments: "
        "first fragments that never complete, from many ports; malformed: bad CRC, "
        "truncated frames, bad CBOR; replay: acts once as a client (a key of the key "
        "directory), then replays its request and the replies; status: STATUS claiming to "
        "be behind and FETCH-STATE repeats in a replica's name. Refuses any node address "
        "outside 127.0.0.0/8 and ::1. Watch the nodes' drop counters (the dashboard, "
        "telemetry) to see what each attack costs them.")
    add_attack_arguments(parser)
    parser.set_defaults(handler=run_attack_command)


def _add_nemesis_parser(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "nemesis", help="inject seeded faults into a real local cluster under a checked load",
        description="Start every node of CONFIG here (a fresh state directory), run a mixed "
        "workload recording every operation, and meanwhile inject a seeded schedule of "
        "faults on the real processes: kill (SIGKILL, restart from the WAL later), restart "
        "(clean stop and start), pause (SIGSTOP/SIGCONT), partition (admin-signed cut/heal) "
        "and clock (the node's clock off by 2-8 s). One fault per --interval, at most f "
        "nodes at a time. Then heal everything, wait until every node executed the same "
        "seq, compare the state digests there and check the history for linearizability. "
        "Exits 0 when every check holds, 1 when one fails, 2 for bad arguments or config.",
        epilog="example: bft nemesis configs/local-4.toml --faults "
        "kill,pause,partition,clock,restart --interval 10 --duration 600 --seed 1")
    parser.add_argument("config", metavar="CONFIG", type=Path,
                        help="cluster config (TOML); loopback addresses only")
    parser.add_argument("--faults", default="kill,pause,partition,clock,restart",
                        metavar="KINDS", help="fault kinds separated by commas, from kill, "
                        "pause, partition, clock, restart (default: all)")
    parser.add_argument("--interval", type=float, default=10.0, metavar="S",
                        help="one fault per interval of S seconds (default 10)")
    parser.add_argument("--duration", type=float, default=60.0, metavar="S",
                        help="how long the load runs with faults (default 60); must hold an "
                        "interval per fault kind")
    parser.add_argument("--seed", type=int, default=0, help="seeds the schedule and the "
                        "workload (default 0); the same seed draws the same schedule")
    parser.add_argument("--beyond-f", action="store_true",
                        help="fault f+1 nodes at a time (liveness may be lost; safety and "
                        "the checks must still hold)")
    parser.add_argument("--history", type=Path, default=None, metavar="FILE",
                        help="also write the history (JSON lines) here, for `bft check`")
    parser.add_argument("--state-dir", type=Path, default=None, metavar="DIR",
                        help="the nodes' state directory (default: a fresh temporary one, "
                        "removed afterwards)")
    parser.add_argument("--converge-timeout", type=float, default=60.0, metavar="S",
                        help="how long to wait at the end for every node to catch up "
                        "(default 60)")
    parser.add_argument("--check-timeout", type=float, default=300.0, metavar="S",
                        help="how long the linearizability check may search (default 300; "
                        "out of time fails the verdict)")
    parser.add_argument("--json", action="store_true", help="print the verdict as one JSON "
                        "object (the progress lines go to stderr)")
    parser.set_defaults(handler=run_nemesis_command)


def run_nemesis_command(args: argparse.Namespace) -> int:
    """`bft nemesis`: 0 when every check holds, 1 when one fails, 2 for bad arguments."""
    import trio

    from adversary.nemesis import NemesisOptions, format_report, report_json, run_nemesis
    from bft.cliutil import CliError, load_config

    load_config(args.config)  # CliError / ConfigError now, naming the file or field
    if args.state_dir is not None and args.state_dir.exists() and any(args.state_dir.iterdir()):
        raise CliError(f"--state-dir {args.state_dir} is not empty: nemesis starts a fresh "
                       "cluster (give a new directory, or none for a temporary one)")
    if not (args.converge_timeout > 0 and args.check_timeout > 0):
        raise CliError("--converge-timeout and --check-timeout must be > 0")
    opts = NemesisOptions(args.config, [k.strip() for k in args.faults.split(",") if k.strip()],
                          args.interval, args.duration, seed=args.seed, beyond_f=args.beyond_f,
                          history_path=args.history, state_dir=args.state_dir,
                          converge_timeout_s=args.converge_timeout,
                          check_timeout_s=args.check_timeout)
    out = sys.stderr if args.json else sys.stdout

    def say(line: str) -> None:
        print(line, file=out, flush=True)

    from bft.launcher import LaunchError

    try:
        report = trio.run(run_nemesis, opts, say)
    except (ValueError, LaunchError) as exc:  # arguments; a node that cannot start at all
        raise CliError(str(exc)) from None
    print(report_json(report) if args.json else format_report(report), flush=True)
    return 0 if report["ok"] else 1



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
    if scenario.attacks:
        from adversary.attack import AttackRefused, loopback_targets
        from bft.cliutil import CliError

        try:
            loopback_targets(config, None)
        except AttackRefused as exc:
            raise CliError(f"{args.scenario}: [[attack]]: {exc}") from None


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

    scenario = load_scenario(args.scenario)
    actions = launcher_actions(scenario)
    if not actions and not scenario.attacks:
        return None

    async def run(pid_of: Any, restart: Any, say: Any) -> None:
        async def restart_said(node_id: int) -> None:
            say(f"[scenario] restarting node {node_id}")
            await restart(node_id)

        import trio

        async with trio.open_nursery() as nursery:
            for k, spec in enumerate(scenario.attacks):
                nursery.start_soon(run_attack_process, k, spec, args, say)
            await run_launcher(actions, pid_of=pid_of, restart=restart_said,
                               on_action=lambda a: say(f"[scenario] {a.action} node {a.node}"))

    return run


async def run_attack_process(k: int, spec: Any, args: argparse.Namespace, say: Any) -> int:
    """Run `[[attack]]` entry `k` as a `bft attack` process at its time (`spec.at_s` from
    now), its output in STATE_DIR/attack-K.out and its summary said; killed (by its pid)
    if it outlives its duration by 10 s. Its exit status."""
    import trio

    from adversary.attack import attack_command
    from bft.cliutil import load_config, state_dir
    from bft.launcher import reap, spawn

    await trio.sleep(spec.at_s)
    states = state_dir(load_config(args.config), getattr(args, "state_dir", None))
    states.mkdir(parents=True, exist_ok=True)
    out_path = states / f"attack-{k}.out"
    say(f"[scenario] attack {spec.kind}: {spec.rate:g}/s for {spec.duration_s:g} s")
    with open(out_path, "wb") as out:
        proc = spawn(attack_command(spec, args.config, states), stdout=out)
    try:
        status = await reap(proc, spec.duration_s + 10.0)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    lines = out_path.read_text(errors="replace").splitlines()
    summary = [line for line in lines if not line.startswith("[attack")][-12:]
    for line in summary:
        say(f"[scenario] {line}")
    if status != 0:
        say(f"[scenario] attack {k} ({spec.kind}) exited with status {status}")
    return status
