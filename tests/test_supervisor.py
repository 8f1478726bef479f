"""bft.lifecycle.Supervisor (issue 23 item 3): which exits count as crashes, restarts after
a doubling backoff, at most max_restarts per node, and manual restarts (the dashboard's r).
No processes: a fake cluster with the fields the supervisor reads, and an injected time."""

from __future__ import annotations

from dataclasses import dataclass, field

from bft.lifecycle import Supervisor


@dataclass
class FakeProc:
    node_id: int
    pid: int
    returncode: int | None = None

    def running(self) -> bool:
        return self.returncode is None


@dataclass
class FakeCluster:
    procs: dict[int, FakeProc] = field(default_factory=dict)
    signalled: set[int] = field(default_factory=set)
    spawned: list[tuple[int, list[str]]] = field(default_factory=list)
    next_pid: int = 100

    def spawn(self, node_id: int, extra_args: list[str]) -> FakeProc:
        self.next_pid += 1
        self.procs[node_id] = FakeProc(node_id, self.next_pid)
        self.spawned.append((node_id, list(extra_args)))
        return self.procs[node_id]


def test_automatic_restarts_back_off_and_are_bounded() -> None:
    """A crash (an exit nobody here signalled) is restarted after 1 s, the next after 2 s,
    then 4 s; after max_restarts the node is left down, and said so. An exit the launcher
    caused (a stop) is never restarted."""
    cluster = FakeCluster({i: FakeProc(i, 10 + i) for i in range(4)})
    lines: list[str] = []
    sup = Supervisor(cluster, lines.append, automatic=True, max_restarts=2,
                     extra_args=lambda i: ["--restarted"])
    cluster.signalled.add(13)
    cluster.procs[3].returncode = 0  # stopped by the launcher
    cluster.procs[1].returncode = 137  # crashed
    sup.poll(100.0)
    assert cluster.spawned == [] and lines == ["node 1 crashed (status 137): restart 1/2 in 1 s"]
    sup.poll(100.5)
    assert cluster.spawned == []
    sup.poll(101.0)
    assert cluster.spawned == [(1, ["--restarted"])]
    assert lines[-1] == f"node 1 restarted (pid {cluster.procs[1].pid})"
    cluster.procs[1].returncode = -9  # crashes again
    sup.poll(102.0)
    assert lines[-1] == "node 1 crashed (status -9): restart 2/2 in 2 s"
    sup.poll(103.9)
    assert len(cluster.spawned) == 1
    sup.poll(104.0)
    assert len(cluster.spawned) == 2
    cluster.procs[1].returncode = 1
    sup.poll(200.0)
    sup.poll(1000.0)
    assert len(cluster.spawned) == 2
    assert lines[-1] == "node 1 crashed (status 1) after 2 restarts: left down (at most 2)"
    assert 3 not in [i for i, _ in cluster.spawned]


def test_manual_restart_only_of_a_node_that_does_not_run() -> None:
    """r in the dashboard: a dead node (crashed or stopped) starts again at once; a running
    one is left alone. Without --restart-crashed nothing restarts by itself."""
    cluster = FakeCluster({i: FakeProc(i, 10 + i) for i in range(4)})
    lines: list[str] = []
    sup = Supervisor(cluster, lines.append)
    cluster.procs[2].returncode = 137
    sup.poll(50.0)
    sup.poll(500.0)
    assert cluster.spawned == []
    assert sup.restart(0) == "node 0 is running (pid 10): not restarted"
    assert sup.restart(2) == f"node 2 restarted (pid {cluster.procs[2].pid})"
    assert cluster.spawned == [(2, [])]
