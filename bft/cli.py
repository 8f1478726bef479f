"""The `bft` command line.

Structure, to keep it easy to extend: `build_parser()` builds one argparse
parser; each subcommand has an `_add_<name>_parser(subparsers)` function that
declares its arguments and sets `handler` to a `cmd_<name>(args) -> int`
function. `main()` parses, runs the handler and turns the expected errors
(`EXPECTED_ERRORS`) into one line `bft: error: ...` on stderr and exit
status 2, never a traceback. A bug (anything else) still shows its traceback.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from pathlib import Path

from bft.config import (
    ClusterConfig,
    format_address,
    identities,
    inline_public_key,
    key_file_stem,
    load_keyring,
    resolve_key_dir,
)
from bft.crypto import generate_private_key, public_key_bytes, save_private_key, save_public_key
from bft.errors import ConfigError

__all__ = ["EXPECTED_ERRORS", "CliError", "build_parser", "main"]


class CliError(Exception):
    """A problem the user can fix (bad arguments, files in the way); printed without traceback."""


#: Errors printed as `bft: error: ...` with exit status 2.
EXPECTED_ERRORS: tuple[type[BaseException], ...] = (CliError, ConfigError, OSError)

EXIT_USAGE = 2


# --------------------------------------------------------------------------
# bft keygen
# --------------------------------------------------------------------------


def _add_keygen_parser(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "keygen",
        help="create Ed25519 keys for every node, client and the admin",
        description="Create an Ed25519 key pair for every node, client and the admin of a "
        "cluster: <kind>-<id>.key (mode 0600) and <kind>-<id>.pub in the key "
        "directory. Identities whose public key is written in the config are "
        "skipped. Existing keys are never replaced without --force.",
    )
    parser.add_argument("config", metavar="CONFIG", type=Path, help="cluster config (TOML)")
    parser.add_argument(
        "--key-dir",
        metavar="DIR",
        type=Path,
        default=None,
        help="where to write the keys (default: the config's key_dir, "
        "else state/<cluster name>/keys)",
    )
    parser.add_argument("--force", action="store_true", help="replace existing key files")
    parser.set_defaults(handler=cmd_keygen)


def cmd_keygen(args: argparse.Namespace) -> int:
    """Generate and save the cluster's keys; print the public keys."""
    config = ClusterConfig.load(args.config)
    key_dir = resolve_key_dir(config, args.key_dir)
    todo = []
    for identity in identities(config):
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
    for kind, id in todo:
        key = generate_private_key()
        stem = key_file_stem(kind, id)
        save_private_key(key_dir / f"{stem}.key", key, force=args.force)
        save_public_key(key_dir / f"{stem}.pub", key, force=args.force)
        print(f"{stem:<12} {public_key_bytes(key).hex()}")
    print(f"wrote {len(todo)} key pairs to {key_dir}")
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
        "else state/<cluster name>/keys)",
    )
    check.set_defaults(handler=cmd_config_check)


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
        keyring = load_keyring(config, args.key_dir)
    except ConfigError as exc:
        print(f"  keys         not ready: {exc}")
    else:
        print(
            f"  keys         all {len(keyring.public_keys)} public keys found ({keyring.key_dir})"
        )
    return 0


# --------------------------------------------------------------------------
# Entry point
# --------------------------------------------------------------------------


def build_parser() -> argparse.ArgumentParser:
    """The `bft` parser with every subcommand."""
    parser = argparse.ArgumentParser(
        prog="bft",
        description="A Byzantine-tolerant agreement network over UDP (PBFT).",
    )
    subparsers = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    _add_keygen_parser(subparsers)
    _add_config_parser(subparsers)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Run the `bft` command line; returns the exit status (0 ok, 2 usage or expected error)."""
    parser = build_parser()
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
