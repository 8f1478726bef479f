"""`bft check`: is a KV/lock history linearizable? (pure: no I/O, no clock)

Reads the Jepsen-shaped histories of bft/history.py (what `bft sim --history` and
`bft up --history` write) and searches for a linearization: a total order of the
operations that respects real time (an op that completed before another was invoked
comes first) and in which every op's outcome is what the sequential model of
bft/app.py's `KVStore` gives.

* The model: keys hold text values (absent at the start); locks hold
  (token, holder, lease expiry) with the store's rules: tokens of new grants
  strictly increase per lock; a holder whose lease is live renews with the same
  token; another client gets the lock only once the lease is over in agreed time
  (`agreed - 2 * skew > expiry`, PROTOCOL.md "Leases and agreed time"), and agreed
  time never goes backwards; unlock needs the current token and the holder; a
  fenced write (`fence: [lock, token]`) is applied only with the lock's current
  token, else `stale_token` and nothing changes (bft/app.py, DDIA figure 8-5).
* ok ops took effect once between invoke and completion, with the recorded result.
  fail ops with an observable reason (`cas_failed`, `stale_token`, `locked`,
  `not_found`, `not_holder`) changed nothing but observed the state at one point
  in that interval; other fails (`error` reasons) are dropped. info ops (unknown
  outcome) may or may not have taken effect, at any time after their invoke, with
  any outcome the model allows.
* P-compositionality (Horn & Kroening, "Faster linearizability checking via
  P-compositionality", FORTE 2015): ops on different keys and locks commute, so
  each partition is checked alone. A fenced write couples its key with its lock:
  partitions are the connected components of keys and locks.
* The search (Wing & Gong 1993, with Lowe's memoization, "Testing for
  linearizability", 2017): depth-first over "which pending op takes effect next",
  remembering every (set of linearized ops, model state) already explored.
* A failure is reported with the shortest failing prefix (the history as it stood
  when the offending op completed: linearizability is prefix-closed) and, for
  partitions without locks, the latest start from which that window still fails
  with the key's value unknown at the start: the shortest failing window.

`parse_history(lines)` raises `HistoryError(line, message)` for malformed input;
`check(ops, ...)` returns a `Verdict`. `deadline()` (a callable returning True once
time is up) keeps the module clock-free: the CLI passes one.
"""

from __future__ import annotations

import dataclasses
import json
import math
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

#: Fail reasons that are observations of the state (the op ran and changed nothing).
OBSERVING_FAILS = frozenset({"cas_failed", "stale_token", "locked", "not_found", "not_holder"})
KV_FUNCTIONS = frozenset({"put", "get", "delete", "cas", "lock", "unlock"})
#: How many (linearized set, state) pairs one search may remember: bounded memory.
DEFAULT_MAX_STATES = 2_000_000
#: ... and at most this many bits of linearized-set masks in all (about 250 MB): a search
#: over n operations remembers at most MEMO_BITS // (n + 64) pairs.
MEMO_BITS = 2_000_000_000
#: How many window starts the failure report tries at most.
MAX_WINDOW_TRIES = 200
#: How many operations of a failing window the report shows at most.
MAX_WINDOW_SHOWN = 40


class HistoryError(Exception):
    """A malformed history: `line` (1-based) and what is wrong."""

    def __init__(self, line: int, message: str) -> None:
        super().__init__(f"line {line}: {message}")
        self.line = line
        self.message = message


class OutOfTime(Exception):
    """The search ran past its deadline or its memory bound."""


@dataclass(frozen=True, slots=True)
class Operation:
    """One client operation: its invoke and its completion (info: none known).

    `value` is the invoke's value; `out` the completion's (a read's value, a grant's
    token); `reason` the failure reason for fail ops; `complete_ns` is infinite for info.
    """

    id: int
    process: int
    f: str
    key: str
    value: Any
    type: str  # ok | fail | info
    out: Any
    reason: str | None
    invoke_ns: float
    complete_ns: float
    line: int  # the invoke's line
    complete_line: int | None
    fence: tuple[str, int] | None = None
    result: str | None = None
    expiry_us: int | None = None
    agreed_us: int | None = None
    holder: int | None = None
    current: Any = "-"  # a cas_failed's observed value ("-": not recorded)
    #: real-time positions: the rank of the invoke and of the completion among all events
    #: ordered by (time, line): equal times keep the file's order (a completion written
    #: before an invoke happened before it). Info: end is infinite.
    start: float = 0.0
    end: float = math.inf
    #: an ok whose recorded result is none the store gives (a put answered with garbage)
    garbage: bool = False

    def describe(self) -> str:
        """A short readable form: `put k1 'a' ok`, `lock L0 -> 65537`."""
        arg = "" if self.value is None and self.f in ("get", "delete") else f" {self.value!r}"
        if self.f == "lock":
            arg = f" ttl_ms={self.value}"
        out = ""
        if self.type == "ok" and self.f in ("get", "lock"):
            out = f" -> {self.out!r}"
        fence = f" fence={self.fence[0]}:{self.fence[1]}" if self.fence else ""
        outcome = self.type + (f" ({self.reason})" if self.reason else "")
        return (f"process {self.process}: {self.f} {self.key}{arg}{fence}{out} {outcome}")


@dataclass
class Verdict:
    """What `check` found. `ok` None: out of time."""

    ok: bool | None
    operations: int = 0
    partitions: int = 0
    unchecked: int = 0  # ops of a non-KV application or failed with no observation
    partition: str | None = None  # the failing partition, e.g. "key k1" or "key k1, lock L0"
    key: str | None = None  # the failing op's key ("key k1") or lock ("lock L0")
    window: list[Operation] = field(default_factory=list)
    why: str | None = None
    message: str | None = None  # out of time: where

    def to_json(self) -> dict[str, Any]:
        verdict = ("linearizable" if self.ok else "out_of_time" if self.ok is None
                   else "not_linearizable")
        out: dict[str, Any] = {"verdict": verdict, "operations": self.operations,
                               "partitions": self.partitions, "unchecked": self.unchecked}
        if self.ok is False:
            out["partition"] = self.partition
            out["key"] = self.key
            out["why"] = self.why
            out["window"] = [{"line": op.line, "complete_line": op.complete_line,
                              "process": op.process, "f": op.f, "key": op.key,
                              "type": op.type, "text": op.describe()} for op in self.window]
        if self.message:
            out["message"] = self.message
        return out


# --------------------------------------------------------------------------
# Reading
# --------------------------------------------------------------------------


def _is_int(x: object) -> bool:
    return type(x) is int


def _is_number(x: object) -> bool:
    return type(x) in (int, float) and math.isfinite(x)  # type: ignore[arg-type]


def _text_or_none(x: object) -> bool:
    return x is None or type(x) is str


def parse_history(lines: Iterable[str]) -> list[Operation]:
    """The operations of a JSONL history; raises HistoryError naming the line."""
    open_ops: dict[int, tuple[int, dict[str, Any]]] = {}
    done: list[Operation] = []
    count = 0
    for number, raw in enumerate(lines, start=1):
        if not raw.strip():
            continue
        try:
            e = json.loads(raw)
        except (ValueError, RecursionError) as exc:
            raise HistoryError(number, f"not valid JSON ({exc})") from None
        if type(e) is not dict:
            raise HistoryError(number, "not a JSON object")
        for name in ("type", "process", "f", "key", "value", "time"):
            if name not in e:
                raise HistoryError(number, f"missing field {name!r}")
        kind, process, f, key, t = e["type"], e["process"], e["f"], e["key"], e["time"]
        if kind not in ("invoke", "ok", "fail", "info"):
            raise HistoryError(number, f"type must be invoke, ok, fail or info, not {kind!r}")
        if not _is_int(process):
            raise HistoryError(number, f"process must be an integer, not {process!r}")
        if type(f) is not str:
            raise HistoryError(number, f"f must be text, not {f!r}")
        if not _text_or_none(key):
            raise HistoryError(number, f"key must be text or null, not {key!r}")
        if not _is_number(t):
            raise HistoryError(number, f"time must be a number, not {t!r}")
        if "index" in e and not _is_int(e["index"]):
            raise HistoryError(number, f"index must be an integer, not {e['index']!r}")
        fence = e.get("fence")
        if fence is not None and not (type(fence) is list and len(fence) == 2
                                      and type(fence[0]) is str and _is_int(fence[1])):
            raise HistoryError(number, f"fence must be [lock, token], not {fence!r}")
        if kind == "invoke":
            if process in open_ops:
                raise HistoryError(number, f"process {process} invokes while its op of line "
                                   f"{open_ops[process][0]} is still open")
            if f in KV_FUNCTIONS and key is None:
                raise HistoryError(number, f"a {f} needs a key")
            _check_invoke_value(number, f, e["value"])
            open_ops[process] = (number, e)
            continue
        if process not in open_ops:
            raise HistoryError(number, f"{kind} for process {process} without an invoke")
        inv_line, inv = open_ops.pop(process)
        if inv["f"] != f or inv["key"] != key:
            raise HistoryError(number, f"completes {f} {key!r}, but process {process}'s open "
                               f"op (line {inv_line}) is {inv['f']} {inv['key']!r}")
        if t < inv["time"]:
            raise HistoryError(number, f"completes at time {t}, before its invoke "
                               f"(line {inv_line}, time {inv['time']})")
        done.append(_operation(number, count, inv_line, inv, e))
        count += 1
    for process, (inv_line, inv) in sorted(open_ops.items()):  # the history just ends
        done.append(_operation(None, count, inv_line, inv, None))
        count += 1
    return _ranked(done)


def _ranked(ops: list[Operation]) -> list[Operation]:
    """`ops` with `start`/`end` set to the ranks of their events in (time, line) order."""
    events = [(op.invoke_ns, op.line, k, 0) for k, op in enumerate(ops)]
    events += [(op.complete_ns, op.complete_line or 0, k, 1) for k, op in enumerate(ops)
               if op.type != "info"]
    events.sort()
    ranks: dict[tuple[int, int], int] = {(k, which): r for r, (_, _, k, which) in
                                         enumerate(events)}
    return [dataclasses.replace(op, start=ranks[(k, 0)], end=ranks.get((k, 1), math.inf))
            for k, op in enumerate(ops)]


def _check_invoke_value(number: int, f: str, value: Any) -> None:
    if f == "put":
        ok = type(value) is str
    elif f == "cas":
        ok = (type(value) is list and len(value) == 2 and _text_or_none(value[0])
              and type(value[1]) is str)
    elif f in ("lock", "unlock"):
        ok = _is_int(value)
    else:
        ok = True
    if not ok:
        raise HistoryError(number, f"bad value for {f}: {value!r}")


def _optional_int(number: int, e: dict[str, Any], name: str) -> int | None:
    v = e.get(name)
    if v is not None and not _is_int(v):
        raise HistoryError(number, f"{name} must be an integer, not {v!r}")
    return v


def _operation(number: int | None, op_id: int, inv_line: int, inv: dict[str, Any],
               e: dict[str, Any] | None) -> Operation:
    f = inv["f"]
    fence = tuple(inv["fence"]) if inv.get("fence") is not None else None
    garbage = False
    reason: Any
    if e is None:
        kind, out, reason, done_at = "info", None, "run_ended", math.inf
    else:
        kind, out, done_at = e["type"], e["value"], e["time"]
        reason = e.get("error")
        if reason is not None and type(reason) is not str:
            raise HistoryError(number or inv_line, f"error must be text, not {reason!r}")
        if kind == "info":
            done_at = math.inf  # it may take effect any time after its invoke
        if kind == "ok" and f == "get" and not _text_or_none(out):
            raise HistoryError(number or inv_line, f"a get's value must be text or null, "
                               f"not {out!r}")
        if kind == "ok" and f == "lock" and not _is_int(out):
            if not (type(out) is str and out.startswith("hex:")):
                raise HistoryError(number or inv_line, f"a granted lock's value must be its "
                                   f"token, not {out!r}")
            garbage = True  # (an undecodable result is written as hex)
        if kind == "ok" and f in ("put", "delete", "cas", "unlock") and out != inv["value"]:
            garbage = True  # the history repeats the invoke's value for a store result
        if kind == "fail" and reason is None and f in KV_FUNCTIONS:
            raise HistoryError(number or inv_line, "a fail needs its error")
    extra: dict[str, Any] = {}
    if e is not None:
        for name in ("expiry_us", "agreed_us", "holder"):
            extra[name] = _optional_int(number or inv_line, e, name)
        result = e.get("result")
        if result is not None and type(result) is not str:
            raise HistoryError(number or inv_line, f"result must be text, not {result!r}")
        extra["result"] = result
        if "current" in e:
            if not _text_or_none(e["current"]):
                raise HistoryError(number or inv_line, "current must be text or null")
            extra["current"] = e["current"]
    return Operation(id=op_id, process=inv["process"], f=f, key=inv["key"],
                     value=inv["value"], type=kind, out=out, reason=reason,
                     invoke_ns=inv["time"], complete_ns=done_at, line=inv_line,
                     complete_line=number, fence=fence, garbage=garbage, **extra)


# --------------------------------------------------------------------------
# The model
# --------------------------------------------------------------------------

#: A key's value before anything in the window wrote it (window trimming only).
UNKNOWN = ("?",)
#: The token of a grant whose outcome was not seen (an info lock): equal to no seen token.
UNSEEN_TOKEN = -1

# A lock's record: (token or None when free, holder, expiry_us or None, highest token
# granted so far, agreed time of the last grant or None).
_FREE = (None, None, None, 0, None)


class _Partition:
    """The keys and locks of one partition: slot numbers for the state tuple."""

    def __init__(self, keys: Sequence[str], locks: Sequence[str]) -> None:
        self.keys = list(keys)
        self.locks = list(locks)
        self.slot = {("k", k): i for i, k in enumerate(self.keys)}
        self.slot.update({("l", n): len(self.keys) + i for i, n in enumerate(self.locks)})

    def name(self) -> str:
        parts = [f"key {k}" for k in self.keys] + [f"lock {n}" for n in self.locks]
        return ", ".join(parts)

    def initial(self, unknown_keys: bool = False) -> tuple[Any, ...]:
        return tuple([UNKNOWN if unknown_keys else None] * len(self.keys)
                     + [_FREE] * len(self.locks))


def _slots_of(op: Operation) -> list[tuple[str, str]]:
    if op.f in ("lock", "unlock"):
        return [("l", op.key)]
    out = [("k", op.key)]
    if op.fence is not None:
        out.append(("l", op.fence[0]))
    return out


class Model:
    """The sequential KV/lock store as a step function on immutable state tuples.

    `step(state, op)` returns (the possible next states, why not): an empty list
    means `op` cannot take effect in `state` with its recorded outcome.
    """

    def __init__(self, part: _Partition, skew_us: int = 0) -> None:
        self.part = part
        self.skew_us = skew_us

    def _fence_ok(self, state: tuple[Any, ...], fence: tuple[str, int]) -> bool:
        token = state[self.part.slot[("l", fence[0])]][0]
        return token is not None and token == fence[1]

    def _fence_text(self, state: tuple[Any, ...], fence: tuple[str, int]) -> str:
        token = state[self.part.slot[("l", fence[0])]][0]
        now = ("free" if token is None else "held with a token nobody saw"
               if token == UNSEEN_TOKEN else f"at token {token}")
        return f"lock {fence[0]} is {now}"

    def step(self, state: tuple[Any, ...], op: Operation) -> tuple[list[tuple[Any, ...]], str]:
        if op.garbage:
            return [], f"{op.f} {op.key} was answered {op.out!r}, a result the store never gives"
        if op.f in ("lock", "unlock"):
            return self._step_lock(state, op)
        return self._step_kv(state, op)

    @staticmethod
    def _with(state: tuple[Any, ...], i: int, value: Any) -> tuple[Any, ...]:
        return state[:i] + (value,) + state[i + 1:]

    def _step_kv(self, state: tuple[Any, ...], op: Operation) -> tuple[list[tuple[Any, ...]], str]:
        i = self.part.slot[("k", op.key)]
        cur = state[i]
        fence = op.fence
        fence_ok = fence is None or self._fence_ok(state, fence)
        shown = "unknown" if cur is UNKNOWN else repr(cur)
        f, kind = op.f, op.type
        if kind == "info":  # no effect, or its effect with whatever outcome the model allows
            if f == "get" or not fence_ok:
                return [state], ""
            if f == "put":
                return [state, self._with(state, i, op.value)], ""
            if f == "delete":
                return [state, self._with(state, i, None)], ""
            expected, new = op.value
            if cur is UNKNOWN or cur == expected:
                return [state, self._with(state, i, new)], ""
            return [state], ""
        if kind == "fail":
            if op.reason == "stale_token":
                if fence is None:
                    return [], f"{f} {op.key} without a fence failed with stale_token"
                if fence_ok:
                    return [], (f"{f} {op.key} with fence {fence[0]}:{fence[1]} was refused as "
                                f"stale, but {self._fence_text(state, fence)}")
                return [state], ""
            if op.reason == "cas_failed" and f == "cas":
                if not fence_ok:
                    return [], (f"cas {op.key} said cas_failed, but its fence "
                                f"{fence[0]}:{fence[1]} is stale: "  # type: ignore[index]
                                f"{self._fence_text(state, fence)}")  # type: ignore[arg-type]
                expected = op.value[0]
                if cur is UNKNOWN:
                    pinned = op.current if op.current != "-" else UNKNOWN
                    if pinned == expected:
                        return [], f"cas {op.key} failed although it found {expected!r}"
                    return [self._with(state, i, pinned)], ""
                if cur == expected:
                    return [], (f"cas {op.key} expecting {expected!r} failed, but the value is "
                                f"{shown}")
                if op.current != "-" and op.current != cur:
                    return [], (f"cas {op.key} failed reporting the value {op.current!r}, but "
                                f"the value is {shown}")
                return [state], ""
            return [state], ""  # (other fails are dropped before the search)
        # ok
        if not fence_ok:
            assert fence is not None
            return [], (f"{f} {op.key} with fence {fence[0]}:{fence[1]} was accepted, but "
                        f"{self._fence_text(state, fence)}: a write with a stale token")
        if f == "get":
            if cur is UNKNOWN:
                return [self._with(state, i, op.out)], ""
            if cur != op.out:
                return [], f"get {op.key} read {op.out!r}, but the value is {shown}"
            return [state], ""
        if f == "put":
            return [self._with(state, i, op.value)], ""
        if f == "delete":
            if op.result == "not_found" and cur is not None and cur is not UNKNOWN:
                return [], f"delete {op.key} found nothing, but the value is {shown}"
            if op.result == "ok" and cur is None:
                return [], f"delete {op.key} removed a value, but the key is absent"
            return [self._with(state, i, None)], ""
        expected, new = op.value
        if cur is not UNKNOWN and cur != expected:
            return [], f"cas {op.key} from {expected!r} to {new!r} succeeded, but the value is {shown}"
        return [self._with(state, i, new)], ""

    def _step_lock(self, state: tuple[Any, ...], op: Operation) -> tuple[list[tuple[Any, ...]], str]:
        i = self.part.slot[("l", op.key)]
        token, holder, expiry, last, last_time = state[i]
        p, name = op.process, op.key
        if op.f == "unlock":
            given = op.value
            mine = token is not None and token == given and holder == p
            if op.type == "info":
                return ([state, self._with(state, i, (None, None, None, last, last_time))]
                        if mine else [state]), ""
            if op.type == "ok":
                if token is None:
                    return [], f"unlock {name} by process {p} succeeded, but the lock is free"
                if token != given:
                    return [], (f"unlock {name} with token {given} succeeded, but the current "
                                f"token is {token if token != UNSEEN_TOKEN else 'unseen'}")
                if holder != p:
                    return [], (f"unlock {name} by process {p} succeeded, but process {holder} "
                                "holds it: an unlock by a non-holder")
                return [self._with(state, i, (None, None, None, last, last_time))], ""
            if op.reason == "not_found":
                return ([state], "") if token is None else (
                    [], f"unlock {name} found no lock, but it is held by process {holder}")
            if op.reason == "stale_token":
                if token is None or token == given:
                    return [], (f"unlock {name} with token {given} was refused as stale, but the "
                                f"lock is {'free' if token is None else 'at that token'}")
                return [state], ""
            if op.reason == "not_holder":
                if token != given or holder == p:
                    return [], (f"unlock {name} by process {p} was refused (not the holder), "
                                f"but the lock is at {token} held by process {holder}")
                return [state], ""
            return [state], ""
        # lock
        if op.type == "fail":
            if op.reason != "locked":
                return [state], ""
            if token is None:
                return [], f"lock {name} by process {p} was refused (locked), but it is free"
            if holder == p:
                return [], f"lock {name} by process {p} was refused (locked), but p holds it"
            if op.holder is not None and op.holder != holder:
                return [], (f"lock {name} was refused naming holder {op.holder}, but process "
                            f"{holder} holds it")
            if op.expiry_us is not None and expiry is not None and op.expiry_us != expiry:
                return [], (f"lock {name} was refused naming a lease to {op.expiry_us}, but the "
                            f"lease runs to {expiry}")
            return [state], ""
        if op.type == "info":
            out = [state, self._with(state, i, (UNSEEN_TOKEN, p, None, last, last_time))]
            if holder == p and token is not None:
                out.append(self._with(state, i, (token, p, None, last, last_time)))
            return out, ""
        granted, t = op.out, op.agreed_us
        if t is not None and last_time is not None and t < last_time:
            return [], (f"lock {name} granted at agreed time {t}, before an earlier grant's "
                        f"{last_time}: agreed time went backwards")
        new_time = t if t is not None else last_time
        new_grant = (granted, p, op.expiry_us, max(last, granted), new_time)
        if token is not None and holder == p and token != UNSEEN_TOKEN:
            live = None if t is None or expiry is None else t < expiry
            if granted == token and live is not False:
                return [self._with(state, i, new_grant)], ""  # a renewal
            if granted > last and live is not True:
                return [self._with(state, i, new_grant)], ""
            return [], (f"lock {name} renewed by its holder {p} gave token {granted}; expected "
                        f"{'the same token ' + str(token) if live else 'a token above ' + str(last)}")
        if granted <= last:
            return [], (f"lock {name} granted token {granted} to process {p}, not above the "
                        f"highest token granted before ({last}): the token went backwards")
        if token is not None and holder != p and t is not None and expiry is not None:
            if not t - 2 * self.skew_us > expiry:
                return [], (f"lock {name} granted to process {p} at agreed time {t}, but "
                            f"process {holder}'s lease runs to {expiry} (skew {self.skew_us} us)")
        return [self._with(state, i, new_grant)], ""


# --------------------------------------------------------------------------
# The search
# --------------------------------------------------------------------------


@dataclass
class _Failure:
    depth: int = -1
    blocking: Operation | None = None
    why: str = ""


def _search(ops: Sequence[Operation], model: Model, initial: tuple[Any, ...],
            deadline: Callable[[], bool], max_states: int) -> _Failure | None:
    """None if `ops` (sorted by invoke) linearize from `initial`, else the deepest failure.

    Raises OutOfTime."""
    n = len(ops)
    required = [i for i in range(n) if ops[i].type != "info"]
    optional = [i for i in range(n) if ops[i].type == "info"]
    by_complete = sorted(required, key=lambda i: ops[i].end)
    memo: set[tuple[int, tuple[Any, ...]]] = set()
    max_states = min(max_states, MEMO_BITS // (n + 64))
    failure = _Failure()
    step = model.step
    # a frame: [mask, state, depth, p_complete, p_invoke, children iterator]
    stack: list[list[Any]] = []

    def children(mask: int, state: tuple[Any, ...], depth: int, pc: int, pi: int):  # type: ignore[no-untyped-def]
        while pc < len(by_complete) and mask >> by_complete[pc] & 1:
            pc += 1
        if pc == len(by_complete):
            yield None  # done: every completed op is linearized
            return
        bound = ops[by_complete[pc]].end  # nothing invoked after it may go first
        while pi < len(required) and mask >> required[pi] & 1:
            pi += 1
        reasons = []
        for pool, start in ((required, pi), (optional, 0)):
            for k in range(start, len(pool)):
                i = pool[k]
                if ops[i].start > bound:
                    break
                if mask >> i & 1:
                    continue
                nexts, why = step(state, ops[i])
                if not nexts and i == by_complete[pc]:
                    reasons.append(why)
                for s in nexts:
                    key = (mask | 1 << i, s)
                    if key not in memo:
                        memo.add(key)
                        yield (mask | 1 << i, s, depth + (ops[i].type != "info"), pc, pi)
        if depth > failure.depth or failure.blocking is None:
            failure.depth = depth
            failure.blocking = ops[by_complete[pc]]
            failure.why = reasons[0] if reasons else (
                "no order of the operations concurrent with it gives every recorded outcome")

    stack.append([children(0, initial, 0, 0, 0)])
    steps = 0
    while stack:
        steps += 1
        if steps % 512 == 0 and deadline():
            raise OutOfTime("the search ran out of time")
        if len(memo) > max_states:
            raise OutOfTime(f"the search remembered more than {max_states} states")
        child = next(stack[-1][0], False)
        if child is False:
            stack.pop()
            continue
        if child is None:
            return None
        stack.append([children(*child)])  # type: ignore[misc]
    return failure


def _partitions(ops: Sequence[Operation]) -> list[tuple[_Partition, list[Operation]]]:
    parent: dict[tuple[str, str], tuple[str, str]] = {}

    def find(x: tuple[str, str]) -> tuple[str, str]:
        parent.setdefault(x, x)
        while parent[x] != x:
            parent[x] = parent[parent[x]]
            x = parent[x]
        return x

    for op in ops:
        slots = _slots_of(op)
        for s in slots[1:]:
            a, b = find(slots[0]), find(s)
            if a != b:
                parent[b] = a
        find(slots[0])
    groups: dict[tuple[str, str], list[Operation]] = {}
    members: dict[tuple[str, str], set[tuple[str, str]]] = {}
    for op in ops:
        root = find(_slots_of(op)[0])
        groups.setdefault(root, []).append(op)
    for x in list(parent):
        members.setdefault(find(x), set()).add(x)
    out = []
    for root, group in groups.items():
        part = _Partition(sorted(n for kind, n in members[root] if kind == "k"),
                          sorted(n for kind, n in members[root] if kind == "l"))
        out.append((part, sorted(group, key=lambda o: (o.start, o.id))))
    out.sort(key=lambda pg: pg[0].name())
    return out


def _checked(op: Operation) -> bool:
    """Whether `op` constrains anything (fails without an observation change nothing)."""
    if op.f not in KV_FUNCTIONS:
        return False
    if op.type == "fail":
        return op.reason in OBSERVING_FAILS
    if op.type == "info" and op.f == "get":
        return False
    return True


def _as_of(ops: Sequence[Operation], t: float) -> list[Operation]:
    """The history as it stood at time t: later invokes gone, later completions unknown."""
    out = []
    for op in ops:
        if op.start > t:
            continue
        if op.end > t and op.type != "info":
            if op.f == "get" or op.type == "fail":
                continue  # a read or a failure changes nothing when its outcome is unknown
            op = _replace(op, type="info", out=None, reason="pending")
        out.append(op)
    return out


def _replace(op: Operation, **changes: Any) -> Operation:
    if changes.get("type") == "info":
        changes["complete_ns"] = changes["end"] = math.inf
    return dataclasses.replace(op, **changes)


def check(ops: Sequence[Operation], *, skew_us: int = 0,
          deadline: Callable[[], bool] = lambda: False,
          max_states: int = DEFAULT_MAX_STATES) -> Verdict:
    """Is the history of `ops` linearizable, partition by partition? (module docstring)"""
    checked = [op for op in ops if _checked(op)]
    verdict = Verdict(ok=True, operations=len(ops), unchecked=len(ops) - len(checked))
    parts = _partitions(checked)
    verdict.partitions = len(parts)
    for part, group in parts:
        model = Model(part, skew_us)
        try:
            failure = _search(group, model, part.initial(), deadline, max_states)
        except OutOfTime as exc:
            return Verdict(ok=None, operations=len(ops), partitions=len(parts),
                           unchecked=verdict.unchecked, partition=part.name(),
                           message=f"{exc} on {part.name()} ({len(group)} operations)")
        if failure is None:
            continue
        verdict.ok = False
        verdict.partition = part.name()
        verdict.window, verdict.why, blocking = _explain(group, part, model, failure,
                                                         deadline, max_states)
        if blocking is not None:
            kind = "lock" if blocking.f in ("lock", "unlock") else "key"
            verdict.key = f"{kind} {blocking.key}"
        return verdict
    return verdict


def _explain(group: list[Operation], part: _Partition, model: Model, failure: _Failure,
             deadline: Callable[[], bool], max_states: int
             ) -> tuple[list[Operation], str, Operation | None]:
    """The shortest failing window of a failing partition, and why it fails."""
    def fails(ops: list[Operation], unknown: bool = False) -> _Failure | None:
        return _search(ops, model, part.initial(unknown), deadline, max_states)

    prefix, found = group, failure
    try:
        ends = sorted({op.end for op in group if op.type != "info"})
        lo, hi = 0, len(ends) - 1  # the history as of ends[hi] fails
        while lo < hi:
            mid = (lo + hi) // 2
            f = fails(_as_of(group, ends[mid]))
            if f is not None:
                hi = mid
            else:
                lo = mid + 1
        prefix = _as_of(group, ends[hi])
        found = fails(prefix) or failure
        if found.blocking is not None:  # only the ops of the blocking op's key or lock
            narrow = _narrowed(prefix, found.blocking)
            if len(narrow) < len(prefix):
                f = fails(narrow)
                if f is not None:
                    prefix, found = narrow, f
        b = found.blocking
        if b is not None and b.f not in ("lock", "unlock") and any(op.fence for op in prefix):
            # a failure about values: the key's ops without their fences may show it alone
            unfenced = [_replace(op, fence=None) for op in prefix
                        if op.key == b.key and op.f not in ("lock", "unlock")
                        and op.reason != "stale_token"]
            f = fails(unfenced)
            if f is not None:
                prefix, found = unfenced, f
        if not any(op.f in ("lock", "unlock") or op.fence for op in prefix):
            # with the value unknown at the start, trim from the front
            for start in range(len(prefix) - 1, max(-1, len(prefix) - 1 - MAX_WINDOW_TRIES), -1):
                window = prefix[start:]
                f = fails(window, unknown=True)
                if f is not None:
                    prefix, found = window, f
                    break
    except OutOfTime:
        pass  # report what was found so far
    blocking = found.blocking
    why = found.why
    window = list(prefix)
    if len(window) > MAX_WINDOW_SHOWN:
        why += f" [the last {MAX_WINDOW_SHOWN} of the window's {len(window)} operations shown]"
        window = window[-MAX_WINDOW_SHOWN:]
    if blocking is not None:
        why = f"{blocking.describe()} (line {blocking.complete_line or blocking.line}): {why}"
    return window, why, blocking


def _narrowed(ops: list[Operation], blocking: Operation) -> list[Operation]:
    """The ops of `blocking`'s key (with the lock ops of the locks fencing them), or of its
    lock: dropping the others relaxes nothing that matters (they only observe the locks)."""
    if blocking.f in ("lock", "unlock"):
        return [op for op in ops if op.f in ("lock", "unlock") and op.key == blocking.key]
    mine = [op for op in ops if op.f not in ("lock", "unlock") and op.key == blocking.key]
    locks = {op.fence[0] for op in mine if op.fence is not None}
    return [op for op in ops if op in mine or (op.f in ("lock", "unlock") and op.key in locks)]


def format_verdict(verdict: Verdict, source: str = "history") -> str:
    """The readable report `bft check` prints."""
    if verdict.ok is None:
        return (f"{source}: OUT OF TIME: {verdict.message}; {verdict.operations} operations "
                f"in {verdict.partitions} partitions")
    head = (f"{verdict.operations} operations in {verdict.partitions} partitions"
            + (f" ({verdict.unchecked} not checked: failed with no observation, or not KV)"
               if verdict.unchecked else ""))
    if verdict.ok:
        return f"{source}: linearizable: {head}"
    lines = [f"{source}: NOT linearizable: {verdict.key} (partition: {verdict.partition})",
             f"  {head}",
             f"  shortest failing window ({len(verdict.window)} operations):"]
    for op in verdict.window:
        where = f"lines {op.line}-{op.complete_line}" if op.complete_line else f"line {op.line}"
        lines.append(f"    {where:>16}  {op.describe()}")
    lines.append(f"  why: {verdict.why}")
    return "\n".join(lines)
