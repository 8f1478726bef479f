"""Quorum math and tallies (bft/quorum.py): property tests, and a planted quorum of 2f that
the intersection property catches.

Votes here are real signed statements (SimKeys: seeded keys), drawn by hypothesis over
small clusters so every case, shrunk, is a short list of who voted for what.
"""

from __future__ import annotations

import itertools
from functools import lru_cache

from hypothesis import given, settings
from hypothesis import strategies as st

from bft import quorum
from bft.config import ClusterConfig
from bft.crypto import SimKeys
from bft.messages import Checkpoint, Commit, Prepare, Signed, ViewChange

DIGESTS = (b"\x01" * 32, b"\x02" * 32, b"\x03" * 32)
MAX_N = 10


@lru_cache(maxsize=None)
def _keys() -> SimKeys:
    return SimKeys(20, n_replicas=MAX_N, n_clients=1)


@lru_cache(maxsize=None)
def _vote(kind: type, voter: int, value: int, view: int = 0) -> Signed:
    signer = _keys().signer("replica", voter)
    if kind is Checkpoint:
        return signer.sign(Checkpoint(8, DIGESTS[value], voter))
    if kind is ViewChange:
        return signer.sign(ViewChange(view, 0, b"\0" * 32, (), (), voter))
    return signer.sign(kind(view, 1, DIGESTS[value], voter))


@st.composite
def clusters(draw: st.DrawFn) -> tuple[int, int]:
    f = draw(st.integers(0, 3))
    n = draw(st.integers(3 * f + 1, min(MAX_N, 3 * f + 3)))
    return n, f


@st.composite
def ballots(draw: st.DrawFn) -> tuple[int, int, dict[int, int]]:
    """(n, f, {voter: index of the digest it voted for}) over a random subset of voters."""
    n, f = draw(clusters())
    voters = draw(st.lists(st.integers(0, n - 1), unique=True))
    return n, f, {v: draw(st.integers(0, len(DIGESTS) - 1)) for v in voters}


# ---------------------------------------------------------------- sizes


def split_votes(n: int, f: int, q: int) -> tuple[set[int], set[int]] | None:
    """Two certificates of q votes for different values that at most f faulty replicas
    (voting for both) and correct ones (voting once) can make, or None if none exist.
    Found by search over which replicas are faulty and how the correct ones split."""
    replicas = range(n)
    for faulty in itertools.combinations(replicas, f):
        correct = [r for r in replicas if r not in faulty]
        for k in range(len(correct) + 1):
            for side_a in itertools.combinations(correct, k):
                a = set(side_a) | set(faulty)
                b = (set(correct) - set(side_a)) | set(faulty)
                if len(a) >= q and len(b) >= q:
                    return a, b
    return None


@settings(max_examples=60, deadline=None)
@given(clusters())
def test_two_quorums_share_a_correct_replica(cluster: tuple[int, int]) -> None:
    n, f = cluster
    q = quorum.quorum_size(n, f)
    assert quorum.min_overlap(n, q) >= f + 1
    assert q <= n - f  # the correct replicas alone make a quorum (liveness)
    assert split_votes(n, f, q) is None


def test_quorum_sizes_as_in_the_paper() -> None:
    for f in range(5):
        assert quorum.quorum_size(3 * f + 1, f) == 2 * f + 1
        assert quorum.weak_size(f) == f + 1
    assert ClusterConfig.local(7).quorum == 5 and ClusterConfig.local(7).weak == 3


def test_a_planted_quorum_of_2f_is_caught() -> None:
    """The checks above with 2f in place of quorum_size: they fail, and the search shows the
    split (one faulty replica voting on both sides of n = 4)."""
    for f in (1, 2):
        n, planted = 3 * f + 1, 2 * f
        assert quorum.min_overlap(n, planted) < f + 1
        a, b = split_votes(n, f, planted)  # type: ignore[misc]
        assert len(a) >= planted and len(b) >= planted


# ---------------------------------------------------------------- tallies


@settings(max_examples=200, deadline=None)
@given(ballots(), st.integers(0, MAX_N - 1))
def test_prepared_certificate_is_2f_matching_backups(ballot: tuple, primary: int) -> None:
    n, f, votes = ballot
    primary %= n
    q = quorum.quorum_size(n, f)
    prepares = {v: _vote(Prepare, v, d) for v, d in votes.items()}
    for d, digest in enumerate(DIGESTS):
        backups = sorted(v for v, x in votes.items() if x == d and v != primary)
        cert = quorum.prepared_certificate(prepares, digest, primary, q)
        if len(backups) < q - 1:
            assert cert is None
            continue
        assert cert is not None
        assert [s.statement.replica for s in cert] == backups[: q - 1]
        assert all(s.statement.digest == digest for s in cert)


@settings(max_examples=200, deadline=None)
@given(ballots())
def test_commit_certificates_are_quorums_of_one_digest(ballot: tuple) -> None:
    n, f, votes = ballot
    q = quorum.quorum_size(n, f)
    commits = {v: _vote(Commit, v, d) for v, d in votes.items()}
    found = dict(quorum.commit_certificates(commits, q))
    for d, digest in enumerate(DIGESTS):
        count = sum(1 for x in votes.values() if x == d)
        cert = quorum.commit_certificate(commits, digest, q)
        assert (cert is not None) == (count >= q) == (digest in found)
        if cert is not None:
            assert cert == found[digest]
            assert len(cert) == q and len({s.statement.replica for s in cert}) == q
            assert all(s.statement.digest == digest for s in cert)
    assert len(found) <= 1  # one vote per voter: two quorums would share a voter


@settings(max_examples=200, deadline=None)
@given(ballots())
def test_checkpoint_certificate_holds_every_matching_vote(ballot: tuple) -> None:
    n, f, votes = ballot
    q = quorum.quorum_size(n, f)
    cps = {v: _vote(Checkpoint, v, d) for v, d in votes.items()}
    for d, digest in enumerate(DIGESTS):
        count = sum(1 for x in votes.values() if x == d)
        proof = quorum.checkpoint_certificate(cps.values(), 8, digest, q)
        assert (proof is not None) == (count >= q)
        if proof is not None:
            assert len(proof) == count
        assert quorum.checkpoint_certificate(cps.values(), 16, digest, q) is None


@settings(max_examples=200, deadline=None)
@given(ballots(), st.lists(st.tuples(st.integers(0, MAX_N - 1), st.integers(0, 2))))
def test_add_vote_keeps_the_first_and_reports_conflicts(ballot: tuple, more: list) -> None:
    n, _f, first = ballot
    votes: dict[int, Signed] = {}
    for v, d in first.items():
        assert quorum.add_vote(votes, v, _vote(Prepare, v, d)) is quorum.ADDED
    for v, d in more:
        v %= n
        held = votes.get(v)
        got = quorum.add_vote(votes, v, _vote(Prepare, v, d))
        if held is None:
            assert got is quorum.ADDED and votes[v] is _vote(Prepare, v, d)
        elif held.statement.digest == DIGESTS[d]:
            assert got is quorum.DUPLICATE and votes[v] is held
        else:
            assert isinstance(got, quorum.ConflictingVotes)
            assert (got.voter, got.first, got.second) == (v, held, _vote(Prepare, v, d))
            assert votes[v] is held


@settings(max_examples=200, deadline=None)
@given(clusters(), st.lists(st.integers(0, 6), max_size=MAX_N), st.integers(0, 6))
def test_view_change_tallies(cluster: tuple[int, int], views: list[int], current: int) -> None:
    n, f = cluster
    q = quorum.quorum_size(n, f)
    vcs = {r: _vote(ViewChange, r, 0, view=v) for r, v in enumerate(views[:n])}
    asked = {r: v for r, v in enumerate(views[:n])}
    # join (4.5): the smallest view that f+1 replicas want (each it or higher), above ours
    target = quorum.join_target(vcs, current, f + 1)
    higher = [v for v in asked.values() if v > current]
    if len(higher) < f + 1:
        assert target is None
    else:
        assert target is not None and target > current
        assert sum(1 for v in higher if v >= target) >= f + 1
        assert sum(1 for v in higher if v > target) < f + 1
    # the NEW-VIEW timer: how many ask for `current` or above
    assert quorum.count_at_or_above(vcs, current) == sum(1 for v in asked.values() if v >= current)
    # V of a NEW-VIEW: q view changes for exactly that view, first by id
    exact = sorted(r for r, v in asked.items() if v == current)
    cert = quorum.view_change_certificate(vcs, current, q)
    if len(exact) < q:
        assert cert is None
    else:
        assert cert is not None and [s.statement.replica for s in cert] == exact[:q]


@settings(max_examples=100, deadline=None)
@given(ballots(), st.integers(0, MAX_N - 1))
def test_vouched_needs_f_plus_1_others(ballot: tuple, primary: int) -> None:
    n, f, votes = ballot
    prepares = {v: _vote(Prepare, v, d) for v, d in votes.items()}
    exclude = (primary % n, 0)
    for d, digest in enumerate(DIGESTS):
        count = sum(1 for v, x in votes.items() if x == d and v not in exclude)
        assert quorum.vouched(prepares, digest, exclude, f + 1) == (count >= f + 1)
