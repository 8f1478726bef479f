"""`bft tui` and `bft ctl`: the dashboard and one-shot control commands.

The tui's `bft` plugin (entry point group `bft.plugins`, see bft/plugins.py):
`add_commands(subparsers)` adds both subcommands to the `bft` parser, and
`dashboard(config, keyring, listen)` is the dashboard `bft up` shows in a
terminal. Like the rest of `bft.cli`: argparse, one
`cmd_<name>(args) -> int` handler per subcommand, `CliError` for what the user
can fix. Textual is imported only inside `cmd_tui` (it is slow to import).

    bft tui CONFIG [--key-dir DIR] [--state-dir DIR] [--listen HOST:PORT]
    bft ctl CONFIG --node N ACTION [ARGS]
        pause SECONDS | resume | behaviour NAME [KEY=VALUE ...] | clear
        | cut PEERS (ids separated by commas, or "all") | heal | crash
"""

from __future__ import annotations

import argparse
import socket
import sys
from pathlib import Path
from typing import Any

from bft.cliutil import CliError, load_config, load_keys
from bft.config import ClusterConfig, format_address, parse_address
from bft.errors import ConfigError
from bft.telemetry import (
    Action,
    ClearBehaviour,
    Crash,
    Cut,
    Heal,
    Pause,
    Resume,
    Scalar,
    SetBehaviour,
    control_cluster_id,
)

__all__ = ["add_commands", "add_tui_parsers", "cmd_ctl", "cmd_tui", "dashboard", "parse_action"]

MAX_PAUSE_S = 3600.0


def add_tui_parsers(subparsers: argparse._SubParsersAction) -> None:
    """Add `bft tui` and `bft ctl` to the `bft` subcommands."""
    _add_tui_parser(subparsers)
    _add_ctl_parser(subparsers)


add_commands = add_tui_parsers  # the plugin hook


def dashboard(config: ClusterConfig, keyring: Any, listen: tuple[str, int]) -> Any:
    """The plugin hook `bft up` calls: CliError now if `listen` cannot be bound, else a
    function `run(duration_s, on_restart=None, on_tick=None)` that shows the dashboard until
    the user quits (q) or `duration_s` passes (None: no limit); `on_restart` and `on_tick`
    are the `DashboardApp` hooks (r restarts a down node; supervision on every redraw)."""
    _check_bindable(listen)

    def run(duration_s: float | None, on_restart: Any = None, on_tick: Any = None) -> None:
        import threading

        from tui.app import DashboardApp

        app = DashboardApp(config, keyring.verifier(), keyring.signer("admin", 0),
                           listen=listen, on_restart=on_restart, on_tick=on_tick,
                           exit_on_sigterm=True)
        if duration_s is not None:
            threading.Timer(duration_s, lambda: app.call_from_thread(app.exit)).start()
        app.run()

    return run


def _add_key_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("config", metavar="CONFIG", type=Path, help="cluster config (TOML)")
    parser.add_argument(
        "--key-dir",
        metavar="DIR",
        type=Path,
        default=None,
        help="key directory (default: the config's key_dir, else STATE_DIR/keys)",
    )
    parser.add_argument(
        "--state-dir",
        metavar="DIR",
        type=Path,
        default=None,
        help="state directory (default: state/<cluster name>)",
    )


# --------------------------------------------------------------------------
# bft tui
# --------------------------------------------------------------------------


def _add_tui_parser(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "tui",
        help="the live dashboard of a running cluster",
        description="Show a live dashboard of the cluster: nodes, commits, view changes, "
        "evidence. It receives the signed telemetry the nodes send to the monitor address "
        "and sends them signed control commands (pause, behaviours, cuts, crash) with the "
        "admin key. Without the admin's private key the dashboard only watches.",
    )
    _add_key_options(parser)
    parser.add_argument(
        "--listen",
        metavar="HOST:PORT",
        default=None,
        help="where to receive telemetry (default: the config's [telemetry] monitor)",
    )
    parser.set_defaults(handler=cmd_tui)


def _listen_address(config: ClusterConfig, listen: str | None) -> tuple[str, int]:
    if listen is not None:
        return parse_address(listen, field="--listen")
    if config.monitor is None:
        raise CliError(
            'the config has no monitor address: set monitor = "HOST:PORT" '
            "under [telemetry], or pass --listen HOST:PORT"
        )
    return config.monitor


def _check_bindable(address: tuple[str, int]) -> None:
    """A clear error now if the address cannot be bound (in use, not ours)."""
    family = socket.AF_INET6 if ":" in address[0] else socket.AF_INET
    with socket.socket(family, socket.SOCK_DGRAM) as sock:
        try:
            sock.bind(address)
        except OSError as exc:
            raise CliError(
                f"cannot listen on {format_address(*address)}: "
                f"{exc.strerror or exc} (is another dashboard running?)"
            ) from None


def cmd_tui(args: argparse.Namespace) -> int:
    """Run the dashboard until the user quits."""
    config = load_config(args.config)
    keyring = load_keys(config, args.state_dir, args.key_dir)
    listen = _listen_address(config, args.listen)
    try:
        admin = keyring.signer("admin", 0)
    except ConfigError as exc:
        print(f"bft: warning: no admin key ({exc}); control commands are disabled", file=sys.stderr)
        admin = None
    _check_bindable(listen)
    from tui.app import DashboardApp

    DashboardApp(config, keyring.verifier(), admin, listen=listen).run()
    return 0


# --------------------------------------------------------------------------
# bft ctl
# --------------------------------------------------------------------------

_ACTION_ARGS = {
    "pause": "SECONDS",
    "resume": "",
    "behaviour": "NAME [KEY=VALUE ...]",
    "clear": "",
    "cut": "PEERS",
    "heal": "",
    "crash": "",
}


def _add_ctl_parser(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "ctl",
        help="send one signed control command to a node",
        description="Send one control command, signed with the admin key, to node N. "
        "Nodes obey only admin-signed commands for their cluster (as the config and keys "
        "name it), issued within the last 10 s by their clock and numbered above the last "
        "one they obeyed. "
        "Nothing is answered: watch the effect on the dashboard (bft tui).",
        epilog="actions: pause SECONDS | resume | behaviour NAME [KEY=VALUE ...] | clear | "
        "cut PEERS (ids separated by commas, or 'all') | heal | crash",
    )
    _add_key_options(parser)
    parser.add_argument("--node", type=int, required=True, metavar="N", help="the target node")
    parser.add_argument(
        "action",
        choices=list(_ACTION_ARGS),
        metavar="ACTION",
        help="pause, resume, behaviour, clear, cut, heal or crash",
    )
    parser.add_argument("args", nargs="*", metavar="ARGS", help="the action's arguments")
    parser.set_defaults(handler=cmd_ctl)


def _param_value(text: str) -> Scalar:
    if text in ("true", "false"):
        return text == "true"
    try:
        return int(text)
    except ValueError:
        return text


def parse_action(name: str, args: list[str], config: ClusterConfig, node: int) -> Action:
    """The action `bft ctl ... NAME ARGS` means; CliError for wrong arguments."""
    usage = f"usage: bft ctl CONFIG --node N {name} {_ACTION_ARGS[name]}".rstrip()
    if name == "pause":
        if len(args) != 1:
            raise CliError(usage)
        try:
            seconds = float(args[0])
        except ValueError:
            seconds = -1.0
        if not 0 < seconds <= MAX_PAUSE_S:
            raise CliError(
                f"pause SECONDS must be a number in (0, {MAX_PAUSE_S:g}], got {args[0]!r}"
            )
        return Pause(max(1, round(seconds * 1000)))
    if name == "behaviour":
        if not args:
            raise CliError(usage)
        params = []
        for item in args[1:]:
            key, sep, value = item.partition("=")
            if not sep or not key:
                raise CliError(f"behaviour parameters are KEY=VALUE, got {item!r}")
            params.append((key, _param_value(value)))
        return SetBehaviour(args[0], tuple(params))
    if name == "cut":
        if len(args) != 1:
            raise CliError(usage)
        if args[0] == "all":
            return Cut(tuple(n.id for n in config.nodes if n.id != node))
        try:
            peers = tuple(int(p) for p in args[0].split(","))
        except ValueError:
            raise CliError(
                f"cut PEERS is node ids separated by commas, or 'all'; got {args[0]!r}"
            ) from None
        unknown = [p for p in peers if not 0 <= p < config.n]
        if unknown:
            raise CliError(f"no node {unknown[0]} in the config (ids 0..{config.n - 1})")
        return Cut(peers)
    if args:
        raise CliError(f"{name} takes no arguments ({usage})")
    return {"resume": Resume, "clear": ClearBehaviour, "heal": Heal, "crash": Crash}[name]()


def cmd_ctl(args: argparse.Namespace) -> int:
    """Sign and send one control command; print what was sent."""
    from tui.net import ControlSender, send_control_now

    config = load_config(args.config)
    if not 0 <= args.node < config.n:
        raise CliError(f"no node {args.node} in {args.config} (ids 0..{config.n - 1})")
    action = parse_action(args.action, list(args.args), config, args.node)
    keyring = load_keys(config, args.state_dir, args.key_dir)
    signer = keyring.signer("admin", 0)
    cluster = control_cluster_id(config, keyring.verifier())
    sender = ControlSender(signer, cluster, max_datagram_bytes=config.max_datagram_bytes)
    node = config.node(args.node)
    try:
        cmd = send_control_now(sender, args.node, action, node.address, config.monitor)
    except ValueError as exc:  # a parameter the telemetry format cannot carry
        raise CliError(f"cannot send this command: {exc}") from None
    print(f"sent '{cmd.describe()}' to node {args.node} at {node} (seq_no {cmd.seq_no})")
    return 0
