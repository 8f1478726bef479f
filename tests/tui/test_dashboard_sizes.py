"""Issue 23 item 7: the dashboard is usable at 80x24 (a compact layout chosen by width) and
at 160x48. Pilot tests that read the screen as the user sees it.

Failed before the fix: at 80x24 the node table scrolled sideways (in/s showed as "in/",
out/s, drops and lag were off screen), the footer ended "q Q", the events panel showed one
clipped line, "lag" had no unit, and "drops" counted the normal late votes."""

from __future__ import annotations

from typing import Any

from test_dashboard import CONFIG, VERIFIER, cells, feed_scene, run_app, screen_text, status
from textual.widgets import DataTable

from tui.app import DashboardApp


def scene(app: DashboardApp) -> None:
    feed_scene(app)
    # node 2: 900 late votes (normal after a quorum) and 3 bad signatures (real drops)
    app.feed_message(status(2, 9, executed=21, view=1, primary=1, stable_seq=16,
                            drops=(("late_vote", 900), ("bad_signature", 3)),
                            drops_total=903))
    for i in range(6):
        app.model.note(f"event line {i}")


def table_fits(app: DashboardApp) -> bool:
    table = app.query_one("#nodes", DataTable)
    return table.virtual_size.width <= table.scrollable_content_region.width


def test_80x24_shows_rates_drops_and_lag_without_scrolling() -> None:
    app = DashboardApp(CONFIG, VERIFIER, clock=lambda: 100.0)

    async def body(pilot: Any) -> None:
        scene(app)
        app.redraw()
        await pilot.pause()
        text = screen_text(app)
        print(text)
        lines = text.splitlines()
        assert len(lines) <= 24 and all(len(line) <= 80 for line in lines)
        assert "commits/s" in lines[0]
        header = next(line for line in lines if " id " in line)
        for label in ("role", "view", "executed", "status", "in/s", "out/s", "drops",
                      "lag(seq)"):
            assert f" {label} " in header, label
        assert table_fits(app)
        assert cells(app, 2)[app._columns.index("drops")] == "3"  # late votes apart
        footer = lines[-1]
        assert footer.rstrip().endswith("q Quit") and "? Help" in footer
        shown = [i for i in range(6) if f"event line {i}" in text]
        assert len(shown) >= 4, f"the events panel shows {len(shown)} lines"

    run_app(app, body, size=(80, 24))


def test_160x48_shows_every_column_and_the_rate() -> None:
    app = DashboardApp(CONFIG, VERIFIER, clock=lambda: 100.0)

    async def body(pilot: Any) -> None:
        scene(app)
        app.redraw()
        await pilot.pause()
        text = screen_text(app)
        print(text)
        header = next(line for line in text.splitlines() if " id " in line)
        for label in ("address", "role", "view", "executed", "stable", "status", "in/s",
                      "out/s", "drops", "expected", "lag(seq)"):
            assert f" {label} " in header, label
        assert table_fits(app)
        row = cells(app, 2)
        assert row[app._columns.index("drops")] == "3"
        assert row[app._columns.index("expected")] == "900"
        assert "commits/s" in text.splitlines()[0]
        assert "Commits per second (last 60 s)" in text
        assert text.splitlines()[-1].rstrip().endswith("q Quit")

    run_app(app, body, size=(160, 48))


def test_layout_follows_a_resize() -> None:
    """Wide to compact and back, the selected row kept."""
    app = DashboardApp(CONFIG, VERIFIER, clock=lambda: 100.0)

    async def body(pilot: Any) -> None:
        scene(app)
        await pilot.press("down", "down")
        assert app.selected_node() == 2 and not app.compact
        await pilot.resize_terminal(80, 24)
        app.redraw()
        await pilot.pause()
        assert app.compact and "address" not in app._columns
        assert app.selected_node() == 2
        await pilot.resize_terminal(160, 48)
        app.redraw()
        await pilot.pause()
        assert not app.compact and app.selected_node() == 2

    run_app(app, body, size=(160, 48))
