"""Client histories in Jepsen's shape, for outside linearizability checkers.

Every client operation becomes two JSON lines: an `invoke` when the client
sends it and a completion when its outcome is known:

    {"index": 0, "type": "invoke", "process": 1, "f": "put", "key": "k1", "value": "v", "time": 12000}
    {"index": 1, "type": "ok",     "process": 1, "f": "put", "key": "k1", "value": "v", "time": 48000}

* `process`: the client id (one operation outstanding per process);
* `type`: `invoke`, then `ok` (it took effect, with the value observed),
  `fail` (it certainly did not take effect: cas_failed, stale_token, locked,
  error; `error` says why) or `info` (outcome unknown: a timeout, or the run
  ended first). An unknown outcome is never reported as `ok` or `fail`;
* `f`: put | get | delete | cas | lock | unlock (`op` for an application
  that is not the KV store, with the op bytes in hex as `value`);
* `key`: the key or lock name; `value`: for put the value, for get the value
  read (null: absent), for cas `[expected, new]`, for lock the ttl_ms on
  invoke and the fencing token on ok, for unlock the token;
* `time`: nanoseconds (the simulator's virtual time, or a monotonic clock);
  `index`: the line's position.

Optional fields (issue 22; `bft check` uses them when present, older files lack them):

* `fence`: `[lock, token]` on every line of a write that carried a fencing token;
* `result`: on ok/fail lines of KV ops, the store's result kind (`ok`, `not_found`,
  `value`, `granted`, `cas_failed`, `stale_token`, `locked`, `error`): it tells a
  delete that removed a key from one that found none;
* on a granted lock: `expiry_us` (the lease's end in agreed time) and `agreed_us`, the
  agreed batch time the lock executed at (`expiry_us - ttl_ms * 1000`); on a `locked`
  failure: `holder` and `expiry_us` of the lease that was in the way; on `cas_failed`:
  `current`, the value the cas found (null: absent). Replies carry no
  batch time, so other ops have no `agreed_us`.

Values are text: UTF-8 when they decode, else `"hex:..."`. Knossos, Elle and
Porcupine read this shape once mapped to their register/lock models.

`History` records; `call_recorded` wraps `bft.node.ClusterClient.call` for
real clusters (`bft up --load ... --history FILE`).
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any, Protocol

from bft.app import (
    Cas,
    Delete,
    Get,
    Lock,
    Put,
    Unlock,
    decode_op_untrusted,
    decode_result_untrusted,
)
from bft.errors import MalformedMessage

#: Result kinds that mean the operation certainly changed nothing.
FAIL_KINDS = frozenset({"cas_failed", "stale_token", "locked", "error"})


def _text(value: bytes | None) -> str | None:
    if value is None:
        return None
    try:
        return value.decode("utf-8")
    except UnicodeDecodeError:
        return "hex:" + value.hex()


def describe_op(op: bytes) -> tuple[str, str | None, Any]:
    """(f, key, value) of op bytes for the invoke line; a non-KV op is ("op", None, hex)."""
    try:
        parsed = decode_op_untrusted(op)
    except MalformedMessage:
        return "op", None, op.hex()
    if isinstance(parsed, Put):
        return "put", parsed.key, _text(parsed.value)
    if isinstance(parsed, Get):
        return "get", parsed.key, None
    if isinstance(parsed, Delete):
        return "delete", parsed.key, None
    if isinstance(parsed, Cas):
        return "cas", parsed.key, [_text(parsed.expected), _text(parsed.new)]
    if isinstance(parsed, Lock):
        return "lock", parsed.name, parsed.ttl_ms
    if isinstance(parsed, Unlock):
        return "unlock", parsed.name, parsed.token
    return "op", None, op.hex()


def op_fence(op: bytes) -> list[Any] | None:
    """`[lock, token]` of the fence a KV write carries (None: no fence, or not a KV op)."""
    try:
        parsed = decode_op_untrusted(op)
    except MalformedMessage:
        return None
    fence = getattr(parsed, "fence", None)
    return None if fence is None else [fence.lock, fence.token]


def result_details(f: str, invoked_value: Any, result: bytes) -> dict[str, Any]:
    """The optional fields of a completion line (module docstring): the result kind, and for
    lock grants and refusals the lease facts the reply carries."""
    if f == "op":
        return {}
    try:
        r = decode_result_untrusted(result)
    except MalformedMessage:
        return {}
    out: dict[str, Any] = {"result": r.kind}
    if f == "lock" and r.kind == "granted":
        out["expiry_us"] = r.expiry_us
        if isinstance(invoked_value, int) and r.expiry_us is not None:
            out["agreed_us"] = r.expiry_us - invoked_value * 1000
    elif f == "lock" and r.kind == "locked":
        out["holder"], out["expiry_us"] = r.holder, r.expiry_us
    elif r.kind == "cas_failed":
        out["current"] = _text(r.value)
    return out


def describe_result(f: str, invoked_value: Any, result: bytes) -> tuple[str, Any, str | None]:
    """(type, value, error) of a completed operation: ok with the value observed, or fail."""
    if f == "op":
        return "ok", result.hex(), None
    try:
        r = decode_result_untrusted(result)
    except MalformedMessage:
        return "ok", "hex:" + result.hex(), None
    if r.kind in FAIL_KINDS:
        return "fail", invoked_value, r.reason or r.kind
    if f == "unlock" and r.kind == "not_found":
        return "fail", invoked_value, "not_found"
    if f == "get":
        return "ok", _text(r.value) if r.kind == "value" else None, None
    if f == "lock":
        return "ok", r.token, None
    return "ok", invoked_value, None


class History:
    """An append-only Jepsen-style history (see the module docstring).

    Guarantees: every `invoke` is followed, for its process, by exactly one
    completion (`ok`/`fail`/`info`) before that process's next invoke; `finish`
    completes every open operation as `info`; indexes are 0, 1, 2, ...
    """

    def __init__(self) -> None:
        self.entries: list[dict[str, Any]] = []
        self._open: dict[int, dict[str, Any]] = {}

    def _add(self, entry: dict[str, Any]) -> dict[str, Any]:
        entry = {"index": len(self.entries), **entry}
        self.entries.append(entry)
        return entry

    def invoke(self, process: int, op: bytes, time_ns: int) -> dict[str, Any]:
        """Record that `process` sent `op`; an operation still open is first closed as info."""
        if process in self._open:
            self.info(process, time_ns, "superseded")
        f, key, value = describe_op(op)
        fields = {"type": "invoke", "process": process, "f": f, "key": key, "value": value,
                  "time": int(time_ns)}
        fence = op_fence(op) if f in ("put", "delete", "cas") else None
        if fence is not None:
            fields["fence"] = fence
        entry = self._add(fields)
        self._open[process] = entry
        return entry

    def complete(self, process: int, result: bytes, time_ns: int) -> dict[str, Any] | None:
        """Record the agreed `result` of `process`'s open operation (None if none is open)."""
        inv = self._open.pop(process, None)
        if inv is None:
            return None
        kind, value, error = describe_result(inv["f"], inv["value"], result)
        entry = {"type": kind, "process": process, "f": inv["f"], "key": inv["key"],
                 "value": value, "time": int(time_ns)}
        if error is not None:
            entry["error"] = error
        if "fence" in inv:
            entry["fence"] = inv["fence"]
        entry.update(result_details(inv["f"], inv["value"], result))
        return self._add(entry)

    def info(self, process: int, time_ns: int, error: str = "timeout") -> dict[str, Any] | None:
        """Record that the outcome of `process`'s open operation is unknown."""
        inv = self._open.pop(process, None)
        if inv is None:
            return None
        entry = {"type": "info", "process": process, "f": inv["f"], "key": inv["key"],
                 "value": inv["value"], "time": int(time_ns), "error": error}
        if "fence" in inv:
            entry["fence"] = inv["fence"]
        return self._add(entry)

    def finish(self, time_ns: int) -> None:
        """Close every open operation as `info` (the run ended before its outcome was known)."""
        for process in sorted(self._open):
            self.info(process, time_ns, "run_ended")

    @property
    def open_processes(self) -> list[int]:
        return sorted(self._open)

    def lines(self) -> Iterable[str]:
        """One JSON object per entry, keys sorted."""
        for e in self.entries:
            yield json.dumps(e, sort_keys=True)

    def write(self, path: str | Path) -> None:
        """Write the history as JSON lines to `path` (replacing it)."""
        Path(path).write_text("".join(line + "\n" for line in self.lines()), encoding="utf-8")


def read_history(path: str | Path) -> list[dict[str, Any]]:
    """The entries of a history file written by `History.write`."""
    return [json.loads(line) for line in Path(path).read_text().splitlines() if line.strip()]


def check_history_shape(entries: list[dict[str, Any]]) -> list[str]:
    """Problems with a history's shape (empty: well formed): fields, types, indexes, and every
    invoke completed once per process before the next."""
    problems = []
    open_ops: dict[Any, dict[str, Any]] = {}
    for k, e in enumerate(entries):
        for name in ("index", "type", "process", "f", "key", "value", "time"):
            if name not in e:
                problems.append(f"entry {k}: missing {name}")
        if e.get("index") != k:
            problems.append(f"entry {k}: index {e.get('index')}")
        kind, process = e.get("type"), e.get("process")
        if kind == "invoke":
            if process in open_ops:
                problems.append(f"entry {k}: process {process} invoked with an op open")
            open_ops[process] = e
        elif kind in ("ok", "fail", "info"):
            inv = open_ops.pop(process, None)
            if inv is None:
                problems.append(f"entry {k}: {kind} without an invoke")
            elif inv.get("f") != e.get("f") or inv.get("key") != e.get("key"):
                problems.append(f"entry {k}: completes a different op than its invoke")
        else:
            problems.append(f"entry {k}: unknown type {kind!r}")
    return problems


class _Caller(Protocol):
    """What `call_recorded` calls: `bft.node.ClusterClient.call`."""

    async def call(self, op: bytes, timeout_s: float = ...) -> bytes: ...


async def call_recorded(client: _Caller, op: bytes, history: History, *, process: int,
                        clock_ns: Callable[[], int], timeout_s: float = 10.0) -> bytes | None:
    """`await client.call(op)` recorded in `history`: ok/fail with the agreed result, or info
    (returning None) when the client gives up (`bft.node.ClientError`): the op may or may not
    have been applied. `clock_ns()` gives the time in nanoseconds."""
    from bft.node import ClientError

    history.invoke(process, op, clock_ns())
    try:
        result = await client.call(op, timeout_s=timeout_s)
    except ClientError:
        history.info(process, clock_ns(), "timeout")
        return None
    history.complete(process, result, clock_ns())
    return result
