"""Histories in Jepsen's shape: one invoke and one completion per operation; unknown
outcomes are `info`, never `ok` or `fail`."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import trio
import trio.lowlevel

from adversary.behaviours import make_rule
from bft.history import (
    History,
    call_recorded,
    check_history_shape,
    describe_op,
    read_history,
)
from adversary.pytest_plugin import run_scenario
from adversary.scenario import Scenario
from bft.app import Ops, Result
from bft.node import ClientError

FIELDS = {"index", "type", "process", "f", "key", "value", "time"}


def test_op_and_result_shapes() -> None:
    h = History()
    h.invoke(0, Ops.put("k", b"v"), 1)
    assert h.complete(0, Result("ok").encode(), 2)["type"] == "ok"
    h.invoke(1, Ops.cas("k", b"v", b"w"), 3)
    done = h.complete(1, Result("cas_failed", value=b"x").encode(), 4)
    assert (done["type"], done["value"], done["error"]) == ("fail", ["v", "w"], "cas_failed")
    h.invoke(0, Ops.get("k"), 5)
    assert h.complete(0, Result("value", value=b"\xff").encode(), 6)["value"] == "hex:ff"
    h.invoke(0, Ops.lock("L", 500), 7)
    assert h.complete(0, Result("granted", token=65537, expiry_us=9).encode(), 8)["value"] \
        == 65537
    h.invoke(1, Ops.put("k", b"z", fence=("L", 1)), 9)
    assert h.complete(1, Result("stale_token").encode(), 10)["type"] == "fail"
    h.invoke(0, Ops.delete("gone"), 11)
    h.finish(12)
    last = h.entries[-1]
    assert (last["type"], last["f"], last["error"]) == ("info", "delete", "run_ended")
    assert check_history_shape(h.entries) == []
    assert describe_op(b"\x00raw") == ("op", None, b"\x00raw".hex())  # not a KV op


def test_shape_checker_finds_broken_histories() -> None:
    good = [{"index": 0, "type": "invoke", "process": 0, "f": "get", "key": "k", "value": None,
             "time": 0}]
    assert check_history_shape(good) == []
    assert check_history_shape([{**good[0], "index": 3}])
    assert check_history_shape([{**good[0], "type": "ok"}])
    assert check_history_shape(good + [{**good[0], "index": 1}])  # invoke with one open


def test_simulated_history_has_jepsen_shape(tmp_path: Path) -> None:
    run = run_scenario(Scenario((make_rule(3, "lie"),), (),
                                {"nodes": 4, "seed": 8, "requests": 6}), history=True).check()
    entries = run.simulation.history.entries
    path = tmp_path / "h.jsonl"
    run.simulation.history.write(path)
    assert read_history(path) == entries
    assert check_history_shape(entries) == []
    assert all(FIELDS <= set(e) for e in entries)
    assert {e["type"] for e in entries} <= {"invoke", "ok", "fail"}
    assert sum(e["type"] == "invoke" for e in entries) == 12
    times = [e["time"] for e in entries]
    assert times == sorted(times) and all(isinstance(t, int) for t in times)
    assert {e["f"] for e in entries} <= {"put", "get", "delete", "cas", "lock", "unlock"}


def test_unknown_outcomes_are_info() -> None:
    """A run that ends while requests are stuck (every replica silent): their outcomes are
    unknown, so the history says info, never ok or fail."""
    rules = tuple(make_rule(i, "silent", start_s=0.3) for i in range(4))
    run = run_scenario(Scenario(rules, (), {"nodes": 4, "seed": 2, "requests": 50,
                                            "think_ms": [50.0, 100.0]}),
                       history=True, until_s=3.0)
    entries = run.simulation.history.entries
    assert check_history_shape(entries) == []
    infos = [e for e in entries if e["type"] == "info"]
    assert len(infos) == 2 and all(e["error"] == "run_ended" for e in infos)
    completed = {(e["process"]) for e in entries if e["type"] in ("ok", "fail")}
    assert completed  # some finished before the silence
    print(json.dumps(infos))


class FakeClient:
    def __init__(self, outcome: bytes | None) -> None:
        self.outcome = outcome

    async def call(self, op: bytes, timeout_s: float = 10.0) -> bytes:
        await trio.lowlevel.checkpoint()
        if self.outcome is None:
            raise ClientError("no f+1 matching replies")
        return self.outcome


@pytest.mark.parametrize("outcome, kind", [(Result("ok").encode(), "ok"),
                                           (Result("stale_token").encode(), "fail"),
                                           (None, "info")])
async def test_call_recorded_against_a_real_client_api(outcome: bytes | None, kind: str) -> None:
    h = History()
    clock = iter(range(100))
    got = await call_recorded(FakeClient(outcome), Ops.put("k", b"v"), h, process=4,
                              clock_ns=lambda: next(clock))
    assert got == outcome
    assert [e["type"] for e in h.entries] == ["invoke", kind]
    assert check_history_shape(h.entries) == []
