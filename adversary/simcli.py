"""`bft sim`: run the deterministic simulator from the command line.

`add_sim_arguments(parser)` adds the options to an argparse (sub)parser;
`run_sim_command(args) -> int` runs the simulation and prints a summary (or,
with `--json`, one JSON object holding the `SimResult` fields). The exit code
is 0 when every check held and 1 when any failed. A bad argument is reported
by argparse (usage and exit code 2), never as a traceback.

Adversary: `--scenario FILE` runs a scenario (adversary/scenario.py: its
`[sim]` table gives defaults that explicit flags override),
`--byzantine ID:BEHAVIOUR[,ID:BEHAVIOUR]` adds behaviours for the whole run,
`--app module:factory` replicates a user's state machine (it needs a
`random_op(rng, client_id)` method for the workload), `--history FILE`
writes the clients' operations as Jepsen-style JSON lines. The `--json`
object holds `evidence` (the proofs correct replicas produced) and
`byzantine` (the unjudged nodes and their behaviours).

Examples:

    bft sim --nodes 4 --seed 7 --clients 3 --requests 50 --drop 0.05
    bft sim --seed 1 --crash 0@0.5 --restart 0@3 --partition '0,1|2,3@2:5'
    bft sim --config configs/local4.toml --json
    bft sim --scenario configs/scenarios/equivocating-primary.toml
    bft sim --nodes 7 --byzantine 0:equivocate,6:lie --history run.jsonl
    bft sim --net 'kind="drop", rate=1, kinds=["new_view"], views=1' --crash 0@0.5

`--net RULE` adds a network fault written as the keys of a scenario's
`[[network]]` table (targeted ones included: `kinds`, `from`, `to`, `views`,
`seqs`).
"""

from __future__ import annotations

import argparse
import json
import math
import secrets
import sys
from typing import Any

from adversary.sim import Crash, Partition, Silence, SimConfig, Simulation
from bft.errors import ConfigError

#: Defaults of the options a scenario's [sim] table may set (explicit flags win over it).
_DEFAULTS = {"nodes": 4, "clients": 2, "requests": 10, "keys": 3, "until": 120.0,
             "liveness_bound": 30.0}

# --------------------------------------------------------------------------
# Argument types (raise ArgumentTypeError: argparse turns it into a usage error)
# --------------------------------------------------------------------------


def _number(text: str, what: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{what}: expected a number, got {text!r}") from None
    if not math.isfinite(value):
        raise argparse.ArgumentTypeError(f"{what}: expected a finite number, got {text!r}")
    return value


def _node_id(text: str, what: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{what}: expected a replica id, got {text!r}") from None
    if value < 0:
        raise argparse.ArgumentTypeError(f"{what}: replica ids are >= 0, got {value}")
    return value


def probability(text: str) -> float:
    """A probability in [0, 1]."""
    value = _number(text, "probability")
    if not 0.0 <= value <= 1.0:
        raise argparse.ArgumentTypeError(f"probability must be in [0, 1], got {text!r}")
    return value


def positive_int(text: str) -> int:
    """An integer >= 1."""
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected an integer, got {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be >= 1, got {value}")
    return value


def non_negative_int(text: str) -> int:
    """An integer >= 0."""
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected an integer, got {text!r}") from None
    if value < 0:
        raise argparse.ArgumentTypeError(f"must be >= 0, got {value}")
    return value


def seconds(text: str) -> float:
    """A time in seconds, > 0."""
    value = _number(text, "seconds")
    if value <= 0:
        raise argparse.ArgumentTypeError(f"must be > 0 seconds, got {text!r}")
    return value


def delay_range(text: str) -> tuple[float, float]:
    """`LO:HI` milliseconds, 0 <= LO <= HI (or one number for a fixed delay)."""
    parts = text.split(":")
    if len(parts) == 1:
        parts = [parts[0], parts[0]]
    if len(parts) != 2:
        raise argparse.ArgumentTypeError(f"expected LO:HI milliseconds, got {text!r}")
    lo, hi = (_number(p, "delay") for p in parts)
    if not 0.0 <= lo <= hi:
        raise argparse.ArgumentTypeError(f"need 0 <= LO <= HI, got {text!r}")
    return (lo, hi)


def _time_window(text: str, what: str) -> tuple[float, float | None]:
    """`START[:END]` in seconds (END empty or missing: never)."""
    start_text, _, end_text = text.partition(":")
    start = _number(start_text, what) if start_text else 0.0
    end = _number(end_text, what) if end_text else None
    if start < 0:
        raise argparse.ArgumentTypeError(f"{what}: times are >= 0, got {text!r}")
    if end is not None and end <= start:
        raise argparse.ArgumentTypeError(f"{what}: the end must come after the start in {text!r}")
    return start, end


def partition_spec(text: str) -> Partition:
    """`0,1|2,3@START[:HEAL]`: replica groups cut off from each other in that window."""
    groups_text, at, window = text.partition("@")
    groups = []
    for group in groups_text.split("|"):
        ids = tuple(_node_id(x.strip(), "partition") for x in group.split(",") if x.strip())
        if not ids:
            raise argparse.ArgumentTypeError(f"partition: empty group in {text!r}")
        groups.append(ids)
    if len(groups) < 2:
        raise argparse.ArgumentTypeError(
            f"partition: need at least two groups separated by '|', got {text!r}")
    flat = [i for g in groups for i in g]
    if len(set(flat)) != len(flat):
        raise argparse.ArgumentTypeError(f"partition: a replica is in two groups in {text!r}")
    start, heal = _time_window(window, "partition") if at else (0.0, None)
    return Partition(tuple(groups), start, heal)


def crash_spec(text: str) -> tuple[int, float]:
    """`ID[@T]`: replica ID crashes at T seconds (default 0)."""
    node_text, at, time_text = text.partition("@")
    node = _node_id(node_text, "crash")
    when = _number(time_text, "crash") if at else 0.0
    if when < 0:
        raise argparse.ArgumentTypeError(f"crash: time must be >= 0, got {text!r}")
    return node, when


def restart_spec(text: str) -> tuple[int, float]:
    """`ID@T`: replica ID restarts from its storage at T seconds."""
    node_text, at, time_text = text.partition("@")
    if not at:
        raise argparse.ArgumentTypeError(f"restart: expected ID@SECONDS, got {text!r}")
    node = _node_id(node_text, "restart")
    when = _number(time_text, "restart")
    if when <= 0:
        raise argparse.ArgumentTypeError(f"restart: time must be > 0, got {text!r}")
    return node, when


def silent_spec(text: str) -> Silence:
    """`ID[@START[:END]]`: replica ID sends nothing in that window (default: always)."""
    node_text, at, window = text.partition("@")
    node = _node_id(node_text, "silent")
    start, end = _time_window(window, "silent") if at else (0.0, None)
    return Silence(node, start, end)


# --------------------------------------------------------------------------
# The command
# --------------------------------------------------------------------------


def add_sim_arguments(parser: argparse.ArgumentParser) -> None:
    """Add the `bft sim` options to `parser`."""
    size = parser.add_mutually_exclusive_group()
    size.add_argument("--nodes", type=positive_int, default=None, metavar="N",
                      help="number of replicas of a local cluster (default 4)")
    size.add_argument("--config", default=None, metavar="CONFIG",
                      help="cluster config (TOML) to simulate instead of a local cluster")
    parser.add_argument("--seed", type=non_negative_int, default=None, metavar="S",
                        help="random seed (a random one is chosen and printed if omitted)")
    parser.add_argument("--clients", type=non_negative_int, default=None, metavar="C",
                        help="closed-loop clients (default 2)")
    parser.add_argument("--requests", type=non_negative_int, default=None, metavar="R",
                        help="requests per client (default 10)")
    parser.add_argument("--keys", type=positive_int, default=None, metavar="K",
                        help="distinct keys the workload uses (default 3)")
    parser.add_argument("--drop", type=probability, default=0.0, metavar="P",
                        help="probability that a message is lost (default 0)")
    parser.add_argument("--duplicate", type=probability, default=0.0, metavar="P",
                        help="probability that a message is delivered twice (default 0)")
    parser.add_argument("--reorder", type=probability, default=0.0, metavar="P",
                        help="probability that a message gets an extra random delay (default 0)")
    parser.add_argument("--think-ms", type=delay_range, default=None, metavar="LO:HI",
                        help="each client waits this long (milliseconds, drawn) between its "
                        "requests, so that a few requests span the faults' times (default 0: "
                        "back to back, a default run lasts a few tens of ms)")
    parser.add_argument("--delay-ms", type=delay_range, default=(1.0, 5.0), metavar="LO:HI",
                        help="one-way delay range in milliseconds (default 1:5)")
    parser.add_argument("--partition", type=partition_spec, action="append", default=[],
                        metavar="SPEC",
                        help="e.g. '0,1|2,3@2:5': groups cut apart from 2 s to 5 s (repeatable)")
    parser.add_argument("--crash", type=crash_spec, action="append", default=[],
                        metavar="ID[@T]", help="crash replica ID at T seconds (repeatable)")
    parser.add_argument("--restart", type=restart_spec, action="append", default=[],
                        metavar="ID@T", help="restart a crashed replica at T seconds (repeatable)")
    parser.add_argument("--silent", type=silent_spec, action="append", default=[],
                        metavar="ID[@T1[:T2]]",
                        help="replica ID sends nothing from T1 to T2 (repeatable)")
    parser.add_argument("--checkpoint-interval", type=positive_int, default=None, metavar="K",
                        help="override the cluster's checkpoint interval (small values "
                             "exercise checkpoints and state transfer in short runs)")
    parser.add_argument("--log-window", type=positive_int, default=None, metavar="L",
                        help="override the cluster's log window (a multiple of K)")
    parser.add_argument("--until", type=seconds, default=None, metavar="SECONDS",
                        help="virtual time limit (default 120; the run stops earlier once "
                             "every request completed)")
    parser.add_argument("--liveness-bound", type=seconds, default=None, metavar="SECONDS",
                        help="a request must complete this long after faults stop (default 30)")
    parser.add_argument("--ed25519", action="store_true",
                        help="sign with Ed25519 instead of the simulator's fast MAC keys")
    parser.add_argument("--no-codec", action="store_true",
                        help="skip encoding and decoding every message (faster)")
    parser.add_argument("--scenario", default=None, metavar="FILE",
                        help="adversary scenario (TOML: [[adversary]], [[network]], [sim], "
                             "[workload]); see configs/scenarios/")
    parser.add_argument("--net", action="append", default=[], metavar="RULE",
                        help="a network fault, written as the keys of a scenario's [[network]] "
                             "table, e.g. 'kind=\"drop\", rate=1, kinds=[\"commit\"], to=[3], "
                             "views=0' (targeted: kinds, from, to, views, seqs); repeatable")
    parser.add_argument("--byzantine", action="append", default=[], metavar="ID:BEHAVIOUR",
                        help="replica ID behaves as BEHAVIOUR for the whole run (lie, "
                             "equivocate, pause, crash, silent, replay, clock-skew, slow, "
                             "twins); comma-separated or repeated")
    parser.add_argument("--app", default=None, metavar="MODULE:FACTORY",
                        help="replicate the state machine FACTORY() builds instead of the KV "
                             "store (it needs random_op(rng, client_id) for the workload)")
    parser.add_argument("--history", default=None, metavar="FILE",
                        help="write every client operation as Jepsen-style JSON lines")
    parser.add_argument("--json", action="store_true",
                        help="print one JSON object with the result instead of a summary")
    parser.set_defaults(sim_parser=parser)


def _error(args: argparse.Namespace, message: str) -> None:
    parser = getattr(args, "sim_parser", None)
    if parser is None:
        parser = argparse.ArgumentParser(prog="bft sim")
    parser.error(message)  # exits with status 2


def _load_scenario(args: argparse.Namespace) -> Any:
    from adversary.scenario import Scenario, load_scenario, parse_byzantine_spec

    scenario = Scenario()
    if args.scenario is not None:
        try:
            scenario = load_scenario(args.scenario)
        except ConfigError as exc:
            _error(args, f"--scenario: {exc}")
    for spec in args.byzantine:
        try:
            scenario = scenario.with_rules(*parse_byzantine_spec(spec))
        except ConfigError as exc:
            _error(args, str(exc))
    for k, spec in enumerate(getattr(args, "net", None) or ()):
        try:
            scenario = scenario.with_network(parse_net_spec(spec, index=k))
        except ConfigError as exc:
            _error(args, str(exc))
    return scenario


def parse_net_spec(text: str, index: int = 0) -> Any:
    """A `--net` rule: the keys of a [[network]] table as a TOML inline table, with or without
    the braces; ConfigError (naming `--net[index]` and the key) for anything wrong."""
    import tomllib

    from adversary.scenario import parse_scenario

    body = text.strip()
    if not (body.startswith("{") and body.endswith("}")):
        body = "{ " + body + " }"
    where = f"--net[{index}]"
    try:
        table = tomllib.loads(f"rule = {body}")["rule"]
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"not a TOML inline table: {exc}", field=where,
                          fix='e.g. --net \'kind="drop", rate=1, kinds=["commit"], views=0\'') \
            from None
    return parse_scenario({"network": [table]}, source=where).network[0]


def _option(args: argparse.Namespace, name: str, sim: Any, key: str) -> Any:
    """An option's value: the flag if given, else the scenario's [sim] value, else the default."""
    value = getattr(args, name)
    if value is not None:
        return value
    return sim.get(key, _DEFAULTS[name])


def build_sim_config(args: argparse.Namespace) -> SimConfig:
    """The SimConfig the arguments describe (argparse error on inconsistent ones)."""
    scenario = _load_scenario(args)
    sim = dict(scenario.sim)
    cluster = None
    if args.config is not None:
        from bft.config import ClusterConfig

        try:
            cluster = ClusterConfig.load(args.config)
        except (ConfigError, OSError) as exc:
            _error(args, f"--config: {exc}")
    crashes = []
    restarts: dict[int, float] = {}
    for node, when in args.restart:
        if node in restarts:
            _error(args, f"--restart: replica {node} restarts twice")
        restarts[node] = when
    seen = set()
    for node, when in args.crash:
        if node in seen:
            _error(args, f"--crash: replica {node} crashes twice")
        seen.add(node)
        restart = restarts.pop(node, None)
        if restart is not None and restart <= when:
            _error(args, f"--restart: replica {node} restarts at {restart} s, "
                         f"not after its crash at {when} s")
        crashes.append(Crash(node, when, restart))
    if restarts:
        _error(args, f"--restart: replica {min(restarts)} has no --crash")
    overrides = {name: value for name, value in (
        ("checkpoint_interval", args.checkpoint_interval if args.checkpoint_interval is not None
         else sim.get("checkpoint_interval")),
        ("log_window", args.log_window if args.log_window is not None
         else sim.get("log_window"))) if value is not None}
    if cluster is not None and overrides:
        import dataclasses

        try:
            cluster = dataclasses.replace(cluster, **overrides)
        except ConfigError as exc:
            _error(args, str(exc))
    seed = args.seed if args.seed is not None else sim.get("seed")
    if seed is None:
        seed = secrets.randbits(32)
    args.chosen_seed = args.seed is None and "seed" not in sim
    extra: dict[str, Any] = {}
    for key in ("think_ms", "delay_ms"):
        if key in sim:
            extra[key] = tuple(sim[key])
    if args.think_ms is not None:  # the flag wins over the scenario's [sim] think_ms
        extra["think_ms"] = tuple(args.think_ms)
    if "drain_s" in sim:
        extra["drain_s"] = sim["drain_s"]
    if tuple(args.delay_ms) != (1.0, 5.0) or "delay_ms" not in extra:  # an explicit flag wins
        extra["delay_ms"] = tuple(args.delay_ms)
    if args.app is not None:
        from adversary.scenario import load_factory
        from adversary.workloads import AppWorkload

        try:
            factory = load_factory(args.app)
            probe = factory()
        except ConfigError as exc:
            _error(args, str(exc))
        if not callable(getattr(probe, "random_op", None)):
            _error(args, f"--app: {type(probe).__name__} has no random_op(rng, client_id) "
                         "method: the simulator needs it to generate a workload")
        extra["app_factory"] = factory
        extra["workload_factory"] = lambda c, requests, rng: AppWorkload(factory(), c,
                                                                           requests, rng)
    try:
        config = scenario.sim_config(
            seed=seed,
            nodes=args.nodes if args.nodes is not None else sim.get("nodes", 4),
            cluster=cluster,
            cluster_overrides=overrides,
            clients=_option(args, "clients", sim, "clients"),
            requests=_option(args, "requests", sim, "requests"),
            key_count=_option(args, "keys", sim, "keys"),
            drop=args.drop,
            duplicate=args.duplicate,
            reorder=args.reorder,
            partitions=tuple(args.partition),
            crashes=tuple(crashes),
            silent=tuple(args.silent),
            codec=not args.no_codec,
            crypto="ed25519" if args.ed25519 else "sim",
            liveness_bound_s=_option(args, "liveness_bound", sim, "liveness_bound_s"),
            history=args.history is not None,
            **extra,
        )
    except ConfigError as exc:
        _error(args, str(exc))
    if scenario.workload.get("kind") == "fencing" and config.clients < 2:
        _error(args, "--clients: the fencing story needs at least 2 clients")
    args.until_s = args.until if args.until is not None else sim.get("until_s", _DEFAULTS["until"])
    return config


def run_sim_command(args: argparse.Namespace) -> int:
    """Run `bft sim`; 0 when every check held, 1 otherwise."""
    config = build_sim_config(args)
    try:
        simulation = Simulation(config)
    except ConfigError as exc:
        _error(args, str(exc))
        raise  # not reached: _error exits
    if getattr(args, "chosen_seed", args.seed is None):
        print(f"bft sim: seed {config.seed} (replay with --seed {config.seed})",
              file=sys.stderr if args.json else sys.stdout, flush=True)
    result = simulation.run(getattr(args, "until_s", None) or args.until or _DEFAULTS["until"])
    story = _story(simulation)
    if args.history is not None and simulation.history is not None:
        try:
            simulation.history.write(args.history)
        except OSError as exc:
            print(f"bft sim: cannot write --history {args.history}: {exc}", file=sys.stderr)
            return 2
    problems = story.problems() if story is not None else []
    exceed = faults_exceed_f(result)
    if args.json:
        out = result.to_dict()
        if exceed:
            out["faults_exceed_f"] = exceed
        if story is not None:
            out["fencing"] = {"ok": not problems, "problems": problems,
                              "holder_token": story.holder_token,
                              "successor_token": story.successor_token,
                              "stale_write": story.stale_write}
        print(json.dumps(out, sort_keys=True))
    else:
        print(format_summary(result))
        if story is not None:
            print(f"  fencing story: {_story_line(story, problems)}")
    return 0 if result.ok and not problems else 1


def _story_line(story: Any, problems: list[str]) -> str:
    """What the fencing story showed: the stale write refused, or where it went wrong."""
    if problems:
        return "FAILED: " + "; ".join(problems)
    return (f"ok: client 0's write with its old token {story.holder_token} refused: "
            f"{story.stale_write}; client 1 wrote with token {story.successor_token}")


def _story(simulation: Simulation) -> Any:
    """The fencing story of a run whose workload tells it, else None."""
    for workload in simulation.workloads:
        story = getattr(workload, "story", None)
        if story is not None:
            return story
    return None


def faults_exceed_f(result: Any) -> str:
    """A sentence when more replicas are Byzantine than f allows (the checks may then fail
    by design, as the checkers' teeth tests want), else ''."""
    byzantine = sorted(result.byzantine)
    if len(byzantine) <= result.f:
        return ""
    return (f"{len(byzantine)} Byzantine replica{'s' if len(byzantine) != 1 else ''} "
            f"({', '.join(str(i) for i in byzantine)}) but {result.nodes} replicas tolerate "
            f"only f = {result.f} (n >= 3f+1): safety and liveness are not promised, so a "
            "violation below is no bug")


def format_summary(result: Any) -> str:
    """A short human-readable report of a SimResult."""
    per_client = result.requests // max(result.clients, 1)
    lines = [
        (f"bft sim: seed {result.seed}, {result.nodes} replicas (f={result.f}), "
         f"{result.clients} clients x {per_client} requests"),
        (f"  completed {result.completed_requests}/{result.requests} requests, "
         f"committed seq {result.committed_seq}, {result.view_changes} view changes "
         f"(final view {result.final_view})"),
        (f"  messages: {result.messages_sent} sent, {result.messages_delivered} delivered, "
         f"{result.messages_dropped} dropped"),
        (f"  time: {result.virtual_seconds:.3f} s virtual, {result.wall_seconds:.3f} s wall, "
         f"{result.steps} steps"),
    ]
    checks = ", ".join(f"{name} {'ok' if data['ok'] else 'FAILED'}"
                       for name, data in result.checkers.items())
    lines.append(f"  checks: {checks}")
    if result.behaviours:
        rules = ", ".join(f"{b['node']}:{b['behaviour']}" for b in result.behaviours)
        lines.append(f"  adversary: {rules} (not judged: "
                     f"{', '.join(str(i) for i in result.byzantine) or 'none'})")
    if result.network.get("crash_points"):
        lines.append(f"  crash points: {result.network['crash_points']} (restarts: "
                     f"{result.network.get('restarts', 0)})")
    if result.evidence or result.witness:
        culprits = sorted({e["culprit"] for e in result.evidence})
        lines.append(f"  evidence: {len(result.evidence)} proofs against "
                     f"{culprits or 'nobody'}; witness "
                     f"{'ok' if result.evidence_ok else 'FAILED'}")
    faults = result.network.get("faults") or {}
    if faults:
        lines.append("  network faults: " + ", ".join(f"{k} {v}" for k, v in faults.items()))
    exceed = faults_exceed_f(result)
    if exceed:
        lines.append(f"  faults exceed f: {exceed}")
    for violation in result.violations:
        lines.append(f"  violation: {violation}")
    lines.append(f"  result: {'PASS' if result.ok else 'FAIL'}")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    """Stand-alone entry point (`python -m adversary.simcli`)."""
    parser = argparse.ArgumentParser(prog="bft sim", description=__doc__.splitlines()[0])
    add_sim_arguments(parser)
    return run_sim_command(parser.parse_args(argv))


if __name__ == "__main__":
    sys.exit(main())
