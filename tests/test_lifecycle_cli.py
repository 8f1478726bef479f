"""`bft status`, `bft down` and `bft up --max-restarts` on bad input and on nothing running
(issue 23 item 3): clear errors (exit 2), never a traceback; nothing is signalled."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from bft.cli import main
from bft.config import ClusterConfig
from bft.launcher import config_to_toml, ensure_keys, throwaway_config


def write_config(tmp_path: Path, monitor: bool) -> Path:
    extra = {"monitor": ("127.0.0.1", 1)} if monitor else {}
    path = tmp_path / "cluster.toml"
    path.write_text(config_to_toml(throwaway_config(4, name="cli-life", **extra)))
    ensure_keys(ClusterConfig.load(path), tmp_path / "state" / "keys")
    return path


@pytest.mark.parametrize("argv, message", [
    (["status", "CONFIG", "--wait", "0"], "--wait must be in (0, 60] seconds"),
    (["down", "CONFIG", "--timeout", "-1"], "--timeout must be in (0, 600] seconds"),
    (["up", "CONFIG", "--no-tui", "--max-restarts", "-1"], "--max-restarts must be in 0..1000"),
    (["status", "missing.toml"], "config file not found: missing.toml"),
])
def test_bad_arguments_are_clear_errors(tmp_path, capsys, argv, message) -> None:
    config = write_config(tmp_path, monitor=False)
    argv = [str(config) if a == "CONFIG" else a for a in argv]
    assert main([*argv, "--state-dir", str(tmp_path / "state")]) == 2
    err = capsys.readouterr().err
    assert err.startswith("bft: error: ") and message in err, err
    assert not (tmp_path / "state" / "up.pid").exists()


def test_status_and_down_with_nothing_running(tmp_path, capsys) -> None:
    config = write_config(tmp_path, monitor=False)
    state = str(tmp_path / "state")
    assert main(["status", str(config), "--state-dir", state, "--json"]) == 1
    report = json.loads(capsys.readouterr().out)
    assert [n["state"] for n in report["nodes"]] == ["down"] * 4
    assert "no monitor address" in report["note"]
    assert main(["down", str(config), "--state-dir", state]) == 0
    assert "no node of 'cli-life' runs from" in capsys.readouterr().out
