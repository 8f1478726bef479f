"""The Textual dashboard: a live view of a cluster, and control of its nodes.

`DashboardApp` listens for signed telemetry on the monitor address (asyncio
UDP, `tui.net`), folds every verified message into a `ClusterModel`
(`tui.state`) and redraws the screen from the model on a timer
(`refresh_hz`, 5 Hz by default), never per datagram, so thousands of commits
per second cost a few dictionary updates each. When telemetry stops, the
timer keeps running and the silent nodes turn *down*.

Keys act on the node selected in the table: p pause 5 s, r resume (or, when the
dashboard runs under `bft up` (`on_restart`) and the node is down, restart it), b set the
next adversary behaviour (cycling through `behaviours`), c clear it, x cut
its links to every peer, h heal, k crash; `?` help, q quit (calling
`on_quit` first, so `bft up` can stop its cluster). Control commands are
signed with the admin key; without one (`admin_signer=None`) they are refused
with a notice.

Everything a node sends is shown as plain text (never as markup), and the
decoder only lets printable ASCII through.
"""

from __future__ import annotations

import asyncio
import contextlib
import signal
import time
from collections.abc import AsyncIterable, Callable, Sequence
from typing import Any, ClassVar

from rich.text import Text
from textual import events
from textual.app import App, ComposeResult
from textual.binding import Binding
from textual.containers import Horizontal, Vertical
from textual.screen import ModalScreen
from textual.widgets import DataTable, Footer, Log, Sparkline, Static

from bft.telemetry import (
    Action,
    ClearBehaviour,
    ControlCommand,
    Crash,
    Cut,
    Heal,
    Pause,
    Resume,
    SetBehaviour,
    TelemetryMessage,
    control_cluster_id,
)
from tui.net import ControlSender, TelemetryReceiver, address_family, open_endpoint
from tui.state import (
    COMMIT_HEADER,
    COMPACT_COLUMNS,
    NODE_COLUMNS,
    ClusterModel,
    commit_line,
    event_line,
    evidence_lines,
    node_cells,
    summary_line,
    view_line,
)

DEFAULT_BEHAVIOURS = ("lie", "equivocate", "silent", "slow")
PAUSE_MS = 5000

_COLUMN_WIDTHS = {
    "id": 3,
    "address": 15,
    "role": 7,
    "view": 5,
    "executed": 8,
    "stable": 7,
    "status": 14,
    "in/s": 6,
    "out/s": 6,
    "drops": 6,
    "expected": 8,
    "lag(seq)": 8,
}
#: Narrower, for COMPACT_COLUMNS (80 columns: 9 columns of these widths plus padding fit).
_COMPACT_WIDTHS = {**_COLUMN_WIDTHS, "id": 2, "view": 4, "executed": 8, "status": 14,
                   "in/s": 5, "out/s": 5, "drops": 5}
#: Below this terminal width the dashboard is compact: fewer, narrower columns, the
#: commits/s sparkline left out (commits/s stays in the header), taller events.
COMPACT_BELOW = 120
_STATUS_STYLES = {"up": "green", "suspected": "yellow", "paused": "cyan", "down": "bold red"}

HELP_TEXT = """\
Keys (on the node selected in the table; arrows move the selection)

  p   pause the node for 5 s (it stops processing, then resumes with stale beliefs)
  r   resume a paused node now; restart a down node (under bft up)
  b   switch on the next adversary behaviour: {behaviours}
  c   clear the behaviour (honest again)
  x   cut the node's links to every peer
  h   heal every cut link of the node
  k   crash the node (no clean shutdown; it recovers from its WAL on restart)
  ?   this help
  q   quit

Control commands are signed with the admin key and numbered, so a node never
obeys a forged or replayed one. Status: down = no telemetry for {down:g} s;
byz:NAME = running an adversary behaviour; suspected = f+1 peers suspect it.

Press escape, ? or q to close this help."""


class HelpScreen(ModalScreen[None]):
    """The key reference."""

    BINDINGS: ClassVar[list[Binding]] = [Binding("escape,question_mark,q", "dismiss", "Close")]

    def __init__(self, text: str) -> None:
        super().__init__()
        self._text = text

    def compose(self) -> ComposeResult:
        yield Static(Text(self._text), id="help")


class DashboardApp(App[None]):
    """The dashboard of the cluster `config`.

    `verifier` checks telemetry signatures (the config's public keys);
    `admin_signer` signs control commands (None: control is off); `listen` is
    the (host, port) to receive telemetry on (None: receive nothing but what
    `feed` gives); `feed` is an optional async iterable of raw datagrams
    (bytes, checked like network input) or already decoded telemetry
    messages (trusted, for tests and replays). `clock` is the monotonic clock
    the model uses (injectable for deterministic tests). `on_restart(node)` (from `bft
    up`) restarts a node whose process is gone and returns what it did as a line, or None
    when the process runs (then r resumes it as usual); `on_tick()` runs on every redraw
    (`bft up` supervises its nodes there, in the thread that started them).
    `exit_on_sigterm`: SIGTERM quits as q does (`bft down` stops `bft up` so; the terminal
    is restored and `on_quit` runs).
    """

    CSS_PATH = "app.tcss"
    TITLE = "bft dashboard"
    ENABLE_COMMAND_PALETTE = False
    BINDINGS: ClassVar[list[Binding]] = [
        Binding("p", "pause", "Pause"),
        Binding("r", "resume", "Resume"),
        Binding("b", "behaviour", "Byz"),
        Binding("c", "clear", "Clear"),
        Binding("x", "cut", "Cut"),
        Binding("h", "heal", "Heal"),
        Binding("k", "crash", "Crash"),
        Binding("question_mark", "help", "Help", key_display="?"),
        Binding("q", "quit", "Quit"),
    ]

    def __init__(
        self,
        config: Any,
        verifier: Any,
        admin_signer: Any = None,
        listen: tuple[str, int] | None = None,
        feed: AsyncIterable[bytes | TelemetryMessage] | None = None,
        *,
        on_quit: Callable[[], None] | None = None,
        on_restart: Callable[[int], str | None] | None = None,
        on_tick: Callable[[], None] | None = None,
        exit_on_sigterm: bool = False,
        clock: Callable[[], float] = time.monotonic,
        refresh_hz: float = 5.0,
        behaviours: Sequence[str] = DEFAULT_BEHAVIOURS,
        down_after_s: float = 2.0,
    ) -> None:
        super().__init__()
        self.config = config
        self.verifier = verifier
        self.listen = listen
        self.feed = feed
        self.on_quit = on_quit
        self.on_restart = on_restart
        self.on_tick = on_tick
        self.exit_on_sigterm = exit_on_sigterm
        self.clock = clock
        self.refresh_hz = refresh_hz
        self.behaviours = tuple(behaviours)
        self.model = ClusterModel.from_config(config, verifier=verifier, down_after_s=down_after_s)
        self.receiver = TelemetryReceiver(verifier)
        self.sender = (
            ControlSender(
                admin_signer,
                control_cluster_id(config, verifier),
                max_datagram_bytes=config.max_datagram_bytes,
            )
            if admin_signer is not None
            else None
        )
        self.sent_commands: list[ControlCommand] = []
        self.listen_error: str | None = None
        self._transport: asyncio.DatagramTransport | None = None
        self._behaviour_index: dict[int, int] = {}
        self._commits_drawn = 0
        self._events_drawn = 0
        self._drawn: tuple[Any, ...] = ()
        self._cells: dict[tuple[str, str], str] = {}
        self._widgets: dict[str, Any] = {}
        self.compact: bool | None = None  # the layout chosen for the terminal's width
        self._columns: tuple[str, ...] = NODE_COLUMNS

    # ------------------------------------------------------------------ layout

    def compose(self) -> ComposeResult:
        yield Static(id="summary")
        yield DataTable(id="nodes", cursor_type="row", zebra_stripes=False)
        with Horizontal(id="middle"):
            with Vertical(id="commit-pane"):
                yield Static(Text(COMMIT_HEADER), id="commit-header")
                yield Log(id="commits", max_lines=self.model.commit_log_size)
            with Vertical(id="side"):
                yield Static(id="timeline")
                yield Static(id="evidence")
                yield Log(id="events", max_lines=200)
        with Horizontal(id="bottom"):
            yield Sparkline([0.0] * 60, id="rate")
            yield Static(id="rate-label")
        yield Footer()

    async def on_mount(self) -> None:
        # kept, so drawing works whatever screen is on top (the help screen)
        for name in (
            "summary",
            "nodes",
            "commits",
            "timeline",
            "evidence",
            "events",
            "rate",
            "rate-label",
        ):
            self._widgets[name] = self.query_one(f"#{name}")
        table = self._widgets["nodes"]
        self._layout_for(self.size.width)
        self.query_one("#commit-pane").border_title = "Commit log"
        self.query_one("#timeline").border_title = "View timeline"
        self.query_one("#evidence").border_title = "Evidence"
        self.query_one("#events").border_title = "Events"
        self.query_one("#rate").border_title = "Commits per second (last 60 s)"
        table.focus()
        if self.exit_on_sigterm:
            with contextlib.suppress(NotImplementedError, RuntimeError, ValueError):
                asyncio.get_running_loop().add_signal_handler(signal.SIGTERM, self._on_sigterm)
        await self._open_network()
        if self.feed is not None:
            self.run_worker(self._consume_feed(self.feed), exclusive=False)
        self.set_interval(1 / self.refresh_hz, self.redraw)
        self.redraw()

    def _layout_for(self, width: int) -> None:
        """Choose the wide or the compact layout for a terminal `width` columns wide (the
        node table is rebuilt when the choice changes; the selected row stays)."""
        compact = width < COMPACT_BELOW
        if compact == self.compact:
            return
        self.compact = compact
        self.set_class(compact, "compact")
        self._columns = COMPACT_COLUMNS if compact else NODE_COLUMNS
        widths = _COMPACT_WIDTHS if compact else _COLUMN_WIDTHS
        table: DataTable = self._widgets["nodes"]
        row = table.cursor_coordinate.row if table.row_count else 0
        table.clear(columns=True)
        for name in self._columns:
            table.add_column(name, width=widths[name], key=name)
        for node in self.config.nodes:
            table.add_row(*(Text("") for _ in self._columns), key=str(node.id))
        table.move_cursor(row=row)
        self._cells.clear()

    def on_resize(self, event: events.Resize) -> None:
        if self._widgets:
            self._layout_for(event.size.width)
            self.redraw()

    async def _open_network(self) -> None:
        if self.listen is None and self.sender is None:
            return
        family = address_family(self.config.nodes[0].host)
        try:
            self._transport, _ = await open_endpoint(
                self.receiver, self.feed_message, self.listen, family=family
            )
        except OSError as exc:
            where = f"{self.listen[0]}:{self.listen[1]}" if self.listen else "a UDP socket"
            self.listen_error = f"cannot open {where}: {exc.strerror or exc}"
            self.model.note(self.listen_error)

    async def _consume_feed(self, feed: AsyncIterable[bytes | TelemetryMessage]) -> None:
        async for item in feed:
            if isinstance(item, (bytes, bytearray, memoryview)):
                self.feed_datagram(bytes(item), ("feed", 0))
            else:
                self.feed_message(item)

    def on_unmount(self) -> None:
        if self._transport is not None:
            self._transport.close()
            self._transport = None

    @property
    def listen_address(self) -> tuple[Any, ...] | None:
        """The address telemetry is received on (the real port when `listen` had port 0)."""
        if self._transport is None or self.listen is None:
            return None
        return self._transport.get_extra_info("sockname")

    # ------------------------------------------------------------------ input

    def feed_message(self, msg: TelemetryMessage) -> bool:
        """Fold one verified (or trusted) telemetry message into the model."""
        return self.model.apply(msg, self.clock())

    def feed_datagram(self, datagram: bytes, addr: tuple[Any, ...] = ("local", 0)) -> bool:
        """Check one datagram as if it came from the network; True if it was applied."""
        msg = self.receiver.receive_datagram_untrusted(datagram, addr, self.clock())
        return msg is not None and self.feed_message(msg)

    # ------------------------------------------------------------------ drawing

    def redraw(self) -> None:
        """Draw everything from the model (runs on the timer; cheap when nothing changed)."""
        w = self._widgets
        if not w or not w["nodes"].is_mounted:
            return  # not mounted yet, or shutting down
        self._layout_for(self.size.width)  # (a terminal's size may be known only now)
        if self.on_tick is not None:
            self.on_tick()
        now = self.clock()
        model = self.model
        w["summary"].update(
            Text(summary_line(model.summary(now), self.config.name, bool(self.compact)))
        )
        table: DataTable = w["nodes"]
        for row in model.node_rows(now):
            for name, cell in zip(self._columns, node_cells(row, self._columns)):
                key = (str(row.id), name)
                if self._cells.get(key) == cell:
                    continue
                self._cells[key] = cell
                style = ""
                if name == "status":
                    style = _STATUS_STYLES.get(cell, "magenta")
                table.update_cell(str(row.id), name, Text(cell, style=style))
        history = model.commit_rate_history(now, 60)
        w["rate"].data = [float(x) for x in history]
        stats = self.receiver.statistics()
        accepted = sum(stats["accepted"].values())
        w["rate-label"].update(
            Text(
                f"now {model.commits_per_s(now)}/s  peak {max(history)}/s\n"
                f"telemetry {accepted} ok, {stats['dropped']} dropped"
            )
        )
        drawn = (model.version, w["timeline"].content_size, w["evidence"].content_size)
        if drawn == self._drawn:
            return
        self._drawn = drawn
        new = model.commits_logged - self._commits_drawn
        if new > 0:
            rows = model.commit_rows(min(new, model.commit_log_size))
            w["commits"].write_lines([commit_line(r) for r in rows])
            self._commits_drawn = model.commits_logged
        new = model.events_logged - self._events_drawn
        if new > 0:
            events = model.event_rows()[-new:]
            w["events"].write_lines([event_line(e) for e in events])
            self._events_drawn = model.events_logged
        self._fill(
            w["timeline"],
            [[view_line(v, model.n)] for v in model.view_rows()],
            "no view change yet",
        )
        self._fill(w["evidence"], [evidence_lines(e) for e in model.evidence_rows()], "no evidence")

    def _fill(self, widget: Static, items: list[list[str]], empty: str) -> None:
        """Show the newest items (each one or more lines) that fit the widget's height whole;
        when not even one fits, the first line of the newest."""
        height = max(1, widget.content_size.height)
        shown: list[str] = []
        for item in reversed(items):
            if len(shown) + len(item) > height:
                break
            shown[:0] = item
        if not shown:
            shown = [items[-1][0]] if items else [empty]
        widget.update(Text("\n".join(shown), no_wrap=True, overflow="ellipsis"))

    # ------------------------------------------------------------------ control

    def selected_node(self) -> int | None:
        """The id of the node selected in the table."""
        table = self._widgets.get("nodes")
        if table is None or not table.row_count:
            return None
        row_key, _ = table.coordinate_to_cell_key(table.cursor_coordinate)
        return int(row_key.value) if row_key.value is not None else None

    def send_action(self, action: Action, target: int | None = None) -> ControlCommand | None:
        """Sign and send `action` to `target` (default: the selected node)."""
        target = self.selected_node() if target is None else target
        if target is None:
            return None
        if self.sender is None:
            self.notify("no admin key: control commands are disabled", severity="warning")
            return None
        if self._transport is None:
            self.notify(self.listen_error or "no UDP socket", severity="error")
            return None
        cmd, datagrams = self.sender.build(target, action)
        address = self.config.node(target).address
        for datagram in datagrams:
            self._transport.sendto(datagram, address)
        self.sent_commands.append(cmd)
        self.model.note_command(target, cmd.describe())
        self.redraw()
        return cmd

    def action_pause(self) -> None:
        self.send_action(Pause(PAUSE_MS))

    def action_resume(self) -> None:
        target = self.selected_node()
        if target is not None and self.on_restart is not None and self._is_down(target):
            line = self.on_restart(target)
            if line is not None:
                self.model.note(line)
                self.notify(line)
                self.redraw()
                return
        self.send_action(Resume(), target)

    def _is_down(self, node_id: int) -> bool:
        rows = [r for r in self.model.node_rows(self.clock()) if r.id == node_id]
        return bool(rows) and rows[0].status == "down"

    def action_behaviour(self) -> None:
        target = self.selected_node()
        if target is None or not self.behaviours:
            return
        index = self._behaviour_index.get(target, -1) + 1
        if (
            self.send_action(SetBehaviour(self.behaviours[index % len(self.behaviours)]), target)
            is not None
        ):
            self._behaviour_index[target] = index

    def action_clear(self) -> None:
        target = self.selected_node()
        if self.send_action(ClearBehaviour(), target) is not None and target is not None:
            self._behaviour_index.pop(target, None)

    def action_cut(self) -> None:
        target = self.selected_node()
        if target is not None:
            peers = tuple(n.id for n in self.config.nodes if n.id != target)
            self.send_action(Cut(peers), target)

    def action_heal(self) -> None:
        self.send_action(Heal())

    def action_crash(self) -> None:
        self.send_action(Crash())

    def action_help(self) -> None:
        self.push_screen(
            HelpScreen(
                HELP_TEXT.format(
                    behaviours=", ".join(self.behaviours), down=self.model.down_after_s
                )
            )
        )

    def _on_sigterm(self) -> None:
        if self.on_quit is not None:
            self.on_quit()
        self.exit()

    async def action_quit(self) -> None:
        if self.on_quit is not None:
            self.on_quit()
        self.exit()
