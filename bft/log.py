"""The message log of a replica: one slot per sequence number inside the watermarks.

A slot holds, for the replica's current view, the accepted pre-prepare, the
batch, the PREPARE and COMMIT votes received (first vote per replica), and
what this replica has sent; plus what survives view changes: the highest-view
prepared certificate (for VIEW-CHANGE messages) and the decided digest once
committed-local (for execution).
"""

from __future__ import annotations

from dataclasses import dataclass, field

from bft.messages import Batch, Commit, PreparedCert, Prepare, PrePrepare, Proposal, Signed


@dataclass(slots=True)
class Slot:
    seq: int
    view: int = -1  # view of the votes below
    pre_prepare: Signed[PrePrepare] | None = None
    digest: bytes | None = None
    fresh: bool = True  # a fresh proposal (rule 6) rather than one re-issued by NEW-VIEW
    prepares: dict[int, Signed[Prepare]] = field(default_factory=dict)
    commits: dict[int, Signed[Commit]] = field(default_factory=dict)
    sent_prepare: bool = False
    sent_commit: bool = False
    prepared: bool = False
    # survives view changes
    cert: PreparedCert | None = None  # highest-view prepared certificate
    batch: Batch | None = None  # the batch for `digest` (or decided digest)
    decided: bytes | None = None  # committed-local digest
    commit_cert: tuple[Signed[Commit], ...] = ()  # the 2f+1 matching COMMITs (one view) that decided it
    decided_pp: Signed[PrePrepare] | None = None  # a pre-prepare signed for the decided digest
    # (view, digest) -> {replica: its COMMIT}: relayed votes of earlier views
    old_commits: dict[tuple[int, bytes], dict[int, Signed[Commit]]] = field(default_factory=dict)
    accepted_at: float | None = None
    deferred: Proposal | None = None  # a Proposal held back until f+1 backups vouch for its late batch_time

    def reset_view(self, view: int) -> None:
        """Forget the votes of earlier views (certificate and decision stay)."""
        self.view = view
        self.pre_prepare = None
        self.digest = None
        self.fresh = True
        self.prepares = {}
        self.commits = {}
        self.sent_prepare = False
        self.sent_commit = False
        self.prepared = False
        self.deferred = None
        if self.decided is None:
            self.batch = None


class MessageLog:
    """Slots by sequence number with low/high watermarks (h, h + L]."""

    def __init__(self, log_window: int) -> None:
        self.log_window = log_window
        self.low = 0  # h: seq of the last stable checkpoint
        self.slots: dict[int, Slot] = {}
        self.top = 0  # the highest seq a slot was ever made for (slots above it: none)

    @property
    def high(self) -> int:
        return self.low + self.log_window

    def in_window(self, seq: int) -> bool:
        return self.low < seq <= self.high

    def get(self, seq: int) -> Slot | None:
        return self.slots.get(seq)

    def slot(self, seq: int) -> Slot:
        s = self.slots.get(seq)
        if s is None:
            s = self.slots[seq] = Slot(seq)
            if seq > self.top:
                self.top = seq
        return s

    def advance(self, low: int) -> None:
        """Move h to `low` and discard every slot at or below it."""
        if low <= self.low:
            return
        self.low = low
        for seq in [s for s in self.slots if s <= low]:
            del self.slots[seq]

    def __len__(self) -> int:
        return len(self.slots)
