"""`bft attack` (issue 21, "an attack toolkit users can run in their own suites").

Each kind sends what it says: run at a small rate against node 1 of a 4-node cluster over
loopback UDP (every node in this process), it raises exactly the node's drop counters
whose reasons match what was sent (by the labels of the attack's own summary). The tool
refuses targets outside loopback, keeps to rate x duration datagrams and to its duration,
and its `[[attack]]` scenario entries are validated.

Where the kernel filter of a node's strangers' socket drops a datagram (bft/node.py
`stranger_program`), the rise is in `transport:stranger_kernel_drop` instead of the
node's own counter; `test_sigflood_sends_forged_status_and_requests` runs both ways.

Failed before the fix: adversary/attack.py and the `[[attack]]` table did not exist (every
test here failed at its import or with "unknown key 'attack'").
"""

from __future__ import annotations

import dataclasses
import socket
from collections import Counter
from pathlib import Path
from typing import Any

import pytest
import trio

from adversary.attack import (
    KINDS,
    MAX_DURATION_S,
    MAX_RATE,
    AttackRefused,
    AttackSpec,
    loopback_targets,
    make_spec,
    run_attack,
)
from adversary.scenario import parse_scenario
from bft.cli import main
from bft.config import ClusterConfig, NodeAddress, load_keyring
from bft.crypto import Verifier
from bft.errors import ConfigError
from bft.launcher import config_to_toml, ensure_keys
from bft.node import Node
from transport.udp import free_udp_ports

SEED = 21


def cluster_config(tmp_path: Path, hosts: list[str] | None = None) -> tuple[ClusterConfig, Any]:
    ports = free_udp_ports(5)
    hosts = hosts or ["127.0.0.1"] * 4
    config = ClusterConfig.local(
        4, clients=2, fsync="never",
        nodes=tuple(NodeAddress(i, hosts[i], ports[i]) for i in range(4)))
    ensure_keys(config, tmp_path / "keys")
    return config, load_keyring(config, tmp_path / "keys")


class CountingVerifier(Verifier):
    """A node's verifier that counts its Ed25519 checks (`checks`), passed and failed."""

    checks = 0

    def _check(self, identity: Any, data: bytes, signature: bytes) -> bool:
        self.checks += 1
        return super()._check(identity, data, signature)


def counters(node: Node) -> Counter[str]:
    """Every drop counter of a node: runtime, replica, transport, control gate."""
    assert node.endpoint is not None and node.replica is not None
    out: Counter[str] = Counter(node.stats.drops)
    out.update({f"replica:{k}": v for k, v in node.replica.drops.items()})
    out.update({f"transport:{k}": v for k, v in node.endpoint.statistics()["drops"].items()})
    out.update({f"control:{k}": v for k, v in node.control.statistics()["drops"].items()})
    return out


async def attack_cluster(tmp_path: Path, spec: AttackSpec, *, running: tuple[int, ...] = (0, 1, 2, 3),
                         steering: bool = True) -> tuple[Any, Counter[str], int, Node]:
    """Run `spec` against a cluster of in-process nodes (those in `running`); return the
    summary, node 1's drop counters' rise and the Ed25519 checks it made meanwhile."""
    print(f"seed={SEED}")
    config, keyring = cluster_config(tmp_path)
    nodes = {i: Node(config, i, signer=keyring.signer("replica", i),
                     verifier=CountingVerifier(keyring.public_keys),
                     state_dir=tmp_path / f"n{i}") for i in running}
    for node in nodes.values():
        node.kernel_steering = steering
    async with trio.open_nursery() as nursery:
        for node in nodes.values():
            await nursery.start(node.run)
        target = nodes[1]
        with trio.fail_after(30):
            await trio.sleep(0.3)  # the nodes' first STATUS exchange
            before = counters(target)
            checks = target.verifier.checks
            summary = await run_attack(spec, config, keyring=keyring, state_dir=tmp_path / "st")
            # let node 1 take what is in its socket: wait until its counters stop moving
            last: Counter[str] = Counter()
            while (now := counters(target)) != last:
                last = now
                await trio.sleep(0.2)
        rise = counters(target)
        rise.subtract(before)
        checks = target.verifier.checks - checks
        nursery.cancel_scope.cancel()
    return summary, +rise, checks, target


def spec(kind: str, **kw: Any) -> AttackSpec:
    return make_spec(kind, **{"rate": 400, "duration_s": 0.5, "target": 1, "seed": SEED, **kw})


@pytest.mark.udp
@pytest.mark.parametrize("steering", [True, False], ids=["kernel", "python"])
async def test_sigflood_sends_forged_status_and_requests(tmp_path: Path, steering: bool
                                                         ) -> None:
    """STATUS framed as from replicas 0, 2, 3 (from the attacker's port) is dropped before a
    signature check: by the kernel's filter, or without it by the node
    (`replica_address_mismatch`); each forged Request costs one failed Ed25519 check
    (`bad_signature`)."""
    summary, rise, checks, _ = await attack_cluster(tmp_path, spec("sigflood"),
                                                    steering=steering)
    assert set(summary.sent) == {"status_forged", "request_forged"}
    assert summary.total <= 200
    dropped = "transport:stranger_kernel_drop" if steering else "replica_address_mismatch"
    assert rise[dropped] == summary.sent["status_forged"]
    assert rise["replica:bad_signature"] == summary.sent["request_forged"]
    # one check per forged request (and a few for the honest replicas' STATUS meanwhile)
    assert summary.sent["request_forged"] <= checks <= summary.sent["request_forged"] + 30


@pytest.mark.udp
async def test_control_sends_forged_admin_commands(tmp_path: Path) -> None:
    """Every forged command reaches the control gate; those it checks fail
    (`bad_signature`), the rest are over its budget or from a penalized source."""
    summary, rise, _, _ = await attack_cluster(tmp_path, spec("control"))
    sent = summary.sent["control_forged"]
    assert sent == summary.total <= 200
    gate = {k: v for k, v in rise.items() if k.startswith("control:")}
    assert sum(gate.values()) == sent
    assert rise["control:bad_signature"] >= 1
    assert rise["control:bad_signature"] + rise["control:rate_limited"] + \
        rise["control:source_penalized"] == sent


@pytest.mark.udp
async def test_fragments_fill_the_strangers_share(tmp_path: Path) -> None:
    """First fragments from 20 ports: every one is taken into reassembly (as a stranger's)
    and none completes."""
    summary, _, _, node = await attack_cluster(tmp_path, spec("fragments", sources=20))
    assert set(summary.sent) == {"first_fragment"}
    assert node.endpoint is not None
    stats = node.endpoint.statistics()["reassembly"]
    assert stats["stranger_buffered_bytes"] > 0
    assert stats["partials"] >= 20


@pytest.mark.udp
async def test_malformed_sends_each_kind_of_garbage(tmp_path: Path) -> None:
    summary, rise, checks, _ = await attack_cluster(tmp_path, spec("malformed"))
    assert set(summary.sent) == {"bad_checksum", "truncated", "bad_magic", "bad_cbor",
                                 "cut_message"}
    # the kernel drops what has no frame header, or no Request's where it starts; the node
    # what passes that (a checksum, a message cut short)
    assert rise["transport:stranger_kernel_drop"] == (
        summary.sent["truncated"] + summary.sent["bad_magic"] + summary.sent["bad_cbor"])
    assert rise["transport:bad_checksum"] == summary.sent["bad_checksum"]
    assert rise["malformed"] == summary.sent["cut_message"]
    assert checks <= 30  # none of it reaches a signature check (the honest STATUS do)


@pytest.mark.udp
async def test_replay_replays_a_captured_request_and_replies(tmp_path: Path) -> None:
    """As a client once (its key from the key directory), then its request re-framed (no
    signature check: it is not fresh) and as the very datagram (a transport duplicate), and
    the replies framed as from their replicas (address mismatch)."""
    summary, rise, checks, node = await attack_cluster(tmp_path, spec("replay"))
    sent = summary.sent
    assert set(sent) == {"request_replayed", "request_replayed_as_is", "reply_replayed"}
    # (the replays come from another port than the client's: the first is new there)
    assert rise["transport:duplicate_message"] == sent["request_replayed_as_is"] - 1
    assert rise["transport:stranger_kernel_drop"] == sent["reply_replayed"]
    # the re-framed replays reach the replica, which has executed that request already
    assert rise["replica:old_request"] + rise["replica:duplicate_request"] \
        + node.core.counters.get("reply_resent", 0) >= 1  # type: ignore[union-attr]
    # the request was checked once (or not at all, when it came in a batch); its 100
    # replays cost no check (a few are the honest replicas' STATUS and batches)
    assert checks <= 30


@pytest.mark.udp
async def test_clientflood_sends_valid_requests_of_one_client(tmp_path: Path) -> None:
    """A faulty client with a valid key (issue 21, per-client fair queuing): its fresh
    requests pass every check and reach the replica; its retransmissions cost no check.
    Failed before the fix: "clientflood" was not a kind (ConfigError: unknown attack kind)."""
    summary, rise, checks, node = await attack_cluster(tmp_path, spec("clientflood"))
    sent = summary.sent
    assert set(sent) == {"request_fresh", "request_retransmitted"}
    assert 0 < sum(sent.values()) <= 200  # rate x duration at most
    assert summary.notes and summary.notes[0].startswith("flooding as client ")
    assert node.core is not None
    client = int(summary.notes[0].split()[-1])
    # the fresh ones reached the replica as that client's (its number went past the first)
    entry = node.core.client_table.get(client)
    took = node.client_latest.get(client, -1)
    assert took > 0 or entry is not None
    # each fresh request is checked at most twice (when it comes, and in the primary's
    # batch that orders it); a retransmission costs none (a few checks are the honest
    # replicas' STATUS, pre-prepares and votes)
    assert checks <= 2 * sent["request_fresh"] + 100
    # nothing forged here: no drop that means a failed or skipped check
    assert rise["replica_address_mismatch"] == rise["replica_message_from_outsider"] == 0


@pytest.mark.udp
async def test_status_from_an_outsider_port_is_dropped_unchecked(tmp_path: Path) -> None:
    summary, rise, checks, _ = await attack_cluster(tmp_path, spec("status"))
    assert set(summary.sent) == {"status_behind", "fetch_state_repeat"}
    assert rise["transport:stranger_kernel_drop"] == summary.total
    assert checks <= 30
    assert "signed with replica 3's own key" in summary.notes


@pytest.mark.udp
async def test_status_as_a_faulty_replica_is_rate_limited(tmp_path: Path) -> None:
    """Replica 3 is the attacker (its node is not running; the attack sends from its
    address with its key): node 1 answers STATUS at most once per status_answer_interval_s
    and never sends state for an unknown digest."""
    summary, rise, _, node = await attack_cluster(tmp_path, spec("status", as_replica=3),
                                                  running=(0, 1, 2))
    assert "sent from replica 3's own address" in summary.notes
    half = summary.total // 2
    statuses = rise["replica:status_repeat"] + rise["replica:status_rate_limited"]
    assert statuses >= half - 0.5 / node.config.status_answer_interval_s - 1
    assert rise["replica:no_such_state"] == summary.sent["fetch_state_repeat"]


# --------------------------------------------------------------------------
# Refusals and bounds
# --------------------------------------------------------------------------


def test_non_loopback_targets_are_refused(tmp_path: Path, capsys: pytest.CaptureFixture[str]
                                          ) -> None:
    config, _ = cluster_config(tmp_path, ["127.0.0.1", "127.0.0.1", "10.1.2.3", "127.0.0.1"])
    with pytest.raises(AttackRefused, match="node 2's address 10.1.2.3:.* not a loopback"):
        loopback_targets(config, 1)  # even when only another node would be attacked
    path = tmp_path / "c.toml"
    path.write_text(config_to_toml(config))
    assert main(["attack", str(path), "--kind", "sigflood", "--duration", "1"]) == 2
    assert "not a loopback address" in capsys.readouterr().err
    assert [t[0] for t in loopback_targets(dataclasses.replace(config, nodes=tuple(
        dataclasses.replace(n, host="::1" if n.id == 2 else "127.0.0.9") for n in config.nodes)),
        None)] == [0, 1, 2, 3]


@pytest.mark.parametrize("field,value,message", [
    ("kind", "flood", "unknown attack kind 'flood'"),
    ("rate", MAX_RATE * 2, "rate"),
    ("rate", 0, "rate"),
    ("duration_s", MAX_DURATION_S + 1, "duration"),
    ("duration_s", float("inf"), "duration"),
    ("sources", 0, "sources"),
])
def test_bad_specs_get_a_clear_error(field: str, value: Any, message: str) -> None:
    args: dict[str, Any] = {"kind": "sigflood", field: value}
    kind = args.pop("kind")
    with pytest.raises(ConfigError, match=message):
        make_spec(kind, **args)


async def test_an_attack_keeps_to_rate_times_duration(autojump_clock: Any) -> None:
    """On Trio's (virtual) clock: exactly rate x duration datagrams, all within the
    duration, whatever the kind; a sink socket receives them."""
    print(f"seed={SEED}")
    sinks = [socket.socket(socket.AF_INET, socket.SOCK_DGRAM) for _ in range(4)]
    try:
        for sink in sinks:
            sink.bind(("127.0.0.1", 0))
            sink.setblocking(False)
        config = ClusterConfig.local(4, clients=2, nodes=tuple(
            NodeAddress(i, "127.0.0.1", sinks[i].getsockname()[1]) for i in range(4)))
        for kind in ("sigflood", "control", "fragments", "malformed", "status"):
            s = make_spec(kind, rate=1000, duration_s=0.25, seed=SEED, sources=3)
            summary = await run_attack(s, config)
            assert summary.total == s.max_datagrams == 250, kind
            assert summary.elapsed_s <= s.duration_s
            got = 0
            for sink in sinks:
                while True:
                    try:
                        sink.recv(2048)
                    except BlockingIOError:
                        break
                    got += 1
            assert got == 250, kind
    finally:
        for sink in sinks:
            sink.close()
    assert set(KINDS) == {"sigflood", "control", "fragments", "malformed", "status", "replay",
                          "clientflood"}


# --------------------------------------------------------------------------
# Scenario entries
# --------------------------------------------------------------------------


def test_attack_entries_are_parsed_and_written_back() -> None:
    data = {"attack": [{"kind": "sigflood", "rate": 5000, "at": 2.0, "duration": 5.0},
                       {"kind": "status", "target": 1, "as_replica": 3}]}
    scenario = parse_scenario(data, "s.toml")
    assert scenario.attacks == (
        AttackSpec("sigflood", 5000.0, 5.0, None, 0, 2.0),
        AttackSpec("status", 1000.0, 10.0, 1, 0, 0.0, None, 3))
    import tomllib

    assert parse_scenario(tomllib.loads(scenario.to_toml())).attacks == scenario.attacks
    scenario.check_nodes(4)
    with pytest.raises(ConfigError, match="attack\\[1\\].as_replica"):
        scenario.check_nodes(3)


@pytest.mark.parametrize("entry,where,message", [
    ({"kind": "sigflod"}, "attack[0].kind", "did you mean 'sigflood'"),
    ({"kind": "control", "rate": -1}, "attack[0].rate", "rate"),
    ({"kind": "control", "rate": "fast"}, "attack[0].rate", "rate"),
    ({"kind": "control", "duration": 10_000}, "attack[0].duration", "duration"),
    ({"kind": "control", "speed": 1}, "attack[0].speed", "unknown key"),
    ({"rate": 5}, "attack[0].kind", "missing"),
])
def test_bad_attack_entries_name_the_field(entry: dict[str, Any], where: str, message: str
                                           ) -> None:
    with pytest.raises(ConfigError, match=message) as info:
        parse_scenario({"attack": [entry]}, "s.toml")
    assert where in str(info.value)


@pytest.mark.udp
async def test_a_scenario_attack_runs_as_a_bounded_process(tmp_path: Path) -> None:
    """`bft up --scenario`'s part: an `[[attack]]` entry runs as a `bft attack` process at its
    time, and its summary is said; what it sent is what reached the (sink) nodes."""
    import argparse

    from adversary.commands import check_up, run_attack_process

    sinks = [socket.socket(socket.AF_INET, socket.SOCK_DGRAM) for _ in range(4)]
    try:
        for sink in sinks:
            sink.bind(("127.0.0.1", 0))
            sink.setblocking(False)
        config = ClusterConfig.local(4, clients=2, nodes=tuple(
            NodeAddress(i, "127.0.0.1", sinks[i].getsockname()[1]) for i in range(4)))
        path = tmp_path / "c.toml"
        path.write_text(config_to_toml(config))
        scenario = tmp_path / "s.toml"
        scenario.write_text('[[attack]]\nkind = "malformed"\nrate = 500\nduration = 0.4\n'
                            'target = 2\nat = 0.1\n')
        args = argparse.Namespace(config=path, state_dir=tmp_path / "state", scenario=scenario)
        check_up(args, config)
        said: list[str] = []
        spec = parse_scenario({"attack": [{"kind": "malformed", "rate": 500, "duration": 0.4,
                                           "target": 2, "at": 0.1}]}).attacks[0]
        with trio.fail_after(60):
            assert await run_attack_process(0, spec, args, said.append) == 0
        got = [0] * 4
        for i, sink in enumerate(sinks):
            while True:
                try:
                    sink.recv(2048)
                except BlockingIOError:
                    break
                got[i] += 1
    finally:
        for sink in sinks:
            sink.close()
    import re

    counts = [int(m.group(1)) for line in said
              if (m := re.search(r"attack malformed: (\d+) datagrams", line))]
    assert len(counts) == 1 and 0 < counts[0] <= 200, said
    assert got == [0, 0, counts[0], 0]
    # a scenario with attacks is refused for a cluster that is not on loopback
    far = dataclasses.replace(config, nodes=tuple(
        dataclasses.replace(n, host="192.0.2.1") for n in config.nodes))
    from bft.cliutil import CliError

    with pytest.raises(CliError, match="not a loopback address"):
        check_up(args, far)
