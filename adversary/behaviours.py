"""Byzantine behaviours: one implementation for the simulator and for real nodes.

A behaviour never touches a socket, a clock or the protocol's internals. It
wraps a *correct* replica (`bft.replica.Replica`) and rewrites what goes in
and what comes out:

    message --> [pause: hold] --> inner.receive(message, now, wall') --> effects
                                                                          |
    [lie] -> [equivocate] -> [replay] -> [slow] -> [silent]  <------------+

`ByzantineNode(inner, rules, env)` has the replica's interface
(`start/receive/tick(now, wall) -> list[Effect]`; every other attribute, such
as `view`, `last_executed`, `app`, `timeout`, is the inner replica's), so the
simulator (`adversary/sim.py`) and the Trio runtime (`bft/node.py`, through
`adversary.runtime.install`) drive it exactly like a replica. Whatever it
re-signs it signs with the node's own signer (`env.signer`), and a reply the
replica MAC'd it re-MACs with the node's own reply keys (`env.reply_auth`:
the keys it shares with clients, so it can MAC as itself only); honest nodes
and clients cannot tell a lie by its signature or MAC: only by its content.

The vocabulary (`BEHAVIOURS`; parameters with defaults in `PARAMS`):

* `lie`: wrong digests in PREPARE/COMMIT votes, wrong results in replies,
  bogus checkpoint digests, corrupted or missing signatures (or MACs of
  MAC'd replies), invented requests in a proposed batch. Each lie is
  decided once per protocol slot and repeated identically on every resend:
  a liar is consistent, not an equivocator.
* `equivocate`: as primary, different PRE-PREPAREs for one (view, seq) to
  different peers; as backup, conflicting PREPARE/COMMIT votes. Peers are
  split into two groups (colluding equivocators share the split and the
  alternative digests: `Collusion`); `overlap` peers receive both versions,
  so an honest node holds a proof. `mode = "twins"`: two instances share one
  identity and key (`TwinsNode`, simulator only).
* `pause`: hold every input and run no timer for a while, then resume with
  every stale belief (the held messages are processed late, as after a GC or
  VM pause). `mode = "sigstop"` leaves it to the launcher (a real SIGSTOP /
  SIGCONT of the process); in the simulator both modes are the same.
* `crash`: crash at `start` and restart after `restart_after_s` (a lifecycle
  event: the simulator and the launcher carry it out, not this wrapper).
* `silent`: alive, processing, but sends nothing.
* `replay`: every `interval_s`, resend `count` old validly signed messages
  (its own and others') from a window of recent ones.
* `clock-skew`: the replica's interval clock is off by `offset_s` plus
  `drift_ppm` microseconds per second since the behaviour started.
* `slow`: its own messages leave `delay_ms` (+- `jitter_ms`) late.

Rules (`BehaviourRule`) carry the node, the behaviour, a window `[start_s,
stop_s)` in seconds from the run's origin (the simulator's time 0, or the
node's start), and validated parameters. `judged` says whether the checkers
still judge such a node as correct: a paused, crashed, skewed, slow or
replaying node runs the honest protocol and must stay safe; a liar, an
equivocator or a silent node is Byzantine.
"""

from __future__ import annotations

import collections
import math
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field, replace
from typing import Any

from bft import codec
from bft.crypto import batch_digest, sha256
from bft.effects import Broadcast, Event, Executed, Persist, Reply, SaveSnapshot, Send, SetTimer
from bft.errors import ConfigError
from bft.messages import (
    Batch,
    Checkpoint,
    Commit,
    MacReply,
    Prepare,
    PrePrepare,
    Proposal,
    Request,
    Signed,
)

# --------------------------------------------------------------------------
# Parameters and rules
# --------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Param:
    """One behaviour parameter: its kind, default and, for choices, the allowed values.

    Kinds: "float" (finite), "nonneg" (finite >= 0), "positive" (> 0),
    "probability" ([0, 1]), "int" (>= 0), "bool", "choice" (one of
    `choices`), "choices" (a list of distinct `choices`), "groups" (a list of
    lists of replica ids).
    """

    kind: str
    default: Any
    doc: str
    choices: tuple[str, ...] = ()


LIES = ("vote_digest", "reply_result", "checkpoint_digest", "bad_signature", "no_signature",
        "invented_request")
EQUIVOCATIONS = ("pre_prepare", "prepare", "commit", "checkpoint")

#: behaviour -> parameter -> Param. The vocabulary of scenarios and `--byzantine`.
PARAMS: dict[str, dict[str, Param]] = {
    "lie": {
        "lies": Param("choices", list(LIES), "which lies to tell", LIES),
        "rate": Param("probability", 0.5, "share of messages (slots) lied about"),
    },
    "equivocate": {
        "mode": Param("choice", "split", "split: two versions to two groups of peers; "
                      "twins: two instances share the identity (simulator only)",
                      ("split", "twins")),
        "what": Param("choices", ["pre_prepare", "prepare", "commit"],
                      "which signed statements get a second version", EQUIVOCATIONS),
        "overlap": Param("int", 1, "peers that receive both versions (they hold a proof)"),
        "groups": Param("groups", [], "twins: the peers each twin talks to (default: halves)"),
    },
    "pause": {
        "duration_s": Param("positive", 3.0, "how long the pause lasts (or give `stop`)"),
        "mode": Param("choice", "hold", "hold: the wrapper holds inputs; sigstop: the launcher "
                      "stops the process (same as hold in the simulator)", ("hold", "sigstop")),
    },
    "crash": {
        "restart_after_s": Param("nonneg", 2.0, "restart this long after the crash (or `stop`)"),
        "restart": Param("bool", True, "false: the node stays down"),
    },
    "silent": {},
    "replay": {
        "interval_s": Param("positive", 0.1, "how often old messages are resent"),
        "count": Param("int", 3, "old messages resent each time"),
        "window": Param("int", 256, "how many recent messages are kept to choose from"),
    },
    "clock-skew": {
        "offset_s": Param("float", 5.0, "clock offset in seconds (either sign)"),
        "drift_ppm": Param("float", 0.0, "drift in microseconds per second (either sign)"),
    },
    "slow": {
        "delay_ms": Param("nonneg", 200.0, "extra delay of every message it sends"),
        "jitter_ms": Param("nonneg", 50.0, "uniform jitter around the delay"),
    },
}

#: Behaviour name aliases accepted in scenarios and on the command line.
ALIASES = {"twins": ("equivocate", {"mode": "twins"}), "clock_skew": ("clock-skew", {}),
           "skew": ("clock-skew", {})}

#: Whether the checkers still judge a node with this behaviour as correct.
JUDGED = {"lie": False, "equivocate": False, "silent": False, "pause": True, "crash": True,
          "replay": True, "clock-skew": True, "slow": True}

#: Behaviours carried out by the driver (simulator or launcher), not by the wrapper.
LIFECYCLE = frozenset({"crash"})

BEHAVIOURS: tuple[str, ...] = tuple(PARAMS)


def _check_param(p: Param, value: Any, where: str, file: str | None) -> Any:
    def bad(message: str) -> ConfigError:
        return ConfigError(message, file=file, field=where, fix=p.doc)

    if p.kind == "bool":
        if not isinstance(value, bool):
            raise bad(f"expected true or false, got {value!r}")
        return value
    if p.kind == "int":
        if isinstance(value, bool) or not isinstance(value, int) or value < 0:
            raise bad(f"expected an integer >= 0, got {value!r}")
        return value
    if p.kind in ("float", "nonneg", "positive", "probability"):
        if isinstance(value, bool) or not isinstance(value, (int, float)) \
                or not math.isfinite(value):
            raise bad(f"expected a number, got {value!r}")
        value = float(value)
        if p.kind == "nonneg" and value < 0:
            raise bad(f"must be >= 0, got {value}")
        if p.kind == "positive" and value <= 0:
            raise bad(f"must be > 0, got {value}")
        if p.kind == "probability" and not 0.0 <= value <= 1.0:
            raise bad(f"must be a probability in [0, 1], got {value}")
        return value
    if p.kind == "choice":
        if value not in p.choices:
            raise bad(f"expected one of {', '.join(p.choices)}; got {value!r}")
        return value
    if p.kind == "choices":
        if isinstance(value, str):
            value = [value]
        if not isinstance(value, (list, tuple)) or not all(isinstance(v, str) for v in value):
            raise bad(f"expected a list of names, got {value!r}")
        unknown = [v for v in value if v not in p.choices]
        if unknown:
            raise bad(f"unknown {unknown[0]!r}: expected some of {', '.join(p.choices)}")
        if len(set(value)) != len(value):
            raise bad("a name is listed twice")
        return list(value)
    if p.kind == "groups":
        if not isinstance(value, (list, tuple)) or not all(
                isinstance(g, (list, tuple)) and all(
                    isinstance(i, int) and not isinstance(i, bool) and i >= 0 for i in g)
                for g in value):
            raise bad(f"expected a list of lists of replica ids, got {value!r}")
        return [list(g) for g in value]
    raise AssertionError(f"unknown parameter kind {p.kind}")


def resolve_behaviour(name: Any, *, file: str | None = None, field: str = "behaviour"
                      ) -> tuple[str, dict[str, Any]]:
    """The canonical behaviour name of `name` (aliases resolved) and the parameters the alias
    implies; ConfigError naming `file` and `field` for an unknown one."""
    if not isinstance(name, str):
        raise ConfigError(f"expected a behaviour name, got {name!r}", file=file, field=field)
    if name in ALIASES:
        canonical, implied = ALIASES[name]
        return canonical, dict(implied)
    if name not in PARAMS:
        import difflib

        close = difflib.get_close_matches(name, [*PARAMS, *ALIASES], n=1)
        fix = f"did you mean {close[0]!r}?" if close else f"known: {', '.join(BEHAVIOURS)}"
        raise ConfigError(f"unknown behaviour {name!r}", file=file, field=field, fix=fix)
    return name, {}


def validate_params(behaviour: str, params: Mapping[str, Any] | None, *,
                    file: str | None = None, field: str = "params") -> dict[str, Any]:
    """Every parameter of `behaviour`, given ones checked and the rest defaulted.

    Raises ConfigError naming `file` and the field (e.g. `adversary[1].params.rate`) for an
    unknown parameter or a bad value.
    """
    spec = PARAMS[behaviour]
    params = dict(params or {})
    out: dict[str, Any] = {}
    for key in params:
        if key not in spec:
            known = ", ".join(spec) or "none"
            raise ConfigError(f"unknown parameter {key!r} of behaviour {behaviour!r}",
                              file=file, field=f"{field}.{key}", fix=f"known parameters: {known}")
    for key, p in spec.items():
        value = params.get(key, p.default)
        out[key] = _check_param(p, value, f"{field}.{key}", file) if key in params else (
            list(value) if isinstance(value, list) else value)
    return out


@dataclass(frozen=True, slots=True)
class BehaviourRule:
    """Node `node` behaves as `behaviour` from `start_s` until `stop_s` (None: for good).

    `params` holds every parameter of the behaviour (validated, defaults filled in):
    build rules with `make_rule` (or `adversary.scenario`), which validate.
    """

    node: int
    behaviour: str
    start_s: float = 0.0
    stop_s: float | None = None
    params: Mapping[str, Any] = field(default_factory=dict)

    @property
    def judged(self) -> bool:
        """Whether the checkers still judge the node as correct (see module docstring)."""
        return JUDGED[self.behaviour]

    def window(self) -> tuple[float, float]:
        """The behaviour's active window [start, end) in seconds from the origin (end may be
        inf). A pause lasts `duration_s` unless `stop_s` is given; a crash is an instant."""
        if self.behaviour == "pause" and self.stop_s is None:
            return self.start_s, self.start_s + float(self.params.get("duration_s", 3.0))
        return self.start_s, math.inf if self.stop_s is None else self.stop_s

    def restart_at(self) -> float | None:
        """For `crash`: when the node restarts (None: never)."""
        if self.behaviour != "crash" or not self.params.get("restart", True):
            return None
        if self.stop_s is not None:
            return self.stop_s
        return self.start_s + float(self.params.get("restart_after_s", 2.0))

    def ends_at(self) -> float | None:
        """When the fault is over for liveness purposes (None: never)."""
        if self.behaviour == "crash":
            return self.restart_at()
        end = self.window()[1]
        return None if math.isinf(end) else end

    def to_dict(self) -> dict[str, Any]:
        """Plain data: node, behaviour, start, stop, params, judged."""
        return {"node": self.node, "behaviour": self.behaviour, "start": self.start_s,
                "stop": self.stop_s, "params": dict(self.params), "judged": self.judged}


def make_rule(node: int, behaviour: str, *, start_s: float = 0.0, stop_s: float | None = None,
              params: Mapping[str, Any] | None = None, file: str | None = None,
              field: str = "adversary") -> BehaviourRule:
    """A validated rule (ConfigError naming `file` and `field` for anything wrong)."""
    name, implied = resolve_behaviour(behaviour, file=file, field=f"{field}.behaviour")
    given = {**implied, **dict(params or {})}
    if isinstance(node, bool) or not isinstance(node, int) or node < 0:
        raise ConfigError(f"expected a replica id >= 0, got {node!r}", file=file,
                          field=f"{field}.node")
    for key, value in (("start", start_s), ("stop", stop_s)):
        if value is None:
            continue
        if isinstance(value, bool) or not isinstance(value, (int, float)) \
                or not math.isfinite(value) or value < 0:
            raise ConfigError(f"expected seconds >= 0, got {value!r}", file=file,
                              field=f"{field}.{key}")
    if stop_s is not None and stop_s <= start_s:
        raise ConfigError(f"stop ({stop_s}) must come after start ({start_s})", file=file,
                          field=f"{field}.stop")
    if name in ("pause", "crash") and stop_s is not None and params and (
            "duration_s" in params or "restart_after_s" in params):
        raise ConfigError("give either `stop` or the duration parameter, not both",
                          file=file, field=f"{field}.stop")
    checked = validate_params(name, given, file=file, field=f"{field}.params")
    return BehaviourRule(node, name, float(start_s), None if stop_s is None else float(stop_s),
                         checked)


# --------------------------------------------------------------------------
# The environment a behaviour acts in
# --------------------------------------------------------------------------


class Collusion:
    """What colluding equivocators share: the members, the alternative digests the
    equivocating primary chose, and therefore one split of the honest peers."""

    def __init__(self, members: Iterable[int] = ()) -> None:
        self.members: set[int] = set(members)
        self.alt_digest: dict[tuple[int, int], bytes] = {}  # (view, seq) -> second digest

    def split(self, me: int, n: int, overlap: int) -> tuple[frozenset[int], frozenset[int],
                                                              frozenset[int]]:
        """(group A, group B, overlap) of the peers of `me`: colluders are in A (they get the
        original), the other peers are halved; the first `overlap` of B also get version A."""
        others = [j for j in range(n) if j != me and j not in self.members]
        half = (len(others) + 1) // 2
        group_a = frozenset(others[:half]) | (frozenset(self.members) - {me})
        group_b = frozenset(others[half:])
        both = frozenset(sorted(group_b)[:overlap])
        return group_a, group_b, both


@dataclass(slots=True)
class BehaviourEnv:
    """What a behaviour may use: who it is, its signer, a seeded Random, the shared
    collusion, the origin of its time windows (None: the `now` of `start()`), and its
    replica's `bft.auth.ReplyAuth` (None: its replies are signed)."""

    node_id: int
    n: int
    signer: Any
    rng: Any
    collusion: Collusion = field(default_factory=Collusion)
    origin_s: float | None = None
    max_backlog: int = 20_000
    external_sigstop: bool = False  # a launcher carries out `pause` rules with mode "sigstop"
    reply_auth: Any = None


# --------------------------------------------------------------------------
# Behaviours
# --------------------------------------------------------------------------

_MESSAGE_EFFECTS = (Send, Broadcast, Reply)


def _statement_key(message: Any) -> tuple[Any, ...] | None:
    """A protocol slot a message speaks for: ("pp"|"p"|"c", view, seq), ("cp", seq), else None."""
    if isinstance(message, Proposal):
        pp = message.pre_prepare.statement
        return ("pp", pp.view, pp.seq) if isinstance(pp, PrePrepare) else None
    if isinstance(message, Signed):
        st = message.statement
        if isinstance(st, Prepare):
            return ("p", st.view, st.seq)
        if isinstance(st, Commit):
            return ("c", st.view, st.seq)
        if isinstance(st, Checkpoint):
            return ("cp", st.seq)
    return None


def _own(message: Any, me: int) -> bool:
    """Whether `message` (a Signed, or a Proposal by its header) was signed by replica `me`."""
    signed = message.pre_prepare if isinstance(message, Proposal) else message
    st = getattr(signed, "statement", None)
    return st is not None and not isinstance(st, Request) and getattr(st, "replica", None) == me


def _corrupt_signature(signed: Signed, zero: bool) -> Signed:
    sig = bytes(len(signed.signature)) if zero else bytes([signed.signature[0] ^ 0x5A]) \
        + signed.signature[1:]
    return Signed(body=signed.body, signature=sig, statement=signed.statement)


def _corrupt_reply(reply: Signed | MacReply, zero: bool) -> Signed | MacReply:
    """A reply whose signature or MAC is wrong (all zeros with `zero`)."""
    if isinstance(reply, MacReply):
        mac = bytes(len(reply.mac)) if zero else bytes([reply.mac[0] ^ 0x5A]) + reply.mac[1:]
        return MacReply(body=reply.body, mac=mac, statement=reply.statement)
    return _corrupt_signature(reply, zero)


class Behaviour:
    """Base class: an active window, and hooks that do nothing.

    Hooks: `wall(now, wall)` (the clock the replica sees), `hold(now)` (inputs
    held, no timers run), `observe(message)` (an input), `transform(effect,
    now)` (a Send/Broadcast/Reply -> what leaves instead), `due(now)` (effects
    of its own that are due), `deadline()` (when it next needs a tick).
    """

    name = ""

    def __init__(self, rule: BehaviourRule, env: BehaviourEnv) -> None:
        self.rule = rule
        self.env = env
        self.params = rule.params
        self.counters: collections.Counter[str] = collections.Counter()
        self.announced = False

    def _t(self, now: float) -> float:
        return now - (self.env.origin_s or 0.0)

    def active(self, now: float) -> bool:
        start, end = self.rule.window()
        return start <= self._t(now) < end

    def boundaries(self) -> tuple[float, ...]:
        """Absolute times at which the behaviour switches on or off (finite ones)."""
        origin = self.env.origin_s or 0.0
        return tuple(origin + t for t in self.rule.window() if math.isfinite(t))

    def wall(self, now: float, wall: Any) -> Any:
        return wall

    def hold(self, now: float) -> bool:
        return False

    def observe(self, message: Any, now: float) -> None:
        pass

    def transform(self, effect: Any, now: float) -> list[Any]:
        return [effect]

    def due(self, now: float) -> list[Any]:
        return []

    def deadline(self) -> float | None:
        return None

    def statistics(self) -> dict[str, Any]:
        return {"behaviour": self.name, **self.rule.to_dict(), "counters": dict(self.counters)}


class Lie(Behaviour):
    """Consistent lies about votes, replies, checkpoints, signatures and batches."""

    name = "lie"

    def __init__(self, rule: BehaviourRule, env: BehaviourEnv) -> None:
        super().__init__(rule, env)
        self.lies = [x for x in LIES if x in rule.params["lies"]]
        self.rate = float(rule.params["rate"])
        self._decided: dict[Any, str | None] = {}  # slot key -> the lie chosen (None: honest)
        self._made: dict[Any, Any] = {}  # (slot key, original body) -> the lie sent

    def _choose(self, key: Any, applicable: list[str]) -> str | None:
        if key not in self._decided:
            options = [x for x in applicable if x in self.lies]
            lie = None
            if options and self.env.rng.random() < self.rate:
                lie = options[self.env.rng.randrange(len(options))]
            self._decided[key] = lie
        return self._decided[key]

    def _lie_about(self, message: Any) -> Any:
        if not _own(message, self.env.node_id):
            return message  # a relayed statement of another party: passed on as it is
        key = _statement_key(message)
        signer = self.env.signer
        if isinstance(message, Proposal) and key is not None:
            lie = self._choose(key, ["invented_request", "bad_signature", "no_signature"])
            if lie is None:
                return message
            made = self._made.get(key)
            if made is None:
                if lie == "invented_request":
                    pp = message.pre_prepare.statement
                    rng = self.env.rng
                    invented = Request(op=b"invented-by-%d" % self.env.node_id,
                                       timestamp=rng.randrange(1, 2**40), client=0)
                    fake = Signed(body=_encode(invented), signature=bytes(rng.randrange(256)
                                                                          for _ in range(64)),
                                  statement=invented)
                    batch = Batch(message.batch.batch_time, message.batch.requests + (fake,))
                    made = Proposal(signer.sign(PrePrepare(pp.view, pp.seq, batch_digest(batch),
                                                           pp.replica)), batch)
                else:
                    made = Proposal(_corrupt_signature(message.pre_prepare,
                                                       lie == "no_signature"), message.batch)
                self._made[key] = made
                self.counters[lie] += 1
            return made
        if not isinstance(message, Signed):
            return message
        st = message.statement
        if key is None:  # any other signed statement: only signature lies apply
            lie = self._choose(("sig", message.body), ["bad_signature", "no_signature"])
            if lie is None:
                return message
            self.counters[lie] += 1
            return _corrupt_signature(message, lie == "no_signature")
        kind = "checkpoint_digest" if key[0] == "cp" else "vote_digest"
        lie = self._choose(key, [kind, "bad_signature", "no_signature"])
        if lie is None:
            return message
        if lie in ("bad_signature", "no_signature"):
            self.counters[lie] += 1
            return _corrupt_signature(message, lie == "no_signature")
        made = self._made.get(key)
        if made is None:
            wrong = sha256(b"bft-lie" + self.env.rng.randbytes(16))
            if isinstance(st, Checkpoint):
                made = signer.sign(Checkpoint(st.seq, wrong, st.replica))
            else:
                made = signer.sign(type(st)(st.view, st.seq, wrong, st.replica))
            self._made[key] = made
            self.counters[lie] += 1
        return made

    def transform(self, effect: Any, now: float) -> list[Any]:
        if isinstance(effect, Send):
            return [Send(effect.to, self._lie_about(effect.message))]
        if isinstance(effect, Broadcast):
            return [Broadcast(self._lie_about(effect.message))]
        if isinstance(effect, Reply):
            r = effect.reply.statement
            key = ("reply", r.client, r.timestamp)
            lie = self._choose(key, ["reply_result", "bad_signature", "no_signature"])
            if lie is None:
                return [effect]
            if lie == "reply_result":
                made = self._made.get(key)
                if made is None:
                    wrong = replace(r, result=b"lie:" + sha256(r.result)[:8])
                    made = None
                    if isinstance(effect.reply, MacReply) and self.env.reply_auth is not None:
                        made = self.env.reply_auth.seal(wrong)  # a valid MAC, as itself
                    if made is None:
                        made = self.env.signer.sign(wrong)
                    self._made[key] = made
                    self.counters[lie] += 1
                return [Reply(effect.client, made)]
            self.counters[lie] += 1
            return [Reply(effect.client, _corrupt_reply(effect.reply, lie == "no_signature"))]
        return [effect]


def _encode(statement: Any) -> bytes:
    return codec.encode(statement)


class Equivocate(Behaviour):
    """Two versions of one signed statement to two groups of peers."""

    name = "equivocate"

    def __init__(self, rule: BehaviourRule, env: BehaviourEnv) -> None:
        super().__init__(rule, env)
        self.what = {"pre_prepare": "pp", "prepare": "p", "commit": "c", "checkpoint": "cp"}
        self.kinds = {self.what[w] for w in rule.params["what"]}
        self.overlap = int(rule.params["overlap"])
        env.collusion.members.add(env.node_id)
        self._alt: dict[Any, Any] = {}

    def _alternative(self, message: Any, key: tuple[Any, ...]) -> Any:
        alt = self._alt.get(key)
        if alt is not None:
            return alt
        signer = self.env.signer
        collusion = self.env.collusion
        if isinstance(message, Proposal):
            pp = message.pre_prepare.statement
            batch = message.batch
            other = Batch(batch.batch_time + 1, tuple(reversed(batch.requests)))
            digest = batch_digest(other)
            collusion.alt_digest[(pp.view, pp.seq)] = digest
            alt = Proposal(signer.sign(PrePrepare(pp.view, pp.seq, digest, pp.replica)), other)
        else:
            st = message.statement
            if isinstance(st, Checkpoint):
                alt = signer.sign(Checkpoint(st.seq, sha256(b"bft-equivocate" + st.state_digest),
                                             st.replica))
            else:
                digest = collusion.alt_digest.get((st.view, st.seq)) or sha256(
                    b"bft-equivocate" + st.digest)
                alt = signer.sign(type(st)(st.view, st.seq, digest, st.replica))
        self._alt[key] = alt
        self.counters["equivocations"] += 1
        return alt

    def transform(self, effect: Any, now: float) -> list[Any]:
        if not isinstance(effect, (Send, Broadcast)):
            return [effect]
        message = effect.message
        key = _statement_key(message)
        if key is None or key[0] not in self.kinds or not _own(message, self.env.node_id):
            return [effect]
        me, n = self.env.node_id, self.env.n
        _, group_b, both = self.env.collusion.split(me, n, self.overlap)
        alt = self._alternative(message, key)
        if isinstance(effect, Send):
            return [Send(effect.to, alt if effect.to in group_b else message)]
        out: list[Any] = []
        for j in range(n):
            if j == me:
                continue
            if j in group_b:
                if j in both:
                    out.append(Send(j, message))
                out.append(Send(j, alt))
            else:
                out.append(Send(j, message))
        return out


class Pause(Behaviour):
    """Hold every input and run no timer in the window; the wrapper replays the backlog after."""

    name = "pause"

    def hold(self, now: float) -> bool:
        if self.env.external_sigstop and self.params.get("mode") == "sigstop":
            return False  # the launcher stops the whole process instead
        return self.active(now)

    def deadline(self) -> float | None:
        if self.env.external_sigstop and self.params.get("mode") == "sigstop":
            return None
        end = self.rule.window()[1]
        return (self.env.origin_s or 0.0) + end if math.isfinite(end) else None


class Silent(Behaviour):
    """Sends nothing while active."""

    name = "silent"

    def transform(self, effect: Any, now: float) -> list[Any]:
        if isinstance(effect, _MESSAGE_EFFECTS) and self.active(now):
            self.counters["suppressed"] += 1
            return []
        return [effect]


class Replay(Behaviour):
    """Resends old validly signed messages (its own and what it received)."""

    name = "replay"

    def __init__(self, rule: BehaviourRule, env: BehaviourEnv) -> None:
        super().__init__(rule, env)
        self.seen: collections.deque[Any] = collections.deque(maxlen=max(1, rule.params["window"]))
        self.next_at: float | None = None

    def observe(self, message: Any, now: float) -> None:
        if isinstance(message, (Signed, Proposal)):
            self.seen.append(message)

    def transform(self, effect: Any, now: float) -> list[Any]:
        if isinstance(effect, (Send, Broadcast)):
            self.seen.append(effect.message)
        return [effect]

    def due(self, now: float) -> list[Any]:
        if not self.active(now):
            self.next_at = None
            return []
        if self.next_at is None:
            self.next_at = now
        if now < self.next_at or not self.seen:
            return []
        self.next_at = now + float(self.params["interval_s"])
        rng = self.env.rng
        out = [Broadcast(self.seen[rng.randrange(len(self.seen))])
               for _ in range(int(self.params["count"]))]
        self.counters["replayed"] += len(out)
        return out

    def deadline(self) -> float | None:
        return self.next_at


class ClockSkew(Behaviour):
    """The interval clock is off by offset_s + drift_ppm * elapsed."""

    name = "clock-skew"

    def wall(self, now: float, wall: Any) -> Any:
        if wall is None or not self.active(now):
            return wall
        elapsed = max(0.0, self._t(now) - self.rule.start_s)
        shift_us = self.params["offset_s"] * 1e6 + self.params["drift_ppm"] * elapsed
        return wall.shifted(round(shift_us))


class Slow(Behaviour):
    """Holds each message it sends for delay_ms +- jitter_ms."""

    name = "slow"

    def __init__(self, rule: BehaviourRule, env: BehaviourEnv) -> None:
        super().__init__(rule, env)
        self.held: list[tuple[float, int, Any]] = []
        self._n = 0

    def transform(self, effect: Any, now: float) -> list[Any]:
        if not isinstance(effect, _MESSAGE_EFFECTS) or not self.active(now):
            return [effect]
        delay = self.params["delay_ms"] + self.env.rng.uniform(-1.0, 1.0) * self.params["jitter_ms"]
        self._n += 1
        self.held.append((now + max(0.0, delay) / 1000.0, self._n, effect))
        self.counters["delayed"] += 1
        return []

    def due(self, now: float) -> list[Any]:
        ready = sorted(h for h in self.held if h[0] <= now)
        if ready:
            self.held = [h for h in self.held if h[0] > now]
        return [effect for _, _, effect in ready]

    def deadline(self) -> float | None:
        return min((h[0] for h in self.held), default=None)


_CLASSES: dict[str, type[Behaviour]] = {
    "lie": Lie, "equivocate": Equivocate, "pause": Pause, "silent": Silent,
    "replay": Replay, "clock-skew": ClockSkew, "slow": Slow,
}
#: The order in which outputs pass through behaviours.
_ORDER = ("clock-skew", "pause", "lie", "equivocate", "replay", "slow", "silent")


# --------------------------------------------------------------------------
# The wrapper
# --------------------------------------------------------------------------


class ByzantineNode:
    """A correct replica wrapped in behaviours; the replica's interface.

    Guarantees: inputs and outputs of the inner replica are changed only as the
    active behaviours say; the inner replica's own effects keep their order
    (Persist before the Sends it precedes: a delayed Send only leaves later);
    the wrapper emits one merged `SetTimer` for the inner replica's timers and
    its own; a crash rule calls `on_crash` (the runtime's process exit) when
    due. Attributes it does not define are the inner replica's.
    """

    def __init__(self, inner: Any, rules: Iterable[BehaviourRule], env: BehaviourEnv, *,
                 on_crash: Callable[[BehaviourRule], None] | None = None) -> None:
        self.inner = inner
        self.env = env
        self.on_crash = on_crash
        self.rules: list[BehaviourRule] = list(rules)
        self.behaviours: list[Behaviour] = []
        self.live: list[Behaviour] = []  # switched on at run time (dashboard)
        self._build()
        self.backlog: collections.deque[Any] = collections.deque()
        self.counters: collections.Counter[str] = collections.Counter()
        self._inner_deadline: float | None = None
        self._last_timer: float | None = None
        self._last_now = 0.0
        self._held_tick = False

    def _build(self) -> None:
        made = [_CLASSES[r.behaviour](r, self.env) for r in self.rules
                if r.behaviour not in LIFECYCLE and r.params.get("mode") != "twins"]
        self.behaviours = sorted(made, key=lambda b: _ORDER.index(b.name))

    def __getattr__(self, name: str) -> Any:
        # only called for attributes not found on the wrapper: the replica's
        return getattr(self.__dict__["inner"], name)

    # -- the replica interface -------------------------------------------

    def start(self, now: float, wall: Any = None) -> list[Any]:
        if self.env.origin_s is None:
            self.env.origin_s = now
        return self._step(now, wall, lambda w: self.inner.start(now, w), None)

    def receive(self, message: Any, now: float, wall: Any = None) -> list[Any]:
        if not (self.rules or self.behaviours or self.live or self.backlog):
            self._last_now = now
            return self._pass_through(self.inner.receive(message, now, wall), now)
        return self._step(now, wall, lambda w: self.inner.receive(message, now, w), message)

    def tick(self, now: float, wall: Any = None) -> list[Any]:
        if not (self.rules or self.behaviours or self.live or self.backlog):
            self._last_now = now
            return self._pass_through(self.inner.tick(now, wall), now)
        return self._step(now, wall, lambda w: self.inner.tick(now, w), None, tick=True)

    # -- live switching (the dashboard's set-behaviour) ------------------

    def set_live_behaviour(self, name: str, params: Mapping[str, Any] | None = None) -> None:
        """Switch a behaviour on from now on, replacing the previous live one ("" = none).

        Raises ConfigError for an unknown behaviour or parameter (nothing changes then)."""
        if not name:
            self.live = []
            self.counters["live_cleared"] += 1
            return
        start = max(0.0, self._last_now - (self.env.origin_s or 0.0))
        rule = make_rule(self.env.node_id, name, start_s=start, params=params,
                         field="set_behaviour")
        if rule.behaviour in LIFECYCLE or rule.params.get("mode") == "twins":
            raise ConfigError(f"{rule.behaviour} cannot be switched on in a running node",
                              field="set_behaviour.behaviour")
        self.live = [_CLASSES[rule.behaviour](rule, self.env)]
        self.counters["live_set"] += 1

    def _all(self) -> list[Behaviour]:
        if not self.live:
            return self.behaviours
        return sorted(self.behaviours + self.live, key=lambda b: _ORDER.index(b.name))

    # -- plumbing ----------------------------------------------------------

    def _wall(self, now: float, wall: Any) -> Any:
        for b in self._all():
            wall = b.wall(now, wall)
        return wall

    def _check_crash(self, now: float) -> None:
        if self.on_crash is None:
            return
        origin = self.env.origin_s or 0.0
        for rule in self.rules:
            if rule.behaviour == "crash" and now - origin >= rule.start_s:
                self.on_crash(rule)

    def _step(self, now: float, wall: Any, call: Callable[[Any], list[Any]], message: Any, *,
              tick: bool = False) -> list[Any]:
        self._last_now = now
        self._check_crash(now)
        behaviours = self._all()
        raw: list[Any] = []
        for b in behaviours:
            if not b.announced and b.active(now):
                b.announced = True
                raw.append(Event("adversary", {"behaviour": b.name, "node": self.env.node_id}))
        held = any(b.hold(now) for b in behaviours)
        if held:
            if message is not None:
                if len(self.backlog) < self.env.max_backlog:
                    self.backlog.append(message)
                else:
                    self.counters["backlog_overflow"] += 1
            elif not tick:  # start() while paused: run it anyway (nothing to hold)
                raw.extend(call(self._wall(now, wall)))
        else:
            w = self._wall(now, wall)
            if self.backlog:  # resume: everything that arrived meanwhile, stale as it is
                backlog, self.backlog = self.backlog, collections.deque()
                self.counters["resumed_with"] += len(backlog)
                raw.append(Event("adversary_resume", {"backlog": len(backlog)}))
                for old in backlog:
                    for b in behaviours:
                        b.observe(old, now)
                    raw.extend(self.inner.receive(old, now, w))
            if message is not None:
                for b in behaviours:
                    b.observe(message, now)
            raw.extend(call(w))
        return self._finish(raw, now, behaviours)

    def _pass_through(self, raw: list[Any], now: float) -> list[Any]:
        """What `_step` and `_finish` return when there is nothing to do but merge timers.

        Without rules (hence no crash to watch for), behaviours (scheduled or
        live) or held messages, `_step` holds nothing, observes nothing,
        passes `wall` on unchanged and returns the inner effects in order;
        `_finish` then only takes out the inner SetTimers and emits one for
        the latest inner deadline, at the end, unless it was emitted already.
        The same, without the per-behaviour machinery.
        """
        stream = self._take_timers(raw)
        nxt = self._inner_deadline
        if nxt is not None and nxt != self._last_timer:
            self._last_timer = nxt
            stream.append(SetTimer(max(nxt, now)))
        return stream

    def _take_timers(self, raw: list[Any]) -> list[Any]:
        """The inner effects without SetTimers; the latest inner deadline is remembered."""
        stream: list[Any] = []
        for e in raw:
            if isinstance(e, SetTimer):
                self._inner_deadline = e.at
            else:
                stream.append(e)
        return stream

    def _finish(self, raw: list[Any], now: float, behaviours: list[Behaviour]) -> list[Any]:
        stream = self._take_timers(raw)
        for b in behaviours:
            out: list[Any] = []
            for e in stream:
                if isinstance(e, _MESSAGE_EFFECTS):
                    out.extend(b.transform(e, now))
                else:
                    out.append(e)
            out.extend(b.due(now))
            stream = out
        # while inputs are held the replica runs no timer: its deadline (perhaps due already)
        # waits for the end of the hold, when it is announced again (bft explore found a
        # paused replica that was never ticked again: a due deadline, announced once, hid
        # the end of the pause)
        inner = None if any(b.hold(now) for b in behaviours) else self._inner_deadline
        # a behaviour's deadline that is not in the future is spent (what was due went out
        # above; a pause's end stays its deadline after it passed): it must not hide the
        # replica's own deadlines
        deadlines = [d for d in (b.deadline() for b in behaviours) if d is not None and d > now]
        if inner is not None:
            deadlines.append(inner)
        deadlines += [t for b in behaviours for t in b.boundaries() if t > now]
        if self.on_crash is not None:
            origin = self.env.origin_s or 0.0
            deadlines += [origin + r.start_s for r in self.rules
                          if r.behaviour == "crash" and origin + r.start_s > now]
        nxt = min(deadlines) if deadlines else None
        if nxt is not None and nxt != self._last_timer:
            self._last_timer = nxt
            stream.append(SetTimer(max(nxt, now)))
        return stream

    # -- observability ---------------------------------------------------

    def statistics(self) -> dict[str, Any]:
        """The inner replica's statistics plus `adversary`: behaviours, counters, backlog."""
        stats = dict(self.inner.statistics())
        stats["adversary"] = {
            "behaviours": [b.statistics() for b in self._all()],
            "backlog": len(self.backlog),
            "counters": dict(self.counters),
        }
        return stats


# --------------------------------------------------------------------------
# Twins: two instances, one identity
# --------------------------------------------------------------------------


class TwinsNode:
    """Two replicas that share one identity and key, each talking to its own group of peers.

    Inputs from a replica in group A go to twin A, from group B to twin B; client
    requests go to twin `client % 2`. Each twin's messages reach only its group
    (a Broadcast becomes Sends to its group); both reply to clients. Twin B keeps
    nothing durable (its Persist and SaveSnapshot are dropped). Built by the
    simulator, which tells it the sender of each message (`receive_from`); other
    attributes (`view`, `last_executed`, ...) are twin A's.
    """

    def __init__(self, twin_a: Any, twin_b: Any, node_id: int, n: int,
                 groups: list[list[int]] | None = None) -> None:
        self.twins = (twin_a, twin_b)
        self.node_id = node_id
        self.n = n
        others = [j for j in range(n) if j != node_id]
        if groups:
            a, b = set(groups[0]) - {node_id}, set(groups[1] if len(groups) > 1 else []) - {
                node_id}
            b |= set(others) - a - b
        else:
            half = (len(others) + 1) // 2
            a, b = set(others[:half]), set(others[half:])
        self.groups = (frozenset(a), frozenset(b))
        self._deadlines: list[float | None] = [None, None]
        self._last_timer: float | None = None
        self.counters: collections.Counter[str] = collections.Counter()

    def __getattr__(self, name: str) -> Any:
        return getattr(self.__dict__["twins"][0], name)

    def _which(self, src: Any, message: Any) -> int:
        if isinstance(src, tuple) and len(src) == 2:
            kind, ident = src
            if kind == "client":
                return ident % 2
            return 0 if ident in self.groups[0] else 1
        st = getattr(message, "statement", None) or getattr(
            getattr(message, "pre_prepare", None), "statement", None)
        if isinstance(st, Request):
            return st.client % 2
        return 0 if getattr(st, "replica", None) in self.groups[0] else 1

    def _route(self, k: int, effects: list[Any]) -> list[Any]:
        group = self.groups[k]
        out: list[Any] = []
        for e in effects:
            if isinstance(e, SetTimer):
                self._deadlines[k] = e.at
            elif isinstance(e, Broadcast):
                out.extend(Send(j, e.message) for j in sorted(group))
            elif isinstance(e, Send):
                if e.to in group:
                    out.append(e)
                else:
                    self.counters["cut"] += 1
            elif k == 1 and isinstance(e, (Persist, SaveSnapshot, Executed)):
                continue
            else:
                out.append(e)
        return out

    def _timer(self, out: list[Any]) -> list[Any]:
        ds = [d for d in self._deadlines if d is not None]
        nxt = min(ds) if ds else None
        if nxt is not None and nxt != self._last_timer:
            self._last_timer = nxt
            out.append(SetTimer(nxt))
        return out

    def start(self, now: float, wall: Any = None) -> list[Any]:
        out = self._route(0, self.twins[0].start(now, wall))
        out += self._route(1, self.twins[1].start(now, wall))
        return self._timer(out)

    def receive_from(self, src: Any, message: Any, now: float, wall: Any = None) -> list[Any]:
        k = self._which(src, message)
        self.counters[f"to_twin_{'ab'[k]}"] += 1
        return self._timer(self._route(k, self.twins[k].receive(message, now, wall)))

    def receive(self, message: Any, now: float, wall: Any = None) -> list[Any]:
        return self.receive_from(None, message, now, wall)

    def tick(self, now: float, wall: Any = None) -> list[Any]:
        out = self._route(0, self.twins[0].tick(now, wall))
        out += self._route(1, self.twins[1].tick(now, wall))
        return self._timer(out)

    def statistics(self) -> dict[str, Any]:
        stats = dict(self.twins[0].statistics())
        stats["twins"] = {"groups": [sorted(g) for g in self.groups],
                          "twin_b": self.twins[1].statistics(), "counters": dict(self.counters)}
        return stats


def make_node(inner: Any, rules: Iterable[BehaviourRule], env: BehaviourEnv, *,
              on_crash: Callable[[BehaviourRule], None] | None = None) -> Any:
    """`inner` wrapped in the rules' behaviours, or `inner` itself when none applies."""
    rules = list(rules)
    wrapping = [r for r in rules if r.behaviour not in LIFECYCLE
                and r.params.get("mode") != "twins"]
    if not wrapping and not (on_crash and any(r.behaviour == "crash" for r in rules)):
        return inner
    return ByzantineNode(inner, rules, env, on_crash=on_crash)
