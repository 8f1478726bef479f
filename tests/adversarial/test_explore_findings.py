"""What `bft explore` found, each as a regression.

* A paused replica lost its timers for good (adversary/behaviours.py, `ByzantineNode`): an
  inner deadline that fell due during the pause stayed the wrapper's next timer, equal to the
  one already announced, so no SetTimer was emitted again; the pause's end went unannounced
  and, once resumed, the replica was never ticked again (no STATUS, no retransmission, no
  view change, a state transfer never retried). A real paused process (SIGSTOP/SIGCONT) runs
  its due timers when it resumes. Found by `bft explore --seed 1` (run 844), shrunk to two
  pauses at different times and 5 % loss: a request never completed (liveness).
"""

from __future__ import annotations

import random
from typing import Any

from adversary.behaviours import BehaviourEnv, ByzantineNode, Collusion, make_rule
from adversary.explore import run_one
from adversary.netfaults import make_network_rule
from adversary.scenario import Scenario
from bft.crypto import SimKeys
from bft.effects import SetTimer


class _Stub:
    """A replica that records its inputs and returns the effects queued for each call."""

    def __init__(self) -> None:
        self.inputs: list[tuple[str, float]] = []
        self.queued: list[list[Any]] = []

    def _next(self) -> list[Any]:
        return self.queued.pop(0) if self.queued else []

    def start(self, now: float, wall: Any = None) -> list[Any]:
        self.inputs.append(("start", now))
        return self._next()

    def receive(self, message: Any, now: float, wall: Any = None) -> list[Any]:
        self.inputs.append(("receive", now))
        return self._next()

    def tick(self, now: float, wall: Any = None) -> list[Any]:
        self.inputs.append(("tick", now))
        return self._next()


def _timers(effects: list[Any]) -> list[float]:
    return [e.at for e in effects if isinstance(e, SetTimer)]


def test_a_paused_replica_whose_timer_fell_due_in_the_pause_is_ticked_when_it_resumes():
    """DESIGN.md "The adversary": pause = stop processing for a while, then resume (as after
    SIGSTOP/SIGCONT); the simulator keeps the node's timer contract (a node is ticked at its
    latest SetTimer, and at no other time). Driven that way, the wrapper must tick its replica
    again once the pause is over.

    Failed before the fix: the tick at 1.5 s (the replica's deadline, due while paused)
    announced no SetTimer (1.5 s was still the earliest deadline, and already announced), so
    nothing ever ran again."""
    keys = SimKeys(7, n_replicas=4, n_clients=1)
    stub = _Stub()
    env = BehaviourEnv(1, 4, keys.signer("replica", 1), random.Random(1), Collusion(),
                       origin_s=0.0)
    node = ByzantineNode(stub, [make_rule(1, "pause", start_s=1.0,
                                          params={"duration_s": 2.0})], env)
    stub.queued.append([SetTimer(1.5)])  # the replica's next deadline: inside the pause
    timer = _timers(node.start(0.0))[-1]
    for _ in range(10):  # the driver: tick at the latest SetTimer, as bft/node.py does
        timers = _timers(node.tick(timer))
        if not timers:
            break
        timer = timers[-1]
    ticks = [now for kind, now in stub.inputs if kind == "tick"]
    assert ticks and ticks[0] >= 3.0, stub.inputs  # after the pause, not during it


def test_two_pauses_and_a_lossy_network_stay_live():
    """The shrunk campaign run: replica 0 paused for 0.2 s, later replica 2 for 3 s (one
    faulty replica at a time), 5 % loss for the whole run. Every request completes.

    Failed before the fix: both paused replicas lost their timers; replica 3 started a view
    change alone, replica 2 waited for a state transfer it never retried, and client 1's
    request 6 was still pending at 120 s ("not completed by 33.341 s")."""
    sim = {"nodes": 4, "seed": 3297821081, "clients": 2, "requests": 8, "keys": 2,
           "think_ms": [10.0, 100.0], "checkpoint_interval": 2, "log_window": 8,
           "liveness_bound_s": 30.0, "until_s": 120.0}
    print(f"seed={sim['seed']}")
    scenario = Scenario((make_rule(2, "pause", start_s=0.341),
                         make_rule(0, "pause", start_s=0.023, params={"duration_s": 0.2})),
                        (make_network_rule("drop", rate=0.05),), sim)
    out = run_one(scenario)
    assert out["ok"], out["violations"]
