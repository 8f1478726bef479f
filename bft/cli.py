"""The `bft` command line.

Structure, to keep it easy to extend: `build_parser()` builds one argparse
parser; each subcommand has an `_add_<name>_parser(subparsers)` function that
declares its arguments and sets `handler` to a `cmd_<name>(args) -> int`
function. `main()` parses, runs the handler and turns the expected errors
(`EXPECTED_ERRORS`) into one line `bft: error: ...` on stderr and exit
status 2, never a traceback. A bug (anything else) still shows its traceback.

Packages above bft/ add to it as plugins (bft/plugins.py, the entry-point group
`bft.plugins`): adversary/ contributes `bft sim`, `bft explore` and the scenario options
of `bft node`/`bft up`; tui/ contributes `bft tui`, `bft ctl` and `bft up`'s dashboard.
This module imports none of them: it only loads the plugins. What subcommands share
(CliError, the config loader, the state and key directories) is in bft/cliutil.py.
"""

from __future__ import annotations

import argparse
import math
import os
import sys
import time
from collections.abc import Sequence
from pathlib import Path

from bft.cliutil import CliError, key_dir, load_config, load_factory, load_keys, state_dir
from bft.config import (
    ClusterConfig,
    DuplicateKeyError,
    format_address,
    identities,
    inline_public_key,
    key_file_stem,
    load_keyring,
    resolve_key_dir,
)
from bft.crypto import generate_private_key, public_key_bytes, save_private_key, save_public_key
from bft.errors import ClientIdInUse, ConfigError
from bft.plugins import LoadedPlugins, load_plugins
from bft.workload import DEFAULT_KEYS, WORKLOADS
from transport.udp import TransportError

__all__ = ["EXPECTED_ERRORS", "CliError", "build_parser", "main"]


#: Errors printed as `bft: error: ...` with exit status 2.
EXPECTED_ERRORS: tuple[type[BaseException], ...] = (CliError, ConfigError, OSError,
                                                     TransportError, ClientIdInUse)

EXIT_USAGE = 2


# --------------------------------------------------------------------------
# bft keygen
# --------------------------------------------------------------------------


def _add_keygen_parser(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "keygen",
        help="create Ed25519 keys for the nodes, clients and admin of a config",
        description="Create an Ed25519 key pair for every node, client and the admin of a "
        "cluster (or, with --only, for the identities named): <kind>-<id>.key (mode 0600) "
        "and <kind>-<id>.pub in the key directory, and print each public key. Identities "
        "whose public key is written in the config are skipped. Existing keys are never "
        "replaced without --force. The key directory is chosen as in every command: "
        "--key-dir, else the config's key_dir, else DIR/keys of --state-dir DIR, else "
        "state/<cluster name>/keys.",
    )
    parser.add_argument("config", metavar="CONFIG", type=Path, help="cluster config (TOML)")
    parser.add_argument("--state-dir", metavar="DIR", type=Path, default=None,
                        help="state directory whose keys/ to write (default: "
                        "state/<cluster name>)")
    parser.add_argument(
        "--key-dir",
        metavar="DIR",
        type=Path,
        default=None,
        help="where to write the keys (default: the config's key_dir, "
        "else DIR/keys of the state directory)",
    )
    parser.add_argument("--only", metavar="NAMES", default=None,
                        help="only these identities, separated by commas: replica-N, "
                        "client-N or admin (the multi-host way: each host makes its own "
                        "key and prints the public key line for the config)")
    parser.add_argument("--force", action="store_true", help="replace existing key files")
    parser.set_defaults(handler=cmd_keygen)


def _only_identities(config: ClusterConfig, only: str) -> list[tuple[str, int]]:
    by_name = {key_file_stem(*identity): identity for identity in identities(config)}
    chosen = []
    for name in (part.strip() for part in only.split(",")):
        if name not in by_name:
            examples = ", ".join(list(by_name)[:3])
            raise CliError(f"--only: no identity {name!r} in the config (names are "
                           f"replica-N, client-N and admin, e.g. {examples}, admin)")
        chosen.append(by_name[name])
    return list(dict.fromkeys(chosen))


def _config_line(config: ClusterConfig, kind: str, id: int, public_hex: str) -> str:
    if kind == "replica":
        return f'under [[nodes]] id = {id}: public_key = "{public_hex}"'
    if kind == "client":
        return (f'as [[clients]] id = {id}, public_key = "{public_hex}" (or copy client-{id}'
                '.pub to the key directory of every node)')
    return f'under [admin]: public_key = "{public_hex}"'


def cmd_keygen(args: argparse.Namespace) -> int:
    """Generate and save the cluster's keys (or those of --only); print the public keys."""
    config = _load_config(args.config)
    key_dir = _key_dir(config, args.state_dir, args.key_dir)
    chosen = _only_identities(config, args.only) if args.only else identities(config)
    todo = []
    for identity in chosen:
        if inline_public_key(config, identity) is not None:
            print(f"{key_file_stem(*identity):<12} public key given in the config: skipped")
        else:
            todo.append(identity)
    if not args.force:
        existing = [
            path.name
            for kind, id in todo
            for path in (
                key_dir / f"{key_file_stem(kind, id)}.key",
                key_dir / f"{key_file_stem(kind, id)}.pub",
            )
            if path.exists()
        ]
        if existing:
            shown = ", ".join(existing[:6]) + (", ..." if len(existing) > 6 else "")
            raise CliError(
                f"keys already exist in {key_dir}: {shown} (use --force to replace them)"
            )
    key_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
    lines = []
    for kind, id in todo:
        key = generate_private_key()
        stem = key_file_stem(kind, id)
        save_private_key(key_dir / f"{stem}.key", key, force=args.force)
        save_public_key(key_dir / f"{stem}.pub", key, force=args.force)
        public_hex = public_key_bytes(key).hex()
        print(f"{stem:<12} {public_hex}")
        lines.append(f"  {stem}: {_config_line(config, kind, id, public_hex)}")
    print(f"wrote {len(todo)} key pair{'s' if len(todo) != 1 else ''} to {key_dir}")
    if args.only and lines:
        print("for the config of every host:")
        print("\n".join(lines))
    return 0


# --------------------------------------------------------------------------
# bft config check
# --------------------------------------------------------------------------


def _add_config_parser(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "config", help="inspect a cluster config", description="Inspect a cluster config."
    )
    actions = parser.add_subparsers(dest="config_command", metavar="ACTION", required=True)
    check = actions.add_parser(
        "check",
        help="validate a config and print a summary",
        description="Validate a cluster config and print a summary: n, f, quorum, nodes, "
        "and whether the public keys are in place.",
    )
    check.add_argument("config", metavar="CONFIG", type=Path, help="cluster config (TOML)")
    check.add_argument(
        "--key-dir",
        metavar="DIR",
        type=Path,
        default=None,
        help="key directory to look in (default: the config's key_dir, "
        "else DIR/keys of the state directory)",
    )
    check.add_argument("--state-dir", metavar="DIR", type=Path, default=None,
                       help="state directory (default: state/<cluster name>)")
    check.set_defaults(handler=cmd_config_check)
    from bft.opscli import add_config_new_parser

    add_config_new_parser(actions)


def _describe_ids(ids: Sequence[int]) -> str:
    if not ids:
        return "none"
    if list(ids) == list(range(len(ids))):
        return f"{len(ids)} (ids 0..{len(ids) - 1})"
    shown = ", ".join(str(i) for i in ids[:10]) + (", ..." if len(ids) > 10 else "")
    return f"{len(ids)} (ids {shown})"


def cmd_config_check(args: argparse.Namespace) -> int:
    """Validate the config (errors exit 2) and print a summary; missing keys are reported."""
    config = ClusterConfig.load(args.config)
    print(f"{args.config}: valid")
    print(f"  cluster      {config.name}")
    print(f"  replicas     n={config.n} f={config.f} quorum={config.quorum} weak={config.weak}")
    for node in config.nodes:
        label = "nodes" if node.id == 0 else ""
        key = "  (public key inline)" if node.public_key is not None else ""
        if node.listen is not None:
            key += f"  (listens on {format_address(*node.listen)})"
        print(f"  {label:<12} {node.id:>3}  {node}{key}")
    print(f"  clients      {_describe_ids([c.id for c in config.clients])}")
    monitor = format_address(*config.monitor) if config.monitor else "none"
    print(f"  monitor      {monitor}")
    print(
        f"  batching     up to {config.batch_max_requests} requests or "
        f"{config.batch_delay_s * 1000:g} ms, {config.max_in_flight} in flight"
    )
    print(f"  checkpoints  every {config.checkpoint_interval}, log window {config.log_window}")
    print(
        f"  timeouts     view change {config.view_change_timeout_s:g} s "
        f"({config.view_change_timeout_min_s:g}..{config.view_change_timeout_max_s:g} s), "
        f"client {config.client_timeout_s:g} s"
    )
    print(f"  storage      fsync {config.fsync}")
    try:
        keyring = load_keys(config, args.state_dir, args.key_dir)
    except DuplicateKeyError:
        raise  # a broken config, not keys yet to generate
    except ConfigError as exc:
        print(f"  keys         not ready: {exc}")
    else:
        print(
            f"  keys         all {len(keyring.public_keys)} public keys found ({keyring.key_dir})"
        )
    return 0


# The state and key directories, the config loader: bft/cliutil.py (plugins use them too)
_state_dir = state_dir
_key_dir = key_dir
_load_config = load_config

_PLUGINS: LoadedPlugins | None = None


def plugins() -> LoadedPlugins:
    """The `bft.plugins` plugins of this installation (loaded once per process)."""
    global _PLUGINS
    if _PLUGINS is None:
        _PLUGINS = load_plugins()
    return _PLUGINS


def _call_hooks(loaded: LoadedPlugins, name: str, *args: object) -> list[object]:
    return [fn(*args) for _, fn in loaded.hooks(name)]


# --------------------------------------------------------------------------
# bft node
# --------------------------------------------------------------------------


def _add_node_parser(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "node", help="run one replica of a cluster (the multi-host way)",
        description="Run one replica of the cluster described by CONFIG. Its write-ahead log "
        "and JSON-lines log live in the state directory; keys are read from the key "
        "directory (run `bft keygen CONFIG` first). Stops cleanly on SIGINT/SIGTERM.")
    parser.add_argument("config", metavar="CONFIG", type=Path, help="cluster config (TOML)")
    parser.add_argument("--id", type=int, required=True, metavar="N",
                        help="this node's id in the config")
    parser.add_argument("--state-dir", type=Path, default=None, metavar="DIR",
                        help="state directory (default: state/<cluster name>)")
    parser.add_argument("--key-dir", type=Path, default=None, metavar="DIR",
                        help="key directory (default: the config's key_dir, else DIR/keys "
                        "of the state directory)")
    parser.add_argument("--fsync", choices=["always", "never"], default=None,
                        help="WAL fsync policy (default: the config's, normally always)")
    parser.add_argument("--events", action="store_true",
                        help="also print one line per event on stdout (UTC times, commits "
                        "summed over 0.5 s)")
    parser.add_argument("--event-format", choices=["text", "json"], default="text",
                        help="with --events: readable lines (default) or one JSON object "
                        "per line (what `bft up` reads; see bft/eventlines.py)")
    parser.add_argument("--ready-file", type=Path, default=None, metavar="FILE",
                        help="once bound, recovered and stoppable by SIGTERM, write FILE (JSON: "
                        "pid, id, address, view, last_executed; for launchers, see "
                        "bft/launcher.py)")
    parser.add_argument("--app", default=None, metavar="MODULE:FACTORY",
                        help="replicate your own StateMachine instead of the KV store")
    _add_plugin_arguments(parser, "add_node_arguments")
    parser.set_defaults(handler=cmd_node)


def _add_plugin_arguments(parser: argparse.ArgumentParser, hook: str) -> None:
    loaded = _active()
    for plugin, fn in list(loaded.hooks(hook)):
        try:
            fn(parser)
        except (argparse.ArgumentError, ValueError, TypeError) as exc:
            loaded.disable(plugin, f"plugin {plugin.name!r} failed to add its options "
                           f"({hook}): {exc}; left out")


def cmd_node(args: argparse.Namespace) -> int:
    import trio

    from bft.cliutil import load_factory
    from bft.node import Node, serve_until_signal, tune_gc

    config = _load_config(args.config)
    config.node(args.id)  # a clear error for an id not in the config
    state_dir = _state_dir(config, args.state_dir)
    keyring = load_keys(config, args.state_dir, args.key_dir)
    app = load_factory(args.app)() if args.app else None
    # what plugins plug in (the adversary, with --scenario or --adversary); else nothing
    extensions = [ext for exts in _call_hooks(_active(), "node_extensions", args, config, args.id)
                  for ext in exts]  # type: ignore[attr-defined]
    events = _node_events(args.id, args.event_format) if args.events else None
    if events is not None:
        extensions.append(_event_ticker(events))
    node = Node(config, args.id, signer=keyring.signer("replica", args.id),
                verifier=keyring.verifier(), state_dir=state_dir, fsync=args.fsync, app=app,
                log_echo=False, on_effect=_event_printer(events) if events else None,
                extensions=extensions)
    node.open()  # bind and recover before announcing: errors surface here
    from bft.lifecycle import pid_path, remove_pid_file, write_pid_file

    write_pid_file(pid_path(state_dir, args.id))  # only once bound: `bft down` trusts it
    me = config.node(args.id)
    tune_gc()

    def announce() -> None:
        core = node.core
        assert core is not None  # open() made it
        metrics = node.metrics.url if node.metrics is not None else None
        where = (f"{format_address(*me.bind_address)}, advertised as {me}"
                 if me.listen is not None else str(me))
        if events is None or args.event_format == "text":
            print(f"node {args.id} listening on {where} (view {core.view}, "
                  f"executed {core.last_executed})"
                  + (f"; metrics on {metrics}" if metrics else ""), flush=True)
        if events is not None and args.event_format == "json":
            events.ready(time.time(), address=str(me), view=core.view,
                         last_executed=core.last_executed, metrics=metrics)
        if args.ready_file is not None:
            from bft.launcher import write_ready_file

            write_ready_file(args.ready_file, id=args.id, address=str(me),
                             view=core.view, last_executed=core.last_executed)

    try:
        trio.run(serve_until_signal, node, announce)
    finally:
        remove_pid_file(pid_path(state_dir, args.id))
        if events is not None:
            events.flush(time.time())
    return 0


def _node_events(node_id: int, fmt: str):  # type: ignore[no-untyped-def]
    """`bft node --events`: a `bft.eventlines.NodeEvents` printing JSON lines, or (text)
    readable lines through a one-node `ClusterLines`."""
    from bft.eventlines import ClusterLines, NodeEvents

    if fmt == "json":
        return NodeEvents(node_id, lambda line: print(line, flush=True))
    lines = ClusterLines(1, lambda line: print(line, flush=True), window_s=0.0,
                         commit_every_s=0.0)
    return NodeEvents(node_id, lambda line: lines.node_output(node_id, line, time.time()))


def _event_ticker(events):  # type: ignore[no-untyped-def]
    """A task beside the node's loop (a `bft.node.NodeExtension`): commits summed by
    `NodeEvents` are shown even when no more come."""
    import trio

    from bft.node import NodeExtension

    class EventTicker(NodeExtension):
        async def run(self, node) -> None:  # type: ignore[no-untyped-def]
            while True:
                await trio.sleep(0.25)
                events.tick(time.monotonic(), time.time())

    return EventTicker()


def _event_printer(events):  # type: ignore[no-untyped-def]
    from bft.effects import Event, Evidence, Executed

    def show(e: object) -> None:
        if isinstance(e, Executed):
            events.executed(e.seq, e.view, len(e.batch.requests), time.monotonic(), time.time())
        elif isinstance(e, Event):
            events.event(e.kind, e.fields, time.time())
        elif isinstance(e, Evidence):
            events.event("evidence", {"culprit": e.culprit, "kind": e.kind}, time.time())

    return show


# --------------------------------------------------------------------------
# bft client
# --------------------------------------------------------------------------


def _add_client_parser(subparsers: argparse._SubParsersAction) -> None:
    from bft.opscli import add_json_hex_options

    parser = subparsers.add_parser(
        "client", help="run one operation against a running cluster",
        description="Send one operation to the cluster and print the agreed result (f+1 "
        "matching replies): a get's value, `ok` for a write, `granted token=T expires=TIME` "
        "for a lock (times in UTC). Any other outcome exits non-zero with one line on "
        "stderr (exit codes below). A client id is used by one process at a time (a lock "
        "in the state directory): without --id the client takes the first id of the config "
        "that no other process uses (`bft up --load` takes the first free ones too); with "
        "--id N it fails at once (exit 2) if another process uses N.",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog="operations:\n  put KEY VALUE [--fence NAME:TOKEN] | get KEY | delete KEY "
        "[--fence NAME:TOKEN]\n  cas KEY OLD NEW (OLD '-' for absent) | lock NAME --ttl S | "
        "unlock NAME TOKEN\n\nexit codes:\n  0 ok   2 usage or config error   3 not found   "
        "4 precondition failed (cas)\n  5 lock held by another client   6 stale fencing token"
        "   7 refused by the cluster\n  8 unknown outcome (no f+1 matching replies in time; "
        "a write may or may not\n    have been applied)")
    parser.add_argument("config", metavar="CONFIG", type=Path, help="cluster config (TOML)")
    parser.add_argument("--id", type=int, default=None, metavar="C",
                        help="client id (default: the first id of the config that no other "
                        "process using this state directory holds)")
    parser.add_argument("--state-dir", type=Path, default=None, metavar="DIR",
                        help="state directory (default: state/<cluster name>)")
    parser.add_argument("--key-dir", type=Path, default=None, metavar="DIR",
                        help="key directory (default: the config's key_dir, else DIR/keys "
                        "of --state-dir, else state/<cluster name>/keys)")
    parser.add_argument("--timeout", type=float, default=10.0, metavar="S",
                        help="seconds to wait for f+1 matching replies (default 10)")
    parser.add_argument("--ttl", type=float, default=None, metavar="S",
                        help="lease in seconds (lock)")
    parser.add_argument("--fence", default=None, metavar="NAME:TOKEN",
                        help="fencing token for put/delete/cas: the lock NAME and the number "
                        "its lock printed (granted token=TOKEN), e.g. printer:65537")
    add_json_hex_options(parser)
    parser.add_argument("op", choices=["put", "get", "delete", "cas", "lock", "unlock"],
                        metavar="OP", help="put, get, delete, cas, lock or unlock")
    parser.add_argument("args", nargs="*", metavar="ARGS", help="the operation's arguments")
    parser.set_defaults(handler=cmd_client)


def _parse_client_op(args: argparse.Namespace) -> bytes:
    from bft.app import Ops
    from bft.opscli import arg_bytes, arg_text

    a = args.args
    want = {"put": 2, "get": 1, "delete": 1, "cas": 3, "lock": 1, "unlock": 2}[args.op]
    if len(a) != want:
        raise CliError(f"'{args.op}' takes {want} argument(s), got {len(a)}")
    fence = None
    if args.fence is not None:
        name, _, token = args.fence.rpartition(":")
        if not name or not token.isdigit():
            raise CliError(f"--fence must be NAME:TOKEN with TOKEN the number a lock "
                           f"printed (e.g. printer:65537), got {args.fence!r}")
        if args.op not in ("put", "delete", "cas"):
            raise CliError(f"--fence applies to put, delete and cas, not {args.op}")
        fence = (arg_text(name, what="the --fence lock NAME"), int(token))
    key = arg_text(a[0], what="KEY" if args.op not in ("lock", "unlock") else "NAME")

    def value(text: str, what: str) -> bytes:
        return arg_bytes(text, hex_input=args.hex, what=what)

    if args.op == "put":
        return Ops.put(key, value(a[1], "VALUE"), fence=fence)
    if args.op == "get":
        return Ops.get(key)
    if args.op == "delete":
        return Ops.delete(key, fence=fence)
    if args.op == "cas":
        old = None if a[1] == "-" else value(a[1], "OLD")
        return Ops.cas(key, old, value(a[2], "NEW"), fence=fence)
    if args.op == "lock":
        if args.ttl is None or not 0 < args.ttl < 10**9:
            raise CliError("lock needs --ttl SECONDS (a number > 0)")
        return Ops.lock(key, max(1, int(args.ttl * 1000)))
    if not a[1].isdigit():
        raise CliError(f"unlock TOKEN must be the number a lock printed, got {a[1]!r}")
    return Ops.unlock(key, int(a[1]))


def cmd_client(args: argparse.Namespace) -> int:
    """One operation; exit status by outcome (bft/opscli.py CLIENT_EXIT_CODES)."""
    import trio

    from bft.app import decode_result
    from bft.errors import MalformedMessage
    from bft.node import ClientError, ClusterClient, claim_client_id, claim_free_client_ids
    from bft.opscli import describe_result, describe_unknown

    config = _load_config(args.config)
    op = _parse_client_op(args)
    ids = [c.id for c in config.clients]
    if args.id is not None and args.id not in ids:
        raise CliError(f"client id {args.id} is not in {args.config} "
                       f"(clients: {', '.join(str(c) for c in ids)})")
    if not 0 < args.timeout < 10**6:
        raise CliError(f"--timeout must be a number of seconds > 0, got {args.timeout:g}")
    state_dir = _state_dir(config, args.state_dir)
    keyring = load_keys(config, args.state_dir, args.key_dir)
    # this process's own client id for as long as it runs (ClientIdInUse: exit 2)
    claim = (claim_client_id(state_dir, args.id) if args.id is not None
             else claim_free_client_ids(state_dir, ids)[0])
    cid = claim.client_id
    replies = [0]

    async def go() -> bytes:
        client = ClusterClient(config, cid, signer=keyring.signer("client", cid),
                               verifier=keyring.verifier(),
                               first_timestamp=claim.first_timestamp)
        try:
            return await client.call(op, timeout_s=args.timeout)
        finally:
            replies[0] = client.client.statistics()["replies_received"]
            client.close()

    try:
        with claim:
            raw = trio.run(go)
        outcome = describe_result(args.op, list(args.args), decode_result(raw),
                                  hex_output=args.hex)
    except ClientError as exc:
        outcome = describe_unknown(args.op, replies=replies[0], f=config.f,
                                   timeout_s=args.timeout, detail=str(exc))
    except MalformedMessage as exc:  # f+1 replicas agreed on something this client cannot read
        raise CliError(f"the agreed result cannot be decoded: {exc}") from None
    if args.json:
        print(outcome.json_line(), flush=True)
    else:
        sys.stdout.flush()
        binary = getattr(sys.stdout, "buffer", None)  # None: a text-only stream (redirected)
        if binary is not None:
            binary.write(outcome.stdout)
            binary.flush()
        else:
            sys.stdout.write(outcome.stdout.decode("utf-8", errors="backslashreplace"))
    if outcome.stderr:
        print(f"bft: {outcome.stderr}", file=sys.stderr)
    return outcome.code


# --------------------------------------------------------------------------
# bft up: a local cluster, one process per node
# --------------------------------------------------------------------------


def _add_up_parser(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "up", help="start every node of a config as local processes",
        description="Start every node of CONFIG as its own process on this machine (keys are "
        "generated into the state directory on first start), optionally drive a "
        "client load, and print events as lines (UTC times, one line per cluster event) or "
        "show the dashboard. Stops every node on exit, Ctrl-C, SIGTERM (`bft down`) or "
        "after --duration, and prints a stop summary. Refuses to start a config that runs "
        "already. Each running node's pid is in STATE_DIR/node-N.pid (`bft status`, "
        "`bft down`), its output in STATE_DIR/node-N.runK.out.")
    parser.add_argument("config", metavar="CONFIG", type=Path, help="cluster config (TOML)")
    parser.add_argument("--state-dir", type=Path, default=None, metavar="DIR",
                        help="state directory (default: state/<cluster name>); keys in "
                        "DIR/keys unless the config sets key_dir")
    parser.add_argument("--no-tui", action="store_true",
                        help="print events as lines instead of opening the dashboard (the "
                        "default when stdout is not a terminal)")
    parser.add_argument("--load", type=float, default=0.0, metavar="OPS_PER_S",
                        help="background client load in operations per second (0: none), "
                        "from the first client ids no other process uses (one per 50 ops/s)")
    parser.add_argument("--duration", type=float, default=None, metavar="S",
                        help="stop after this many seconds")
    parser.add_argument("--fsync", choices=["always", "never"], default=None,
                        help="WAL fsync policy of every node: always (durable before "
                        "sending, the safe default of configs) or never (faster; survives "
                        "process crashes, not power loss) (default: the config's)")
    parser.add_argument("--restart-crashed", action="store_true",
                        help="restart a node that exits by itself (a crash, `bft ctl ... "
                        "crash`, SIGKILL from outside) after a backoff of 1 s, doubling per "
                        "restart up to 30 s, at most --max-restarts times per node")
    parser.add_argument("--max-restarts", type=int, default=5, metavar="N",
                        help="with --restart-crashed: restarts per node (default: 5)")
    _add_plugin_arguments(parser, "add_up_arguments")
    parser.add_argument("--history", type=Path, default=None, metavar="FILE",
                        help="with --load: write every client operation as Jepsen-shaped JSON "
                        "lines (invoke/ok/fail/info); check it with `bft check FILE`")
    parser.add_argument("--workload", choices=WORKLOADS, default=None,
                        help="with --load: what the clients send (default: mixed with "
                        "--history, else puts): mixed = get/put/cas/delete/lock/unlock and "
                        "fenced writes over --keys contended keys; puts = puts to 1,000 keys; "
                        "noop = an op the store ignores; app = your --app's random_op")
    parser.add_argument("--keys", type=int, default=DEFAULT_KEYS, metavar="K",
                        help=f"mixed workload: how many contended keys (default {DEFAULT_KEYS})")
    parser.add_argument("--app", default=None, metavar="MODULE:FACTORY",
                        help="replicate your own StateMachine on every node (and, with "
                        "--workload app, send its random_op)")
    parser.set_defaults(handler=cmd_up)


def cmd_up(args: argparse.Namespace) -> int:
    config = _load_config(args.config)
    state_dir = _state_dir(config, args.state_dir)
    key_dir = _key_dir(config, args.state_dir)
    from bft.lifecycle import check_not_running, remove_pid_file, up_pid_path, write_pid_file

    if not 0 <= args.max_restarts <= 1000:
        raise CliError(f"--max-restarts must be in 0..1000, got {args.max_restarts}")
    check_not_running(config, args.config, state_dir)  # before touching anything
    state_dir.mkdir(parents=True, exist_ok=True)
    write_pid_file(up_pid_path(state_dir))  # `bft down` stops this process first
    try:
        return _cmd_up(args, config, state_dir, key_dir)
    finally:
        remove_pid_file(up_pid_path(state_dir))


def _cmd_up(args: argparse.Namespace, config: ClusterConfig, state_dir: Path,
            key_dir: Path) -> int:
    import trio

    from bft.launcher import ensure_keys

    if ensure_keys(config, key_dir):
        from bft.eventlines import iso_utc

        print(f"{iso_utc(time.time())} generated keys in {key_dir}", flush=True)
    keyring = load_keys(config, args.state_dir)  # clear error now rather than in every child
    _call_hooks(_active(), "check_up", args, config)  # errors now, naming the field
    _check_workload_args(args)
    global _UP_EXTRA
    _UP_EXTRA = {"args": args, "history": args.history}
    if not args.no_tui and sys.stdout.isatty() and config.monitor is not None:
        dashboards = [d for d in _call_hooks(_active(), "dashboard", config, keyring,
                                             config.monitor) if d is not None]
        if dashboards:
            return _up_with_dashboard(args.config, config, state_dir, key_dir, args.load,
                                      args.duration, args.fsync, dashboards[0])
    return trio.run(run_cluster, args.config, config, state_dir, key_dir, args.load,
                    args.duration, args.fsync)


def _supervisor(cluster, say):  # type: ignore[no-untyped-def]
    """Restarts of `bft up`'s nodes: r in the dashboard, and --restart-crashed."""
    from bft.lifecycle import Supervisor

    args = _UP_EXTRA.get("args")
    return Supervisor(cluster, say, automatic=bool(getattr(args, "restart_crashed", False)),
                      max_restarts=getattr(args, "max_restarts", 5),
                      extra_args=lambda _i: _plugin_node_args(restarted=True))


_UP_EXTRA: dict = {}  # options of `bft up` that reach the node commands and the load


def _check_workload_args(args: argparse.Namespace) -> None:
    """Clear errors for `bft up`'s workload options before anything starts."""
    if args.workload is not None and args.load <= 0:
        raise CliError("--workload needs --load OPS_PER_S")
    if args.keys < 1:
        raise CliError(f"--keys must be >= 1, got {args.keys}")
    if args.workload == "app":
        if args.app is None:
            raise CliError("--workload app needs --app MODULE:FACTORY (the application whose "
                           "random_op makes the ops)")
        app = load_factory(args.app)()
        if not callable(getattr(app, "random_op", None)):
            raise CliError(f"--app {args.app}: {type(app).__name__} has no "
                           "random_op(rng, client_id) method, which --workload app needs")


def _plugin_node_args(restarted: bool = False) -> list[str]:
    """What plugins pass on to each node of `bft up` (the adversary's options)."""
    out: list[str] = []
    if _UP_EXTRA.get("args") is not None:
        for extra in _call_hooks(_active(), "up_node_arguments", _UP_EXTRA["args"], restarted):
            out += extra  # type: ignore[arg-type]
    return out


def _up_cluster(config_path: Path, config: ClusterConfig, state_dir: Path, key_dir: Path,
                fsync: str | None):  # type: ignore[no-untyped-def]
    """The launcher of `bft up`: every node with --events (and the fsync policy; what
    plugins pass on is given at each spawn), its output in STATE_DIR/node-N.runK.out."""
    from bft.launcher import LocalCluster

    node_args = ["--events", "--event-format", "json"]
    if fsync:
        node_args += ["--fsync", fsync]
    up_args = _UP_EXTRA.get("args")
    if getattr(up_args, "app", None):
        node_args += ["--app", up_args.app]  # type: ignore[union-attr]
    return LocalCluster(config_path, config=config, state_dir=state_dir, key_dir=key_dir,
                        node_args=node_args)


def _up_with_dashboard(config_path: Path, config: ClusterConfig, state_dir: Path, key_dir: Path,
                       load_ops_per_s: float, duration_s: float | None, fsync: str | None,
                       run_dashboard) -> int:  # type: ignore[no-untyped-def]
    """`bft up` in a terminal: nodes as child processes, the dashboard in the foreground;
    quitting the dashboard (q) stops every node."""
    import signal as _signal
    import threading

    import trio

    import time

    cluster = _up_cluster(config_path, config, state_dir, key_dir, fsync)
    out = open(state_dir / "up.log", "a", encoding="utf-8")  # noqa: SIM115

    def say(line: str) -> None:
        print(line, file=out, flush=True)

    try:
        for node in config.nodes:
            cluster.spawn(node.id, _plugin_node_args())
        if load_ops_per_s > 0:
            threading.Thread(target=trio.run, daemon=True, args=(
                _drive_load, config, state_dir, key_dir, load_ops_per_s, say)).start()
        # the terminal went away (tmux killed, ssh dropped): stop the nodes, then exit
        _signal.signal(_signal.SIGHUP, lambda *_: (cluster.terminate_all(), os._exit(129)))  # type: ignore[func-returns-value]
        supervisor = _supervisor(cluster, say)

        def restart(node_id: int) -> str | None:
            if cluster.pid_of(node_id) is not None:
                return None  # it runs: r resumes it
            line: str = supervisor.restart(node_id)
            say(line)
            return line

        run_dashboard(duration_s, on_restart=restart,
                      on_tick=lambda: supervisor.poll(time.monotonic()))
    finally:
        cluster.terminate_all()
        out.close()
        summaries = {i: s for i in cluster.procs if (s := cluster.stop_summary(i)) is not None}
        _print_stop_summary(cluster, summaries, print)
    return 0


async def run_cluster(config_path: Path, config: ClusterConfig, state_dir: Path, key_dir: Path,
                      load_ops_per_s: float = 0.0, duration_s: float | None = None,
                      fsync: str | None = None, out=None) -> int:  # type: ignore[no-untyped-def]
    """Run every node of `config` as a child process until a signal or `duration_s`.

    Children are `bft node ... --events --event-format json` processes of a
    `bft.launcher.LocalCluster`; their events are printed one line per cluster event with
    UTC times (`bft.eventlines.ClusterLines`), anything else they print with a `[node N]`
    prefix. On exit every child gets SIGTERM, then SIGKILL after a bound, and the stop
    summary is printed (`bft.eventlines.stop_summary_lines`). Returns 0, or 1 if a node
    failed to start."""
    import signal

    import trio

    from bft.eventlines import ClusterLines
    from bft.launcher import LaunchError

    out = out or sys.stdout
    lines = ClusterLines(config.n, lambda line: print(line, file=out, flush=True))

    def say(line: str) -> None:
        lines.note(line, time.time())

    def node_say(line: str) -> None:  # the launcher's "[node N] LINE"
        head, sep, rest = line.partition("] ")
        if sep and head.startswith("[node ") and head[6:].isdigit():
            lines.node_output(int(head[6:]), rest, time.time())
        else:
            say(line)

    async def tick() -> None:
        while True:
            lines.tick(time.time())
            await trio.sleep(0.2)

    cluster = _up_cluster(config_path, config, state_dir, key_dir, fsync)
    status = 0
    converged = False
    with trio.open_signal_receiver(signal.SIGINT, signal.SIGTERM, signal.SIGHUP) as signals:
        try:
            async with trio.open_nursery() as nursery:
                for node in config.nodes:
                    cluster.spawn(node.id, _plugin_node_args())
                nursery.start_soon(cluster.follow_output, node_say)
                nursery.start_soon(tick)
                say(f"started {config.n} nodes of {config.name} (f={config.f}); state in "
                    f"{state_dir}; Ctrl-C stops the cluster")
                try:
                    for node in config.nodes:
                        await cluster.wait_ready(node.id)
                except LaunchError as exc:
                    say(f"bft: error: {exc}")
                    status = 1
                else:
                    await _serve_cluster(cluster, nursery, load_ops_per_s, duration_s, signals,
                                         say)
                    converged = await _converge(cluster, say)
                nursery.cancel_scope.cancel()
        finally:
            with trio.CancelScope(shield=True):
                summaries = await cluster.stop_all(strict=False)
            cluster.cleanup()
            cluster.echo_output(node_say, final=True)
            lines.close(time.time())
            if status == 0:
                from bft.launcher import digest_agreement

                agree, line = digest_agreement(summaries, [nd.id for nd in config.nodes])
                say(line if agree or converged else f"{line} (the nodes had not converged)")
                lines.close(time.time())
            _print_stop_summary(cluster, summaries, say)
    return status


#: How long `bft up` waits, once the load stopped, for every node to execute the same seq.
CONVERGE_TIMEOUT_S = 10.0


async def _converge(cluster, say) -> bool:  # type: ignore[no-untyped-def]
    """Let every node execute everything ordered so far (one barrier read, bounded by
    CONVERGE_TIMEOUT_S), so their stop summaries are at the same seq; False (and why) if
    some node did not."""
    from bft.launcher import LaunchError

    running = sorted(i for i, proc in cluster.procs.items() if proc.running())
    down = sorted(set(cluster.procs) - set(running))
    try:
        await cluster.barrier(running, timeout_s=CONVERGE_TIMEOUT_S)
    except (LaunchError, OSError) as exc:
        say(f"nodes did not converge before stopping: {exc}")
        return False
    if down:
        say(f"nodes {down} are not running: the others converged")
        return False
    return True


def _print_stop_summary(cluster, summaries, say) -> None:  # type: ignore[no-untyped-def]
    """The stop summary of `bft up`: each node's latest incarnation, the digests' agreement."""
    from bft.eventlines import stop_summary_lines

    statuses = {i: p.returncode for i, p in sorted(cluster.procs.items())}
    for line in stop_summary_lines(statuses, summaries):
        say(line)


async def _serve_cluster(cluster, nursery, load_ops_per_s, duration_s, signals, say) -> None:  # type: ignore[no-untyped-def]
    """`bft up` once every node is ready: the load, the scenario's launcher actions, until a
    signal or `duration_s`."""
    import trio

    from bft.launcher import reap

    load_scope, load_done = trio.CancelScope(), trio.Event()

    async def load() -> None:
        try:
            with load_scope:
                await _drive_load(cluster.config, cluster.state_dir, cluster.key_dir,
                                  load_ops_per_s, say)
        finally:
            load_done.set()

    if load_ops_per_s > 0:
        nursery.start_soon(load)
    supervisor = _supervisor(cluster, say)

    async def supervise() -> None:
        while True:
            supervisor.poll(trio.current_time())
            await trio.sleep(0.1)

    nursery.start_soon(supervise)
    if _UP_EXTRA.get("args") is not None:
        # what plugins run beside the nodes (a scenario's SIGSTOP/SIGCONT and restarts)
        async def restart(node_id: int) -> None:
            if cluster.pid_of(node_id) in supervisor.restarted_pids:
                return  # --restart-crashed was first
            await reap(cluster.procs[node_id].popen, cluster.stop_timeout_s)
            cluster.spawn(node_id, _plugin_node_args(restarted=True))

        for task in _call_hooks(_active(), "up_task", _UP_EXTRA["args"], cluster.config):
            if task is not None:
                nursery.start_soon(task, cluster.pid_of, restart, say)
    with trio.move_on_after(duration_s if duration_s is not None else math.inf) as timer:
        async for _ in signals:
            say("stopping the cluster")
            break
    if timer.cancelled_caught:
        say(f"duration of {duration_s:g} s reached: stopping the cluster")
    if load_ops_per_s > 0:  # stop the load first (its history is written), then the nodes
        load_scope.cancel()
        with trio.move_on_after(CONVERGE_TIMEOUT_S):
            await load_done.wait()


async def _drive_load(config: ClusterConfig, state_dir: Path, key_dir: Path, ops_per_s: float,
                      say) -> None:  # type: ignore[no-untyped-def]
    """Closed-loop clients paced to `ops_per_s` in total; prints throughput once a second."""
    import random
    import time as _time

    import trio

    from bft.history import History, call_recorded
    from bft.errors import ClientIdInUse
    from bft.node import ClientError, ClusterClient, claim_free_client_ids

    from bft.workload import make_workload

    history_path = _UP_EXTRA.get("history")
    history = History() if history_path is not None else None
    up_args = _UP_EXTRA.get("args")
    kind = getattr(up_args, "workload", None) or ("mixed" if history is not None else "puts")
    app = load_factory(up_args.app)() if kind == "app" else None  # type: ignore[union-attr]
    # a fresh prefix for keys and locks: the history starts from absent keys and free locks
    prefix = f"r{os.urandom(3).hex()}-"
    keyring = load_keyring(config, key_dir)
    # the first client ids no other process uses (a `bft client` started before holds
    # its id), held until the load stops
    want = max(1, min(len(config.clients), int(ops_per_s // 50) + 1))
    try:
        claims = {c.client_id: c for c in claim_free_client_ids(
            state_dir, [c.id for c in config.clients], want)}
    except ClientIdInUse as exc:
        say(f"[load] no load: {exc}")
        return
    clients = list(claims)
    if len(clients) < want:
        say(f"[load] {len(clients)} client ids free of the {want} wanted: running with those")
    done: list[float] = []
    errors = [0]
    rng = random.Random(0)
    workloads = {cid: make_workload(kind, cid, rng, keys=getattr(up_args, "keys", DEFAULT_KEYS),
                                    prefix=prefix, app=app) for cid in clients}
    say(f"[load] workload {kind}" + (f", keys and locks named {prefix}*" if kind in
                                       ("mixed", "puts") else ""))

    async def one(cid: int) -> None:
        client = ClusterClient(config, cid, signer=keyring.signer("client", cid),
                               verifier=keyring.verifier(),
                               first_timestamp=claims[cid].first_timestamp)
        interval = len(clients) / ops_per_s
        next_at = trio.current_time()
        try:
            workload = workloads[cid]
            while True:
                t0 = trio.current_time()
                op = workload.next_op()
                got: bytes | None = None
                if history is not None:
                    got = await call_recorded(client, op, history, process=cid,
                                              clock_ns=_time.monotonic_ns, timeout_s=5)
                    if got is None:
                        errors[0] += 1
                    else:
                        done.append(trio.current_time() - t0)
                else:
                    try:
                        got = await client.call(op, timeout_s=5)
                        done.append(trio.current_time() - t0)
                    except ClientError:
                        errors[0] += 1
                workload.observe(got)
                next_at = max(next_at + interval, trio.current_time())
                await trio.sleep_until(next_at)
        finally:
            client.close()

    async def report() -> None:
        total = 0
        while True:
            await trio.sleep(1.0)
            batch, done[:] = list(done), []
            total += len(batch)
            if batch:
                batch.sort()
                p50 = batch[len(batch) // 2] * 1000
                p99 = batch[min(len(batch) - 1, int(len(batch) * 0.99))] * 1000
                say(f"[load] {len(batch)} ops/s  p50 {p50:.1f} ms  p99 {p99:.1f} ms  "
                    f"total {total}  errors {errors[0]}")
            else:
                say(f"[load] 0 ops/s  total {total}  errors {errors[0]}")

    try:
        async with trio.open_nursery() as nursery:
            nursery.start_soon(report)
            for cid in clients:
                nursery.start_soon(one, cid)
    finally:
        for claim in claims.values():
            claim.release()
        if history is not None:
            history.finish(_time.monotonic_ns())
            history.write(history_path)  # type: ignore[arg-type]  # (set with the history)
            say(f"[load] history of {len(history.entries)} "
                f"events written to {history_path}")


# --------------------------------------------------------------------------
# bft bench
# --------------------------------------------------------------------------


def _add_bench_parser(subparsers: argparse._SubParsersAction) -> None:
    from bft.bench import add_bench_arguments

    parser = subparsers.add_parser(
        "bench", help="measure throughput and latency of a cluster",
        description="Start the cluster of CONFIG (or --attach to a running one), drive "
        "closed-loop clients, and report throughput, latency percentiles, CPU per node and "
        "the Ed25519 crypto ceiling of this machine.")
    add_bench_arguments(parser)
    parser.set_defaults(handler=cmd_bench)


def cmd_bench(args: argparse.Namespace) -> int:
    from bft.bench import run_bench_command

    return run_bench_command(args)


# --------------------------------------------------------------------------
# bft check
# --------------------------------------------------------------------------


def _add_check_parser(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "check", help="check a history for linearizability (KV store and fenced locks)",
        description="Read a JSON-lines history (what `bft up --history` and `bft sim "
        "--history` write) and search for a linearization under the KV store and "
        "lock-with-fencing-token model, key by key and lock by lock. Exit status: 0 "
        "linearizable, 1 not (the key, the shortest failing window of operations and why "
        "are printed), 2 malformed history (the line is named), 3 out of time.")
    parser.add_argument("history", metavar="HISTORY.jsonl", type=Path,
                        help="the history file")
    parser.add_argument("--timeout", type=float, default=60.0, metavar="S",
                        help="give up after this many seconds (exit 3; default 60)")
    parser.add_argument("--max-clock-skew-ms", type=float, default=0.0, metavar="MS",
                        help="the cluster's max_clock_skew: a lock goes to another client "
                        "only once agreed time is past the lease by twice this (default 0: "
                        "only past the lease)")
    parser.add_argument("--json", action="store_true",
                        help="print the verdict as one JSON object")
    parser.set_defaults(handler=cmd_check)


def cmd_check(args: argparse.Namespace) -> int:
    import json
    import time as _time

    from bft.lincheck import HistoryError, check, format_verdict, parse_history

    def malformed(message: str) -> int:
        if args.json:
            print(json.dumps({"verdict": "malformed", "message": message}))
        else:
            print(f"bft check: {args.history}: malformed history: {message}", file=sys.stderr)
        return 2

    if args.timeout <= 0 or args.max_clock_skew_ms < 0:
        raise CliError("--timeout must be > 0 and --max-clock-skew-ms >= 0")
    try:
        text = args.history.read_text(encoding="utf-8")
    except UnicodeDecodeError as exc:
        return malformed(f"not UTF-8 text ({exc.reason} at byte {exc.start})")
    try:
        ops = parse_history(text.splitlines())
    except HistoryError as exc:
        return malformed(str(exc))
    deadline_at = _time.monotonic() + args.timeout
    verdict = check(ops, skew_us=int(args.max_clock_skew_ms * 1000),
                    deadline=lambda: _time.monotonic() > deadline_at)
    if args.json:
        print(json.dumps(verdict.to_json(), sort_keys=True))
    else:
        print(format_verdict(verdict, str(args.history)))
    return 0 if verdict.ok else 3 if verdict.ok is None else 1


# --------------------------------------------------------------------------
# Entry point
# --------------------------------------------------------------------------


_PARSER_PLUGINS: LoadedPlugins | None = None  # the plugins of the last `build_parser`


def _active() -> LoadedPlugins:
    """The plugins the command line was built with (their hooks run the commands)."""
    return _PARSER_PLUGINS if _PARSER_PLUGINS is not None else plugins()


def _version() -> str:
    """The installed version of bft-udp (pyproject.toml), or "unknown" outside an install."""
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("bft-udp")
    except PackageNotFoundError:
        return "unknown"


def build_parser(loaded: LoadedPlugins | None = None) -> argparse.ArgumentParser:
    """The `bft` parser with every subcommand, the plugins' (`loaded`, default: the
    installed ones) included. A plugin that fails to add to it is left out and
    described in `loaded.problems`."""
    global _PARSER_PLUGINS
    loaded = _PARSER_PLUGINS = loaded if loaded is not None else plugins()
    parser = argparse.ArgumentParser(
        prog="bft",
        description="A Byzantine-tolerant agreement network over UDP (PBFT).",
    )
    parser.add_argument("--version", action="version", version=f"bft {_version()}",
                        help="print the version of bft-udp and exit")
    subparsers = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    _add_up_parser(subparsers)
    _add_node_parser(subparsers)
    _add_client_parser(subparsers)
    _add_bench_parser(subparsers)
    _add_check_parser(subparsers)
    from bft.lifecycle import add_lifecycle_parsers

    add_lifecycle_parsers(subparsers)  # bft status, bft down
    for plugin, add_commands in list(loaded.hooks("add_commands")):
        before = dict(subparsers.choices)
        try:
            add_commands(subparsers)
        except (argparse.ArgumentError, ValueError, TypeError, ImportError) as exc:
            for name in set(subparsers.choices) - set(before):  # nothing half-added stays
                del subparsers.choices[name]
            subparsers._choices_actions[:] = [
                a for a in subparsers._choices_actions if a.dest in before]
            loaded.disable(plugin, f"plugin {plugin.name!r} failed to add its commands: "
                           f"{type(exc).__name__}: {exc}; left out")
    _add_keygen_parser(subparsers)
    _add_config_parser(subparsers)
    from bft.opscli import add_wal_parser

    add_wal_parser(subparsers)
    return parser


def main(argv: Sequence[str] | None = None, loaded: LoadedPlugins | None = None) -> int:
    """Run the `bft` command line; returns the exit status (0 ok, 2 usage or expected error).
    A plugin that could not be loaded is reported in one line on stderr (`bft: warning:
    ...`) and the rest works."""
    parser = build_parser(loaded)
    for problem in _active().problems:
        print(f"bft: warning: {problem}", file=sys.stderr)
    try:
        args = parser.parse_args(argv)
    except SystemExit as exc:  # --help (0) and usage errors (2)
        return exc.code if isinstance(exc.code, int) else EXIT_USAGE
    try:
        return args.handler(args)
    except EXPECTED_ERRORS as exc:
        print(f"bft: error: {exc}", file=sys.stderr)
        return EXIT_USAGE
    except KeyboardInterrupt:
        return 130
