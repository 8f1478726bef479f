"""`bft config new` and `bft wal inspect` (issue 23 item 8).

Failed before the fix: neither command existed (`bft config new` and `bft wal` were usage
errors, exit 2)."""

from __future__ import annotations

import json
import tomllib
from pathlib import Path

import pytest

from bft.cli import main
from bft.config import ClusterConfig
from bft.crypto import SimKeys
from bft.messages import Checkpoint, Commit, Prepare
from bft.storage import WalStorage
from bft.walrecords import REC_SENT, encode_record, encode_snapshot


def test_config_new_writes_a_valid_config(tmp_path, capsys):
    out = tmp_path / "prod.toml"
    assert main(["config", "new", "--nodes", "7", "--base-port", "9000", "--out", str(out)]) == 0
    assert f"wrote {out}" in capsys.readouterr().out
    config = ClusterConfig.load(out)
    assert (config.name, config.n, config.f, len(config.clients)) == ("prod", 7, 2, 4)
    assert [n.address for n in config.nodes] == [("127.0.0.1", 9000 + i) for i in range(7)]
    assert config.monitor == ("127.0.0.1", 9099)
    # the keys of the new config work with it
    assert main(["keygen", str(out), "--key-dir", str(tmp_path / "k")]) == 0
    capsys.readouterr()
    assert main(["config", "check", str(out), "--key-dir", str(tmp_path / "k")]) == 0
    assert "all 12 public keys found" in capsys.readouterr().out


def test_config_new_refuses_to_overwrite_without_force(tmp_path, capsys):
    out = tmp_path / "c.toml"
    out.write_text("mine")
    assert main(["config", "new", "--nodes", "4", "--out", str(out)]) == 2
    err = capsys.readouterr().err
    assert "exists" in err and "--force" in err and out.read_text() == "mine"
    assert main(["config", "new", "--nodes", "4", "--out", str(out), "--force"]) == 0
    assert ClusterConfig.load(out).n == 4


def test_config_new_hosts_f_and_errors(tmp_path, capsys):
    assert main(["config", "new", "--nodes", "4", "--f", "0", "--hosts",
                 "10.0.0.1,10.0.0.2,::1,host-d.example", "--name", "multi"]) == 0
    text = capsys.readouterr().out
    config = ClusterConfig.from_dict(tomllib.loads(text))
    assert config.f == 0 and config.name == "multi"
    assert [n.address for n in config.nodes] == [
        ("10.0.0.1", 7100), ("10.0.0.2", 7101), ("::1", 7102), ("host-d.example", 7103)]
    assert config.monitor == ("10.0.0.1", 7199)
    out = tmp_path / "bad.toml"
    for argv, words in ((["--nodes", "4", "--f", "2"], "need n >= 3f+1"),
                        (["--nodes", "4", "--hosts", "a,b"], "one host per node"),
                        (["--nodes", "4", "--base-port", "70000"], "--base-port")):
        assert main(["config", "new", *argv, "--out", str(out)]) == 2
        err = capsys.readouterr().err
        assert err.startswith("bft: error: ") and words in err and "Traceback" not in err
        assert not out.exists()


def make_wal(directory: Path) -> None:
    """A WAL as a replica writes it: a snapshot at seq 4, then votes up to view 2, seq 7."""
    keys = SimKeys(1, n_replicas=4, n_clients=1)
    me = keys.signer("replica", 1)
    proof = tuple(keys.signer("replica", r).sign(Checkpoint(seq=4, state_digest=b"s" * 32,
                                                            replica=r)) for r in (0, 1, 2))
    with WalStorage(directory, fsync="never") as wal:
        wal.write_snapshot(4, encode_snapshot(4, b"s" * 32, b"state", proof))
        for view, seq in ((1, 5), (1, 6), (2, 7)):
            for kind in (Prepare, Commit):
                signed = me.sign(kind(view=view, seq=seq, digest=bytes([seq]) * 32, replica=1))
                wal.append(encode_record(REC_SENT, signed))
        wal.sync()


def test_wal_inspect_reports_records_snapshot_view_and_votes(tmp_path, capsys):
    make_wal(tmp_path / "wal-1")
    assert main(["wal", "inspect", str(tmp_path)]) == 0
    out = capsys.readouterr().out
    assert out.startswith(f"{tmp_path / 'wal-1'}: ok\n")
    assert "snapshot     seq 4" in out and "proof from replicas 0, 1, 2" in out
    assert "6 intact records" in out and "Prepare            3" in out
    assert "last view    2" in out and "last Commit     view 2 seq 7" in out
    assert main(["wal", "inspect", str(tmp_path), "--json"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["ok"] and report["problem"] is None and report["wal"] == "wal-1"
    assert report["by_type"] == {"Commit": 3, "Prepare": 3}
    assert report["snapshot"]["seq"] == 4 and report["last_view"] == 2
    assert report["last_votes"]["Prepare"] == {"view": 2, "seq": 7, "digest": "07" * 8}


def test_wal_inspect_names_the_first_bad_record_and_changes_nothing(tmp_path, capsys):
    """The planted bug for the checker: one flipped byte in record 3's payload."""
    wal = tmp_path / "wal-1"
    make_wal(wal)
    (segment,) = [p for p in wal.iterdir() if p.name.endswith(".log")]
    data = bytearray(segment.read_bytes())
    header = 20  # segment header: magic, version, reserved, index, crc
    offset = header
    for _ in range(3):  # skip records 0..2: length (u32 LE), crc, payload
        offset += 8 + int.from_bytes(data[offset:offset + 4], "little")
    data[offset + 8 + 10] ^= 0xFF
    segment.write_bytes(bytes(data))
    before = {p.name: p.read_bytes() for p in wal.iterdir()}
    assert main(["wal", "inspect", str(wal)]) == 1
    out, err = capsys.readouterr()
    assert "DAMAGED" in out and "bad record checksum at record 3" in out
    assert f"byte {offset}" in out and "Traceback" not in out + err
    assert main(["wal", "inspect", str(tmp_path), "--json"]) == 1
    report = json.loads(capsys.readouterr().out)
    assert not report["ok"] and "record 3" in report["problem"] and report["records"] == 3
    assert {p.name: p.read_bytes() for p in wal.iterdir()} == before  # read only


def test_wal_inspect_corrupt_snapshot_and_missing_directory(tmp_path, capsys):
    wal = tmp_path / "wal-0"
    make_wal(wal)
    snap = wal / "snapshot"
    snap.write_bytes(snap.read_bytes()[:-1] + b"\x00")
    assert main(["wal", "inspect", str(tmp_path), "--id", "0"]) == 1
    assert "snapshot: bad snapshot checksum" in capsys.readouterr().out
    assert main(["wal", "inspect", str(tmp_path / "nope")]) == 2
    err = capsys.readouterr().err
    assert "no such directory" in err and "Traceback" not in err
    assert main(["wal", "inspect", str(tmp_path), "--id", "5"]) == 2
    assert "no wal-5/" in capsys.readouterr().err
