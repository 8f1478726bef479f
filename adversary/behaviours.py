"""Byzantine behaviours: one implementation for the simulator and for real nodes.

A behaviour never touches a socket, a clock or the protocol's internals. It
wraps a *correct* replica (`bft.replica.Replica`) and rewrites what goes in
and what comes out:

    message --> [pause: hold] --> inner.receive(message, now, wall') --> effects
                                                                          |
    [lie] -> [equivocate] -> [withhold] -> [bad-new-view] -> [replay]  <--+
      -> [slow] -> [silent] -> [bogus-chunks] -> [crash-at: cut the step]

`ByzantineNode(inner, rules, env)` has the replica's interface
(`start/receive/tick(now, wall) -> list[Effect]`; every other attribute, such
as `view`, `last_executed`, `app`, `timeout`, is the inner replica's), so the
simulator (`adversary/sim.py`) and the Trio runtime (`bft/node.py`, through
`adversary.runtime.AdversaryExtension`) drive it exactly like a replica. Whatever it
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
* `withhold`: its VIEW-CHANGEs leave out prepared certificates (all, a share
  `certs`, or the `seqs` named) and/or cite a stable checkpoint
  `checkpoint_back` checkpoints older than its own (a valid proof it holds,
  or genesis); re-signed with its own key and checked with
  `bft.viewchange.view_change_problem`, so every receiver accepts them. With
  `silent_after_checkpoint = n` it falls silent once its CHECKPOINT for a
  seq >= n has gone out.
* `bogus-chunks`: answers every FETCH-STATE it receives with well-signed
  StateChunks of wrong data or a wrong count, `ahead` of its honest ones or
  `instead` of them; with `push`, also unasked to every peer whose STATUS
  shows it below the stable checkpoint it knows of.
* `bad-new-view`: as primary of a view it enters, `split` sends two valid
  NEW-VIEWs (different 2f+1 sets of VIEW-CHANGEs, the most different O it
  can make) to two groups of backups and then (`cross`) the other group's
  PRE-PREPAREs where the two differ; `wrong_o` sends a NEW-VIEW whose O does
  not follow from its V (refused: `new_view_wrong_o`); `reissue` sends an
  honest NEW-VIEW and then fresh PRE-PREPAREs with other batches for O's seqs.
* `crash-at`: crashes at an event of its own replica (it sends a CHECKPOINT,
  PRE-PREPARE, PREPARE or COMMIT, enters a view change or a view, executes a
  batch; narrowed by `seq` and `view`), right `after` the message leaves or
  `before` (its WAL record written, the message not sent), and restarts from
  its storage after `restart_after_s`. The wrapper cuts the step's effects and
  asks the driver for the crash through `BehaviourEnv.request_crash`: the
  simulator provides it; real processes refuse the rule (`SIMULATOR_ONLY`).

Rules (`BehaviourRule`) carry the node, the behaviour, a window `[start_s,
stop_s)` in seconds from the run's origin (the simulator's time 0, or the
node's start), and validated parameters. `judged` says whether the checkers
still judge such a node as correct: a paused, crashed, skewed, slow or
replaying node runs the honest protocol and must stay safe, and so does one
that crashes at protocol events (`crash-at`); a liar, an equivocator, a
silent, withholding or chunk-lying node and a bad new primary are Byzantine.
"""

from __future__ import annotations

import collections
import itertools
import math
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field, replace
from typing import Any

from bft import codec
from bft.crypto import batch_digest, sha256
from bft.effects import Broadcast, Event, Executed, Persist, Reply, SaveSnapshot, Send, SetTimer
from bft.errors import ConfigError
from bft.messages import (
    NULL_BATCH,
    Batch,
    Checkpoint,
    Commit,
    FetchState,
    MacReply,
    NewView,
    Prepare,
    PrePrepare,
    Proposal,
    Request,
    Signed,
    StateChunk,
    Status,
    ViewChange,
)
from bft.viewchange import (
    Geometry,
    checkpoint_proof_problem,
    new_view_problem,
    plan_new_view,
    view_change_problem,
)

# --------------------------------------------------------------------------
# Parameters and rules
# --------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Param:
    """One behaviour parameter: its kind, default and, for choices, the allowed values.

    Kinds: "float" (finite), "nonneg" (finite >= 0), "positive" (> 0),
    "probability" ([0, 1]), "int" (>= 0), "count" (an integer >= 1), "bool",
    "choice" (one of `choices`), "choices" (a list of distinct `choices`),
    "groups" (a list of lists of replica ids), "seqs" (a list of distinct
    sequence numbers >= 1).
    """

    kind: str
    default: Any
    doc: str
    choices: tuple[str, ...] = ()


LIES = ("vote_digest", "reply_result", "checkpoint_digest", "bad_signature", "no_signature",
        "invented_request")
EQUIVOCATIONS = ("pre_prepare", "prepare", "commit", "checkpoint")
CHUNK_LIES = ("data", "count")
#: Protocol events of a node's own replica that a `crash-at` rule can crash it at.
CRASH_EVENTS = ("checkpoint", "pre_prepare", "prepare", "commit", "view_change", "new_view",
                "execute")

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
    "withhold": {
        "certs": Param("probability", 1.0, "share of its prepared certificates (chosen per "
                       "seq, once) that its VIEW-CHANGEs leave out; `seqs` wins if given"),
        "seqs": Param("seqs", [], "leave out exactly the certificates of these seqs"),
        "checkpoint_back": Param("int", 0, "cite the stable checkpoint this many stable "
                                 "checkpoints back (a valid proof it holds; genesis if it "
                                 "holds none that old); 0: its current one"),
        "silent_after_checkpoint": Param("int", 0, "once its CHECKPOINT for a seq >= this "
                                         "has gone out, send nothing more; 0: off"),
    },
    "bogus-chunks": {
        "lies": Param("choices", list(CHUNK_LIES), "data: chunks of wrong data; count: "
                      "chunks that claim a wrong number of chunks", CHUNK_LIES),
        "mode": Param("choice", "ahead", "ahead: the bogus chunks go out before its honest "
                      "ones; instead: only bogus ones", ("ahead", "instead")),
        "push": Param("bool", False, "also push bogus chunks, unasked, to every peer whose "
                      "STATUS shows it below its stable checkpoint (anyone's transfer)"),
    },
    "bad-new-view": {
        "mode": Param("choice", "split", "split: two valid NEW-VIEWs (different 2f+1 sets of "
                      "VIEW-CHANGEs, different O where it can) to two groups of backups; "
                      "wrong_o: a NEW-VIEW whose O does not follow from its V; reissue: an "
                      "honest NEW-VIEW, then fresh PRE-PREPAREs with other batches for O's "
                      "seqs", ("split", "wrong_o", "reissue")),
        "cross": Param("bool", True, "split: once a backup's PREPARE shows it took its "
                       "NEW-VIEW's pre-prepare for a seq, send it the other group's "
                       "PRE-PREPARE for that seq (with its batch)"),
    },
    "crash-at": {
        "event": Param("choice", "execute", "the event of its own replica it crashes at",
                       CRASH_EVENTS),
        "seq": Param("int", 0, "only at this seq (checkpoint, pre_prepare, prepare, commit, "
                     "execute); 0: any"),
        "view": Param("int", 0, "only in this view (or for this view: view_change, "
                      "new_view); 0: any"),
        "when": Param("choice", "after", "after: the triggering message leaves, then it "
                      "dies (the rest of that step is lost); before: its WAL record is "
                      "written, the message never leaves", ("after", "before")),
        "restart_after_s": Param("nonneg", 1.0, "restart from its storage this long after "
                                 "the crash"),
        "restart": Param("bool", True, "false: the node stays down"),
        "times": Param("count", 1, "how many crashes the rule makes in all (each restart "
                       "re-arms it)"),
    },
}

#: Behaviour name aliases accepted in scenarios and on the command line.
ALIASES = {"twins": ("equivocate", {"mode": "twins"}), "clock_skew": ("clock-skew", {}),
           "skew": ("clock-skew", {}), "bogus_chunks": ("bogus-chunks", {}),
           "bad_new_view": ("bad-new-view", {}), "crash_at": ("crash-at", {})}

#: Whether the checkers still judge a node with this behaviour as correct.
JUDGED = {"lie": False, "equivocate": False, "silent": False, "pause": True, "crash": True,
          "replay": True, "clock-skew": True, "slow": True, "withhold": False,
          "bogus-chunks": False, "bad-new-view": False, "crash-at": True}

#: Behaviours carried out by the driver (simulator or launcher), not by the wrapper.
LIFECYCLE = frozenset({"crash"})

#: Behaviours that need the driver's help at run time (`BehaviourEnv.request_crash`): the
#: simulator gives it; real processes and live switching refuse them.
SIMULATOR_ONLY = frozenset({"crash-at"})

BEHAVIOURS: tuple[str, ...] = tuple(PARAMS)


def _check_param(p: Param, value: Any, where: str, file: str | None) -> Any:
    def bad(message: str) -> ConfigError:
        return ConfigError(message, file=file, field=where, fix=p.doc)

    if p.kind == "bool":
        if not isinstance(value, bool):
            raise bad(f"expected true or false, got {value!r}")
        return value
    if p.kind in ("int", "count"):
        low = 1 if p.kind == "count" else 0
        if isinstance(value, bool) or not isinstance(value, int) or value < low:
            raise bad(f"expected an integer >= {low}, got {value!r}")
        return value
    if p.kind == "seqs":
        if not isinstance(value, (list, tuple)) or not all(
                isinstance(i, int) and not isinstance(i, bool) and i >= 1 for i in value):
            raise bad(f"expected a list of sequence numbers >= 1, got {value!r}")
        if len(set(value)) != len(value):
            raise bad("a sequence number is listed twice")
        return sorted(value)
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
        if self.behaviour == "crash-at":
            # crashes at events of unknown times: a bounded window bounds the last restart
            if self.stop_s is None or not self.params.get("restart", True):
                return None
            return self.stop_s + float(self.params.get("restart_after_s", 1.0))
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
    replica's `bft.auth.ReplyAuth` (None: its replies are signed).

    `config` (the ClusterConfig) gives quorum and log window (`geometry()`); `verifier`
    checks what a behaviour reuses of others' signed messages (without one it trusts
    them); `request_crash(rule) -> bool` asks the driver to crash the node at the end of
    the current step (True: it will; None: the driver cannot, so `crash-at` does nothing).
    """

    node_id: int
    n: int
    signer: Any
    rng: Any
    collusion: Collusion = field(default_factory=Collusion)
    origin_s: float | None = None
    max_backlog: int = 20_000
    external_sigstop: bool = False  # a launcher carries out `pause` rules with mode "sigstop"
    reply_auth: Any = None
    config: Any = None
    verifier: Any = None
    request_crash: Callable[[BehaviourRule], bool] | None = None

    def geometry(self) -> Geometry:
        """n, f, log window and quorum (log window 0: unknown, without `config`)."""
        cfg = self.config
        if cfg is not None:
            return Geometry(cfg.n, cfg.f, cfg.log_window, cfg.quorum)
        f = (self.n - 1) // 3
        return Geometry(self.n, f, 0, (self.n + f) // 2 + 1)

    def verified(self, message: Any) -> bool:
        """Whether `message` and every signature nested in it verify (True without a
        verifier)."""
        return self.verifier is None or bool(self.verifier.verify_deep(message))


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
    of its own that are due), `finish(stream, now)` (the whole step's effects,
    after every transform: `crash-at` cuts them), `deadline()` (when it next
    needs a tick).
    """

    name = ""

    def __init__(self, rule: BehaviourRule, env: BehaviourEnv) -> None:
        self.rule = rule
        self.env = env
        self.params = rule.params
        self.counters: collections.Counter[str] = collections.Counter()
        self.announced = False
        self.first_acted_s: float | None = None  # when it first counted an action

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

    def finish(self, stream: list[Any], now: float) -> list[Any]:
        return stream

    def deadline(self) -> float | None:
        return None

    def statistics(self) -> dict[str, Any]:
        return {"behaviour": self.name, **self.rule.to_dict(), "counters": dict(self.counters),
                "first_acted_s": self.first_acted_s}


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


# --------------------------------------------------------------------------
# Withholding, state-transfer lies, a Byzantine new primary, crash points
# --------------------------------------------------------------------------

NULL_DIGEST = batch_digest(NULL_BATCH)
MAX_PROOFS = 8  # stable checkpoint proofs a behaviour keeps (the highest seqs)
MAX_VOTE_SEQS = 16  # checkpoint seqs whose votes it collects at a time
MAX_MADE = 256  # rewritten messages remembered (a resend carries the same rewrite)
MAX_BATCHES = 512  # batches a Byzantine primary remembers (to re-send them elsewhere)
MAX_ASKED = 64  # FETCH-STATEs answered per step
MAX_SPLIT_TRIES = 256  # sets of 2f+1 VIEW-CHANGEs a split primary tries


def _remember(memo: dict[Any, Any], key: Any, value: Any, limit: int = MAX_MADE) -> Any:
    """memo[key] = value, forgetting the oldest entries beyond `limit`; returns value."""
    memo[key] = value
    while len(memo) > limit:
        del memo[next(iter(memo))]
    return value


def _same_kind(effect: Any, message: Any) -> Any:
    """`effect` (a Send or Broadcast) carrying `message` instead."""
    return Send(effect.to, message) if isinstance(effect, Send) else Broadcast(message)


class ProofBook:
    """Stable checkpoint proofs a node can cite, assembled from what it saw.

    Sources: 2f+1 matching signed CHECKPOINTs (its own and others'), or the proof C
    of a VIEW-CHANGE (alone or inside a NEW-VIEW). Each is checked before it is kept
    (signatures with the env's verifier, then `checkpoint_proof_problem`), so a
    message citing one passes the receivers' checks. Keeps the MAX_PROOFS highest.
    """

    def __init__(self, env: BehaviourEnv) -> None:
        self.env = env
        self.geo = env.geometry()
        self.votes: dict[int, dict[bytes, dict[int, Signed]]] = {}
        self.proofs: dict[int, tuple[bytes, tuple[Signed, ...]]] = {}

    def observe(self, message: Any) -> None:
        if not isinstance(message, Signed):
            return
        st = message.statement
        if isinstance(st, Checkpoint):
            self._vote(message)
        elif isinstance(st, ViewChange):
            self._add(st.stable_seq, st.state_digest, st.checkpoint_proof)
        elif isinstance(st, NewView):
            for vc in st.view_changes:
                if isinstance(vc.statement, ViewChange):
                    s = vc.statement
                    self._add(s.stable_seq, s.state_digest, s.checkpoint_proof)

    def _vote(self, signed: Signed) -> None:
        cp: Checkpoint = signed.statement  # type: ignore[assignment]
        if cp.seq == 0 or cp.seq in self.proofs or cp.replica >= self.geo.n or (
                self.proofs and cp.seq < min(self.proofs)):
            return
        votes = self.votes.setdefault(cp.seq, {}).setdefault(cp.state_digest, {})
        if cp.replica in votes or not self.env.verified(signed):
            return
        votes[cp.replica] = signed
        if len(votes) >= self.geo.quorum:
            proof = tuple(votes[r] for r in sorted(votes))[: self.geo.quorum]
            self._add(cp.seq, cp.state_digest, proof, verified=True)
        while len(self.votes) > MAX_VOTE_SEQS:
            del self.votes[min(self.votes)]

    def _add(self, seq: int, digest: bytes, proof: tuple[Signed, ...],
             verified: bool = False) -> None:
        if seq == 0 or seq in self.proofs or (
                len(self.proofs) >= MAX_PROOFS and seq < min(self.proofs)):
            return
        if checkpoint_proof_problem(self.geo, seq, digest, proof) is not None:
            return
        if not verified and not all(self.env.verified(s) for s in proof):
            return
        self.proofs[seq] = (digest, tuple(proof))
        self.votes.pop(seq, None)
        while len(self.proofs) > MAX_PROOFS:
            del self.proofs[min(self.proofs)]

    def latest(self) -> tuple[int, bytes, tuple[Signed, ...]] | None:
        """The highest stable checkpoint it holds a proof of: (seq, digest, proof)."""
        if not self.proofs:
            return None
        seq = max(self.proofs)
        return (seq, *self.proofs[seq])

    def below(self, seq: int, back: int) -> tuple[int, bytes, tuple[Signed, ...]]:
        """The proof `back` (>= 1) stable checkpoints below `seq`, or genesis (0, zeros, ())
        when it holds none that old."""
        older = sorted(s for s in self.proofs if s < seq)
        if len(older) < back:
            return 0, bytes(32), ()
        pick = older[-back]
        return (pick, *self.proofs[pick])


class Withhold(Behaviour):
    """VIEW-CHANGEs that leave out prepared certificates or cite an older stable checkpoint;
    silence once a CHECKPOINT is out.

    Every rewritten VIEW-CHANGE is re-signed with the node's own key and checked with
    `bft.viewchange.view_change_problem` before it leaves (it passes every receiver's
    check): the older checkpoint is one it holds a valid proof of (`ProofBook`, or
    genesis), and only certificates in (h', h' + L] stay. A resend carries the same
    rewrite.
    """

    name = "withhold"

    def __init__(self, rule: BehaviourRule, env: BehaviourEnv) -> None:
        super().__init__(rule, env)
        self.geo = env.geometry()
        self.book = ProofBook(env)
        self.seqs = frozenset(rule.params["seqs"])
        self.rate = float(rule.params["certs"])
        self.back = int(rule.params["checkpoint_back"])
        self.silent_after = int(rule.params["silent_after_checkpoint"])
        self._leave: dict[int, bool] = {}  # seq -> its certificate is left out
        self._made: dict[bytes, Signed] = {}  # original VIEW-CHANGE body -> what leaves
        self.silenced = False

    def observe(self, message: Any, now: float) -> None:
        self.book.observe(message)

    def _left_out(self, seq: int) -> bool:
        if self.seqs:
            return seq in self.seqs
        if seq not in self._leave:
            _remember(self._leave, seq, self.env.rng.random() < self.rate, 4096)
        return self._leave[seq]

    def _rewrite(self, signed: Signed) -> Signed:
        made = self._made.get(signed.body)
        if made is not None:
            return made
        vc: ViewChange = signed.statement  # type: ignore[assignment]
        h, digest, proof = vc.stable_seq, vc.state_digest, vc.checkpoint_proof
        window = self.geo.log_window
        if self.back and window:
            h, digest, proof = self.book.below(vc.stable_seq, self.back)
            if h == 0:
                digest = vc.state_digest if vc.stable_seq == 0 else bytes(32)
        certs = tuple(c for c in vc.prepared
                      if not self._left_out(c.pre_prepare.statement.seq)  # type: ignore[union-attr]
                      and (not window or h < c.pre_prepare.statement.seq <= h + window))  # type: ignore[union-attr]
        if h == vc.stable_seq and len(certs) == len(vc.prepared):
            return _remember(self._made, signed.body, signed)  # nothing to withhold
        new = ViewChange(vc.view, h, digest, proof, certs, vc.replica)
        if window and view_change_problem(self.geo, new) is not None:  # never expected
            self.counters["rewrite_invalid"] += 1
            return _remember(self._made, signed.body, signed)
        if len(certs) < len(vc.prepared):
            self.counters["certs_withheld"] += len(vc.prepared) - len(certs)
        if h < vc.stable_seq:
            self.counters["older_checkpoint"] += 1
        self.counters["view_changes_rewritten"] += 1
        return _remember(self._made, signed.body, self.env.signer.sign(new))

    def transform(self, effect: Any, now: float) -> list[Any]:
        if not isinstance(effect, _MESSAGE_EFFECTS) or not self.active(now):
            return [effect]
        if self.silenced:
            self.counters["suppressed"] += 1
            return []
        if isinstance(effect, Reply):
            return [effect]
        message = effect.message
        if not isinstance(message, Signed) or not _own(message, self.env.node_id):
            return [effect]
        st = message.statement
        if isinstance(st, Checkpoint):
            self.book.observe(message)
            if self.silent_after and st.seq >= self.silent_after:
                self.silenced = True  # this one leaves; nothing after it
                self.counters["silent_from_checkpoint"] = st.seq
            return [effect]
        if isinstance(st, ViewChange):
            self.book.observe(message)  # its replica's own stable proof
            return [_same_kind(effect, self._rewrite(message))]
        return [effect]


class BogusChunks(Behaviour):
    """A state-transfer liar: well-signed StateChunks of wrong data or wrong counts.

    It answers every FETCH-STATE it receives (whether or not its replica holds that
    state) with bogus chunks, ahead of its honest ones or instead of them; with `push`
    it also sends them unasked to every peer whose STATUS shows it below the stable
    checkpoint the liar knows of (a lagging replica transfers from someone else).
    A correct replica takes chunks only from the replica it asked and checks the
    assembled state against the proven digest (TOCS 5.3).
    """

    name = "bogus-chunks"

    def __init__(self, rule: BehaviourRule, env: BehaviourEnv) -> None:
        super().__init__(rule, env)
        self.book = ProofBook(env)
        self.lies = [x for x in CHUNK_LIES if x in rule.params["lies"]] or ["data"]
        self.instead = rule.params["mode"] == "instead"
        self.push = bool(rule.params["push"])
        self.asked: list[tuple[int, int, bytes]] = []  # (peer, seq, digest) this step
        self.answered: set[tuple[int, int]] = set()  # (peer, seq) answered this step
        self.out: list[Any] = []

    def _bogus(self, seq: int, digest: bytes, count: int | None) -> list[Signed]:
        rng, me = self.env.rng, self.env.node_id
        lie = self.lies[rng.randrange(len(self.lies))]
        self.counters[f"lie_{lie}"] += 1
        if lie == "count":  # claims one chunk more than there are
            chunks = [StateChunk(seq, digest, 0, (count or 1) + 1, rng.randbytes(32), me)]
        else:
            chunks = [StateChunk(seq, digest, i, count or 1, rng.randbytes(32), me)
                      for i in range(count or 1)]
        self.counters["bogus_chunks"] += len(chunks)
        return [self.env.signer.sign(c) for c in chunks]

    def observe(self, message: Any, now: float) -> None:
        self.book.observe(message)
        if not isinstance(message, Signed) or not self.active(now):
            return
        st = message.statement
        me = self.env.node_id
        if isinstance(st, FetchState) and st.replica != me and st.replica < self.env.n:
            if len(self.asked) < MAX_ASKED:
                self.asked.append((st.replica, st.seq, st.state_digest))
        elif isinstance(st, Status) and self.push and st.replica != me \
                and st.replica < self.env.n:
            latest = self.book.latest()
            if latest is not None and st.stable_seq < latest[0]:
                self.counters["pushed"] += 1
                self.out += [Send(st.replica, c) for c in self._bogus(latest[0], latest[1],
                                                                       None)]

    def transform(self, effect: Any, now: float) -> list[Any]:
        if not isinstance(effect, Send) or not self.active(now):
            return [effect]
        st = getattr(effect.message, "statement", None)
        if not isinstance(st, StateChunk) or st.replica != self.env.node_id:
            return [effect]
        out: list[Any] = []
        key = (effect.to, st.seq)
        if key not in self.answered:  # its replica's first honest chunk of this answer
            self.answered.add(key)
            out += [Send(effect.to, c) for c in self._bogus(st.seq, st.state_digest, st.count)]
        if self.instead:
            self.counters["honest_chunks_withheld"] += 1
        else:
            out.append(effect)
        return out

    def due(self, now: float) -> list[Any]:
        out, self.out = self.out, []
        for peer, seq, digest in self.asked:
            if (peer, seq) not in self.answered:  # its replica had no such state: lie anyway
                self.answered.add((peer, seq))
                out += [Send(peer, c) for c in self._bogus(seq, digest, None)]
        self.asked = []
        self.answered = set()
        return out


class BadNewView(Behaviour):
    """A Byzantine new primary: different valid NEW-VIEWs to different backups, a NEW-VIEW
    with a wrong O, or fresh PRE-PREPAREs against its own NEW-VIEW's O.

    * `split`: its replica's NEW-VIEW goes to group A (half the backups); group B gets
      one built from another set of 2f+1 valid VIEW-CHANGEs (those it received, its
      own with or without its certificates), the one whose O differs most (the same O
      when no set gives another; counted `split_same_o`). Both pass `new_view_problem`.
      With `cross`, a backup of group B whose PREPARE shows it took its version's
      pre-prepare for a seq (once another backup prepared that seq too) is sent group
      A's PRE-PREPARE for it, with its batch: a correct backup refuses it and holds a
      proof against the primary. Group A sees nothing wrong and stays in the view, so
      it would catch a backup of B that signed two PREPAREs for one (view, seq).
    * `wrong_o`: O changed in its last entry (a digest swapped for the null request or
      back), or one null entry added: correct backups refuse it (`new_view_wrong_o`).
    * `reissue`: an honest NEW-VIEW; then, as with `cross`, each backup of group B gets
      a fresh PRE-PREPARE for a seq of O with another batch (the same requests, a later
      batch_time): a correct backup keeps its NEW-VIEW's pre-prepare (PROTOCOL.md
      "Normal case": slots filled from O belong to the new view).
    """

    name = "bad-new-view"

    def __init__(self, rule: BehaviourRule, env: BehaviourEnv) -> None:
        super().__init__(rule, env)
        self.geo = env.geometry()
        self.mode = rule.params["mode"]
        self.cross = bool(rule.params["cross"]) if self.mode == "split" else self.mode == "reissue"
        self.vcs: dict[int, dict[int, Signed]] = {}  # view -> replica -> valid VIEW-CHANGE
        self.batches: dict[bytes, Batch] = {NULL_DIGEST: NULL_BATCH}
        self._made: dict[bytes, dict[int, Signed]] = {}  # NEW-VIEW body -> peer -> version
        self._pps: dict[tuple[int, int, bytes], Signed] = {}
        self.view = -1  # the view of the NEW-VIEW it last rewrote
        self.o: list[dict[int, bytes]] = []  # the O of each version (index: group)
        self.group_of: dict[int, int] = {}  # peer -> its version
        self.prepared_by: dict[int, set[int]] = {}  # seq -> backups seen preparing it
        self.fed: set[tuple[int, int]] = set()  # (peer, seq) sent a second PRE-PREPARE
        self.out: list[Any] = []
        self._wall: Any = None

    def wall(self, now: float, wall: Any) -> Any:
        self._wall = wall
        return wall

    def _keep_batch(self, proposal: Proposal) -> None:
        pp = proposal.pre_prepare.statement
        if isinstance(pp, PrePrepare) and pp.digest not in self.batches:
            _remember(self.batches, pp.digest, proposal.batch, MAX_BATCHES)

    def _batch(self, digest: bytes) -> Batch | None:
        batch = self.batches.get(digest)
        if batch is None or (digest != NULL_DIGEST and batch_digest(batch) != digest):
            return None
        return batch

    def _keep_vc(self, signed: Signed, verified: bool = False) -> None:
        vc: ViewChange = signed.statement  # type: ignore[assignment]
        if self.vcs.get(vc.view, {}).get(vc.replica) == signed:
            return  # a resend: checked already
        if vc.replica >= self.geo.n or view_change_problem(self.geo, vc) is not None:
            return
        if not verified and not self.env.verified(signed):
            return
        self.vcs.setdefault(vc.view, {})[vc.replica] = signed
        while len(self.vcs) > 3:
            del self.vcs[min(self.vcs)]

    def observe(self, message: Any, now: float) -> None:
        if isinstance(message, Proposal):
            self._keep_batch(message)
            return
        if not isinstance(message, Signed):
            return
        st = message.statement
        if isinstance(st, ViewChange):
            self._keep_vc(message)
        elif isinstance(st, Prepare) and st.view == self.view and self.cross \
                and self.active(now) and st.replica < self.geo.n:
            self._feed(st)

    def _pp(self, view: int, seq: int, digest: bytes) -> Signed:
        key = (view, seq, digest)
        signed = self._pps.get(key)
        if signed is None:
            signed = _remember(self._pps, key, self.env.signer.sign(
                PrePrepare(view, seq, digest, self.env.node_id)), 4 * MAX_BATCHES)
        return signed

    def _new_view(self, view: int, vcs: list[Signed], digests: Iterable[tuple[int, bytes]]
                  ) -> Signed:
        pps = tuple(self._pp(view, seq, d) for seq, d in digests)
        vcs = sorted(vcs, key=lambda s: s.statement.replica)  # type: ignore[union-attr]
        return self.env.signer.sign(NewView(view, tuple(vcs), pps, self.env.node_id))

    # -- the versions of one NEW-VIEW -------------------------------------

    def _wrong_o(self, nv: NewView) -> Signed:
        digests = [(p.statement.seq, p.statement.digest) for p in nv.pre_prepares]  # type: ignore[union-attr]
        if digests:
            seq, d = digests[-1]
            digests[-1] = (seq, sha256(b"bft-wrong-o" + d) if d == NULL_DIGEST else NULL_DIGEST)
        else:
            min_s = max(s.statement.stable_seq for s in nv.view_changes)  # type: ignore[union-attr]
            digests = [(min_s + 1, NULL_DIGEST)]
        self.counters["wrong_o"] += 1
        return self._new_view(nv.view, list(nv.view_changes), digests)

    def _alternative(self, nv: NewView) -> tuple[Signed | None, dict[int, bytes]]:
        """A second valid NEW-VIEW for nv.view whose O differs most from nv's (None when
        no other set of 2f+1 VIEW-CHANGEs is at hand), and its O."""
        me, view, quorum = self.env.node_id, nv.view, self.geo.quorum
        pool: dict[int, list[Signed]] = {}
        for s in nv.view_changes:  # checked by its replica
            pool.setdefault(s.statement.replica, []).append(s)  # type: ignore[union-attr]
        for r, s in sorted(self.vcs.get(view, {}).items()):
            if s not in pool.setdefault(r, []):
                pool[r].append(s)
        for s in list(pool.get(me, [])):  # its own, without its certificates
            vc: ViewChange = s.statement  # type: ignore[assignment]
            if vc.prepared:
                bare = self.env.signer.sign(replace(vc, prepared=()))
                if bare not in pool[me]:
                    pool[me].append(bare)
        mine = {p.statement.seq: p.statement.digest for p in nv.pre_prepares}  # type: ignore[union-attr]
        # the most seqs both re-propose with different digests (two pre-prepares for one
        # (view, seq)), then the most seqs that differ at all
        best: tuple[tuple[int, int], list[Signed], dict[int, bytes]] | None = None
        honest = sorted(s.body for s in nv.view_changes)
        candidates = (list(choice) for members in itertools.combinations(sorted(pool), quorum)
                      for choice in itertools.product(*(pool[r] for r in members)))
        for vcs in itertools.islice(candidates, MAX_SPLIT_TRIES):
            if sorted(s.body for s in vcs) == honest:
                continue
            plan = plan_new_view([s.statement for s in vcs], NULL_DIGEST)  # type: ignore[misc]
            o = dict(plan.digests)
            diff = (sum(1 for q in o if q in mine and o[q] != mine[q]),
                    sum(1 for q in set(o) | set(mine) if o.get(q) != mine.get(q)))
            if best is None or diff > best[0]:
                best = (diff, vcs, o)
        if best is None:
            return None, mine
        if best[0] == (0, 0):
            self.counters["split_same_o"] += 1
        made = self._new_view(view, best[1], sorted(best[2].items()))
        problem, _ = new_view_problem(self.geo, made.statement, NULL_DIGEST)  # type: ignore[arg-type]
        if problem is not None:  # never expected
            self.counters["split_invalid"] += 1
            return None, mine
        return made, best[2]

    def _versions(self, signed: Signed) -> dict[int, Signed]:
        made = self._made.get(signed.body)
        if made is not None:
            return made
        nv: NewView = signed.statement  # type: ignore[assignment]
        me, n = self.env.node_id, self.env.n
        peers = [j for j in range(n) if j != me]
        mine = {p.statement.seq: p.statement.digest for p in nv.pre_prepares}  # type: ignore[union-attr]
        if self.mode == "wrong_o":
            bad = self._wrong_o(nv)
            return _remember(self._made, signed.body, {j: bad for j in peers})
        _, group_b, _ = self.env.collusion.split(me, n, 0)
        self.view, self.o, self.group_of = nv.view, [mine], {j: 0 for j in peers}
        self.prepared_by, self.fed = {}, set()
        versions = {j: signed for j in peers}
        if self.mode == "split":
            other, o_other = self._alternative(nv)
            if other is None:
                self.counters["split_impossible"] += 1  # no other 2f+1 VIEW-CHANGEs at hand
            else:
                self.o.append(o_other)
                for j in group_b:
                    versions[j], self.group_of[j] = other, 1
                self.counters["split_new_views"] += 1
        else:  # reissue: group B gets the second pre-prepares
            for j in group_b:
                self.group_of[j] = 1
            self.o.append(mine)
        return _remember(self._made, signed.body, versions)

    # -- second PRE-PREPAREs ------------------------------------------------

    def _feed(self, p: Prepare) -> None:
        """Backup p.replica prepared p.seq (its version's pre-prepare): once another backup
        prepared that seq too, send it a second PRE-PREPARE for the seq, once."""
        j, seq = p.replica, p.seq
        seen = self.prepared_by.setdefault(seq, set())
        seen.add(j)
        ready = [k for k in sorted(seen) if (k, seq) not in self.fed and len(seen) >= 2]
        for k in ready:
            group = self.group_of.get(k)
            if group != 1:  # only group B is fed: group A stays in the view, watching
                continue
            self.fed.add((k, seq))
            proposal = self._second(group, seq)
            if proposal is not None:
                self.out.append(Send(k, proposal))
                self.counters["second_pre_prepares"] += 1

    def _second(self, group: int, seq: int) -> Proposal | None:
        own = self.o[group].get(seq) if len(self.o) > group else None
        if self.mode == "split":
            other = self.o[1 - group].get(seq) if len(self.o) == 2 else None
            if other is None or other == own:
                return None
            batch = self._batch(other)
            return None if batch is None else Proposal(self._pp(self.view, seq, other), batch)
        # reissue: the same requests under a later batch_time, so another digest
        if own is None:
            return None
        batch = self._batch(own)
        if batch is None:
            return None
        now_us = self._wall.midpoint_us if self._wall is not None else 0
        fresh = Batch(max(now_us, batch.batch_time + 1), batch.requests)
        digest = batch_digest(fresh)
        return Proposal(self._pp(self.view, seq, digest), fresh)

    def transform(self, effect: Any, now: float) -> list[Any]:
        if not isinstance(effect, (Send, Broadcast)):
            return [effect]
        message = effect.message
        if isinstance(message, Proposal):
            self._keep_batch(message)
            return [effect]
        if not isinstance(message, Signed) or not _own(message, self.env.node_id):
            return [effect]
        st = message.statement
        if isinstance(st, ViewChange):
            self._keep_vc(message, verified=True)
            return [effect]
        if not isinstance(st, NewView) or not self.active(now):
            return [effect]
        versions = self._versions(message)
        if isinstance(effect, Send):
            return [Send(effect.to, versions.get(effect.to, message))]
        return [Send(j, versions[j]) for j in sorted(versions)]

    def due(self, now: float) -> list[Any]:
        out, self.out = self.out, []
        return out


class CrashAt(Behaviour):
    """Crash at an event of its own replica; the driver restarts it from its storage.

    Events: it sends its CHECKPOINT (`checkpoint`), a PRE-PREPARE, a PREPARE or a
    COMMIT, it enters a view change (`view_change`: its VIEW-CHANGE goes out) or a view
    (`new_view`), it executes a batch (`execute`); `seq` and `view` narrow it down.
    At the first matching effect of a step in the window it asks the driver for a
    crash (`BehaviourEnv.request_crash`); if granted, the step's effects are cut: with
    `when = "after"` right after the triggering message (or event), with "before"
    right before its message (its WAL record, written first, survives). Nothing else
    of that step happens; the driver crashes the node (unsynced records are lost) and
    restarts it after `restart_after_s`. A correct replica recovers from any such
    point: the node stays judged.
    """

    name = "crash-at"

    def __init__(self, rule: BehaviourRule, env: BehaviourEnv) -> None:
        super().__init__(rule, env)
        self.event = rule.params["event"]
        self.seq = int(rule.params["seq"])
        self.view = int(rule.params["view"])
        self.before = rule.params["when"] == "before"
        self.crashed = False

    def _wanted(self, seq: int | None, view: int | None) -> bool:
        return (not self.seq or seq == self.seq) and (not self.view or view == self.view)

    def _own_message(self, effect: Any, kind: type) -> Any:
        if not isinstance(effect, (Send, Broadcast)):
            return None
        message = effect.message
        signed = message.pre_prepare if isinstance(message, Proposal) else message
        st = getattr(signed, "statement", None)
        if isinstance(st, kind) and getattr(st, "replica", None) == self.env.node_id:
            return st
        return None

    def _trigger(self, stream: list[Any]) -> tuple[int, int] | None:
        """(index of the triggering effect, index of its message) in `stream`, or None."""
        kinds = {"checkpoint": Checkpoint, "pre_prepare": PrePrepare, "prepare": Prepare,
                 "commit": Commit}
        for k, e in enumerate(stream):
            if self.event in kinds:
                st = self._own_message(e, kinds[self.event])
                if st is not None and self._wanted(st.seq, getattr(st, "view", None)):
                    return k, k
            elif self.event == "execute":
                if isinstance(e, Executed) and self._wanted(e.seq, e.view):
                    return k, k
            elif isinstance(e, Event) and e.kind == {"view_change": "view_change_start",
                                                      "new_view": "new_view"}[self.event]:
                view = e.fields.get("view")
                if self.view and view != self.view:  # `seq` does not apply to views
                    continue
                kind = ViewChange if self.event == "view_change" else NewView
                sent = [m for m in range(k) if (st := self._own_message(stream[m], kind))
                        is not None and st.view == view]
                return k, (sent[0] if sent else k)
        return None

    def finish(self, stream: list[Any], now: float) -> list[Any]:
        if self.crashed:
            return []  # nothing leaves a dead node
        request = self.env.request_crash
        if request is None or not self.active(now):
            return stream
        found = self._trigger(stream)
        if found is None or not request(self.rule):
            return stream
        at, message_at = found
        self.crashed = True
        self.counters["crashes"] += 1
        cut = message_at if self.before else at + 1
        return stream[:cut] + [Event("crash_point", {"node": self.env.node_id,
                                                     "event": self.event,
                                                     "when": "before" if self.before
                                                     else "after"})]


_CLASSES: dict[str, type[Behaviour]] = {
    "lie": Lie, "equivocate": Equivocate, "pause": Pause, "silent": Silent,
    "replay": Replay, "clock-skew": ClockSkew, "slow": Slow, "withhold": Withhold,
    "bogus-chunks": BogusChunks, "bad-new-view": BadNewView, "crash-at": CrashAt,
}
#: The order in which outputs pass through behaviours (`bogus-chunks` after `silent`: a
#: silent liar still lies in its chunks; `crash-at` last: it cuts what the others made).
_ORDER = ("clock-skew", "pause", "lie", "equivocate", "withhold", "bad-new-view", "replay",
          "slow", "silent", "bogus-chunks", "crash-at")


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
        self._control_pause: Behaviour | None = None  # the admin's pause, one of `live`
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
            self._last_timer = self._inner_deadline = None  # (as `_step` does for a tick)
            return self._pass_through(self.inner.tick(now, wall), now)
        return self._step(now, wall, lambda w: self.inner.tick(now, w), None, tick=True)

    # -- live switching (the dashboard's set-behaviour) ------------------

    def set_live_behaviour(self, name: str, params: Mapping[str, Any] | None = None) -> None:
        """Switch a behaviour on from now on, replacing the previous live one ("" = none).

        Raises ConfigError for an unknown behaviour or parameter (nothing changes then)."""
        if not name:
            self.live = [b for b in self.live if b is self._control_pause]
            self.counters["live_cleared"] += 1
            return
        start = max(0.0, self._last_now - (self.env.origin_s or 0.0))
        rule = make_rule(self.env.node_id, name, start_s=start, params=params,
                         field="set_behaviour")
        if rule.behaviour in LIFECYCLE | SIMULATOR_ONLY or rule.params.get("mode") == "twins":
            raise ConfigError(f"{rule.behaviour} cannot be switched on in a running node",
                              field="set_behaviour.behaviour")
        self.live = [b for b in self.live if b is self._control_pause]
        self.live.append(_CLASSES[rule.behaviour](rule, self.env))
        self.counters["live_set"] += 1

    def pause_for(self, now: float, duration_s: float) -> None:
        """The admin's pause: from `now`, hold every input and run no timer for
        `duration_s`, then resume with the stale backlog (as a `pause` rule does). Beside
        the live behaviour; a new pause replaces the previous one."""
        start = max(0.0, now - (self.env.origin_s or 0.0))
        rule = make_rule(self.env.node_id, "pause", start_s=start,
                         params={"duration_s": max(duration_s, 1e-3)}, field="pause")
        pause = _CLASSES["pause"](rule, self.env)
        self.live = [b for b in self.live if b is not self._control_pause] + [pause]
        self._control_pause = pause
        self.counters["control_pauses"] += 1

    def resume(self) -> None:
        """End the admin's pause now (the backlog is replayed at the next step)."""
        if self._control_pause is not None:
            self.live = [b for b in self.live if b is not self._control_pause]
            self._control_pause = None

    def holding(self, now: float) -> bool:
        """True while a pause holds the inputs."""
        return any(b.hold(now) for b in self._all())

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
        if tick:
            # the driver's deadline was consumed by this tick (bft/driver.py's timer
            # contract): the next one is announced again even when it equals the one passed
            # on before. Else an early tick (bft/node.py's tick_soon, on an admin's Heal or
            # Clear) with nothing due left the node with no timer at all: no STATUS, no
            # transfer retry, never ticked again in an idle cluster (issue 22's catch-up bug,
            # tests/test_catchup_regressions.py)
            self._last_timer = None
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
            if tick:
                self._inner_deadline = None  # ticked: the replica announces its next one
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
        for b in behaviours:
            stream = b.finish(stream, now)
            if b.first_acted_s is None and b.counters:
                b.first_acted_s = now
        if any(getattr(b, "crashed", False) for b in behaviours):
            return stream  # the driver crashes the node now: no timer to set
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
        self._last_timer = None  # the driver's deadline is consumed: announce the next again
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
