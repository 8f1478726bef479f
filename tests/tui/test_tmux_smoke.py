"""Smoke test of the real thing: `bft up configs/local-4.toml` in a terminal (tmux) shows a
live cluster; `q` quits and every node process is gone afterwards."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
CONFIG = ROOT / "configs" / "local-4.toml"

pytestmark = [
    pytest.mark.skipif(shutil.which("tmux") is None,
                       reason="tmux is not installed (CI installs it: apt-get install tmux)"),
    pytest.mark.udp,
]


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    try:  # a zombie is as good as gone
        with open(f"/proc/{pid}/stat") as f:
            return f.read().split(") ", 1)[1][0] != "Z"
    except OSError:
        return False


def _screen(session: str) -> str:
    return subprocess.run(["tmux", "capture-pane", "-t", session, "-p"], capture_output=True,
                          text=True, check=False).stdout


def test_bft_up_dashboard_in_tmux(tmp_path):
    session = f"bft-smoke-{os.getpid()}"
    bft = Path(sys.executable).with_name("bft")
    cmd = f"{bft} up {CONFIG} --state-dir {tmp_path} --load 20"
    subprocess.run(["tmux", "new-session", "-d", "-s", session, "-x", "140", "-y", "45", cmd],
                   check=True, cwd=tmp_path)
    pids: list[int] = []
    try:
        deadline = time.monotonic() + 40
        screen = ""
        while time.monotonic() < deadline:
            screen = _screen(session)
            m = re.search(r"view (\d+)\s+executed (\d+)", screen)
            if m and int(m.group(2)) >= 5:
                break
            time.sleep(0.5)
        else:
            pytest.fail(f"no commits on the dashboard within 40 s; screen:\n{screen}")
        assert "primary" in screen and "backup" in screen
        assert "Commit log" in screen
        pids = [int(p.read_text()) for p in sorted(tmp_path.glob("node-*.pid"))]
        assert len(pids) == 4 and all(_alive(p) for p in pids)
        subprocess.run(["tmux", "send-keys", "-t", session, "q"], check=True)
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline and any(_alive(p) for p in pids):
            time.sleep(0.2)
        assert not any(_alive(p) for p in pids), "node processes still running after q"
    finally:
        subprocess.run(["tmux", "kill-session", "-t", session], capture_output=True, check=False)
        for p in pids:
            if _alive(p):
                os.kill(p, 9)
