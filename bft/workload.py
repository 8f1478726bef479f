"""Client workloads for real clusters: what `bft up --load`, `bft bench` and the pytest
plugin's local cluster send (issue 22 item 1). Pure: the randomness is a
`random.Random`-like object the caller passes in (seeded), nothing here does I/O.

A workload is one client's op stream: `next_op() -> bytes`, then `observe(result)` with
the agreed result of that op (or `observe(None)` when its outcome is unknown).

* `mixed` (the default when a history is recorded): get, put, cas, delete, lock,
  unlock and fenced writes over a small contended key set (`keys`, default 4). Key i
  has lock i: a client that holds lock i writes key i fenced with its token, then
  usually unlocks; sometimes it walks away (the lease runs out) and later writes
  with the old token, which the store must refuse once another client took the lock
  (DDIA figure 8-5). Every written value is unique (`<prefix>c<client>.<n>`), so a
  history shows which write a read saw. Keys and locks are named `<prefix>k<i>` and
  `<prefix>L<i>`: give each run its own prefix, so a history starts from absent keys
  and free locks (what `bft check` assumes).
* `puts`: puts of random values to 1,000 random keys (never read: a put-only history
  is always linearizable; for throughput).
* `noop`: an opaque op of `op_size` bytes the KV store answers with an error without
  changing its state (the ordering protocol's cost alone).
* `app`: a user's application, through its `random_op(rng, client_id) -> bytes` (and
  `observe_result(result)` if it has one).
"""

from __future__ import annotations

from typing import Any, Protocol

from bft.app import Ops, Result, decode_result_untrusted
from bft.errors import MalformedMessage

WORKLOADS = ("mixed", "puts", "noop", "app")
DEFAULT_KEYS = 4
#: Lease lengths a mixed workload asks for (short ones expire under load: takeovers).
LEASES_MS = (200, 500, 2000)


#: What a workload draws from: a seeded `random.Random` (random(), randrange(), choice()).
Rng = Any


class Workload(Protocol):
    def next_op(self) -> bytes: ...

    def observe(self, result: bytes | None) -> None: ...


def _result(data: bytes | None) -> Result | None:
    if data is None:
        return None
    try:
        return decode_result_untrusted(data)
    except MalformedMessage:
        return None


class MixedWorkload:
    """The contended KV + fenced-lock mix (module docstring)."""

    def __init__(self, client_id: int, rng: Rng, *, keys: int = DEFAULT_KEYS,
                 prefix: str = "") -> None:
        if keys < 1:
            raise ValueError(f"keys must be >= 1, got {keys}")
        self.client_id = client_id
        self.rng = rng
        self.keys = [f"{prefix}k{i}" for i in range(keys)]
        self.locks = [f"{prefix}L{i}" for i in range(keys)]
        self.prefix = prefix
        self.seen: dict[str, bytes | None] = {}  # the last value this client saw per key
        self.holding: tuple[int, int] | None = None  # (key index, token)
        self.wrote_fenced = False
        self.old: tuple[int, int] | None = None  # a token walked away from
        self._written = 0
        self._last: tuple[str, int] | None = None  # (what, key index) of the op in flight
        self._writing: bytes | None = None  # the value the op in flight writes (None: none)

    def _value(self) -> bytes:
        self._written += 1
        self._writing = f"{self.prefix}c{self.client_id}.{self._written}".encode()
        return self._writing

    def next_op(self) -> bytes:
        rng = self.rng
        self._writing = None
        if self.holding is not None:
            i, token = self.holding
            fence = (self.locks[i], token)
            if not self.wrote_fenced:
                self.wrote_fenced = True
                self._last = ("write", i)
                r = rng.random()
                if r < 0.6:
                    return Ops.put(self.keys[i], self._value(), fence=fence)
                if r < 0.8:
                    return Ops.cas(self.keys[i], self.seen.get(self.keys[i]), self._value(),
                                   fence=fence)
                return Ops.delete(self.keys[i], fence=fence)
            self.holding = None
            if rng.random() < 0.15:  # walk away: the lease runs out; write with it later
                self.old = (i, token)
            else:
                self._last = ("unlock", i)
                return Ops.unlock(self.locks[i], token)
        if self.old is not None and rng.random() < 0.3:
            i, token = self.old
            self.old = None
            self._last = ("write", i)
            return Ops.put(self.keys[i], self._value(), fence=(self.locks[i], token))
        i = rng.randrange(len(self.keys))
        key = self.keys[i]
        r = rng.random()
        if r < 0.15:
            self._last = ("lock", i)
            return Ops.lock(self.locks[i], rng.choice(LEASES_MS))
        self._last = ("kv", i)
        if r < 0.45:
            return Ops.get(key)
        if r < 0.65:
            return Ops.put(key, self._value())
        if r < 0.88:
            return Ops.cas(key, self.seen.get(key), self._value())
        return Ops.delete(key)

    def observe(self, result: bytes | None) -> None:
        last, self._last = self._last, None
        r = _result(result)
        if last is None or r is None:
            return
        what, i = last
        key = self.keys[i]
        if what == "lock" and r.kind == "granted" and r.token is not None:
            self.holding, self.wrote_fenced = (i, r.token), False
        elif r.kind == "value":
            self.seen[key] = r.value
        elif r.kind == "ok" and what in ("kv", "write"):
            self.seen[key] = self._writing  # (a delete writes None)
        elif r.kind in ("not_found", "cas_failed") and what in ("kv", "write"):
            self.seen[key] = r.value if r.kind == "cas_failed" else None


class PutsWorkload:
    """Puts of random values to 1,000 random keys (`bft up --load`'s old load)."""

    def __init__(self, rng: Rng, *, prefix: str = "") -> None:
        self.rng = rng
        self.prefix = prefix

    def next_op(self) -> bytes:
        key = f"{self.prefix}k{self.rng.randrange(1000)}"
        return Ops.put(key, b"%d" % self.rng.randrange(10**6))

    def observe(self, result: bytes | None) -> None:
        pass


class NoopWorkload:
    """An opaque op of `op_size` bytes (the KV store answers error without a change)."""

    def __init__(self, op_size: int = 0) -> None:
        self.op = b"\x00" * op_size

    def next_op(self) -> bytes:
        return self.op

    def observe(self, result: bytes | None) -> None:
        pass


class AppWorkload:
    """A user's application: `app.random_op(rng, client_id)`."""

    def __init__(self, app: Any, client_id: int, rng: Rng) -> None:
        if not callable(getattr(app, "random_op", None)):
            raise ValueError(f"{type(app).__name__} has no random_op(rng, client_id) method: "
                             "the app workload needs it")
        self.app = app
        self.client_id = client_id
        self.rng = rng

    def next_op(self) -> bytes:
        op = self.app.random_op(self.rng, self.client_id)
        if not isinstance(op, bytes):
            raise TypeError(f"random_op returned {type(op).__name__}, not bytes")
        return op

    def observe(self, result: bytes | None) -> None:
        observe = getattr(self.app, "observe_result", None)
        if callable(observe) and result is not None:
            observe(result)


def make_workload(kind: str, client_id: int, rng: Rng, *, keys: int = DEFAULT_KEYS,
                  prefix: str = "", op_size: int = 0, app: Any = None) -> Workload:
    """The workload `kind` (one of WORKLOADS) of one client; ValueError for a bad kind or an
    app workload without an app."""
    if kind == "mixed":
        return MixedWorkload(client_id, rng, keys=keys, prefix=prefix)
    if kind == "puts":
        return PutsWorkload(rng, prefix=prefix)
    if kind == "noop":
        return NoopWorkload(op_size)
    if kind == "app":
        if app is None:
            raise ValueError("the app workload needs the application (--app MODULE:FACTORY)")
        return AppWorkload(app, client_id, rng)
    raise ValueError(f"unknown workload {kind!r} (one of {', '.join(WORKLOADS)})")
