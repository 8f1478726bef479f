"""View-change and new-view computation (PROTOCOL.md "View change", OSDI'99 section 4.4).

Pure functions over already signature-checked messages: whether a VIEW-CHANGE
is well-formed, and the pre-prepares O that a NEW-VIEW must carry for a set V
of view changes. The new primary computes O; every backup recomputes it and
accepts the NEW-VIEW only if it matches exactly.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from bft.messages import (
    Checkpoint,
    NewView,
    PreparedCert,
    Prepare,
    PrePrepare,
    Signed,
    ViewChange,
)


@dataclass(frozen=True, slots=True)
class Geometry:
    """What validation needs to know of the cluster."""

    n: int
    f: int
    log_window: int
    quorum: int  # 2f+1 when n = 3f+1 (ClusterConfig.quorum in general)

    def primary(self, view: int) -> int:
        return view % self.n


def checkpoint_proof_problem(geo: Geometry, seq: int, state_digest: bytes,
                             proof: tuple[Signed[Any], ...]) -> str | None:
    """None if `proof` holds 2f+1 signed CHECKPOINTs of distinct replicas for (seq, state_digest).

    At seq 0 (the initial state) the proof must be empty.
    """
    if seq == 0:
        return None if not proof else "proof_at_genesis"
    signers: set[int] = set()
    for s in proof:
        c = s.statement
        if not isinstance(c, Checkpoint):
            return "proof_not_checkpoint"
        if c.seq != seq or c.state_digest != state_digest:
            return "proof_mismatch"
        if c.replica >= geo.n:
            return "proof_unknown_replica"
        signers.add(c.replica)
    if len(signers) < geo.quorum:
        return "proof_too_small"
    return None


def prepared_cert_problem(geo: Geometry, cert: PreparedCert, below_view: int,
                          low: int, high: int) -> str | None:
    """None if `cert` is a prepared certificate: a pre-prepare by primary(v) and quorum-1 (2f) matching
    PREPAREs from distinct backups (never the primary of v), with v < below_view and low < seq <= high."""
    pp = cert.pre_prepare.statement
    if not isinstance(pp, PrePrepare):
        return "cert_not_pre_prepare"
    if pp.replica != geo.primary(pp.view):
        return "cert_wrong_primary"
    if pp.view >= below_view:
        return "cert_view_too_high"
    if not (low < pp.seq <= high):
        return "cert_outside_window"
    backups: set[int] = set()
    for s in cert.prepares:
        p = s.statement
        if not isinstance(p, Prepare):
            return "cert_not_prepare"
        if (p.view, p.seq, p.digest) != (pp.view, pp.seq, pp.digest):
            return "cert_mismatch"
        if p.replica == pp.replica or p.replica >= geo.n:
            return "cert_bad_preparer"
        backups.add(p.replica)
    if len(backups) < geo.quorum - 1:
        return "cert_too_small"
    return None


def view_change_problem(geo: Geometry, vc: ViewChange) -> str | None:
    """None if the VIEW-CHANGE is well-formed (signatures are checked elsewhere)."""
    if vc.replica >= geo.n:
        return "unknown_replica"
    problem = checkpoint_proof_problem(geo, vc.stable_seq, vc.state_digest, vc.checkpoint_proof)
    if problem:
        return problem
    seen: set[int] = set()
    for cert in vc.prepared:
        problem = prepared_cert_problem(geo, cert, vc.view, vc.stable_seq,
                                        vc.stable_seq + geo.log_window)
        if problem:
            return problem
        seq = cert.pre_prepare.statement.seq
        if seq in seen:
            return "cert_duplicate_seq"
        seen.add(seq)
    return None


@dataclass(frozen=True, slots=True)
class NewViewPlan:
    """What a NEW-VIEW for V decides: the checkpoint to start from and the digests to re-propose."""

    min_s: int
    max_s: int
    checkpoint: ViewChange  # the view change whose checkpoint proof is for min_s
    digests: tuple[tuple[int, bytes], ...]  # (seq, digest) for seq in (min_s, max_s]
    certs: dict[int, PreparedCert]  # the certificate chosen for each non-null seq


def plan_new_view(view_changes: list[ViewChange], null_digest: bytes) -> NewViewPlan:
    """Compute min_s, max_s and O's digests from a set V of valid view changes (section 4.4)."""
    best_cp = max(view_changes, key=lambda vc: (vc.stable_seq, vc.replica))
    min_s = best_cp.stable_seq
    best: dict[int, PreparedCert] = {}
    for vc in view_changes:
        for cert in vc.prepared:
            pp = cert.pre_prepare.statement
            assert isinstance(pp, PrePrepare)
            if pp.seq <= min_s:
                continue
            cur = best.get(pp.seq)
            if cur is None or pp.view > cur.pre_prepare.statement.view:
                best[pp.seq] = cert
    max_s = max(best, default=min_s)
    digests = []
    for seq in range(min_s + 1, max_s + 1):
        chosen = best.get(seq)
        digests.append((seq, chosen.pre_prepare.statement.digest if chosen else null_digest))
    return NewViewPlan(min_s, max_s, best_cp, tuple(digests), best)


def new_view_problem(geo: Geometry, nv: NewView, null_digest: bytes) -> tuple[str | None, NewViewPlan | None]:
    """Check a NEW-VIEW as a backup does: 2f+1 valid VIEW-CHANGEs for nv.view from distinct
    replicas, and O equal to what V gives. Returns (problem, plan)."""
    if nv.replica != geo.primary(nv.view):
        return "new_view_wrong_primary", None
    vcs: list[ViewChange] = []
    senders: set[int] = set()
    for s in nv.view_changes:
        vc = s.statement
        if not isinstance(vc, ViewChange):
            return "new_view_not_view_change", None
        if vc.view != nv.view:
            return "new_view_vc_wrong_view", None
        if vc.replica in senders:
            return "new_view_duplicate_sender", None
        problem = view_change_problem(geo, vc)
        if problem:
            return "new_view_bad_vc:" + problem, None
        senders.add(vc.replica)
        vcs.append(vc)
    if len(senders) < geo.quorum:
        return "new_view_too_few", None
    plan = plan_new_view(vcs, null_digest)
    got = []
    for s in nv.pre_prepares:
        pp = s.statement
        if not isinstance(pp, PrePrepare) or pp.view != nv.view or pp.replica != nv.replica:
            return "new_view_bad_pre_prepare", None
        got.append((pp.seq, pp.digest))
    if tuple(got) != plan.digests:
        return "new_view_wrong_o", None
    return None, plan
