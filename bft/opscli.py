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
