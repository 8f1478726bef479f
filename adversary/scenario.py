"""Scenarios as configuration: who misbehaves, how and when; what the network does.

A scenario is TOML, in a file of its own or inside a cluster config:

```toml
description = "The primary equivocates; 5 % loss until 10 s."

[sim]                      # optional: defaults for `bft sim --scenario` (CLI flags win)
nodes = 4
seed = 7
requests = 10              # also: clients, keys, think_ms, delay_ms, until_s, liveness_bound_s,
                           # checkpoint_interval, log_window, drain_s, max_events (SIM_KEYS)

[[adversary]]
node = 0
behaviour = "equivocate"   # lie | equivocate | pause | crash | crash-at | silent | replay |
                           # clock-skew | slow | withhold | bogus-chunks | bad-new-view
start = 0.5                # seconds from the start (default 0)
stop = 20                  # optional: for good if absent
params = { overlap = 1 }   # optional: the behaviour's parameters (adversary.behaviours.PARAMS)

[[network]]
kind = "drop"              # drop | delay | duplicate | reorder | corrupt | partition
rate = 0.05                # drop/duplicate/reorder/corrupt: a probability
stop = 10                  # delay: delay_ms (+ jitter_ms); partition: groups = [[0, 1], [2, 3]]

[[network]]                # targeted: only the messages every given field matches
kind = "drop"
rate = 1.0
kinds = ["commit"]         # request | pre_prepare | prepare | commit | reply | checkpoint |
                           # view_change | new_view | status | fetch | fetch_state | state_chunk
to = [3]                   # receivers; `from`: senders (replica ids)
views = [0, 0]             # rounds, not seconds (ByzzFuzz); `seqs = [LO, HI]` likewise

[[attack]]                 # optional, real processes only (`bft up --scenario`): one
kind = "sigflood"          # `bft attack` process per entry: sigflood | control | fragments |
rate = 5000                # malformed | replay | status; datagrams/s (<= 200000)
at = 2.0                   # seconds after the nodes are ready (default 0)
duration = 5.0             # seconds (default 10, <= 600); also target, seed, sources,
                           # as_replica (adversary/attack.py)

[workload]                 # optional, simulator only
kind = "fencing"           # random (default) | fencing (the fencing-token story)
lease_ms = 1000
pause_s = 3.0
```

In a cluster config, whose `[network]` table holds the transport settings,
the network faults go in `[[network.faults]]` instead; the cluster's own
sections are left to `bft.config`. Anything unknown or out of range raises
`ConfigError` naming the file and the field (`adversary[1].params.rate`).

`load_scenario(path)` / `parse_scenario(data, source)` read one,
`Scenario.to_toml()` writes it back (a shrunk hypothesis example becomes a
replayable file), `Scenario.sim_config(...)` turns it into a `SimConfig`,
`parse_byzantine_spec("0:equivocate,3:lie")` reads the CLI shorthand and
`load_factory("module:factory")` loads a user's application factory.
"""

from __future__ import annotations

import math
import tomllib
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from adversary.behaviours import BehaviourRule, make_rule
from adversary.netfaults import NetworkRule, make_network_rule
from bft.config import toml_value
from bft.cliutil import load_factory  # noqa: F401 - here too, where it was first
from bft.errors import ConfigError

#: [sim] key -> (kind, check); kinds as in `_sim_value`.
SIM_KEYS: dict[str, str] = {
    "nodes": "count", "seed": "int", "clients": "int", "requests": "int", "keys": "count",
    "until_s": "seconds", "liveness_bound_s": "seconds", "checkpoint_interval": "count",
    "log_window": "count", "drain_s": "nonneg", "think_ms": "range", "delay_ms": "range",
    "max_events": "count",
}
WORKLOADS = ("random", "fencing")
_RULE_KEYS = ("node", "behaviour", "start", "stop", "params")
_NET_KEYS = ("kind", "rate", "delay_ms", "jitter_ms", "groups", "start", "stop", "nodes",
             "kinds", "from", "to", "views", "seqs")
_TOP_KEYS = ("description", "sim", "workload", "adversary", "network", "attack")
#: Sections of a cluster config (left to bft.config when a scenario lives in one).
_CLUSTER_SECTIONS = ("cluster", "nodes", "clients", "telemetry", "batching", "checkpoints",
                     "timeouts", "storage", "limits")

DEFAULT_UNTIL_S = 60.0


@dataclass(frozen=True, slots=True)
class Scenario:
    """A validated scenario: behaviour rules, network faults, simulator settings, workload."""

    rules: tuple[BehaviourRule, ...] = ()
    network: tuple[NetworkRule, ...] = ()
    sim: Mapping[str, Any] = field(default_factory=dict)
    workload: Mapping[str, Any] = field(default_factory=dict)
    description: str = ""
    source: str | None = None
    #: `[[attack]]` entries (adversary.attack.AttackSpec): `bft attack` processes that
    #: `bft up --scenario` runs beside the nodes; the simulator has no sockets to attack
    attacks: tuple[Any, ...] = ()

    def rules_for(self, node: int) -> tuple[BehaviourRule, ...]:
        """The behaviour rules of replica `node`."""
        return tuple(r for r in self.rules if r.node == node)

    @property
    def until_s(self) -> float:
        """The virtual time limit of a simulated run ([sim] until_s, default 60)."""
        return float(self.sim.get("until_s", DEFAULT_UNTIL_S))

    def check_nodes(self, n: int) -> None:
        """ConfigError naming the field if a rule names a replica outside 0..n-1."""
        for k, r in enumerate(self.rules):
            if not 0 <= r.node < n:
                raise ConfigError(f"replica {r.node} is not in 0..{n - 1}", file=self.source,
                                  field=f"adversary[{k}].node")
        for k, r in enumerate(self.network):
            for i in r.replica_ids():
                if not 0 <= i < n:
                    raise ConfigError(f"replica {i} is not in 0..{n - 1}", file=self.source,
                                      field=f"network[{k}]")
        for k, a in enumerate(self.attacks):
            a.check_nodes(n, self.source, f"attack[{k}].")

    def with_rules(self, *rules: BehaviourRule) -> Scenario:
        """This scenario with more behaviour rules."""
        return replace(self, rules=self.rules + tuple(rules))

    def with_network(self, *rules: NetworkRule) -> Scenario:
        """This scenario with more network faults."""
        return replace(self, network=self.network + tuple(rules))

    # -- the simulator ---------------------------------------------------

    def sim_config(self, **overrides: Any) -> Any:
        """The `SimConfig` of this scenario: [sim] settings, rules, network faults and the
        workload; keyword `overrides` (SimConfig fields) win over the [sim] table."""
        from adversary.sim import SimConfig

        values: dict[str, Any] = {}
        sim = dict(self.sim)
        for key, name in (("nodes", "nodes"), ("seed", "seed"), ("clients", "clients"),
                          ("requests", "requests"), ("keys", "key_count"),
                          ("liveness_bound_s", "liveness_bound_s"), ("drain_s", "drain_s"),
                          ("max_events", "max_events")):
            if key in sim:
                values[name] = sim[key]
        for key in ("think_ms", "delay_ms"):
            if key in sim:
                values[key] = tuple(sim[key])
        cluster = {k: sim[k] for k in ("checkpoint_interval", "log_window") if k in sim}
        if cluster:
            values["cluster_overrides"] = cluster
        values["adversary"] = self.rules
        values["net_faults"] = self.network
        if self.workload.get("kind") == "fencing":
            from adversary.workloads import FencingStory

            story = FencingStory(lease_ms=int(self.workload.get("lease_ms", 1000)),
                                 pause_s=float(self.workload.get("pause_s", 3.0)))
            values["workload_factory"] = story.workload
            values["clients"] = max(2, int(values.get("clients", 2)))
        values.update(overrides)
        config = SimConfig(**values)
        self.check_nodes(config.build_cluster().n)
        return config

    # -- writing ---------------------------------------------------------

    def to_dict(self) -> dict[str, Any]:
        """The TOML tables of this scenario as plain data."""
        out: dict[str, Any] = {}
        if self.description:
            out["description"] = self.description
        if self.sim:
            out["sim"] = dict(self.sim)
        if self.workload:
            out["workload"] = dict(self.workload)
        rules = []
        for r in self.rules:
            d: dict[str, Any] = {"node": r.node, "behaviour": r.behaviour, "start": r.start_s}
            if r.stop_s is not None:
                d["stop"] = r.stop_s
            params = _non_default(r)
            if params:
                d["params"] = params
            rules.append(d)
        if rules:
            out["adversary"] = rules
        if self.network:
            out["network"] = [r.to_dict() for r in self.network]
        if self.attacks:
            out["attack"] = [a.to_dict() for a in self.attacks]
        return out

    def to_toml(self) -> str:
        """TOML text that `parse_scenario` reads back to an equal scenario."""
        d = self.to_dict()
        lines = []
        if "description" in d:
            lines.append(f"description = {toml_value(d['description'])}")
        for table in ("sim", "workload"):
            if table in d:
                lines += ["", f"[{table}]"]
                lines += [f"{k} = {toml_value(v)}" for k, v in d[table].items()]
        for array in ("adversary", "network", "attack"):
            for item in d.get(array, ()):
                lines += ["", f"[[{array}]]"]
                lines += [f"{k} = {toml_value(v)}" for k, v in item.items()]
        return "\n".join(lines).lstrip("\n") + "\n"

    def write(self, path: str | Path) -> Path:
        """Write `to_toml()` to `path`; returns the path."""
        path = Path(path)
        path.write_text(self.to_toml(), encoding="utf-8")
        return path


def _non_default(rule: BehaviourRule) -> dict[str, Any]:
    from adversary.behaviours import PARAMS

    spec = PARAMS[rule.behaviour]
    return {k: v for k, v in rule.params.items() if k not in spec or spec[k].default != v}



# --------------------------------------------------------------------------
# Reading
# --------------------------------------------------------------------------


def _reject_unknown(table: Mapping[str, Any], known: tuple[str, ...], file: str | None,
                    where: str) -> None:
    for key in table:
        if key not in known:
            import difflib

            close = difflib.get_close_matches(str(key), known, n=1)
            raise ConfigError(f"unknown key {key!r}", file=file,
                              field=f"{where}.{key}" if where else str(key),
                              fix=f"did you mean {close[0]!r}?" if close else
                              f"known: {', '.join(known)}")


def _table(value: Any, file: str | None, where: str) -> Mapping[str, Any]:
    if not isinstance(value, Mapping):
        raise ConfigError(f"expected a table, got {type(value).__name__}", file=file, field=where)
    return value


def _array(value: Any, file: str | None, where: str) -> list[Mapping[str, Any]]:
    if not isinstance(value, list) or not all(isinstance(v, Mapping) for v in value):
        raise ConfigError("expected an array of tables", file=file, field=where,
                          fix=f"write each one as [[{where}]]")
    return value


def _sim_value(key: str, value: Any, file: str | None) -> Any:
    kind = SIM_KEYS[key]
    where = f"sim.{key}"
    if kind == "range":
        if not isinstance(value, list) or len(value) != 2 or not all(
                isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)
                for v in value) or not 0 <= value[0] <= value[1]:
            raise ConfigError(f"expected [LO, HI] milliseconds with 0 <= LO <= HI, got {value!r}",
                              file=file, field=where)
        return [float(value[0]), float(value[1])]
    if kind in ("int", "count"):
        if isinstance(value, bool) or not isinstance(value, int) or value < (
                1 if kind == "count" else 0):
            raise ConfigError(f"expected an integer >= {1 if kind == 'count' else 0}, "
                              f"got {value!r}", file=file, field=where)
        return value
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value) \
            or value < 0 or (kind == "seconds" and value == 0):
        raise ConfigError(f"expected {'seconds > 0' if kind == 'seconds' else 'a number >= 0'}, "
                          f"got {value!r}", file=file, field=where)
    return float(value)


def parse_scenario(data: Mapping[str, Any], source: str | Path | None = None) -> Scenario:
    """A validated Scenario from parsed TOML (see the module docstring)."""
    file = str(source) if source is not None else None
    data = _table(data, file, "")
    in_cluster_config = any(k in data for k in ("cluster", "nodes"))
    known = _TOP_KEYS + (_CLUSTER_SECTIONS if in_cluster_config else ())
    _reject_unknown(data, known, file, "")
    description = data.get("description", "")
    if not isinstance(description, str):
        raise ConfigError("expected text", file=file, field="description")

    sim: dict[str, Any] = {}
    if "sim" in data:
        table = _table(data["sim"], file, "sim")
        _reject_unknown(table, tuple(SIM_KEYS), file, "sim")
        sim = {k: _sim_value(k, v, file) for k, v in table.items()}

    workload: dict[str, Any] = {}
    if "workload" in data:
        table = _table(data["workload"], file, "workload")
        kind = table.get("kind", "random")
        if kind not in WORKLOADS:
            raise ConfigError(f"unknown workload {kind!r}", file=file, field="workload.kind",
                              fix=f"known: {', '.join(WORKLOADS)}")
        if kind == "fencing":
            _reject_unknown(table, ("kind", "lease_ms", "pause_s"), file, "workload")
            lease = table.get("lease_ms", 1000)
            pause = table.get("pause_s", 3.0)
            if isinstance(lease, bool) or not isinstance(lease, int) or lease <= 0:
                raise ConfigError(f"expected milliseconds > 0, got {lease!r}", file=file,
                                  field="workload.lease_ms")
            if isinstance(pause, bool) or not isinstance(pause, (int, float)) \
                    or not math.isfinite(pause) or pause * 1000 <= lease:
                raise ConfigError(f"the pause must outlast the lease ({lease} ms), got {pause!r}",
                                  file=file, field="workload.pause_s")
            workload = {"kind": kind, "lease_ms": lease, "pause_s": float(pause)}
        else:
            _reject_unknown(table, ("kind",), file, "workload")
            workload = {"kind": kind}

    rules = []
    for k, item in enumerate(_array(data.get("adversary", []), file, "adversary")):
        where = f"adversary[{k}]"
        _reject_unknown(item, _RULE_KEYS, file, where)
        for required in ("node", "behaviour"):
            if required not in item:
                raise ConfigError("missing", file=file, field=f"{where}.{required}")
        params = item.get("params", {})
        if not isinstance(params, Mapping):
            raise ConfigError("expected a table", file=file, field=f"{where}.params",
                              fix="e.g. params = { rate = 0.5 }")
        rules.append(make_rule(item["node"], item["behaviour"], start_s=item.get("start", 0.0),
                               stop_s=item.get("stop"), params=params, file=file, field=where))

    network_items: Any = data.get("network", [])
    where_net = "network"
    if isinstance(network_items, Mapping):  # a cluster config's [network] table
        _reject_unknown(network_items, ("faults", "max_datagram_bytes", "status_interval_s"),
                        file, "network")
        network_items = network_items.get("faults", [])
        where_net = "network.faults"
    network = []
    for k, item in enumerate(_array(network_items, file, where_net)):
        where = f"{where_net}[{k}]"
        _reject_unknown(item, _NET_KEYS, file, where)
        if "kind" not in item:
            raise ConfigError("missing", file=file, field=f"{where}.kind")
        network.append(make_network_rule(
            item["kind"], rate=item.get("rate"), delay_ms=item.get("delay_ms"),
            jitter_ms=item.get("jitter_ms"), groups=item.get("groups"),
            start_s=item.get("start", 0.0), stop_s=item.get("stop"), nodes=item.get("nodes"),
            kinds=item.get("kinds"), senders=item.get("from"), receivers=item.get("to"),
            views=item.get("views"), seqs=item.get("seqs"), file=file, field=where))

    attacks: tuple[Any, ...] = ()
    if "attack" in data:
        from adversary.attack import parse_attacks

        attacks = parse_attacks(data["attack"], file)
    scenario = Scenario(tuple(rules), tuple(network), sim, workload, description, file, attacks)
    crashes = [r.node for r in scenario.rules if r.behaviour == "crash"]
    for node in crashes:
        if crashes.count(node) > 1:
            k = [i for i, r in enumerate(scenario.rules) if r.behaviour == "crash"
                 and r.node == node][1]
            raise ConfigError(f"replica {node} crashes twice", file=file,
                              field=f"adversary[{k}]", fix="one crash rule per replica")
    if "nodes" in sim:
        scenario.check_nodes(sim["nodes"])
    return scenario


def load_scenario(path: str | Path) -> Scenario:
    """Read a scenario file (or the scenario tables of a cluster config); ConfigError naming the
    file for anything wrong."""
    path = Path(path)
    try:
        text = path.read_bytes().decode("utf-8")
    except FileNotFoundError:
        raise ConfigError("scenario file not found", file=str(path),
                          fix="see configs/scenarios/ for examples") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError(f"cannot read scenario file: {exc}", file=str(path)) from None
    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"invalid TOML: {exc}", file=str(path)) from None
    return parse_scenario(data, source=path)


def parse_byzantine_spec(text: str) -> tuple[BehaviourRule, ...]:
    """`ID:BEHAVIOUR[,ID:BEHAVIOUR]` (default parameters, for the whole run); ConfigError for an
    unknown behaviour or a bad id."""
    rules = []
    for part in text.split(","):
        part = part.strip()
        if not part:
            continue
        node_text, colon, name = part.partition(":")
        if not colon or not node_text.strip().isdigit() or not name.strip():
            raise ConfigError(f"expected ID:BEHAVIOUR, got {part!r}", field="--byzantine",
                              fix="e.g. --byzantine 0:equivocate,3:lie")
        rules.append(make_rule(int(node_text), name.strip(), field="--byzantine"))
    if not rules:
        raise ConfigError("no ID:BEHAVIOUR given", field="--byzantine")
    return tuple(rules)
