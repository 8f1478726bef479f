"""The type checker sees what a `Signed` holds (issue 20, item 4): `Signed[Prepare]` is a
signed PREPARE, so reading a field a PREPARE lacks is a type error. `.ci/run` runs mypy on
the whole of bft/ (pyproject.toml's [tool.mypy]); this shows the check has teeth on a
planted misuse, in a few seconds. The pure core (every module tests/test_purity.py calls
pure) is checked with the flags of `mypy --strict`: a new pure module left out, or a flag
dropped, fails here."""

from __future__ import annotations

import subprocess
import sys
import tomllib
from pathlib import Path
from typing import Any

import pytest

from tests.test_purity import pure_modules

ROOT = Path(__file__).resolve().parents[1]

PROGRAM = """\
from bft.messages import Checkpoint, Prepare, Signed
from bft.quorum import prepared_certificate
def planted(s: Signed[Prepare]) -> bytes:
    return s.statement.state_digest
def fine(s: Signed[Prepare]) -> bytes:
    return s.statement.digest
def wrong_votes(cps: dict[int, Signed[Checkpoint]]) -> object:
    return prepared_certificate(cps, b"", 0, 3)
"""


def test_mypy_catches_a_planted_misuse_of_a_signed_statement() -> None:
    pytest.importorskip("mypy")
    out = subprocess.run(
        [sys.executable, "-m", "mypy", "--config-file", "/dev/null", "--no-incremental",
         "--strict", "--follow-imports=silent", "-c", PROGRAM],
        cwd=ROOT, capture_output=True, text=True, check=False).stdout
    errors = [line for line in out.splitlines() if ": error:" in line]
    assert any(line.startswith("<string>:4:") and '"Prepare" has no attribute "state_digest"'
               in line for line in errors), out
    assert any(line.startswith("<string>:8:") and "prepared_certificate" in line
               for line in errors), out
    assert not any(line.startswith("<string>:6:") for line in errors), out


#: What `mypy --strict` turns on beyond the defaults, per module (mypy 1.x; the global
#: warn_unused_configs and warn_redundant_casts are set in [tool.mypy] itself).
STRICT_FLAGS = (
    "disallow_any_generics", "disallow_subclassing_any", "disallow_untyped_calls",
    "disallow_untyped_defs", "disallow_incomplete_defs", "check_untyped_defs",
    "disallow_untyped_decorators", "warn_unused_ignores", "warn_return_any",
    "no_implicit_reexport", "strict_equality", "extra_checks",
)


def strict_modules(pyproject: dict[str, Any]) -> set[str]:
    """The modules of the [[tool.mypy.overrides]] entries that set every strict flag."""
    return {module for entry in pyproject["tool"]["mypy"].get("overrides", [])
            if all(entry.get(flag) is True for flag in STRICT_FLAGS)
            for module in entry["module"]}


def left_out(pure: list[Path], strict: set[str]) -> list[str]:
    """The pure modules (as mypy names them) not checked strictly."""
    names = ["bft" if p.stem == "__init__" else f"bft.{p.stem}" for p in pure]
    return [name for name in names if name not in strict]


def pyproject() -> dict[str, Any]:
    return tomllib.loads((ROOT / "pyproject.toml").read_text())


def test_every_pure_module_is_checked_strictly() -> None:
    assert len(pure_modules()) >= 25
    assert left_out(pure_modules(), strict_modules(pyproject())) == []
    assert pyproject()["tool"]["mypy"]["files"] == ["bft"]


def test_the_strictness_check_catches_a_module_left_out_or_a_flag_dropped() -> None:
    config = pyproject()
    entry = next(e for e in config["tool"]["mypy"]["overrides"] if "bft.codec" in e["module"])
    entry["module"] = [name for name in entry["module"] if name != "bft.codec"]
    assert left_out(pure_modules(), strict_modules(config)) == ["bft.codec"]
    del entry["warn_return_any"]
    assert "bft.replica" in left_out(pure_modules(), strict_modules(config))
