"""The Textual dashboard (asyncio); it talks to nodes only through telemetry and control datagrams.

- `tui.state`: the cluster model built from verified telemetry (plain Python, no Textual);
- `tui.net`: asyncio UDP receive of telemetry and signed control commands;
- `tui.app`: `DashboardApp`, the Textual app;
- `tui.commands`: its `bft` plugin: the `bft tui` and `bft ctl` subcommands, `bft up`'s dashboard.

Importing this package imports nothing heavy: Textual is loaded by `tui.app` only.
"""
