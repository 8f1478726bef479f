"""`bft` subcommands from plugins (bft/plugins.py): adversary/ and tui/ add theirs through the
entry-point group `bft.plugins`; a plugin that is missing or broken is reported in one line
and left out, and the rest of `bft` keeps working."""

from __future__ import annotations

import sys
from importlib.metadata import EntryPoint
from pathlib import Path

import pytest

from bft.cli import main
from bft.plugins import GROUP, load_plugins

EVERY_COMMAND = ["up", "node", "client", "bench", "sim", "explore", "tui", "ctl", "keygen",
                 "config"]


def entry(name: str, value: str) -> EntryPoint:
    return EntryPoint(name=name, value=value, group=GROUP)


def test_the_installed_plugins_are_the_adversary_and_the_tui() -> None:
    loaded = load_plugins()
    assert [p.name for p in loaded.plugins] == ["adversary", "tui"] and loaded.problems == []


def test_help_lists_every_subcommand_with_its_help(capsys) -> None:
    assert main(["--help"]) == 0
    out, err = capsys.readouterr()
    listed = {line.split()[0]: line for line in out.splitlines()
              if line.startswith("    ") and line.split()}
    assert all(cmd in listed and len(listed[cmd].split()) > 2 for cmd in EVERY_COMMAND), out
    assert err == ""


@pytest.mark.parametrize("argv", [["sim", "--help"], ["explore", "--help"], ["tui", "--help"],
                                  ["ctl", "--help"], ["bench", "--help"]])
def test_plugin_subcommands_have_their_help(capsys, argv) -> None:
    assert main(argv) == 0
    assert f"usage: bft {argv[0]}" in capsys.readouterr().out


def test_node_and_up_take_the_adversarys_options(capsys) -> None:
    assert main(["node", "--help"]) == 0
    assert "--scenario" in (out := capsys.readouterr().out) and "--adversary" in out
    assert main(["up", "--help"]) == 0
    assert "--scenario" in capsys.readouterr().out


def test_without_plugins_the_core_commands_work_and_theirs_are_unknown(capsys) -> None:
    bare = load_plugins([])
    assert main(["--help"], bare) == 0
    out = capsys.readouterr().out
    assert "keygen" in out and "node" in out and "sim" not in out and "ctl" not in out
    assert main(["node", "--help"], bare) == 0
    assert "--scenario" not in capsys.readouterr().out
    assert main(["sim"], bare) == 2
    assert "invalid choice: 'sim'" in capsys.readouterr().err


def test_a_missing_plugin_is_one_line_not_a_traceback(capsys) -> None:
    loaded = load_plugins([entry("ghost", "no_such_module_for_bft"), entry("tui", "tui.commands")])
    assert [p.name for p in loaded.plugins] == ["tui"]
    assert main(["--help"], loaded) == 0
    out, err = capsys.readouterr()
    assert err == ("bft: warning: plugin 'ghost' (no_such_module_for_bft) could not be loaded: "
                   "ModuleNotFoundError: No module named 'no_such_module_for_bft'; its commands "
                   "are unavailable\n")
    assert "ctl" in out and "Traceback" not in err


def test_broken_plugins_are_left_out_with_a_clear_line(tmp_path: Path, monkeypatch,
                                                       capsys) -> None:
    """One plugin raises on import; one adds a command and then one whose name is taken
    (`node`): it is left out whole, the half-added command with it."""
    (tmp_path / "raises_on_import.py").write_text("raise RuntimeError('half-installed')\n")
    (tmp_path / "clashes.py").write_text(
        "def add_commands(subparsers):\n"
        "    subparsers.add_parser('extra', help='an extra command')\n"
        "    subparsers.add_parser('node', help='a second node')\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    try:
        loaded = load_plugins([entry("a", "raises_on_import"), entry("b", "clashes"),
                               entry("c", "adversary.commands")])
        assert main(["--help"], loaded) == 0
        out, err = capsys.readouterr()
        lines = err.splitlines()
        assert len(lines) == 2 and "Traceback" not in err
        assert lines[0] == ("bft: warning: plugin 'a' (raises_on_import) could not be loaded: "
                            "RuntimeError: half-installed; its commands are unavailable")
        assert lines[1].startswith("bft: warning: plugin 'b' failed to add its commands: ")
        assert "node" in lines[1] and lines[1].endswith("; left out")
        assert "extra" not in out and "sim" in out  # the good plugin is in
        assert [p.name for p in loaded.plugins] == ["c"]
    finally:
        for name in ("raises_on_import", "clashes"):
            sys.modules.pop(name, None)


def test_the_adversary_plugs_into_a_node_only_when_asked() -> None:
    """`bft node` runs the bare production replica unless --adversary or --scenario asks for
    the adversary; `bft up` passes --adversary (and its --scenario) to every node."""
    from adversary import commands
    from adversary.runtime import AdversaryExtension
    from bft.cli import build_parser

    scenario = Path(__file__).resolve().parents[1] / "configs/scenarios/lying-backup.toml"
    parser = build_parser()
    node = ["node", "c.toml", "--id", "1"]
    assert commands.node_extensions(parser.parse_args(node), None, 1) == []
    [ext] = commands.node_extensions(parser.parse_args([*node, "--adversary"]), None, 1)
    assert isinstance(ext, AdversaryExtension) and ext.scenario.rules == () and ext.crash
    [ext] = commands.node_extensions(parser.parse_args(
        [*node, "--scenario", str(scenario), "--adversary-seed", "7", "--adversary-restarted"]),
        None, 1)
    assert ext.scenario.rules and ext.seed == 7 and not ext.crash
    assert commands.up_node_arguments(parser.parse_args(["up", "c.toml"]), False) == [
        "--adversary"]
    up = parser.parse_args(["up", "c.toml", "--scenario", str(scenario)])
    assert commands.up_node_arguments(up, False) == ["--adversary", "--scenario", str(scenario)]
    assert commands.up_node_arguments(up, True)[-1] == "--adversary-restarted"
