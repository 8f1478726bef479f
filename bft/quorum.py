"""Vote counting: quorum sizes and tallies (as etcd-io/raft's quorum/ package).

Pure math over votes the replica already verified. `Geometry` is what checking a
certificate needs to know of the cluster (n, f, the log window, the quorum). The sizes:

* `quorum_size(n, f)`: ceil((n+f+1)/2), 2f+1 when n = 3f+1. Any two quorums share at
  least f+1 replicas, so at least one correct replica, which never votes for two values:
  two certificates for different values in one (view, seq) cannot both exist.
* `weak_size(f)`: f+1, enough to include one correct replica.

Votes are kept as `{voter: Signed}` (a slot's PREPAREs and COMMITs, the CHECKPOINTs of
one seq, the VIEW-CHANGEs): one vote per voter, the first one. A tally returns a
certificate (the votes that make it, as a tuple) or None, never a bare count;
`add_vote` returns the earlier vote as `ConflictingVotes` evidence when a voter signs another
value for the same thing.

Which value a vote is for: `digest` of a PREPARE or COMMIT, `state_digest` of a
CHECKPOINT (`vote_value`).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Iterable, Mapping, Sequence, TypeVar

from bft.messages import Checkpoint, Commit, Prepare, Signed, ViewChange

V = TypeVar("V", Prepare, Commit, Checkpoint)


@dataclass(frozen=True, slots=True)
class Geometry:
    """What validation needs to know of the cluster."""

    n: int
    f: int
    log_window: int
    quorum: int  # 2f+1 when n = 3f+1 (ClusterConfig.quorum in general)

    def primary(self, view: int) -> int:
        return view % self.n


def quorum_size(n: int, f: int) -> int:
    """The certificate size: the smallest q with 2q - n >= f + 1 (two quorums share a correct
    replica); at most n - f (the correct replicas alone form one) when n >= 3f+1."""
    return (n + f) // 2 + 1


def weak_size(f: int) -> int:
    """f+1: any f+1 distinct replicas include a correct one."""
    return f + 1


def min_overlap(n: int, q: int) -> int:
    """The fewest replicas two sets of q replicas out of n can share."""
    return max(0, 2 * q - n)


def vote_value(statement: Prepare | Commit | Checkpoint) -> bytes:
    """What a vote is for: the batch digest of a PREPARE or COMMIT, the state digest of a
    CHECKPOINT."""
    if isinstance(statement, Checkpoint):
        return statement.state_digest
    return statement.digest


@dataclass(frozen=True, slots=True)
class ConflictingVotes:
    """Evidence: `voter` signed `first` and `second`, votes for different values."""

    voter: int
    first: Signed[Prepare | Commit | Checkpoint]
    second: Signed[Prepare | Commit | Checkpoint]


ADDED = "added"
DUPLICATE = "duplicate"


def add_vote(votes: dict[int, Signed[V]], voter: int, vote: Signed[V]) -> str | ConflictingVotes:
    """Record `vote` of `voter` unless it has one already: ADDED; DUPLICATE when the earlier
    vote is for the same value; a `ConflictingVotes` (the earlier vote kept) when it is not."""
    held = votes.get(voter)
    if held is None:
        votes[voter] = vote
        return ADDED
    if vote_value(held.statement) != vote_value(vote.statement):
        return ConflictingVotes(voter, held, vote)
    return DUPLICATE


def matching(votes: Mapping[int, Signed[V]], value: bytes | None) -> list[Signed[V]]:
    """The votes for `value`, in the order they were recorded."""
    return [s for s in votes.values() if vote_value(s.statement) == value]


def prepared_certificate(prepares: Mapping[int, Signed[Prepare]], digest: bytes | None,
                         primary: int, quorum: int) -> tuple[Signed[Prepare], ...] | None:
    """prepared(v, seq, d) (OSDI'99 4.2): with the pre-prepare, quorum-1 (2f) PREPAREs for
    `digest` from distinct backups (the primary's own never counts). The certificate's
    PREPAREs are the first quorum-1 by voter id, so it is the same wherever it is made."""
    if len(prepares) < quorum - 1:  # (one vote per voter: too few voters at all, cheaply)
        return None
    backups = [s for r, s in prepares.items() if s.statement.digest == digest and r != primary]
    if len(backups) < quorum - 1:
        return None
    backups.sort(key=_voter)
    return tuple(backups[: quorum - 1])


def commit_certificate(commits: Mapping[int, Signed[Commit]], digest: bytes | None,
                       quorum: int) -> tuple[Signed[Commit], ...] | None:
    """committed-local (4.2): quorum (2f+1) COMMITs for `digest` of distinct replicas, the
    first recorded."""
    if len(commits) < quorum:  # (one vote per voter: too few voters at all, cheaply)
        return None
    votes = [s for s in commits.values() if s.statement.digest == digest]
    if len(votes) < quorum:
        return None
    return tuple(votes[:quorum])


def commit_certificates(commits: Mapping[int, Signed[Commit]],
                        quorum: int) -> list[tuple[bytes, tuple[Signed[Commit], ...]]]:
    """Every digest that quorum COMMITs agree on, with its certificate, in first-vote order.
    At most one when quorum is a true quorum and at most f voters are faulty."""
    if len(commits) < quorum:
        return []
    by_digest: dict[bytes, list[Signed[Commit]]] = {}
    for c in commits.values():
        by_digest.setdefault(c.statement.digest, []).append(c)
    return [(d, tuple(v[:quorum])) for d, v in by_digest.items() if len(v) >= quorum]


def checkpoint_certificate(votes: Iterable[Signed[Checkpoint]], seq: int, state_digest: bytes,
                           quorum: int) -> tuple[Signed[Checkpoint], ...] | None:
    """A stable checkpoint proof (4.3): every CHECKPOINT for (seq, state_digest) among
    `votes` (one per replica), if there are at least quorum of them."""
    proof = tuple(s for s in votes
                  if s.statement.seq == seq and s.statement.state_digest == state_digest)
    return proof if len(proof) >= quorum else None


def vouched(prepares: Mapping[int, Signed[Prepare]], digest: bytes,
            exclude: Sequence[int], weak: int) -> bool:
    """Whether `weak` (f+1) PREPAREs for `digest`, of voters not in `exclude`, vouch for it:
    one of them is correct."""
    if len(prepares) < weak:
        return False
    return sum(1 for r, s in prepares.items()
               if r not in exclude and s.statement.digest == digest) >= weak


def count_at_or_above(view_changes: Mapping[int, Signed[ViewChange]], view: int) -> int:
    """How many replicas asked for `view` or a higher one."""
    return sum(1 for s in view_changes.values() if s.statement.view >= view)


def join_target(view_changes: Mapping[int, Signed[ViewChange]], above: int,
                weak: int) -> int | None:
    """4.5: the smallest view above `above` that at least `weak` (f+1) replicas want (each
    asking for it or a higher one), or None."""
    higher = sorted(s.statement.view for s in view_changes.values() if s.statement.view > above)
    if len(higher) < weak:
        return None
    return higher[-weak]


def view_change_certificate(view_changes: Mapping[int, Signed[ViewChange]], view: int,
                            quorum: int) -> tuple[Signed[ViewChange], ...] | None:
    """V of a NEW-VIEW (4.4): quorum VIEW-CHANGEs for exactly `view`, the first by voter id."""
    vcs = [s for s in view_changes.values() if s.statement.view == view]
    if len(vcs) < quorum:
        return None
    vcs.sort(key=_voter)
    return tuple(vcs[:quorum])


def _voter(s: Signed[Prepare | ViewChange]) -> int:
    return s.statement.replica
