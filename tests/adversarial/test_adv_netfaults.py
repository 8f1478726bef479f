"""Network faults: the seeded decision model, datagram filters on a real UDP endpoint, and the
simulator's corrupted datagrams that the transport checksum must catch."""

from __future__ import annotations

import random

import trio
from hypothesis import given
from hypothesis import strategies as st

from adversary.netfaults import DatagramFaults, FaultModel, corrupt_bytes, make_network_rule
from adversary.scenario import Scenario
from adversary.sim import Simulation
from transport.frame import FrameError, decode_frame_untrusted, encode_frames
from transport.udp import UdpEndpoint


def test_decisions_are_seeded_and_windows_are_respected() -> None:
    rules = [make_network_rule("drop", rate=0.3, start_s=1.0, stop_s=2.0),
             make_network_rule("duplicate", rate=0.2),
             make_network_rule("delay", delay_ms=10.0, jitter_ms=5.0, rate=0.5)]
    a = FaultModel(rules, random.Random(4))
    b = FaultModel(rules, random.Random(4))
    fates = [a.decide(t / 100, 0, 1) for t in range(300)]
    assert fates == [b.decide(t / 100, 0, 1) for t in range(300)]
    early = fates[:100]
    during = fates[100:200]
    assert all(f for f in early)  # no drop before the window
    lost = sum(1 for f in during if not f)
    assert 15 <= lost <= 45, lost  # about 30 % of 100
    assert any(len(f) == 2 for f in fates)
    assert all(0.0 <= c.delay_s <= 0.015 for f in fates for c in f)


def test_partition_cuts_replicas_in_different_groups_only() -> None:
    model = FaultModel([make_network_rule("partition", groups=[[0, 1]], start_s=0.0,
                                          stop_s=5.0)], random.Random(1))
    assert model.decide(1.0, 0, 2) == [] and model.decide(1.0, 2, 3) != []
    assert model.decide(1.0, 0, 1) != [] and model.decide(1.0, None, 0) != []  # clients pass
    assert model.decide(5.0, 0, 2) != []  # healed


@given(st.binary(min_size=1, max_size=3000), st.integers(0, 2**32))
def test_corrupted_frames_fail_the_checksum(payload: bytes, seed: int) -> None:
    rng = random.Random(seed)
    for frame in encode_frames(3, 9, payload, 1400):
        bad = corrupt_bytes(frame, rng)
        assert bad != frame
        try:
            decode_frame_untrusted(bad)
        except FrameError as exc:
            assert exc.reason in ("bad_checksum", "bad_magic", "bad_version", "truncated",
                                  "bad_fragment", "too_large")
        else:  # pragma: no cover - a CRC32C collision
            raise AssertionError("a corrupted frame passed the checksum")


def test_datagram_filter_drop_duplicate_delay_and_client_side() -> None:
    now = [0.0]
    peers = {("127.0.0.1", 7001): 1}
    faults = DatagramFaults([make_network_rule("duplicate", rate=1.0),
                             make_network_rule("delay", delay_ms=100.0)], 0, peers,
                            random.Random(2), lambda: now[0])
    assert faults.send_filter(b"d", ("127.0.0.1", 7001)) == []  # both copies delayed
    assert faults.next_due() == 0.1
    now[0] = 0.1
    assert faults.pop_due(0.1) == [(b"d", ("127.0.0.1", 7001))] * 2
    drop = DatagramFaults([make_network_rule("drop", rate=1.0)], 0, peers, random.Random(2),
                          lambda: 0.0)
    assert drop.send_filter(b"d", ("127.0.0.1", 7001)) == []
    assert drop.recv_filter(b"d", ("127.0.0.1", 7001)) == [(b"d", ("127.0.0.1", 7001))]
    assert drop.recv_filter(b"d", ("127.0.0.1", 5555)) == []  # a client's datagram


async def test_corruption_on_a_real_endpoint_is_caught_and_counted() -> None:
    """Every datagram flipped by the send filter is dropped by the receiver's CRC32C check."""
    receiver = UdpEndpoint(1, "127.0.0.1", 0)
    faults = DatagramFaults([make_network_rule("corrupt", rate=1.0, stop_s=1000.0)], 0,
                            {receiver.address: 1}, random.Random(5), lambda: 0.0)
    sender = UdpEndpoint(0, "127.0.0.1", 0, peers={1: receiver.address},
                         send_filter=faults.send_filter)
    with sender, receiver:
        for k in range(40):
            await sender.send(1, b"payload %d" % k)
        clean = UdpEndpoint(2, "127.0.0.1", 0, peers={1: receiver.address})
        with clean:
            await clean.send(1, b"marker")
        got = []
        with trio.fail_after(5):
            while b"marker" not in got:
                got += [r.payload for r in await receiver.receive_batch()]
    assert got == [b"marker"]
    drops = receiver.statistics()["drops"]
    caught = sum(drops[k] for k in ("bad_checksum", "bad_magic", "bad_version", "truncated",
                                    "bad_fragment", "too_large"))
    assert caught == 40 and drops["bad_checksum"] > 30
    assert faults.statistics()["corrupted"] == 40


def test_simulated_corruption_is_caught_by_the_frame_checksum() -> None:
    scenario = Scenario((), (make_network_rule("corrupt", rate=0.2, stop_s=2.0),),
                        {"nodes": 4, "seed": 21, "requests": 5, "think_ms": [20.0, 100.0]})
    result = Simulation(scenario.sim_config()).run(60.0)
    print(f"seed={result.seed} network={result.network}")
    assert result.ok, result.violations
    dropped = result.network["dropped"]
    assert dropped.get("bad_checksum", 0) > 10
    assert result.network["faults"]["corrupted"] == result.network["corrupted"]
    assert "corrupt_undetected" not in result.network


def test_simulated_faults_do_not_disturb_a_run_before_they_start() -> None:
    """A fault window that opens later leaves the run up to then bit-identical (the fault
    model draws from the network's Random only while a fault is active)."""
    base = {"nodes": 4, "seed": 5, "requests": 3}
    late = (make_network_rule("drop", rate=0.5, start_s=500.0, stop_s=501.0),)
    plain = Simulation(Scenario((), (), base).sim_config(drain_s=100.0)).run(2.0)
    later = Simulation(Scenario((), late, base).sim_config(drain_s=100.0)).run(2.0)
    assert plain.completed_requests == later.completed_requests == 6
    assert plain.trace_hash == later.trace_hash
    early = (make_network_rule("drop", rate=0.5, start_s=0.0, stop_s=1.0),)
    other = Simulation(Scenario((), early, base).sim_config(drain_s=100.0)).run(2.0)
    assert other.trace_hash != plain.trace_hash
