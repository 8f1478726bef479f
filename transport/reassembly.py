"""Reassembly of fragmented messages, with hard bounds on what it holds.

`Reassembler.add(peer_key, frame, now)` takes decoded frames (see
`transport.frame`) in any order, with losses and duplicates, and returns each
message once it is complete. Everything it keeps is bounded, whatever peers send:

- a message longer than `max_message_bytes` is refused at its first fragment;
- the bytes held in partial messages, counted as payload bytes plus
  `FRAGMENT_OVERHEAD_BYTES` per fragment held, never exceed
  `max_bytes_per_peer` for one peer key, nor `max_total_bytes` for all the
  strangers together (see reserved peers below);
- a peer has at most `max_partial_per_peer` partial messages;
- at most `max_peers` strangers have state (partials and recent ids);
- a partial message older than `max_age_s` is dropped;
- a peer remembers at most `recent_ids_per_peer` completed message ids.

Reserved peers. The peer keys given as `reserved` (or to `set_reserved`: the UDP
endpoint reserves `(address, id)` of every peer in its peer table, so a replica
reserves its fellow replicas, known from the config) each have their own budget
of `max_bytes_per_peer` and `max_partial_per_peer`, which nobody else can take:
their partials are evicted only to make room for their own, and a reserved peer
is never forgotten under `max_peers`. Every other key is a stranger (clients,
unknown sources, a replica's address with another sender id): strangers share
`max_total_bytes` and evict only one another (the oldest stranger partial
first), so a flood of never-completed fragments from many sources cannot evict
a replica's large message mid-reassembly. In all, the bytes held never exceed
`max_held_bytes` = `max_total_bytes` + (reserved keys) x `max_bytes_per_peer`.

When a bound would be exceeded the oldest partial (of that peer, or of all the
strangers) is evicted, or the least recently active stranger is forgotten; every
eviction and every dropped frame is counted by reason in `statistics()["drops"]`.

Delivery guarantees: a delivered message is exactly the bytes its fragments
carried, in index order. A message id that a peer completed recently (one of
its last `recent_ids_per_peer` completed ids, while the peer's state is kept) is
delivered only once: a duplicate of a whole message, or a late fragment of it,
is dropped as `duplicate_message`. Once that window has moved on, or the peer
was forgotten under the `max_peers` bound, a very late duplicate can be
delivered again; the layer above must tolerate that (PBFT does: its messages
are idempotent). A sender that restarts begins a new id sequence; so that its
new messages are not taken for recent duplicates, senders start their counter
at a random point (UdpEndpoint does).

Memory beyond the byte bounds: each remembered id costs roughly 120 bytes, so
the recent-id windows take at most about
`(max_peers + reserved keys) * recent_ids_per_peer * 120` bytes (about 16 MB with
the defaults 1024 and 128).

`now` is passed in (monotonic seconds); the reassembler reads no clock.
"""

from __future__ import annotations

from collections import Counter, OrderedDict, deque
from collections.abc import Hashable, Iterable

from transport.frame import DEFAULT_MAX_MESSAGE_BYTES, Frame

#: Bytes charged for each fragment held, on top of its payload, so that many tiny
#: fragments cannot hold much more memory than the byte bounds say.
FRAGMENT_OVERHEAD_BYTES = 64

#: Every reason a frame or a partial message is dropped, each a stable counter key.
REASSEMBLY_DROP_REASONS = (
    # frames
    "too_large",  # total length above max_message_bytes
    "bad_fragment",  # index outside the count, or a single fragment that is not the whole
    "duplicate_fragment",  # a fragment index already held for this partial
    "duplicate_message",  # the message id was completed recently
    "inconsistent_fragment",  # count or total length differ from the partial's first fragment
    # partial messages
    "bad_length",  # fragment bytes do not add up to the announced total length
    "expired",  # older than max_age_s
    "evicted_partial_limit",  # the peer already had max_partial_per_peer partials
    "evicted_peer_bytes",  # the peer's partials would exceed max_bytes_per_peer
    "evicted_total_bytes",  # the strangers' partials would exceed max_total_bytes
    "evicted_peer",  # the peer was forgotten (max_peers, or no longer reserved): partials dropped
)


class _Partial:
    """One message being reassembled."""

    __slots__ = (
        "cost",
        "created_s",
        "fragment_count",
        "fragments",
        "key",
        "message_id",
        "payload_bytes",
        "peer",
        "total_length",
    )

    def __init__(self, peer: _Peer, key: tuple[Hashable, int], frame: Frame, now: float) -> None:
        self.peer = peer
        self.key = key
        self.message_id = frame.message_id
        self.fragment_count = frame.fragment_count
        self.total_length = frame.total_length
        self.created_s = now
        # A dict, not a list of fragment_count slots: memory follows what arrived,
        # not what a peer announced.
        self.fragments: dict[int, bytes] = {}
        self.payload_bytes = 0
        self.cost = 0  # payload bytes + FRAGMENT_OVERHEAD_BYTES per fragment


class _Peer:
    """What is kept for one peer key: its partials and its recently completed ids."""

    __slots__ = ("cost", "key", "partials", "recent_order", "recent_set", "reserved")

    def __init__(self, key: Hashable, reserved: bool = False) -> None:
        self.key = key
        self.reserved = reserved  # a reserved peer's partials are not in the strangers' pool
        self.partials: OrderedDict[int, _Partial] = OrderedDict()  # oldest first
        self.cost = 0
        self.recent_order: deque[int] = deque()
        self.recent_set: set[int] = set()


class Reassembler:
    """Bounded reassembly of fragmented messages, keyed by an opaque peer key.

    `peer_key` is whatever identifies a sender to the caller (the UDP endpoint
    uses `(source address, sender id)`); it must be hashable.
    """

    def __init__(
        self,
        max_message_bytes: int = DEFAULT_MAX_MESSAGE_BYTES,
        max_partial_per_peer: int = 8,
        max_age_s: float = 5.0,
        max_peers: int = 1024,
        *,
        max_bytes_per_peer: int | None = None,
        max_total_bytes: int | None = None,
        recent_ids_per_peer: int = 128,
        reserved: Iterable[Hashable] = (),
    ) -> None:
        """Bounds as described in the module docstring; `reserved`: the reserved
        peer keys (see `set_reserved`).

        `max_bytes_per_peer` defaults to room for two largest messages and
        `max_total_bytes` (the strangers' share) to 16 of those; both must leave
        room for one message of `max_message_bytes` sent in fragments of at least
        1 KiB.
        """
        if max_message_bytes < 0 or max_partial_per_peer < 1 or max_peers < 1:
            raise ValueError(
                "max_message_bytes >= 0, max_partial_per_peer >= 1 and max_peers >= 1 are required"
            )
        if max_age_s <= 0:
            raise ValueError("max_age_s must be positive")
        if recent_ids_per_peer < 0:
            raise ValueError("recent_ids_per_peer must be >= 0")
        one_message = max_message_bytes + FRAGMENT_OVERHEAD_BYTES * (max_message_bytes // 1024 + 1)
        if max_bytes_per_peer is None:
            max_bytes_per_peer = 2 * one_message
        if max_total_bytes is None:
            max_total_bytes = 8 * max_bytes_per_peer
        if max_bytes_per_peer < one_message or max_total_bytes < max_bytes_per_peer:
            raise ValueError(
                f"need max_total_bytes >= max_bytes_per_peer >= {one_message} "
                f"(one message of {max_message_bytes} bytes in 1 KiB fragments)"
            )
        self.max_message_bytes = max_message_bytes
        self.max_partial_per_peer = max_partial_per_peer
        self.max_age_s = max_age_s
        self.max_peers = max_peers
        self.max_bytes_per_peer = max_bytes_per_peer
        self.max_total_bytes = max_total_bytes
        self.recent_ids_per_peer = recent_ids_per_peer

        # strangers, least recently active first; the reserved peers apart
        self._peers: OrderedDict[Hashable, _Peer] = OrderedDict()
        self._reserved: dict[Hashable, _Peer] = {}
        self._partials: OrderedDict[tuple[Hashable, int], _Partial] = OrderedDict()  # oldest first
        self._stranger_partials: OrderedDict[tuple[Hashable, int], _Partial] = OrderedDict()
        self._total_cost = 0
        self._stranger_cost = 0
        self._drops: Counter[str] = Counter()
        self._delivered = 0
        self._delivered_fragmented = 0
        self._fragments_accepted = 0
        self.set_reserved(reserved)

    def set_reserved(self, keys: Iterable[Hashable]) -> None:
        """Make `keys` the reserved peer keys (replacing the previous set).

        A key that becomes reserved keeps its partials and recent ids (they leave
        the strangers' pool); a key that is no longer reserved is forgotten, its
        partials dropped (counted as `evicted_peer`), so that the strangers' pool
        never holds more than `max_total_bytes`."""
        wanted = dict.fromkeys(keys)
        for key in [key for key in self._reserved if key not in wanted]:
            peer = self._reserved.pop(key)
            self._drops["evicted_peer"] += 1
            for partial in list(peer.partials.values()):
                self._remove_partial(partial)
        for key in wanted:
            if key in self._reserved:
                continue
            peer = self._peers.pop(key, None)
            if peer is None:
                peer = _Peer(key)
            for partial in peer.partials.values():
                del self._stranger_partials[partial.key]
                self._stranger_cost -= partial.cost
            peer.reserved = True
            self._reserved[key] = peer

    @property
    def reserved(self) -> frozenset[Hashable]:
        """The reserved peer keys."""
        return frozenset(self._reserved)

    @property
    def max_held_bytes(self) -> int:
        """The most bytes partial messages can hold: the strangers' `max_total_bytes`
        plus `max_bytes_per_peer` for each reserved key."""
        return self.max_total_bytes + len(self._reserved) * self.max_bytes_per_peer

    # ------------------------------------------------------------------ input

    def add(self, peer_key: Hashable, frame: Frame, now: float) -> bytes | None:
        """Take one frame from `peer_key`; return the message it completes, if any.

        Never raises for anything in `frame`: unusable frames are dropped and
        counted. A single-fragment frame's payload is returned as is (no copy).
        """
        _, message_id, index, count, total_length, payload = frame
        if total_length > self.max_message_bytes:
            self._drops["too_large"] += 1
            return None
        peer = self._reserved.get(peer_key)
        if peer is None:
            peers = self._peers
            peer = peers.get(peer_key)
            if peer is None:
                peer = self._new_peer(peer_key)
            else:
                peers.move_to_end(peer_key)
        recent_set = peer.recent_set
        if message_id in recent_set:
            self._drops["duplicate_message"] += 1
            return None
        if count != 1:
            return self._add_fragment(peer, frame, now)
        # The fast path: nearly every message is one datagram. No partial state, only
        # the checks and the duplicate window (`_remember`, inlined).
        if index != 0 or len(payload) != total_length:
            self._drops["bad_fragment"] += 1
            return None
        limit = self.recent_ids_per_peer
        if limit:
            recent_set.add(message_id)
            recent_order = peer.recent_order
            recent_order.append(message_id)
            if len(recent_order) > limit:
                recent_set.discard(recent_order.popleft())
        self._delivered += 1
        return payload

    def _add_fragment(self, peer: _Peer, frame: Frame, now: float) -> bytes | None:
        """`add` for a fragment of a message of two or more fragments."""
        message_id = frame.message_id
        count = frame.fragment_count
        index = frame.fragment_index
        if not 0 <= index < count:
            self._drops["bad_fragment"] += 1
            return None
        if self._partials:
            self.expire(now)
        partial = peer.partials.get(message_id)
        if partial is None:
            partial = self._new_partial(peer, frame, now)
        elif count != partial.fragment_count or frame.total_length != partial.total_length:
            self._drops["inconsistent_fragment"] += 1
            return None
        if index in partial.fragments:
            self._drops["duplicate_fragment"] += 1
            return None
        payload = frame.payload
        size = len(payload)
        if partial.payload_bytes + size > partial.total_length:
            self._drop_partial(partial, "bad_length")
            return None
        cost = size + FRAGMENT_OVERHEAD_BYTES
        if not self._make_room(partial, cost):
            return None
        partial.fragments[index] = payload
        partial.payload_bytes += size
        partial.cost += cost
        peer.cost += cost
        self._total_cost += cost
        if not peer.reserved:
            self._stranger_cost += cost
        self._fragments_accepted += 1
        if len(partial.fragments) < count:
            return None
        if partial.payload_bytes != partial.total_length:
            self._drop_partial(partial, "bad_length")
            return None
        fragments = partial.fragments
        message = b"".join([fragments[i] for i in range(count)])
        self._remove_partial(partial)
        self._remember(peer, message_id)
        self._delivered += 1
        self._delivered_fragmented += 1
        return message

    def expire(self, now: float) -> int:
        """Drop partial messages older than `max_age_s` at `now`; return how many."""
        dropped = 0
        deadline = now - self.max_age_s
        partials = self._partials
        while partials:
            oldest = next(iter(partials.values()))
            if oldest.created_s > deadline:
                break
            self._drop_partial(oldest, "expired")
            dropped += 1
        return dropped

    # --------------------------------------------------------------- bookkeeping

    def _new_peer(self, peer_key: Hashable) -> _Peer:
        while len(self._peers) >= self.max_peers:
            _, victim = self._peers.popitem(last=False)
            self._drops["evicted_peer"] += 1
            for partial in list(victim.partials.values()):
                self._remove_partial(partial)
        peer = self._peers[peer_key] = _Peer(peer_key)
        return peer

    def _new_partial(self, peer: _Peer, frame: Frame, now: float) -> _Partial:
        while len(peer.partials) >= self.max_partial_per_peer:
            self._drop_partial(next(iter(peer.partials.values())), "evicted_partial_limit")
        key = (peer.key, frame.message_id)
        partial = _Partial(peer, key, frame, now)
        peer.partials[frame.message_id] = partial
        self._partials[key] = partial
        if not peer.reserved:
            self._stranger_partials[key] = partial
        return partial

    def _make_room(self, partial: _Partial, cost: int) -> bool:
        """Evict oldest partials until `cost` more bytes fit for `partial`'s peer and,
        for a stranger, in the strangers' pool (a stranger evicts only strangers'
        partials; a reserved peer only its own). False (and `partial` dropped) if
        `partial` itself had to go."""
        peer = partial.peer
        while peer.cost + cost > self.max_bytes_per_peer:
            oldest = next(iter(peer.partials.values()))
            self._drop_partial(oldest, "evicted_peer_bytes")
            if oldest is partial:
                return False
        if peer.reserved:
            return True
        while self._stranger_cost + cost > self.max_total_bytes:
            oldest = next(iter(self._stranger_partials.values()))
            self._drop_partial(oldest, "evicted_total_bytes")
            if oldest is partial:
                return False
        return True

    def _drop_partial(self, partial: _Partial, reason: str) -> None:
        self._drops[reason] += 1
        self._remove_partial(partial)

    def _remove_partial(self, partial: _Partial) -> None:
        peer = partial.peer
        del self._partials[partial.key]
        if not peer.reserved:
            del self._stranger_partials[partial.key]
            self._stranger_cost -= partial.cost
        # The peer may already have been forgotten (evicted_peer); its partial map goes too.
        peer.partials.pop(partial.message_id, None)
        peer.cost -= partial.cost
        self._total_cost -= partial.cost
        partial.fragments = {}
        partial.cost = 0

    def _remember(self, peer: _Peer, message_id: int) -> None:
        if self.recent_ids_per_peer == 0:
            return
        peer.recent_set.add(message_id)
        peer.recent_order.append(message_id)
        if len(peer.recent_order) > self.recent_ids_per_peer:
            peer.recent_set.discard(peer.recent_order.popleft())

    # ------------------------------------------------------------ observation

    @property
    def buffered_bytes(self) -> int:
        """Bytes charged to partial messages now (payload + per-fragment overhead)."""
        return self._total_cost

    def peer_buffered_bytes(self, peer_key: Hashable) -> int:
        """Bytes charged to `peer_key`'s partial messages now."""
        peer = self._reserved.get(peer_key) or self._peers.get(peer_key)
        return peer.cost if peer is not None else 0

    def _audit(self) -> dict:
        """Recount what is really held, from the stored fragments (for tests):
        `total` and `per_peer` charged bytes, `strangers` (the strangers' share of
        `total`), `payload_bytes`, `partials` and `recent_ids` per peer.
        Raises RuntimeError if the bookkeeping disagrees with itself."""
        per_peer: dict[Hashable, int] = {}
        payload_bytes = 0
        seen = set()
        stranger_keys = set()
        everyone = list(self._reserved.items()) + list(self._peers.items())
        for key, peer in everyone:
            if peer.reserved != (key in self._reserved):
                raise RuntimeError(f"peer {key!r} is filed in the wrong class")
            cost = 0
            for partial in peer.partials.values():
                seen.add(partial.key)
                if not peer.reserved:
                    stranger_keys.add(partial.key)
                sizes = [len(p) for p in partial.fragments.values()]
                payload_bytes += sum(sizes)
                cost += sum(sizes) + FRAGMENT_OVERHEAD_BYTES * len(sizes)
            if cost != peer.cost:
                raise RuntimeError(f"peer {key!r} charged {peer.cost}, holds {cost}")
            per_peer[key] = cost
        if seen != set(self._partials):
            raise RuntimeError("partials indexed overall and per peer differ")
        if stranger_keys != set(self._stranger_partials):
            raise RuntimeError("strangers' partials indexed overall and per peer differ")
        total = sum(per_peer.values())
        if total != self._total_cost:
            raise RuntimeError(f"charged {self._total_cost} overall, holds {total}")
        strangers = sum(cost for key, cost in per_peer.items() if key not in self._reserved)
        if strangers != self._stranger_cost:
            raise RuntimeError(f"charged {self._stranger_cost} to strangers, they hold {strangers}")
        return {
            "total": total,
            "strangers": strangers,
            "per_peer": per_peer,
            "payload_bytes": payload_bytes,
            "partials": {key: len(peer.partials) for key, peer in everyone},
            "recent_ids": {key: len(peer.recent_set) for key, peer in everyone},
        }

    def statistics(self) -> dict:
        """Counters and gauges: delivered messages, fragments accepted, partials,
        buffered bytes (all, and the strangers' share), peers with state (reserved
        ones included) and reserved peers, and `drops` by reason (every reason of
        REASSEMBLY_DROP_REASONS is present, zero or not)."""
        drops = {reason: self._drops[reason] for reason in REASSEMBLY_DROP_REASONS}
        return {
            "delivered": self._delivered,
            "delivered_fragmented": self._delivered_fragmented,
            "fragments_accepted": self._fragments_accepted,
            "partials": len(self._partials),
            "buffered_bytes": self._total_cost,
            "stranger_buffered_bytes": self._stranger_cost,
            "peers": len(self._peers) + len(self._reserved),
            "reserved_peers": len(self._reserved),
            "drops": drops,
        }
