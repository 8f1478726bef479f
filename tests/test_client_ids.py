"""A client id is used by one process at a time: issue 18, safety bug 1e.

Two processes signing requests as one client id reach the same request number t
(PROTOCOL.md "Requests and replies": t strictly increases per client, and each
replica executes one request per (c, t)); one of them then waits forever or, before
replies named the request they answer, accepted the other's result. `bft client`,
`bft up --load` and the bench's load workers therefore claim their client ids
(`bft.node.claim_client_id`): an exclusive, non-blocking `flock` held while the
process uses the id, and a start number above every number an earlier claim of
the id handed out.

These tests could not be written against the old code: `next_client_timestamp`
took no lock, so a second process simply got a number (possibly the same one: it
read the timestamp file, computed max(now, last + 1) and replaced the file through
a tmp name shared by every process, with no lock).
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from bft.cli import main
from bft.errors import ClientIdInUse
from bft.node import (
    claim_client_id,
    claim_free_client_ids,
    client_lock_file,
    default_client_timestamp_file,
)

ROOT = Path(__file__).resolve().parent.parent
RESERVED = 1_000_000  # request numbers a claim reserves (bft/node.py)


def test_a_client_id_is_held_by_one_claim_at_a_time(tmp_path: Path) -> None:
    """A second claim of a held id fails at once with a clear error naming the id and
    the fix; other ids are free; once released, the id can be claimed again, with a start
    number above every number the first claim may have used."""
    first = claim_client_id(tmp_path, 0)
    assert first.held
    with pytest.raises(ClientIdInUse) as err:
        claim_client_id(tmp_path, 0)
    message = str(err.value)
    assert "client id 0 is in use" in message and "--id" in message
    with claim_client_id(tmp_path, 1) as other:
        assert other.held and other.client_id == 1
    assert not other.held
    first.release()
    first.release()  # idempotent
    with claim_client_id(tmp_path, 0) as again:
        assert again.first_timestamp > first.first_timestamp + RESERVED


def _claim_in_another_process(state_dir: Path, client_id: int, *, release: bool) -> str:
    """Run a claim in a fresh Python process: its outcome as one word ("claimed" or
    "in-use"). Without `release` the process ends holding the claim (a crash)."""
    code = (
        "import sys\n"
        "from pathlib import Path\n"
        "from bft.errors import ClientIdInUse\n"
        "from bft.node import claim_client_id\n"
        "try:\n"
        f"    claim = claim_client_id(Path({str(state_dir)!r}), {client_id})\n"
        "except ClientIdInUse:\n"
        "    print('in-use')\n"
        "    sys.exit(0)\n"
        f"{'claim.release()' if release else ''}\n"
        "print('claimed')\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         timeout=60, cwd=ROOT, check=True)
    return out.stdout.strip()


def test_another_process_cannot_claim_a_held_id_and_a_dead_holder_frees_it(
        tmp_path: Path) -> None:
    """The lock is between processes (flock): while this process holds id 0 another one
    is refused; id 1 is free for it; a process that ends while holding an id (a crash:
    no release) leaves it free."""
    with claim_client_id(tmp_path, 0):
        assert _claim_in_another_process(tmp_path, 0, release=True) == "in-use"
        assert _claim_in_another_process(tmp_path, 1, release=False) == "claimed"
    assert _claim_in_another_process(tmp_path, 1, release=True) == "claimed"
    with claim_client_id(tmp_path, 1):
        pass


def test_the_first_free_ids_are_taken_in_order(tmp_path: Path) -> None:
    """`bft client` without --id and `bft up --load` take the first ids nobody holds."""
    held = claim_client_id(tmp_path, 0)
    claims = claim_free_client_ids(tmp_path, [0, 1, 2, 3], 2)
    assert [c.client_id for c in claims] == [1, 2]
    assert [c.client_id for c in claim_free_client_ids(tmp_path, [0, 1, 2, 3], 5)] == [3]
    with pytest.raises(ClientIdInUse, match=r"every client id \(0, 1, 2, 3\) is in use"):
        claim_free_client_ids(tmp_path, [0, 1, 2, 3])
    held.release()
    assert [c.client_id for c in claim_free_client_ids(tmp_path, [0, 1, 2, 3])] == [0]


def test_the_timestamp_file_is_replaced_whole_and_garbage_in_it_is_survived(
        tmp_path: Path) -> None:
    """The stored number is the claim's start plus the reserved range, written through a
    temporary file of this process (none is left behind); the lock has a file of its own,
    never replaced (a lock on a replaced file would guard nothing). A damaged timestamp
    file is not an error: the time of day still moves the start on."""
    stored = default_client_timestamp_file(tmp_path, 4)
    stored.write_text("not a number")
    with claim_client_id(tmp_path, 4) as claim:
        assert int(stored.read_text()) == claim.first_timestamp + RESERVED
        lock_inode = os.stat(client_lock_file(tmp_path, 4)).st_ino
    assert sorted(p.name for p in tmp_path.iterdir()) == ["client-4.last", "client-4.lock"]
    with claim_client_id(tmp_path, 4) as again:
        assert again.first_timestamp >= claim.first_timestamp + RESERVED + 1
    assert os.stat(client_lock_file(tmp_path, 4)).st_ino == lock_inode


def test_without_a_state_directory_nothing_is_locked() -> None:
    a, b = claim_client_id(None, 0), claim_client_id(None, 0)
    assert not a.held and not b.held and a.first_timestamp > 0


def test_bft_client_on_a_held_id_fails_at_once_with_a_clear_error(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """`bft client --id 0` while another process uses client id 0: exit status 2 and one
    line naming the id and the fix, no traceback, nothing sent."""
    config = tmp_path / "local-4.toml"
    shutil.copy(ROOT / "configs" / "local-4.toml", config)
    keys, state = tmp_path / "keys", tmp_path / "state"
    assert main(["keygen", str(config), "--key-dir", str(keys)]) == 0
    capsys.readouterr()
    with claim_client_id(state, 0):
        status = main(["client", str(config), "--state-dir", str(state), "--key-dir",
                       str(keys), "--id", "0", "get", "x"])
    err = capsys.readouterr().err
    assert status == 2
    assert err.startswith("bft: error: client id 0 is in use") and "--id" in err
    assert "Traceback" not in err and err.count("\n") == 1
