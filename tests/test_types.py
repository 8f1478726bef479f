"""The type checker sees what a `Signed` holds (issue 20, item 4): `Signed[Prepare]` is a
signed PREPARE, so reading a field a PREPARE lacks is a type error. `.ci/run` runs mypy on
the whole of bft/ (pyproject.toml's [tool.mypy]); this shows the check has teeth on a
planted misuse, in a few seconds."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

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
