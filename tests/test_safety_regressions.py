"""Regressions for the safety bugs of issue 18 (outside reviews at c9f30a9).

Each test is a crafted schedule on tests/harness.py's step network (pure replicas,
the real codec, no wall clock) that reproduces one review finding, and names the
PROTOCOL.md rule it checks. Each failed on the code of c9f30a9.
"""

from __future__ import annotations

from harness import Net, Ops

from bft.messages import Commit, NewView, Prepare, PrePrepare, Proposal, Signed, ViewChange

SEED = 1


def _statement(msg):
    if isinstance(msg, Proposal):
        return msg.pre_prepare.statement
    return getattr(msg, "statement", None)


def _receive(net: Net, i: int, msg) -> list:
    """Hand one message to replica i through the real codec; its effects are applied to the
    network as usual and returned."""
    from bft import codec

    wire = codec.decode_untrusted(codec.encode(msg), net.config.limits)
    effects = net.replicas[i].receive(wire, net.now)
    net._apply(i, effects)
    return effects


def _signed_votes(effects) -> list:
    """The PREPAREs and COMMITs among effects (sent or broadcast)."""
    from bft.effects import Broadcast, Send

    return [e.message.statement for e in effects if isinstance(e, (Send, Broadcast))
            and isinstance(_statement(e.message), (Prepare, Commit))]


def _advance_until(net: Net, cond, limit_s: float = 60.0, step: float = 0.05) -> None:
    end = net.now + limit_s
    while not cond():
        assert net.now < end, "condition not reached within the time limit"
        net.advance(step, step)


def test_a_replica_in_a_view_change_signs_no_commit_when_a_late_batch_arrives():
    """PROTOCOL.md "Normal case": prepare and commit are steps of view v only; a replica in a
    view change sends no PREPARE or COMMIT for v, even when a batch it lacked arrives late
    (OSDI'99 4.4: in a view change a replica accepts only CHECKPOINT, VIEW-CHANGE, NEW-VIEW).

    Schedule (issue 18, 1a): replica 2 misses primary 0's proposal of seq 1 and every batch
    after it; no COMMIT gets through. View 1's NEW-VIEW re-proposes the digest for seq 1;
    replica 2 logs that pre-prepare without its batch and prepares it; view 1 fails too and
    replica 2 moves to a view change for view 2. Only then does the batch reach it.

    Failed before the fix: `_on_proposal` handed the batch to `_got_batch`, whose
    `_check_prepared` signed COMMIT(1, 1, d) in the view replica 2 was leaving; with a
    Byzantine replica that leaves its certificate out of VIEW-CHANGE(2) that COMMIT completes
    a commit quorum for d at seq 1 while NEW-VIEW(2) gives seq 1 another batch."""
    print(f"seed={SEED}")
    net = Net(4, seed=SEED)
    held: list[Proposal] = []
    signed_by_2: list = []

    def deliver(src, dst, msg) -> bool:
        st = _statement(msg)
        if src == 2 and isinstance(st, (Prepare, Commit)):
            signed_by_2.append(st)
        if isinstance(st, Commit):
            return False  # no COMMIT gets through: no view decides seq 1
        if dst == 2 and isinstance(msg, Proposal):
            held.append(msg)  # replica 2 lacks the batch
            return False
        if dst == 1 and isinstance(st, Prepare):
            return False  # replica 1 never prepares, so it carries no certificate
        if dst == 2 and isinstance(st, ViewChange) and st.view >= 2:
            return False  # replica 2, primary of view 2, stays in the view change
        return True

    net.filter = deliver
    net.request(0, Ops.put("x", b"1"))
    net.deliver()
    r2 = net.replicas[2]
    # view 1: replica 2 holds the NEW-VIEW's pre-prepare of seq 1, not its batch
    _advance_until(net, lambda: r2.view == 1 and not r2.in_view_change)
    slot = r2.log.get(1)
    assert slot is not None and slot.pre_prepare is not None and slot.batch is None
    # view 1 fails as well: replica 2 starts the view change to 2
    _advance_until(net, lambda: r2.view == 2 and r2.in_view_change)
    late = [p for p in held if p.pre_prepare.statement.seq == 1]
    assert late, "the batch of seq 1 was never sent to replica 2"
    effects = _receive(net, 2, late[-1])
    votes = _signed_votes(effects)
    assert r2.in_view_change and r2.view == 2
    assert not votes, f"replica 2 voted in a view it left: {votes}"


def _forged_proposal(net: Net, primary: int, view: int, seq: int, client: int, op: bytes,
                     timestamp: int, at_s: float | None = None) -> Proposal:
    """A well-signed PRE-PREPARE with its batch, as a Byzantine `primary` can send it."""
    from bft.crypto import batch_digest
    from bft.messages import Batch, Request

    req = net.keys.signer("client", client).sign(Request(op, timestamp, client))
    batch = Batch(int((net.now if at_s is None else at_s) * 1_000_000), (req,))
    pp = net.keys.signer("replica", primary).sign(
        PrePrepare(view, seq, batch_digest(batch), primary))
    return Proposal(pp, batch)


def _own_votes(net: Net, i: int) -> list:
    """Every PREPARE and COMMIT replica i signed, as the others received them (collects what
    the filter saw; see _recording)."""
    return net.signed_by.get(i, [])  # type: ignore[attr-defined]


def _recording(net: Net, inner=None):
    """A filter that records what each replica signed and sent (PRE-PREPARE, PREPARE, COMMIT)
    before `inner` decides whether it is delivered."""
    net.signed_by = {}  # type: ignore[attr-defined]

    def deliver(src, dst, msg) -> bool:
        st = _statement(msg)
        if src >= 0 and isinstance(st, (PrePrepare, Prepare, Commit)) and st.replica == src:
            seen = net.signed_by.setdefault(src, [])  # type: ignore[attr-defined]
            if st not in seen:
                seen.append(st)
        return inner(src, dst, msg) if inner is not None else True

    return deliver


def _conflicts(statements) -> list:
    """Pairs of statements of one kind for one (view, seq) with different digests."""
    first: dict = {}
    out = []
    for st in statements:
        key = (type(st).__name__, st.view, st.seq)
        if key in first and first[key].digest != st.digest:
            out.append((first[key], st))
        first.setdefault(key, st)
    return out


def test_new_view_slots_belong_to_the_new_view_and_keep_their_prepare():
    """PROTOCOL.md "Normal case": slots filled from a NEW-VIEW's O belong to v+1; rule 4: a
    backup never accepts a different digest for (v, seq) (a correct replica never signs two
    PREPAREs for one (v, seq)).

    Schedule (issue 18, 1d): replica 3 misses everything of seq 1 in view 0, so its first
    slot for seq 1 is made by NEW-VIEW(1), which re-proposes the prepared digest d. The
    others' PREPAREs for (1, 1, d) then arrive; then primary 1, Byzantine, sends replica 3 a
    fresh PRE-PREPARE(1, 1, d') with another batch.

    Failed before the fix: the NEW-VIEW slot kept view -1 (bft/log.py's default), the next
    PREPARE for it reset the slot, wiping the NEW-VIEW's pre-prepare and replica 3's own
    PREPARE, and replica 3 accepted d' and signed PREPARE(1, 1, d'): a correct replica
    produced evidence against itself."""
    print(f"seed={SEED}")
    net = Net(4, seed=SEED)

    injected: list[Proposal] = []

    def schedule(src, dst, msg) -> bool:
        st = _statement(msg)
        if isinstance(st, Commit):
            return False  # nothing decides seq 1 in view 0 or 1
        if isinstance(st, (PrePrepare, Prepare)) and st.view == 0 and 3 in (src, dst):
            return False  # replica 3 hears nothing of view 0's normal case
        if dst == 3 and isinstance(st, Prepare) and st.view == 1 and not injected:
            # right behind the first PREPARE of view 1: Byzantine primary 1's fresh batch
            forged = _forged_proposal(net, 1, 1, 1, client=1, op=Ops.put("x", b"2"),
                                      timestamp=1)
            injected.append(forged)
            net.queue.append((1, 3, forged))
        return True

    net.filter = _recording(net, schedule)
    net.request(0, Ops.put("x", b"1"))
    net.deliver()
    r3 = net.replicas[3]
    _advance_until(net, lambda: bool(injected))
    net.deliver()
    mine = [st for st in _own_votes(net, 3) if isinstance(st, Prepare)]
    assert not _conflicts(mine), f"replica 3 signed conflicting PREPAREs: {_conflicts(mine)}"
    assert [st.view for st in mine] == [1], mine  # it prepared the NEW-VIEW's digest in view 1
    assert r3.drops["conflicting_pre_prepare"] >= 1  # and refused primary 1's second digest


def test_a_decided_slot_waiting_for_its_batch_refuses_another_digest():
    """PROTOCOL.md "Normal case": a slot that has committed-local never changes its digest: a
    later pre-prepare with another digest is dropped. "Peer input never breaks a replica".

    Schedule (issue 18, 1c; `bft sim --seed 66 --nodes 4 --clients 3 --requests 30 --drop 0.1
    --reorder 0.2 --byzantine 0:equivocate` reached it at random): replica 3 misses primary
    0's proposal and the PREPAREs of seq 1 but gets 2f+1 COMMITs for (0, 1, d), which decide
    the seq; its batch has not arrived. Primary 0, Byzantine, then sends replica 3 a fresh
    PRE-PREPARE(0, 1, d') with another batch.

    Failed before the fix: the slot had no pre-prepare, so `_accept_pre_prepare` took d' and
    overwrote the batch, and `_execute_ready` raised InvariantViolation ("batch of seq 1 does
    not match its digest") out of `receive`: `bft node` died, and died again on restart."""
    print(f"seed={SEED}")
    net = Net(4, seed=SEED)
    held: list[Proposal] = []

    def schedule(src, dst, msg) -> bool:
        if dst != 3 or src < 0:
            return True
        if isinstance(msg, Proposal):
            held.append(msg)  # the batch is late (lost proposal, FETCH answers delayed)
            return False
        return isinstance(_statement(msg), Commit)

    net.filter = schedule
    net.request(0, Ops.put("x", b"1"))
    net.deliver()
    r3 = net.replicas[3]
    slot = r3.log.get(1)
    assert slot is not None and slot.decided is not None and slot.batch is None
    d = slot.decided
    forged = _forged_proposal(net, 0, 0, 1, client=1, op=Ops.put("x", b"2"), timestamp=1)
    assert forged.pre_prepare.statement.digest != d
    _receive(net, 3, forged)  # must not raise
    slot = r3.log.get(1)
    assert slot.decided == d and r3.last_executed == 0
    assert slot.batch is None, "the decided slot took the batch of another digest"
    assert r3.drops["conflicts_decided"] == 1
    # the real batch arrives: replica 3 executes d at seq 1, as the others did
    net.filter = None
    _receive(net, 3, held[0])
    net.advance(1)
    assert r3.last_executed == 1
    assert r3.app.digest() == net.replicas[0].app.digest()


def test_a_replica_behind_a_proven_checkpoint_takes_no_part_at_or_below_it():
    """PROTOCOL.md "Normal case": a replica whose h is below a proven stable checkpoint (2f+1
    CHECKPOINTs, or a NEW-VIEW's C) takes no part in the normal case at or below it: it
    transfers state first (TOCS 5.3).

    Schedule (issue 18, 1b): replica 3 is cut off while seqs 1..8 commit (K = 4, L = 8) and
    checkpoint 8 becomes stable at the others. Healed, it learns the proof of checkpoint 8
    from their STATUS answers and starts a state transfer, whose chunks are slow to come.
    Primary 0, Byzantine, sends it a fresh PRE-PREPARE(0, 3, d') for a seq the others decided
    long ago.

    Failed before the fix: the window check used replica 3's stale low watermark (0), so it
    accepted the pre-prepare and signed PREPARE(0, 3, d'). With two such replicas (restarted
    from an older snapshot, the review's schedule) and a Byzantine primary, that is a quorum:
    they executed a stale read at seq 5 although puts at 5..8 had committed."""
    print(f"seed={SEED}")
    from bft.messages import StateChunk

    net = Net(4, seed=SEED, checkpoint_interval=4, log_window=8)
    cut = {"on": True}

    def schedule(src, dst, msg) -> bool:
        if cut["on"]:
            return 3 not in (src, dst) or src == -1
        return not isinstance(_statement(msg), StateChunk)  # the transfer is slow

    net.filter = _recording(net, schedule)
    for k in range(8):
        net.request(0, Ops.put(f"k{k}", b"v"), to=0)
        net.deliver()
    assert [r.stable_seq for r in net.replicas] == [8, 8, 8, 0]
    cut["on"] = False
    r3 = net.replicas[3]
    _advance_until(net, lambda: r3.transfer is not None)
    assert r3.stable_seq == 0 and r3.transfer.seq == 8
    forged = _forged_proposal(net, 0, 0, 3, client=1, op=Ops.get("k0"), timestamp=1)
    effects = _receive(net, 3, forged)
    assert not _signed_votes(effects), "replica 3 voted at a seq below a proven checkpoint"
    assert r3.drops["below_proven_checkpoint"] == 1


def test_a_restarted_primary_never_signs_a_second_pre_prepare_for_a_new_view_seq():
    """PROTOCOL.md "Crash recovery": a replica never signs a message that conflicts with one
    it signed before the crash; rule 4 of the normal case (one digest per (v, seq)).

    Schedule (issue 18, 2f; no Byzantine node): seqs 3..5 are prepared in view 0 but no
    COMMIT gets through; replica 1 never gets seq 5's batch. Primary 1's NEW-VIEW(1)
    re-proposes 3..5; 3 and 4 execute and checkpoint 4 becomes stable (K = 4), which
    compacts replica 1's WAL while slot 5 still waits for its batch. Replica 1 crashes,
    restarts from the WAL, and a new request reaches it.

    Failed before the fix: recovery from the re-saved NEW-VIEW record left next_seq at 5,
    `_persist_survivors` had not re-saved slot 5's pre-prepare (no batch), and `_propose`
    overwrote the slot: replica 1 signed PRE-PREPARE(1, 5, d') against its NEW-VIEW's
    PRE-PREPARE(1, 5, d5), and the backups held evidence against a correct primary."""
    print(f"seed={SEED}")
    net = Net(4, seed=SEED, checkpoint_interval=4, log_window=8)

    def schedule(src, dst, msg) -> bool:
        st = _statement(msg)
        if isinstance(st, Commit) and st.view == 0 and st.seq >= 3:
            return False  # seqs 3..5 prepare but do not commit in view 0
        if dst == 1 and isinstance(msg, Proposal) and msg.pre_prepare.statement.seq == 5:
            return False  # replica 1 never gets seq 5's batch
        return True

    net.filter = _recording(net, schedule)
    for k in range(5):
        net.request(0, Ops.put(f"k{k}", b"v"), to=0)
        net.deliver()
        net.advance(0.05)
    assert [r.last_executed for r in net.replicas] == [2, 2, 2, 2]
    net.isolate(0)  # primary 0 goes away: the others move to view 1 with primary 1
    r1 = net.replicas[1]
    _advance_until(net, lambda: r1.view == 1 and not r1.in_view_change and r1.stable_seq == 4)
    nv_pp = {pp.statement.seq: pp.statement.digest for pp in r1.new_view_msg.statement.pre_prepares}
    assert set(nv_pp) == {1, 2, 3, 4, 5}
    assert r1.log.get(5) is not None and r1.log.get(5).batch is None
    net.crash(1)
    net.restart(1)
    net.request(1, Ops.put("new", b"v"), to=1)
    net.deliver()
    signed = [st for st in _own_votes(net, 1) if isinstance(st, PrePrepare) and st.view == 1]
    for st in signed:
        if st.seq in nv_pp:
            assert st.digest == nv_pp[st.seq], f"replica 1 re-signed seq {st.seq} of view 1"
    assert not _conflicts(signed)
    assert not any(e.culprit == 1 for e in net.evidence), "evidence against a correct primary"


def test_a_conflicting_commit_relayed_after_a_view_change_is_evidence():
    """PROTOCOL.md "Evidence": two COMMITs with the same (v, seq, i) and different digests
    are a proof; a replica that holds one and receives the other produces it.

    Schedule (found by `bft sim --nodes 7 --seed 999 ... --byzantine 0:equivocate`, the
    evidence witness): replica 3 holds replica 0's COMMIT(0, 1, dA); it then joins a view
    change to view 1 (f+1 VIEW-CHANGEs); replica 0's COMMIT(0, 1, dB) arrives.

    Failed before the fix: a COMMIT of an earlier view (or one below a proven checkpoint)
    went straight to the commit-certificate path, which compared it with nothing."""
    print(f"seed={SEED}")
    import hashlib

    from bft.effects import Evidence as EvidenceEffect

    net = Net(4, seed=SEED)
    r3 = net.replicas[3]
    sign0 = net.keys.signer("replica", 0)
    d_a, d_b = hashlib.sha256(b"a").digest(), hashlib.sha256(b"b").digest()
    _receive(net, 3, sign0.sign(Commit(0, 1, d_a, 0)))
    for j in (1, 2):
        _receive(net, 3, net.keys.signer("replica", j).sign(ViewChange(1, 0, b"\0" * 32, (), (), j)))
    assert r3.in_view_change and r3.view == 1
    effects = _receive(net, 3, sign0.sign(Commit(0, 1, d_b, 0)))
    proofs = [e for e in effects if isinstance(e, EvidenceEffect)]
    assert [(e.culprit, e.kind) for e in proofs] == [(0, "commit")]
    assert {proofs[0].first.statement.digest, proofs[0].second.statement.digest} == {d_a, d_b}


def _votes_lost_schedule(lose_snapshot: bool):
    """Replica 3 prepares seq 5 (K = 4, L = 8; checkpoint 4 stable), its COMMITs lost; it
    crashes and restarts from storage that lost its records (and, if asked, its snapshot).
    Primary 0, Byzantine, then sends it PRE-PREPARE(0, 5, d') with another batch."""
    net = Net(4, seed=SEED, checkpoint_interval=4, log_window=8)
    net.filter = _recording(net)
    for k in range(4):
        net.request(0, Ops.put(f"k{k}", b"v"), to=0)
        net.deliver()
    assert [r.stable_seq for r in net.replicas] == [4, 4, 4, 4]
    inner = net.filter
    net.filter = lambda src, dst, msg: inner(src, dst, msg) and not isinstance(
        _statement(msg), Commit)
    net.request(0, Ops.put("x", b"1"), to=0)
    net.deliver()
    before = [st for st in _own_votes(net, 3) if isinstance(st, Prepare) and st.seq == 5]
    assert len(before) == 1
    net.crash(3)
    net.restart(3, lose_records=True, lose_snapshot=lose_snapshot)
    forged = _forged_proposal(net, 0, 0, 5, client=1, op=Ops.put("x", b"2"), timestamp=1)
    assert forged.pre_prepare.statement.digest != before[0].digest
    return net, forged


def test_a_replica_that_lost_its_votes_does_not_vote_where_it_may_have_voted():
    """PROTOCOL.md "Crash recovery": a replica never signs a message that conflicts with one
    it signed before the crash. When stable storage loses records (a damaged WAL: any damage
    but a torn tail, bft.storage.votes_may_be_lost), the replica does not vote at or below
    its stable checkpoint + L (everything it may have voted on) until it has caught up.

    Failed before the fix: the replica restarted without its earlier votes and signed
    PREPARE(0, 5, d') against its own PREPARE(0, 5, d): a correct node turned equivocator."""
    print(f"seed={SEED}")
    net, forged = _votes_lost_schedule(lose_snapshot=False)
    r3 = net.replicas[3]
    assert r3.votes_lost and r3.vote_floor == 4 + 8
    effects = _receive(net, 3, forged)
    assert not _signed_votes(effects)
    assert r3.drops["votes_lost"] == 1
    mine = [st for st in _own_votes(net, 3) if isinstance(st, Prepare)]
    assert not _conflicts(mine)


def test_a_replica_that_lost_its_snapshot_too_learns_its_floor_from_a_proof():
    """As above with the snapshot lost as well: the floor is unknown, so the replica signs no
    vote at all until a stable checkpoint is proven to it (the cluster's never goes back);
    then it catches up by state transfer and votes again once past the floor."""
    print(f"seed={SEED}")
    net, forged = _votes_lost_schedule(lose_snapshot=True)
    r3 = net.replicas[3]
    assert r3.votes_lost and r3.vote_floor is None
    assert not _signed_votes(_receive(net, 3, forged))
    net.filter = _recording(net)  # COMMITs flow again; the cluster goes on
    for k in range(12):
        net.request(1, Ops.put(f"z{k}", b"v"), to=0)
        net.deliver()
        net.advance(0.2)
    assert r3.vote_floor is not None and r3.vote_floor >= 12
    assert not r3.votes_lost, "replica 3 never got past the floor"
    assert r3.last_executed == net.replicas[0].last_executed
    mine = [st for st in _own_votes(net, 3) if isinstance(st, Prepare)]
    assert not _conflicts(mine)
    assert any(st.seq > r3.vote_floor for st in mine), "it votes again above the floor"


def test_evidence_memory_is_pruned_with_the_log():
    """PROTOCOL.md "Checkpoints" (garbage collection) and "Peer input never breaks a
    replica": what a replica remembers of proofs it produced is discarded with the log at a
    stable checkpoint, so a Byzantine primary's equivocations cannot grow it without bound.

    Failed before the fix: `evidence_seen` was never pruned."""
    print(f"seed={SEED}")
    net = Net(4, seed=SEED, checkpoint_interval=4, log_window=8)
    r3 = net.replicas[3]
    forged = _forged_proposal(net, 0, 0, 1, client=1, op=Ops.put("x", b"2"), timestamp=1)
    net.request(0, Ops.put("x", b"1"), to=0)
    net.deliver()
    _receive(net, 3, forged)  # primary 0 signed two PRE-PREPAREs for (0, 1)
    assert ("pp", 0, 1) in r3.evidence_seen
    for k in range(8):
        net.request(2, Ops.put(f"k{k}", b"v"))
        net.deliver()
        net.advance(0.05)
    _advance_until(net, lambda: r3.stable_seq >= 4)
    assert ("pp", 0, 1) not in r3.evidence_seen


def test_two_pre_prepares_are_evidence_even_when_one_was_deferred():
    """PROTOCOL.md "Evidence": two PRE-PREPAREs with the same (v, seq) and different digests
    are a proof, whatever else the replica did with them.

    Schedule (issue 18, suspected and confirmed): primary 0, Byzantine, sends replica 3 a
    PRE-PREPARE(0, 1, dA) whose batch_time is too far behind (held back until f+1 backups
    vouch for it), then PRE-PREPARE(0, 1, dB) with another batch.

    Failed before the fix: the held-back proposal was compared with nothing; the second one
    replaced it (or was accepted), and no proof was produced."""
    print(f"seed={SEED}")
    from bft.effects import Evidence as EvidenceEffect

    net = Net(4, seed=SEED)
    net.advance(5)  # time passes: a batch stamped at 0 s is now too far behind
    net.queue.clear()
    old = _forged_proposal(net, 0, 0, 1, client=1, op=Ops.put("x", b"1"), timestamp=1, at_s=0.0)
    new = _forged_proposal(net, 0, 0, 1, client=1, op=Ops.put("x", b"2"), timestamp=1)
    _receive(net, 3, old)
    assert net.replicas[3].drops["batch_time_too_far_behind"] == 1
    effects = _receive(net, 3, new)
    proofs = [e for e in effects if isinstance(e, EvidenceEffect)]
    assert [(e.culprit, e.kind) for e in proofs] == [(0, "pre_prepare")]


def test_a_view_change_from_a_replica_behind_its_new_view_checkpoint_is_valid():
    """PROTOCOL.md "View change": a VIEW-CHANGE is valid iff C proves h and every certificate
    in P lies in (h, h + L]; VIEW-CHANGE carries the last stable checkpoint *known* to the
    replica (OSDI'99 4.4), proven even if its state has not arrived yet.

    Schedule (issue 18, suspected; K = 4, L = 8): replica 3 is cut off while seqs 1..8
    commit (checkpoint 8 stable at the others) and seqs 9, 10 prepare. Primary 0 goes away;
    replica 3 comes back but its state transfer is slow. NEW-VIEW(1) (min_s = 8)
    re-proposes 9 and 10; no COMMIT gets through, and view 1 fails too.

    The review saw such a replica hold certificates beyond its own h + L, which made its
    VIEW-CHANGE invalid. At this code it refuses PREPAREs beyond its own window, so it holds
    none there (this schedule shows no certificate at all), but its VIEW-CHANGE now cites
    checkpoint 8, known to it from the NEW-VIEW, and only certificates in (h, h + L], so it
    is valid by construction. Failed before: it cited h = 0."""
    print(f"seed={SEED}")
    from bft.messages import StateChunk
    from bft.viewchange import view_change_problem

    net = Net(4, seed=SEED, checkpoint_interval=4, log_window=8)
    phase = {"cut": True}
    sent_vcs: list = []

    def schedule(src, dst, msg) -> bool:
        st = _statement(msg)
        if src == 3 and isinstance(st, ViewChange):
            sent_vcs.append(st)
        if phase["cut"] and 3 in (src, dst) and src != -1:
            return False
        if isinstance(st, Commit) and st.seq > 8:
            return False  # seqs 9 and 10 never commit
        return not (dst == 3 and isinstance(st, StateChunk))  # the transfer is slow

    net.filter = schedule
    for k in range(10):
        net.request(0, Ops.put(f"k{k}", b"v"), to=0)
        net.deliver()
        net.advance(0.05)
    assert [r.stable_seq for r in net.replicas] == [8, 8, 8, 0]
    phase["cut"] = False
    net.isolate(0)
    r3 = net.replicas[3]
    _advance_until(net, lambda: r3.view == 1 and not r3.in_view_change)
    _advance_until(net, lambda: any(vc.view == 2 for vc in sent_vcs))
    assert r3.stable_seq == 0, "the state transfer was meant to be slow"
    vc2 = [vc for vc in sent_vcs if vc.view == 2][0]
    assert vc2.stable_seq == 8
    geo = net.replicas[1].geo
    assert view_change_problem(geo, vc2) is None, view_change_problem(geo, vc2)
