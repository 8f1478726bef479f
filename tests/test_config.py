"""bft.config: the shipped configs, the TOML layout, every validation error, keyrings."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from bft import messages as m
from bft.app import TOKEN_INDEX_SPAN
from bft.codec import Limits
from bft.config import (
    ClientEntry,
    ClusterConfig,
    NodeAddress,
    default_state_dir,
    load_keyring,
    parse_address,
    resolve_key_dir,
)
from bft.crypto import Ed25519Keys, save_private_key, save_public_key
from bft.errors import ConfigError

CONFIGS = Path(__file__).resolve().parent.parent / "configs"

BASE = """\
[cluster]
name = "test"
f = 1

[[nodes]]
id = 0
address = "127.0.0.1:7000"

[[nodes]]
id = 1
address = "127.0.0.1:7001"

[[nodes]]
id = 2
address = "127.0.0.1:7002"

[[nodes]]
id = 3
address = "127.0.0.1:7003"

[clients]
count = 2
"""


def write(tmp_path: Path, text: str, name: str = "cluster.toml") -> Path:
    path = tmp_path / name
    path.write_text(text)
    return path


# --------------------------------------------------------------------------
# Loading what is valid
# --------------------------------------------------------------------------


def test_local_4_loads():
    config = ClusterConfig.load(CONFIGS / "local-4.toml")
    assert (config.name, config.n, config.f, config.quorum, config.weak) == ("local-4", 4, 1, 3, 2)
    assert [(n.id, n.host, n.port) for n in config.nodes] == [
        (i, "127.0.0.1", 7100 + i) for i in range(4)
    ]
    assert config.monitor == ("127.0.0.1", 7199)
    assert [c.id for c in config.clients] == [0, 1, 2, 3]
    assert config.key_dir is None
    assert config.log_window % config.checkpoint_interval == 0
    assert config.source == CONFIGS / "local-4.toml"


def test_local_7_loads():
    config = ClusterConfig.load(CONFIGS / "local-7.toml")
    assert (config.n, config.f, config.quorum, config.weak) == (7, 2, 5, 3)
    assert len({node.port for node in config.nodes}) == 7


def test_minimal_config_gets_the_defaults(tmp_path):
    config = ClusterConfig.load(write(tmp_path, BASE))
    defaults = ClusterConfig.local(4)
    for attr in (
        "batch_max_requests",
        "batch_delay_s",
        "max_in_flight",
        "checkpoint_interval",
        "log_window",
        "view_change_timeout_s",
        "fsync",
        "limits",
        "max_datagram_bytes",
    ):
        assert getattr(config, attr) == getattr(defaults, attr)
    assert config.monitor is None and config.metrics_port is None and config.key_dir is None


def test_every_section_is_read(tmp_path):
    text = (
        BASE
        + """
[telemetry]
monitor = "[::1]:7999"
metrics_port = 9100

[batching]
max_requests = 10
delay_s = 0
max_in_flight = 4

[checkpoints]
interval = 16
log_window = 64

[timeouts]
view_change_s = 2
view_change_min_s = 0.5
view_change_max_s = 20.0
phi_threshold = 5.0
client_s = 3.0
max_clock_skew_s = 0.5
client_timestamp_window_s = 60

[network]
max_datagram_bytes = 1200
status_interval_s = 0.5

[storage]
fsync = "never"

[limits]
max_op_bytes = 1024
"""
    )
    config = ClusterConfig.load(write(tmp_path, text))
    assert config.monitor == ("::1", 7999)
    assert config.metrics_port == 9100
    assert (config.batch_max_requests, config.batch_delay_s, config.max_in_flight) == (10, 0.0, 4)
    assert (config.checkpoint_interval, config.log_window) == (16, 64)
    assert config.view_change_timeout_s == 2.0 and isinstance(config.view_change_timeout_s, float)
    assert (config.view_change_timeout_min_s, config.view_change_timeout_max_s) == (0.5, 20.0)
    assert (config.phi_threshold, config.client_timeout_s, config.max_clock_skew_s) == (
        5.0,
        3.0,
        0.5,
    )
    assert config.client_timestamp_window_s == 60.0
    assert (config.max_datagram_bytes, config.status_interval_s) == (1200, 0.5)
    assert config.fsync == "never"
    assert config.limits == Limits(max_op_bytes=1024)


def test_clients_as_tables_with_inline_keys(tmp_path):
    keys = Ed25519Keys(0, 8, seed=1, admin=False)
    text = BASE.replace(
        "[clients]\ncount = 2\n",
        f"""
[[clients]]
id = 7
public_key = "{keys.public_keys[("client", 7)].hex()}"

[[clients]]
id = 3
""",
    )
    config = ClusterConfig.load(write(tmp_path, text))
    assert config.clients == (ClientEntry(7, keys.public_keys[("client", 7)]), ClientEntry(3))
    assert config.client(3) == ClientEntry(3)
    with pytest.raises(ConfigError):
        config.client(0)


def test_nodes_are_kept_in_id_order(tmp_path):
    text = (
        BASE.replace("id = 0\n", "id = 9\n")
        .replace("id = 3\n", "id = 0\n")
        .replace("id = 9\n", "id = 3\n")
    )
    config = ClusterConfig.load(write(tmp_path, text))
    assert [node.id for node in config.nodes] == [0, 1, 2, 3]
    assert config.node(0).port == 7003 and config.node(3).port == 7000


def test_relative_key_dir_is_taken_from_the_config_file(tmp_path):
    (tmp_path / "sub").mkdir()
    text = BASE.replace("f = 1\n", 'f = 1\nkey_dir = "keys"\n')
    config = ClusterConfig.load(write(tmp_path / "sub", text))
    assert config.key_dir == (tmp_path / "sub" / "keys").absolute()
    assert resolve_key_dir(config) == config.key_dir
    assert resolve_key_dir(config, tmp_path / "other") == tmp_path / "other"


def test_default_key_dir_is_in_the_state_dir():
    config = ClusterConfig.local(4)
    assert default_state_dir(config) == Path("state") / "local-4"
    assert resolve_key_dir(config) == Path("state") / "local-4" / "keys"


def test_name_defaults_to_the_file_name(tmp_path):
    config = ClusterConfig.load(write(tmp_path, BASE.replace('name = "test"\n', ""), "prod.toml"))
    assert config.name == "prod"


def test_local_and_derived_values():
    config = ClusterConfig.local(4)
    assert (config.n, config.f, config.quorum, config.weak) == (4, 1, 3, 2)
    assert [config.primary(v) for v in range(6)] == [0, 1, 2, 3, 0, 1]
    assert config.node(2) == NodeAddress(2, "127.0.0.1", 7102)
    assert str(config.node(2)) == "127.0.0.1:7102"
    assert ClusterConfig.local(7).f == 2
    assert ClusterConfig.local(1).f == 0
    custom = ClusterConfig.local(4, base_port=9000, clients=1, batch_max_requests=1)
    assert custom.node(0).port == 9000 and custom.clients == (ClientEntry(0),)
    assert custom.batch_max_requests == 1
    with pytest.raises(ConfigError) as info:
        config.node(4)
    assert info.value.field == "nodes"


def test_quorums_intersect_in_a_correct_replica():
    """Any two quorums share f+1 replicas, and n-f replicas (the correct ones) form a quorum."""
    for n in range(1, 40):
        for f in range((n - 1) // 3 + 1):
            config = ClusterConfig.local(n, f=f)
            assert 2 * config.quorum - n >= f + 1, (n, f)
            assert config.quorum <= n - f, (n, f)
            if n == 3 * f + 1:
                assert config.quorum == 2 * f + 1


def test_direct_construction_validates_too():
    with pytest.raises(ConfigError) as info:
        ClusterConfig.local(4, f=2)
    assert info.value.field == "cluster.f"
    with pytest.raises(ConfigError) as info:
        replace(ClusterConfig.local(4), log_window=100)
    assert info.value.field == "checkpoints.log_window"
    with pytest.raises(ConfigError) as info:
        ClusterConfig.local(4, monitor=("127.0.0.1", 7101))  # node 1's address
    assert info.value.field == "telemetry.monitor"


def test_parse_address():
    assert parse_address("example.org:80") == ("example.org", 80)
    assert parse_address("[fe80::1]:7000") == ("fe80::1", 7000)
    for bad in (
        "example.org",
        "::1:7000",
        "[::1]7000",
        "host:0",
        "host:65536",
        "host:x",
        ":7000",
        "a..b:7000",
        "-bad:7000",
        "1.2.3.999:7000",
        7000,
    ):
        with pytest.raises(ConfigError):
            parse_address(bad)


# --------------------------------------------------------------------------
# Every error names the file and the field
# --------------------------------------------------------------------------


def edit(old: str, new: str):
    def apply(text: str) -> str:
        assert old in text
        return text.replace(old, new, 1)

    return apply


def add(extra: str):
    return lambda text: text + "\n" + extra + "\n"


SHARED_KEY_HEX = Ed25519Keys(1, seed=5).public_keys[("replica", 0)].hex()

ERROR_CASES = {
    # name: (change to BASE, field named in the error)
    "too few nodes for f": (edit("f = 1", "f = 2"), "cluster.f"),
    "negative f": (edit("f = 1", "f = -1"), "cluster.f"),
    "f as string": (edit("f = 1", 'f = "1"'), "cluster.f"),
    "f missing": (edit("f = 1\n", ""), "cluster.f"),
    "bad name": (edit('name = "test"', 'name = "my cluster"'), "cluster.name"),
    "name not a string": (edit('name = "test"', "name = 4"), "cluster.name"),
    "unknown cluster key": (edit("f = 1", "f = 1\nfaults = 1"), "cluster.faults"),
    "key_dir not a string": (edit("f = 1", "f = 1\nkey_dir = 3"), "cluster.key_dir"),
    "duplicate node id": (edit("id = 1\n", "id = 0\n"), "nodes[1].id"),
    "node id out of range": (edit("id = 3\n", "id = 5\n"), "nodes[3].id"),
    "negative node id": (edit("id = 3\n", "id = -3\n"), "nodes[3].id"),
    "node id as string": (edit("id = 3\n", 'id = "3"\n'), "nodes[3].id"),
    "duplicate address": (edit("127.0.0.1:7001", "127.0.0.1:7000"), "nodes[1].address"),
    "port zero": (edit("127.0.0.1:7002", "127.0.0.1:0"), "nodes[2].address"),
    "port too big": (edit("127.0.0.1:7002", "127.0.0.1:70000"), "nodes[2].address"),
    "no port": (edit("127.0.0.1:7002", "127.0.0.1"), "nodes[2].address"),
    "bad ipv4": (edit("127.0.0.1:7002", "300.0.0.1:7002"), "nodes[2].address"),
    "bad host name": (edit("127.0.0.1:7002", "my_host!:7002"), "nodes[2].address"),
    "ipv6 without brackets": (edit("127.0.0.1:7002", "::1:7002"), "nodes[2].address"),
    "unspecified address": (edit("127.0.0.1:7002", "0.0.0.0:7002"), "nodes[2].address"),
    "address not a string": (edit('"127.0.0.1:7002"', "7002"), "nodes[2].address"),
    "address missing": (edit('address = "127.0.0.1:7002"\n', ""), "nodes[2].address"),
    "unknown node key": (edit("id = 2\n", "id = 2\nport = 7002\n"), "nodes[2].port"),
    "bad node key hex": (edit("id = 2\n", 'id = 2\npublic_key = "zz"\n'), "nodes[2].public_key"),
    "short node key": (edit("id = 2\n", 'id = 2\npublic_key = "abcd"\n'), "nodes[2].public_key"),
    "node key not a string": (edit("id = 2\n", "id = 2\npublic_key = 5\n"), "nodes[2].public_key"),
    "no nodes": (lambda text: text.split("[[nodes]]")[0] + "[clients]\ncount = 2\n", "nodes"),
    "nodes not tables": (
        lambda text: (
            'nodes = ["127.0.0.1:7000"]\n' + text.split("[[nodes]]")[0] + "[clients]\ncount = 2\n"
        ),
        "nodes[0]",
    ),
    "no clients": (edit("[clients]\ncount = 2\n", ""), "clients"),
    "negative client count": (edit("count = 2", "count = -1"), "clients.count"),
    "client count as string": (edit("count = 2", 'count = "2"'), "clients.count"),
    "unknown clients key": (edit("count = 2", "count = 2\nnumber = 3"), "clients.number"),
    "duplicate client id": (
        edit("[clients]\ncount = 2\n", "[[clients]]\nid = 1\n[[clients]]\nid = 1\n"),
        "clients[1].id",
    ),
    "client id too large for a frame sender id": (
        edit("[clients]\ncount = 2\n", "[[clients]]\nid = 2147483647\n"),
        "clients[0].id",
    ),
    "client without id": (
        edit("[clients]\ncount = 2\n", '[[clients]]\npublic_key = "00"\n'),
        "clients[0].id",
    ),
    "unknown section": (add("[timeout]\nclient_s = 1.0"), "timeout"),
    "section not a table": (lambda text: "timeouts = 3\n" + text, "timeouts"),
    "unknown timeouts key": (add("[timeouts]\nview_change = 1.0"), "timeouts.view_change"),
    "timeout as string": (add('[timeouts]\nview_change_s = "fast"'), "timeouts.view_change_s"),
    "timeout as bool": (add("[timeouts]\nclient_s = true"), "timeouts.client_s"),
    "negative timeout": (add("[timeouts]\nclient_s = -1.0"), "timeouts.client_s"),
    "zero min timeout": (add("[timeouts]\nview_change_min_s = 0"), "timeouts.view_change_min_s"),
    "huge timeout": (add("[timeouts]\nview_change_max_s = 1e9"), "timeouts.view_change_max_s"),
    "min above base": (add("[timeouts]\nview_change_min_s = 2.0"), "timeouts.view_change_min_s"),
    "base above max": (add("[timeouts]\nview_change_s = 20.0"), "timeouts.view_change_max_s"),
    "zero phi": (add("[timeouts]\nphi_threshold = 0"), "timeouts.phi_threshold"),
    "negative skew": (add("[timeouts]\nmax_clock_skew_s = -0.1"), "timeouts.max_clock_skew_s"),
    "zero timestamp window": (
        add("[timeouts]\nclient_timestamp_window_s = 0"), "timeouts.client_timestamp_window_s"),
    "timestamp window within the skew": (
        add("[timeouts]\nmax_clock_skew_s = 5.0\nclient_timestamp_window_s = 10"),
        "timeouts.client_timestamp_window_s"),
    "timestamp window over a year": (
        add("[timeouts]\nclient_timestamp_window_s = 1e9"), "timeouts.client_timestamp_window_s"),
    "zero status interval": (add("[network]\nstatus_interval_s = 0"), "network.status_interval_s"),
    "tiny datagrams": (add("[network]\nmax_datagram_bytes = 100"), "network.max_datagram_bytes"),
    "huge datagrams": (add("[network]\nmax_datagram_bytes = 70000"), "network.max_datagram_bytes"),
    "zero checkpoint interval": (add("[checkpoints]\ninterval = 0"), "checkpoints.interval"),
    "window not a multiple": (
        add("[checkpoints]\ninterval = 100\nlog_window = 250"),
        "checkpoints.log_window",
    ),
    "window as float": (add("[checkpoints]\nlog_window = 256.0"), "checkpoints.log_window"),
    "empty batches": (add("[batching]\nmax_requests = 0"), "batching.max_requests"),
    "negative batch delay": (add("[batching]\ndelay_s = -1"), "batching.delay_s"),
    "in flight beyond window": (add("[batching]\nmax_in_flight = 1000"), "batching.max_in_flight"),
    "bad fsync": (add('[storage]\nfsync = "sometimes"'), "storage.fsync"),
    "fsync as bool": (add("[storage]\nfsync = true"), "storage.fsync"),
    "unknown limit": (add("[limits]\nmax_size = 10"), "limits.max_size"),
    "zero limit": (add("[limits]\nmax_op_bytes = 0"), "limits.max_op_bytes"),
    "message beyond the frame's u32 length": (
        add("[limits]\nmax_message_bytes = 99999999999"), "limits.max_message_bytes"),
    "no clients": (edit("count = 2", "count = 0"), "clients.count"),
    "empty client array": (
        lambda text: "clients = []\n" + text.replace("[clients]\ncount = 2\n", ""), "clients"),
    "limit as string": (add('[limits]\nmax_depth = "16"'), "limits.max_depth"),
    "items beyond token indexes": (add("[limits]\nmax_items = 70000"), "limits.max_items"),
    "batch beyond token indexes": (
        add("[batching]\nmax_requests = 70000\n[limits]\nmax_items = 70000"),
        "batching.max_requests",
    ),
    "two nodes share a key": (
        lambda text: text.replace(
            '"127.0.0.1:7000"\n', f'"127.0.0.1:7000"\npublic_key = "{SHARED_KEY_HEX}"\n'
        ).replace('"127.0.0.1:7001"\n', f'"127.0.0.1:7001"\npublic_key = "{SHARED_KEY_HEX}"\n'),
        "nodes[1].public_key",
    ),
    "bad monitor": (add('[telemetry]\nmonitor = "nowhere"'), "telemetry.monitor"),
    "monitor on a node": (add('[telemetry]\nmonitor = "127.0.0.1:7003"'), "telemetry.monitor"),
    "metrics ports overflow": (add("[telemetry]\nmetrics_port = 65534"), "telemetry.metrics_port"),
    "metrics port as string": (add('[telemetry]\nmetrics_port = "9100"'), "telemetry.metrics_port"),
}


@pytest.mark.parametrize("case", sorted(ERROR_CASES))
def test_errors_name_file_and_field(tmp_path, case):
    change, field = ERROR_CASES[case]
    path = write(tmp_path, change(BASE))
    with pytest.raises(ConfigError) as info:
        ClusterConfig.load(path)
    error = info.value
    assert error.file == str(path)
    assert error.field == field
    assert str(path) in str(error) and field in str(error)


def test_batch_and_array_limits_stay_within_the_token_index_span():
    """Issue 18, 1f: a fencing token is `seq * TOKEN_INDEX_SPAN + index`, and ExecContext
    raises for an index >= TOKEN_INDEX_SPAN; so neither `batching.max_requests` nor the
    codec's `limits.max_items` (which bounds a batch's array of requests) may exceed it.

    Failed before the fix: max_items = 70,000 with max_requests = 70,000 was a valid
    config, and a batch of 65,537 requests crashed every correct replica.
    """
    at_the_edge = ClusterConfig.local(4, batch_max_requests=TOKEN_INDEX_SPAN)
    assert at_the_edge.limits.max_items == TOKEN_INDEX_SPAN
    with pytest.raises(ConfigError) as info:
        ClusterConfig.local(4, limits=Limits(max_items=TOKEN_INDEX_SPAN + 1))
    assert info.value.field == "limits.max_items" and str(TOKEN_INDEX_SPAN) in str(info.value)
    with pytest.raises(ConfigError) as info:
        ClusterConfig.local(
            4, batch_max_requests=70_000, limits=Limits(max_items=70_000)
        )
    assert info.value.field == "batching.max_requests"
    assert str(TOKEN_INDEX_SPAN) in str(info.value)


def test_message_size_stays_within_what_frames_and_reassembly_carry():
    """Issue 21, item 8: `limits.max_message_bytes` must fit the frame (at most MAX_FRAGMENTS
    fragments of max_datagram_bytes minus the frame overhead, a u32 total length), and the
    reassembly buffers, which hold 16 messages of that size, stay bounded (64 MiB at most).

    Failed before the fix: max_message_bytes = 99999999999 was a valid config; an endpoint
    built from it could not frame such a message, and its reassembler's default bounds
    grew to 1.6 TB.
    """
    from bft.config import MAX_MESSAGE_BYTES_CAP, _FRAME_MAX_FRAGMENTS, _FRAME_MAX_TOTAL_LENGTH
    from bft.config import _FRAME_OVERHEAD_BYTES
    from transport import frame

    # bft/ mirrors the frame format (it may not import transport): the two agree.
    assert (_FRAME_OVERHEAD_BYTES, _FRAME_MAX_FRAGMENTS, _FRAME_MAX_TOTAL_LENGTH) == (
        frame.OVERHEAD_BYTES, frame.MAX_FRAGMENTS, frame.MAX_TOTAL_LENGTH)
    assert ClusterConfig.local(4).limits.max_message_bytes < MAX_MESSAGE_BYTES_CAP
    # The default datagram size: the cap binds (65535 fragments carry ~86 MiB).
    at_cap = ClusterConfig.local(4, limits=Limits(max_message_bytes=MAX_MESSAGE_BYTES_CAP))
    assert at_cap.max_message_bytes_limit == MAX_MESSAGE_BYTES_CAP
    with pytest.raises(ConfigError) as info:
        ClusterConfig.local(4, limits=Limits(max_message_bytes=MAX_MESSAGE_BYTES_CAP + 1))
    assert info.value.field == "limits.max_message_bytes"
    assert f"at most {MAX_MESSAGE_BYTES_CAP}" in str(info.value)
    # Small datagrams: the fragment count binds, and the fix names the exact bound.
    small = 65535 * (512 - frame.OVERHEAD_BYTES)
    assert small < MAX_MESSAGE_BYTES_CAP
    edge = ClusterConfig.local(4, max_datagram_bytes=512, limits=Limits(max_message_bytes=small))
    assert edge.max_message_bytes_limit == small
    with pytest.raises(ConfigError) as info:
        ClusterConfig.local(4, max_datagram_bytes=512, limits=Limits(max_message_bytes=small + 1))
    assert info.value.field == "limits.max_message_bytes" and f"at most {small}" in str(info.value)
    # What the check lets through, the frame really carries; one byte more it cannot.
    assert len(frame.encode_frames(1, 1, bytes(small), 512)) == frame.MAX_FRAGMENTS
    with pytest.raises(ValueError, match="fragments"):
        frame.encode_frames(1, 1, bytes(small + 1), 512)


def test_a_cluster_needs_a_client():
    """Issue 21, item 8: `[clients] count = 0` (or no client at all, however the config is
    built) is a ConfigError naming the field: no request could ever be sent.

    Failed before the fix: count = 0 gave a config with no clients."""
    with pytest.raises(ConfigError) as info:
        ClusterConfig.local(4, clients=0)
    assert info.value.field == "clients" and "[clients] count" in info.value.fix
    with pytest.raises(ConfigError) as info:
        ClusterConfig.from_dict({"cluster": {"name": "x", "f": 0}, "clients": {"count": 0},
                                 "nodes": [{"id": 0, "address": "127.0.0.1:7000"}]})
    assert info.value.field == "clients.count" and "1..1000000" in str(info.value)
    one = ClusterConfig.from_dict({"cluster": {"name": "x", "f": 0}, "clients": {"count": 1},
                                   "nodes": [{"id": 0, "address": "127.0.0.1:7000"}]})
    assert one.clients == (ClientEntry(0),)


def test_two_identities_with_one_inline_key_are_rejected():
    """Issue 18 (weaker spot): n >= 3f+1 counts identities as independent faults; two
    identities sharing a public key are one host counted twice. A key used by two of the
    replicas, clients and the admin is a ConfigError naming both identities.

    Failed before the fix: nodes 0 and 1 and client 0 with one key made a valid config.
    """
    shared = Ed25519Keys(1, seed=3).public_keys[("replica", 0)]
    base = ClusterConfig.local(4, clients=2)
    with pytest.raises(ConfigError) as info:
        replace(
            base,
            nodes=(
                replace(base.nodes[0], public_key=shared),
                replace(base.nodes[1], public_key=shared),
                *base.nodes[2:],
            ),
        )
    assert info.value.field == "nodes[1].public_key"
    assert "replica 1" in str(info.value) and "replica 0" in str(info.value)
    with pytest.raises(ConfigError) as info:
        replace(
            base,
            nodes=(replace(base.nodes[0], public_key=shared), *base.nodes[1:]),
            clients=(ClientEntry(0, shared), ClientEntry(1)),
        )
    assert info.value.field == "clients[0].public_key"
    assert "client 0" in str(info.value) and "replica 0" in str(info.value)


def test_typos_get_a_suggestion(tmp_path):
    with pytest.raises(ConfigError) as info:
        ClusterConfig.load(write(tmp_path, BASE + "\n[timeout]\nclient_s = 1.0\n"))
    assert "timeouts" in info.value.fix
    with pytest.raises(ConfigError) as info:
        ClusterConfig.load(write(tmp_path, BASE + "\n[timeouts]\nclient = 1.0\n"))
    assert "client_s" in info.value.fix


def test_too_few_nodes_says_how_to_fix(tmp_path):
    with pytest.raises(ConfigError) as info:
        ClusterConfig.load(write(tmp_path, BASE.replace("f = 1", "f = 2")))
    assert "3f+1" in str(info.value)
    assert "7" in info.value.fix and "1" in info.value.fix


def test_missing_file(tmp_path):
    path = tmp_path / "nope.toml"
    with pytest.raises(ConfigError) as info:
        ClusterConfig.load(path)
    assert info.value.file == str(path)
    assert "not found" in str(info.value)


def test_a_directory_is_not_a_config(tmp_path):
    with pytest.raises(ConfigError) as info:
        ClusterConfig.load(tmp_path)
    assert info.value.file == str(tmp_path)


@pytest.mark.parametrize("content", [b"[cluster\nname = 1\n", b"f = = 1\n", b"\xff\xfe[x]\n"])
def test_invalid_toml(tmp_path, content):
    path = tmp_path / "bad.toml"
    path.write_bytes(content)
    with pytest.raises(ConfigError) as info:
        ClusterConfig.load(path)
    assert info.value.file == str(path)


def test_from_dict_without_a_file():
    with pytest.raises(ConfigError) as info:
        ClusterConfig.from_dict(
            {"cluster": {"f": 0}, "nodes": [{"id": 0, "address": "h:1"}], "clients": {"count": 1}}
        )
    assert info.value.field == "cluster.name" and info.value.file is None
    config = ClusterConfig.from_dict(
        {
            "cluster": {"name": "one", "f": 0},
            "nodes": [{"id": 0, "address": "h:1"}],
            "clients": {"count": 1},
        }
    )
    assert config.n == 1 and config.source is None


# --------------------------------------------------------------------------
# Keyrings
# --------------------------------------------------------------------------


def write_keys(directory: Path, keys: Ed25519Keys) -> None:
    directory.mkdir(parents=True, exist_ok=True)
    for (kind, id), private in keys.private_keys.items():
        stem = "admin" if kind == "admin" else f"{kind}-{id}"
        save_private_key(directory / f"{stem}.key", private)
        save_public_key(directory / f"{stem}.pub", private)


def test_keyring_from_key_files(tmp_path):
    config = ClusterConfig.local(4, clients=2)
    keys = Ed25519Keys(4, 2, seed=3)
    write_keys(tmp_path / "keys", keys)
    keyring = load_keyring(config, tmp_path / "keys")
    assert keyring.public_keys == keys.public_keys
    signed = keyring.signer("replica", 2).sign(
        m.Prepare(view=0, seq=1, digest=bytes(32), replica=2)
    )
    assert keyring.verifier().verify(signed)


def test_keyring_missing_key_says_run_keygen(tmp_path):
    config = ClusterConfig.local(4, clients=2)
    keys = Ed25519Keys(4, 2, seed=3)
    write_keys(tmp_path, keys)
    (tmp_path / "client-1.pub").unlink()
    with pytest.raises(ConfigError) as info:
        load_keyring(config, tmp_path)
    assert info.value.file == str(tmp_path / "client-1.pub")
    assert "bft keygen" in str(info.value)
    (tmp_path / "admin.pub").write_text("garbage\n")
    with pytest.raises(ConfigError):
        load_keyring(replace(config, clients=(ClientEntry(0),)), tmp_path)


def test_keyring_prefers_inline_keys_and_catches_disagreement(tmp_path):
    keys = Ed25519Keys(4, 1, seed=3)
    write_keys(tmp_path, keys)
    other = Ed25519Keys(4, 1, seed=4)
    base = ClusterConfig.local(4, clients=1)
    # Inline key and file agree: fine.
    agreeing = replace(
        base,
        nodes=tuple(
            replace(node, public_key=keys.public_keys[("replica", node.id)]) for node in base.nodes
        ),
    )
    assert load_keyring(agreeing, tmp_path).public_keys == keys.public_keys
    # Inline only (no file): used.
    (tmp_path / "replica-0.pub").unlink()
    assert (
        load_keyring(agreeing, tmp_path).public_keys[("replica", 0)]
        == keys.public_keys[("replica", 0)]
    )
    # Inline and file disagree: an error naming the config field.
    disagreeing = replace(
        base,
        nodes=(
            agreeing.nodes[0],
            replace(base.nodes[1], public_key=other.public_keys[("replica", 1)]),
            *base.nodes[2:],
        ),
    )
    with pytest.raises(ConfigError) as info:
        load_keyring(disagreeing, tmp_path)
    assert info.value.field == "nodes[1].public_key"


def test_keyring_rejects_one_key_for_two_identities(tmp_path):
    """Issue 18 (weaker spot): whether in key files or inline, one public key may belong
    to one identity only; the error names both identities and the file or field.

    Failed before the fix: load_keyring accepted replica-1.pub and client-0.pub holding
    replica 0's key (and an admin.pub equal to a client's).
    """
    keys = Ed25519Keys(4, 2, seed=3)
    config = ClusterConfig.local(4, clients=2)
    for copy_to, named in (("replica-1", "replica 1"), ("client-0", "client 0"),
                           ("admin", "admin")):
        directory = tmp_path / copy_to
        write_keys(directory, keys)
        source = "client-1" if copy_to == "admin" else "replica-0"
        (directory / f"{copy_to}.pub").write_bytes((directory / f"{source}.pub").read_bytes())
        with pytest.raises(ConfigError) as info:
            load_keyring(config, directory)
        assert info.value.file == str(directory / f"{copy_to}.pub")
        assert named in str(info.value) and source.replace("-", " ") in str(info.value)
    # An inline key equal to another identity's key file.
    directory = tmp_path / "inline"
    write_keys(directory, keys)
    (directory / "replica-2.pub").unlink()
    inline = replace(
        config,
        nodes=(
            *config.nodes[:2],
            replace(config.nodes[2], public_key=keys.public_keys[("replica", 3)]),
            config.nodes[3],
        ),
    )
    with pytest.raises(ConfigError) as info:
        load_keyring(inline, directory)
    assert "replica 2" in str(info.value) and "replica 3" in str(info.value)


def test_keyring_private_key_must_match(tmp_path):
    keys = Ed25519Keys(4, 1, seed=3)
    write_keys(tmp_path, keys)
    other = Ed25519Keys(4, 1, seed=4)
    save_private_key(tmp_path / "replica-1.key", other.private_keys[("replica", 1)], force=True)
    keyring = load_keyring(ClusterConfig.local(4, clients=1), tmp_path)
    with pytest.raises(ConfigError) as info:
        keyring.signer("replica", 1)
    assert info.value.file == str(tmp_path / "replica-1.key")
    (tmp_path / "replica-2.key").unlink()
    with pytest.raises(ConfigError) as info:
        keyring.private_key("replica", 2)
    assert "bft keygen" in str(info.value)


@given(st.recursive(
    st.one_of(st.booleans(), st.integers(-2**63, 2**63 - 1),
              st.floats(allow_nan=False, allow_infinity=False), st.text()),
    lambda inner: st.lists(inner, max_size=4)
    | st.dictionaries(st.from_regex(r"[a-z_]{1,8}", fullmatch=True), inner, max_size=4),
    max_leaves=10))
def test_toml_value_reads_back_equal(value):
    """Config and scenario files are written with toml_value: tomllib reads back the value."""
    import tomllib

    from bft.config import toml_value
    assert tomllib.loads("k = " + toml_value(value))["k"] == value


def test_the_largest_client_id_is_accepted_and_its_sender_id_fits_a_frame(tmp_path):
    """A client's frame sender id is CLIENT_SENDER_BASE + its id: the largest id the config
    accepts still frames (and is not the dashboard's 2**32 - 1); one more is refused above."""
    from bft.config import CLIENT_ID_LIMIT, CLIENT_SENDER_BASE
    from transport.frame import encode_frames

    largest = CLIENT_ID_LIMIT - 1
    text = edit("[clients]\ncount = 2\n", f"[[clients]]\nid = {largest}\n")(BASE)
    config = ClusterConfig.load(write(tmp_path, text))
    assert [c.id for c in config.clients] == [largest]
    assert CLIENT_SENDER_BASE + largest == 2**32 - 2
    assert encode_frames(CLIENT_SENDER_BASE + largest, 1, b"x", 1400)
    with pytest.raises(ValueError):
        encode_frames(CLIENT_SENDER_BASE + CLIENT_ID_LIMIT + 1, 1, b"x", 1400)
