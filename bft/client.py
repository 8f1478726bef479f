"""The PBFT client protocol, pure (sans-I/O): one outstanding request at a time.

OSDI'99 section 4.1 and PROTOCOL.md "Requests and replies" / "Loss recovery":

* `submit(op, now)` signs `REQUEST<op, t, c>` with a strictly increasing
  request number `t` and sends it to the primary of the view the client
  believes in, or with `send_to_all` to every replica (as BFT-SMaRt does:
  every backup sees every request and starts its timer, so a dead primary is
  suspected without waiting for the client's retransmission).
* `receive(reply, now)` accepts a `REPLY` only if it is authentic, from a
  replica of the cluster, names this client and the outstanding request
  number, and answers the very request this client sent: its `request`
  digest is the digest of that signed request (another process using the
  same client id may have had another request executed under the same
  number). Authentic is a `MacReply` whose MAC checks under the key this
  client shares with that replica (`bft.auth.ReplyAuth`, PBFT's MACs), or a
  `Signed` reply validly signed by that replica. The result is accepted once
  `f+1` distinct replicas reported the same `(t, d, result, agreed_us)`: at
  least one of them is correct, so the result, and the agreed time its batch
  executed at, are the ones the correct replicas computed for this request.
* `tick(now)`: when no accepted result arrived within `client_timeout_s`, the
  request is sent again: first once more to the primary (to every replica
  with `send_to_all`), then to every replica (a backup that has not seen it
  ordered forwards it to the primary and starts its view-change timer). The
  wait between retransmissions doubles up to `max_backoff` times the base
  timeout (the retransmit cap). The client never gives up on its own; it
  reports `Failed` only when the caller passed a `deadline` to `submit` and
  the deadline passed.

The client drives nothing itself: every method returns a list of
`ClientEffect`s for the caller (runtime or simulator) to carry out in order.
A `ClientTimer(at)` asks to call `tick()` no later than `at`.

Cheap screening (for a runtime that receives many replies it does not need:
with `send_to_all`, n replies come back and f+1 decide): `peek_reply_untrusted`
reads the claimed (client, timestamp, replica, request digest) of a reply from
its bytes without decoding or checking it, and `Client.prescreen` says whether a reply
with those claims could still count. A reply screened out is dropped (and
counted) exactly as `receive` would drop it; one screened in must still go
through `receive`, which decides on the decoded, authenticated reply alone.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Protocol

from bft.cbor import MAJOR_BYTES, MAJOR_UINT, read_head
from bft.config import ClusterConfig
from bft.crypto import request_digest
from bft.detector import RttEstimator
from bft.errors import MalformedMessage
from bft.messages import DIGEST_SIZE, MacReply, Reply, Request, Signed

# --------------------------------------------------------------------------
# Effects
# --------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class SendTo:
    """Send the signed request to replica `replica`."""

    replica: int
    request: Signed[Request]


@dataclass(frozen=True, slots=True)
class SendAll:
    """Send the signed request to every replica."""

    request: Signed[Request]


@dataclass(frozen=True, slots=True)
class Completed:
    """Request `timestamp` completed with `result` (f+1 matching replies), after `latency_s`;
    `agreed_us` is the agreed time its batch executed at (as f+1 replies report it; 0 only
    in hand-built test values, as `Reply.agreed_us`)."""

    timestamp: int
    result: bytes
    latency_s: float
    agreed_us: int = 0


@dataclass(frozen=True, slots=True)
class Failed:
    """Request `timestamp` was abandoned (only ever when the caller set a deadline)."""

    timestamp: int
    reason: str


@dataclass(frozen=True, slots=True)
class ClientTimer:
    """Call `tick()` no later than `at` (replaces an earlier ClientTimer)."""

    at: float


ClientEffect = SendTo | SendAll | Completed | Failed | ClientTimer


class _Signer(Protocol):
    def sign(self, statement: Request) -> Signed[Request]: ...


class _Verifier(Protocol):
    def verify(self, signed: Signed[Reply]) -> bool: ...


class _ReplyAuth(Protocol):
    def check(self, message: MacReply) -> bool: ...


@dataclass(slots=True)
class _Outstanding:
    """The one request in flight."""

    signed: Signed[Request]
    timestamp: int
    digest: bytes  # request_digest(signed): what a reply must answer
    submitted_at: float
    deadline: float | None
    next_retransmit_at: float
    retransmits: int = 0
    # replica id -> (view, result, agreed_us): the FIRST valid reply of each replica counts.
    replies: dict[int, tuple[int, bytes, int]] | None = None


# The canonical heads of `[Signed.TAG, body, signature]` and `[MacReply.TAG, body, mac]`
# (an array of 3, then the tag: one byte below 24, two bytes from 24 to 255).
assert Signed.TAG < 24 <= MacReply.TAG < 256
_SIGNED_HEAD = bytes((0x83, Signed.TAG))
_MAC_REPLY_HEAD = bytes((0x83, 0x18, MacReply.TAG))
# a Reply is an array of 8: [TAG, view, timestamp, client, replica, request, result, agreed_us]
_REPLY_HEAD = 0x88
_OLD_REPLY_HEAD = 0x87  # the format before agreed_us: refused (`is_old_reply_untrusted`)
_DIGEST_HEAD = bytes((0x58, DIGEST_SIZE))  # a byte string of 32 (24..255: one length byte)


def peek_reply_untrusted(data: bytes) -> tuple[int, int, int, bytes] | None:
    """The (client, timestamp, replica, request digest) a reply's bytes claim, or None
    if they do not look like a `MacReply` or `Signed` reply.

    Reads only the item heads up to the request digest, each with the one strict head
    reader (`bft.cbor.read_head`: bytes whose heads are not in their shortest form are no
    well-formed reply, hence None); no decoding of the rest, no check of the signature or
    of the MAC. The answer is a claim of whoever sent the bytes, good only to drop what
    cannot count (`Client.prescreen`); anything accepted is decoded and checked in full
    by `Client.receive`. Never raises.
    """
    try:
        if data[:2] == _SIGNED_HEAD:
            pos = 2
        elif data[:3] == _MAC_REPLY_HEAD:
            pos = 3
        else:
            return None
        _, pos = read_head(data, pos, MAJOR_BYTES, "the body")
        if data[pos] != _REPLY_HEAD or data[pos + 1] != Reply.TAG:
            return None
        _, pos = read_head(data, pos + 2, MAJOR_UINT, "the view")
        timestamp, pos = read_head(data, pos, MAJOR_UINT, "the timestamp")
        client, pos = read_head(data, pos, MAJOR_UINT, "the client")
        replica, pos = read_head(data, pos, MAJOR_UINT, "the replica")
        end = pos + 2 + DIGEST_SIZE
        if data[pos:pos + 2] != _DIGEST_HEAD or end > len(data):
            return None
        request = data[pos + 2:end]
    except (IndexError, MalformedMessage):
        return None
    return client, timestamp, replica, request


def is_old_reply_untrusted(data: bytes) -> bool:
    """Whether `data` looks like a `MacReply` or `Signed` reply of the format before
    `agreed_us` (a Reply of 7 items): a node of an older version. The codec refuses it
    (MalformedMessage); this only names the drop. Never raises."""
    try:
        if data[:2] == _SIGNED_HEAD:
            pos = 2
        elif data[:3] == _MAC_REPLY_HEAD:
            pos = 3
        else:
            return False
        _, pos = read_head(data, pos, MAJOR_BYTES, "the body")
        return data[pos] == _OLD_REPLY_HEAD and data[pos + 1] == Reply.TAG
    except (IndexError, MalformedMessage):
        return False


class ClientBusy(Exception):
    """`submit` was called while a request is still outstanding (a caller bug)."""


class Client:
    """A closed-loop PBFT client: at most one request outstanding.

    Guarantees:
    * request numbers are strictly increasing, starting at `first_timestamp`
      (a restarted client must pass a number above every one it used before);
    * `Completed` is emitted at most once per request, only after `f+1`
      distinct replicas sent authentic replies (validly signed, or MAC'd for
      this client) to this very request (same number, and the digest of the
      request this client signed) with equal results and equal agreed times
      (`Completed.agreed_us`). A replica is counted once
      per request: its first valid reply counts, later different replies from
      it are ignored (a correct replica never changes a result, so this only
      limits a liar);
    * replies that are badly signed (`bad_signature`) or MAC'd (`bad_mac`;
      every `MacReply` when the client has no `reply_auth`), for another
      client or request number (`other_client`, `stale_timestamp`), answering
      another request under this number (`other_request`: another process
      using this client id), from an unknown replica, or not replies at all are
      dropped and counted by reason in `statistics()["drops"]`, never raised.

    `reply_auth` is this client's `bft.auth.ReplyAuth` (None: only signed
    replies are accepted). `send_to_all` sends every request, and every
    retransmission, to every replica instead of the primary.
    """

    def __init__(self, config: ClusterConfig, client_id: int, signer: _Signer,
                 verifier: _Verifier, *,
                 first_timestamp: int = 1, max_backoff: int = 4,
                 primary_retransmits: int = 1, reply_auth: _ReplyAuth | None = None,
                 send_to_all: bool = False) -> None:
        if first_timestamp < 1:
            raise ValueError("first_timestamp must be >= 1")
        if max_backoff < 1:
            raise ValueError("max_backoff must be >= 1")
        self._config = config
        self.client_id = client_id
        self._signer = signer
        self._verifier = verifier
        self._reply_auth = reply_auth
        self.send_to_all = send_to_all
        self._next_timestamp = first_timestamp
        self._max_backoff = max_backoff
        self._primary_retransmits = primary_retransmits
        self._outstanding: _Outstanding | None = None
        self._latency = RttEstimator()  # smoothed latency of completed requests
        #: The view the client believes current (learned from accepted replies).
        self.view = 0
        self._stats: dict[str, int] = {
            "submitted": 0, "completed": 0, "failed": 0, "retransmits": 0,
            "broadcasts": 0, "replies_received": 0, "replies_counted": 0, "abandoned": 0,
        }
        self._drops: dict[str, int] = {}

    # ----------------------------------------------------------------- API

    @property
    def busy(self) -> bool:
        """True while a request is outstanding."""
        return self._outstanding is not None

    @property
    def outstanding_timestamp(self) -> int | None:
        """The request number in flight, or None."""
        return self._outstanding.timestamp if self._outstanding else None

    def submit(self, op: bytes, now: float, *, deadline: float | None = None) -> list[ClientEffect]:
        """Sign and send `op` as the next request; `deadline` (absolute) enables `Failed`.

        Raises `ClientBusy` if a request is outstanding (closed loop).
        """
        if self._outstanding is not None:
            raise ClientBusy(f"client {self.client_id}: request "
                             f"{self._outstanding.timestamp} still outstanding")
        timestamp = self._next_timestamp
        self._next_timestamp += 1
        signed = self._signer.sign(Request(op=op, timestamp=timestamp, client=self.client_id))
        timeout_s = self.retransmit_timeout_s
        self._outstanding = _Outstanding(
            signed=signed, timestamp=timestamp, digest=request_digest(signed),
            submitted_at=now, deadline=deadline,
            next_retransmit_at=now + timeout_s, replies={},
        )
        self._stats["submitted"] += 1
        return [self._send(signed), self._timer()]

    def receive(self, message: Any, now: float) -> list[ClientEffect]:
        """Take a reply (a `MacReply` or a signed `Reply`); may complete the request."""
        self._stats["replies_received"] += 1
        if not isinstance(message, (Signed, MacReply)) or not isinstance(message.statement, Reply):
            return self._drop("not_a_reply")
        reply: Reply = message.statement
        if reply.client != self.client_id:
            return self._drop("other_client")
        if not 0 <= reply.replica < self._config.n:
            return self._drop("unknown_replica")
        out = self._outstanding
        if out is None or reply.timestamp != out.timestamp:
            return self._drop("stale_timestamp")
        if reply.request != out.digest:
            return self._drop("other_request")
        if isinstance(message, MacReply):
            if self._reply_auth is None or not self._reply_auth.check(message):
                return self._drop("bad_mac")
        elif not self._verifier.verify(message):
            return self._drop("bad_signature")
        assert out.replies is not None
        if reply.replica in out.replies:
            return self._drop("duplicate_replica")
        out.replies[reply.replica] = (reply.view, reply.result, reply.agreed_us)
        self._stats["replies_counted"] += 1
        matching = [view for view, result, agreed_us in out.replies.values()
                    if result == reply.result and agreed_us == reply.agreed_us]
        if len(matching) < self._config.weak:
            return []
        # f+1 distinct replicas agree: at least one correct replica is in view >= the
        # (f+1)-th highest view they report, so adopting it never follows a lone liar.
        views = sorted((view for view, _, _ in out.replies.values()), reverse=True)
        self.view = max(self.view, views[self._config.weak - 1])
        self._outstanding = None
        self._stats["completed"] += 1
        latency_s = now - out.submitted_at
        if out.retransmits == 0:  # Karn: a retransmitted request's latency is ambiguous
            self._latency.observe(latency_s)
        return [Completed(out.timestamp, reply.result, latency_s, reply.agreed_us)]

    @property
    def retransmit_timeout_s(self) -> float:
        """How long to wait for a result before sending the request again: the configured
        `client_timeout_s`, or more when the latencies measured say the cluster is slower
        (smoothed latency + 4 x its mean deviation, as TCP's RTO, RFC 6298), at most 16 x.
        A loaded cluster is then not flooded with retransmissions of requests that are
        merely queued; fail-over does not depend on them (requests go to every replica)."""
        base = self._config.client_timeout_s
        bound = self._latency.bound_s()
        if bound is None:
            return base
        return min(max(base, bound), 16 * base)

    def prescreen(self, timestamp: int, replica: int, request: bytes) -> bool:
        """Whether a reply claiming `timestamp`, `replica` and `request` digest
        (`peek_reply_untrusted`) could still count toward the outstanding request.

        False when `receive` would drop it whatever its authenticity: no request is
        outstanding or it has another number (`stale_timestamp`), the replica is not
        one of the cluster (`unknown_replica`), it answers another request
        (`other_request`), or that replica's reply was already counted
        (`duplicate_replica`, which `receive` would give after checking the MAC).
        The drop is counted as `receive` counts it. True: pass the reply to
        `receive`, which checks everything again on the decoded reply.
        """
        out = self._outstanding
        if out is not None and timestamp == out.timestamp and 0 <= replica < self._config.n:
            assert out.replies is not None
            if request != out.digest:
                reason = "other_request"
            elif replica not in out.replies:
                return True
            else:
                reason = "duplicate_replica"
        elif 0 <= replica < self._config.n:
            reason = "stale_timestamp"
        else:
            reason = "unknown_replica"
        self._stats["replies_received"] += 1
        self._drops[reason] = self._drops.get(reason, 0) + 1
        return False

    def abandon(self) -> int | None:
        """Give up the outstanding request without a result (the caller stopped waiting,
        e.g. was cancelled); returns its number, or None if there was none.

        Its number is never used again, and replies to it are dropped as stale. The
        request may still be executed by the replicas: abandoning says nothing about
        that. Counted in `statistics()["abandoned"]`."""
        out = self._outstanding
        if out is None:
            return None
        self._outstanding = None
        self._stats["abandoned"] += 1
        return out.timestamp

    def tick(self, now: float) -> list[ClientEffect]:
        """Retransmit or fail the outstanding request if its time has come."""
        out = self._outstanding
        if out is None:
            return []
        if out.deadline is not None and now >= out.deadline:
            self._outstanding = None
            self._stats["failed"] += 1
            return [Failed(out.timestamp, f"deadline passed after {out.retransmits} retransmits")]
        if now < out.next_retransmit_at:
            return [self._timer()]
        out.retransmits += 1
        self._stats["retransmits"] += 1
        backoff = min(2 ** (out.retransmits - 1), self._max_backoff)
        out.next_retransmit_at = now + self.retransmit_timeout_s * backoff
        effects: list[ClientEffect]
        if out.retransmits <= self._primary_retransmits:
            effects = [self._send(out.signed)]
        else:
            self._stats["broadcasts"] += 1
            effects = [SendAll(out.signed)]
        effects.append(self._timer())
        return effects

    def statistics(self) -> dict[str, Any]:
        """Counters: submitted, completed, failed, abandoned, retransmits, broadcasts,
        replies, drops, and `reply_auth` (the MAC checks' counters; None without reply
        keys)."""
        stats: dict[str, Any] = dict(self._stats)
        stats["view"] = self.view
        stats["retransmit_timeout_s"] = self.retransmit_timeout_s
        stats["outstanding"] = self.outstanding_timestamp
        stats["drops"] = dict(sorted(self._drops.items()))
        auth_stats = getattr(self._reply_auth, "statistics", None)
        stats["reply_auth"] = auth_stats() if auth_stats is not None else None
        return stats

    # ------------------------------------------------------------- helpers

    def _send(self, signed: Signed[Request]) -> SendTo | SendAll:
        if self.send_to_all:
            return SendAll(signed)
        return SendTo(self._config.primary(self.view), signed)

    def _timer(self) -> ClientTimer:
        out = self._outstanding
        assert out is not None
        at = out.next_retransmit_at
        if out.deadline is not None:
            at = min(at, out.deadline)
        return ClientTimer(at)

    def _drop(self, reason: str) -> list[ClientEffect]:
        self._drops[reason] = self._drops.get(reason, 0) + 1
        return []
