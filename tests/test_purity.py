"""The core is sans-I/O (DESIGN.md "The core is sans-I/O"): the pure modules of bft/ import
nothing of trio, sockets, threads, asyncio, subprocess, `time` or `random`. Only bft/node.py
(the runtime), bft/launcher.py (the local-cluster launcher), bft/cli.py (the command line),
bft/bench.py (`bft bench`), bft/lifecycle.py (pid files, `bft status`/`bft down`) and
bft/__main__.py may. (Which packages import which:
tests/test_import_direction.py.) Checked two ways: the import statements in the source, and
what importing the pure modules pulls in."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

BFT = Path(__file__).resolve().parents[1] / "bft"
IMPURE_ALLOWED = {"node.py", "launcher.py", "cli.py", "bench.py", "__main__.py", "lifecycle.py"}
FORBIDDEN = {"trio", "socket", "asyncio", "threading", "time", "subprocess", "random",
             "selectors", "multiprocessing"}


def forbidden_imports(path: Path) -> list[str]:
    tree = ast.parse(path.read_text(), filename=str(path))
    bad = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            names = [node.module]
        else:
            continue
        bad += [f"{path.name}:{node.lineno}: {n}" for n in names if n.split(".")[0] in FORBIDDEN]
    return bad


def pure_modules() -> list[Path]:
    return sorted(p for p in BFT.glob("*.py") if p.name not in IMPURE_ALLOWED)


def test_pure_modules_import_no_io():
    assert len(pure_modules()) >= 12
    bad = [b for p in pure_modules() for b in forbidden_imports(p)]
    assert bad == []


def test_the_check_catches_an_impure_import(tmp_path):
    planted = tmp_path / "replica.py"
    planted.write_text("import time\nfrom trio import sleep\nimport bft.codec\n")
    assert forbidden_imports(planted) == ["replica.py:1: time", "replica.py:2: trio"]


def test_importing_the_core_loads_no_io_module():
    """(Libraries the core uses may load `random` or `threading` for themselves: cryptography
    does; what matters is that no event loop or process machinery comes along.)"""
    mods = ", ".join(f"bft.{p.stem}" for p in pure_modules() if p.stem != "__init__")
    code = (f"import sys; import {mods}; "
            f"print(sorted(m for m in {['trio', 'asyncio', 'subprocess', 'multiprocessing']!r} "
            "if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         check=True).stdout.strip()
    assert out == "[]"
