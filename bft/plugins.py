"""Plugins: how packages above bft/ (adversary/, tui/, anyone's) add to the `bft` command.

bft/ imports nothing of the packages above it (DESIGN.md "Layout"). Instead, as pytest
(`pytest11`) and flake8 plugins register, a package names a module of its own in the
entry-point group `bft.plugins` of its pyproject.toml:

    [project.entry-points."bft.plugins"]
    adversary = "adversary.commands"
    tui = "tui.commands"

and that module defines any of these hooks (each optional; `HOOKS` lists them):

    add_commands(subparsers)
        add `bft` subcommands (argparse); each sets `handler=cmd(args) -> int`
    add_node_arguments(parser)
        options of `bft node`
    node_extensions(args, config, node_id) -> list of bft.node.NodeExtension
        what to plug into the node `bft node` runs (empty: a plain production node)
    add_up_arguments(parser)
        options of `bft up`
    check_up(args, config)
        raise (CliError, ConfigError) for what cannot run, before any node starts
    up_node_arguments(args, restarted) -> list of str
        more arguments for every `bft node` that `bft up` starts (`restarted`: a node
        restarted by the launcher)
    up_task(args, config) -> None or async fn(pid_of, restart, say)
        a task `bft up` runs beside its nodes (`pid_of(id)`, `await restart(id)`, `say(line)`)
    dashboard(config, keyring, listen) -> None or fn(duration_s) -> None
        the dashboard `bft up` shows in a terminal; may raise CliError (cannot listen)

`bft.cli` loads the plugins once per process, in the order of their names. A plugin
that cannot be loaded (its module is missing or raises on import) or that fails while
adding to the parser is reported in one line on stderr and left out; the rest of `bft`
keeps working. Nothing here imports a plugin except through its entry point.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from importlib.metadata import EntryPoint, entry_points
from typing import Any

__all__ = ["GROUP", "HOOKS", "LoadedPlugins", "Plugin", "load_plugins"]

GROUP = "bft.plugins"

HOOKS = frozenset({"add_commands", "add_node_arguments", "node_extensions", "add_up_arguments",
                   "check_up", "up_node_arguments", "up_task", "dashboard"})


@dataclass(frozen=True)
class Plugin:
    """One loaded plugin: its entry-point name and its module."""

    name: str
    module: Any

    def hook(self, name: str) -> Any:
        """The plugin's hook `name`, or None if it does not define it."""
        if name not in HOOKS:
            raise ValueError(f"no plugin hook named {name!r} (hooks: {', '.join(sorted(HOOKS))})")
        fn = getattr(self.module, name, None)
        return fn if callable(fn) else None


@dataclass
class LoadedPlugins:
    """The plugins that loaded, and one line per plugin that did not."""

    plugins: list[Plugin]
    problems: list[str]

    def hooks(self, name: str) -> Iterator[tuple[Plugin, Any]]:
        """(plugin, hook) for every plugin that defines hook `name`, in plugin order."""
        for plugin in self.plugins:
            fn = plugin.hook(name)
            if fn is not None:
                yield plugin, fn

    def disable(self, plugin: Plugin, problem: str) -> None:
        """Leave `plugin` out from now on (it failed), recording `problem`."""
        if plugin in self.plugins:
            self.plugins.remove(plugin)
        self.problems.append(problem)


def _describe(exc: BaseException) -> str:
    return f"{type(exc).__name__}: {exc}"


def load_plugins(eps: Iterable[EntryPoint] | None = None) -> LoadedPlugins:
    """Import every plugin of the group `bft.plugins` (or of `eps`), by name.

    Never raises for a broken plugin: it is left out and described in `problems`."""
    if eps is None:
        eps = entry_points(group=GROUP)
    plugins: list[Plugin] = []
    problems: list[str] = []
    seen: set[str] = set()
    for ep in sorted(eps, key=lambda e: e.name):
        if ep.name in seen:
            continue  # one distribution installed twice (editable and not): the first wins
        seen.add(ep.name)
        try:
            module = ep.load()
        except Exception as exc:  # noqa: BLE001 - any failure of a plugin's import is its own
            problems.append(f"plugin {ep.name!r} ({ep.value}) could not be loaded: "
                            f"{_describe(exc)}; its commands are unavailable")
            continue
        plugins.append(Plugin(ep.name, module))
    return LoadedPlugins(plugins, problems)
