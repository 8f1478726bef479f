"""Hypothesis strategies that draw adversarial scenarios (needs `hypothesis`).

* `behaviour_rules(node)`: one behaviour rule for replica `node`, with small
  parameters and a window inside the first seconds of the run;
* `network_rules(n)`: one network fault that ends (so liveness can be
  judged after it);
* `scenarios(...)`: a whole `Scenario`: a cluster size, at most f faulty
  replicas (each with one or two rules), a few network faults and the
  `[sim]` settings (seed, requests, think time) that make it replayable with
  `bft sim --scenario FILE`.

Everything drawn shrinks toward fewer rules, fewer faults, smaller numbers
and earlier times, so a failure shrinks to a short scenario file.
"""

from __future__ import annotations

from typing import Any

from hypothesis import strategies as st

from adversary.behaviours import BEHAVIOURS, CRASH_EVENTS, BehaviourRule, make_rule
from adversary.netfaults import KINDS, NetworkRule, make_network_rule
from adversary.scenario import Scenario

#: Behaviours drawn by default (all of them; "equivocate" also draws Twins).
DEFAULT_BEHAVIOURS: tuple[str, ...] = BEHAVIOURS

_times = st.sampled_from([0.0, 0.1, 0.3, 0.5, 1.0, 2.0])
_durations = st.sampled_from([0.5, 1.0, 2.0, 3.0])


def _params(behaviour: str) -> st.SearchStrategy[dict[str, Any]]:
    if behaviour == "lie":
        return st.fixed_dictionaries({"rate": st.sampled_from([0.5, 1.0, 0.2])})
    if behaviour == "equivocate":
        return st.fixed_dictionaries({"overlap": st.sampled_from([1, 0, 2]),
                                      "mode": st.sampled_from(["split", "twins"])})
    if behaviour == "pause":
        return st.fixed_dictionaries({"duration_s": _durations})
    if behaviour == "crash":
        return st.fixed_dictionaries({"restart_after_s": _durations,
                                      "restart": st.sampled_from([True, False])})
    if behaviour == "replay":
        return st.fixed_dictionaries({"count": st.integers(1, 4),
                                      "interval_s": st.sampled_from([0.1, 0.05, 0.3])})
    if behaviour == "clock-skew":
        return st.fixed_dictionaries({"offset_s": st.sampled_from([5.0, -5.0, 0.5, -30.0]),
                                      "drift_ppm": st.sampled_from([0.0, 1000.0, -50000.0])})
    if behaviour == "slow":
        return st.fixed_dictionaries({"delay_ms": st.sampled_from([100.0, 20.0, 400.0]),
                                      "jitter_ms": st.sampled_from([0.0, 20.0])})
    if behaviour == "withhold":
        return st.fixed_dictionaries({"certs": st.sampled_from([1.0, 0.5]),
                                      "checkpoint_back": st.sampled_from([0, 1, 2]),
                                      "silent_after_checkpoint": st.sampled_from([0, 4, 8])})
    if behaviour == "bogus-chunks":
        return st.fixed_dictionaries({"mode": st.sampled_from(["ahead", "instead"]),
                                      "push": st.booleans()})
    if behaviour == "bad-new-view":
        return st.fixed_dictionaries({"mode": st.sampled_from(["split", "wrong_o",
                                                               "reissue"])})
    if behaviour == "crash-at":
        return st.fixed_dictionaries({"event": st.sampled_from(list(CRASH_EVENTS)),
                                      "when": st.sampled_from(["after", "before"]),
                                      "restart_after_s": _durations})
    return st.just({})


@st.composite
def behaviour_rules(draw: Any, node: int, behaviours: tuple[str, ...] = DEFAULT_BEHAVIOURS
                    ) -> BehaviourRule:
    """One validated rule for replica `node`: a behaviour, small parameters, a window."""
    behaviour = draw(st.sampled_from(behaviours))
    params = draw(_params(behaviour))
    start = draw(_times)
    stop = None
    if behaviour not in ("pause", "crash") and draw(st.booleans()):
        stop = start + draw(_durations)
    return make_rule(node, behaviour, start_s=start, stop_s=stop, params=params)


@st.composite
def network_rules(draw: Any, n: int, kinds: tuple[str, ...] = KINDS) -> NetworkRule:
    """One network fault of `kinds` that ends within a few seconds."""
    kind = draw(st.sampled_from(kinds))
    start = draw(_times)
    stop = start + draw(_durations)
    if kind == "partition":
        members = draw(st.permutations(range(n)))
        cut = draw(st.integers(1, n - 1))
        return make_network_rule(kind, groups=[sorted(members[:cut])], start_s=start,
                                 stop_s=stop)
    if kind == "delay":
        return make_network_rule(kind, delay_ms=draw(st.sampled_from([20.0, 5.0, 100.0])),
                                 jitter_ms=draw(st.sampled_from([0.0, 10.0])), start_s=start,
                                 stop_s=stop)
    rate = draw(st.sampled_from([0.1, 0.05, 0.2, 0.3]))
    return make_network_rule(kind, rate=rate, start_s=start, stop_s=stop)


@st.composite
def scenarios(draw: Any, *, nodes: st.SearchStrategy[int] | None = None,
              behaviours: tuple[str, ...] = DEFAULT_BEHAVIOURS, max_faulty: int | None = None,
              network: bool = True, max_network: int = 2, max_requests: int = 6,
              twins: bool = True) -> Scenario:
    """A replayable scenario with at most `max_faulty` (default f) misbehaving replicas;
    `nodes` draws the cluster size (default 4 or 7)."""
    n = draw(nodes if nodes is not None else st.sampled_from([4, 7]))
    f = (n - 1) // 3
    limit = f if max_faulty is None else max_faulty
    faulty = draw(st.lists(st.integers(0, n - 1), max_size=limit, unique=True))
    rules = []
    for node in faulty:
        for rule in draw(st.lists(behaviour_rules(node, behaviours), min_size=1, max_size=2)):
            crashes = ("crash", "crash-at")
            if rule.behaviour in crashes and any(r.behaviour in crashes for r in rules
                                                 if r.node == node):
                continue  # one crash rule per replica
            if rule.params.get("mode") == "twins" and (not twins or any(
                    r.params.get("mode") == "twins" for r in rules if r.node == node)):
                continue
            rules.append(rule)
    faults = draw(st.lists(network_rules(n), max_size=max_network)) if network else []
    sim = {"nodes": n, "seed": draw(st.integers(0, 2**32 - 1)),
           "requests": draw(st.integers(1, max_requests)), "clients": 2,
           "think_ms": [20.0, draw(st.sampled_from([100.0, 300.0]))]}
    return Scenario(tuple(rules), tuple(faults), sim, {}, "drawn by hypothesis")
