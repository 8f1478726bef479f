"""Regressions for issue 22's catch-up bug: a node restarted into an idle cluster never
caught up (`bft nemesis CFG --faults restart --interval 2 --duration 2 --seed 223
--converge-timeout 10`: node 0 stayed at a stable checkpoint far below the others).

Crafted schedules on tests/harness.py's step network. The replicas are wrapped as every
real node started with `--adversary` is (bft nemesis starts them so): in a
`ByzantineNode` with no rules, and the admin's Heal/Clear ticks them early, as
bft/node.py's `Node.tick_soon` does (the nemesis heals every node when the load stops).
"""

from __future__ import annotations

import math
import random

import pytest
from harness import Net, Ops

from adversary.behaviours import BehaviourEnv, ByzantineNode
from bft.messages import Signed, StateChunk

SEED = 1

# the throwaway config of bft.launcher.throwaway_config (what the nemesis finder used)
THROWAWAY = dict(checkpoint_interval=8, log_window=16, batch_max_requests=16, max_in_flight=8,
                 view_change_timeout_s=0.5, view_change_timeout_min_s=0.2,
                 view_change_timeout_max_s=4.0, client_timeout_s=0.25, status_interval_s=0.1)


class WrappedNet(Net):
    """A harness network whose replicas sit in a rule-less `ByzantineNode`, as a real
    node's replica does under `bft node --adversary` (adversary/runtime.py)."""

    def _make(self, i, recovered=None, votes_lost=False):
        inner = super()._make(i, recovered, votes_lost)
        env = BehaviourEnv(i, self.config.n, self.keys.signer("replica", i),
                           random.Random(f"{self.seed}/{i}"), config=self.config)
        return ByzantineNode(inner, [], env, on_crash=lambda rule: None)


def tick_soon(net: Net, i: int) -> None:
    """What bft/node.py does on an admin's Heal, Clear, Pause...: `Node.tick_soon`, then
    at the loop's next turn (the same `now`) the runner's deadline is due and the replica
    is ticked; its tick announces its next deadline again (bft/driver.py)."""
    net.runners[i].deadline = -math.inf
    if net.runners[i].take_due(net.now):
        net._apply(i, net.replicas[i].tick(net.now, net.wall(i)))


def test_a_restarted_node_catches_up_in_an_idle_cluster_after_a_heal():
    """PROTOCOL.md "Loss recovery" (each replica periodically multicasts STATUS; a peer
    that holds what the sender lacks resends it) and "State transfer" (a replica behind a
    stable checkpoint fetches it): a replica restarted from its WAL after the others moved
    more than a log window ahead catches up, also when no client request comes any more.

    Schedule (the nemesis finding): K = 8, L = 16; 33 requests, replica 0 (the primary)
    crashes at stable checkpoint 32; 60 more requests (view change to 1, the others reach
    a stable checkpoint far above 32 + L); replica 0 restarts from its WAL and starts a
    state transfer while the load goes on (its chunks are lost meanwhile, so the transfer
    must be retried); the load stops; the admin's Heal reaches every node (an early tick,
    as in bft nemesis); then 10 s with no request at all.

    Failed before the fix: replica 0 stayed at seq 32 (its transfer was never retried and
    no STATUS went out from anyone). A rule-less `ByzantineNode` ate the SetTimer of an
    early tick when the replica's next deadline equalled the one it announced before: the
    runner had consumed its deadline, so the node was never ticked again (no STATUS, no
    transfer retry) until a message moved some deadline, which in an idle cluster never
    happens."""
    print(f"seed={SEED}")
    net = WrappedNet(4, seed=SEED, **THROWAWAY)
    for k in range(33):
        net.request(k % 4, Ops.put("a", str(k).encode()))
        net.advance(0.02)
    net.advance(0.5)
    assert [r.log.low for r in net.replicas] == [32] * 4
    net.crash(0)
    for k in range(60):
        net.request(k % 4, Ops.put("b", str(k).encode()))
        net.advance(0.05)
    net.restart(0)
    net.filter = lambda src, dst, m: not (isinstance(m, Signed)
                                          and isinstance(m.statement, StateChunk))
    for k in range(20):
        net.request(k % 4, Ops.put("c", str(k).encode()))
        net.advance(0.01)
    net.filter = None
    top = max(r.last_executed for r in net.replicas)
    assert net.replicas[0].last_executed < top - THROWAWAY["log_window"], "not behind: no test"
    for i in range(4):
        tick_soon(net, i)
    net.advance(10)
    executed = [r.last_executed for r in net.replicas]
    assert executed[0] == max(executed), f"replica 0 did not catch up when idle: {executed}"


def test_an_early_tick_keeps_the_replicas_timer():
    """The timer contract of bft/driver.py (a tick re-announces the replica's next
    deadline, so nothing else needs to tick it), through the rule-less `ByzantineNode`
    every real node has under `--adversary`: an early tick (Node.tick_soon) with nothing
    due leaves a deadline armed.

    Failed before the fix: the wrapper dropped the re-announced SetTimer (the same time as
    the one it passed on before) and the runner's deadline stayed at infinity."""
    print(f"seed={SEED}")
    net = WrappedNet(4, seed=SEED, **THROWAWAY)
    net.advance(0.05)
    for i in range(4):
        tick_soon(net, i)
    assert all(math.isfinite(r.deadline) for r in net.runners), \
        f"deadlines lost: {[r.deadline for r in net.runners]}"
    sent = net.sent_count
    net.advance(1)
    # a STATUS from each replica to each peer every status_interval_s (0.1 s)
    assert net.sent_count - sent >= 4 * 3 * 9, "no STATUS went out after the early tick"


@pytest.mark.parametrize("wrapped", [False, True], ids=["replica", "adversary_wrapper"])
@pytest.mark.parametrize("seed", range(5))
def test_a_restarted_replica_catches_up_when_idle_under_loss(seed, wrapped):
    """PROTOCOL.md "Loss recovery" and "State transfer", drawn schedules: a replica
    (any one) crashes, the others run 30-120 more requests (several log windows), it
    restarts from its WAL, a few more requests come or none (with `wrapped`, the admin's
    Heal then ticks every node early, as bft nemesis does when its load stops), the network
    loses 0, 10 or 30 % of all messages for 3 s after the restart; then the loss stops and
    no request comes. Within 5 s of idleness the restarted replica has executed what the
    others have.

    With the plain replica this passed on the old code too (the pure core was not the
    cause); with the wrapper, failed before the fix at every seed."""
    print(f"seed={seed}")
    rng = random.Random(seed)
    node = rng.randrange(4)
    net = (WrappedNet if wrapped else Net)(4, seed=SEED, **THROWAWAY)
    for k in range(rng.randrange(9, 40)):
        net.request(k % 4, Ops.put("a", str(k).encode()))
        net.advance(0.02)
    net.advance(0.3)
    net.crash(node)
    for k in range(rng.randrange(30, 120)):
        net.request(k % 4, Ops.put("b", str(k).encode()))
        net.advance(rng.choice([0.01, 0.05]))
    loss = rng.choice([0.0, 0.1, 0.3])
    net.filter = lambda src, dst, m: rng.random() >= loss
    net.restart(node)
    for k in range(rng.randrange(0, 20)):
        net.request(k % 4, Ops.put("c", str(k).encode()))
        net.advance(0.01)
    if wrapped:  # the load stopped: the admin heals every node
        for i in range(4):
            tick_soon(net, i)
    net.advance(3)
    net.filter = None
    net.advance(5)
    executed = [r.last_executed for r in net.replicas]
    assert executed[node] == max(executed), f"replica {node} did not catch up: {executed}"
