"""The one effect runner (bft/driver.py): the write-ahead order and the timer contract.

A fake I/O backend records, in one log, every storage call and every message that
leaves; `write_ahead_violations` reads that log the way a crash would: a message
out before the records of its step are durable, or a snapshot whose surviving
records are not written with it. Planted runners that get either wrong are caught.
The timer contract is checked on the runner and through two of its drivers (the
simulator and the node, each with a stub replica that records its ticks).
"""

from __future__ import annotations

import math
from typing import Any

import pytest

from bft.driver import EffectIO, EffectRunner
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
from bft.storage import MemoryStorage


class Log:
    """One ordered log of what reached storage and what left, shared by the fakes."""

    def __init__(self) -> None:
        self.entries: list[tuple[Any, ...]] = []


class FakeStorage(MemoryStorage):
    """MemoryStorage that logs each call."""

    def __init__(self, log: Log) -> None:
        super().__init__()
        self.log = log

    def append(self, record: bytes) -> None:
        super().append(record)
        self.log.entries.append(("append", record))

    def sync(self) -> None:
        super().sync()
        self.log.entries.append(("sync",))

    def write_snapshot(self, seq: int, data: bytes, *, carry_over: Any = ()) -> None:
        super().write_snapshot(seq, data, carry_over=carry_over)
        self.log.entries.append(("snapshot", seq, tuple(carry_over)))


class FakeIO(EffectIO):
    """Logs every message out, timer and observation."""

    def __init__(self, log: Log) -> None:
        self.log = log

    def send(self, to: int, message: Any) -> None:
        self.log.entries.append(("out", "send", to, message))

    def broadcast(self, message: Any) -> None:
        self.log.entries.append(("out", "broadcast", message))

    def reply(self, client: int, reply: Any) -> None:
        self.log.entries.append(("out", "reply", client, reply))

    def set_timer(self, at: float, gen: int) -> None:
        self.log.entries.append(("timer", at, gen))

    def executed(self, effect: Executed) -> None:
        self.log.entries.append(("executed", effect.seq))

    def evidence(self, effect: Evidence) -> None:
        self.log.entries.append(("evidence", effect.culprit))

    def event(self, effect: Event) -> None:
        self.log.entries.append(("event", effect.kind))


def write_ahead_violations(effects: list[Any], entries: list[tuple[Any, ...]]) -> list[str]:
    """What a crash at some point of `entries` would expose, given the step's `effects`.

    - every record the step persisted must be durable (appended and synced, or written
      in a snapshot) before the first message leaves;
    - the records that follow a SaveSnapshot must be written in the same snapshot call
      (a crash right after the snapshot must not lose them)."""
    problems = []
    records = [e.record for e in effects if isinstance(e, Persist)]
    snapshot_at = next((k for k, e in enumerate(effects) if isinstance(e, SaveSnapshot)), None)
    survivors = ([e.record for e in effects[snapshot_at + 1:] if isinstance(e, Persist)]
                 if snapshot_at is not None else [])
    durable: set[bytes] = set()
    pending: set[bytes] = set()
    for entry in entries:
        if entry[0] == "append":
            pending.add(entry[1])
        elif entry[0] == "sync":
            durable |= pending
            pending.clear()
        elif entry[0] == "snapshot":
            durable = set(entry[2])
            pending.clear()
            missing = [r for r in survivors if r not in entry[2]]
            if missing:
                problems.append(f"snapshot {entry[1]} written without its records {missing}")
        elif entry[0] == "out":
            must = set(survivors) if snapshot_at is not None else set(records)
            if not must <= durable:
                problems.append(f"{entry[1]} left before {sorted(must - durable)} were durable")
                break
    return problems


def run(effects: list[Any], runner_class: type = EffectRunner) -> tuple[Log, FakeStorage]:
    log = Log()
    storage = FakeStorage(log)
    runner_class(storage, FakeIO(log)).run(effects)
    return log, storage


class SendsFirst(EffectRunner):
    """Planted: carries effects out in the order given, syncing only at the end."""

    def run(self, effects: list[Any]) -> None:
        for e in effects:
            if isinstance(e, Persist):
                self.storage.append(e.record)
            elif isinstance(e, Broadcast):
                self.io.broadcast(e.message)
            elif isinstance(e, Send):
                self.io.send(e.to, e.message)
        self.storage.sync()


class SnapshotThenAppend(EffectRunner):
    """Planted: writes a snapshot alone, then appends its surviving records (and syncs
    before anything leaves): a crash between the two loses them."""

    def run(self, effects: list[Any]) -> None:
        for e in effects:
            if isinstance(e, Persist):
                self.storage.append(e.record)
            elif isinstance(e, SaveSnapshot):
                self.storage.write_snapshot(e.seq, e.data)
            else:
                self.storage.sync()
                self.io.broadcast(e.message)
        self.storage.sync()


# ------------------------------------------------------------------ write-ahead order

STEP = [Send(1, "pre-prepare"), Persist(b"a"), Broadcast("prepare"), Persist(b"b"),
        Reply(0, "reply"), Executed(1, 0, b"d", None, (), b"s"), Event("commit"),
        SetTimer(2.0)]


def test_records_are_durable_before_anything_leaves_with_one_sync() -> None:
    log, storage = run(STEP)
    assert write_ahead_violations(STEP, log.entries) == []
    assert log.entries == [
        ("append", b"a"), ("append", b"b"), ("sync",),
        ("out", "send", 1, "pre-prepare"), ("out", "broadcast", "prepare"),
        ("out", "reply", 0, "reply"), ("executed", 1), ("event", "commit"), ("timer", 2.0, 1)]
    storage.crash()
    assert storage.records() == [b"a", b"b"]


def test_a_runner_that_sends_before_persisting_is_caught() -> None:
    log, _ = run(STEP, SendsFirst)
    assert write_ahead_violations(STEP, log.entries) == [
        "send left before [b'a', b'b'] were durable"]


def test_a_snapshot_is_written_with_its_surviving_records_in_one_call() -> None:
    effects = [Persist(b"old"), SaveSnapshot(8, b"state"), Persist(b"kept1"), Persist(b"kept2"),
               Broadcast("checkpoint")]
    log, storage = run(effects)
    assert write_ahead_violations(effects, log.entries) == []
    assert [e for e in log.entries if e[0] != "out"] == [
        ("append", b"old"), ("snapshot", 8, (b"kept1", b"kept2"))]
    storage.crash()
    assert storage.load_snapshot() == (8, b"state")
    assert storage.records() == [b"kept1", b"kept2"]


def test_a_runner_that_appends_a_snapshots_records_after_it_is_caught() -> None:
    effects = [SaveSnapshot(8, b"state"), Persist(b"kept"), Broadcast("checkpoint")]
    log, _ = run(effects, SnapshotThenAppend)
    assert write_ahead_violations(effects, log.entries) == [
        "snapshot 8 written without its records [b'kept']"]


def test_nothing_persisted_means_no_sync() -> None:
    log, _ = run([Broadcast("status"), SetTimer(1.0)])
    assert ("sync",) not in log.entries


def test_the_send_hook_sees_votes_after_the_sync_and_before_they_leave() -> None:
    log = Log()
    seen: list[Any] = []
    runner = EffectRunner(FakeStorage(log), FakeIO(log),
                          on_send=lambda e: seen.append((e, list(log.entries))))
    runner.run([Persist(b"a"), Broadcast("prepare"), Send(2, "commit"), Reply(0, "reply")])
    assert [e for e, _ in seen] == [Broadcast("prepare"), Send(2, "commit")]  # not the Reply
    first_log = seen[0][1]
    assert first_log == [("append", b"a"), ("sync",)]  # durable, nothing out yet


def test_without_storage_records_are_dropped_and_the_rest_carried_out() -> None:
    log = Log()
    EffectRunner(None, FakeIO(log)).run([Persist(b"a"), SaveSnapshot(1, b"s"), Send(1, "m")])
    assert log.entries == [("out", "send", 1, "m")]


def test_an_unknown_effect_raises_and_a_subclass_counts_as_its_base() -> None:
    class Tagged(Send):
        __slots__ = ()

    log, _ = run([Tagged(3, "m")])
    assert log.entries == [("out", "send", 3, "m")]
    with pytest.raises(TypeError, match="not an effect: str"):
        run(["Send(1, m)"])


# ------------------------------------------------------------------ the timer contract

def test_a_deadline_is_due_once_when_its_time_has_come() -> None:
    log = Log()
    runner = EffectRunner(FakeStorage(log), FakeIO(log))
    assert runner.take_due(1e9) is False  # no SetTimer, no tick
    runner.run([SetTimer(5.0)])
    assert runner.deadline == 5.0
    assert runner.take_due(4.999) is False
    assert runner.take_due(5.0) is True
    assert runner.take_due(5.0) is False and runner.take_due(9.0) is False  # once
    assert runner.deadline == math.inf


def test_a_later_set_timer_replaces_the_earlier_one() -> None:
    log = Log()
    runner = EffectRunner(FakeStorage(log), FakeIO(log))
    runner.run([SetTimer(5.0)])
    runner.run([SetTimer(3.0)])
    assert runner.take_due(3.0) is True
    assert runner.take_due(5.0) is False  # the replaced deadline never ticks


def test_a_wake_up_scheduled_for_a_replaced_timer_is_stale() -> None:
    log = Log()
    runner = EffectRunner(FakeStorage(log), FakeIO(log))
    runner.run([SetTimer(5.0), SetTimer(7.0)])
    assert [e for e in log.entries if e[0] == "timer"] == [("timer", 5.0, 1), ("timer", 7.0, 2)]
    assert runner.take_due(7.0, gen=1) is False  # the heap event of the first SetTimer
    assert runner.take_due(7.0, gen=2) is True
    runner.run([SetTimer(9.0)])
    runner.clear_timer()  # crashed
    assert runner.take_due(9.0, gen=3) is False


class TickRecorder:
    """A stub replica: each tick asks for the next at `now + step` until `until`."""

    view = 0
    in_view_change = False
    last_executed = 0
    stable_seq = 0

    def __init__(self, first: float, step: float, until: float) -> None:
        self.first, self.step, self.until = first, step, until
        self.ticks: list[float] = []
        self.start_now: float | None = None
        self.drops: dict[str, int] = {}
        self.counters: dict[str, int] = {}

    def start(self, now: float, wall: Any = None) -> list[Any]:
        self.start_now = now
        return [SetTimer(now + self.first)]

    def receive(self, message: Any, now: float, wall: Any = None) -> list[Any]:
        return []

    def tick(self, now: float, wall: Any = None) -> list[Any]:
        self.ticks.append(now)
        nxt = now + self.step
        return [SetTimer(nxt)] if nxt <= self.until else []

    def statistics(self) -> dict[str, Any]:
        return {}


def test_the_simulator_ticks_a_replica_at_its_deadlines_only() -> None:
    """No fixed schedule (issue 18 2d): the ticks are exactly the SetTimer deadlines."""
    from adversary.sim import SimConfig, Simulation

    stubs: dict[int, TickRecorder] = {}

    def factory(ctx: Any) -> TickRecorder:
        stubs[ctx.replica_id] = TickRecorder(0.25, 0.7, 3.0)
        return stubs[ctx.replica_id]

    sim = Simulation(SimConfig(seed=1, nodes=4, clients=1, requests=0, drain_s=5.0,
                               node_factory=factory))
    sim.run(until_s=10.0)
    for stub in stubs.values():
        assert stub.ticks == pytest.approx([0.25, 0.95, 1.65, 2.35])
