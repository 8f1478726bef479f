"""Scripted and application workloads for the simulator's clients.

A workload is what one simulated client does: `remaining` (operations left),
`next_op() -> bytes`, `observe(result)` (the agreed result of the op in
flight) and optionally `next_delay_s() -> float` (how long the client waits
before its next op, e.g. a process pause) and `start_s` (when it starts).

* `FencingStory`: the fencing-token story (Kleppmann, DDIA chapter 8,
  Figure 8-5). Client 0 takes lock `L` with a lease of `lease_ms`, then its
  process pauses for `pause_s` (past the lease). Meanwhile client 1 waits
  for the lease to expire in agreed time, takes the lock (a newer token) and
  writes the key fenced with it. Client 0 wakes up, still believing it holds
  the lock, and writes fenced with its old token: the store must answer
  `stale_token`, and a final read must return client 1's value. Client 0
  wakes only after client 1's write completed (the story's order; with faults
  the successor may take longer than the pause). `problems()` lists what went
  against the story. Clients beyond the first two run the random KV workload.
* `AppWorkload`: random ops of a user's application, from its
  `random_op(rng, client_id) -> bytes` method.
"""

from __future__ import annotations

from typing import Any

from bft.app import Ops, decode_result_untrusted
from bft.errors import MalformedMessage

#: How often a waiting client looks again whether the story may go on.
POLL_S = 0.1
#: How long the stale client waits at most, after its pause, for the newer holder's write.
MAX_WAIT_S = 60.0


def _result(data: bytes) -> Any:
    try:
        return decode_result_untrusted(data)
    except MalformedMessage:
        return None


class FencingStory:
    """The two clients of the fencing-token story and what they observed."""

    def __init__(self, *, lease_ms: int = 1000, pause_s: float = 3.0, key: str = "fenced",
                 lock: str = "L") -> None:
        if lease_ms <= 0 or pause_s <= lease_ms / 1000.0:
            raise ValueError("the pause must outlast the lease (pause_s > lease_ms / 1000)")
        self.lease_ms = lease_ms
        self.pause_s = pause_s
        self.key = key
        self.lock = lock
        self.holder_token: int | None = None
        self.successor_token: int | None = None
        self.successor_write: str | None = None
        self.stale_write: str | None = None
        self.final_read: bytes | None = None
        self.final_read_kind: str | None = None
        self.lock_attempts = 0

    holder_value = b"written-by-client-0-with-the-old-token"
    successor_value = b"written-by-client-1-with-the-new-token"

    def workload(self, client_id: int, requests: int, rng: Any) -> Any:
        """The workload of simulated client `client_id` (the sim's `workload_factory`)."""
        if client_id == 0:
            return _Holder(self)
        if client_id == 1:
            return _Successor(self)
        from adversary.sim import Workload

        return Workload(client_id, requests, 3, 0.1, rng)

    def problems(self) -> list[str]:
        """Where the run went against the story (empty: the stale write was fenced off)."""
        out = []
        if self.holder_token is None:
            out.append("client 0 never got the lock")
        if self.successor_token is None:
            out.append("client 1 never got the lock")
        elif self.holder_token is not None and self.successor_token <= self.holder_token:
            out.append(f"the newer token {self.successor_token} is not above the old "
                       f"{self.holder_token}")
        if self.successor_write != "ok":
            out.append(f"client 1's fenced write gave {self.successor_write}, not ok")
        if self.stale_write != "stale_token":
            out.append(f"client 0's write with its old token gave {self.stale_write}, "
                       "not stale_token")
        if self.final_read_kind != "value" or self.final_read != self.successor_value:
            out.append(f"the final read gave {self.final_read_kind} {self.final_read!r}, not "
                       "client 1's value")
        return out


class _Holder:
    """Client 0: lock, pause past the lease, stale fenced write, read."""

    def __init__(self, story: FencingStory) -> None:
        self.story = story
        self.step = 0
        self.start_s = 0.0
        self._waited = 0.0

    @property
    def remaining(self) -> int:
        return 3 - self.step

    def next_op(self) -> bytes:
        s = self.story
        if self.step == 0:
            return Ops.lock(s.lock, s.lease_ms)
        if self.step == 1:
            return Ops.put(s.key, s.holder_value, fence=(s.lock, s.holder_token or 0))
        return Ops.get(s.key)

    def observe(self, data: bytes) -> None:
        s, r = self.story, _result(data)
        kind = r.kind if r is not None else "malformed"
        if self.step == 0:
            if kind == "granted":
                s.holder_token = r.token
                self.step = 1
            else:
                self.step = 3  # the story cannot go on; problems() says so
            return
        if self.step == 1:
            s.stale_write = kind
        else:
            s.final_read_kind = kind
            s.final_read = r.value if r is not None else None
        self.step += 1

    def next_delay_s(self) -> float:
        return self.story.pause_s if self.step == 1 else 0.0  # the process pause, past the lease

    def wait_s(self) -> float:
        """The story's order: wake only after the newer holder wrote (waiting at most
        MAX_WAIT_S more)."""
        if self.step == 1 and self.story.successor_write is None and self._waited < MAX_WAIT_S:
            self._waited += POLL_S
            return POLL_S
        return 0.0


class _Successor:
    """Client 1: after the lease expired, lock (retrying while locked), fenced write."""

    def __init__(self, story: FencingStory) -> None:
        self.story = story
        self.step = 0
        self.start_s = story.lease_ms / 1000.0 + 0.2

    @property
    def remaining(self) -> int:
        return 2 - self.step

    def next_op(self) -> bytes:
        s = self.story
        if self.step == 0:
            s.lock_attempts += 1
            return Ops.lock(s.lock, 60_000)
        return Ops.put(s.key, s.successor_value, fence=(s.lock, s.successor_token or 0))

    def observe(self, data: bytes) -> None:
        s, r = self.story, _result(data)
        kind = r.kind if r is not None else "malformed"
        if self.step == 0:
            if kind == "granted":
                s.successor_token = r.token
                self.step = 1
            elif kind != "locked" or s.lock_attempts >= 200:
                self.step = 2
            return
        s.successor_write = kind
        self.step = 2

    def next_delay_s(self) -> float:
        return POLL_S if self.step == 0 else 0.0


class AppWorkload:
    """`requests` random ops of a user's application: `app.random_op(rng, client_id)`."""

    def __init__(self, app: Any, client_id: int, requests: int, rng: Any) -> None:
        if not callable(getattr(app, "random_op", None)):
            raise TypeError(f"{type(app).__name__} has no random_op(rng, client_id) method: the "
                            "simulator needs it to generate a workload for the application")
        self.app = app
        self.client_id = client_id
        self.remaining = requests
        self.rng = rng

    def next_op(self) -> bytes:
        self.remaining -= 1
        op = self.app.random_op(self.rng, self.client_id)
        if not isinstance(op, bytes):
            raise TypeError(f"random_op returned {type(op).__name__}, not bytes")
        return op

    def observe(self, result: bytes) -> None:
        observe = getattr(self.app, "observe_result", None)
        if callable(observe):
            observe(result)
