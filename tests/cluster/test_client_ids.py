"""Two clients under one client id, against four real `bft node` processes over UDP
(issue 18, safety bug 1e; PROTOCOL.md "Requests and replies").

* Two clients that sign different requests under one (client id, t) (two processes
  sharing an id reached it easily): the second must not accept the result of the
  first one's request, and the first one's write stands.
* Two `bft client` processes with one id at the same time: the second refuses at once
  with a clear error; `bft client` without --id takes a free id; sequential runs of
  one id each get their own request numbers.

Waits are bounded; the fixture kills every process left.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import trio

from bft.app import Ops
from bft.node import ClientError, ClusterClient, default_client_timestamp_file

from .util import Cluster, assert_same_state, decode

pytestmark = pytest.mark.udp

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture
def cluster(tmp_path):
    """A 4-node cluster (not started). After the test: no node may have crashed by itself
    or logged an error or evidence; every process still running is killed."""
    made = Cluster(tmp_path / "cluster")
    try:
        yield made
        problems = made.problems()
        assert not problems, "\n".join(problems)
    finally:
        made.cleanup()


def _client_on(cluster: Cluster, client_id: int, first_timestamp: int) -> ClusterClient:
    return ClusterClient(cluster.config, client_id, verifier=cluster.verifier,
                         signer=cluster.keyring.signer("client", client_id),
                         host=cluster.client_host, first_timestamp=first_timestamp)


async def test_a_second_request_under_an_executed_number_gets_no_result(cluster):
    """Client A's `put x=1` executes under t; client B, same client id and same t, sends
    `put x=2`: B must get no result (every replica drops its request as
    `conflicting_request`), and x stays 1 at every replica.

    Failed before the fix: every replica resent A's cached reply to B's request and B's
    `put x=2` returned ok while x stayed 1 everywhere."""
    with trio.fail_after(60):
        await cluster.start()
        t = cluster.next_timestamp(0)
        a = _client_on(cluster, 0, t)
        try:
            assert decode(await a.call(Ops.put("x", b"1"), timeout_s=15)).kind == "ok"
        finally:
            a.close()
        b = _client_on(cluster, 0, t)
        try:
            with pytest.raises(ClientError):
                result = await b.call(Ops.put("x", b"2"), timeout_s=2)
                pytest.fail(f"B accepted {decode(result)}, the result of A's request")
        finally:
            b.close()
        reader = cluster.client(1)
        try:
            assert decode(await reader.call(Ops.get("x"), timeout_s=15)).value == b"1"
        finally:
            reader.close()
        await cluster.barrier()
        summaries = await cluster.stop_all()
    assert_same_state(summaries)
    for node, summary in summaries.items():
        assert summary["replica_drops"].get("conflicting_request", 0) >= 1, (node, summary)


def _bft_client(cluster: Cluster, *args: str) -> list[str]:
    return [sys.executable, "-m", "bft", "client", str(cluster.config_path), "--state-dir",
            str(cluster.state_dir), "--key-dir", str(cluster.key_dir), *args]


def _spawn(cmd: list[str], out: Path) -> subprocess.Popen[bytes]:
    with open(out, "wb") as sink:
        return subprocess.Popen(cmd, stdout=sink, stderr=subprocess.STDOUT,
                                stdin=subprocess.DEVNULL, cwd=ROOT,
                                env=dict(os.environ, PYTHONUNBUFFERED="1"))


async def _wait_for(what: str, done: Any, proc: subprocess.Popen[bytes], out: Path,
                    timeout_s: float = 20.0) -> None:
    """Wait until `done()` (polling), failing with the process's output if it exits first
    or the time runs out."""
    with trio.move_on_after(timeout_s):
        while not done():
            if proc.poll() is not None:
                raise AssertionError(f"{what}: the client exited with {proc.returncode}:\n"
                                     f"{out.read_text(errors='replace')}")
            await trio.sleep(0.02)
        return
    raise AssertionError(f"{what}: not within {timeout_s} s:\n{out.read_text(errors='replace')}")


async def _exit_status(proc: subprocess.Popen[bytes], timeout_s: float = 30.0) -> int:
    with trio.move_on_after(timeout_s):
        while proc.poll() is None:
            await trio.sleep(0.02)
        return proc.returncode
    raise AssertionError(f"client pid {proc.pid} did not exit within {timeout_s} s")


def _run(cmd: list[str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run(cmd, capture_output=True, text=True, timeout=60, cwd=ROOT,
                          stdin=subprocess.DEVNULL)


async def test_two_bft_client_processes_never_share_a_client_id(cluster):
    """While `bft client --id 0` waits for its result (the nodes are not up yet), a second
    `bft client --id 0` exits at once with status 2 and one line naming the id and the fix;
    a `bft client` without --id takes client id 1 meanwhile. Once the nodes are up both
    waiting clients complete; then two `bft client --id 0` runs one after the other each
    get request numbers of their own, and the second one's write is the one read back."""
    procs: list[subprocess.Popen[bytes]] = []
    try:
        with trio.fail_after(90):
            a_out = cluster.root / "client-a.out"
            a = _spawn(_bft_client(cluster, "--id", "0", "--timeout", "40", "put", "x", "1"),
                       a_out)
            procs.append(a)
            # A writes its timestamp file once it holds client id 0
            stamp0 = default_client_timestamp_file(cluster.state_dir, 0)
            await _wait_for("client A claiming id 0", stamp0.exists, a, a_out)

            b = _run(_bft_client(cluster, "--id", "0", "--timeout", "5", "put", "x", "2"))
            assert b.returncode == 2, b
            assert b.stderr.startswith("bft: error: client id 0 is in use"), b.stderr
            assert "--id" in b.stderr and "Traceback" not in b.stderr
            assert b.stderr.count("\n") == 1 and b.stdout == ""

            c_out = cluster.root / "client-c.out"
            c = _spawn(_bft_client(cluster, "--timeout", "40", "put", "y", "3"), c_out)
            procs.append(c)
            stamp1 = default_client_timestamp_file(cluster.state_dir, 1)
            await _wait_for("client C claiming the first free id", stamp1.exists, c, c_out)

            await cluster.start()
            for proc, out in ((a, a_out), (c, c_out)):
                status = await _exit_status(proc)
                assert (status, out.read_text()) == (0, "ok\n")

            first = _run(_bft_client(cluster, "--id", "0", "put", "x", "4"))
            assert (first.returncode, first.stdout) == (0, "ok\n"), first
            reserved = int(stamp0.read_text())
            second = _run(_bft_client(cluster, "--id", "0", "get", "x"))
            assert (second.returncode, second.stdout) == (0, "4\n"), second
            assert int(stamp0.read_text()) > reserved  # a start above the first run's range
            got_y = _run(_bft_client(cluster, "get", "y"))
            assert (got_y.returncode, got_y.stdout) == (0, "3\n"), got_y
            summaries = await cluster.stop_all()
        assert_same_state(summaries)
    finally:
        for proc in procs:
            if proc.poll() is None:
                proc.kill()
                proc.wait(timeout=10)
