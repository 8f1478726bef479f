"""A `ByzantineNode` with nothing to do passes effects through exactly as its full path does.

Every real node is wrapped (the dashboard may switch a behaviour on live), so
the wrapper takes a short path while it has no rules, no behaviours and no held
messages. Here a wrapper driven through its public `receive`/`tick` and a twin
driven through the full `_step` see the same inner effects (random Sends,
Events and SetTimers, the timers often repeating) and must return the same
effects and end in the same timer state, also across a live behaviour being
switched on and off again.
"""

from __future__ import annotations

import random

import pytest

from adversary.behaviours import BehaviourEnv, ByzantineNode
from bft.effects import Event, Send, SetTimer


class ScriptedReplica:
    """Returns the next scripted list of effects on every call (and counts the calls)."""

    def __init__(self, script: list[list[object]]) -> None:
        self.script = list(script)
        self.calls: list[tuple[str, object, float, object]] = []

    def _next(self, kind: str, message: object, now: float, wall: object) -> list[object]:
        self.calls.append((kind, message, now, wall))
        return list(self.script.pop(0))

    def start(self, now: float, wall: object = None) -> list[object]:
        return self._next("start", None, now, wall)

    def receive(self, message: object, now: float, wall: object = None) -> list[object]:
        return self._next("receive", message, now, wall)

    def tick(self, now: float, wall: object = None) -> list[object]:
        return self._next("tick", None, now, wall)

    def statistics(self) -> dict[str, object]:
        return {}


def random_script(rng: random.Random, steps: int) -> list[list[object]]:
    script = []
    timers = [1.0, 2.0, 2.5, 7.0]
    for k in range(steps):
        effects: list[object] = []
        for _ in range(rng.randrange(4)):
            roll = rng.random()
            if roll < 0.4:
                effects.append(SetTimer(rng.choice(timers) + (k // 10)))
            elif roll < 0.7:
                effects.append(Send(rng.randrange(4), f"m{k}"))
            else:
                effects.append(Event("e", {"k": k}))
        script.append(effects)
    return script


def make(script: list[list[object]]) -> tuple[ByzantineNode, ScriptedReplica]:
    inner = ScriptedReplica(script)
    env = BehaviourEnv(node_id=1, n=4, signer=None, rng=random.Random(0))
    return ByzantineNode(inner, [], env, on_crash=lambda rule: None), inner


def full_step(wrapper: ByzantineNode, kind: str, message: object, now: float,
              wall: object) -> list[object]:
    inner = wrapper.inner
    if kind == "receive":
        return wrapper._step(now, wall, lambda w: inner.receive(message, now, w), message)
    return wrapper._step(now, wall, lambda w: inner.tick(now, w), None, tick=True)


@pytest.mark.parametrize("seed", range(5))
def test_pass_through_equals_the_full_path(seed: int) -> None:
    print(f"seed={seed}")
    rng = random.Random(seed)
    script = random_script(rng, 200)
    fast, fast_inner = make(script)
    full, full_inner = make(script)
    assert fast.start(0.0, "wall") == full.start(0.0, "wall")
    now = 0.0
    for k in range(len(script) - 1):
        now += rng.choice([0.0, 0.001, 0.5, 3.0])
        kind = rng.choice(["receive", "receive", "tick"])
        message, wall = f"in{k}", ("wall", k)
        if kind == "receive":
            got = fast.receive(message, now, wall)
        else:
            got = fast.tick(now, wall)
        assert got == full_step(full, kind, message, now, wall), (seed, k)
        assert (fast._inner_deadline, fast._last_timer, fast._last_now) == (
            full._inner_deadline, full._last_timer, full._last_now)
    assert fast_inner.calls == full_inner.calls


def test_pass_through_across_a_live_behaviour() -> None:
    rng = random.Random(7)
    script = random_script(rng, 60)
    fast, _ = make(script)
    full, _ = make(script)
    assert fast.start(0.0) == full.start(0.0)
    now = 0.0
    for k in range(len(script) - 1):
        now += 0.25
        if k == 10:
            fast.set_live_behaviour("silent")
            full.set_live_behaviour("silent")
        if k == 30:
            fast.set_live_behaviour("")
            full.set_live_behaviour("")
        got = fast.receive(k, now) if k % 3 else fast.tick(now)
        want = full_step(full, "receive" if k % 3 else "tick", k, now, None)
        assert got == want, k
        assert (fast._inner_deadline, fast._last_timer) == (full._inner_deadline,
                                                            full._last_timer)
    assert fast.counters == full.counters
