"""The checkers have teeth: planted protocol bugs are reported (DESIGN.md "The deterministic
simulator"; issue 3). Each planted bug is a Replica subclass that breaks one PBFT rule; the
same scenario with the honest Replica passes the safety checks.
"""

from __future__ import annotations

import pytest

from adversary.sim import Partition, SimConfig, Simulation
from bft.effects import Broadcast
from bft.messages import Commit
from bft.replica import Replica
from bft.viewchange import Geometry


class QuorumOf2f(Replica):
    """Planted bug: quorums of 2f instead of 2f+1 (prepared at 2f-1 PREPAREs, committed at 2f)."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.quorum = 2 * self.f
        self.geo = Geometry(self.n, self.f, self.config.log_window, self.quorum)


class SkipsPrepare(Replica):
    """Planted bug: commits as soon as it accepts a pre-prepare (no prepare phase, so no
    prepared certificate ever exists to carry the request through a view change)."""

    def _check_prepared(self, slot):
        if slot.prepared or slot.pre_prepare is None or slot.batch is None:
            return
        slot.prepared = True
        pp = slot.pre_prepare.statement
        commit = self._sign(Commit(pp.view, pp.seq, pp.digest, self.id))
        slot.commits[self.id] = commit
        slot.sent_commit = True
        self._out.append(Broadcast(commit))
        self._check_committed(slot)


def run_split_brain(cls):
    """Two halves that cannot hear each other, {0, 1} and {2, 3}. Client 0's request reaches
    everyone, client 1's only {2, 3}. Side A orders at once; side B times out and tries to
    change view. Returns the CheckerSuite fed with every replica's executions."""
    from harness import Net, Ops

    from adversary.checkers import CheckerSuite

    net = Net(4, replica_class=cls)
    for a in (0, 1):
        for b in (2, 3):
            net.cut |= {(a, b), (b, a)}
    net.request(0, Ops.put("x", b"1"))
    net.request(1, Ops.put("y", b"2"), to=2)
    net.request(1, Ops.put("y", b"2"), to=3, timestamp=1)
    net.advance(30, step=0.05)
    suite = CheckerSuite(range(4), net.keys.verifier(), liveness_bound_s=60.0, faults_end_s=0.0)
    for c, t, op, at in net.invocations:
        suite.on_invoke(c, t, op, at)
    for i in range(4):
        for e in net.executed[i]:
            suite.on_executed(i, e, net.now)
    suite.check(net.now)
    return net, suite


def test_quorum_of_2f_is_caught_as_an_agreement_violation():
    net, suite = run_split_brain(Replica)
    assert suite.safety_ok, suite.violations  # honest: side B cannot form a quorum: safe
    assert [len(net.executed[i]) for i in (2, 3)] == [0, 0]
    net, suite = run_split_brain(QuorumOf2f)
    assert len(net.executed[2]) >= 1  # the broken side B committed on its own
    assert not suite.safety_ok
    assert any(v.startswith("agreement") for v in suite.violations), suite.violations


def run_lost_commit(cls):
    """Replica 3 is cut off while 0, 1, 2 order client 0's request at seq 1, and only
    replica 0 gets the COMMITs (it executes; 1 and 2 prepared it but never saw it decided);
    then the primary 0 goes away, 3 comes back, and the NEW-VIEWs of views 1 and 2 are lost,
    so replica 3 becomes primary of view 3 knowing nothing of seq 1 but what view changes
    say."""
    from harness import Net, Ops

    from adversary.checkers import CheckerSuite

    net = Net(4, replica_class=cls)
    net.isolate(3)
    net.filter = lambda src, dst, m: not (
        dst in (1, 2) and type(getattr(m, "statement", None)).__name__ == "Commit")
    net.request(0, Ops.put("x", b"1"), to=0)
    net.deliver()
    assert [r.last_executed for r in net.replicas] == [1, 0, 0, 0]
    net.heal()
    net.isolate(0)
    def lossy(src, dst, m):
        st = getattr(m, "statement", None) or getattr(getattr(m, "pre_prepare", None),
                                                        "statement", None)
        if type(st).__name__ == "NewView" and st.view < 3:
            return False  # views 1 and 2 never complete
        # the votes 0, 1, 2 cast in view 0 never reach 3 (lost, as UDP may)
        return not (dst == 3 and type(st).__name__ in ("Prepare", "Commit", "PrePrepare")
                    and st.view == 0)

    net.filter = lossy
    net.request(1, Ops.put("x", b"2"))
    net.advance(60, step=0.05)
    suite = CheckerSuite(range(4), net.keys.verifier(), liveness_bound_s=120.0, faults_end_s=0.0)
    for c, t, op, at in net.invocations:
        suite.on_invoke(c, t, op, at)
    for i in range(4):
        for e in net.executed[i]:
            suite.on_executed(i, e, net.now)
    suite.check(net.now)
    return net, suite


def test_skipping_the_prepare_phase_is_caught():
    """Without prepared certificates a view change forgets a committed request: the new
    primary proposes another batch at the seq replica 0 executed, replicas 1 and 2 (which
    never saw it decided) accept it, and the checkers see it."""
    net, suite = run_lost_commit(Replica)
    assert net.replicas[3].view >= 3
    assert suite.safety_ok, suite.violations
    assert all(e.seq != 1 or e.batch.requests[0].statement.client == 0
               for i in (1, 2, 3) for e in net.executed[i])  # honest: seq 1 carried over
    net, suite = run_lost_commit(SkipsPrepare)
    assert not suite.safety_ok
    assert any(v.startswith("agreement") for v in suite.violations), suite.violations
