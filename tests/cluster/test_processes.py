"""A real cluster: four `bft node` processes over loopback UDP, crashed with signals.

Each test starts its own processes with a config of short timeouts and a
small checkpoint interval (K = 8, L = 16), drives load with in-process
clients, and compares the state digests the nodes print in their stop
summaries. Waits are bounded; the fixture kills every process left.
"""

from __future__ import annotations

import os
import random
import signal
from typing import Any

import pytest
import trio

from .util import (
    Cluster,
    Ledger,
    assert_same_state,
    events_since_last_start,
    read_back,
    write_all,
    writer,
)

pytestmark = pytest.mark.udp


@pytest.fixture
def make_cluster(tmp_path):
    """A factory of `Cluster`s under tmp_path. After the test: no node may have crashed by
    itself or logged an error or evidence; every process still running is killed."""
    made: list[Cluster] = []

    def make(**options: Any) -> Cluster:
        cluster = Cluster(tmp_path / f"cluster{len(made)}", **options)
        made.append(cluster)
        return cluster

    try:
        yield make
        problems = [p for cluster in made for p in cluster.problems()]
        assert not problems, "\n".join(problems)
    finally:
        for cluster in made:
            cluster.cleanup()


# ---------------------------------------------------------------------- tests


async def test_four_processes_commit_and_agree(make_cluster):
    """Two clients' puts all complete; after SIGTERM every node reports the same state."""
    cluster = make_cluster()
    with trio.fail_after(40):
        await cluster.start()
        ledger = Ledger()
        await write_all(cluster, [0, 1], 15, "a", ledger)
        assert len(ledger.acked) == 30
        await read_back(cluster, {k: ledger.acked[k] for k in ("a0-3", "a1-14")}, [2])
        await cluster.barrier()
        summaries = await cluster.stop_all()
    assert sorted(summaries) == [0, 1, 2, 3]
    assert_same_state(summaries)
    assert all(s["view"] == 0 for s in summaries.values())
    assert summaries[0]["executed_requests"] >= 30 + 2 + 1  # puts, gets, barrier


async def test_killed_backup_catches_up_by_state_transfer(make_cluster):
    """SIGKILL a backup: service goes on. Restarted after the others' stable checkpoint has
    left its log window behind, it catches up by state transfer to the same state."""
    cluster = make_cluster()  # K = 8, L = 16
    with trio.fail_after(60):
        await cluster.start()
        ledger = Ledger()
        await write_all(cluster, [0, 1], 5, "before", ledger)
        await cluster.kill(3)
        # a closed-loop client orders one request per batch: 40 sequence numbers at least,
        # so the stable checkpoint moves past node 3's whole log window (L = 16)
        await write_all(cluster, [0], 40, "down", ledger)
        await cluster.start(3)
        await cluster.barrier()  # node 3 replies only once it executed the barrier
        await write_all(cluster, [1], 3, "after", ledger)
        await cluster.barrier()
        summaries = await cluster.stop_all()
    assert_same_state(summaries)
    caught_up = [
        e for e in events_since_last_start(cluster, 3) if e.get("event") == "state_transfer"
    ]
    assert caught_up, "node 3 caught up without a state transfer: drive more operations"
    assert caught_up[0]["seq"] >= 40 and caught_up[0]["seq"] % 8 == 0


async def test_killed_primary_under_load_triggers_view_change(make_cluster):
    """SIGKILL the primary with requests in flight: a view change happens and every
    client's operations complete; the survivors agree on the state."""
    cluster = make_cluster()
    with trio.fail_after(60):
        await cluster.start()
        ledger = Ledger()
        async with trio.open_nursery() as nursery:
            for cid in (0, 1, 2):
                nursery.start_soon(lambda cid=cid: writer(cluster, cid, "p", ledger, count=20))
            await ledger.wait_for(10)
            await cluster.kill(0)  # the primary of view 0, with requests in flight
        assert len(ledger.acked) == 60  # every operation completed (none raised)
        await cluster.barrier([1, 2, 3])
        summaries = await cluster.stop_all()
    assert sorted(summaries) == [1, 2, 3]
    assert all(s["view"] > 0 for s in summaries.values()), {
        i: s["view"] for i, s in summaries.items()
    }
    assert_same_state(summaries)
    for i in (1, 2, 3):
        kinds = [e.get("event") for e in cluster.events(i)]
        assert "new_view" in kinds, f"node {i} never entered a new view"


async def test_random_crashes_lose_no_acknowledged_write(make_cluster):
    """Rounds of SIGKILL at a seeded random point during writes, then restart (one node
    down at a time, f = 1): every write a client got a reply for reads back afterwards,
    and all nodes end with the same state. fsync = "always"."""
    seed = int(os.environ.get("BFT_TEST_SEED") or random.SystemRandom().randrange(2**32))
    print(f"seed={seed} (rerun with BFT_TEST_SEED={seed})")
    rng = random.Random(seed)
    cluster = make_cluster(fsync="always")  # durability is the point here
    ledger = Ledger()
    log: list[str] = []
    with trio.fail_after(75):
        await cluster.start()
        stop = trio.Event()
        async with trio.open_nursery() as nursery:
            for cid in (0, 1, 2):
                nursery.start_soon(
                    lambda cid=cid: writer(
                        cluster, cid, "r", ledger, stop=stop, must_complete=False
                    )
                )
            for round_no in range(4):
                victim = rng.randrange(cluster.n)  # one node down at a time (f = 1)
                await ledger.wait_for(len(ledger.acked) + rng.randint(1, 10))
                await trio.sleep(rng.uniform(0, 0.02))  # land somewhere inside a write
                await cluster.kill(victim)
                log.append(f"round {round_no}: killed node {victim} at {len(ledger.acked)} acked")
                await ledger.wait_for(len(ledger.acked) + rng.randint(3, 25))
                await cluster.start(victim)
                log.append(
                    f"round {round_no}: restarted node {victim} at {len(ledger.acked)} acked"
                )
                # the restarted node counts as down until it has caught up
                await cluster.barrier(timeout_s=30)
            stop.set()
        print("\n".join(log))
        print(f"acked {len(ledger.acked)} writes, {len(ledger.unknown)} with unknown outcome")
        await read_back(cluster, ledger.acked, [3, 4, 5, 6])  # reads are ordered like writes
        await cluster.barrier()  # every node has executed everything before stopping
        summaries = await cluster.stop_all()
    assert_same_state(summaries)
    assert len(ledger.acked) >= 4 * 4


def test_harness_reports_unexpected_exits_and_cleans_up(tmp_path):
    """The safety nets: a node that exits without the harness signalling it is reported by
    `problems()`, and `cleanup()` SIGKILLs and reaps a node that is still running."""
    cluster = Cluster(tmp_path)
    try:
        trio.run(cluster.start, 0, 1)
        survivor, other = cluster.procs[0], cluster.procs[1]
        assert int((cluster.state_dir / "node-0.pid").read_text()) == survivor.pid
        assert cluster.problems() == []
        os.kill(other.pid, signal.SIGTERM)  # as if it stopped on its own
        assert other.popen.wait(timeout=10) == 0
        (problem,) = cluster.problems()
        assert problem.startswith(f"node 1 (pid {other.pid}) exited by itself with status 0")
    finally:
        cluster.cleanup()
    assert survivor.popen.returncode == -signal.SIGKILL
