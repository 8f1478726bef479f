"""Issue 23 item 3: under `bft up`, r on a node that is down restarts it (the dashboard
calls `on_restart`); r on a node that is up, or whose process still runs, resumes it as
before. Textual runs on asyncio: each test runs its own loop (see test_dashboard.py)."""

from __future__ import annotations

from typing import Any

from test_dashboard import CONFIG, KEYS, VERIFIER, run_app, status
from textual.widgets import Log

from bft.telemetry import Resume
from tui.app import DashboardApp


class Clock:
    def __init__(self) -> None:
        self.now = 10.0

    def __call__(self) -> float:
        return self.now


def test_r_restarts_a_down_node_and_resumes_an_up_one() -> None:
    """Failed before the fix: DashboardApp took no on_restart, and r on a dead node only
    sent a Resume nobody received."""
    clock = Clock()
    asked: list[int] = []
    answers = {1: "node 1 restarted (pid 4242)", 2: None}  # node 2's process still runs

    def on_restart(node: int) -> str | None:
        asked.append(node)
        return answers[node]

    app = DashboardApp(CONFIG, VERIFIER, KEYS.signer("admin", 0), listen=("127.0.0.1", 0),
                       on_restart=on_restart, clock=clock, down_after_s=2.0)

    async def body(pilot: Any) -> None:
        for node in range(4):
            app.feed_message(status(node, 1))
        clock.now = 20.0  # node 1 and 2 fall silent: down
        for node in (0, 3):
            app.feed_message(status(node, 2))
        await pilot.press("down")  # node 1
        assert app.selected_node() == 1
        await pilot.press("r")
        await pilot.pause()
        assert asked == [1] and app.sent_commands == []
        app.redraw()
        assert any("node 1 restarted (pid 4242)" in line
                   for line in app.query_one("#events", Log).lines)
        await pilot.press("down", "r")  # node 2: down, but its process runs: resume it
        await pilot.pause()
        assert asked == [1, 2]
        assert [(c.target, c.action) for c in app.sent_commands] == [(2, Resume())]
        await pilot.press("down", "r")  # node 3 is up: resume, no restart asked
        await pilot.pause()
        assert asked == [1, 2]
        assert [(c.target, c.action) for c in app.sent_commands] == [(2, Resume()),
                                                                    (3, Resume())]

    run_app(app, body)
