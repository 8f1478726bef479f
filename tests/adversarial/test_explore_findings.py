"""What `bft explore` found, each as a regression.

* A paused replica lost its timers for good (adversary/behaviours.py, `ByzantineNode`): an
  inner deadline that fell due during the pause stayed the wrapper's next timer, equal to the
  one already announced, so no SetTimer was emitted again; the pause's end went unannounced
  and, once resumed, the replica was never ticked again (no STATUS, no retransmission, no
  view change, a state transfer never retried). A real paused process (SIGSTOP/SIGCONT) runs
  its due timers when it resumes. Found by `bft explore --seed 1` (run 844), shrunk to two
  pauses at different times and 5 % loss: a request never completed (liveness). Then,
  with that fixed, the pause's end itself, kept as a deadline after it had passed, hid the
  replica's deadlines the same way (`bft explore --seed 2`, run 786).
* Fixed in the replica (6e901dc): a conflicting PREPARE or PRE-PREPARE that reached a
  correct replica holding the first one left no evidence when the window refused it first:
  below a proven stable checkpoint (`below_proven_checkpoint`, the replica is transferring
  state) or outside the watermarks after the same delivery executed the slot and moved
  them (df18d1c had done it for COMMIT). The evidence witness reported it in 4 of 1,500
  runs of `bft explore --seed 1` (runs 1034, 1321, 1359, 1419), with the honest replica.
"""

from __future__ import annotations

import random
import tomllib
from typing import Any

import pytest

from adversary.behaviours import BehaviourEnv, ByzantineNode, Collusion, make_rule
from adversary.explore import run_one
from adversary.netfaults import make_network_rule
from adversary.scenario import Scenario, parse_scenario
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


def test_a_replica_is_ticked_at_its_deadlines_after_a_pause_ended():
    """As above, once the pause is over: the replica's later deadlines are honoured.

    Failed before the fix: `Pause.deadline()` kept returning the pause's end after it had
    passed; the earliest deadline was then always that past time, already announced, so the
    replica's own deadlines (STATUS, view-change timer, state-transfer retries) were never
    announced again and it ran only when a message came (found by `bft explore --seed 2`
    with focused options, run 786: two replicas paused in turn stopped ticking, a request
    stayed pending for good)."""
    keys = SimKeys(7, n_replicas=4, n_clients=1)
    stub = _Stub()
    env = BehaviourEnv(1, 4, keys.signer("replica", 1), random.Random(1), Collusion(),
                       origin_s=0.0)
    node = ByzantineNode(stub, [make_rule(1, "pause", start_s=1.0,
                                          params={"duration_s": 0.2})], env)
    stub.queued += [[SetTimer(0.5)], [SetTimer(1.1)], [SetTimer(5.0)], [SetTimer(6.0)]]
    timer = _timers(node.start(0.0))[-1]
    for _ in range(10):  # the driver: tick at the latest SetTimer, as bft/node.py does
        timers = _timers(node.tick(timer))
        if not timers:
            break
        timer = timers[-1]
    ticks = [now for kind, now in stub.inputs if kind == "tick"]
    assert ticks == [0.5, 1.2, 5.0, 6.0], stub.inputs


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



def test_a_backup_and_then_the_primary_paused_stay_live():
    """The campaign run of the test above (`bft explore --seed 2`, run 786, drawn with
    behaviours equivocate, crash, pause, slow and network drop, reorder, delay, partition):
    backup 3 paused for 0.2 s, later primary 0 for 2 s, 2 % loss. Every request completes.
    Failed before the fix: client 1's request 24 was still pending at 120 s."""
    sim = {"nodes": 4, "seed": 729756069, "clients": 3, "requests": 25, "keys": 3,
           "think_ms": [0.0, 300.0], "checkpoint_interval": 8, "log_window": 32,
           "liveness_bound_s": 30.0, "until_s": 120.0}
    print(f"seed={sim['seed']}")
    scenario = Scenario((make_rule(3, "pause", start_s=1.776, params={"duration_s": 0.2}),
                         make_rule(0, "pause", start_s=2.899, params={"duration_s": 2.0})),
                        (make_network_rule("drop", rate=0.02),
                         make_network_rule("reorder", rate=0.2, delay_ms=20.0)), sim)
    out = run_one(scenario)
    assert out["ok"], out["violations"]

_PREPARE_BELOW_PROVEN = """
[sim]
nodes = 4
seed = 1499632442
clients = 4
requests = 21
keys = 2
think_ms = [0.0, 300.0]
checkpoint_interval = 4
log_window = 16
until_s = 120.0

[[adversary]]
node = 1
behaviour = "equivocate"
start = 0.443
params = { what = ["prepare", "commit"] }

[[adversary]]
node = 1
behaviour = "crash"
start = 1.875
params = { restart_after_s = 0.5 }

[[network]]
kind = "reorder"
rate = 0.2
delay_ms = 20.0
"""

_PRE_PREPARE_AFTER_THE_WINDOW_MOVED = """
[sim]
nodes = 4
seed = 3281739516
clients = 2
requests = 3
keys = 2
think_ms = [0.0, 100.0]
checkpoint_interval = 2
log_window = 8
until_s = 120.0

[[adversary]]
node = 0
behaviour = "equivocate"
params = { mode = "twins" }

[[network]]
kind = "drop"
rate = 0.02

[[network]]
kind = "reorder"
rate = 0.2
delay_ms = 20.0
"""


def test_a_conflicting_prepare_below_the_proven_checkpoint_is_evidence():
    """PROTOCOL.md "Evidence": two PREPAREs of one (v, seq, i) with different digests are a
    proof; a correct replica that holds one and receives the other produces it. Shrunk from
    `bft explore --seed 1` run 1321: equivocating backup 1 crashes and restarts; replica 3,
    transferring state to checkpoint 72, holds replica 1's PREPARE(0, 72) and receives the
    other one, dropped as below_proven_checkpoint (the witness: "held a prepare of replica 1
    for (0, 72, 1) and received a conflicting one, but produced no evidence"). Failed
    before 6e901dc (the replica now compares before the window refuses)."""
    scenario = parse_scenario(tomllib.loads(_PREPARE_BELOW_PROVEN))
    print(f"seed={scenario.sim['seed']}")
    out = run_one(scenario)
    assert out["evidence_ok"], out["violations"]


def test_a_conflicting_pre_prepare_that_completes_its_slot_is_evidence():
    """PROTOCOL.md "Evidence": two PRE-PREPAREs for one (v, seq) with different digests are
    a proof. Shrunk from `bft explore --seed 1` run 1359: Twins primary 0; replica 3 holds
    twin A's PRE-PREPARE(0, 1) and the seq was decided for twin B's digest; twin B's
    proposal arrives, its batch (awaited for the decided digest) executes seq 1 and seq 2,
    checkpoint 2 becomes stable, and the same proposal is then refused as outside the
    watermarks: no evidence. Failed before 6e901dc (the replica now compares first)."""
    scenario = parse_scenario(tomllib.loads(_PRE_PREPARE_AFTER_THE_WINDOW_MOVED))
    print(f"seed={scenario.sim['seed']}")
    out = run_one(scenario)
    assert out["evidence_ok"], out["violations"]
