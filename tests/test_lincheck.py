"""`bft check`: the linearizability checker of KV/lock histories (issue 22 item 2).

Teeth: crafted non-linearizable histories (each names the rule it breaks) fail with exit 1
and the right key; linearizable ones, with info ops and concurrency, pass; mutated
histories from real simulator runs fail; malformed files exit 2 with the line named.
Failed before the fix: `bft check` and bft/lincheck.py did not exist (every test here
errored with an unknown command or an ImportError).
"""

from __future__ import annotations

import json
import random
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from bft.cli import main
from bft.lincheck import check, format_verdict, parse_history

SEED = 2022


def op(process: int, f: str, key: str, value: Any, t0: int, t1: int | None,
       kind: str = "ok", out: Any = "same", **extra: Any) -> list[tuple[int, dict[str, Any]]]:
    """An invoke at t0 and its completion at t1 (None: never completed)."""
    inv: dict[str, Any] = {"type": "invoke", "process": process, "f": f, "key": key,
                           "value": value}
    if "fence" in extra:
        inv["fence"] = extra["fence"]
    events = [(t0, inv)]
    if t1 is not None:
        done = {**inv, "type": kind, "value": value if out == "same" else out, **extra}
        events.append((t1, done))
    return events


def history(*ops: list[tuple[int, dict[str, Any]]]) -> list[str]:
    events = sorted((e for o in ops for e in o), key=lambda te: te[0])
    return [json.dumps({"index": k, **entry, "time": t}) for k, (t, entry) in enumerate(events)]


def run_check(tmp_path: Path, lines: list[str], capsys: Any, *extra: str) -> tuple[int, str]:
    path = tmp_path / "h.jsonl"
    path.write_text("".join(line + "\n" for line in lines))
    capsys.readouterr()  # (what the test printed before)
    status = main(["check", str(path), *extra])
    captured = capsys.readouterr()
    return status, captured.out + captured.err


GRANT_A = dict(result="granted", expiry_us=1_100_000, agreed_us=1_000_000)  # ttl 100 ms
GRANT_B = dict(result="granted", expiry_us=1_300_000, agreed_us=1_200_000)

# Each: (name, the rule broken, history, the key the report must name)
BAD = [
    ("stale read after a completed put", "linearizability: a read sees the latest write",
     history(op(1, "put", "k", "1", 0, 10), op(1, "put", "k", "2", 20, 30),
             op(2, "get", "k", None, 40, 50, out="1")), "key k"),
    ("cas against a value never written", "cas succeeds only against the current value",
     history(op(1, "put", "k", "a", 0, 10), op(2, "cas", "k", ["zzz", "b"], 20, 30)), "key k"),
    ("two reads in an impossible order", "a later read never sees an older value",
     history(op(1, "put", "k", "1", 0, 10), op(1, "put", "k", "2", 20, 100),
             op(2, "get", "k", None, 30, 40, out="2"), op(3, "get", "k", None, 50, 60, out="1")),
     "key k"),
    ("a lock token going backwards", "bft/app.py: tokens of new grants strictly increase",
     history(op(1, "lock", "L", 100, 0, 10, out=131072, **GRANT_A),
             op(1, "unlock", "L", 131072, 20, 30),
             op(2, "lock", "L", 100, 40, 50, out=65536, **GRANT_B)), "lock L"),
    ("an unlock by a non-holder", "bft/app.py: unlock needs the holder and its token",
     history(op(1, "lock", "L", 100, 0, 10, out=65536, **GRANT_A),
             op(2, "unlock", "L", 65536, 20, 30)), "lock L"),
    ("a fenced write accepted with an old token", "DDIA figure 8-5: the store checks the token",
     history(op(1, "lock", "L", 100, 0, 10, out=65536, **GRANT_A),
             op(2, "lock", "L", 100, 20, 30, out=131072, **GRANT_B),
             op(1, "put", "k", "late", 40, 50, fence=["L", 65536])), "key k"),
    ("a fenced write refused although its token is current", "the store checks the token",
     history(op(1, "lock", "L", 100, 0, 10, out=65536, **GRANT_A),
             op(1, "put", "k", "x", 20, 30, kind="fail", error="stale_token",
                fence=["L", 65536])), "key k"),
    ("a lock granted to another during a live lease",
     "PROTOCOL.md Leases and agreed time: another client only once the lease is over",
     history(op(1, "lock", "L", 100, 0, 10, out=65536, **GRANT_A),
             op(2, "lock", "L", 100, 20, 30, out=131072, result="granted",
                expiry_us=1_150_000, agreed_us=1_050_000)), "lock L"),
    ("a read of a value before the (unknown-outcome) write was invoked",
     "info ops take effect only after their invoke",
     history(op(2, "get", "k", None, 0, 10, out="a"), op(1, "put", "k", "a", 20, 30,
                                                        kind="info", error="timeout")),
     "key k"),
    ("a put answered with garbage", "a result the store gives",
     history(op(1, "put", "k", "a", 0, 10, out="hex:6c6965")), "key k"),
]


@pytest.mark.parametrize("name, rule, lines, key", BAD, ids=[b[0] for b in BAD])
def test_crafted_violations_fail_naming_the_key(tmp_path, capsys, name, rule, lines, key):
    status, out = run_check(tmp_path, lines, capsys)
    print(out)
    assert status == 1, f"{name} ({rule}) was not caught"
    assert f"NOT linearizable: {key} " in out
    assert "why:" in out and "shortest failing window" in out
    status, out = run_check(tmp_path, lines, capsys, "--json")
    print(out)
    verdict = json.loads(out)
    assert (status, verdict["verdict"], verdict["key"]) == (1, "not_linearizable", key)
    assert verdict["window"] and verdict["why"]


GOOD = [
    ("concurrent puts and reads that see either",
     history(op(1, "put", "k", "1", 0, 100), op(2, "put", "k", "2", 0, 100),
             op(3, "get", "k", None, 10, 20, out="2"), op(3, "get", "k", None, 30, 40, out="1"))),
    ("an info put that takes effect later",
     history(op(1, "put", "k", "a", 0, 5, kind="info", error="timeout"),
             op(2, "get", "k", None, 10, 20, out=None), op(2, "get", "k", None, 30, 40, out="a"))),
    ("an info put that never took effect",
     history(op(1, "put", "k", "a", 0, 5, kind="info", error="timeout"),
             op(2, "get", "k", None, 10, 20, out=None))),
    ("an invoke with no completion at the end of the file",
     history(op(1, "put", "k", "a", 0, None), op(2, "get", "k", None, 10, 20, out="a"))),
    ("the fencing story: a stale write refused, the newer holder's write read",
     history(op(1, "lock", "L", 100, 0, 10, out=65536, **GRANT_A),
             op(2, "lock", "L", 100, 20, 30, out=131072, **GRANT_B),
             op(2, "put", "k", "new", 40, 50, fence=["L", 131072]),
             op(1, "put", "k", "old", 60, 70, kind="fail", error="stale_token",
                fence=["L", 65536]),
             op(1, "get", "k", None, 80, 90, out="new"))),
    ("lock, renew (same token), locked for another, unlock, cas and deletes",
     history(op(1, "lock", "L", 100, 0, 10, out=65536, **GRANT_A),
             op(1, "lock", "L", 100, 12, 14, out=65536, result="granted",
                expiry_us=1_150_000, agreed_us=1_050_000),
             op(2, "lock", "L", 100, 20, 30, kind="fail", error="locked", result="locked",
                holder=1, expiry_us=1_150_000),
             op(2, "unlock", "L", 65536, 32, 34, kind="fail", error="not_holder"),
             op(1, "unlock", "L", 65536, 40, 50),
             op(2, "unlock", "L", 65536, 52, 54, kind="fail", error="not_found"),
             op(3, "cas", "k", [None, "a"], 60, 70),
             op(3, "cas", "k", ["b", "c"], 72, 74, kind="fail", error="cas_failed",
                current="a"),
             op(3, "delete", "k", None, 80, 90, result="ok"),
             op(3, "delete", "k", None, 92, 94, result="not_found"))),
    ("an info lock whose grant someone else observed through locked",
     history(op(1, "lock", "L", 100, 0, 10, kind="info", error="timeout"),
             op(2, "lock", "L", 100, 20, 30, kind="fail", error="locked", holder=1))),
]


@pytest.mark.parametrize("name, lines", GOOD, ids=[g[0] for g in GOOD])
def test_linearizable_histories_pass(tmp_path, capsys, name, lines):
    status, out = run_check(tmp_path, lines, capsys)
    print(out)
    assert status == 0 and "linearizable" in out and "NOT" not in out


MALFORMED = [
    ("truncated JSON", ['{"index": 0, "type": "invoke", "process": 1, "f": "put", "ke'], 1,
     "not valid JSON"),
    ("missing field", [json.dumps({"index": 0, "type": "invoke", "process": 1, "f": "get",
                                   "value": None, "time": 0})], 1, "missing field 'key'"),
    ("wrong type", [json.dumps({"index": 0, "type": "invoke", "process": "one", "f": "get",
                                "key": "k", "value": None, "time": 0})], 1, "process"),
    ("a completion with no invoke", history(op(1, "get", "k", None, 0, 1))[1:], 1,
     "without an invoke"),
    ("not an object", ["[1, 2]"], 1, "not a JSON object"),
    ("a bad fence", history(op(1, "put", "k", "v", 0, 1, fence=["L"])), 1, "fence"),
    ("time going backwards", [json.dumps({"type": "invoke", "process": 1, "f": "get",
                                          "key": "k", "value": None, "time": 5}),
                              json.dumps({"type": "ok", "process": 1, "f": "get", "key": "k",
                                          "value": None, "time": 4})], 2, "before its invoke"),
]


@pytest.mark.parametrize("name, lines, line, text", MALFORMED, ids=[m[0] for m in MALFORMED])
def test_malformed_histories_exit_2_naming_the_line(tmp_path, capsys, name, lines, line, text):
    status, out = run_check(tmp_path, lines, capsys)
    print(out)
    assert status == 2
    assert f"line {line}:" in out and text in out and "Traceback" not in out


def test_binary_garbage_and_a_missing_file_exit_2(tmp_path, capsys):
    path = tmp_path / "h.jsonl"
    path.write_bytes(b"\xff\xfe\x00garbage")
    assert main(["check", str(path)]) == 2
    assert "malformed history: not UTF-8" in capsys.readouterr().err
    assert main(["check", str(tmp_path / "absent.jsonl")]) == 2


def test_out_of_time_exits_3(tmp_path, capsys):
    """Many concurrent info writes of distinct values: a search too large for a deadline
    that is already past (the deadline is checked every 512 steps)."""
    lines = history(*[op(p, "put", "k", f"v{p}", 0, 5, kind="info", error="timeout")
                      for p in range(14)],
                    *[op(100 + p, "get", "k", None, 10 + 2 * p, 11 + 2 * p, out=f"v{p}")
                      for p in range(14)],
                    op(200, "get", "k", None, 60, 61, out="never"))
    verdict = check(parse_history(lines), deadline=lambda: True)
    assert verdict.ok is None and "out of time" in format_verdict(verdict)
    # the search needs over a million steps (about 20 s here): a millisecond is not enough
    status, out = run_check(tmp_path, lines, capsys, "--timeout", "0.001")
    assert status == 3 and "OUT OF TIME" in out


# --------------------------------------------------------------------------
# Real simulator runs, and mutations of them
# --------------------------------------------------------------------------


def sim_history(seed: int, **overrides: Any) -> list[dict[str, Any]]:
    from adversary.sim import SimConfig, Simulation

    cfg = dict(seed=seed, clients=4, requests=25, lock_fraction=0.3, key_count=2,
               drop=0.05, reorder=0.1, history=True)
    cfg.update(overrides)
    sim = Simulation(SimConfig(**cfg))  # type: ignore[arg-type]
    assert sim.run(60).ok
    assert sim.history is not None
    return [dict(e) for e in sim.history.entries]


def lines_of(entries: list[dict[str, Any]]) -> list[str]:
    return [json.dumps(e) for e in entries]


@pytest.mark.parametrize("seed", [SEED + k for k in range(4)])
def test_real_runs_pass_and_flipped_reads_fail(seed):
    print(f"seed={seed}")
    rng = random.Random(seed)
    entries = sim_history(seed)
    assert check(parse_history(lines_of(entries))).ok
    reads = [e for e in entries if e["type"] == "ok" and e["f"] == "get"]
    target = rng.choice(reads)
    target["value"] = "flipped-" + str(target["value"])  # a value nobody wrote
    verdict = check(parse_history(lines_of(entries)))
    print(format_verdict(verdict))
    assert verdict.ok is False and verdict.key == f"key {target['key']}"
    assert any(w.complete_line == target["index"] + 1 for w in verdict.window)


@pytest.mark.parametrize("seed", [SEED + k for k in range(4)])
def test_real_runs_with_a_read_moved_before_its_write_fail(seed):
    """Swap the completion order of a write and a read that saw it: the read now completes
    before the write was invoked (values are unique per write, so nothing else wrote it)."""
    print(f"seed={seed}")
    entries = sim_history(seed)
    index = {id(e): k for k, e in enumerate(entries)}
    puts = {(e["key"], e["value"]): e for e in entries if e["type"] == "invoke"
            and e["f"] == "put"}
    reads = [e for e in entries if e["type"] == "ok" and e["f"] == "get"
             and (e["key"], e["value"]) in puts]
    assert reads
    read = reads[len(reads) // 2]
    write = puts[(read["key"], read["value"])]
    at = index[id(write)]
    moved = [{"type": "invoke", "process": 999, "f": "get", "key": read["key"], "value": None,
              "time": write["time"]},
             {"type": "ok", "process": 999, "f": "get", "key": read["key"],
              "value": read["value"], "time": write["time"]}]
    k = index[id(read)]
    invoke = next(e for e in reversed(entries[:k]) if e["process"] == read["process"])
    mutated = [e for e in entries[:at] if e is not invoke] + moved + [
        e for e in entries[at:] if e is not invoke and e is not read]
    mutated = [{**e, "index": k} for k, e in enumerate(mutated)]
    verdict = check(parse_history(lines_of(mutated)))
    print(format_verdict(verdict))
    assert verdict.ok is False and verdict.key == f"key {read['key']}"


LIARS = """
description = "f+1 colluding replicas lie in their replies (a planted bug: beyond f)"
[[adversary]]
node = 1
behaviour = "lie"
params = { lies = ["reply_result"], rate = 1.0 }
[[adversary]]
node = 2
behaviour = "lie"
params = { lies = ["reply_result"], rate = 1.0 }
"""


@pytest.mark.parametrize("liars, status", [(False, 0), (True, 1)])
def test_bft_check_reads_what_bft_sim_writes(tmp_path, capsys, liars, status):
    """`bft sim --history FILE` then `bft check FILE`: an honest run is linearizable; with
    f+1 = 2 replicas lying alike in their replies the client accepts their lies, the
    simulator fails, and so does the check of its history."""
    path = tmp_path / "sim.jsonl"
    args = ["sim", "--seed", str(SEED), "--clients", "3", "--requests", "15", "--keys", "2",
            "--drop", "0.05", "--history", str(path)]
    if liars:
        scenario = tmp_path / "liars.toml"
        scenario.write_text(LIARS)
        args += ["--scenario", str(scenario)]
    assert main(args) == status
    capsys.readouterr()
    assert main(["check", str(path)]) == status
    print(capsys.readouterr().out)


_scalars = st.one_of(st.none(), st.booleans(), st.integers(-3, 2**70), st.floats(),
                     st.text(max_size=4), st.sampled_from(["invoke", "ok", "fail", "info",
                                                           "put", "get", "cas", "lock",
                                                           "unlock", "delete", "k", "L"]))
_values = st.recursive(_scalars, lambda inner: st.lists(inner, max_size=3), max_leaves=6)
_FIELDS = ["index", "type", "process", "f", "key", "value", "time", "fence", "error",
           "result", "expiry_us", "agreed_us", "holder", "current"]


@settings(max_examples=300, deadline=None)
@given(base=st.integers(0, 3),
       edits=st.lists(st.tuples(st.integers(0, 40), st.sampled_from(_FIELDS), _values,
                                st.booleans()), max_size=4),
       cut=st.integers(0, 400))
def test_damaged_histories_give_a_verdict_or_a_clear_error_never_a_crash(base, edits, cut):
    """Bad input never crashes the checker: a real history with fields replaced by arbitrary
    JSON values, dropped, or the file cut anywhere, is either judged (ok / not / out of
    time) or refused with HistoryError naming a line."""
    from bft.lincheck import HistoryError

    entries = [dict(e) for e in _SIM_HISTORIES[base]]
    for k, name, value, drop in edits:
        e = entries[k % len(entries)]
        if drop:
            e.pop(name, None)
        else:
            e[name] = value
    text = "\n".join(json.dumps(e) for e in entries)
    if cut:
        text = text[:len(text) * cut // 400]
    try:
        ops = parse_history(text.splitlines())
    except HistoryError as exc:
        assert exc.line >= 1 and exc.message
        return
    verdict = check(ops, max_states=20_000)
    assert verdict.ok in (True, False, None)
    format_verdict(verdict)


def _sim_histories() -> list[list[dict[str, Any]]]:
    from adversary.sim import SimConfig, Simulation

    out = []
    for seed in range(4):
        sim = Simulation(SimConfig(seed=seed, clients=3, requests=6, lock_fraction=0.4,
                                   key_count=2, history=True))
        sim.run(30)
        assert sim.history is not None
        out.append([dict(e) for e in sim.history.entries])
    return out


_SIM_HISTORIES = _sim_histories()
