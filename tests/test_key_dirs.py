"""One rule for the key directory in every command (issue 23 item 5) and single-identity
keys (`bft keygen CONFIG --only NAME`, issue 23 items 1 and 5).

The rule: --key-dir, else the config's key_dir, else DIR/keys of --state-dir DIR, else
state/<cluster name>/keys; keygen, node, client, ctl, tui, up and config check all use it
(bft/cliutil.py `key_dir`, `load_keys`).
"""

from __future__ import annotations

import re
import shlex
import shutil
from pathlib import Path

import pytest

from bft.cli import main
from bft.opscli import EXIT_UNKNOWN
from transport.udp import free_udp_ports

ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture
def config(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A 4-node config on free loopback ports (nothing listens there); cwd is tmp_path."""
    monkeypatch.chdir(tmp_path)
    nodes = "".join(f'[[nodes]]\nid = {i}\naddress = "127.0.0.1:{p}"\n'
                    for i, p in enumerate(free_udp_ports(4)))
    path = tmp_path / "c.toml"
    path.write_text(f'[cluster]\nname = "kd"\nf = 1\n{nodes}[clients]\ncount = 2\n'
                    '[telemetry]\nmonitor = "127.0.0.1:1"\n')
    return path


def files(directory: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted(directory.iterdir())}


def test_keygen_then_commands_with_one_state_dir(config, tmp_path, capsys):
    """`bft keygen CONFIG --state-dir D` writes D/keys, where `bft client/config check
    --state-dir D` look. Failed before the fix: keygen had no --state-dir (exit 2), and
    without it wrote state/<cluster>/keys, which D-using commands never read."""
    state = tmp_path / "D"
    assert main(["keygen", str(config), "--state-dir", str(state)]) == 0
    assert (state / "keys" / "replica-0.key").exists()
    assert not (tmp_path / "state").exists()
    capsys.readouterr()
    assert main(["config", "check", str(config), "--state-dir", str(state)]) == 0
    assert f"all 7 public keys found ({state / 'keys'})" in capsys.readouterr().out
    # the keys are found: the client gets as far as the network (nobody answers)
    assert main(["client", str(config), "--state-dir", str(state), "--timeout", "0.2",
                 "get", "x"]) == EXIT_UNKNOWN


def test_a_missing_key_error_names_the_directories(config, tmp_path, capsys):
    """Keys made in the default directory, a command run with --state-dir D: the error
    names D/keys, why it was chosen, and where the key file actually is. Failed before the
    fix: it named only D/keys/replica-0.pub and suggested `bft keygen CONFIG`, which writes
    elsewhere."""
    assert main(["keygen", str(config)]) == 0
    capsys.readouterr()
    state = tmp_path / "D"
    assert main(["client", str(config), "--state-dir", str(state), "get", "x"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "Traceback" not in err
    assert f"looked in {state / 'keys'} (DIR/keys of --state-dir DIR)" in err
    assert f"replica-0.pub is in {Path('state') / 'kd' / 'keys'}: pass --key-dir" in err


def test_ctl_hint_for_a_missing_admin_key_replaces_only_that_key(config, tmp_path, capsys):
    """`bft ctl` without admin.key: the hint's command makes an admin key pair and touches
    no other key. Failed before the fix: it said `bft keygen CONFIG`, which refuses
    (keys exist) or with --force replaces every key."""
    keys = tmp_path / "keys"
    assert main(["keygen", str(config), "--key-dir", str(keys)]) == 0
    (keys / "admin.key").unlink()
    before = files(keys)
    capsys.readouterr()
    assert main(["ctl", str(config), "--key-dir", str(keys), "--node", "0", "pause", "1"]) == 2
    err = capsys.readouterr().err
    assert "private key of admin not found" in err and "Traceback" not in err
    hint = re.search(r"`(bft keygen [^`]*)`", err)
    assert hint is not None, err
    argv = shlex.split(hint.group(1).replace("CONFIG", str(config)))[1:]
    assert "--only" in argv and "admin" in argv
    assert main(argv) == 0
    after = files(keys)
    changed = sorted(name for name in after if after[name] != before.get(name))
    assert changed == ["admin.key", "admin.pub"]


def test_keygen_only_one_identity_prints_its_config_line(config, tmp_path, capsys):
    """`bft keygen CONFIG --only replica-2`: one key pair, its public key line for the
    config printed (issue 23 item 1). Failed before the fix: no --only (exit 2)."""
    keys = tmp_path / "host2"
    assert main(["keygen", str(config), "--key-dir", str(keys), "--only", "replica-2"]) == 0
    out = capsys.readouterr().out
    assert sorted(files(keys)) == ["replica-2.key", "replica-2.pub"]
    public = (keys / "replica-2.pub").read_text().strip()
    assert f'under [[nodes]] id = 2: public_key = "{public}"' in out
    assert "wrote 1 key pair to" in out
    # the printed line works in the config: replica-2's key is then taken from it
    text = config.read_text().replace('id = 2\n', f'id = 2\npublic_key = "{public}"\n')
    config.write_text(text)
    assert main(["keygen", str(config), "--key-dir", str(tmp_path / "k2"),
                 "--only", "replica-2"]) == 0
    assert "public key given in the config: skipped" in capsys.readouterr().out
    # again without --force: refused; a name not in the config: a clear error
    assert main(["keygen", str(config), "--key-dir", str(keys), "--only", "client-1"]) == 0
    assert main(["keygen", str(config), "--key-dir", str(keys), "--only", "client-1"]) == 2
    assert "--force" in capsys.readouterr().err
    assert main(["keygen", str(config), "--key-dir", str(keys), "--only", "replica-9"]) == 2
    err = capsys.readouterr().err
    assert "no identity 'replica-9'" in err and "admin" in err


def test_every_key_command_documents_the_rule(capsys):
    """keygen, node, client, ctl, tui and config check all take --state-dir and --key-dir."""
    for argv in (["keygen"], ["node"], ["client"], ["ctl"], ["tui"], ["config", "check"]):
        assert main([*argv, "--help"]) == 0
        out = " ".join(capsys.readouterr().out.split())
        assert "--state-dir DIR" in out and "--key-dir DIR" in out, argv
