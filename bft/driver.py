"""The one effect runner: how a replica's effects become I/O, for every driver.

`Replica.start/receive/tick` return effects (bft/effects.py) in the order they
were produced. An `EffectRunner` carries out one step's effects (or several
steps' effects, concatenated) for one replica. The node (bft/node.py: UDP and
a file WAL), the simulator (adversary/sim.py: an event heap and an in-memory
WAL), the protocol test harness (tests/harness.py) and the pipeline benchmark
(benchmarks/pipeline.py) all use it; only the I/O behind it differs: a
`Storage` (bft/storage.py) and an `EffectIO`.

Write-ahead order (PROTOCOL.md "Crash recovery"), enforced here and nowhere else:

1. storage first: every `Persist` is appended in order; a `SaveSnapshot` is
   written together with the `Persist` records that follow it (the records
   that survive the compaction) in ONE atomic `storage.write_snapshot(seq,
   data, carry_over=records)` call; then one `storage.sync()` if anything was
   appended. So a crash never leaves a snapshot without its surviving records.
2. then the rest, in the order given: `Send`, `Broadcast`, `Reply` (nothing
   leaves before what the step persisted is durable), `SetTimer`, `Executed`,
   `Evidence`, `Event`.

Moving a step's records ahead of its messages is always safe (a record only
ever has to be durable *before* a message); it also makes one sync per call,
however many votes the step (or the node's drained batch of steps) signed.

Timer contract (one for every driver): a replica is ticked once per SetTimer
deadline, and never on a fixed schedule. The runner keeps the latest
`SetTimer.at` (`deadline`, a later SetTimer replaces an earlier one) and
numbers SetTimers (`timer_gen`); the driver calls `take_due(now)` when it
wakes (the node: when its wait for datagrams times out at `deadline`; the
simulator: when the heap event scheduled through `EffectIO.set_timer` fires,
with its `gen`) and ticks the replica only when that returns True, which it
does once per deadline. A tick re-announces the replica's next deadline
(`Replica.tick`), so nothing else needs to tick it. The one other tick is the
node's after a pause ends (bft/node.py `_resume`): a process that was stopped
runs its due timers when it resumes; it calls `clear_timer()` first.

Unknown effect types raise TypeError (a subclass of an effect counts as it).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from typing import Any

from bft.effects import (
    Broadcast,
    Event,
    Evidence,
    Executed,
    Persist,
    Reply,
    SaveSnapshot,
    Send,
    SetTimer,
)
from bft.messages import MacReply, Signed, WireMessage
from bft.storage import Storage


class EffectIO:
    """The I/O behind a runner: what each driver does with a message, a timer, an observation.

    Every method does nothing here; a driver overrides what it needs. Called only
    after the step's records are durable (see the module docstring)."""

    __slots__ = ()

    def send(self, to: int, message: WireMessage) -> None:
        """Send `message` to replica `to`."""

    def broadcast(self, message: WireMessage) -> None:
        """Send `message` to every other replica."""

    def reply(self, client: int, reply: Signed[Any] | MacReply) -> None:
        """Send `reply` to client `client`."""

    def set_timer(self, at: float, gen: int) -> None:
        """A SetTimer was taken: the replica's deadline is now `at` (the runner's
        `deadline`), numbered `gen`. A driver that waits on `runner.deadline` needs
        nothing here; one with an event queue schedules `take_due(now, gen)` at `at`."""

    def executed(self, effect: Executed) -> None:
        """The replica executed a batch."""

    def evidence(self, effect: Evidence) -> None:
        """The replica holds a proof against `effect.culprit`."""

    def event(self, effect: Event) -> None:
        """Telemetry: view change, checkpoint, drop..."""


# Effect kinds: one dict lookup by exact type (a subclass gets the code of the first class
# of this list it derives from, as an isinstance chain would; then it is remembered).
PERSIST, SAVE_SNAPSHOT, SEND, BROADCAST, REPLY, SET_TIMER, EXECUTED, EVIDENCE, EVENT = range(9)
_EFFECT_CLASSES: tuple[tuple[type, int], ...] = (
    (Persist, PERSIST), (SaveSnapshot, SAVE_SNAPSHOT), (Send, SEND), (Broadcast, BROADCAST),
    (Reply, REPLY), (SetTimer, SET_TIMER), (Executed, EXECUTED), (Evidence, EVIDENCE),
    (Event, EVENT))
_CODES: dict[type, int] = dict(_EFFECT_CLASSES)
_NO_RECORDS: list[bytes] = []  # never appended to: `carry` before any snapshot


def effect_code(cls: type) -> int:
    """The kind of effect class `cls` (TypeError if it is none of bft.effects' classes)."""
    code = _CODES.get(cls)
    if code is not None:
        return code
    for base, code in _EFFECT_CLASSES:
        if issubclass(cls, base):
            _CODES[cls] = code
            return code
    raise TypeError(f"not an effect: {cls.__name__}")


class EffectRunner:
    """Carries out one replica's effects: write-ahead order and the timer contract.

    `storage`: the replica's stable storage, or None for a driver without one (the
    pipeline benchmark: Persist and SaveSnapshot are dropped). `io`: the rest of the
    I/O. `on_send`, if set, is called with every Send and Broadcast after the sync
    and before `io` is asked to send it (the simulator's conduct checker sees there
    what a replica signs; a Reply carries no vote)."""

    __slots__ = (
        "_broadcast",
        "_observers",
        "_reply",
        "_send",
        "_set_timer",
        "deadline",
        "io",
        "on_send",
        "storage",
        "timer_gen",
    )

    def __init__(self, storage: Storage | None, io: EffectIO, *,
                 on_send: Callable[[Send | Broadcast], None] | None = None) -> None:
        self.storage = storage
        self.io = io
        self.on_send = on_send
        #: the latest SetTimer's time (inf: none pending); see `take_due`
        self.deadline = math.inf
        #: how many SetTimers were taken (numbers a driver's scheduled wake-ups)
        self.timer_gen = 0
        # io's methods, bound once (the simulator's hot path)
        self._send, self._broadcast, self._reply, self._set_timer = (
            io.send, io.broadcast, io.reply, io.set_timer)
        self._observers: tuple[Callable[[Any], None], ...] = (
            io.executed, io.evidence, io.event)

    # -- effects

    def run(self, effects: Sequence[Any]) -> None:
        """Carry out `effects`: storage first (then one sync), then the rest in order."""
        if not effects:
            return
        codes = _CODES
        storage = self.storage
        later = False  # anything but storage effects?
        appended = False
        snapshot: SaveSnapshot | None = None
        carry: list[bytes] = _NO_RECORDS  # a new list only with a snapshot (the collector
        # counts every new container; the simulator runs this tens of thousands of times a second)
        for e in effects:
            code = codes.get(type(e))
            if code is None:
                code = effect_code(type(e))
            if code > SAVE_SNAPSHOT:
                later = True
            elif storage is None:
                continue
            elif code == PERSIST:
                if snapshot is not None:
                    carry.append(e.record)
                else:
                    storage.append(e.record)
                    appended = True
            else:
                if snapshot is not None:
                    storage.write_snapshot(snapshot.seq, snapshot.data, carry_over=carry)
                snapshot = e  # written with the records after it (it replaces all before)
                carry = []
        # (a snapshot or an appended record was only kept with a storage)
        if snapshot is not None and storage is not None:
            storage.write_snapshot(snapshot.seq, snapshot.data, carry_over=carry)
        elif appended and storage is not None:
            storage.sync()
        if not later:
            return
        on_send = self.on_send
        for e in effects:
            code = codes[type(e)]
            if code == BROADCAST:
                if on_send is not None:
                    on_send(e)
                self._broadcast(e.message)
            elif code == SEND:
                if on_send is not None:
                    on_send(e)
                self._send(e.to, e.message)
            elif code == REPLY:
                self._reply(e.client, e.reply)
            elif code == SET_TIMER:
                self.deadline = e.at
                self.timer_gen += 1
                self._set_timer(e.at, self.timer_gen)
            elif code > SET_TIMER:
                self._observers[code - EXECUTED](e)

    # -- the timer contract

    def take_due(self, now: float, gen: int | None = None) -> bool:
        """True when the replica must be ticked now: the latest SetTimer's time has come
        (and, given `gen`, this wake-up is for that SetTimer). Once per SetTimer: the
        deadline is consumed."""
        if self.deadline > now or (gen is not None and gen != self.timer_gen):
            return False
        self.deadline = math.inf
        return True

    def clear_timer(self) -> None:
        """Forget the pending deadline (the replica crashed, or is ticked anyway)."""
        self.deadline = math.inf
