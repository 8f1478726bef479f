"""The `bft` command line: --help, `bft keygen`, `bft config check`, error reporting."""

from __future__ import annotations

import os
import shutil
import stat
import subprocess
import sys
from pathlib import Path

import pytest

from bft import messages as m
from bft.cli import build_parser, main
from bft.config import ClusterConfig, load_keyring
from bft.crypto import Ed25519Keys

ROOT = Path(__file__).resolve().parent.parent
LOCAL_4 = ROOT / "configs" / "local-4.toml"
IDENTITIES = [f"replica-{i}" for i in range(4)] + [f"client-{c}" for c in range(4)] + ["admin"]


@pytest.fixture
def config_copy(tmp_path):
    path = tmp_path / "local-4.toml"
    shutil.copy(LOCAL_4, path)
    return path


def key_files(directory: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted(directory.iterdir())}


def test_help_lists_the_subcommands(capsys):
    assert main(["--help"]) == 0
    out = capsys.readouterr().out
    assert "keygen" in out and "config" in out


@pytest.mark.parametrize(
    "argv", [["keygen", "--help"], ["config", "--help"], ["config", "check", "--help"]]
)
def test_every_subcommand_has_help(capsys, argv):
    assert main(argv) == 0
    assert "usage: bft" in capsys.readouterr().out


@pytest.mark.parametrize("argv", [[], ["frobnicate"], ["config"], ["keygen"], ["config", "check"]])
def test_usage_errors_exit_2(capsys, argv):
    assert main(argv) == 2
    assert "usage:" in capsys.readouterr().err


def test_parser_is_extensible():
    parser = build_parser()
    args = parser.parse_args(["keygen", "x.toml", "--force"])
    assert args.force and args.config == Path("x.toml") and callable(args.handler)


def test_keygen_then_config_check(tmp_path, config_copy, capsys):
    key_dir = tmp_path / "keys"
    assert main(["keygen", str(config_copy), "--key-dir", str(key_dir)]) == 0
    out = capsys.readouterr().out
    assert sorted(key_files(key_dir)) == sorted(
        [f"{name}.key" for name in IDENTITIES] + [f"{name}.pub" for name in IDENTITIES]
    )
    for name in IDENTITIES:
        assert stat.S_IMODE((key_dir / f"{name}.key").stat().st_mode) == 0o600
        public_hex = (key_dir / f"{name}.pub").read_text().strip()
        assert f"{name}" in out and public_hex in out  # the public keys are printed

    assert main(["config", "check", str(config_copy), "--key-dir", str(key_dir)]) == 0
    out = capsys.readouterr().out
    assert "n=4 f=1 quorum=3" in out
    for port in range(7100, 7104):
        assert f"127.0.0.1:{port}" in out
    assert "all 9 public keys found" in out

    # The keys work: what one node signs, the cluster's verifier accepts.
    keyring = load_keyring(ClusterConfig.load(config_copy), key_dir)
    signed = keyring.signer("replica", 3).sign(m.Commit(view=0, seq=1, digest=bytes(32), replica=3))
    assert keyring.verifier().verify(signed)


def test_keygen_defaults_to_the_state_dir(tmp_path, config_copy, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    assert main(["keygen", str(config_copy)]) == 0
    assert (tmp_path / "state" / "local-4" / "keys" / "admin.key").exists()
    capsys.readouterr()
    assert main(["config", "check", str(config_copy)]) == 0
    assert "all 9 public keys found" in capsys.readouterr().out


def test_keygen_uses_the_configs_key_dir(tmp_path, capsys):
    config = tmp_path / "cfg" / "c.toml"
    config.parent.mkdir()
    config.write_text(LOCAL_4.read_text().replace("f = 1 ", 'f = 1\nkey_dir = "my-keys" '))
    assert main(["keygen", str(config)]) == 0
    assert (tmp_path / "cfg" / "my-keys" / "replica-0.key").exists()


def test_keygen_refuses_to_overwrite_without_force(tmp_path, config_copy, capsys):
    key_dir = tmp_path / "keys"
    assert main(["keygen", str(config_copy), "--key-dir", str(key_dir)]) == 0
    before = key_files(key_dir)
    capsys.readouterr()

    assert main(["keygen", str(config_copy), "--key-dir", str(key_dir)]) == 2
    captured = capsys.readouterr()
    assert captured.err.startswith("bft: error: ")
    assert "--force" in captured.err and "Traceback" not in captured.err
    assert key_files(key_dir) == before

    # Even one existing file stops it before anything is written.
    for name in list(before):
        if name != "client-2.pub":
            (key_dir / name).unlink()
    assert main(["keygen", str(config_copy), "--key-dir", str(key_dir)]) == 2
    assert sorted(key_files(key_dir)) == ["client-2.pub"]

    assert main(["keygen", str(config_copy), "--key-dir", str(key_dir), "--force"]) == 0
    after = key_files(key_dir)
    assert len(after) == 18 and after["client-2.pub"] != before["client-2.pub"]


def test_keygen_skips_identities_with_inline_keys(tmp_path, capsys):
    inline = Ed25519Keys(4, seed=1).public_keys[("replica", 2)].hex()
    config = tmp_path / "c.toml"
    config.write_text(
        LOCAL_4.read_text().replace(
            'address = "127.0.0.1:7102"', f'address = "127.0.0.1:7102"\npublic_key = "{inline}"'
        )
    )
    assert main(["keygen", str(config), "--key-dir", str(tmp_path / "k")]) == 0
    assert "replica-2" in capsys.readouterr().out
    assert not (tmp_path / "k" / "replica-2.key").exists()
    keyring = load_keyring(ClusterConfig.load(config), tmp_path / "k")
    assert keyring.public_keys[("replica", 2)].hex() == inline


def test_config_check_reports_missing_keys_without_failing(tmp_path, config_copy, capsys):
    assert main(["config", "check", str(config_copy), "--key-dir", str(tmp_path / "none")]) == 0
    assert "bft keygen" in capsys.readouterr().out


def test_config_check_fails_on_one_key_for_two_identities(tmp_path, config_copy, capsys):
    """Issue 18 (weaker spot): a key shared by two identities makes one host count as two
    faults; `bft config check` reports it as an error (exit 2) naming both, unlike keys
    not generated yet.

    Failed before the fix: nodes 0 and 1 and client 0 sharing one key passed (exit 0,
    "all 9 public keys found").
    """
    key_dir = tmp_path / "keys"
    assert main(["keygen", str(config_copy), "--key-dir", str(key_dir)]) == 0
    shared = (key_dir / "replica-0.pub").read_bytes()
    (key_dir / "replica-1.pub").write_bytes(shared)
    (key_dir / "client-0.pub").write_bytes(shared)
    capsys.readouterr()
    assert main(["config", "check", str(config_copy), "--key-dir", str(key_dir)]) == 2
    err = capsys.readouterr().err
    assert err.startswith("bft: error: ") and err.count("\n") == 1
    assert "replica 1" in err and "replica 0" in err and str(key_dir / "replica-1.pub") in err


@pytest.mark.parametrize(
    "text,field",
    [
        (
            (
                "[cluster]\nname = 'x'\nf = 1\n[[nodes]]\nid = 0\naddress = '127.0.0.1:1'\n"
                "[clients]\ncount = 1\n"
            ),
            "cluster.f",
        ),
        ("[cluster\n", None),
    ],
)
def test_config_errors_are_one_line(tmp_path, capsys, text, field):
    path = tmp_path / "bad.toml"
    path.write_text(text)
    for argv in (["config", "check", str(path)], ["keygen", str(path)]):
        assert main(argv) == 2
        err = capsys.readouterr().err
        assert err.startswith("bft: error: ") and err.count("\n") == 1
        assert str(path) in err
        if field:
            assert field in err


def test_missing_config_file(tmp_path, capsys):
    assert main(["config", "check", str(tmp_path / "nope.toml")]) == 2
    assert "not found" in capsys.readouterr().err


def test_unwritable_key_dir_is_an_error_not_a_traceback(tmp_path, config_copy, capsys):
    blocker = tmp_path / "file"
    blocker.write_text("not a directory")
    assert main(["keygen", str(config_copy), "--key-dir", str(blocker / "keys")]) == 2
    assert capsys.readouterr().err.startswith("bft: error: ")


def test_python_dash_m_bft():
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    result = subprocess.run(
        [sys.executable, "-m", "bft", "--help"],
        capture_output=True,
        text=True,
        cwd=ROOT,
        env=env,
        timeout=60,
        check=False,
    )
    assert result.returncode == 0
    assert "keygen" in result.stdout
