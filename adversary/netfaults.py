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

`FaultModel.decide(t, src, dst)` is the pure decision, drawing only from the
`random.Random` it was given: the list of copies to deliver, each with an
extra delay and whether it is corrupted (an empty list: dropped). The
simulator applies it in its network; `DatagramFaults` applies it to the
datagrams of a `transport.udp.UdpEndpoint` as its `send_filter` and
`recv_filter` (delayed datagrams are released by `pop_due`, which
`adversary.runtime` runs in a task, or on the next datagram that passes).
"""

from __future__ import annotations

import heapq
import math
from collections import Counter
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from typing import Any

from bft.errors import ConfigError

KINDS = ("drop", "delay", "duplicate", "reorder", "corrupt", "partition")

#: The default extra-delay window of `reorder`, in milliseconds.
DEFAULT_REORDER_MS = 20.0


@dataclass(frozen=True, slots=True)
class NetworkRule:
    """One network fault (see the module docstring); build it with `make_network_rule`."""

    kind: str
    rate: float = 1.0
    delay_ms: float = 0.0
    jitter_ms: float = 0.0
    groups: tuple[tuple[int, ...], ...] = ()
    start_s: float = 0.0
    stop_s: float | None = None
    nodes: tuple[int, ...] = ()

    def active(self, t: float) -> bool:
        """Whether the fault applies at time `t` (seconds from the origin)."""
        return self.start_s <= t and (self.stop_s is None or t < self.stop_s)

    def applies(self, src: int | None, dst: int | None) -> bool:
        """Whether the link src -> dst (replica ids; None for a client) is subject to it."""
        return not self.nodes or src in self.nodes or dst in self.nodes

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


def make_network_rule(kind: Any, *, rate: Any = None, delay_ms: Any = None, jitter_ms: Any = None,
                      groups: Any = None, start_s: Any = 0.0, stop_s: Any = None,
                      nodes: Any = None, file: str | None = None,
                      field: str = "network") -> NetworkRule:
    """A validated rule; ConfigError naming `file` and the field (`network[0].rate`) if not."""
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
        return NetworkRule(kind, groups=parsed, start_s=start, stop_s=stop, nodes=node_ids)
    if groups is not None:
        unused("groups", groups)
    if kind == "delay":
        if delay_ms is None:
            raise ConfigError("missing", file=file, field=f"{field}.delay_ms",
                              fix="e.g. delay_ms = 50")
        d = _number(delay_ms, file, f"{field}.delay_ms")
        j = 0.0 if jitter_ms is None else _number(jitter_ms, file, f"{field}.jitter_ms")
        r = 1.0 if rate is None else _number(rate, file, f"{field}.rate", high=1.0)
        return NetworkRule(kind, rate=r, delay_ms=d, jitter_ms=j, start_s=start, stop_s=stop,
                           nodes=node_ids)
    unused("jitter_ms", jitter_ms)
    if rate is None:
        raise ConfigError("missing", file=file, field=f"{field}.rate",
                          fix="a probability, e.g. rate = 0.2")
    r = _number(rate, file, f"{field}.rate", high=1.0)
    if kind == "reorder":
        d = DEFAULT_REORDER_MS if delay_ms is None else _number(delay_ms, file,
                                                                f"{field}.delay_ms")
        return NetworkRule(kind, rate=r, delay_ms=d, start_s=start, stop_s=stop, nodes=node_ids)
    unused("delay_ms", delay_ms)
    return NetworkRule(kind, rate=r, start_s=start, stop_s=stop, nodes=node_ids)


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

    `statistics()` counts messages seen and what was done to them. Only rules
    active at `t` draw from `rng`, so a run's random stream is unchanged while
    no fault is active.
    """

    def __init__(self, rules: Iterable[NetworkRule], rng: Any) -> None:
        self.rules = tuple(rules)
        self.rng = rng
        self.counters: Counter[str] = Counter()

    def partitioned(self, t: float, src: int | None, dst: int | None) -> bool:
        """Whether an active partition cuts replica `src` from replica `dst`."""
        if src is None or dst is None:
            return False
        return any(r.kind == "partition" and r.active(t) and r.applies(src, dst)
                   and r.group_of(src) != r.group_of(dst) for r in self.rules)

    def decide(self, t: float, src: int | None, dst: int | None) -> list[Copy]:
        """The copies to deliver of one message from `src` to `dst` at time `t` ([]: dropped)."""
        active = [r for r in self.rules if r.active(t) and r.applies(src, dst)]
        if not active:
            return [Copy()]
        self.counters["decided"] += 1
        if self.partitioned(t, src, dst):
            self.counters["partitioned"] += 1
            return []
        rng = self.rng
        delays = [0.0]
        corrupt = [False]
        for r in active:
            if r.kind == "drop" and rng.random() < r.rate:
                self.counters["dropped"] += 1
                return []
            if r.kind == "duplicate" and rng.random() < r.rate:
                self.counters["duplicated"] += 1
                delays.append(0.0)
                corrupt.append(False)
        for r in active:
            for k in range(len(delays)):
                if r.kind == "delay" and rng.random() < r.rate:
                    extra = r.delay_ms + rng.uniform(-1.0, 1.0) * r.jitter_ms
                    delays[k] += max(0.0, extra) / 1000.0
                    self.counters["delayed"] += 1
                elif r.kind == "reorder" and rng.random() < r.rate:
                    delays[k] += rng.uniform(0.0, r.delay_ms) / 1000.0
                    self.counters["reordered"] += 1
                elif r.kind == "corrupt" and rng.random() < r.rate:
                    corrupt[k] = True
                    self.counters["corrupted"] += 1
        return [Copy(d, c) for d, c in zip(delays, corrupt)]

    def last_change(self) -> float:
        """The latest finite start or stop of any rule (0 if none)."""
        return max([0.0] + [t for r in self.rules for t in (r.start_s, r.stop_s)
                            if t is not None])

    def statistics(self) -> dict[str, int]:
        return dict(sorted(self.counters.items()))


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
    (`adversary.runtime.install` does). Outgoing datagrams to replica `dst`
    (found by address in `peer_of_addr`) get the model's fate; delayed ones
    wait in a heap until `pop_due(now)` hands them out (also done on every
    datagram that passes). Incoming datagrams from addresses that are not
    replicas (clients) are dropped, duplicated or corrupted too, so client
    links are faulty both ways, as in the simulator. `clock()` gives the
    time in seconds since the rules' origin.
    """

    def __init__(self, rules: Iterable[NetworkRule], node_id: int,
                 peer_of_addr: Mapping[Any, int], rng: Any, clock: Callable[[], float],
                 max_held: int = 100_000) -> None:
        self.model = FaultModel(rules, rng)
        self.node_id = node_id
        self.peer_of_addr = dict(peer_of_addr)
        self.rng = rng
        self.clock = clock
        self.max_held = max_held
        self._held: list[tuple[float, int, bytes, Any]] = []
        self._n = 0
        self.counters: Counter[str] = Counter()

    def _peer(self, addr: Any) -> int | None:
        return self.peer_of_addr.get((addr[0], addr[1])) if isinstance(addr, tuple) else None

    def send_filter(self, datagram: bytes, addr: Any) -> list[tuple[bytes, Any]]:
        """The datagrams to send now (this one's copies that are not delayed, and held ones
        that are due)."""
        t = self.clock()
        out = self.pop_due(t)
        for copy in self.model.decide(t, self.node_id, self._peer(addr)):
            data = corrupt_bytes(datagram, self.rng) if copy.corrupt else datagram
            if copy.delay_s <= 0:
                out.append((data, addr))
            elif len(self._held) < self.max_held:
                self._n += 1
                heapq.heappush(self._held, (t + copy.delay_s, self._n, data, addr))
            else:
                self.counters["held_overflow"] += 1
        return out

    def recv_filter(self, datagram: bytes, addr: Any) -> list[tuple[bytes, Any]]:
        """Datagrams from clients get drop/duplicate/corrupt faults (no delay) on receipt;
        datagrams from replicas pass (their sender applied the faults)."""
        if self._peer(addr) is not None:
            return [(datagram, addr)]
        out = []
        for copy in self.model.decide(self.clock(), None, self.node_id):
            out.append((corrupt_bytes(datagram, self.rng) if copy.corrupt else datagram, addr))
        return out

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
