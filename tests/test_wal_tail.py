"""A damaged WAL tail is detected, truncated and reported; the node then catches up.

Four in-process nodes (bft.node.Node) over real loopback UDP. Node 3 is stopped,
the last record of its live WAL segment is damaged on disk (torn: cut short;
garbled: one payload byte flipped, so its CRC32C fails), and node 3 is started
again from the same state directory. It must start, log one `wal_repaired` line
naming the damage, keep every record before the damaged one, and end with the
same executed prefix and state digest as the others.
"""

from __future__ import annotations

import json
import struct
from pathlib import Path

import pytest
import trio
from cluster.util import free_udp_ports

from bft.app import Ops, decode_result
from bft.config import ClusterConfig, NodeAddress
from bft.crypto import Ed25519Keys
from bft.node import ClusterClient, Node

pytestmark = pytest.mark.udp

SEGMENT_HEADER_BYTES = struct.calcsize("<4sHHQ") + 4  # magic, version, reserved, index, crc
RECORD_HEADER = struct.Struct("<II")  # payload length, crc32c


def record_offsets(segment: bytes) -> list[int]:
    """Start offsets of the records of an intact segment (layout: bft/storage.py docstring)."""
    offsets, at = [], SEGMENT_HEADER_BYTES
    while at < len(segment):
        length, _ = RECORD_HEADER.unpack_from(segment, at)
        offsets.append(at)
        at += RECORD_HEADER.size + length
    assert at == len(segment), "the segment was not intact before the test damaged it"
    return offsets


def damage_last_record(wal_dir: Path, how: str) -> int:
    """Damage the last record of the only segment in `wal_dir`; return how many records
    it held before."""
    (segment_path,) = sorted(wal_dir.glob("wal-*.log"))
    data = bytearray(segment_path.read_bytes())
    offsets = record_offsets(bytes(data))
    assert offsets, "no record in the live segment to damage"
    last = offsets[-1]
    if how == "torn":  # a write cut short by a crash: header and half the payload
        length, _ = RECORD_HEADER.unpack_from(data, last)
        del data[last + RECORD_HEADER.size + length // 2 :]
    elif how == "garbled":  # a flipped bit on the medium
        data[-1] ^= 0x40
    else:
        raise ValueError(how)
    segment_path.write_bytes(bytes(data))
    return len(offsets)


def make_config(tmp_path: Path) -> tuple[ClusterConfig, Ed25519Keys]:
    ports = free_udp_ports(4)
    config = ClusterConfig.local(
        4,
        clients=4,
        fsync="never",
        checkpoint_interval=8,
        log_window=16,
        view_change_timeout_s=0.5,
        client_timeout_s=0.25,
        status_interval_s=0.1,
        nodes=tuple(NodeAddress(i, "127.0.0.1", ports[i]) for i in range(4)),
    )
    return config, Ed25519Keys(4, 4, seed=1)


class Runner:
    """Runs nodes in a nursery, each in its own cancel scope so one can be stopped alone."""

    def __init__(
        self, nursery: trio.Nursery, config: ClusterConfig, keys: Ed25519Keys, tmp_path: Path
    ) -> None:
        self.nursery, self.config, self.keys, self.tmp_path = nursery, config, keys, tmp_path
        self.nodes: dict[int, Node] = {}
        self._scopes: dict[int, trio.CancelScope] = {}
        self._done: dict[int, trio.Event] = {}

    async def start(self, i: int) -> Node:
        node = Node(
            self.config,
            i,
            signer=self.keys.signer("replica", i),
            verifier=self.keys.verifier(),
            state_dir=self.tmp_path / "state",
        )
        self.nodes[i] = node
        self._done[i] = done = trio.Event()

        async def serve(task_status=trio.TASK_STATUS_IGNORED) -> None:
            try:
                with trio.CancelScope() as scope:
                    self._scopes[i] = scope
                    await node.run(task_status=task_status)
            finally:
                done.set()

        await self.nursery.start(serve)
        return node

    async def stop(self, i: int) -> None:
        self._scopes[i].cancel()
        await self._done[i].wait()


async def put_many(client: ClusterClient, prefix: str, count: int) -> None:
    for k in range(count):
        result = await client.call(Ops.put(f"{prefix}{k}", b"v%d" % k), timeout_s=10)
        assert decode_result(result).kind == "ok"


@pytest.mark.parametrize("how", ["torn", "garbled"])
async def test_damaged_wal_tail_is_truncated_reported_and_caught_up(tmp_path, how):
    config, keys = make_config(tmp_path)
    with trio.fail_after(30):
        async with trio.open_nursery() as nursery:
            runner = Runner(nursery, config, keys, tmp_path)
            for i in range(4):
                await runner.start(i)
            client = ClusterClient(
                config, 0, signer=keys.signer("client", 0), verifier=keys.verifier()
            )
            try:
                # 13 sequence numbers: the checkpoint at 8 compacts the WAL, 9..13 stay in it
                await put_many(client, "a", 13)
                while runner.nodes[3].replica.last_executed < 13:
                    await trio.sleep(0.01)
                await runner.stop(3)
                records_before = damage_last_record(tmp_path / "state" / "wal-3", how)

                node3 = await runner.start(3)
                recovered = node3.storage.statistics()["recovered"]
                assert recovered is not None
                assert recovered["records_kept"] == records_before - 1
                assert (
                    recovered["reason"]
                    == {"torn": "torn record", "garbled": "bad record checksum"}[how]
                )

                await put_many(client, "b", 20)  # past two more checkpoints
                nodes = list(runner.nodes.values())
                while len({n.replica.last_executed for n in nodes}) != 1:
                    await trio.sleep(0.01)
                assert len({n.state_digest() for n in nodes}) == 1
                assert nodes[0].replica.last_executed >= 33
                got = decode_result(await client.call(Ops.get("a12"), timeout_s=10))
                assert got.value == b"v12"
            finally:
                client.close()
            nursery.cancel_scope.cancel()

    lines = [
        json.loads(line)
        for line in (tmp_path / "state" / "node-3.log.jsonl").read_text().splitlines()
    ]
    repaired = [e for e in lines if e.get("event") == "wal_repaired"]
    assert len(repaired) == 1
    assert repaired[0]["reason"] == recovered["reason"]
    assert repaired[0]["records_kept"] == records_before - 1
    starts = [k for k, e in enumerate(lines) if e.get("event") == "start"]
    assert len(starts) == 2 and starts[1] > lines.index(repaired[0])  # reported before start
