"""`bft explore`: a campaign of drawn adversarial scenarios, run on every core.

Each run draws one scenario from its own `random.Random`, seeded by the
campaign seed and the run index (`draw_scenario(seed, index)`), so any run
replays alone: the same (seed, index) gives the same scenario, and the
scenario (with its simulator seed) gives the same run. A scenario is:

* a cluster of n replicas (`nodes`, 4 or 7 by default), small checkpoint
  intervals and log windows (checkpoints and state transfer in short runs);
* a short workload: a few clients, each sending a handful of requests with
  think times between them, so the work is spread over a second or a few;
* faults from the adversary's vocabulary, at most f faulty replicas at any
  time (`fault_intervals`, `max_faulty`, `budget_problem`): Byzantine
  behaviours (the ones the checkers do not judge) count for the whole run; a
  crashed, paused or clock-skewed correct replica counts while its fault
  lasts, a replica cut off by a partition or by a network rule that drops at
  least half of its links' messages while the rule is active (slow and
  replaying replicas, delays, duplicates and lighter loss change timing
  only). Faults start inside the estimated active window
  (`estimate_active_window`: while requests are in flight); a run records
  whether each fault was in force while requests were in flight, measured on
  the run itself (first invoke to last completion);
* a profile (`PROFILES`): anything within the budget, a Byzantine primary
  over a lossy network, or a Byzantine next primary with view 0 ending while
  requests are in flight.

Behaviours are drawn from `adversary.behaviours.BEHAVIOURS` at draw time, so
new behaviours join campaigns by themselves: their parameters are drawn by
`PARAM_SAMPLERS[name]` if it has an entry, else by `generic_params`, which
reads the behaviour's `PARAMS` spec. Network rules are drawn by
`NET_SAMPLERS[kind]`; `MATCH_SAMPLERS` narrows a rule to some links (today:
`nodes`; a sampler for a new keyword of `make_network_rule` is one entry, and
only keywords `make_network_rule` accepts are drawn).

`Campaign(...).run()` runs the scenarios in worker processes (`jobs`, default
every core), stops at the first violation (or goes on with `keep_going`; a
run that reached its time limit with requests pending before their deadline
is listed as unfinished, not a violation),
after `runs` runs or `time_s` seconds, shrinks each failing scenario
(`shrink`: a greedy, deterministic delta-debugging loop that keeps the kind of
check that failed), writes it as a scenario TOML that `bft sim --scenario
FILE` replays, and returns the summary (`Summary.to_dict()`, also written to
OUT/summary.json): runs, violations, faults inside the active window, and
coverage (view changes, state transfers, evidence by kind, drops by reason,
behaviours and network rule kinds drawn). `replica_class` / `node_factory`
run another replica on every node (planted-bug replicas in the teeth tests).
"""

from __future__ import annotations

import concurrent.futures
import dataclasses
import inspect
import json
import math
import multiprocessing
import os
import pickle
import random
import sys
import time
from collections import Counter
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from adversary import behaviours as _behaviours
from adversary import netfaults as _netfaults
from adversary.behaviours import BehaviourRule, Param, make_rule
from adversary.netfaults import ROUND_ACTIONS, ROUND_KINDS, NetworkRule, make_network_rule, round_schedule
from adversary.scenario import Scenario
from bft.errors import ConfigError

#: Per-request latency (s) the active-window estimate adds to the mean think time; measured
#: on honest runs (n = 4 and 7, 2-4 clients): 7-20 ms.
REQUEST_LATENCY_S = 0.02
#: The simulator's event budget per run (written into the scenario, so a replay has it too).
DEFAULT_MAX_EVENTS = 1_000_000
DEFAULT_LIVENESS_BOUND_S = 30.0
#: Durations (s) drawn for faults that end.
DURATIONS_S = (0.2, 0.5, 1.0, 2.0, 3.0)


#: Kinds of violation, the most telling first: a run's kind is the first of these it shows
#: (a replica that raised also leaves requests pending: that is not a liveness finding).
#: "unfinished": requests still pending when the run reached its time limit, before their
#: deadline (nothing is violated yet; a campaign lists such runs apart, they do not stop it).
SEVERITY = ("invariant", "agreement", "validity", "exactly_once", "total_order",
            "state_digest", "linearizability", "evidence", "evidence_witness", "liveness",
            "event_budget", "explore", "unfinished")


def violation_kind(violation: str) -> str:
    """The check a violation string comes from: "agreement", "liveness", ...; "invariant" for
    a replica that raised InvariantViolation, "event_budget" for a run out of events."""
    prefix = violation.split(":", 1)[0].strip()
    if prefix == "liveness" and "before their deadline" in violation:
        return "unfinished"
    if prefix == "simulation":
        if "InvariantViolation" in violation:
            return "invariant"
        if "event budget" in violation:
            return "event_budget"
    return prefix


def main_kind(violations: Iterable[str]) -> str | None:
    """The most telling kind among `violations` (None: none)."""
    kinds = {violation_kind(v) for v in violations}
    if not kinds:
        return None
    return min(kinds, key=lambda k: (SEVERITY.index(k) if k in SEVERITY else len(SEVERITY), k))


# --------------------------------------------------------------------------
# The fault budget: at most f faulty replicas at any time
# --------------------------------------------------------------------------


def _judged(behaviour: str) -> bool:
    # an unknown behaviour is Byzantine (counts for the whole run): the conservative side
    return bool(_behaviours.JUDGED.get(behaviour, False))


#: Judged behaviours that leave a replica up and correct: only its timing changes, which
#: partial synchrony allows (safety holds whatever the timing; liveness is judged after
#: they end). They do not count against f. Every other judged behaviour (crash, pause,
#: clock-skew: the clock assumption is part of the fault model; and any new one) counts
#: while it lasts.
TIMING_ONLY = frozenset({"slow", "replay"})
#: Network rule kinds that, limited to some replicas' links at a rate of at least
#: `CUTTING_RATE`, take them away (counted); lower rates are a lossy link (the network's
#: part, as on every link), and the other kinds (delay, duplicate, reorder) change timing.
CUTTING_KINDS = frozenset({"drop", "corrupt"})
CUTTING_RATE = 0.5


def _net_nodes(rule: NetworkRule, n: int) -> tuple[int, ...]:
    """The replicas a network rule takes away while it is active: the ones outside the
    largest group of a partition; those named by a rule limited to their links that can cut
    them off (`CUTTING_KINDS` at `CUTTING_RATE` or more)."""
    if rule.kind == "partition":
        groups = [set(g) for g in rule.groups]
        rest = set(range(n)) - set().union(*groups)
        if rest:
            groups.append(rest)
        biggest = max(groups, key=lambda g: (len(g), -min(g)))
        return tuple(sorted(set(range(n)) - biggest))
    if rule.nodes and rule.kind in CUTTING_KINDS and rule.rate >= CUTTING_RATE:
        return tuple(sorted(set(rule.nodes)))
    return ()


def fault_intervals(scenario: Scenario, n: int) -> list[tuple[int, float, float, str]]:
    """(replica, start, end, why) for every way a replica is faulty in `scenario`: Byzantine
    behaviours from 0 to inf, judged ones (crash, pause, clock-skew, ...; not `TIMING_ONLY`)
    over their window (a crash until its restart), network rules over theirs (see
    `_net_nodes`)."""
    out = []
    for r in scenario.rules:
        if not _judged(r.behaviour):
            out.append((r.node, 0.0, math.inf, r.behaviour))
            continue
        if r.behaviour in TIMING_ONLY:
            continue
        end = r.ends_at()
        out.append((r.node, r.start_s, math.inf if end is None else end, r.behaviour))
    for rule in scenario.network:
        end = math.inf if rule.stop_s is None else rule.stop_s
        for i in _net_nodes(rule, n):
            out.append((i, rule.start_s, end, f"network:{rule.kind}"))
    return out


def max_faulty(scenario: Scenario, n: int) -> tuple[int, float, tuple[int, ...]]:
    """(count, time, replicas): the most replicas faulty at one time, and when."""
    intervals = fault_intervals(scenario, n)
    best: tuple[int, float, tuple[int, ...]] = (0, 0.0, ())
    for t in sorted({start for _, start, _, _ in intervals}):
        down = tuple(sorted({i for i, s, e, _ in intervals if s <= t < e}))
        if len(down) > best[0]:
            best = (len(down), t, down)
    return best


def budget_problem(scenario: Scenario, n: int) -> str | None:
    """Why `scenario` has more than f faulty replicas at some time, or None."""
    f = (n - 1) // 3
    count, at, nodes = max_faulty(scenario, n)
    if count > f:
        return (f"{count} faulty replicas {list(nodes)} at {at:g} s (n = {n}, f = {f}): "
                "the fault model allows at most f at any time")
    return None


# --------------------------------------------------------------------------
# Drawing a scenario
# --------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class ExploreOptions:
    """What campaigns draw. `behaviours`/`network_kinds`: None means every one known when a
    scenario is drawn (`adversary.behaviours.BEHAVIOURS`, `adversary.netfaults.KINDS`)."""

    nodes: tuple[int, ...] = (4, 7)
    behaviours: tuple[str, ...] | None = None
    network_kinds: tuple[str, ...] | None = None
    max_clients: int = 4
    max_requests: int = 25  # per client
    max_transient: int = 3  # crashes, pauses, partitions, slow/skewed/replaying correct nodes
    max_weather: int = 2  # network rules on every link (loss, delay, duplicates, ...)
    liveness_bound_s: float = DEFAULT_LIVENESS_BOUND_S
    max_events: int = DEFAULT_MAX_EVENTS
    profiles: tuple[str, ...] | None = None  # None: every profile, by PROFILES' weights

    def validate(self) -> None:
        """ConfigError naming the option for a value out of range or an unknown name."""
        for name in self.profiles or ():
            if name not in PROFILES:
                raise ConfigError(f"unknown profile {name!r}", field="--profiles",
                                  fix=f"known: {', '.join(PROFILES)}")
        if self.profiles is not None and not self.profiles:
            raise ConfigError("at least one profile", field="--profiles")
        if not self.nodes or any(n < 4 or (n - 1) % 3 for n in self.nodes):
            raise ConfigError(f"expected sizes n = 3f+1 >= 4, got {list(self.nodes)}",
                              field="--nodes", fix="e.g. --nodes 4,7")
        for name in self.behaviours or ():
            if name not in _behaviours.PARAMS:
                raise ConfigError(f"unknown behaviour {name!r}", field="--behaviours",
                                  fix=f"known: {', '.join(_behaviours.BEHAVIOURS)}")
        for kind in self.network_kinds or ():
            if kind not in _netfaults.KINDS:
                raise ConfigError(f"unknown network rule kind {kind!r}", field="--network",
                                  fix=f"known: {', '.join(_netfaults.KINDS)}")
        for name in ("max_clients", "max_requests", "max_events"):
            if getattr(self, name) < 1:
                raise ConfigError("must be >= 1", field=name)
        if self.max_transient < 0 or self.max_weather < 0:
            raise ConfigError("must be >= 0", field="max_transient")
        if not self.liveness_bound_s > 0:
            raise ConfigError("must be > 0", field="--liveness-bound")

    def behaviour_names(self) -> tuple[str, ...]:
        return tuple(self.behaviours) if self.behaviours is not None \
            else tuple(_behaviours.BEHAVIOURS)

    def kinds(self) -> tuple[str, ...]:
        return tuple(self.network_kinds) if self.network_kinds is not None \
            else tuple(_netfaults.KINDS)


@dataclass(frozen=True, slots=True)
class DrawContext:
    """What a parameter sampler may look at: the cluster size and the active window."""

    n: int
    f: int
    window_s: tuple[float, float]


def estimate_active_window(requests: int, think_ms: tuple[float, float]) -> tuple[float, float]:
    """When requests are in flight in a fault-free run: from the first invoke (within 10 ms)
    to about `requests` x (mean think time + REQUEST_LATENCY_S)."""
    mean_think_s = (think_ms[0] + think_ms[1]) / 2000.0
    return 0.01, 0.01 + requests * (mean_think_s + REQUEST_LATENCY_S)


def _ms(t: float) -> float:
    return round(t, 3)


def _subset(rng: random.Random, choices: Iterable[str]) -> list[str]:
    """A non-empty random subset, in the order of `choices`."""
    choices = list(choices)
    picked = [c for c in choices if rng.random() < 0.5]
    return picked or [rng.choice(choices)]


def generic_params(rng: random.Random, spec: Mapping[str, Param]) -> dict[str, Any]:
    """Parameters for a behaviour without a sampler of its own, from its `PARAMS` spec: each
    kept at its default half the time, else drawn by kind near the default."""
    out: dict[str, Any] = {}
    for name, p in spec.items():
        if rng.random() < 0.5:
            continue
        d = p.default
        if p.kind == "bool":
            out[name] = rng.random() < 0.5
        elif p.kind == "choice":
            out[name] = rng.choice(p.choices)
        elif p.kind == "choices":
            out[name] = _subset(rng, p.choices)
        elif p.kind == "probability":
            out[name] = rng.choice((0.1, 0.3, 0.5, 1.0))
        elif p.kind == "int":
            out[name] = rng.randint(0, max(2, 2 * int(d)))
        elif p.kind in ("positive", "nonneg", "float"):
            base = float(d) if d else 1.0
            value = base * rng.choice((0.5, 1.0, 2.0))
            if p.kind == "float" and rng.random() < 0.3:
                value = -value
            if p.kind == "nonneg" and not d and rng.random() < 0.5:
                value = 0.0
            out[name] = value
        # "groups" and unknown kinds keep their defaults
    return out


def _lie(rng: random.Random, ctx: DrawContext) -> dict[str, Any]:
    return {"rate": rng.choice((0.2, 0.5, 1.0)), "lies": _subset(rng, _behaviours.LIES)}


def _equivocate(rng: random.Random, ctx: DrawContext) -> dict[str, Any]:
    if rng.random() < 0.25:
        return {"mode": "twins"}
    return {"overlap": rng.choice((0, 1, 1, 2)),
            "what": _subset(rng, _behaviours.EQUIVOCATIONS)}


def _pause(rng: random.Random, ctx: DrawContext) -> dict[str, Any]:
    return {"duration_s": rng.choice(DURATIONS_S)}


def _crash(rng: random.Random, ctx: DrawContext) -> dict[str, Any]:
    return {"restart_after_s": rng.choice((0.1, *DURATIONS_S)), "restart": rng.random() < 0.85}


def _replay(rng: random.Random, ctx: DrawContext) -> dict[str, Any]:
    return {"count": rng.randint(1, 5), "interval_s": rng.choice((0.05, 0.1, 0.3))}


def _clock_skew(rng: random.Random, ctx: DrawContext) -> dict[str, Any]:
    return {"offset_s": rng.choice((0.5, -0.5, 0.9, -0.9, 5.0, -5.0)),
            "drift_ppm": rng.choice((0.0, 0.0, 1000.0, -50000.0))}


def _slow(rng: random.Random, ctx: DrawContext) -> dict[str, Any]:
    return {"delay_ms": rng.choice((20.0, 100.0, 400.0)), "jitter_ms": rng.choice((0.0, 20.0))}


#: behaviour -> its parameter sampler; behaviours without one get `generic_params`.
PARAM_SAMPLERS: dict[str, Callable[[random.Random, DrawContext], dict[str, Any]]] = {
    "lie": _lie, "equivocate": _equivocate, "pause": _pause, "crash": _crash,
    "replay": _replay, "clock-skew": _clock_skew, "slow": _slow,
    "silent": lambda rng, ctx: {},
}


def draw_params(behaviour: str, rng: random.Random, ctx: DrawContext) -> dict[str, Any]:
    """Parameters for `behaviour` (its sampler, else `generic_params` of its spec)."""
    sampler = PARAM_SAMPLERS.get(behaviour)
    if sampler is not None:
        return sampler(rng, ctx)
    return generic_params(rng, _behaviours.PARAMS.get(behaviour, {}))


def _rule(node: int, behaviour: str, rng: random.Random, ctx: DrawContext, start: float,
          stop: float | None) -> BehaviourRule:
    params = draw_params(behaviour, rng, ctx)
    try:
        return make_rule(node, behaviour, start_s=start, stop_s=stop, params=params)
    except ConfigError:  # a generic draw the behaviour refuses: its defaults then
        return make_rule(node, behaviour, start_s=start, stop_s=stop)


def _rate(rng: random.Random) -> float:
    return rng.choice((0.05, 0.1, 0.2, 0.3, 0.5))


#: network rule kind -> keyword arguments of `make_network_rule` (besides kind and window).
NET_SAMPLERS: dict[str, Callable[[random.Random, DrawContext], dict[str, Any]]] = {
    "drop": lambda rng, ctx: {"rate": _rate(rng)},
    "duplicate": lambda rng, ctx: {"rate": _rate(rng)},
    "corrupt": lambda rng, ctx: {"rate": _rate(rng)},
    "reorder": lambda rng, ctx: {"rate": _rate(rng),
                                 "delay_ms": rng.choice((5.0, 20.0, 100.0))},
    "delay": lambda rng, ctx: {"delay_ms": rng.choice((5.0, 20.0, 100.0, 400.0)),
                               "jitter_ms": rng.choice((0.0, 10.0)),
                               "rate": rng.choice((0.3, 1.0))},
}

#: keyword of `make_network_rule` -> a sampler narrowing a rule to some messages or links.
#: Only keywords `make_network_rule` accepts are drawn (see `_match_keywords`).
MATCH_SAMPLERS: dict[str, Callable[[random.Random, DrawContext], Any]] = {
    "nodes": lambda rng, ctx: [_pick_node(rng, ctx.n)],
    # targeted rules (adversary/netfaults.py): a message kind or two, one sender or
    # receiver, a view, a range of seqs
    "kinds": lambda rng, ctx: sorted(rng.sample(ROUND_KINDS, rng.choice((1, 1, 2)))),
    "senders": lambda rng, ctx: [_pick_node(rng, ctx.n)],
    "receivers": lambda rng, ctx: [_pick_node(rng, ctx.n)],
    "views": lambda rng, ctx: rng.choice((0, 0, 1, 2)),
    "seqs": lambda rng, ctx: (lambda lo: [lo, lo + rng.choice((0, 1, 4))])(rng.randint(1, 12)),
}


def _match_keywords() -> tuple[str, ...]:
    accepted = inspect.signature(make_network_rule).parameters
    return tuple(k for k in MATCH_SAMPLERS if k in accepted)


def _pick_node(rng: random.Random, n: int, avoid: Iterable[int] = ()) -> int:
    """A replica, the primaries of views 0 and 1 more often than the others."""
    avoid = set(avoid)
    choices = [i for i in range(n) if i not in avoid] or list(range(n))
    if rng.random() < 0.5:
        preferred = [i for i in (0, 1) if i in choices]
        if preferred:
            return rng.choice(preferred)
    return rng.choice(choices)


def _start(rng: random.Random, window: tuple[float, float]) -> float:
    lo, hi = window
    return _ms(rng.uniform(lo, lo + 0.8 * (hi - lo)))


#: Profiles of a drawn run and their weights. "mixed": anything within the budget (Byzantine
#: replicas anywhere, crashes, pauses, partitions, network rules). "primary": a Byzantine
#: primary (of view 0 or 1) over a lossy, reordering network: the messages that reach some
#: backups late or not at all are where its lies and second versions work. "view-change":
#: the primary of view 1 is Byzantine and view 0 ends while requests are in flight (its
#: primary crashes, pauses or is cut off where the budget allows, else the network goes
#: down for a moment or the primary is slow), so the new primary's NEW-VIEW, re-proposals
#: and batch fetches meet its behaviour. (ByzzFuzz, Winter et al. 2023: a few faults close
#: to the protocol's rounds find more than many spread thin.)
#: "rounds": a ByzzFuzz schedule (adversary.netfaults.round_schedule: a partition and a
#: few message faults, each scoped to one view) beside one Byzantine replica.
#: "late": a Byzantine primary (of view 0 or 1) and one backup whose PRE-PREPAREs (with
#: their batches) arrive late or not at all, sometimes across a view change: the backup
#: decides by COMMITs, or enters a view, before it holds what the primary sent it.
PROFILES: dict[str, float] = {"mixed": 0.3, "primary": 0.2, "view-change": 0.15,
                              "rounds": 0.15, "late": 0.2}


def draw(seed: int, index: int, options: ExploreOptions | None = None) -> tuple[Scenario, str]:
    """Run `index` of the campaign with seed `seed` and its profile (see `PROFILES`): a
    scenario with at most f faulty replicas at any time, its faults starting inside the
    estimated active window (or at 0, in force from the first request)."""
    options = options or ExploreOptions()
    rng = random.Random(f"bft-explore/{seed}/{index}")
    names = [p for p in PROFILES if options.profiles is None or p in options.profiles]
    profile = rng.choices(names, weights=[PROFILES[p] for p in names])[0]
    n = rng.choice(options.nodes)
    f = (n - 1) // 3
    clients = rng.randint(2, max(2, options.max_clients))
    requests = rng.randint(min(3, options.max_requests), options.max_requests)
    # no think time (many requests in flight, batches pipelined) to a few hundred ms
    lo = float(rng.choice((0, 0, 10)))
    think = (lo, max(lo, float(rng.choice((0, 20, 50, 100, 300)))))
    interval = rng.choice((2, 4, 8))
    window = estimate_active_window(requests, think)
    draft = _Draft(rng, options, DrawContext(n, f, window))
    if profile == "primary":
        draft.byzantine(first=rng.choice((0, 1)))
        draft.base_weather(always=True)
        draft.transient(rng.randint(0, 1))
        draft.weather(rng.randint(0, options.max_weather))
    elif profile == "view-change":
        draft.byzantine(first=1, count=1)
        draft.end_view_0()
        draft.base_weather()
        draft.weather(rng.randint(0, 1))
    elif profile == "rounds":
        draft.byzantine(count=1)
        draft.rounds()
        draft.base_weather()
    elif profile == "late":
        primary = rng.choice((0, 0, 1))
        kind = "equivocate" if primary == 0 else "bad-new-view"
        if kind in draft.byzantine_kinds and rng.random() < 0.6:
            draft.two_faced_primary(primary, kind)
        else:
            draft.byzantine(first=primary, count=1)
            if rng.random() < 0.5:
                draft.withholding(primary)
        ends = draft.end_view_0() if primary == 1 or rng.random() < 0.5 else None
        draft.late_backup(ends)
        draft.base_weather()
    else:
        draft.byzantine()
        draft.transient(rng.randint(0, options.max_transient))
        draft.base_weather()
        draft.weather(rng.randint(0, options.max_weather))
    sim: dict[str, Any] = {
        "nodes": n, "seed": rng.getrandbits(32), "clients": clients, "requests": requests,
        "keys": rng.randint(2, 4), "think_ms": list(think),
        # the log window holds at least the 8 batches a primary keeps in flight
        "checkpoint_interval": interval, "log_window": max(8, interval * rng.choice((2, 4))),
        "liveness_bound_s": options.liveness_bound_s, "max_events": options.max_events,
    }
    scenario = Scenario(tuple(draft.rules), tuple(draft.network), sim, {},
                        f"bft explore --seed {seed}: run {index} ({profile})")
    sim["until_s"] = until_for(scenario)
    return dataclasses.replace(scenario, sim=sim), profile


def draw_scenario(seed: int, index: int, options: ExploreOptions | None = None) -> Scenario:
    """The scenario of `draw(seed, index, options)`."""
    return draw(seed, index, options)[0]


class _Draft:
    """A scenario being drawn: each fault is added only if the budget still holds."""

    def __init__(self, rng: random.Random, options: ExploreOptions, ctx: DrawContext) -> None:
        self.rng, self.options, self.ctx = rng, options, ctx
        names = options.behaviour_names()
        self.byzantine_kinds = [b for b in names if not _judged(b)]
        self.transient_kinds = [b for b in names if _judged(b)]
        self.kinds = options.kinds()
        self.rules: list[BehaviourRule] = []
        self.network: list[NetworkRule] = []
        self.crashed: set[int] = set()

    def fits(self, rules: Iterable[BehaviourRule] = (),
             network: Iterable[NetworkRule] = ()) -> bool:
        trial = Scenario(tuple(self.rules) + tuple(rules), tuple(self.network) + tuple(network))
        return budget_problem(trial, self.ctx.n) is None

    def start(self) -> float:
        return _start(self.rng, self.ctx.window_s)

    def byzantine(self, first: int | None = None, count: int | None = None) -> None:
        """Up to f Byzantine replicas (`first` among them), one or two behaviours each, for
        the whole run or a window of it."""
        rng, ctx = self.rng, self.ctx
        if not self.byzantine_kinds:
            return
        if count is None:
            count = 0 if first is None and rng.random() < 0.25 else rng.randint(1, ctx.f)
        nodes: list[int] = [first] if first is not None and count else []
        while len(nodes) < count:
            nodes.append(_pick_node(rng, ctx.n, avoid=nodes))
        for node in nodes:
            twins = False
            drawn: set[str] = set()
            for _ in range(rng.choice((1, 1, 2))):
                behaviour = rng.choice(self.byzantine_kinds)
                if behaviour in drawn:
                    continue
                drawn.add(behaviour)
                start = 0.0 if rng.random() < 0.6 else self.start()
                stop = None if rng.random() < 0.7 else _ms(start + rng.choice(DURATIONS_S))
                rule = _rule(node, behaviour, rng, ctx, start, stop)
                if rule.params.get("mode") == "twins":
                    if twins:
                        continue
                    twins = True
                self.rules.append(rule)

    def _partition(self, cut: list[int], start: float, duration: float) -> bool:
        rule = make_network_rule("partition", groups=[sorted(cut)], start_s=start,
                                 stop_s=_ms(start + duration))
        if self.fits(network=[rule]):
            self.network.append(rule)
            return True
        return False

    def _behaviour(self, node: int, kind: str, start: float) -> bool:
        rng = self.rng
        stop = None
        if kind not in ("crash", "pause") and rng.random() < 0.8:
            stop = _ms(start + rng.choice(DURATIONS_S))
        rule = _rule(node, kind, rng, self.ctx, start, stop)
        crashing = kind in ("crash", "crash-at")  # one crash rule of either kind per replica
        if (crashing and node in self.crashed) or not self.fits([rule]):
            return False
        self.rules.append(rule)
        if crashing:
            self.crashed.add(node)
        return True

    def transient(self, count: int) -> None:
        """Faults of (otherwise) correct replicas: crashes, pauses, partitions, slow, skewed
        or replaying replicas; each only if the budget allows it (a few tries)."""
        rng, ctx = self.rng, self.ctx
        kinds = [*self.transient_kinds] + (["partition"] if "partition" in self.kinds else [])
        for _ in range(count if kinds else 0):
            kind = rng.choice(kinds)
            for _attempt in range(4):
                if kind == "partition":
                    cut: list[int] = []
                    for _ in range(rng.randint(1, ctx.f)):
                        cut.append(_pick_node(rng, ctx.n, avoid=cut))
                    if self._partition(cut, self.start(), rng.choice(DURATIONS_S)):
                        break
                elif self._behaviour(_pick_node(rng, ctx.n, avoid=self.crashed
                                                if kind == "crash" else ()), kind, self.start()):
                    break

    def end_view_0(self) -> float:
        """Something that ends view 0 while requests are in flight: its primary crashes,
        pauses or is cut off if the budget allows; else the network goes down for a moment,
        or the primary is slow. Returns when."""
        rng = self.rng
        start = self.start()
        down = [k for k in ("crash", "pause") if k in self.transient_kinds]
        if "partition" in self.kinds:
            down.append("partition")
        rng.shuffle(down)
        for kind in down:
            if kind == "partition":
                if self._partition([0], start, rng.choice(DURATIONS_S)):
                    return start
            elif self._behaviour(0, kind, start):
                return start
        if "drop" in self.kinds and (rng.random() < 0.7 or "slow" not in self.transient_kinds):
            self.network.append(make_network_rule(
                "drop", rate=1.0, start_s=start, stop_s=_ms(start + rng.choice((0.5, 1.0, 2.0)))))
        elif "slow" in self.transient_kinds:
            self._behaviour(0, "slow", start)
        return start

    def rounds(self) -> None:
        """A small round-based schedule (ByzzFuzz): each rule added if the budget allows it;
        partitions end within the active window so liveness is judged too."""
        rng, ctx = self.rng, self.ctx
        stop = _ms(ctx.window_s[1] + rng.choice(DURATIONS_S))
        kinds = tuple(k for k in ROUND_ACTIONS if k in self.kinds)
        if not kinds:
            return
        for rule in round_schedule(rng, ctx.n, max_view=2,
                                   partitions=1 if "partition" in self.kinds else 0,
                                   message_faults=rng.randint(1, 3), actions=kinds,
                                   partition_stop_s=stop):
            # every rule ends: one scoped to a view the replicas cannot leave (its messages
            # are the ones that would let them) would never end, and liveness is judged
            # only once the network behaves
            rule = dataclasses.replace(rule, stop_s=stop)
            if self.fits(network=[rule]):
                self.network.append(rule)

    def two_faced_primary(self, node: int, kind: str) -> None:
        """A primary with two versions: of view 0 (`equivocate`: its PRE-PREPAREs, maybe
        PREPAREs, one version to each half of the backups, none to both, so the half that
        gets the second hears the first decided by the others' COMMITs), or of view 1
        (`bad-new-view`: two NEW-VIEWs, or its NEW-VIEW's seqs re-issued with other batches
        to half the backups)."""
        rng = self.rng
        start = 0.0 if rng.random() < 0.6 else self.start()
        if kind == "equivocate":
            params: dict[str, Any] = {
                "what": ["pre_prepare"] + (["prepare"] if rng.random() < 0.3 else []),
                "overlap": 0}
        else:
            params = {"mode": rng.choice(("reissue", "reissue", "split"))}
        self.rules.append(make_rule(node, kind, start_s=start, params=params))

    def withholding(self, node: int) -> None:
        """`node` (already Byzantine) also leaves prepared certificates out of its
        VIEW-CHANGEs for the whole run, so a seq a late backup prepared may be re-proposed
        with another batch."""
        if "withhold" in self.byzantine_kinds and not any(
                r.node == node and r.behaviour == "withhold" for r in self.rules):
            self.rules.append(_rule(node, "withhold", self.rng, self.ctx, 0.0, None))

    def late_backup(self, view_0_ends: float | None = None) -> None:
        """PRE-PREPAREs to one backup held back (delayed, or some dropped) for a while,
        maybe its COMMITs too: it hears that a seq is decided before it holds its batch (or a
        batch a NEW-VIEW re-proposed comes only after the next view change began). Mostly
        the last replica: the half an equivocating primary sends its second version."""
        rng, ctx = self.rng, self.ctx
        byzantine = {r.node for r in self.rules if not _judged(r.behaviour)}
        honest = [i for i in range(ctx.n) if i not in byzantine]
        backup = honest[-1] if rng.random() < 0.6 else _pick_node(
            rng, ctx.n, avoid=byzantine | {0, 1} if ctx.n > 3 else byzantine)
        start = 0.0 if rng.random() < 0.5 else self.start()
        stop = _ms(max(start, ctx.window_s[1]) + rng.choice(DURATIONS_S))
        delays = (50.0, 200.0, 500.0, 1000.0)
        if view_0_ends is not None and rng.random() < 0.6:
            # from just before view 0 ends, long enough to span the view change: the seqs in
            # flight reach the backup only after NEW-VIEW re-proposed them (and their batches,
            # fetched, later still)
            start = _ms(max(0.0, view_0_ends - rng.choice((0.05, 0.2))))
            stop = _ms(view_0_ends + rng.choice((2.0, 4.0)))
            delays = (1000.0, 2000.0, 3000.0)
        kinds = ["pre_prepare"] + (["commit"] if rng.random() < 0.4 else [])
        if "delay" in self.kinds and (rng.random() < 0.7 or "drop" not in self.kinds):
            rule = make_network_rule("delay", delay_ms=rng.choice(delays),
                                     jitter_ms=rng.choice((0.0, 50.0)), kinds=kinds,
                                     receivers=[backup], start_s=start, stop_s=stop)
        elif "drop" in self.kinds:
            rule = make_network_rule("drop", rate=rng.choice((0.5, 0.8, 1.0)), kinds=kinds,
                                     receivers=[backup], start_s=start, stop_s=stop)
        else:
            return
        if self.fits(network=[rule]):
            self.network.append(rule)

    def base_weather(self, always: bool = False) -> None:
        """A lossy, reordering network for the whole run, as the reviews' campaigns had it."""
        if not always and self.rng.random() >= 0.3:
            return
        for kind, kwargs in (("drop", {"rate": self.rng.choice((0.02, 0.05, 0.1, 0.2))}),
                             ("reorder", {"rate": 0.2, "delay_ms": 20.0})):
            if kind in self.kinds:
                self.network.append(make_network_rule(kind, **kwargs))

    def weather(self, count: int) -> None:
        """Network rules on every link (or narrowed by a MATCH_SAMPLERS keyword), each
        ending."""
        rng, ctx = self.rng, self.ctx
        kinds = [k for k in self.kinds if k != "partition" and k in NET_SAMPLERS]
        matchers = _match_keywords()
        for _ in range(count if kinds else 0):
            kind = rng.choice(kinds)
            kwargs = NET_SAMPLERS[kind](rng, ctx)
            if matchers and rng.random() < 0.3:
                key = rng.choice(matchers)
                kwargs[key] = MATCH_SAMPLERS[key](rng, ctx)
            start = 0.0 if rng.random() < 0.2 else self.start()
            rule = make_network_rule(kind, start_s=start,
                                     stop_s=_ms(start + rng.choice((*DURATIONS_S, 5.0))),
                                     **kwargs)
            if self.fits(network=[rule]):
                self.network.append(rule)


def faults_end_s(scenario: Scenario) -> float:
    """When the last fault that ends has ended (0 if none)."""
    ends = [0.0]
    for r in scenario.rules:
        end = r.ends_at()
        ends.append(end if end is not None else r.start_s)
    for rule in scenario.network:
        ends.append(rule.stop_s if rule.stop_s is not None else rule.start_s)
    return max(ends)


def until_for(scenario: Scenario) -> float:
    """A virtual time limit that leaves room for the liveness bound after the faults."""
    bound = float(scenario.sim.get("liveness_bound_s", DEFAULT_LIVENESS_BOUND_S))
    return float(math.ceil(max(120.0, faults_end_s(scenario) + bound + 30.0)))


# --------------------------------------------------------------------------
# One run
# --------------------------------------------------------------------------


def _replica_factory(replica_class: Any) -> Callable[[Any], Any]:
    def build(ctx: Any) -> Any:
        return replica_class(ctx.config, ctx.replica_id, signer=ctx.signer,
                             verifier=ctx.verifier, app=ctx.app, recovered=ctx.recovered,
                             digest_every_batch=ctx.digest_every_batch,
                             reply_auth=ctx.reply_auth)
    return build


def _resolve(spec: Any) -> Any:
    if isinstance(spec, str):
        from adversary.scenario import load_factory

        return load_factory(spec, field="--replica")
    return spec


def fault_windows(scenario: Scenario) -> list[tuple[str, float, float]]:
    """(what, start, end) of every behaviour rule and network rule."""
    out = []
    for r in scenario.rules:
        end = r.ends_at()
        if r.behaviour == "crash" and end is None:
            end = math.inf
        out.append((f"{r.node}:{r.behaviour}", r.start_s, math.inf if end is None else end))
    for rule in scenario.network:
        out.append((f"network:{rule.kind}", rule.start_s,
                    math.inf if rule.stop_s is None else rule.stop_s))
    return out


def run_one(scenario: Scenario, *, replica_class: Any = None,
            node_factory: Callable[[Any], Any] | None = None) -> dict[str, Any]:
    """Simulate `scenario` once; plain data (picklable): the verdict, the violations, the
    measured active window, which faults were in force in it, and what the run covered."""
    from adversary.sim import Simulation

    replica_class = _resolve(replica_class)
    node_factory = _resolve(node_factory)
    if node_factory is None and replica_class is not None:
        node_factory = _replica_factory(replica_class)
    built: list[tuple[int, Any]] = []

    def factory(ctx: Any) -> Any:
        node = node_factory(ctx) if node_factory is not None else ctx.make_replica()
        built.append((ctx.replica_id, node))
        return node

    started = time.perf_counter()
    config = scenario.sim_config(node_factory=factory, history=True)
    simulation = Simulation(config)
    result = simulation.run(scenario.until_s)
    wall = time.perf_counter() - started

    entries = simulation.history.entries if simulation.history is not None else []
    invoked = [e["time"] / 1e9 for e in entries if e["type"] == "invoke"]
    done = [e["time"] / 1e9 for e in entries if e["type"] in ("ok", "fail")]
    active = (min(invoked), max(done)) if invoked and done else None
    windows = fault_windows(scenario)
    inside = [active is not None and start <= active[1] and end > active[0]
              for _, start, end in windows]

    judged = set(result.correct)
    drops: Counter[str] = Counter()
    for i, node in built:
        if i in judged:
            drops.update(dict(getattr(node, "drops", {})))
    evidence = Counter(e["kind"] for e in result.evidence)
    violations = list(result.violations)
    kind = main_kind(violations)
    outcome = "ok" if result.ok else "unfinished" if kind == "unfinished" else "violation"
    return {
        "seed": result.seed, "nodes": result.nodes, "ok": result.ok, "outcome": outcome,
        "safety_ok": result.safety_ok, "liveness_ok": result.liveness_ok,
        "evidence_ok": result.evidence_ok,
        "violations": violations[:20], "kinds": sorted({violation_kind(v) for v in violations}),
        "kind": kind,
        "requests": result.requests, "completed": result.completed_requests,
        "view_changes": result.view_changes, "final_view": result.final_view,
        "state_transfers": int(result.events.get("state_transfer", 0)),
        "events": dict(result.events), "evidence": dict(evidence),
        "drops": dict(drops), "network_drops": dict(result.network.get("dropped", {})),
        "behaviours": [r.behaviour for r in scenario.rules],
        "rule_kinds": [r.kind for r in scenario.network],
        "faults": len(windows), "faults_inside": sum(inside),
        "active_window": [round(active[0], 6), round(active[1], 6)] if active else None,
        "steps": result.steps, "virtual_s": result.virtual_seconds, "wall_s": round(wall, 6),
        "trace_hash": result.trace_hash,
    }


def _task(args: tuple[int, int, ExploreOptions, Any, Any]) -> dict[str, Any]:
    """A worker's entry point (module level, so spawned processes can import it)."""
    seed, index, options, replica_class, node_factory = args
    scenario, profile = draw(seed, index, options)
    try:
        out = run_one(scenario, replica_class=replica_class, node_factory=node_factory)
    except Exception as exc:  # the simulator or a node factory broke: a finding too
        import traceback

        where = traceback.format_exc().strip().splitlines()[-3:]
        out = {"ok": False, "outcome": "violation", "kinds": ["explore"], "kind": "explore",
               "violations": [f"explore: the run raised {type(exc).__name__}: {exc}",
                              *where],
               "nodes": scenario.sim["nodes"], "seed": scenario.sim["seed"],
               "faults": 0, "faults_inside": 0,
               "behaviours": [r.behaviour for r in scenario.rules],
               "rule_kinds": [r.kind for r in scenario.network]}
    out["index"], out["profile"] = index, profile
    return out


# --------------------------------------------------------------------------
# Shrinking
# --------------------------------------------------------------------------


def _shorter(rule: BehaviourRule) -> BehaviourRule | None:
    """The rule with its window halved (None when there is nothing to halve)."""
    params = dict(rule.params)
    if rule.stop_s is not None:
        stop = _ms(rule.start_s + (rule.stop_s - rule.start_s) / 2)
        if stop <= rule.start_s or stop == rule.stop_s:
            return None
        return dataclasses.replace(rule, stop_s=stop)
    for key in ("duration_s", "restart_after_s"):
        if key in params and params[key] > 0.1:
            params[key] = _ms(params[key] / 2)
            return dataclasses.replace(rule, params=params)
    return None


def _shorter_net(rule: NetworkRule) -> NetworkRule | None:
    if rule.stop_s is None:
        return None
    stop = _ms(rule.start_s + (rule.stop_s - rule.start_s) / 2)
    if stop <= rule.start_s or stop == rule.stop_s:
        return None
    return dataclasses.replace(rule, stop_s=stop)


def shrink_candidates(scenario: Scenario) -> Iterable[Scenario]:
    """Smaller variants of `scenario`, biggest cuts first: without one network rule, without
    one behaviour rule, with fewer clients or requests, with one window halved."""
    rules, network, sim = scenario.rules, scenario.network, dict(scenario.sim)
    for k in reversed(range(len(network))):
        yield dataclasses.replace(scenario, network=network[:k] + network[k + 1:])
    for k in reversed(range(len(rules))):
        yield dataclasses.replace(scenario, rules=rules[:k] + rules[k + 1:])
    clients, requests = int(sim.get("clients", 2)), int(sim.get("requests", 10))
    for key, value in (("clients", clients), ("requests", requests)):
        for smaller in sorted({1, value // 2, value - 1}):
            if 1 <= smaller < value:
                yield dataclasses.replace(scenario, sim={**sim, key: smaller})
    for k, rule in enumerate(rules):
        short = _shorter(rule)
        if short is not None:
            yield dataclasses.replace(scenario, rules=rules[:k] + (short,) + rules[k + 1:])
    for k, net in enumerate(network):
        short_n = _shorter_net(net)
        if short_n is not None:
            yield dataclasses.replace(scenario, network=network[:k] + (short_n,) + network[k + 1:])


def shrink(scenario: Scenario, kind: str, run: Callable[[Scenario], dict[str, Any]], *,
           max_runs: int = 150) -> tuple[Scenario, dict[str, Any] | None, int]:
    """Greedy delta debugging: take the first smaller candidate that still fails with a
    violation of `kind`, and start over from it, until none does or `max_runs` runs were
    made. Deterministic. Returns (smallest scenario, its run, runs made)."""
    best, best_run, runs = scenario, None, 0
    improved = True
    while improved and runs < max_runs:
        improved = False
        for candidate in shrink_candidates(best):
            if runs >= max_runs:
                break
            runs += 1
            outcome = run(candidate)
            if kind in outcome.get("kinds", ()):
                best, best_run, improved = candidate, outcome, True
                break
    return best, best_run, runs


# --------------------------------------------------------------------------
# The campaign
# --------------------------------------------------------------------------


@dataclass
class Summary:
    """What a campaign found and covered; `to_dict()` is the JSON summary."""

    seed: int
    options: ExploreOptions
    jobs: int
    runs: int = 0
    ok_runs: int = 0
    violating_runs: int = 0
    violations: list[dict[str, Any]] = field(default_factory=list)
    unfinished: list[dict[str, Any]] = field(default_factory=list)
    runs_with_faults: int = 0
    faults_inside_window: int = 0  # runs whose every fault was in force while requests flew
    faults: int = 0
    faults_inside: int = 0
    view_changes: int = 0
    runs_with_view_change: int = 0
    state_transfers: int = 0
    runs_with_state_transfer: int = 0
    evidence: Counter = field(default_factory=Counter)
    drops: Counter = field(default_factory=Counter)
    network_drops: Counter = field(default_factory=Counter)
    events: Counter = field(default_factory=Counter)
    behaviours: Counter = field(default_factory=Counter)
    rule_kinds: Counter = field(default_factory=Counter)
    sizes: Counter = field(default_factory=Counter)
    profiles: Counter = field(default_factory=Counter)
    steps: int = 0
    wall_s: float = 0.0
    stopped: str = ""

    def add(self, out: dict[str, Any]) -> None:
        self.runs += 1
        self.ok_runs += out.get("outcome") == "ok"
        self.violating_runs += out.get("outcome") == "violation"
        if out.get("outcome") == "unfinished":
            self.unfinished.append({"run": out["index"], "seed": out.get("seed"),
                                    "violations": out.get("violations", [])[:2]})
        faults = int(out.get("faults", 0))
        if faults:
            self.runs_with_faults += 1
            self.faults += faults
            self.faults_inside += int(out.get("faults_inside", 0))
            self.faults_inside_window += out.get("faults_inside", 0) == faults
        vc = int(out.get("view_changes", 0))
        self.view_changes += vc
        self.runs_with_view_change += vc > 0
        st = int(out.get("state_transfers", 0))
        self.state_transfers += st
        self.runs_with_state_transfer += st > 0
        self.evidence.update(out.get("evidence", {}))
        self.drops.update(out.get("drops", {}))
        self.network_drops.update(out.get("network_drops", {}))
        self.events.update(out.get("events", {}))
        self.behaviours.update(out.get("behaviours", []))
        self.rule_kinds.update(out.get("rule_kinds", []))
        self.sizes[str(out.get("nodes"))] += 1
        self.profiles[str(out.get("profile"))] += 1
        self.steps += int(out.get("steps", 0))

    def to_dict(self) -> dict[str, Any]:
        def counts(c: Counter) -> dict[str, int]:
            return dict(sorted(c.items()))

        return {
            "seed": self.seed, "jobs": self.jobs, "runs": self.runs, "ok_runs": self.ok_runs,
            "violating_runs": self.violating_runs, "violations": self.violations,
            "unfinished": self.unfinished,
            "stopped": self.stopped,
            "wall_s": round(self.wall_s, 3),
            "runs_per_s": round(self.runs / self.wall_s, 3) if self.wall_s > 0 else None,
            "active_window": {
                "runs_with_faults": self.runs_with_faults,
                "runs_with_every_fault_inside": self.faults_inside_window,
                "faults": self.faults, "faults_inside": self.faults_inside,
            },
            "coverage": {
                "view_changes": self.view_changes,
                "runs_with_view_change": self.runs_with_view_change,
                "state_transfers": self.state_transfers,
                "runs_with_state_transfer": self.runs_with_state_transfer,
                "evidence": counts(self.evidence),
                "drops": counts(self.drops),
                "network_drops": counts(self.network_drops),
                "events": counts(self.events),
                "behaviours": counts(self.behaviours),
                "rule_kinds": counts(self.rule_kinds),
                "nodes": counts(self.sizes),
                "profiles": counts(self.profiles),
                "steps": self.steps,
            },
            "options": {k: (list(v) if isinstance(v, tuple) else v)
                        for k, v in dataclasses.asdict(self.options).items()},
        }


class Campaign:
    """A `bft explore` campaign (see the module docstring).

    `runs` (None: no limit) and `time_s` (None: no limit) bound it; without both it runs
    until a violation. `out` (a directory) receives the failing scenarios and summary.json.
    `replica_class` (a class or "module:Class") or `node_factory` (`NodeContext -> node`)
    build every replica; with `jobs` > 1 they must be picklable (module-level).
    `progress(summary, elapsed_s, total)` is called as runs finish.
    """

    def __init__(self, *, seed: int = 0, runs: int | None = 100, time_s: float | None = None,
                 jobs: int | None = None, options: ExploreOptions | None = None,
                 out: str | Path | None = None, keep_going: bool = False,
                 replica_class: Any = None, node_factory: Any = None,
                 shrink_runs: int = 150,
                 progress: Callable[[Summary, float, int | None], None] | None = None) -> None:
        self.seed = seed
        self.runs = runs
        self.time_s = time_s
        self.jobs = max(1, jobs if jobs is not None else (os.cpu_count() or 1))
        self.options = options or ExploreOptions()
        self.options.validate()
        self.out = Path(out) if out is not None else None
        self.keep_going = keep_going
        self.replica_class = replica_class
        self.node_factory = node_factory
        self.shrink_runs = shrink_runs
        self.progress = progress
        if self.jobs > 1:
            for what in (replica_class, node_factory):
                try:
                    pickle.dumps(what)
                except (pickle.PicklingError, AttributeError, TypeError) as exc:
                    raise ConfigError(f"cannot hand {what!r} to worker processes ({exc})",
                                      field="replica_class",
                                      fix="define it at module level, or use jobs=1") from None

    def _run(self, scenario: Scenario) -> dict[str, Any]:
        return run_one(scenario, replica_class=self.replica_class,
                       node_factory=self.node_factory)

    def _results(self, stop: Callable[[], bool]) -> Iterable[dict[str, Any]]:
        """Results as runs finish. Once `stop()` is true no new run starts; the runs already
        started are still reported, so every run below the highest index started is in."""
        args = (self.options, self.replica_class, self.node_factory)
        limit = self.runs if self.runs is not None else math.inf
        if self.jobs == 1:
            index = 0
            while index < limit and not stop():
                yield _task((self.seed, index, *args))
                index += 1
            return
        context = multiprocessing.get_context("spawn")
        with concurrent.futures.ProcessPoolExecutor(self.jobs, mp_context=context) as pool:
            pending: set[concurrent.futures.Future] = set()
            index = 0
            while True:
                while index < limit and len(pending) < 2 * self.jobs and not stop():
                    pending.add(pool.submit(_task, (self.seed, index, *args)))
                    index += 1
                if not pending:
                    return
                done, pending = concurrent.futures.wait(
                    pending, return_when=concurrent.futures.FIRST_COMPLETED)
                for future in sorted(done, key=lambda fu: fu.result()["index"]):
                    yield future.result()

    def run(self) -> Summary:
        """Run the campaign; the summary (also written to OUT/summary.json)."""
        summary = Summary(self.seed, self.options, self.jobs)
        started = time.perf_counter()
        failing: list[dict[str, Any]] = []

        def stop() -> bool:
            if failing and not self.keep_going:
                summary.stopped = "violation"
                return True
            if self.time_s is not None and time.perf_counter() - started >= self.time_s:
                summary.stopped = "time"
                return True
            return False

        for out in self._results(stop):
            summary.add(out)
            if out.get("outcome") == "violation":
                failing.append(out)
            if self.progress is not None:
                self.progress(summary, time.perf_counter() - started, self.runs)
        summary.stopped = summary.stopped or "runs"
        for out in sorted(failing, key=lambda o: o["index"]):
            summary.violations.append(self._report(out))
        summary.unfinished.sort(key=lambda u: u["run"])
        if self.out is not None:
            for entry in summary.unfinished:
                scenario = draw_scenario(self.seed, entry["run"], self.options)
                self.out.mkdir(parents=True, exist_ok=True)
                path = self.out / f"unfinished-{entry['run']}.toml"
                entry["scenario"] = str(scenario.write(path))
        summary.wall_s = time.perf_counter() - started
        if self.out is not None:
            self.out.mkdir(parents=True, exist_ok=True)
            (self.out / "summary.json").write_text(
                json.dumps(summary.to_dict(), indent=2, sort_keys=True) + "\n", encoding="utf-8")
        return summary

    def _report(self, out: dict[str, Any]) -> dict[str, Any]:
        """A violation's entry in the summary: shrunk, written as scenario files if `out`."""
        index = out["index"]
        scenario = draw_scenario(self.seed, index, self.options)
        kind = out.get("kind") or "explore"
        report: dict[str, Any] = {"run": index, "seed": out.get("seed"), "kind": kind,
                                  "violations": out.get("violations", [])[:5]}
        small, small_run, tries = scenario, None, 0
        if kind != "explore" and self.shrink_runs > 0:
            small, small_run, tries = shrink(scenario, kind, self._run,
                                             max_runs=self.shrink_runs)
        report["shrink_runs"] = tries
        report["rules"] = [f"{r.node}:{r.behaviour}" for r in small.rules]
        report["network"] = [r.kind for r in small.network]
        if small_run is not None:
            report["shrunk_violations"] = small_run.get("violations", [])[:5]
        if self.out is not None:
            self.out.mkdir(parents=True, exist_ok=True)
            first = (out.get("violations") or [""])[0]
            original = dataclasses.replace(
                scenario, description=f"{scenario.description}; {first}"[:400])
            report["original"] = str(original.write(self.out / f"run-{index}.toml"))
            shown = (small_run.get("violations") or [first])[0] if small_run else first
            shrunk = dataclasses.replace(
                small, description=f"{scenario.description}, shrunk; {shown}"[:400])
            report["scenario"] = str(shrunk.write(self.out / f"run-{index}-shrunk.toml"))
            report["replay"] = f"bft sim --scenario {report['scenario']}"
        return report


# --------------------------------------------------------------------------
# The command line
# --------------------------------------------------------------------------


def _sizes(text: str) -> tuple[int, ...]:
    import argparse

    try:
        sizes = tuple(int(part) for part in text.split(",") if part.strip())
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected sizes like 4,7, got {text!r}") from None
    if not sizes or any(n < 4 or (n - 1) % 3 for n in sizes):
        raise argparse.ArgumentTypeError(f"each size must be 3f+1 >= 4, got {text!r}")
    return sizes


def _known(text: str, known: Iterable[str], what: str) -> tuple[str, ...]:
    import argparse

    names = tuple(part.strip() for part in text.split(",") if part.strip())
    known = tuple(known)
    unknown = [name for name in names if name not in known]
    if unknown or not names:
        problem = f"unknown {what} {unknown[0]!r}" if unknown else f"no {what} given"
        raise argparse.ArgumentTypeError(f"{problem} (known: {', '.join(known)})")
    return names


def _behaviour_names(text: str) -> tuple[str, ...]:
    return _known(text, _behaviours.BEHAVIOURS, "behaviour")


def _kind_names(text: str) -> tuple[str, ...]:
    return _known(text, _netfaults.KINDS, "network rule kind")


def _profile_names(text: str) -> tuple[str, ...]:
    import argparse

    names = tuple(x.strip() for x in text.split(",") if x.strip())
    unknown = [x for x in names if x not in PROFILES]
    if unknown or not names:
        raise argparse.ArgumentTypeError(
            f"unknown profile {unknown[0]!r}; known: {', '.join(PROFILES)}" if unknown
            else "give at least one profile")
    return names


def add_explore_arguments(parser: Any) -> None:
    """Add the `bft explore` options to an argparse (sub)parser."""
    from adversary.simcli import non_negative_int, positive_int, seconds

    parser.add_argument("--nodes", type=_sizes, default=(4, 7), metavar="4|7|4,7",
                        help="cluster sizes drawn (default 4,7)")
    parser.add_argument("--runs", type=positive_int, default=None, metavar="N",
                        help="stop after N runs (default 1000 unless --time is given)")
    parser.add_argument("--time", type=seconds, default=None, metavar="SECONDS",
                        help="stop after this many seconds of wall time")
    parser.add_argument("--jobs", type=positive_int, default=None, metavar="J",
                        help="worker processes (default: every core)")
    parser.add_argument("--seed", type=non_negative_int, default=None, metavar="S",
                        help="campaign seed (run i draws from seed and i; default: random)")
    parser.add_argument("--out", default="explore-out", metavar="DIR",
                        help="where failing scenarios and summary.json go (default "
                             "explore-out)")
    parser.add_argument("--keep-going", action="store_true",
                        help="do not stop at the first violation")
    parser.add_argument("--behaviours", type=_behaviour_names, default=None, metavar="LIST",
                        help="behaviours to draw, comma-separated (default: every one)")
    parser.add_argument("--network", type=_kind_names, default=None, metavar="LIST",
                        help="network rule kinds to draw, comma-separated (default: every one)")
    parser.add_argument("--profiles", type=_profile_names, default=None, metavar="LIST",
                        help="run profiles to draw, comma-separated (default: every one, "
                             f"weighted): {', '.join(PROFILES)}")
    parser.add_argument("--max-requests", type=positive_int, default=25, metavar="R",
                        help="most requests per client (default 25)")
    parser.add_argument("--liveness-bound", type=seconds, default=DEFAULT_LIVENESS_BOUND_S,
                        metavar="SECONDS",
                        help="a request must complete this long after faults stop (default 30)")
    parser.add_argument("--shrink-runs", type=non_negative_int, default=150, metavar="N",
                        help="most simulations spent shrinking each violation (default 150)")
    parser.add_argument("--replica", default=None, metavar="MODULE:CLASS",
                        help="run this Replica subclass on every node (e.g. a planted bug)")
    parser.add_argument("--quiet", action="store_true", help="no progress line")


def _progress_printer(stream: Any) -> Callable[[Summary, float, int | None], None]:
    tty = getattr(stream, "isatty", lambda: False)()
    last = [0.0]

    def show(summary: Summary, elapsed: float, total: int | None) -> None:
        if elapsed - last[0] < (0.2 if tty else 10.0) and summary.runs != total:
            return
        last[0] = elapsed
        rate = summary.runs / elapsed if elapsed > 0 else 0.0
        eta = f", ETA {max(0.0, (total - summary.runs) / rate):.0f} s" \
            if total is not None and rate > 0 else ""
        line = (f"bft explore: {summary.runs}{'/' + str(total) if total else ''} runs, "
                f"{summary.violating_runs} violations, {len(summary.unfinished)} unfinished, "
                f"{rate:.1f} runs/s{eta}")
        stream.write(("\r" + line + "\x1b[K") if tty else line + "\n")
        stream.flush()

    return show


def run_explore_command(args: Any) -> int:
    """Run `bft explore`; 0 without violations, 1 with, 2 for bad arguments."""
    import secrets

    seed = args.seed if args.seed is not None else secrets.randbits(32)
    runs = args.runs if args.runs is not None else (None if args.time is not None else 1000)
    options = ExploreOptions(nodes=args.nodes, behaviours=args.behaviours,
                             network_kinds=args.network, max_requests=args.max_requests,
                             liveness_bound_s=args.liveness_bound, profiles=args.profiles)
    try:
        if args.replica is not None:
            _resolve(args.replica)  # a clear error now, not in every worker
        campaign = Campaign(seed=seed, runs=runs, time_s=args.time, jobs=args.jobs,
                            options=options, out=args.out, keep_going=args.keep_going,
                            replica_class=args.replica, shrink_runs=args.shrink_runs,
                            progress=None if args.quiet else _progress_printer(sys.stderr))
    except ConfigError as exc:
        parser = getattr(args, "explore_parser", None)
        if parser is not None:
            parser.error(str(exc))  # exits 2
        print(f"bft explore: error: {exc}", file=sys.stderr)
        return 2
    print(f"bft explore: seed {seed}, {campaign.jobs} workers, writing to {args.out}",
          file=sys.stderr, flush=True)
    summary = campaign.run()
    if not args.quiet and getattr(sys.stderr, "isatty", lambda: False)():
        sys.stderr.write("\n")
    print(json.dumps(summary.to_dict(), indent=2, sort_keys=True))
    return 1 if summary.violations else 0


def main(argv: list[str] | None = None) -> int:
    """Stand-alone entry point (`python -m adversary.explore`)."""
    import argparse

    parser = argparse.ArgumentParser(prog="bft explore", description=__doc__.splitlines()[0])
    add_explore_arguments(parser)
    parser.set_defaults(explore_parser=parser)
    return run_explore_command(parser.parse_args(argv))


if __name__ == "__main__":
    sys.exit(main())
