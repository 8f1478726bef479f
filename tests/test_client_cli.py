"""`bft client` in scripts (issue 23 item 2): one exit code per outcome, plain text output
(no Python reprs, times as ISO-8601 UTC), `--json`, bytes both ways (`--hex`, argv bytes that
are not UTF-8), a clear `--fence` error, and a clear message when no replica answers.

The cluster is four real nodes over loopback UDP, in one background thread of this process
(tests/thread_cluster.py), so `bft.cli.main` runs here as a user would run it.

Failed before the fix: every outcome exited 0 (not_found, cas_failed, locked, stale_token),
values printed as `value(b'hello')`, lock expiries as raw epoch microseconds,
`put bin $'\\xff'` raised UnicodeEncodeError, and with no cluster the error said only
"no f+1 = 2 matching replies".
"""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

from bft.cli import main
from bft.opscli import (
    EXIT_CAS_FAILED,
    EXIT_LOCKED,
    EXIT_NOT_FOUND,
    EXIT_OK,
    EXIT_REFUSED,
    EXIT_STALE_TOKEN,
    EXIT_UNKNOWN,
    EXIT_USAGE,
    iso_utc_us,
)
from tests.thread_cluster import Cluster, write_config
from transport.udp import free_udp_ports

ISO = re.compile(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z")


@pytest.fixture(scope="module")
def cluster(tmp_path_factory):
    c = Cluster(tmp_path_factory.mktemp("client-cli"))
    yield c
    c.stop()


def run(cluster: Cluster, capsysbinary, *args: str) -> tuple[int, bytes, str]:
    code = main(cluster.argv(*args))
    out, err = capsysbinary.readouterr()
    return code, out, err.decode()


def run_json(cluster: Cluster, capsysbinary, *args: str) -> tuple[int, dict]:
    code, out, err = run(cluster, capsysbinary, "--json", *args)
    assert out.count(b"\n") == 1, out
    fields = json.loads(out)
    assert fields["exit_code"] == code
    return code, fields


def test_put_get_plain_text_and_json(cluster, capsysbinary):
    assert run(cluster, capsysbinary, "put", "greeting", "hello") == (EXIT_OK, b"ok\n", "")
    assert run(cluster, capsysbinary, "get", "greeting") == (EXIT_OK, b"hello\n", "")
    code, fields = run_json(cluster, capsysbinary, "get", "greeting")
    assert code == EXIT_OK
    assert fields == {"op": "get", "outcome": "value", "exit_code": 0, "value": "hello",
                      "value_hex": b"hello".hex()}
    code, fields = run_json(cluster, capsysbinary, "put", "greeting", "hi")
    assert (code, fields) == (EXIT_OK, {"op": "put", "outcome": "ok", "exit_code": 0})


def test_not_found_exit_code(cluster, capsysbinary):
    code, out, err = run(cluster, capsysbinary, "get", "missing")
    assert (code, out) == (EXIT_NOT_FOUND, b"")
    assert err == "bft: not found: no key 'missing'\n"
    assert run(cluster, capsysbinary, "delete", "missing")[0] == EXIT_NOT_FOUND
    code, fields = run_json(cluster, capsysbinary, "get", "missing")
    assert (code, fields["outcome"]) == (EXIT_NOT_FOUND, "not_found")


def test_cas_failed_exit_code(cluster, capsysbinary):
    assert run(cluster, capsysbinary, "put", "c", "one")[0] == EXIT_OK
    code, out, err = run(cluster, capsysbinary, "cas", "c", "two", "three")
    assert (code, out) == (EXIT_CAS_FAILED, b"")
    assert "precondition failed" in err and "one" in err and "b'" not in err
    code, fields = run_json(cluster, capsysbinary, "cas", "c", "-", "x")
    assert code == EXIT_CAS_FAILED
    assert fields["outcome"] == "cas_failed" and fields["current"] == "one"
    assert fields["current_hex"] == b"one".hex()
    assert run(cluster, capsysbinary, "cas", "c", "one", "two") == (EXIT_OK, b"ok\n", "")


def test_lock_locked_stale_token_and_refused(cluster, capsysbinary):
    code, fields = run_json(cluster, capsysbinary, "--id", "0", "lock", "printer", "--ttl", "60")
    assert code == EXIT_OK and fields["outcome"] == "granted"
    token = fields["token"]
    assert ISO.fullmatch(fields["expires"]) and fields["expires"] == iso_utc_us(
        fields["expiry_us"])
    # plain text: the token and an ISO time, no raw microseconds
    code, out, err = run(cluster, capsysbinary, "--id", "0", "lock", "printer", "--ttl", "60")
    assert code == EXIT_OK
    assert re.fullmatch(rb"granted token=%d expires=\S+Z\n" % token, out), out
    # another client: the lock is held
    code, out, err = run(cluster, capsysbinary, "--id", "1", "lock", "printer", "--ttl", "5")
    assert (code, out) == (EXIT_LOCKED, b"")
    assert "locked: client 0 holds 'printer' until" in err and ISO.search(err)
    code, fields = run_json(cluster, capsysbinary, "--id", "1", "lock", "printer", "--ttl", "5")
    assert code == EXIT_LOCKED and fields["holder"] == 0 and ISO.fullmatch(fields["expires"])
    # a fenced write with a stale token; then with the current one
    code, out, err = run(cluster, capsysbinary, "put", "report", "v1", "--fence",
                         f"printer:{token + 1}")
    assert (code, out) == (EXIT_STALE_TOKEN, b"") and err.startswith("bft: stale token")
    assert run(cluster, capsysbinary, "put", "report", "v2", "--fence",
               f"printer:{token}")[0] == EXIT_OK
    # a wrong-token unlock is a stale token too; an unlock by another client is refused
    code, fields = run_json(cluster, capsysbinary, "--id", "0", "unlock", "printer",
                            str(token + 1))
    assert (code, fields["outcome"]) == (EXIT_STALE_TOKEN, "stale_token")
    code, fields = run_json(cluster, capsysbinary, "--id", "1", "unlock", "printer", str(token))
    assert (code, fields["outcome"], fields["reason"]) == (EXIT_REFUSED, "error", "not_holder")
    assert run(cluster, capsysbinary, "--id", "0", "unlock", "printer", str(token))[0] == EXIT_OK
    assert run(cluster, capsysbinary, "unlock", "printer", str(token))[0] == EXIT_NOT_FOUND


def test_bytes_both_ways(cluster, capsysbinary):
    # `put bin $'\xff'`: argv bytes that are not UTF-8 reach Python as surrogate escapes
    raw_arg = b"\xff\x00x".decode("utf-8", "surrogateescape")
    assert run(cluster, capsysbinary, "put", "bin", raw_arg) == (EXIT_OK, b"ok\n", "")
    assert run(cluster, capsysbinary, "get", "bin") == (EXIT_OK, b"\xff\x00x\n", "")
    assert run(cluster, capsysbinary, "--hex", "get", "bin") == (EXIT_OK, b"ff0078\n", "")
    code, fields = run_json(cluster, capsysbinary, "get", "bin")
    assert fields["value"] is None and fields["value_hex"] == "ff0078"
    assert run(cluster, capsysbinary, "--hex", "put", "bin", "c0ffee")[0] == EXIT_OK
    assert run(cluster, capsysbinary, "get", "bin")[1] == b"\xc0\xff\xee\n"
    code, out, err = run(cluster, capsysbinary, "--hex", "put", "bin", "zz")
    assert code == EXIT_USAGE and "hex digits" in err and "Traceback" not in err
    code, out, err = run(cluster, capsysbinary, "put", b"k\xff".decode("utf-8",
                                                                        "surrogateescape"), "v")
    assert code == EXIT_USAGE and "KEY must be UTF-8" in err


def test_fence_token_must_be_a_number(cluster, capsysbinary):
    code, out, err = run(cluster, capsysbinary, "put", "k", "v", "--fence", "printer:TOKEN")
    assert code == EXIT_USAGE and out == b""
    assert "TOKEN the number a lock printed" in err and err.count("\n") == 1
    code, out, err = run(cluster, capsysbinary, "--help")
    text = " ".join(out.decode().split())
    assert "the number its lock printed" in text and "exit codes:" in text


def test_no_cluster_running_says_so_and_write_outcome_is_unknown(tmp_path, capsysbinary):
    config = write_config(tmp_path, free_udp_ports(4))  # nothing listens there
    keys = tmp_path / "keys"
    assert main(["keygen", str(config), "--key-dir", str(keys)]) == 0
    capsysbinary.readouterr()
    base = ["client", str(config), "--key-dir", str(keys), "--state-dir", str(tmp_path),
            "--timeout", "0.5"]
    assert main(base + ["put", "k", "v"]) == EXIT_UNKNOWN
    out, err = capsysbinary.readouterr()
    assert out == b""
    err_text = err.decode()
    assert "no replica answered within 0.5 s: is the cluster running" in err_text
    assert "the outcome of this put is unknown" in err_text
    assert main(base + ["--json", "get", "k"]) == EXIT_UNKNOWN
    out, err = capsysbinary.readouterr()
    fields = json.loads(out)
    assert fields["outcome"] == "unknown" and fields["replies"] == 0
    assert "is the cluster running" in fields["error"] and "unknown" not in fields["error"]


def test_raw_argv_bytes_in_a_real_process(tmp_path):
    """`bft client CONFIG put bin $'\\xff'` as a shell runs it (argv bytes that are not
    UTF-8), with no cluster up: the unknown-outcome exit code and message, no traceback.
    Failed before the fix: UnicodeEncodeError traceback (exit 1)."""
    import subprocess
    import sys

    config = write_config(tmp_path, free_udp_ports(4))
    keys = tmp_path / "keys"
    assert main(["keygen", str(config), "--key-dir", str(keys)]) == 0
    out = subprocess.run([Path(sys.executable).parent / "bft", "client", str(config),
                          "--key-dir", str(keys), "--state-dir", str(tmp_path), "--timeout",
                          "0.3", "put", "bin", b"\xff"], capture_output=True, timeout=60)
    assert out.returncode == EXIT_UNKNOWN, out
    assert b"Traceback" not in out.stderr and b"outcome of this put is unknown" in out.stderr
