"""Seeded network faults: one decision model for the simulator and for real UDP endpoints.

A `NetworkRule` names a fault kind and when it applies:

* `drop`: each message is lost with probability `rate`;
* `delay`: a share `rate` (default all) of messages is delayed `delay_ms`
  +- `jitter_ms` more;
* `duplicate`: a message is delivered twice with probability `rate`;
* `reorder`: with probability `rate` a message gets a random extra delay of up
  to `delay_ms` (default 20 ms), so later ones overtake it;
* `corrupt`: with probability `rate` a few bytes of the datagram are flipped;
  the transport's CRC32C checksum must catch it (counted as `bad_checksum`);
* `partition`: replicas in different `groups` cannot reach each other
  (replicas listed in no group form one more group together; clients reach
  everyone).

Each rule is active from `start_s` until `stop_s` (None: for good); `nodes`
limits it to links from or to those replicas (empty: every link).

Targeted rules (`MessageMatch`, TOML keys `kinds`, `from`, `to`, `views`,
`seqs`) select messages by what they are; a message is subject to a rule
when every given field matches:

* `kinds`: message kinds, PROTOCOL.md's names in snake case
  (`MESSAGE_KINDS`: request, pre_prepare, prepare, commit, reply, checkpoint,
  view_change, new_view, status, fetch, fetch_state, state_chunk); a
  `Proposal` (a PRE-PREPARE with its batch) is a `pre_prepare` ("proposal"
  is accepted as another name for it), a MAC'd reply a `reply`;
* `from` / `to`: replica ids of the sender / receiver of the transmission
  (a client is never in them: a rule with `to = [...]` leaves replies alone);
* `views = [LO, HI]` (or one view): the message's view. That is the view it
  carries (PRE-PREPARE, PREPARE, COMMIT, REPLY, VIEW-CHANGE and NEW-VIEW: the
  new view, STATUS, FETCH); a message that carries none (CHECKPOINT,
  FETCH-STATE, STATE-CHUNK, a REQUEST a replica relays) belongs to the view
  its sending replica is in when it sends it, so a rule for view v covers
  everything a replica sends while in view v (ByzzFuzz's rounds: Winter et
  al., 2023). A client's REQUEST has no view: a `views` rule never takes it;
* `seqs = [LO, HI]` (or one seq): the sequence number the message carries
  (PRE-PREPARE, PREPARE, COMMIT, CHECKPOINT, FETCH, FETCH-STATE,
  STATE-CHUNK); a message without one is never taken by a `seqs` rule.

So `views` scopes a rule to protocol rounds rather than seconds (a ByzzFuzz
schedule: "in view 2, partition {0,1} | {2,3}", "in view 1, drop COMMITs
from 3"); the time window still applies too (default: always). A
corruption (`corrupt`) is the network's only mutation: the CRC32C catches
it, so it is a loss with a count. A message whose *content* is changed and
re-signed needs the sender's key: that is a Byzantine behaviour
(adversary/behaviours.py), not a network fault. `round_schedule(rng, n)`
draws a small-scope ByzzFuzz schedule: a few view-scoped partitions and
message faults.

`FaultModel.decide(t, src, dst, info)` is the pure decision, drawing only from the
`random.Random` it was given: the list of copies to deliver, each with an
extra delay and whether it is corrupted (an empty list: dropped). `info` is
the `MessageInfo` (kind, view, seq) of the message, from `message_info`; it
is needed only when some rule names kinds, views or seqs
(`FaultModel.needs_info`), so runs without such rules never derive it. The
simulator applies it in its network; `DatagramFaults` applies it to the
datagrams of a `transport.udp.UdpEndpoint` as its `send_filter` and
`recv_filter` (delayed datagrams are released by `pop_due`, which
`adversary.runtime` runs in a task, or on the next datagram that passes).
For targeted rules it decodes the datagrams the node sends (and those
clients send to it) to learn what they carry, one decision per message
(every fragment of a message shares its fate).
"""

from __future__ import annotations

import heapq
import math
from collections import Counter
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from typing import Any

from bft.errors import ConfigError
from bft.messages import (
    Checkpoint,
    Commit,
    Fetch,
    FetchState,
    MacReply,
    NewView,
    Prepare,
    PrePrepare,
    Proposal,
    Reply,
    Request,
    Signed,
    StateChunk,
    Status,
    ViewChange,
)

KINDS = ("drop", "delay", "duplicate", "reorder", "corrupt", "partition")

#: The default extra-delay window of `reorder`, in milliseconds.
DEFAULT_REORDER_MS = 20.0

#: Message kinds a rule's `kinds` may name: PROTOCOL.md's messages, in snake case.
MESSAGE_KINDS = ("request", "pre_prepare", "prepare", "commit", "reply", "checkpoint",
                 "view_change", "new_view", "status", "fetch", "fetch_state", "state_chunk")
#: Other names accepted for a kind (written back under the kind's own name).
KIND_ALIASES = {"proposal": "pre_prepare"}

_KIND_OF_STATEMENT: dict[type, str] = {
    Request: "request", PrePrepare: "pre_prepare", Prepare: "prepare", Commit: "commit",
    Reply: "reply", Checkpoint: "checkpoint", ViewChange: "view_change", NewView: "new_view",
    Status: "status", Fetch: "fetch", FetchState: "fetch_state", StateChunk: "state_chunk",
}


@dataclass(frozen=True, slots=True)
class MessageInfo:
    """What a targeted rule looks at in a message: its kind (None: not a protocol message),
    its view and its seq (None: it has none; see the module docstring)."""

    kind: str | None
    view: int | None = None
    seq: int | None = None


def message_info(message: Any, sender_view: int | None = None) -> MessageInfo:
    """The `MessageInfo` of a wire message (`Signed`, `Proposal`, `MacReply`); `sender_view` is
    the view its sending replica is in (None for a client), taken as the view of a message
    that carries none. Never raises: anything else is kind None."""
    if isinstance(message, Proposal):
        statement = getattr(message.pre_prepare, "statement", None)
        kind = "pre_prepare" if isinstance(statement, PrePrepare) else None
    elif isinstance(message, (Signed, MacReply)):
        statement = message.statement
        kind = _KIND_OF_STATEMENT.get(type(statement))
    else:
        return MessageInfo(None, sender_view, None)
    view = getattr(statement, "view", None)
    seq = getattr(statement, "seq", None)
    return MessageInfo(kind, view if isinstance(view, int) else sender_view,
                       seq if isinstance(seq, int) else None)


@dataclass(frozen=True, slots=True)
class MessageMatch:
    """The messages a targeted rule takes: all given fields must match (empty / None: any).

    `kinds` (MESSAGE_KINDS), `senders` and `receivers` (replica ids: TOML `from` and `to`),
    `views` and `seqs` (inclusive [lo, hi] ranges); see the module docstring."""

    kinds: tuple[str, ...] = ()
    senders: tuple[int, ...] = ()
    receivers: tuple[int, ...] = ()
    views: tuple[int, int] | None = None
    seqs: tuple[int, int] | None = None

    @property
    def needs_info(self) -> bool:
        """Whether matching needs the message's `MessageInfo` (not only its link)."""
        return bool(self.kinds) or self.views is not None or self.seqs is not None

    def matches(self, src: int | None, dst: int | None, info: MessageInfo | None) -> bool:
        """Whether the message `info` from `src` to `dst` (None: a client) is taken; a rule
        that needs `info` takes nothing without it."""
        if self.senders and src not in self.senders:
            return False
        if self.receivers and dst not in self.receivers:
            return False
        if not self.needs_info:
            return True
        if info is None:
            return False
        if self.kinds and info.kind not in self.kinds:
            return False
        if self.views is not None and (info.view is None
                                       or not self.views[0] <= info.view <= self.views[1]):
            return False
        return self.seqs is None or (info.seq is not None
                                     and self.seqs[0] <= info.seq <= self.seqs[1])

    def to_dict(self) -> dict[str, Any]:
        """The TOML keys of the fields given."""
        d: dict[str, Any] = {}
        if self.kinds:
            d["kinds"] = list(self.kinds)
        if self.senders:
            d["from"] = list(self.senders)
        if self.receivers:
            d["to"] = list(self.receivers)
        if self.views is not None:
            d["views"] = list(self.views)
        if self.seqs is not None:
            d["seqs"] = list(self.seqs)
        return d


@dataclass(frozen=True, slots=True)
class NetworkRule:
    """One network fault (see the module docstring); build it with `make_network_rule`.

    `match` (None: every message) narrows it to the messages a `MessageMatch` takes."""

    kind: str
    rate: float = 1.0
    delay_ms: float = 0.0
    jitter_ms: float = 0.0
    groups: tuple[tuple[int, ...], ...] = ()
    start_s: float = 0.0
    stop_s: float | None = None
    nodes: tuple[int, ...] = ()
    match: MessageMatch | None = None

    def active(self, t: float) -> bool:
        """Whether the fault applies at time `t` (seconds from the origin)."""
        return self.start_s <= t and (self.stop_s is None or t < self.stop_s)

    def applies(self, src: int | None, dst: int | None) -> bool:
        """Whether the link src -> dst (replica ids; None for a client) is subject to it."""
        return not self.nodes or src in self.nodes or dst in self.nodes

    def selects(self, src: int | None, dst: int | None, info: MessageInfo | None = None) -> bool:
        """Whether the message `info` on the link src -> dst is subject to it."""
        if self.nodes and src not in self.nodes and dst not in self.nodes:
            return False
        return self.match is None or self.match.matches(src, dst, info)

    def replica_ids(self) -> tuple[int, ...]:
        """Every replica id the rule names (nodes, groups, from, to): to check against n."""
        ids = [*self.nodes, *(i for g in self.groups for i in g)]
        if self.match is not None:
            ids += [*self.match.senders, *self.match.receivers]
        return tuple(ids)

    def group_of(self, replica: int) -> int:
        """The partition group index of `replica` (-1: the group of the unlisted)."""
        for k, members in enumerate(self.groups):
            if replica in members:
                return k
        return -1

    def to_dict(self) -> dict[str, Any]:
        """The TOML-table form of the rule (only the keys that matter for its kind)."""
        d: dict[str, Any] = {"kind": self.kind}
        if self.kind == "partition":
            d["groups"] = [list(g) for g in self.groups]
        else:
            d["rate"] = self.rate
        if self.kind in ("delay", "reorder"):
            d["delay_ms"] = self.delay_ms
        if self.kind == "delay" and self.jitter_ms:
            d["jitter_ms"] = self.jitter_ms
        d["start"] = self.start_s
        if self.stop_s is not None:
            d["stop"] = self.stop_s
        if self.nodes:
            d["nodes"] = list(self.nodes)
        if self.match is not None:
            d.update(self.match.to_dict())
        return d


def _number(value: Any, file: str | None, field: str, *, low: float = 0.0,
            high: float = math.inf, low_open: bool = False) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        raise ConfigError(f"expected a number, got {value!r}", file=file, field=field)
    value = float(value)
    if (value <= low if low_open else value < low) or value > high:
        bound = f"> {low:g}" if low_open else f">= {low:g}"
        rng = f"{bound} and <= {high:g}" if math.isfinite(high) else bound
        raise ConfigError(f"{value:g} is out of range", file=file, field=field,
                          fix=f"use a value {rng}")
    return value


def _ids(value: Any, file: str | None, field: str) -> tuple[int, ...]:
    if not isinstance(value, (list, tuple)) or not all(
            isinstance(i, int) and not isinstance(i, bool) and i >= 0 for i in value):
        raise ConfigError(f"expected a list of replica ids, got {value!r}", file=file, field=field)
    return tuple(value)


def _endpoints(value: Any, file: str | None, field: str) -> tuple[int, ...]:
    """`from` / `to`: one replica id or a non-empty list of them."""
    if isinstance(value, int) and not isinstance(value, bool):
        value = [value]
    ids = _ids(value, file, field)
    if not ids:
        raise ConfigError("an empty list takes no message", file=file, field=field,
                          fix="leave the key out to take messages of every replica")
    return tuple(dict.fromkeys(ids))


def _kinds(value: Any, file: str | None, field: str) -> tuple[str, ...]:
    """`kinds`: one message kind or a non-empty list of them (MESSAGE_KINDS or KIND_ALIASES;
    hyphens and capitals are accepted: "PRE-PREPARE")."""
    import difflib

    if isinstance(value, str):
        value = [value]
    if not isinstance(value, (list, tuple)) or not value:
        raise ConfigError(f"expected a list of message kinds, got {value!r}", file=file,
                          field=field, fix='e.g. kinds = ["commit", "view_change"]')
    out: list[str] = []
    for k, item in enumerate(value):
        if not isinstance(item, str):
            raise ConfigError(f"expected a message kind, got {item!r}", file=file,
                              field=f"{field}[{k}]", fix=f"known: {', '.join(MESSAGE_KINDS)}")
        name = item.strip().lower().replace("-", "_")
        name = KIND_ALIASES.get(name, name)
        if name not in MESSAGE_KINDS:
            close = difflib.get_close_matches(name, [*MESSAGE_KINDS, *KIND_ALIASES], n=1)
            raise ConfigError(f"unknown message kind {item!r}", file=file, field=f"{field}[{k}]",
                              fix=f"did you mean {close[0]!r}?" if close else
                              f"known: {', '.join(MESSAGE_KINDS)}")
        if name not in out:
            out.append(name)
    return tuple(out)


def _span(value: Any, file: str | None, field: str, what: str) -> tuple[int, int]:
    """`views` / `seqs`: one number or an inclusive [LO, HI] with 0 <= LO <= HI."""
    def whole(v: Any) -> bool:
        return isinstance(v, int) and not isinstance(v, bool) and 0 <= v < 2**63

    if whole(value):
        return (value, value)
    if isinstance(value, (list, tuple)) and len(value) == 2 and all(whole(v) for v in value) \
            and value[0] <= value[1]:
        return (value[0], value[1])
    raise ConfigError(f"expected a {what} or [LO, HI] with 0 <= LO <= HI, got {value!r}",
                      file=file, field=field, fix=f"e.g. {field.rsplit('.', 1)[-1]} = [1, 2]")


def make_match(*, kinds: Any = None, senders: Any = None, receivers: Any = None,
               views: Any = None, seqs: Any = None, file: str | None = None,
               field: str = "network") -> MessageMatch | None:
    """A validated `MessageMatch` (None when no field is given); ConfigError naming the field
    (`network[0].kinds[1]`, `network[0].from`) if not."""
    if kinds is None and senders is None and receivers is None and views is None \
            and seqs is None:
        return None
    return MessageMatch(
        kinds=_kinds(kinds, file, f"{field}.kinds") if kinds is not None else (),
        senders=_endpoints(senders, file, f"{field}.from") if senders is not None else (),
        receivers=_endpoints(receivers, file, f"{field}.to") if receivers is not None else (),
        views=_span(views, file, f"{field}.views", "view") if views is not None else None,
        seqs=_span(seqs, file, f"{field}.seqs", "seq") if seqs is not None else None)


def make_network_rule(kind: Any, *, rate: Any = None, delay_ms: Any = None, jitter_ms: Any = None,
                      groups: Any = None, start_s: Any = 0.0, stop_s: Any = None,
                      nodes: Any = None, kinds: Any = None, senders: Any = None,
                      receivers: Any = None, views: Any = None, seqs: Any = None,
                      file: str | None = None, field: str = "network") -> NetworkRule:
    """A validated rule; ConfigError naming `file` and the field (`network[0].rate`) if not.

    `kinds`, `senders` (TOML `from`), `receivers` (TOML `to`), `views` and `seqs` make it a
    targeted rule (`MessageMatch`; see the module docstring)."""
    if kind not in KINDS:
        import difflib

        close = difflib.get_close_matches(str(kind), KINDS, n=1)
        raise ConfigError(f"unknown network fault kind {kind!r}", file=file, field=f"{field}.kind",
                          fix=f"did you mean {close[0]!r}?" if close else
                          f"known: {', '.join(KINDS)}")
    start = _number(start_s, file, f"{field}.start")
    stop = None if stop_s is None else _number(stop_s, file, f"{field}.stop")
    if stop is not None and stop <= start:
        raise ConfigError(f"stop ({stop:g}) must come after start ({start:g})", file=file,
                          field=f"{field}.stop")
    node_ids = _ids(nodes, file, f"{field}.nodes") if nodes is not None else ()
    match = make_match(kinds=kinds, senders=senders, receivers=receivers, views=views,
                       seqs=seqs, file=file, field=field)
    common: dict[str, Any] = {"start_s": start, "stop_s": stop, "nodes": node_ids,
                              "match": match}

    def unused(name: str, value: Any) -> None:
        if value is not None:
            raise ConfigError(f"a {kind} fault takes no {name}", file=file, field=f"{field}.{name}")

    if kind == "partition":
        unused("rate", rate)
        unused("delay_ms", delay_ms)
        unused("jitter_ms", jitter_ms)
        if groups is None:
            raise ConfigError("missing", file=file, field=f"{field}.groups",
                              fix="e.g. groups = [[0, 1], [2, 3]]")
        if not isinstance(groups, (list, tuple)) or not groups:
            raise ConfigError(f"expected a list of groups, got {groups!r}", file=file,
                              field=f"{field}.groups")
        parsed = tuple(_ids(g, file, f"{field}.groups[{k}]") for k, g in enumerate(groups))
        flat = [i for g in parsed for i in g]
        if len(set(flat)) != len(flat):
            raise ConfigError("a replica is in two groups", file=file, field=f"{field}.groups")
        if any(not g for g in parsed):
            raise ConfigError("an empty group", file=file, field=f"{field}.groups")
        return NetworkRule(kind, groups=parsed, **common)
    if groups is not None:
        unused("groups", groups)
    if kind == "delay":
        if delay_ms is None:
            raise ConfigError("missing", file=file, field=f"{field}.delay_ms",
                              fix="e.g. delay_ms = 50")
        d = _number(delay_ms, file, f"{field}.delay_ms")
        j = 0.0 if jitter_ms is None else _number(jitter_ms, file, f"{field}.jitter_ms")
        r = 1.0 if rate is None else _number(rate, file, f"{field}.rate", high=1.0)
        return NetworkRule(kind, rate=r, delay_ms=d, jitter_ms=j, **common)
    unused("jitter_ms", jitter_ms)
    if rate is None:
        raise ConfigError("missing", file=file, field=f"{field}.rate",
                          fix="a probability, e.g. rate = 0.2")
    r = _number(rate, file, f"{field}.rate", high=1.0)
    if kind == "reorder":
        d = DEFAULT_REORDER_MS if delay_ms is None else _number(delay_ms, file,
                                                                f"{field}.delay_ms")
        return NetworkRule(kind, rate=r, delay_ms=d, **common)
    unused("delay_ms", delay_ms)
    return NetworkRule(kind, rate=r, **common)


# --------------------------------------------------------------------------
# The decision
# --------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Copy:
    """One copy of a message to deliver: `delay_s` extra, `corrupt` if its bytes get flipped."""

    delay_s: float = 0.0
    corrupt: bool = False


class FaultModel:
    """Decides the fate of each message under `rules`, drawing only from `rng`.

    `statistics()` counts messages seen and what was done to them, in total
    (`dropped`, `partitioned`, ...) and per rule (`network[k].dropped`: rule k
    of `rules`, as numbered in the scenario). Only rules active at `t` that
    select the message draw from `rng`, so a run's random stream is unchanged
    while no fault is active. `needs_info`: some rule names kinds, views or
    seqs, so callers must pass the message's `MessageInfo`; after a drop,
    `last_drop` says why ("partition" or "fault_loss").
    """

    def __init__(self, rules: Iterable[NetworkRule], rng: Any) -> None:
        self.rules = tuple(rules)
        self.rng = rng
        self.counters: Counter[str] = Counter()
        self.needs_info = any(r.match is not None and r.match.needs_info for r in self.rules)
        self.last_drop = ""

    def partitioned(self, t: float, src: int | None, dst: int | None,
                    info: MessageInfo | None = None) -> bool:
        """Whether an active partition cuts replica `src` from replica `dst` (for `info`)."""
        if src is None or dst is None:
            return False
        return any(r.kind == "partition" and r.active(t) and r.selects(src, dst, info)
                   and r.group_of(src) != r.group_of(dst) for r in self.rules)

    def decide(self, t: float, src: int | None, dst: int | None,
               info: MessageInfo | None = None) -> list[Copy]:
        """The copies to deliver of one message (`info`) from `src` to `dst` at time `t`
        ([]: dropped)."""
        active = [(k, r) for k, r in enumerate(self.rules)
                  if r.active(t) and r.selects(src, dst, info)]
        if not active:
            return [Copy()]
        counters = self.counters
        counters["decided"] += 1
        if src is not None and dst is not None:
            for k, r in active:
                if r.kind == "partition" and r.group_of(src) != r.group_of(dst):
                    counters["partitioned"] += 1
                    counters[f"network[{k}].partitioned"] += 1
                    self.last_drop = "partition"
                    return []
        rng = self.rng
        delays = [0.0]
        corrupt = [False]
        for k, r in active:
            if r.kind == "drop" and rng.random() < r.rate:
                counters["dropped"] += 1
                counters[f"network[{k}].dropped"] += 1
                self.last_drop = "fault_loss"
                return []
            if r.kind == "duplicate" and rng.random() < r.rate:
                counters["duplicated"] += 1
                counters[f"network[{k}].duplicated"] += 1
                delays.append(0.0)
                corrupt.append(False)
        for k, r in active:
            for c in range(len(delays)):
                if r.kind == "delay" and rng.random() < r.rate:
                    extra = r.delay_ms + rng.uniform(-1.0, 1.0) * r.jitter_ms
                    delays[c] += max(0.0, extra) / 1000.0
                    counters["delayed"] += 1
                    counters[f"network[{k}].delayed"] += 1
                elif r.kind == "reorder" and rng.random() < r.rate:
                    delays[c] += rng.uniform(0.0, r.delay_ms) / 1000.0
                    counters["reordered"] += 1
                    counters[f"network[{k}].reordered"] += 1
                elif r.kind == "corrupt" and rng.random() < r.rate:
                    corrupt[c] = True
                    counters["corrupted"] += 1
                    counters[f"network[{k}].corrupted"] += 1
        return [Copy(d, c) for d, c in zip(delays, corrupt)]

    def last_change(self) -> float:
        """The latest finite start or stop of any rule (0 if none)."""
        return max([0.0] + [t for r in self.rules for t in (r.start_s, r.stop_s)
                            if t is not None])

    def statistics(self) -> dict[str, int]:
        return dict(sorted(self.counters.items()))


#: Message kinds a drawn round-based message fault targets (replica-to-replica messages).
ROUND_KINDS = ("pre_prepare", "prepare", "commit", "checkpoint", "view_change", "new_view",
               "status", "fetch")
#: What a drawn round-based message fault does to them.
ROUND_ACTIONS = ("drop", "duplicate", "delay", "corrupt")


def round_schedule(rng: Any, n: int, *, max_view: int = 3, partitions: int = 1,
                   message_faults: int = 2, kinds: tuple[str, ...] = ROUND_KINDS,
                   actions: tuple[str, ...] = ROUND_ACTIONS,
                   partition_stop_s: float | None = None) -> tuple[NetworkRule, ...]:
    """A small-scope, round-based schedule in the manner of ByzzFuzz (Winter et al., 2023),
    drawn from `rng` only: `partitions` network faults, each "in view v, the replicas are
    split into two groups that cannot reach each other", and `message_faults`, each "in
    view v, `action` every message of one kind from replica j to some receivers" (drop,
    duplicate, delay by 50-500 ms, corrupt), each v drawn from 0..max_view.

    A partition of the view the replicas are in can hold them there for good (a replica that
    hears from too few peers waits instead of starting a view change that could not
    complete), so the simulator counts a partition without a `stop` as never ending and
    does not judge liveness; `partition_stop_s` gives each partition that end time."""
    if n < 2:
        raise ValueError("a round schedule needs at least two replicas")
    rules = []
    for _ in range(partitions):
        view = rng.randint(0, max_view)
        members = list(range(n))
        rng.shuffle(members)
        cut = rng.randint(1, n - 1)
        rules.append(make_network_rule("partition", groups=[sorted(members[:cut]),
                                                            sorted(members[cut:])], views=view,
                                       stop_s=partition_stop_s))
    for _ in range(message_faults):
        view = rng.randint(0, max_view)
        action = rng.choice(actions)
        kind = rng.choice(kinds)
        sender = rng.randrange(n)
        others = [i for i in range(n) if i != sender]
        receivers = sorted(rng.sample(others, rng.randint(1, len(others))))
        extra = ({"delay_ms": float(rng.choice((50, 200, 500)))} if action == "delay"
                 else {"rate": 1.0})
        rules.append(make_network_rule(action, kinds=[kind], senders=[sender],
                                       receivers=receivers, views=view, **extra))
    return tuple(rules)


def corrupt_bytes(data: bytes, rng: Any, flips: int = 3) -> bytes:
    """`data` with 1..`flips` bytes changed at random positions (never equal to `data`)."""
    if not data:
        return b"\xff"
    out = bytearray(data)
    for _ in range(rng.randint(1, flips)):
        k = rng.randrange(len(out))
        out[k] ^= rng.randint(1, 255)
    if bytes(out) == data:
        out[0] ^= 0xFF
    return bytes(out)


# --------------------------------------------------------------------------
# Real datagrams
# --------------------------------------------------------------------------


class DatagramFaults:
    """The faults of `rules` applied to one node's UDP datagrams.

    Install `send_filter` and `recv_filter` on a `transport.udp.UdpEndpoint`
    (`adversary.runtime.AdversaryExtension` does). Outgoing datagrams to replica `dst`
    (found by address in `peer_of_addr`) get the model's fate; delayed ones
    wait in a heap until `pop_due(now)` hands them out (also done on every
    datagram that passes). Incoming datagrams from addresses that are not
    replicas (clients) are dropped, duplicated or corrupted too, so client
    links are faulty both ways, as in the simulator. `clock()` gives the
    time in seconds since the rules' origin.

    Targeted rules (`FaultModel.needs_info`): each message is decoded
    (`bft.codec`, within `limits`) for its `MessageInfo`, the view of one
    that carries none being `view_of()` (the node's current view). The
    fragments of a message are held until the last one passes (the node
    hands all of them to the endpoint in one go) and then share one fate; at
    most `max_partial` incomplete messages are held (clients' fragments may
    interleave): beyond that the oldest is dropped, counted
    `partial_evicted`. A datagram that is not a frame or does not decode is
    taken by no rule that needs `MessageInfo`.
    """

    def __init__(self, rules: Iterable[NetworkRule], node_id: int,
                 peer_of_addr: Mapping[Any, int], rng: Any, clock: Callable[[], float],
                 max_held: int = 100_000, *, view_of: Callable[[], int] | None = None,
                 limits: Any = None, max_partial: int = 64) -> None:
        self.model = FaultModel(rules, rng)
        self.node_id = node_id
        self.peer_of_addr = dict(peer_of_addr)
        self.rng = rng
        self.clock = clock
        self.max_held = max_held
        self.view_of = view_of
        self.limits = limits
        self.max_partial = max_partial
        self._held: list[tuple[float, int, bytes, Any]] = []
        self._n = 0
        self._partial: dict[tuple[Any, ...], dict[int, bytes]] = {}
        self.counters: Counter[str] = Counter()

    def _peer(self, addr: Any) -> int | None:
        return self.peer_of_addr.get((addr[0], addr[1])) if isinstance(addr, tuple) else None

    def _message(self, datagram: bytes, addr: Any) -> tuple[list[bytes], bytes | None] | None:
        """The datagrams of the message `datagram` completes and its payload (None: not a
        frame); None while fragments are missing (this one is held)."""
        from transport.frame import DEFAULT_MAX_MESSAGE_BYTES, FrameError, decode_frame_untrusted

        limit = getattr(self.limits, "max_message_bytes", DEFAULT_MAX_MESSAGE_BYTES)
        try:
            frame = decode_frame_untrusted(datagram, max_message_bytes=limit)
        except FrameError:
            return [datagram], None
        if frame.fragment_count == 1:
            return [datagram], frame.payload
        key = (addr, frame.sender_id, frame.message_id, frame.fragment_count)
        parts = self._partial.get(key)
        if parts is None:
            if len(self._partial) >= self.max_partial:
                del self._partial[next(iter(self._partial))]
                self.counters["partial_evicted"] += 1
            parts = self._partial[key] = {}
        parts[frame.fragment_index] = datagram
        if len(parts) < frame.fragment_count:
            return None
        del self._partial[key]
        datagrams = [parts[k] for k in range(frame.fragment_count)]
        payload = b"".join(decode_frame_untrusted(d, max_message_bytes=limit).payload
                           for d in datagrams)
        return datagrams, payload

    def _info(self, payload: bytes | None, sender_view: int | None) -> MessageInfo | None:
        from bft import codec
        from bft.errors import MalformedMessage

        if payload is None:
            return None
        try:
            message = codec.decode_untrusted(payload, *(() if self.limits is None
                                                         else (self.limits,)))
        except MalformedMessage:
            self.counters["undecodable"] += 1
            return None
        return message_info(message, sender_view)

    def _decide(self, t: float, src: int | None, dst: int | None, datagram: bytes,
                addr: Any) -> tuple[list[bytes], list[Copy]] | None:
        """The datagrams of one message and their copies (None: a fragment held for now)."""
        if not self.model.needs_info:
            return [datagram], self.model.decide(t, src, dst)
        got = self._message(datagram, addr)
        if got is None:
            return None
        datagrams, payload = got
        view = self.view_of() if src is not None and self.view_of is not None else None
        return datagrams, self.model.decide(t, src, dst, self._info(payload, view))

    def _copy(self, datagrams: list[bytes], copy: Copy) -> list[bytes]:
        if not copy.corrupt:
            return datagrams
        out = list(datagrams)
        k = self.rng.randrange(len(out)) if len(out) > 1 else 0
        out[k] = corrupt_bytes(out[k], self.rng)
        return out

    def send_filter(self, datagram: bytes, addr: Any) -> list[tuple[bytes, Any]]:
        """The datagrams to send now (this one's copies that are not delayed, and held ones
        that are due)."""
        t = self.clock()
        out = self.pop_due(t)
        decided = self._decide(t, self.node_id, self._peer(addr), datagram, addr)
        if decided is None:
            return out
        datagrams, copies = decided
        for copy in copies:
            data = self._copy(datagrams, copy)
            if copy.delay_s <= 0:
                out += [(d, addr) for d in data]
            elif len(self._held) + len(data) <= self.max_held:
                for d in data:
                    self._n += 1
                    heapq.heappush(self._held, (t + copy.delay_s, self._n, d, addr))
            else:
                self.counters["held_overflow"] += 1
        return out

    def recv_filter(self, datagram: bytes, addr: Any) -> list[tuple[bytes, Any]]:
        """Datagrams from clients get drop/duplicate/corrupt faults (no delay) on receipt;
        datagrams from replicas pass (their sender applied the faults)."""
        if self._peer(addr) is not None:
            return [(datagram, addr)]
        decided = self._decide(self.clock(), None, self.node_id, datagram, addr)
        if decided is None:
            return []
        datagrams, copies = decided
        return [(d, addr) for copy in copies for d in self._copy(datagrams, copy)]

    def pop_due(self, t: float) -> list[tuple[bytes, Any]]:
        """Held datagrams whose time has come, in due order."""
        out = []
        while self._held and self._held[0][0] <= t:
            _, _, data, addr = heapq.heappop(self._held)
            out.append((data, addr))
        return out

    def next_due(self) -> float | None:
        """When the next held datagram is due (None: none held)."""
        return self._held[0][0] if self._held else None

    def statistics(self) -> dict[str, Any]:
        return {**self.model.statistics(), **dict(self.counters), "held": len(self._held)}
