"""Operator commands' pure parts (issue 23): what `bft client` prints and exits with,
`bft config new`, `bft wal inspect` and `bft keygen --only`.

Nothing here does network I/O or reads a clock; bft/cli.py runs the commands and calls
these for the decisions and the text, so they can be tested without a cluster.
"""

from __future__ import annotations

import argparse
import datetime as _dt
import json
import os
from pathlib import Path
from typing import Any

from bft.app import Result

__all__ = [
    "CLIENT_EXIT_CODES", "EXIT_CAS_FAILED", "EXIT_LOCKED", "EXIT_NOT_FOUND", "EXIT_OK",
    "EXIT_REFUSED", "EXIT_STALE_TOKEN", "EXIT_UNKNOWN", "EXIT_USAGE", "ClientOutcome",
    "arg_bytes", "describe_result", "describe_unknown", "iso_utc_us",
]

# --------------------------------------------------------------------------
# bft client: exit codes and output
# --------------------------------------------------------------------------

EXIT_OK = 0             # ok, value, granted
EXIT_USAGE = 2          # bad arguments, config or key errors, client id in use
EXIT_NOT_FOUND = 3      # not_found: no such key (get, delete) or lock (unlock)
EXIT_CAS_FAILED = 4     # cas_failed: the current value is not the expected one
EXIT_LOCKED = 5         # locked: another client holds the lock
EXIT_STALE_TOKEN = 6    # stale_token: the fencing token is not the lock's current one
EXIT_REFUSED = 7        # error: the cluster refused the op (not_holder, store_full, ...)
EXIT_UNKNOWN = 8        # no f+1 matching replies in time: the outcome is unknown

#: The exit code of each result kind (README "Exit codes of bft client").
CLIENT_EXIT_CODES: dict[str, int] = {
    "ok": EXIT_OK, "value": EXIT_OK, "granted": EXIT_OK, "not_found": EXIT_NOT_FOUND,
    "cas_failed": EXIT_CAS_FAILED, "locked": EXIT_LOCKED, "stale_token": EXIT_STALE_TOKEN,
    "error": EXIT_REFUSED,
}

WRITES = frozenset({"put", "delete", "cas", "lock", "unlock"})


def iso_utc_us(epoch_us: int) -> str:
    """Epoch microseconds as ISO-8601 UTC with milliseconds: 2026-12-07T12:30:00.123Z."""
    moment = _dt.datetime(1970, 1, 1, tzinfo=_dt.UTC) + _dt.timedelta(microseconds=epoch_us)
    return moment.strftime("%Y-%m-%dT%H:%M:%S.") + f"{moment.microsecond // 1000:03d}Z"


def arg_bytes(text: str, *, hex_input: bool, what: str) -> bytes:
    """A VALUE argument as bytes: hex digits with --hex, else the argument's own bytes
    (argv bytes that are not UTF-8 arrive as surrogate escapes and go back to those bytes)."""
    from bft.cliutil import CliError

    if hex_input:
        try:
            return bytes.fromhex(text)
        except ValueError:
            raise CliError(f"{what} must be hex digits with --hex (e.g. ff00), got {text!r}")
    return os.fsencode(text)


def arg_text(text: str, *, what: str) -> str:
    """A KEY or lock NAME argument: text; CliError if argv held bytes that are not UTF-8."""
    from bft.cliutil import CliError

    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        raise CliError(f"{what} must be UTF-8 text, got {text!r} (values may be any bytes, "
                       "keys and lock names may not)") from None
    return text


class ClientOutcome:
    """What `bft client` reports: `code` (the exit status), `stdout` (bytes: the result for
    scripts), `stderr` (one line or empty) and `fields` (the --json object)."""

    def __init__(self, code: int, stdout: bytes, stderr: str, fields: dict[str, Any]) -> None:
        self.code, self.stdout, self.stderr, self.fields = code, stdout, stderr, fields

    def json_line(self) -> str:
        return json.dumps(self.fields, sort_keys=True)


def _value_fields(prefix: str, value: bytes | None) -> dict[str, Any]:
    if value is None:
        return {prefix: None, f"{prefix}_hex": None}
    try:
        text: str | None = value.decode("utf-8")
    except UnicodeDecodeError:
        text = None
    return {prefix: text, f"{prefix}_hex": value.hex()}


def _shown(value: bytes | None, hex_output: bool) -> str:
    if value is None:
        return "absent"
    if hex_output:
        return value.hex()
    return value.decode("utf-8", errors="backslashreplace")


def describe_result(op: str, args: list[str], result: Result, *,
                    hex_output: bool = False) -> ClientOutcome:
    """The exit status and the text of an agreed `result` of `bft client OP ARGS`.

    stdout carries what a script wants: a `get`'s value (its bytes, or hex with --hex),
    `ok` for a write, `granted token=T expires=ISO` for a lock; anything else is a
    non-zero exit with one line on stderr."""
    code = CLIENT_EXIT_CODES.get(result.kind, EXIT_REFUSED)
    fields: dict[str, Any] = {"op": op, "outcome": result.kind, "exit_code": code}
    target = args[0] if args else ""
    stdout, stderr = b"", ""
    if result.kind == "value":
        fields.update(_value_fields("value", result.value))
        value = result.value or b""
        stdout = (value.hex().encode() if hex_output else value) + b"\n"
    elif result.kind == "ok":
        stdout = b"ok\n"
    elif result.kind == "granted":
        assert result.token is not None and result.expiry_us is not None
        expires = iso_utc_us(result.expiry_us)
        fields.update(token=result.token, expires=expires, expiry_us=result.expiry_us)
        stdout = f"granted token={result.token} expires={expires}\n".encode()
    elif result.kind == "not_found":
        what = "lock" if op == "unlock" else "key"
        stderr = f"not found: no {what} {target!r}"
    elif result.kind == "cas_failed":
        fields.update(_value_fields("current", result.value))
        stderr = (f"precondition failed: {target!r} is {_shown(result.value, hex_output)}, "
                  "not the expected value; nothing changed")
    elif result.kind == "locked":
        assert result.expiry_us is not None
        expires = iso_utc_us(result.expiry_us)
        fields.update(holder=result.holder, expires=expires, expiry_us=result.expiry_us)
        stderr = f"locked: client {result.holder} holds {target!r} until {expires}"
    elif result.kind == "stale_token":
        stderr = ("stale token: the fencing token is not the lock's current one; "
                  "nothing changed")
    else:
        fields["reason"] = result.reason
        stderr = f"refused by the cluster: {result.reason}; nothing changed"
    return ClientOutcome(code, stdout, stderr, fields)


def describe_unknown(op: str, *, replies: int, f: int, timeout_s: float,
                     detail: str) -> ClientOutcome:
    """No f+1 matching replies within the timeout: whether any replica answered, and for a
    write that its outcome is unknown (exit EXIT_UNKNOWN)."""
    if replies == 0:
        head = (f"no replica answered within {timeout_s:g} s: is the cluster running "
                "(bft up CONFIG, or bft node on each host) and are the addresses in the "
                "config right?")
    else:
        head = (f"{replies} replies but no f+1 = {f + 1} matching ones within "
                f"{timeout_s:g} s ({detail})")
    tail = (f"; the outcome of this {op} is unknown: it may or may not have been applied"
            if op in WRITES else "")
    fields = {"op": op, "outcome": "unknown", "exit_code": EXIT_UNKNOWN,
              "replies": replies, "error": head + tail}
    return ClientOutcome(EXIT_UNKNOWN, b"", head + tail, fields)


def add_json_hex_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--json", action="store_true",
                        help="print one JSON object (op, outcome, exit_code and the "
                        "result's fields) instead of text")
    parser.add_argument("--hex", action="store_true",
                        help="VALUE, OLD and NEW are hex digits, and values are printed in "
                        "hex (default: the arguments' own bytes, values printed as they are)")


# --------------------------------------------------------------------------
# bft wal inspect
# --------------------------------------------------------------------------


def wal_directories(path: Path, node_id: int | None = None) -> list[tuple[str, Path]]:
    """(label, directory) of the WALs under a state directory (`wal-N/`), or `path` itself
    when it is one WAL directory; CliError naming what was looked for if there is none."""
    from bft.cliutil import CliError

    if not path.is_dir():
        raise CliError(f"{path}: no such directory (give a state directory, e.g. "
                       "state/local-4, or one node's wal-N directory)")
    if node_id is not None:
        found = [(f"wal-{node_id}", path / f"wal-{node_id}")]
        if not found[0][1].is_dir():
            raise CliError(f"{path}: no wal-{node_id}/ directory (node {node_id}'s WAL)")
        return found
    if path.name.startswith("wal-") and any(
            n == "snapshot" or n.startswith("wal-") and n.endswith(".log")
            for n in os.listdir(path)):
        return [(path.name, path)]
    found = sorted(((p.name, p) for p in path.iterdir()
                    if p.is_dir() and p.name.startswith("wal-") and p.name[4:].isdigit()),
                   key=lambda item: int(item[0][4:]))
    if not found:
        raise CliError(f"{path}: no WAL here (looked for {path}/wal-N/ directories and for "
                       "WAL files in it)")
    return found


def _vote(statement: Any) -> dict[str, Any]:
    return {"view": statement.view, "seq": statement.seq,
            "digest": bytes(statement.digest).hex()[:16]}


def inspect_wal(directory: Path) -> dict[str, Any]:
    """One WAL directory as a plain dict: records by type, the snapshot, the last view and
    votes, and `ok` False with `problem` naming the first bad record if anything is damaged
    or does not decode. Reads only."""
    from bft.codec import DEFAULT_LIMITS, Limits
    from bft.errors import MalformedMessage
    from bft.messages import (
        Checkpoint,
        Commit,
        NewView,
        PreparedCert,
        PrePrepare,
        Prepare,
        Proposal,
        Signed,
        ViewChange,
    )
    from bft.storage import scan_wal_directory
    from bft.walrecords import REC_NEW_VIEW, REC_SENT, decode_record, decode_snapshot

    limits = Limits(max_message_bytes=64 * DEFAULT_LIMITS.max_message_bytes,
                    max_items=16 * DEFAULT_LIMITS.max_items)  # read what any config wrote
    scan = scan_wal_directory(directory)
    report: dict[str, Any] = {"directory": str(directory), "segment": scan.segment,
                              "records": len(scan.records), "by_type": {}, "snapshot": None,
                              "last_view": None, "last_votes": {}, "last_proposal": None,
                              "ok": True,
                              "problem": None, "leftovers": scan.leftovers}
    problems: list[str] = []
    if scan.snapshot_damage is not None:
        problems.append(f"snapshot: {scan.snapshot_damage}")
    if scan.snapshot is not None:
        seq, data = scan.snapshot
        try:
            _seq, digest, state, proof = decode_snapshot(data, limits)
            report["snapshot"] = {"seq": seq, "state_digest": digest.hex(),
                                  "state_bytes": len(state),
                                  "proof_signers": sorted(s.statement.replica for s in proof)}
        except MalformedMessage as exc:
            report["snapshot"] = {"seq": seq}
            problems.append(f"snapshot: {exc}")
    by_type: dict[str, int] = {}
    views: list[int] = []
    last: dict[str, dict[str, Any]] = {}  # the latest of each kind this replica signed
    proposal: dict[str, Any] | None = None  # the latest pre-prepare it proposed or accepted
    for index, raw in enumerate(scan.records):
        try:
            kind, message = decode_record(raw, limits)
        except MalformedMessage as exc:
            problems.append(f"record {index}: does not decode: {exc}")
            break
        if isinstance(message, Proposal):
            name, statement = "proposal", message.pre_prepare.statement
        elif isinstance(message, PreparedCert):
            name, statement = "prepared-cert", message.pre_prepare.statement
        else:
            assert isinstance(message, Signed)
            statement = message.statement
            name = type(statement).__name__
            if kind == REC_NEW_VIEW:
                name = "accepted NewView"
        by_type[name] = by_type.get(name, 0) + 1
        view = getattr(statement, "view", None)
        if isinstance(view, int):
            views.append(view)
        if kind == REC_SENT:  # what this replica signed and sent
            key = type(statement).__name__
            if isinstance(statement, (Prepare, Commit)):
                vote = _vote(statement)
                if key not in last or (vote["view"], vote["seq"]) >= (last[key]["view"],
                                                                       last[key]["seq"]):
                    last[key] = vote
            elif isinstance(statement, (ViewChange, NewView)):
                if key not in last or statement.view >= last[key]["view"]:
                    last[key] = {"view": statement.view}
            elif isinstance(statement, Checkpoint):
                if key not in last or statement.seq >= last[key]["seq"]:
                    last[key] = {"seq": statement.seq,
                                 "digest": bytes(statement.state_digest).hex()[:16]}
        elif isinstance(message, Proposal) and isinstance(statement, PrePrepare):
            vote = {**_vote(statement), "primary": statement.replica}
            if proposal is None or (vote["view"], vote["seq"]) >= (proposal["view"],
                                                                    proposal["seq"]):
                proposal = vote
    if scan.damage is not None:
        reason, index, offset = scan.damage
        problems.insert(0, f"{scan.segment or 'segment'}: {reason} at record {index} (byte "
                        f"{offset}); opening the WAL keeps only the {index} records before it")
    report.update(by_type=dict(sorted(by_type.items())), last_view=max(views, default=None),
                  last_votes=last, last_proposal=proposal)
    if problems:
        report.update(ok=False, problem=problems[0], problems=problems)
    return report


def format_wal_report(report: dict[str, Any]) -> str:
    """`inspect_wal`'s dict as the text `bft wal inspect` prints."""
    lines = [f"{report['directory']}: {'ok' if report['ok'] else 'DAMAGED'}"]
    snap = report["snapshot"]
    if snap is None:
        lines.append("  snapshot     none")
    elif "state_digest" in snap:
        lines.append(f"  snapshot     seq {snap['seq']}, state digest "
                     f"{snap['state_digest'][:16]}, {snap['state_bytes']} bytes, proof from "
                     f"replicas {', '.join(str(r) for r in snap['proof_signers'])}")
    else:
        lines.append(f"  snapshot     seq {snap['seq']} (does not decode)")
    lines.append(f"  segment      {report['segment'] or 'none'}: {report['records']} intact "
                 "records")
    for name, count in report["by_type"].items():
        lines.append(f"    {name:<18} {count}")
    view = report["last_view"]
    lines.append(f"  last view    {view if view is not None else 'none recorded'}")
    for name, vote in report["last_votes"].items():
        where = " ".join(f"{k} {v}" for k, v in vote.items())
        lines.append(f"  last {name:<10} {where} (signed by this replica)")
    if report["last_proposal"] is not None:
        where = " ".join(f"{k} {v}" for k, v in report["last_proposal"].items())
        lines.append(f"  last proposal   {where}")
    for name in report["leftovers"]:
        lines.append(f"  leftover     {name} (opening the WAL removes it)")
    for problem in report.get("problems", []):
        lines.append(f"  PROBLEM      {problem}")
    return "\n".join(lines)


# --------------------------------------------------------------------------
# bft config new
# --------------------------------------------------------------------------


def new_config_text(*, nodes: int, f: int | None, base_port: int, hosts: list[str] | None,
                    name: str, clients: int, monitor: str | None) -> str:
    """A commented cluster config (TOML) for `bft config new`; the caller validates it."""
    from bft.cliutil import CliError
    from bft.config import format_address, toml_value

    if nodes < 1:
        raise CliError(f"--nodes must be at least 1, got {nodes}")
    if f is None:
        f = (nodes - 1) // 3
    if hosts is not None and len(hosts) not in (1, nodes):
        raise CliError(f"--hosts lists {len(hosts)} hosts for {nodes} nodes: give one host "
                       "per node (in id order), or one host for all")
    if not 1 <= base_port <= 65535 - max(nodes, 100):
        raise CliError(f"--base-port must leave room for {nodes} node ports and the monitor "
                       f"below 65536, got {base_port}")
    per_node = (hosts or ["127.0.0.1"]) * (nodes if not hosts or len(hosts) == 1 else 1)

    def host_of(i: int) -> str:
        return per_node[i]

    if monitor is None:
        monitor = format_address(host_of(0), base_port + 99)
    out = [f"# made by `bft config new`; every key, with its default, is in "
           f"configs/local-4.toml",
           "[cluster]", f"name = {toml_value(name)}   # also names the state directory: "
           f"./state/{name}",
           f"f = {f}              # Byzantine nodes tolerated; needs at least 3f+1 nodes", ""]
    for i in range(nodes):
        out += ["[[nodes]]", f"id = {i}",
                f"address = {toml_value(format_address(host_of(i), base_port + i))}", ""]
    out += ["[clients]", f"count = {clients}", "",
            "[telemetry]",
            f"monitor = {toml_value(monitor)}   # one address every node sends telemetry to "
            "(the dashboard's); the same on every host"]
    return "\n".join(out) + "\n"


def add_config_new_parser(actions: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    new = actions.add_parser(
        "new", help="write a new cluster config",
        description="Write a cluster config for N nodes: node i at HOST_i:BASE_PORT+i, the "
        "monitor (where every node sends telemetry; one shared address) at the first host's "
        "BASE_PORT+99, every other setting at its default. The file is checked by the same "
        "loader every command uses before it is written.")
    new.add_argument("--nodes", type=int, required=True, metavar="N",
                     help="number of replicas (n = 3f+1 tolerates f Byzantine ones)")
    new.add_argument("--f", type=int, default=None, metavar="F",
                     help="Byzantine replicas tolerated (default: the most N allows, "
                     "(N-1)//3)")
    new.add_argument("--base-port", type=int, default=7100, metavar="PORT",
                     help="node i listens on PORT+i (default 7100)")
    new.add_argument("--hosts", default=None, metavar="H1,H2,...",
                     help="one host per node in id order, or one for all (default 127.0.0.1)")
    new.add_argument("--monitor", default=None, metavar="HOST:PORT",
                     help="telemetry address (default: the first host, port PORT+99)")
    new.add_argument("--clients", type=int, default=4, metavar="C",
                     help="number of client ids (default 4)")
    new.add_argument("--name", default=None, metavar="NAME",
                     help="cluster name, which also names the state directory (default: "
                     "the --out file's name without .toml, else local-N)")
    new.add_argument("--out", type=Path, default=None, metavar="FILE",
                     help="write here (default: print the config on stdout)")
    new.add_argument("--force", action="store_true", help="replace an existing --out FILE")
    new.set_defaults(handler=cmd_config_new)


def cmd_config_new(args: argparse.Namespace) -> int:
    import tomllib

    from bft.cliutil import CliError
    from bft.config import ClusterConfig

    name = args.name or (args.out.name.removesuffix(".toml") if args.out else
                         f"local-{args.nodes}")
    hosts = [h.strip() for h in args.hosts.split(",")] if args.hosts else None
    text = new_config_text(nodes=args.nodes, f=args.f, base_port=args.base_port, hosts=hosts,
                           name=name, clients=args.clients, monitor=args.monitor)
    ClusterConfig.from_dict(tomllib.loads(text), source=args.out or "<new config>")
    if args.out is None:
        print(text, end="")
        return 0
    if args.out.exists() and not args.force:
        raise CliError(f"{args.out} exists (use --force to replace it)")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(text)
    ClusterConfig.load(args.out)
    print(f"wrote {args.out}: {name}, n={args.nodes}, f={args.f if args.f is not None else (args.nodes - 1) // 3}; "
          f"next: bft keygen {args.out}, then bft up {args.out} (one host) or bft node "
          f"{args.out} --id N on each host")
    return 0


def add_wal_parser(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    parser = subparsers.add_parser(
        "wal", help="inspect a node's write-ahead log",
        description="Inspect write-ahead logs (read only).")
    actions = parser.add_subparsers(dest="wal_command", metavar="ACTION", required=True)
    inspect = actions.add_parser(
        "inspect", help="records, snapshot, last view and votes; verify checksums",
        description="Read every node's WAL under DIR (DIR/wal-N/, or DIR itself when it is "
        "one wal-N directory) without changing it: records by type, the snapshot, the last "
        "view and the last votes signed, and every checksum verified. Exit status 0 if "
        "intact, 1 if damaged (the first bad record is named), 2 for a usage error.")
    inspect.add_argument("state_dir", metavar="DIR", type=Path,
                         help="state directory (e.g. state/local-4) or a wal-N directory")
    inspect.add_argument("--id", type=int, default=None, metavar="N",
                         help="only node N's WAL (DIR/wal-N)")
    inspect.add_argument("--json", action="store_true",
                         help="print one JSON object per WAL (one per line)")
    inspect.set_defaults(handler=cmd_wal_inspect)


def cmd_wal_inspect(args: argparse.Namespace) -> int:
    status = 0
    for label, directory in wal_directories(args.state_dir, args.id):
        report = inspect_wal(directory)
        report["wal"] = label
        if not report["ok"]:
            status = 1
        print(json.dumps(report, sort_keys=True) if args.json else format_wal_report(report))
    return status
