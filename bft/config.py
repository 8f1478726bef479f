"""Cluster configuration: who the replicas are, where they listen, and the knobs.

A config is a TOML file (see `configs/local-4.toml` for a commented one):

```toml
[cluster]
name = "local-4"
f = 1
key_dir = "keys"                 # optional, relative to this file

[[nodes]]
id = 0
address = "127.0.0.1:7100"       # where peers, clients and the admin send to this node
listen = "0.0.0.0:7100"          # optional: what the node binds (default: address)
public_key = "hex..."            # optional: else key_dir/replica-0.pub

[clients]
count = 4                        # ids 0..3, or [[clients]] id = .., public_key = ..

[admin]       public_key = "hex..."   # optional: else key_dir/admin.pub

[telemetry]   monitor = "127.0.0.1:7199", metrics_port = 9100
[batching]    max_requests, delay_s, max_in_flight
[checkpoints] interval, log_window
[timeouts]    view_change_s, view_change_min_s, view_change_max_s,
              phi_threshold, client_s, max_clock_skew_s, client_timestamp_window_s,
              throughput_window_s, throughput_grace_s, min_throughput_fraction,
              max_throughput_fraction, throughput_raise
[network]     max_datagram_bytes, status_interval_s, status_answer_interval_s,
              state_answer_interval_s, stranger_budget, stranger_rate
[storage]     fsync = "always" | "never"
[limits]      max_message_bytes, max_op_bytes, max_text_chars, max_items, max_depth
[quotas]      max_keys_per_client, max_bytes_per_client
```

Every check raises `ConfigError` naming the file, the field (as its TOML
path, e.g. `timeouts.view_change_s` or `nodes[2].address`) and the fix.
Unknown sections and keys are rejected, so a typo never passes silently.
`ClusterConfig` validates itself on construction, whichever way it is built.

Keys: `load_keyring()` gathers the public keys of every identity (inline in
the config: `[[nodes]]`/`[[clients]]` public_key, `[admin] public_key`; else `replica-<i>.pub`, `client-<c>.pub`, `admin.pub` in the key
directory) and loads private keys (`replica-<i>.key`, ...) on demand.
"""

from __future__ import annotations

import difflib
import functools
import ipaddress
import math
import re
import tomllib
from collections.abc import Mapping
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any, TypeGuard

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from bft.app import DEFAULT_KV_LIMITS, TOKEN_INDEX_SPAN, KVLimits
from bft.codec import DEFAULT_LIMITS, Limits
from bft.crypto import (
    Identity,
    Signer,
    Verifier,
    load_private_key,
    load_public_key,
    parse_public_key_hex,
    public_key_bytes,
)
from bft.errors import ConfigError
from bft.messages import PUBLIC_KEY_SIZE
from bft.quorum import quorum_size, weak_size

__all__ = [
    "FIELD_PATHS",
    "ClientEntry",
    "ClusterConfig",
    "DuplicateKeyError",
    "Keyring",
    "NodeAddress",
    "default_state_dir",
    "format_address",
    "identities",
    "inline_public_key",
    "key_file_stem",
    "load_keyring",
    "parse_address",
    "resolve_key_dir",
]

_KEYGEN_FIX = "run `bft keygen CONFIG`"

# --------------------------------------------------------------------------
# Addresses
# --------------------------------------------------------------------------

_LABEL = r"(?!-)[A-Za-z0-9-]{1,63}(?<!-)"
_HOSTNAME = re.compile(rf"{_LABEL}(?:\.{_LABEL})*\.?")
_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,63}")
_MAX_UDP_PAYLOAD = 65507
#: The datagram frame's format (transport/frame.py; bft/ does not import transport, a test
#: checks the two agree): header + checksum bytes per datagram, at most this many fragments
#: per message, a u32 total length.
_FRAME_OVERHEAD_BYTES = 27
_FRAME_MAX_FRAGMENTS = 2**16 - 1
_FRAME_MAX_TOTAL_LENGTH = 2**32 - 1
#: The largest `limits.max_message_bytes` accepted: a node's reassembly buffers hold up to
#: 16 messages of that size by default (transport/reassembly.py), so this bounds them
#: (about 1 GiB); 16 times the default limit.
MAX_MESSAGE_BYTES_CAP = 64 * 1024 * 1024


def _host_problem(host: Any) -> str | None:
    """Why `host` is not an IP literal or a DNS name, or None if it is one."""
    if not isinstance(host, str) or not host:
        return "empty host"
    try:
        ipaddress.ip_address(host)
        return None
    except ValueError:
        pass
    if len(host) > 253 or not _HOSTNAME.fullmatch(host):
        return f"{host!r} is neither an IP address nor a host name"
    if host.rstrip(".").rsplit(".", 1)[-1].isdigit():
        return f"{host!r} is not a valid IPv4 address"
    return None


def _is_unspecified(host: str) -> bool:
    try:
        return ipaddress.ip_address(host).is_unspecified
    except ValueError:
        return False


def parse_address(
    text: Any, *, file: str | None = None, field: str | None = None
) -> tuple[str, int]:
    """Parse "host:port" (IPv6 as "[::1]:7000") into (host, port); ConfigError if invalid."""
    fix = 'write it as "host:port", e.g. "127.0.0.1:7100" or "[::1]:7100"'
    if not isinstance(text, str):
        raise ConfigError(
            f"expected an address string, got {_type_name(text)}", file=file, field=field, fix=fix
        )
    if text.startswith("["):
        host, sep, port_text = text[1:].partition("]:")
        if not sep:
            raise ConfigError(f"cannot parse address {text!r}", file=file, field=field, fix=fix)
    else:
        host, sep, port_text = text.rpartition(":")
        if not sep or ":" in host:
            raise ConfigError(f"cannot parse address {text!r}", file=file, field=field, fix=fix)
    problem = _host_problem(host)
    if problem:
        raise ConfigError(problem, file=file, field=field, fix=fix)
    if not port_text.isdigit() or not 1 <= int(port_text) <= 65535:
        raise ConfigError(f"port {port_text!r} is not in 1..65535", file=file, field=field, fix=fix)
    return host, int(port_text)


def format_address(host: str, port: int) -> str:
    """The "host:port" text of an address (IPv6 in brackets)."""
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


# --------------------------------------------------------------------------
# The config
# --------------------------------------------------------------------------


@dataclass(frozen=True)
class NodeAddress:
    """Replica `id` is reached at (`host`, `port`), its advertised address: peers, clients
    and the admin send there, and its datagrams must arrive from there (peers check). It
    binds `listen` when given (an address of its own interface, or 0.0.0.0 / ::, when the
    advertised address is not on the interface: NAT, a cloud's public address), else the
    advertised address. Optional inline public key."""

    id: int
    host: str
    port: int
    public_key: bytes | None = None
    listen: tuple[str, int] | None = None

    @property
    def address(self) -> tuple[str, int]:
        """(host, port), as a socket wants it: where to send to this node."""
        return (self.host, self.port)

    @property
    def bind_address(self) -> tuple[str, int]:
        """What this node's socket binds: `listen` if given, else the advertised address."""
        return self.listen if self.listen is not None else (self.host, self.port)

    def __str__(self) -> str:
        return format_address(self.host, self.port)


#: Frame sender ids (`transport.frame`: a u32 the sender claims, not authenticated): a
#: replica sends with its id (0..n-1), a client with CLIENT_SENDER_BASE + its id, the
#: dashboard with 2**32 - 1.
CLIENT_SENDER_BASE = 1 << 31
#: Client ids are below this, so that a client's sender id fits the u32 and is not the
#: dashboard's.
CLIENT_ID_LIMIT = (1 << 31) - 1


@dataclass(frozen=True)
class ClientEntry:
    """A client allowed to submit requests (id below CLIENT_ID_LIMIT); optional inline
    public key."""

    id: int
    public_key: bytes | None = None


#: TOML section -> {TOML key: ClusterConfig field}. Nodes, clients and limits are special.
_SECTIONS: dict[str, dict[str, str]] = {
    "cluster": {"name": "name", "f": "f", "key_dir": "key_dir"},
    "telemetry": {"monitor": "monitor", "metrics_port": "metrics_port"},
    "batching": {
        "max_requests": "batch_max_requests",
        "delay_s": "batch_delay_s",
        "max_in_flight": "max_in_flight",
    },
    "checkpoints": {"interval": "checkpoint_interval", "log_window": "log_window"},
    "timeouts": {
        "view_change_s": "view_change_timeout_s",
        "view_change_min_s": "view_change_timeout_min_s",
        "view_change_max_s": "view_change_timeout_max_s",
        "phi_threshold": "phi_threshold",
        "client_s": "client_timeout_s",
        "max_clock_skew_s": "max_clock_skew_s",
        "client_timestamp_window_s": "client_timestamp_window_s",
        "throughput_window_s": "throughput_window_s",
        "throughput_grace_s": "throughput_grace_s",
        "min_throughput_fraction": "min_throughput_fraction",
        "max_throughput_fraction": "max_throughput_fraction",
        "throughput_raise": "throughput_raise",
    },
    "network": {
        "max_datagram_bytes": "max_datagram_bytes",
        "status_interval_s": "status_interval_s",
        "status_answer_interval_s": "status_answer_interval_s",
        "state_answer_interval_s": "state_answer_interval_s",
        "stranger_budget": "stranger_budget",
        "stranger_rate": "stranger_rate",
    },
    "storage": {"fsync": "fsync"},
    "quotas": {
        "max_keys_per_client": "max_keys_per_client",
        "max_bytes_per_client": "max_bytes_per_client",
    },
}
_LIMIT_KEYS = tuple(f.name for f in fields(Limits))
_TOP_LEVEL = (*_SECTIONS, "nodes", "clients", "admin", "limits")

#: ClusterConfig field -> its TOML path, used to name fields in errors.
FIELD_PATHS: dict[str, str] = {
    attr: f"{section}.{key}" for section, keys in _SECTIONS.items() for key, attr in keys.items()
}
FIELD_PATHS.update({"nodes": "nodes", "clients": "clients", "limits": "limits"})

_INT_FIELDS = (
    "f",
    "batch_max_requests",
    "max_in_flight",
    "checkpoint_interval",
    "log_window",
    "max_datagram_bytes",
    "stranger_budget",
    "stranger_rate",
    "max_keys_per_client",
    "max_bytes_per_client",
)
_FLOAT_FIELDS = (
    "batch_delay_s",
    "view_change_timeout_s",
    "view_change_timeout_min_s",
    "view_change_timeout_max_s",
    "phi_threshold",
    "status_interval_s",
    "status_answer_interval_s",
    "state_answer_interval_s",
    "client_timeout_s",
    "max_clock_skew_s",
    "client_timestamp_window_s",
    "throughput_window_s",
    "throughput_grace_s",
    "min_throughput_fraction",
    "max_throughput_fraction",
    "throughput_raise",
)
_MAX_DURATION_S = 3600.0
_MAX_TIMESTAMP_WINDOW_S = 366 * 86400.0


def _type_name(value: Any) -> str:
    if isinstance(value, bool):
        return "a boolean"
    if isinstance(value, int):
        return "an integer"
    if isinstance(value, float):
        return "a number"
    if isinstance(value, str):
        return f"the string {value!r}"
    if isinstance(value, (list, tuple)):
        return "an array"
    if isinstance(value, dict):
        return "a table"
    return type(value).__name__


def _num(value: float) -> str:
    """A number as a person writes it: 3, 0.5, 1e+09."""
    return str(value) if _is_int(value) else f"{value:g}"


def _is_int(value: Any) -> TypeGuard[int]:
    return isinstance(value, int) and not isinstance(value, bool)


@dataclass(frozen=True)
class ClusterConfig:
    """A validated cluster configuration (immutable).

    `n = len(nodes)` replicas with ids `0..n-1` (kept sorted by id), tolerating
    `f` Byzantine ones (`n >= 3f+1`). Durations are in seconds. `metrics_port`
    is a base port: node i serves metrics on `metrics_port + i`. `key_dir` is
    absolute once loaded from a file (relative paths are taken from the
    config file's directory); `source` is the file it came from.

    `client_timestamp_window_s`: a request numbered above its batch's agreed time (in
    microseconds) plus this window is refused and never executed (issue 21, item 5), so
    one request cannot make every later request of its client old. Real clients number
    requests from the time of day in microseconds (bft/node.py `claim_client_id`), one
    more per request, so theirs stay below their clock; the window covers their clock's
    skew. A wrongly numbered request that did execute locks its client id out for at
    most the window (until a client that restarts numbers from its clock again).
    """

    name: str
    f: int
    nodes: tuple[NodeAddress, ...]
    clients: tuple[ClientEntry, ...]
    monitor: tuple[str, int] | None = None
    metrics_port: int | None = None
    batch_max_requests: int = 64
    batch_delay_s: float = 0.002
    max_in_flight: int = 8
    checkpoint_interval: int = 128
    log_window: int = 256
    view_change_timeout_s: float = 1.0
    view_change_timeout_min_s: float = 0.2
    view_change_timeout_max_s: float = 10.0
    phi_threshold: float = 8.0
    status_interval_s: float = 0.1
    # Rate limits on what a peer's message makes a replica send (issue 21, amplification):
    # at most one STATUS of each peer answered per status_answer_interval_s (below
    # status_interval_s, the period of a correct peer's STATUS, so those are all answered),
    # and at most one snapshot sent to each peer per state_answer_interval_s (below 0.5 s,
    # the least time a correct peer waits before it asks again). 0 turns a limit off.
    status_answer_interval_s: float = 0.05
    state_answer_interval_s: float = 0.25
    client_timeout_s: float = 1.0
    max_clock_skew_s: float = 1.0
    client_timestamp_window_s: float = 3600.0
    # A slow primary (issue 21, item 1; Aardvark's adaptive view change, bft/throughput.py):
    # a view's throughput is judged per window of throughput_window_s (0: off) once
    # throughput_grace_s of the view passed; it must reach a fraction of what recent views
    # achieved, min_throughput_fraction at first, raised by throughput_raise per window up
    # to max_throughput_fraction.
    throughput_window_s: float = 1.0
    throughput_grace_s: float = 2.0
    min_throughput_fraction: float = 0.5
    max_throughput_fraction: float = 0.8
    throughput_raise: float = 0.01
    max_datagram_bytes: int = 1400
    # Datagrams from strangers (sources other than the replicas, the monitor and clients at
    # their verified addresses) a node reads per pass of its loop, and a second in the long
    # run; beyond that the kernel drops them unread (issue 21, transport/udp.py "Trusted
    # sources and strangers").
    stranger_budget: int = 64
    stranger_rate: int = 500
    # Per-client quotas on the replicated store (issue 21, item 6; bft.app.KVLimits): the
    # keys a client id owns (last wrote) and their key and value bytes. The store's global
    # caps (100,000 keys, 64 MiB) stay; these keep one client from filling them alone.
    max_keys_per_client: int = DEFAULT_KV_LIMITS.max_keys_per_client
    max_bytes_per_client: int = DEFAULT_KV_LIMITS.max_bytes_per_client
    fsync: str = "always"
    limits: Limits = DEFAULT_LIMITS
    key_dir: Path | None = None
    source: Path | None = None
    #: the admin's public key written in the config (`[admin] public_key`), else None
    #: (then `<key dir>/admin.pub`)
    admin_public_key: bytes | None = None

    # -- derived -------------------------------------------------------

    @property
    def kv_limits(self) -> KVLimits:
        """The store's limits with this config's per-client quotas (every replica the same).

        One shared object per quota pair: the store's op memo keys on the limits' identity.
        """
        return _kv_limits(self.max_keys_per_client, self.max_bytes_per_client)

    @property
    def n(self) -> int:
        """Number of replicas."""
        return len(self.nodes)

    @property
    def view_change_bound_s(self) -> float:
        """How long, at most, a correct replica with a request pending waits for a view that
        executes it once faults stop (the network delivers within the measured delays and at
        most f replicas are faulty; PROTOCOL.md "View change", liveness).

        Each view costs at most its progress timer plus its NEW-VIEW timer, and each timer
        is at most `view_change_timeout_max_s` (the doubling is capped there; nothing but a
        valid NEW-VIEW stops the NEW-VIEW timer, and only a primary that keeps ordering
        stretches the progress timer, up to the same cap). At most f views in a row have a
        faulty primary; add the view the faults stopped in and the one that works, and ten
        status intervals of loss recovery. With the defaults (f = 1, 10 s): 61 s."""
        return (2 * (self.f + 2) * self.view_change_timeout_max_s
                + 10 * self.status_interval_s)

    @property
    def quorum(self) -> int:
        """Certificate size: 2f+1 when n = 3f+1.

        In general ceil((n+f+1)/2), the smallest size at which any two
        quorums share a correct replica; still at most n-f when n >= 3f+1.
        """
        return quorum_size(self.n, self.f)

    @property
    def weak(self) -> int:
        """f+1: enough matching messages to include one correct replica."""
        return weak_size(self.f)

    def primary(self, view: int) -> int:
        """The id of the primary of `view`: view mod n."""
        return view % self.n

    def node(self, id: int) -> NodeAddress:
        """The node with `id`; ConfigError if there is none."""
        if _is_int(id) and 0 <= id < self.n:
            return self.nodes[id]
        raise ConfigError(
            f"no node with id {id!r} (ids are 0..{self.n - 1})",
            file=self._file,
            field="nodes",
            fix="pick an id from the config",
        )

    def client(self, id: int) -> ClientEntry:
        """The client with `id`; ConfigError if there is none."""
        for entry in self.clients:
            if entry.id == id:
                return entry
        raise ConfigError(
            f"no client with id {id!r}",
            file=self._file,
            field="clients",
            fix="add it to [clients] or [[clients]]",
        )

    @property
    def _file(self) -> str | None:
        return str(self.source) if self.source is not None else None

    # -- validation ----------------------------------------------------

    def _error(self, attr: str, message: str, fix: str | None = None) -> ConfigError:
        return ConfigError(message, file=self._file, field=FIELD_PATHS.get(attr, attr), fix=fix)

    def _range(self, attr: str, low: float, high: float, *, low_open: bool = False) -> None:
        value = getattr(self, attr)
        if (value <= low if low_open else value < low) or value > high:
            bound = f"> {_num(low)}" if low_open else f">= {_num(low)}"
            raise self._error(
                attr,
                f"{_num(value)} is out of range",
                fix=f"use a value {bound} and <= {_num(high)}",
            )

    def __post_init__(self) -> None:
        set_ = object.__setattr__
        if self.source is not None and not isinstance(self.source, Path):
            set_(self, "source", Path(self.source))
        if self.key_dir is not None and not isinstance(self.key_dir, Path):
            set_(self, "key_dir", Path(self.key_dir))

        # Types first, so later checks can trust them.
        for attr in _INT_FIELDS:
            if not _is_int(getattr(self, attr)):
                raise self._error(
                    attr, f"expected an integer, got {_type_name(getattr(self, attr))}"
                )
        for attr in _FLOAT_FIELDS:
            value = getattr(self, attr)
            if not (_is_int(value) or isinstance(value, float)):
                raise self._error(attr, f"expected a number of seconds, got {_type_name(value)}")
            set_(self, attr, float(value))
        for attr in ("name", "fsync"):
            if not isinstance(getattr(self, attr), str):
                raise self._error(attr, f"expected a string, got {_type_name(getattr(self, attr))}")

        if not _NAME.fullmatch(self.name):
            raise self._error(
                "name",
                f"{self.name!r} is not a usable cluster name",
                fix="use 1-64 letters, digits, '.', '_' or '-'",
            )
        if self.f < 0:
            raise self._error("f", f"f must be >= 0, got {self.f}")
        self._check_nodes()
        if self.n < 3 * self.f + 1:
            raise self._error(
                "f",
                f"{self.n} nodes cannot tolerate f={self.f} (need n >= 3f+1)",
                fix=f"add nodes up to {3 * self.f + 1} or lower f to {(self.n - 1) // 3}",
            )
        self._check_clients()
        _check_key(self.admin_public_key, self._file, "admin.public_key")
        self._check_distinct_keys()
        self._check_telemetry()

        if self.fsync not in ("always", "never"):
            raise self._error(
                "fsync", f"unknown fsync mode {self.fsync!r}", fix='use "always" or "never"'
            )
        if not isinstance(self.limits, Limits):
            raise self._error("limits", "expected a bft.codec.Limits")
        for key in _LIMIT_KEYS:
            value = getattr(self.limits, key)
            if not _is_int(value) or value < 1:
                raise ConfigError(
                    f"expected a positive integer, got {value!r}",
                    file=self._file,
                    field=f"limits.{key}",
                )

        # A fencing token numbers a request as seq * TOKEN_INDEX_SPAN + index in its batch
        # (bft.app.ExecContext): no batch may hold more requests than that.
        if self.batch_max_requests > TOKEN_INDEX_SPAN:
            raise self._error(
                "batch_max_requests",
                f"{self.batch_max_requests} requests per batch is more than a fencing token "
                f"can number ({TOKEN_INDEX_SPAN})",
                fix=f"use at most {TOKEN_INDEX_SPAN}",
            )
        if self.limits.max_items > TOKEN_INDEX_SPAN:
            raise ConfigError(
                f"{self.limits.max_items} items would let a batch hold more requests than a "
                f"fencing token can number ({TOKEN_INDEX_SPAN})",
                file=self._file,
                field="limits.max_items",
                fix=f"use at most {TOKEN_INDEX_SPAN}",
            )
        self._range("batch_max_requests", 1, self.limits.max_items)
        self._range("batch_delay_s", 0, 10.0)
        self._range("max_in_flight", 1, 1 << 20)
        self._range("checkpoint_interval", 1, 1 << 30)
        self._range("log_window", 1, 1 << 31)
        if self.log_window % self.checkpoint_interval:
            raise self._error(
                "log_window",
                f"{self.log_window} is not a multiple of checkpoints.interval "
                f"({self.checkpoint_interval})",
                fix=f"use e.g. {2 * self.checkpoint_interval}",
            )
        if self.max_in_flight > self.log_window:
            raise self._error(
                "max_in_flight",
                f"{self.max_in_flight} exceeds checkpoints.log_window ({self.log_window})",
                fix="lower it or widen the log window",
            )

        for attr in (
            "view_change_timeout_min_s",
            "view_change_timeout_s",
            "view_change_timeout_max_s",
            "client_timeout_s",
            "status_interval_s",
        ):
            self._range(attr, 0, _MAX_DURATION_S, low_open=True)
        for attr in ("status_answer_interval_s", "state_answer_interval_s"):
            self._range(attr, 0, _MAX_DURATION_S)
        if self.view_change_timeout_min_s > self.view_change_timeout_s:
            raise self._error(
                "view_change_timeout_min_s",
                f"{self.view_change_timeout_min_s:g} s is above "
                f"timeouts.view_change_s ({self.view_change_timeout_s:g} s)",
                fix="keep view_change_min_s <= view_change_s <= view_change_max_s",
            )
        if self.view_change_timeout_s > self.view_change_timeout_max_s:
            raise self._error(
                "view_change_timeout_max_s",
                f"{self.view_change_timeout_max_s:g} s is below "
                f"timeouts.view_change_s ({self.view_change_timeout_s:g} s)",
                fix="keep view_change_min_s <= view_change_s <= view_change_max_s",
            )
        self._range("phi_threshold", 0, 1000.0, low_open=True)
        self._range("max_clock_skew_s", 0, _MAX_DURATION_S)
        # a correct client's clock and a correct primary's batch time may each be a skew
        # away from the true time: the window must cover both
        self._range("client_timestamp_window_s", 0, _MAX_TIMESTAMP_WINDOW_S, low_open=True)
        if self.client_timestamp_window_s <= 2 * self.max_clock_skew_s:
            raise self._error(
                "client_timestamp_window_s",
                f"{_num(self.client_timestamp_window_s)} s does not cover twice "
                f"timeouts.max_clock_skew_s ({_num(self.max_clock_skew_s)} s): a correct "
                "client's requests could be refused",
                fix=f"use more than {_num(2 * self.max_clock_skew_s)} (default 3600)",
            )
        self._range("throughput_window_s", 0, _MAX_DURATION_S)
        self._range("throughput_grace_s", 0, _MAX_DURATION_S)
        self._range("min_throughput_fraction", 0.5, 0.9)
        self._range("max_throughput_fraction", self.min_throughput_fraction, 0.95)
        self._range("throughput_raise", 0, 0.1)
        self._range("max_datagram_bytes", 512, _MAX_UDP_PAYLOAD)
        self._range("stranger_budget", 1, 65536)
        self._range("stranger_rate", 1, 1_000_000)
        self._range("max_keys_per_client", 1, DEFAULT_KV_LIMITS.max_keys)
        self._range("max_bytes_per_client", 1, DEFAULT_KV_LIMITS.max_state_bytes)
        self._check_message_size()

    @property
    def max_message_bytes_limit(self) -> int:
        """The largest `limits.max_message_bytes` this config can carry: what fits the
        frame (MAX_FRAGMENTS fragments of `max_datagram_bytes` minus the frame overhead,
        and the u32 total length) and MAX_MESSAGE_BYTES_CAP (the reassembly bounds)."""
        per_fragment = self.max_datagram_bytes - _FRAME_OVERHEAD_BYTES
        return min(_FRAME_MAX_FRAGMENTS * per_fragment, _FRAME_MAX_TOTAL_LENGTH,
                   MAX_MESSAGE_BYTES_CAP)

    def _check_message_size(self) -> None:
        limit = self.max_message_bytes_limit
        if self.limits.max_message_bytes > limit:
            raise ConfigError(
                f"{self.limits.max_message_bytes} bytes is more than a message can be: at most "
                f"{_FRAME_MAX_FRAGMENTS} fragments of network.max_datagram_bytes - "
                f"{_FRAME_OVERHEAD_BYTES} bytes, a 32-bit length, and {MAX_MESSAGE_BYTES_CAP} "
                "bytes so that the reassembly buffers stay bounded",
                file=self._file,
                field="limits.max_message_bytes",
                fix=f"use at most {limit}",
            )

    def _check_nodes(self) -> None:
        if isinstance(self.nodes, list):
            object.__setattr__(self, "nodes", tuple(self.nodes))
        if not isinstance(self.nodes, tuple) or not self.nodes:
            raise self._error("nodes", "no nodes", fix="add a [[nodes]] table per replica")
        seen_ids: set[int] = set()
        seen_addresses: dict[tuple[str, int], int] = {}
        for index, node in enumerate(self.nodes):
            where = f"nodes[{index}]"
            if not isinstance(node, NodeAddress):
                raise ConfigError(
                    f"expected a NodeAddress, got {_type_name(node)}", file=self._file, field=where
                )
            if not _is_int(node.id) or node.id < 0:
                raise ConfigError(
                    f"id must be a non-negative integer, got {node.id!r}",
                    file=self._file,
                    field=f"{where}.id",
                )
            if node.id in seen_ids:
                raise ConfigError(
                    f"duplicate node id {node.id}",
                    file=self._file,
                    field=f"{where}.id",
                    fix="give every node its own id",
                )
            seen_ids.add(node.id)
            problem = _host_problem(node.host)
            if problem:
                raise ConfigError(problem, file=self._file, field=f"{where}.address")
            if _is_unspecified(node.host):
                raise ConfigError(
                    f"{node.host} is not an address peers can send to",
                    file=self._file,
                    field=f"{where}.address",
                    fix="use the address other nodes reach this node at",
                )
            if not _is_int(node.port) or not 1 <= node.port <= 65535:
                raise ConfigError(
                    f"port {node.port!r} is not in 1..65535",
                    file=self._file,
                    field=f"{where}.address",
                )
            key = (node.host.lower(), node.port)
            if key in seen_addresses:
                raise ConfigError(
                    f"address {node} is also used by node {seen_addresses[key]}",
                    file=self._file,
                    field=f"{where}.address",
                    fix="give every node its own host:port",
                )
            seen_addresses[key] = node.id
            _check_key(node.public_key, self._file, f"{where}.public_key")
            _check_listen(node, self._file, f"{where}.listen")
        for index, node in enumerate(self.nodes):
            if node.id >= len(self.nodes):
                raise ConfigError(
                    f"node id {node.id} is out of range for {len(self.nodes)} nodes",
                    file=self._file,
                    field=f"nodes[{index}].id",
                    fix=f"number the nodes 0..{len(self.nodes) - 1}",
                )
        object.__setattr__(self, "nodes", tuple(sorted(self.nodes, key=lambda n: n.id)))

    def _check_clients(self) -> None:
        if isinstance(self.clients, list):
            object.__setattr__(self, "clients", tuple(self.clients))
        if not isinstance(self.clients, tuple):
            raise self._error(
                "clients", f"expected a tuple of ClientEntry, got {_type_name(self.clients)}"
            )
        if not self.clients:
            raise self._error(
                "clients",
                "no clients: nothing could send a request",
                fix="add [clients] count = 4 (or more), or a [[clients]] table per client",
            )
        seen: set[int] = set()
        for index, client in enumerate(self.clients):
            where = f"clients[{index}]"
            if not isinstance(client, ClientEntry):
                raise ConfigError(
                    f"expected a ClientEntry, got {_type_name(client)}",
                    file=self._file,
                    field=where,
                )
            if not _is_int(client.id) or not 0 <= client.id < CLIENT_ID_LIMIT:
                raise ConfigError(
                    f"id must be an integer in 0..{CLIENT_ID_LIMIT - 1}, got {client.id!r}",
                    file=self._file,
                    field=f"{where}.id",
                    fix=f"client ids are below {CLIENT_ID_LIMIT} (frame sender ids are "
                    "CLIENT_SENDER_BASE + id, a u32)",
                )
            if client.id in seen:
                raise ConfigError(
                    f"duplicate client id {client.id}",
                    file=self._file,
                    field=f"{where}.id",
                    fix="give every client its own id",
                )
            seen.add(client.id)
            _check_key(client.public_key, self._file, f"{where}.public_key")

    def _check_distinct_keys(self) -> None:
        owners: dict[bytes, Identity] = {}
        for identity in identities(self):
            key, field = _inline_key(self, identity)
            if key is not None:
                _claim_key(owners, identity, key, self._file, field)

    def _check_telemetry(self) -> None:
        if self.monitor is not None:
            if (
                not isinstance(self.monitor, tuple)
                or len(self.monitor) != 2
                or _host_problem(self.monitor[0])
                or not _is_int(self.monitor[1])
                or not 1 <= self.monitor[1] <= 65535
            ):
                raise self._error(
                    "monitor",
                    f"invalid monitor address {self.monitor!r}",
                    fix='write it as "host:port"',
                )
            for node in self.nodes:
                if (node.host.lower(), node.port) == (self.monitor[0].lower(), self.monitor[1]):
                    raise self._error(
                        "monitor",
                        f"{format_address(*self.monitor)} is also node {node.id}'s address",
                        fix="give the monitor its own port",
                    )
        if self.metrics_port is not None:
            if not _is_int(self.metrics_port):
                raise self._error(
                    "metrics_port", f"expected an integer, got {_type_name(self.metrics_port)}"
                )
            self._range("metrics_port", 1, 65536 - self.n)

    # -- loading ---------------------------------------------------------

    @classmethod
    def load(cls, path: str | Path) -> ClusterConfig:
        """Read and validate a TOML config file; ConfigError for any problem, naming the file."""
        path = Path(path)
        try:
            text = path.read_bytes().decode("utf-8")
        except FileNotFoundError:
            raise ConfigError(
                "config file not found",
                file=str(path),
                fix="check the path; configs/local-4.toml is an example",
            ) from None
        except UnicodeDecodeError:
            raise ConfigError("config file is not UTF-8 text", file=str(path)) from None
        except OSError as exc:
            raise ConfigError(f"cannot read config file: {exc.strerror}", file=str(path)) from None
        try:
            data = tomllib.loads(text)
        except tomllib.TOMLDecodeError as exc:
            raise ConfigError(
                f"invalid TOML: {exc}", file=str(path), fix="fix the syntax at the position shown"
            ) from None
        return cls.from_dict(data, source=path)

    @classmethod
    def from_dict(cls, data: Mapping[str, Any], source: str | Path | None = None) -> ClusterConfig:
        """Build from parsed TOML (the layout in this module's docstring) and validate.

        `source` names the file in errors, and relative `key_dir`s are taken from its directory.
        """
        file = str(source) if source is not None else None
        if not isinstance(data, Mapping):
            raise ConfigError(f"expected a table, got {_type_name(data)}", file=file)
        _reject_unknown(data, _TOP_LEVEL, file, where=None)
        values: dict[str, Any] = {}
        for section, keys in _SECTIONS.items():
            table = data.get(section, {})
            if not isinstance(table, Mapping):
                raise ConfigError(
                    f"expected a table, got {_type_name(table)}",
                    file=file,
                    field=section,
                    fix=f"write it as [{section}]",
                )
            _reject_unknown(table, keys, file, where=section)
            for key, attr in keys.items():
                if key in table:
                    values[attr] = table[key]

        if "name" not in values:
            if source is None:
                raise ConfigError(
                    "missing",
                    file=file,
                    field="cluster.name",
                    fix='add name = "..." under [cluster]',
                )
            values["name"] = Path(source).stem
        if "f" not in values:
            raise ConfigError(
                "missing",
                file=file,
                field="cluster.f",
                fix="add f = <number of faulty nodes tolerated> under [cluster]",
            )
        if "monitor" in values:
            values["monitor"] = parse_address(
                values["monitor"], file=file, field="telemetry.monitor"
            )
        if "key_dir" in values:
            key_dir = values["key_dir"]
            if not isinstance(key_dir, str) or not key_dir:
                raise ConfigError(
                    f"expected a directory path, got {_type_name(key_dir)}",
                    file=file,
                    field="cluster.key_dir",
                )
            key_path = Path(key_dir).expanduser()
            if not key_path.is_absolute():
                base = Path(source).absolute().parent if source is not None else Path.cwd()
                key_path = base / key_path
            values["key_dir"] = key_path
        values["limits"] = _parse_limits(data.get("limits", {}), file)
        values["nodes"] = _parse_nodes(data.get("nodes"), file)
        values["clients"] = _parse_clients(data.get("clients"), file)
        values["admin_public_key"] = _parse_admin(data.get("admin", {}), file)
        return cls(**values, source=Path(source) if source is not None else None)

    @classmethod
    def local(
        cls,
        n: int = 4,
        *,
        f: int | None = None,
        host: str = "127.0.0.1",
        base_port: int = 7100,
        clients: int = 4,
        **overrides: Any,
    ) -> ClusterConfig:
        """A cluster of `n` nodes on one host, ports `base_port..base_port+n-1`.

        `f` defaults to the most the cluster tolerates, (n-1)//3; clients get
        ids 0..clients-1; `overrides` set any other field.
        """
        values: dict[str, Any] = {
            "name": f"local-{n}",
            "f": (n - 1) // 3 if f is None else f,
            "nodes": tuple(NodeAddress(i, host, base_port + i) for i in range(n)),
            "clients": tuple(ClientEntry(c) for c in range(clients)),
        }
        values.update(overrides)
        return cls(**values)


@functools.lru_cache(maxsize=16)
def _kv_limits(max_keys_per_client: int, max_bytes_per_client: int) -> KVLimits:
    default = DEFAULT_KV_LIMITS
    if (max_keys_per_client, max_bytes_per_client) == (
            default.max_keys_per_client, default.max_bytes_per_client):
        return default
    return KVLimits(max_keys_per_client=max_keys_per_client,
                    max_bytes_per_client=max_bytes_per_client)


def _ip_version(host: str) -> int | None:
    try:
        return ipaddress.ip_address(host).version
    except ValueError:
        return None  # a host name: its family is known once it is resolved


def _check_listen(node: NodeAddress, file: str | None, field: str) -> None:
    """`node.listen` is None or a (host, port) the node can bind: an IP address or host
    name (0.0.0.0 and :: allowed: every interface) and a port in 1..65535, of the
    advertised address's family when both are IP addresses."""
    if node.listen is None:
        return
    fix = 'write it as "host:port": an address of this host\'s interface, or "0.0.0.0:PORT"'
    listen = node.listen
    if not isinstance(listen, tuple) or len(listen) != 2:
        raise ConfigError(f"expected a (host, port) pair, got {_type_name(listen)}",
                          file=file, field=field, fix=fix)
    host, port = listen
    problem = _host_problem(host)
    if problem:
        raise ConfigError(problem, file=file, field=field, fix=fix)
    if not _is_int(port) or not 1 <= port <= 65535:
        raise ConfigError(f"port {port!r} is not in 1..65535", file=file, field=field, fix=fix)
    mine, advertised = _ip_version(host), _ip_version(node.host)
    if mine is not None and advertised is not None and mine != advertised:
        any_ = "[::]" if advertised == 6 else "0.0.0.0"
        raise ConfigError(
            f"listen is an IPv{mine} address but address is IPv{advertised}: the node could "
            "not send to or hear from its peers", file=file, field=field,
            fix=f'listen on an IPv{advertised} address, e.g. "{any_}:{port}"')


def _check_key(key: Any, file: str | None, field: str) -> None:
    if key is not None and (not isinstance(key, bytes) or len(key) != PUBLIC_KEY_SIZE):
        raise ConfigError(f"a public key has {PUBLIC_KEY_SIZE} bytes", file=file, field=field)


class DuplicateKeyError(ConfigError):
    """Two identities share one public key: whoever holds it counts as both."""


def _identity_name(identity: Identity) -> str:
    kind, id = identity
    return "admin" if kind == "admin" else f"{kind} {id}"


def _claim_key(
    owners: dict[bytes, Identity],
    identity: Identity,
    key: bytes,
    file: str | None,
    field: str | None,
) -> None:
    """Record `identity` as the owner of `key`; DuplicateKeyError if another identity has it.

    n >= 3f+1 counts identities as independent faults: one key for two identities is
    one host counted twice.
    """
    other = owners.setdefault(key, identity)
    if other != identity:
        raise DuplicateKeyError(
            f"{_identity_name(identity)} has the same public key as {_identity_name(other)}: "
            "whoever holds it would count as both",
            file=file,
            field=field,
            fix="give every replica, client and the admin its own key pair (`bft keygen`)",
        )


def _reject_unknown(
    table: Mapping[str, Any], known: Any, file: str | None, where: str | None
) -> None:
    for key in table:
        if key not in known:
            close = difflib.get_close_matches(str(key), list(known), n=1)
            hint = f"did you mean {close[0]!r}?" if close else f"known: {', '.join(sorted(known))}"
            name = f"{where}.{key}" if where else str(key)
            what = "key" if where else "section"
            raise ConfigError(f"unknown {what}", file=file, field=name, fix=hint)


def _parse_limits(table: Any, file: str | None) -> Limits:
    if not isinstance(table, Mapping):
        raise ConfigError(
            f"expected a table, got {_type_name(table)}",
            file=file,
            field="limits",
            fix="write it as [limits]",
        )
    _reject_unknown(table, _LIMIT_KEYS, file, where="limits")
    for key, value in table.items():
        if not _is_int(value):
            raise ConfigError(
                f"expected an integer, got {_type_name(value)}", file=file, field=f"limits.{key}"
            )
    return Limits(**table)


def _parse_public_key(entry: Mapping[str, Any], file: str | None, where: str) -> bytes | None:
    if "public_key" not in entry:
        return None
    text = entry["public_key"]
    if not isinstance(text, str):
        raise ConfigError(
            f"expected a hex string, got {_type_name(text)}", file=file, field=f"{where}.public_key"
        )
    return parse_public_key_hex(text, file=file, field=f"{where}.public_key")


def _parse_admin(table: Any, file: str | None) -> bytes | None:
    """`[admin] public_key = "hex"`: the admin's public key, or None if not given."""
    if not isinstance(table, Mapping):
        raise ConfigError(f"expected a table, got {_type_name(table)}", file=file, field="admin",
                          fix='write it as [admin] public_key = "..." (from `bft keygen '
                          'CONFIG --only admin`)')
    _reject_unknown(table, ("public_key",), file, where="admin")
    return _parse_public_key(table, file, "admin")


def _parse_nodes(nodes: Any, file: str | None) -> tuple[NodeAddress, ...]:
    if nodes is None:
        raise ConfigError(
            "no nodes",
            file=file,
            field="nodes",
            fix='add a [[nodes]] table per replica: id = 0, address = "host:port"',
        )
    if not isinstance(nodes, list):
        raise ConfigError(
            f"expected an array of tables, got {_type_name(nodes)}",
            file=file,
            field="nodes",
            fix="write each node as a [[nodes]] table",
        )
    result = []
    for index, entry in enumerate(nodes):
        where = f"nodes[{index}]"
        if not isinstance(entry, Mapping):
            raise ConfigError(
                f"expected a table, got {_type_name(entry)}",
                file=file,
                field=where,
                fix="write each node as a [[nodes]] table",
            )
        _reject_unknown(entry, ("id", "address", "listen", "public_key"), file, where=where)
        for required in ("id", "address"):
            if required not in entry:
                raise ConfigError(
                    "missing",
                    file=file,
                    field=f"{where}.{required}",
                    fix=f"add {required} = ... to this [[nodes]] table",
                )
        if not _is_int(entry["id"]):
            raise ConfigError(
                f"expected an integer, got {_type_name(entry['id'])}",
                file=file,
                field=f"{where}.id",
            )
        host, port = parse_address(entry["address"], file=file, field=f"{where}.address")
        listen = (parse_address(entry["listen"], file=file, field=f"{where}.listen")
                  if "listen" in entry else None)
        result.append(NodeAddress(entry["id"], host, port, _parse_public_key(entry, file, where),
                                  listen=listen))
    return tuple(result)


def _parse_clients(clients: Any, file: str | None) -> tuple[ClientEntry, ...]:
    if clients is None:
        raise ConfigError(
            "no clients",
            file=file,
            field="clients",
            fix="add [clients] count = 4, or a [[clients]] table per client",
        )
    if isinstance(clients, Mapping):  # [clients] count = N
        _reject_unknown(clients, ("count",), file, where="clients")
        count = clients.get("count")
        if not _is_int(count) or not 1 <= count <= 1_000_000:
            got = count if _is_int(count) else _type_name(count)
            raise ConfigError(
                f"expected an integer in 1..1000000, got {got}",
                file=file,
                field="clients.count",
                fix="give the number of clients, at least 1",
            )
        return tuple(ClientEntry(c) for c in range(count))
    if not isinstance(clients, list):
        raise ConfigError(
            f"expected a table or an array of tables, got {_type_name(clients)}",
            file=file,
            field="clients",
            fix="write [clients] count = N, or [[clients]] tables",
        )
    result = []
    for index, entry in enumerate(clients):
        where = f"clients[{index}]"
        if not isinstance(entry, Mapping):
            raise ConfigError(f"expected a table, got {_type_name(entry)}", file=file, field=where)
        _reject_unknown(entry, ("id", "public_key"), file, where=where)
        if "id" not in entry:
            raise ConfigError(
                "missing",
                file=file,
                field=f"{where}.id",
                fix="add id = ... to this [[clients]] table",
            )
        if not _is_int(entry["id"]):
            raise ConfigError(
                f"expected an integer, got {_type_name(entry['id'])}",
                file=file,
                field=f"{where}.id",
            )
        result.append(ClientEntry(entry["id"], _parse_public_key(entry, file, where)))
    return tuple(result)


# --------------------------------------------------------------------------
# Keys
# --------------------------------------------------------------------------


def key_file_stem(kind: str, id: int) -> str:
    """The file name of an identity's keys without suffix: replica-0, client-3, admin."""
    return "admin" if kind == "admin" else f"{kind}-{id}"


def default_state_dir(config: ClusterConfig) -> Path:
    """Where a cluster keeps its state when nothing else is said: ./state/<name>."""
    return Path("state") / config.name


def resolve_key_dir(config: ClusterConfig, key_dir: str | Path | None = None) -> Path:
    """The key directory: `key_dir` if given, else the config's, else `<state dir>/keys`."""
    if key_dir is not None:
        return Path(key_dir)
    if config.key_dir is not None:
        return config.key_dir
    return default_state_dir(config) / "keys"


def identities(config: ClusterConfig) -> list[Identity]:
    """Every identity of the cluster: the replicas, the clients, then the admin."""
    return (
        [("replica", node.id) for node in config.nodes]
        + [("client", client.id) for client in config.clients]
        + [("admin", 0)]
    )


def _inline_key(config: ClusterConfig, identity: Identity) -> tuple[bytes | None, str | None]:
    kind, id = identity
    if kind == "replica":
        return config.node(id).public_key, f"nodes[{id}].public_key"
    if kind == "client":
        for index, entry in enumerate(config.clients):
            if entry.id == id:
                return entry.public_key, f"clients[{index}].public_key"
        return None, None
    return config.admin_public_key, "admin.public_key"


def inline_public_key(config: ClusterConfig, identity: Identity) -> bytes | None:
    """The public key the config itself gives for `identity`, or None."""
    return _inline_key(config, identity)[0]


@dataclass(frozen=True)
class Keyring:
    """The public keys of every identity of a cluster, and access to private keys on disk."""

    config: ClusterConfig
    public_keys: Mapping[Identity, bytes]
    key_dir: Path

    def private_key(self, kind: str, id: int) -> Ed25519PrivateKey:
        """Load `<key_dir>/<kind>-<id>.key`; ConfigError if missing, corrupt, or not matching."""
        stem = key_file_stem(kind, id)
        path = self.key_dir / f"{stem}.key"
        if not path.exists():
            public = self.key_dir / f"{stem}.pub"
            made = (f"copy {stem}.key here from the host that made {stem}.pub, or make a new "
                    f"pair with `bft keygen CONFIG --only {stem} --force --key-dir "
                    f"{self.key_dir}` and give its public key to every host"
                    if public.exists() else
                    f"make it with `bft keygen CONFIG --only {stem} --key-dir {self.key_dir}`")
            raise ConfigError(f"private key of {kind if kind == 'admin' else f'{kind} {id}'} "
                              f"not found in {self.key_dir}", file=str(path), fix=made)
        key = load_private_key(path)
        expected = self.public_keys.get((kind, id))
        if expected is not None and public_key_bytes(key) != expected:
            raise ConfigError(
                f"this private key does not match the public key of {kind} {id}",
                file=str(path),
                fix="use the key pair that belongs together, or regenerate "
                "with `bft keygen CONFIG --force`",
            )
        return key

    def signer(self, kind: str, id: int) -> Signer:
        """An Ed25519 signer for one identity, from its private key file."""
        return Signer(kind, id, self.private_key(kind, id))

    def verifier(self, **cache: int) -> Verifier:
        """An Ed25519 verifier knowing every public key of the cluster."""
        return Verifier(self.public_keys, **cache)


def load_keyring(config: ClusterConfig, key_dir: str | Path | None = None) -> Keyring:
    """Public keys of every replica, client and the admin.

    A key given inline in the config wins; otherwise it is read from
    `<key dir>/<kind>-<id>.pub` (`admin.pub` for the admin), with the key
    directory chosen by `resolve_key_dir`. A missing or corrupt key file, or a
    file that disagrees with an inline key, raises ConfigError naming it; a key that
    two identities share raises DuplicateKeyError (a ConfigError) naming both.
    """
    directory = resolve_key_dir(config, key_dir)
    public_keys: dict[Identity, bytes] = {}
    owners: dict[bytes, Identity] = {}
    for identity in identities(config):
        inline, field = _inline_key(config, identity)
        path = directory / f"{key_file_stem(*identity)}.pub"
        if inline is not None:
            if path.exists() and load_public_key(path) != inline:
                raise ConfigError(
                    f"differs from the public key in {path}",
                    file=config._file,
                    field=field,
                    fix="update the config or the key file",
                )
            _claim_key(owners, identity, inline, config._file, field)
            public_keys[identity] = inline
            continue
        if not path.exists():
            where = f", or set {field}" if field else ""
            raise ConfigError(
                f"public key of {identity[0]} {identity[1]} not found",
                file=str(path),
                fix=_KEYGEN_FIX + where,
            )
        public_keys[identity] = load_public_key(path)
        _claim_key(owners, identity, public_keys[identity], str(path), None)
    return Keyring(config=config, public_keys=public_keys, key_dir=directory)


def toml_value(value: Any) -> str:
    """`value` written as a TOML value that `tomllib` reads back equal: bool, int, finite
    float, str or Path (a basic string; quotes, backslashes and control characters escaped),
    list/tuple (an array) or mapping (an inline table). ValueError for NaN/infinity,
    TypeError for anything else."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int):
        return str(value)
    if isinstance(value, float):
        if not math.isfinite(value):
            raise ValueError(f"TOML has no {value}")
        return repr(value)
    if isinstance(value, (str, Path)):
        text = str(value).replace("\\", "\\\\").replace('"', '\\"')
        text = re.sub(r"[\x00-\x1f\x7f]", lambda m: f"\\u{ord(m.group()):04x}", text)
        return f'"{text}"'
    if isinstance(value, (list, tuple)):
        return "[" + ", ".join(toml_value(v) for v in value) + "]"
    if isinstance(value, Mapping):
        return "{ " + ", ".join(f"{k} = {toml_value(v)}" for k, v in value.items()) + " }"
    raise TypeError(f"cannot write {type(value).__name__} as TOML")
