"""Effects: what the pure Replica asks its driver (runtime or simulator) to do.

`Replica.start()`, `Replica.receive()` and `Replica.tick()` return a list of
effects in the order they were produced. The rule that matters for safety:
every `Persist` is durable before the `Send`/`Broadcast` of a message whose
signing it records (write-ahead), so a replica that crashes and restarts never
signs a vote that contradicts one it already sent. `bft.driver.EffectRunner`
carries effects out that way for every driver (node, simulator, harness).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Union

from bft.messages import Batch, MacReply, Signed, WireMessage


@dataclass(frozen=True, slots=True)
class Persist:
    """Make `record` (bytes, opaque to the driver) durable before any later Send runs.

    A driver may append several records and sync once, but must sync before it
    carries out the next Send/Broadcast/Reply (write-ahead): bft/driver.py.
    """

    record: bytes


@dataclass(frozen=True, slots=True)
class SaveSnapshot:
    """Durably store the application snapshot of checkpoint `seq` (the WAL may then be compacted).

    Records that must survive compaction are re-emitted as `Persist` effects right after it.
    """

    seq: int
    data: bytes


@dataclass(frozen=True, slots=True)
class Send:
    """Send `message` to replica `to`."""

    to: int
    message: WireMessage


@dataclass(frozen=True, slots=True)
class Broadcast:
    """Send `message` to every other replica."""

    message: WireMessage


@dataclass(frozen=True, slots=True)
class Executed:
    """The replica executed `batch` at `seq` (already applied: for logs, checkers, telemetry)."""

    seq: int
    view: int
    digest: bytes
    batch: Batch
    results: tuple[bytes, ...]
    state_digest: bytes


@dataclass(frozen=True, slots=True)
class Reply:
    """Send the reply to client `client`: MAC'd for it (`MacReply`) or signed."""

    client: int
    reply: Signed[Any] | MacReply


@dataclass(frozen=True, slots=True)
class SetTimer:
    """Call `tick()` at monotonic time `at` (replaces an earlier SetTimer): once per SetTimer,
    and not on any other schedule (the timer contract, bft/driver.py)."""

    at: float


@dataclass(frozen=True, slots=True)
class Evidence:
    """Two validly signed messages from `culprit` that no correct node would send both of."""

    culprit: int
    kind: str
    first: Signed[Any]
    second: Signed[Any]


@dataclass(frozen=True, slots=True)
class Event:
    """Something worth showing or logging: view change, commit, checkpoint, drop..."""

    kind: str
    fields: dict[str, Any] = field(default_factory=dict)


Effect = Union[Persist, SaveSnapshot, Send, Broadcast, Executed, Reply, SetTimer, Evidence, Event]
