"""The simulator's checkers have teeth: planted violations in synthetic executions are reported.

Each test builds a small execution by hand (signed requests, batches, the
`Executed` effects replicas would emit, client invocations and completions),
checks that the honest version passes, then plants one fault and checks that
the right checker reports it.
"""

from __future__ import annotations

import random

from hypothesis import given, settings
from hypothesis import strategies as st

from adversary.checkers import (
    AgreementChecker,
    CheckerSuite,
    ConductChecker,
    EvidenceChecker,
    ExactlyOnceChecker,
    LinearizabilityChecker,
    LivenessChecker,
    StateDigestChecker,
    TotalOrderChecker,
    ValidityChecker,
)
from bft.app import ExecContext, KVStore, decode_result, ops
from bft.crypto import SimKeys, batch_digest
from bft.effects import Evidence, Executed
from bft.messages import Batch, Checkpoint, Commit, PrePrepare, Prepare, Proposal, Request, Signed

REPLICAS = (0, 1, 2, 3)
KEYS = SimKeys(7, n_replicas=4, n_clients=4)
VERIFIER = KEYS.verifier()


def req(client: int, timestamp: int, op: bytes) -> Signed:
    return KEYS.signer("client", client).sign(Request(op=op, timestamp=timestamp, client=client))


class Run:
    """An honest execution: a KV store per replica, results by the replicas' rules."""

    def __init__(self, skew_us: int = 0) -> None:
        self.stores = {r: KVStore() for r in REPLICAS}
        self.tables: dict[int, dict[int, tuple[int, bytes]]] = {r: {} for r in REPLICAS}
        self.times = {r: 0 for r in REPLICAS}  # agreed time of the last executed batch
        self.skew_us = skew_us
        self.batches: list[Batch] = []

    def add(self, *requests: Signed, batch_time: int = 1_000_000) -> Batch:
        batch = Batch(batch_time=batch_time, requests=tuple(requests))
        self.batches.append(batch)
        return batch

    def execute(self, replica: int, seq: int, batch: Batch | None = None) -> Executed:
        """What `replica` reports when it executes `batch` (default: the agreed one) at seq."""
        batch = batch or self.batches[seq - 1]
        store, table = self.stores[replica], self.tables[replica]
        results = []
        time_us = max(batch.batch_time, self.times[replica])  # agreed time is monotonic
        for index, signed in enumerate(batch.requests):
            r = signed.statement
            last = table.get(r.client)
            if last is not None and r.timestamp <= last[0]:
                results.append(last[1] if r.timestamp == last[0] else b"")
                continue
            result = store.execute(r.op, ExecContext(seq, index, time_us, r.client,
                                                     r.timestamp, self.skew_us))
            table[r.client] = (r.timestamp, result)
            results.append(result)
        if batch.requests:
            self.times[replica] = time_us
        return Executed(seq, 0, batch_digest(batch), batch, tuple(results), store.digest())


def feed_all(checker, run: Run, replicas=REPLICAS) -> dict[int, list[Executed]]:
    out: dict[int, list[Executed]] = {}
    for seq in range(1, len(run.batches) + 1):
        for r in replicas:
            e = run.execute(r, seq)
            out.setdefault(r, []).append(e)
            checker.on_executed(r, e, float(seq))
            checker.check(float(seq))
    return out


def simple_run() -> Run:
    run = Run()
    run.add(req(0, 1, ops.put("k", b"v1")), req(1, 1, ops.put("j", b"w")))
    run.add(req(1, 2, ops.put("k", b"v2")))
    run.add(req(2, 1, ops.get("k")), req(0, 2, ops.cas("k", b"v2", b"v3")))
    return run


# --------------------------------------------------------------------------
# Agreement
# --------------------------------------------------------------------------


def test_agreement_passes_honest_run() -> None:
    c = AgreementChecker(REPLICAS)
    feed_all(c, simple_run())
    assert c.ok and c.violations == []
    assert c.committed_seq == 3


def test_agreement_reports_two_digests_at_one_seq() -> None:
    run = simple_run()
    c = AgreementChecker(REPLICAS)
    c.on_executed(0, run.execute(0, 1), 1.0)
    other = Batch(batch_time=5, requests=(req(3, 1, ops.put("x", b"evil")),))
    c.on_executed(1, run.execute(1, 1, other), 1.0)
    assert not c.ok
    assert "seq 1" in c.violations[0] and "replica 0" in c.violations[0]


def test_agreement_reports_batch_not_matching_digest() -> None:
    run = simple_run()
    honest = run.execute(0, 1)
    forged = Executed(1, 0, honest.digest, run.batches[1], honest.results, honest.state_digest)
    c = AgreementChecker(REPLICAS)
    c.on_executed(0, forged, 1.0)
    assert not c.ok and "does not match its digest" in c.violations[0]


def test_agreement_ignores_nodes_outside_the_correct_set() -> None:
    run = simple_run()
    c = AgreementChecker({0, 1, 2})
    c.on_executed(0, run.execute(0, 1), 1.0)
    other = Batch(batch_time=5, requests=())
    c.on_executed(3, run.execute(3, 1, other), 1.0)  # Byzantine node 3: not judged
    assert c.ok


# --------------------------------------------------------------------------
# Validity
# --------------------------------------------------------------------------


def validity_checker(run: Run) -> ValidityChecker:
    c = ValidityChecker(REPLICAS, VERIFIER)
    for batch in run.batches:
        for s in batch.requests:
            r = s.statement
            c.on_invoke(r.client, r.timestamp, r.op, 0.0)
    return c


def test_validity_passes_honest_run() -> None:
    run = simple_run()
    c = validity_checker(run)
    feed_all(c, run)
    assert c.ok and c.data()["requests_checked"] == 5 * 4


def test_validity_reports_unsigned_request() -> None:
    run = simple_run()
    c = validity_checker(run)
    good = req(3, 1, ops.put("x", b"y"))
    c.on_invoke(3, 1, ops.put("x", b"y"), 0.0)
    unsigned = Signed(body=good.body, signature=bytes(64), statement=good.statement)
    batch = Batch(batch_time=1, requests=(unsigned,))
    c.on_executed(0, run.execute(0, 1, batch), 1.0)
    assert not c.ok and "not validly signed" in c.violations[0]


def test_validity_reports_request_the_client_never_issued() -> None:
    run = simple_run()
    c = validity_checker(run)
    # Validly signed (the client's key), but never submitted: e.g. replayed from another run.
    batch = Batch(batch_time=1, requests=(req(3, 9, ops.delete("k")),))
    c.on_executed(0, run.execute(0, 1, batch), 1.0)
    assert not c.ok and "never issued" in c.violations[0]


def test_validity_reports_wrong_op_under_an_issued_number() -> None:
    run = simple_run()
    c = validity_checker(run)
    batch = Batch(batch_time=1, requests=(req(0, 1, ops.delete("k")),))  # client 0 ts 1 was a put
    c.on_executed(0, run.execute(0, 1, batch), 1.0)
    assert not c.ok and "did not issue" in c.violations[0]


# --------------------------------------------------------------------------
# Exactly once
# --------------------------------------------------------------------------


def test_exactly_once_passes_honest_run_with_reproposed_request() -> None:
    run = Run()
    lock = req(0, 1, ops.lock("L", 1000))
    run.add(lock)
    run.add(req(1, 1, ops.put("k", b"v")), lock)  # re-ordered duplicate: skipped (cached result)
    run.add(req(0, 2, ops.get("k")))
    run.add(lock)  # now older than client 0's last: skipped with an empty result
    c = ExactlyOnceChecker(REPLICAS)
    executed = feed_all(c, run)
    assert executed[0][1].results[1] == executed[0][0].results[0]
    assert executed[0][3].results == (b"",)
    assert c.ok, c.violations
    assert c.data()["duplicates_skipped"] == 2 * 4


def test_exactly_once_reports_op_executed_twice() -> None:
    run = Run()
    lock = req(0, 1, ops.lock("L", 1000))
    run.add(lock)
    run.add(req(1, 1, ops.put("k", b"v")), lock)
    c = ExactlyOnceChecker(REPLICAS)
    c.on_executed(0, run.execute(0, 1), 1.0)
    # A faulty replica runs the lock again at seq 2 (fresh token) instead of skipping it.
    store = KVStore()
    again = store.execute(lock.statement.op, ExecContext(2, 1, 1_000_000, 0, 1))
    honest = run.execute(0, 2)
    twice = Executed(2, 0, honest.digest, honest.batch, (honest.results[0], again), b"")
    c.on_executed(0, twice, 2.0)
    assert not c.ok and "executed again (first at seq 1)" in c.violations[0]


def test_exactly_once_reports_older_request_executed_after_newer() -> None:
    c = ExactlyOnceChecker(REPLICAS)
    b1 = Batch(1, (req(0, 2, ops.put("k", b"new")),))
    b2 = Batch(2, (req(0, 1, ops.put("k", b"old")),))
    c.on_executed(1, Executed(1, 0, batch_digest(b1), b1, (b"ok",), b""), 1.0)
    c.on_executed(1, Executed(2, 0, batch_digest(b2), b2, (b"ok",), b""), 2.0)
    assert not c.ok and "after the newer request 2" in c.violations[0]


def test_exactly_once_forgets_executions_above_the_restart_point() -> None:
    run = simple_run()
    c = ExactlyOnceChecker(REPLICAS)
    for seq in (1, 2, 3):
        c.on_executed(2, run.execute(2, seq), float(seq))
    c.on_restart(2, 1, 4.0)  # recovered at seq 1: executes 2 and 3 again from a fresh state
    fresh = Run()
    fresh.batches = run.batches
    fresh.execute(2, 1)
    c.on_executed(2, fresh.execute(2, 2), 5.0)
    c.on_executed(2, fresh.execute(2, 3), 5.0)
    assert c.ok, c.violations


# --------------------------------------------------------------------------
# Total order
# --------------------------------------------------------------------------


def test_total_order_passes_honest_run() -> None:
    c = TotalOrderChecker(REPLICAS)
    feed_all(c, simple_run())
    assert c.ok


def test_total_order_reports_gap() -> None:
    run = simple_run()
    c = TotalOrderChecker(REPLICAS)
    c.on_executed(0, run.execute(0, 1), 1.0)
    c.on_executed(0, run.execute(0, 3), 2.0)
    assert not c.ok and "executed seq 3 after 1 (gap)" in c.violations[0]


def test_total_order_reports_repeat() -> None:
    run = simple_run()
    c = TotalOrderChecker(REPLICAS)
    c.on_executed(0, run.execute(0, 1), 1.0)
    c.on_executed(0, run.execute(0, 1), 2.0)
    assert not c.ok and "(repeat)" in c.violations[0]


def test_total_order_allows_announced_state_transfer_and_restart() -> None:
    run = simple_run()
    c = TotalOrderChecker(REPLICAS)
    c.on_executed(0, run.execute(0, 1), 1.0)
    c.on_state_transfer(0, 2, 2.0)
    c.on_executed(0, run.execute(0, 3), 3.0)
    c.on_restart(0, 2, 4.0)
    c.on_executed(0, run.execute(0, 3), 5.0)
    assert c.ok, c.violations
    c.on_state_transfer(0, 1, 6.0)
    assert not c.ok and "back to seq 1" in c.violations[0]


# --------------------------------------------------------------------------
# State digests
# --------------------------------------------------------------------------


def test_state_digest_reports_divergent_state() -> None:
    run = simple_run()
    c = StateDigestChecker(REPLICAS)
    feed_all(c, run)
    assert c.ok and c.data()["digests_compared"] == 3 * 3
    e = run.execute(1, 1)
    c.on_executed(1, Executed(1, 0, e.digest, e.batch, e.results, b"\x01" * 32), 9.0)
    assert not c.ok and "seq 1" in c.violations[0]


def test_state_digest_skips_empty_digests() -> None:
    run = simple_run()
    c = StateDigestChecker(REPLICAS)
    for r in REPLICAS:
        e = run.execute(r, 1)
        c.on_executed(r, Executed(1, 0, e.digest, e.batch, e.results, b""), 1.0)
    assert c.ok and c.data()["digests_compared"] == 0


# --------------------------------------------------------------------------
# Linearizability
# --------------------------------------------------------------------------


def history(c, run: Run, completions: dict[tuple[int, int], tuple[float, float, bytes]]) -> None:
    """Invoke every request, feed replica 0's executions, complete as given (invoke, done, result)."""
    events = []
    for (client, ts), (invoked, done, result) in completions.items():
        op = next(s.statement.op for b in run.batches for s in b.requests
                  if (s.statement.client, s.statement.timestamp) == (client, ts))
        events.append((invoked, 0, "invoke", client, ts, op))
        events.append((done, 2, "complete", client, ts, result))
    for seq in range(1, len(run.batches) + 1):
        events.append((float(seq), 1, "exec", seq, None, None))
    for t, _, kind, a, b, x in sorted(events, key=lambda e: (e[0], e[1])):
        if kind == "invoke":
            c.on_invoke(a, b, x, t)
        elif kind == "complete":
            c.on_complete(a, b, x, t)
        else:
            for r in REPLICAS:
                c.on_executed(r, run.execute(r, a), t)
        c.check(t)
    c.finish(100.0)


def honest_times() -> dict[tuple[int, int], tuple[float, float, bytes]]:
    ok = b"\x81bok"
    return {
        (0, 1): (0.5, 1.5, ok), (1, 1): (0.5, 1.5, ok), (1, 2): (1.6, 2.5, ok),
        (2, 1): (2.6, 3.5, b"\x82evalueBv2"), (0, 2): (1.6, 3.5, ok),
    }


def test_linearizability_passes_honest_history() -> None:
    assert KVStore().execute(ops.put("a", b"b"), ExecContext(1, 0, 0, 0, 1)) == b"\x81bok"
    c = LinearizabilityChecker(REPLICAS)
    history(c, simple_run(), honest_times())
    assert c.ok, c.violations
    assert c.data()["results_checked"] == 5
    assert c.data()["replica_results_checked"] == 5 * 4


def test_linearizability_model_runs_leases_in_agreed_time_as_replicas_do() -> None:
    """PROTOCOL.md Execution ("a batch executes at max(its batch_time, the time of the
    batch before it)") and "Leases and agreed time": the checker's sequential model is fed
    the agreed time and max_clock_skew the replicas use, so a correct run passes.

    Client 0 holds L from 1.0 s to 2.0 s; with max_clock_skew 1 s, client 1 asking at
    3.5 s is refused (3.5 - 1 <= 2.0 + 1); seq 3's batch time 3.0 s runs at 3.5 s.
    Failed before the fix: the model granted client 1 the lock and dated M's lease from
    3.0 s, and reported the replicas' correct results as a violation.
    """
    skew = 1_000_000
    batches = [
        Batch(1_000_000, (req(0, 1, ops.lock("L", 1000)),)),
        Batch(3_500_000, (req(1, 1, ops.lock("L", 1000)),)),
        Batch(3_000_000, (req(2, 1, ops.lock("M", 1000)),)),
    ]
    reference, run = Run(skew_us=skew), Run(skew_us=skew)
    reference.batches, run.batches = list(batches), list(batches)
    granted_l, locked, granted_m = (reference.execute(0, seq).results[0] for seq in (1, 2, 3))
    assert decode_result(locked).kind == "locked"
    assert decode_result(granted_m).expiry_us == 4_500_000
    times = {(0, 1): (0.5, 1.5, granted_l), (1, 1): (1.6, 2.5, locked),
             (2, 1): (2.6, 3.5, granted_m)}
    c = LinearizabilityChecker(REPLICAS, max_clock_skew_us=skew)
    history(c, run, times)
    assert c.ok, c.violations
    assert c.data()["results_checked"] == 3


def test_linearizability_reports_stale_read() -> None:
    # Client 2 read k after v2 was written at seq 2, but accepted the old value v1
    # (say from f+1 colluding replicas). Agreement and validity cannot see this.
    times = honest_times()
    times[(2, 1)] = (2.6, 3.5, b"\x82evalueBv1")
    c = LinearizabilityChecker(REPLICAS)
    history(c, simple_run(), times)
    assert not c.ok
    assert "client 2 request 1 accepted result" in c.violations[0]


def test_linearizability_reports_real_time_order_violation() -> None:
    # Client 0's put completed at 0.9, before client 1 invoked its put at 1.0,
    # yet the agreed order puts client 1's put first: not linearizable.
    run = Run()
    run.add(req(1, 1, ops.put("k", b"late")))
    run.add(req(0, 1, ops.put("k", b"early")))
    ok = b"\x81bok"
    c = LinearizabilityChecker(REPLICAS)
    history(c, run, {(0, 1): (0.0, 0.9, ok), (1, 1): (0.95, 1.5, ok)})
    assert not c.ok
    assert any("ordered before an op completed before" in v for v in c.violations)


def test_linearizability_reports_completed_op_never_executed() -> None:
    c = LinearizabilityChecker(REPLICAS)
    c.on_invoke(0, 1, ops.get("k"), 0.0)
    c.on_complete(0, 1, b"\x81inot_found", 1.0)
    c.finish(2.0)
    assert not c.ok and "never executed" in c.violations[0]


def test_linearizability_reports_replica_result_diverging_from_model() -> None:
    run = simple_run()
    c = LinearizabilityChecker(REPLICAS)
    e = run.execute(0, 1)
    c.on_executed(0, Executed(1, 0, e.digest, e.batch, (b"\x81bok", b"\x81inot_found"),
                              e.state_digest), 1.0)
    c.check(1.0)
    assert not c.ok and "replica 0 seq 1 index 1" in c.violations[0]


# --------------------------------------------------------------------------
# Evidence and liveness
# --------------------------------------------------------------------------


def test_evidence_against_correct_replica_is_a_violation() -> None:
    signer = KEYS.signer("replica", 1)
    a = signer.sign(Prepare(0, 1, b"\x01" * 32, 1))
    b = signer.sign(Prepare(0, 1, b"\x02" * 32, 1))
    c = EvidenceChecker({0, 1, 2}, VERIFIER)
    c.on_evidence(0, Evidence(1, "prepare", a, b), 1.0)
    assert not c.ok and "correct replica 1" in c.violations[0]
    byz = EvidenceChecker({0, 2, 3}, VERIFIER)
    byz.on_evidence(0, Evidence(1, "prepare", a, b), 1.0)  # 1 is Byzantine: fine
    assert byz.ok and byz.data()["culprits"] == {"1": 1}


def test_conduct_passes_votes_in_their_view_and_resends() -> None:
    """PROTOCOL.md "Normal case": a correct replica prepares and commits in view v only while
    it is in view v; a resend of the same vote later is no new signature."""
    signer = KEYS.signer("replica", 1)
    c = ConductChecker({0, 1, 2})
    prepare = signer.sign(Prepare(0, 1, b"\x01" * 32, 1))
    c.on_sent(1, prepare, (0, False), (0, False))
    c.on_sent(1, signer.sign(Commit(0, 1, b"\x01" * 32, 1)), (0, False), (0, False))
    c.on_sent(1, prepare, (1, True), (1, True))  # resent during a view change: fine
    # entered view 1 in the step that sent it (NEW-VIEW's O prepared on entry)
    c.on_sent(1, signer.sign(Prepare(1, 1, b"\x01" * 32, 1)), (0, True), (1, False))
    c.on_sent(1, signer.sign(Checkpoint(4, b"\x07" * 32, 1)), (1, False), (1, False))
    assert c.ok and c.data()["votes_checked"] == 3


def test_conduct_reports_a_vote_signed_during_a_view_change() -> None:
    """Issue 18, 1a: a replica that sent VIEW-CHANGE(1) signs COMMIT(0, n, d) when the batch
    it lacked arrives: a violation, though no replica ever executes differently."""
    c = ConductChecker({0, 1, 2})
    c.on_sent(1, KEYS.signer("replica", 1).sign(Commit(0, 1, b"\x01" * 32, 1)),
              (1, True), (1, True))
    assert not c.ok and "COMMIT(0, 1)" in c.violations[0]
    # unless the replica is wrapped by a behaviour that may send late (after is None)
    late = ConductChecker({0, 1, 2})
    late.on_sent(1, KEYS.signer("replica", 1).sign(Commit(0, 1, b"\x01" * 32, 1)),
                 (1, True), None)
    assert late.ok


def test_conduct_reports_two_conflicting_signatures() -> None:
    """PROTOCOL.md "Evidence": two PREPAREs, COMMITs or PRE-PREPAREs with different digests
    for one (view, seq), or two CHECKPOINTs for one seq, from one correct replica."""
    one, two = b"\x01" * 32, b"\x02" * 32
    r1, r0 = KEYS.signer("replica", 1), KEYS.signer("replica", 0)
    home = (0, False)
    for make in (lambda d: r1.sign(Prepare(0, 3, d, 1)), lambda d: r1.sign(Commit(0, 3, d, 1)),
                 lambda d: r1.sign(Checkpoint(3, d, 1))):
        c = ConductChecker({0, 1, 2})
        c.on_sent(1, make(one), home, home)
        c.on_sent(1, make(two), home, home)
        assert not c.ok and "replica 1 signed two" in c.violations[0], make(one)
    batch = Batch(batch_time=1, requests=())
    c = ConductChecker({0, 1, 2})
    c.on_sent(0, Proposal(r0.sign(PrePrepare(0, 3, one, 0)), batch), home, home)
    c.on_sent(1, Proposal(r0.sign(PrePrepare(0, 3, two, 0)), batch), home, home)  # relayed
    assert c.ok
    c.on_sent(0, Proposal(r0.sign(PrePrepare(0, 3, two, 0)), batch), home, home)
    assert not c.ok and "PRE-PREPAREs" in c.violations[0]
    byzantine = ConductChecker({0, 2, 3})  # replica 1 is not judged
    byzantine.on_sent(1, r1.sign(Prepare(0, 3, one, 1)), home, home)
    byzantine.on_sent(1, r1.sign(Prepare(0, 3, two, 1)), home, home)
    assert byzantine.ok


def test_liveness_reports_late_and_pending_requests() -> None:
    c = LivenessChecker(REPLICAS, bound_s=2.0, faults_end_s=5.0)
    c.on_invoke(0, 1, b"op", 1.0)  # deadline 7.0 (faults end at 5)
    c.on_invoke(1, 1, b"op", 6.0)  # deadline 8.0
    c.check(6.9)
    assert c.ok
    c.on_complete(1, 1, b"r", 7.5)
    c.check(7.1)
    assert not c.ok and "client 0 request 1 not completed by 7.000" in c.violations[0]
    c.check(20.0)
    assert c.violation_count == 1  # reported once
    pending = LivenessChecker(REPLICAS, bound_s=10.0)
    pending.on_invoke(0, 1, b"op", 0.0)
    pending.finish(1.0)
    assert not pending.ok and "still pending" in pending.violations[0]


def test_suite_separates_safety_and_liveness() -> None:
    suite = CheckerSuite(REPLICAS, VERIFIER, liveness_bound_s=1.0)
    run = simple_run()
    for batch in run.batches:
        for s in batch.requests:
            suite.on_invoke(s.statement.client, s.statement.timestamp, s.statement.op, 0.0)
    feed_all(suite, run)
    suite.finish(100.0)
    assert suite.safety_ok
    assert not suite.liveness_ok  # nobody completed anything
    assert all(v.startswith("liveness: ") for v in suite.violations)
    assert set(suite.data()) == {"agreement", "validity", "exactly_once", "total_order",
                                 "state_digest", "linearizability", "evidence", "conduct",
                                 "liveness"}


# --------------------------------------------------------------------------
# Property: honest random histories pass; one planted stale result fails
# --------------------------------------------------------------------------


@settings(max_examples=25, deadline=None)
@given(st.integers(0, 2**32 - 1))
def test_random_honest_history_passes_and_planted_lie_fails(seed: int) -> None:
    print(f"seed={seed}")
    rng = random.Random(seed)
    run = Run()
    model = KVStore()
    ts = {c: 0 for c in range(3)}
    expected: dict[tuple[int, int], bytes] = {}
    for seq in range(1, rng.randint(2, 8)):
        requests = []
        for client in rng.sample(range(3), rng.randint(1, 3)):
            ts[client] += 1
            key = rng.choice("ab")
            op = rng.choice([ops.put(key, bytes([rng.randint(0, 3)])), ops.get(key),
                             ops.delete(key), ops.cas(key, None, b"\x09")])
            requests.append(req(client, ts[client], op))
        batch = run.add(*requests)
        for index, s in enumerate(batch.requests):
            r = s.statement
            expected[(r.client, r.timestamp)] = model.execute(
                r.op, ExecContext(seq, index, batch.batch_time, r.client, r.timestamp))
    # Each op is invoked just before its seq executes and completes just after.
    times = {}
    for seq, batch in enumerate(run.batches, start=1):
        for s in batch.requests:
            key = (s.statement.client, s.statement.timestamp)
            times[key] = (seq - 0.5, seq + 0.5, expected[key])
    honest = CheckerSuite(REPLICAS, VERIFIER, liveness_bound_s=100.0)
    history(honest, run, times)
    assert honest.safety_ok and honest.liveness_ok, honest.violations

    victim = rng.choice(sorted(times))
    invoked, done, result = times[victim]
    times[victim] = (invoked, done, result + b"!")
    lied = CheckerSuite(REPLICAS, VERIFIER, liveness_bound_s=100.0)
    history(lied, run, times)
    assert not lied.linearizability.ok
    assert all(c.ok for c in lied.safety_checkers if c is not lied.linearizability)

