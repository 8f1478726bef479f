"""Replies carry the agreed batch time; histories record it (issue 22, item 1).

"Histories record ... the agreed batch time of each completed op": a REPLY now carries
`agreed_us`, the agreed time its batch executed at (PROTOCOL.md "Execution": the time the
application sees, max(batch_time, the time of the batch before it), the same on every
correct replica). It is part of what a replica signs or MACs, of what f+1 replies must
match on (PROTOCOL.md "Requests and replies": so one liar cannot fake it), of the cached
reply resent to a retransmission, and of every ok/fail line of a history (`agreed_us`).

Failed before the fix: `Reply` had no `agreed_us` field (TypeError on construction),
`Completed` had none (AttributeError), history lines had `agreed_us` only on lock grants.
"""

from __future__ import annotations

import collections
import random
from typing import Any

import cbor2
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from bft import codec
from bft.client import Client, Completed, is_old_reply_untrusted, peek_reply_untrusted
from bft.crypto import SimKeys, request_digest, sha256
from bft.errors import MalformedMessage
from bft.messages import DIGEST_SIZE, MacReply, Reply, Signed
from tests.harness import Net, Ops

SEED = 2207
DIGEST = bytes(range(DIGEST_SIZE))
U63 = st.integers(0, 2**63 - 1)


# ------------------------------------------------------------------ codec


@settings(max_examples=200, deadline=None)
@given(view=U63, timestamp=U63, client=U63, replica=U63, agreed_us=U63,
       result=st.binary(max_size=64))
def test_reply_with_agreed_time_round_trips(view, timestamp, client, replica, agreed_us, result):
    """Codec property: the new field survives encode/decode, signed and MAC'd, byte for byte,
    and the client's cheap peek still reads the claims in front of it."""
    reply = Reply(view, timestamp, client, replica, DIGEST, result, agreed_us)
    data = codec.encode(reply)
    assert codec.decode_statement_untrusted(data) == reply
    signed = Signed(body=data, signature=b"\x01" * 64, statement=reply)
    for envelope in (signed, MacReply(body=data, mac=b"\x02" * 32, statement=reply)):
        wire = codec.encode(envelope)
        back = codec.decode_untrusted(wire)
        assert back.statement == reply and back.statement.agreed_us == agreed_us
        assert codec.encode(back) == wire
        assert peek_reply_untrusted(wire) == (client, timestamp, replica, DIGEST)
        assert not is_old_reply_untrusted(wire)


def _old_format(reply: Reply) -> bytes:
    """A reply as the code before this change encoded it: 6 fields, no agreed_us."""
    return cbor2.dumps([Reply.TAG, reply.view, reply.timestamp, reply.client, reply.replica,
                        reply.request, reply.result], canonical=True)


def test_an_old_format_reply_is_refused_clearly():
    """Wire change: a 6-field reply (a node of the old version) decodes to MalformedMessage
    naming the missing field, never a crash; the peek does not take it for a reply, and
    `is_old_reply_untrusted` names it so the runtime counts it as `old_reply_format`."""
    body = _old_format(Reply(0, 5, 1, 2, DIGEST, b"ok", 0))
    for wire in (cbor2.dumps([MacReply.TAG, body, b"\x02" * 32], canonical=True),
                 cbor2.dumps([Signed.TAG, body, b"\x01" * 64], canonical=True)):
        with pytest.raises(MalformedMessage, match="agreed_us"):
            codec.decode_untrusted(wire)
        assert peek_reply_untrusted(wire) is None
        assert is_old_reply_untrusted(wire)
    with pytest.raises(MalformedMessage, match="agreed_us"):
        codec.decode_statement_untrusted(body)


# ------------------------------------------------------------------ client: f+1 match on it


def _client_and_keys() -> tuple[Client, SimKeys]:
    from bft.config import ClusterConfig

    keys = SimKeys(SEED, n_replicas=4, n_clients=1)
    return Client(ClusterConfig.local(4, clients=1), 0, keys.signer("client", 0),
                  keys.verifier()), keys


def test_one_lying_agreed_time_does_not_complete_the_request():
    """PROTOCOL.md "Requests and replies": f+1 replies must match, now on (t, d, result,
    agreed_us). With f = 1 a liar's reply with the right result but another agreed time and
    one correct reply are not f+1 matching; the second correct reply completes the request
    with the correct replicas' time, never the liar's."""
    print(f"seed={SEED}")
    client, keys = _client_and_keys()
    signed = client.submit(b"op", now=0.0)[0].request
    d = request_digest(signed)

    def reply(replica: int, agreed_us: int) -> Signed:
        return keys.signer("replica", replica).sign(Reply(0, 1, 0, replica, d, b"ok", agreed_us))

    assert client.receive(reply(3, 999_999), now=0.1) == []  # the liar
    assert client.receive(reply(1, 1_000), now=0.2) == []  # f matching correct replies: no
    done = [e for e in client.receive(reply(2, 1_000), now=0.3) if isinstance(e, Completed)]
    assert len(done) == 1 and done[0].result == b"ok" and done[0].agreed_us == 1_000


def test_f_plus_one_liars_agreeing_on_a_time_are_believed():
    """The teeth of the rule above: the matching is on (result, agreed_us), so f+1 replies
    alike complete the request with their time (the client cannot do better than f+1)."""
    client, keys = _client_and_keys()
    d = request_digest(client.submit(b"op", now=0.0)[0].request)
    out: list[Any] = []
    for replica in (0, 3):
        out += client.receive(keys.signer("replica", replica).sign(
            Reply(0, 1, 0, replica, d, b"ok", 7)), now=0.1)
    assert [e.agreed_us for e in out if isinstance(e, Completed)] == [7]


# ------------------------------------------------------------------ replicas


def _agreed_times(net: Net, client: int, timestamp: int) -> dict[int, int]:
    """replica -> agreed_us of its replies to (client, timestamp) so far (the last one)."""
    out = {}
    for message in net.replies.get(client, []):
        r = message.statement
        if r.timestamp == timestamp:
            out[r.replica] = r.agreed_us
    return out


def test_replies_and_cached_replies_carry_the_batch_time():
    """Every replica replies with the agreed time its batch executed at (the same on all,
    within the clocks' real time), and the cached reply resent to a retransmission of the
    executed request (PROTOCOL.md 4.1) carries that same time, later."""
    net = Net(4)
    net.advance(1.0)
    net.request(0, Ops.put("k", b"v"))
    net.deliver()
    first = _agreed_times(net, 0, 1)
    assert sorted(first) == [0, 1, 2, 3] and len(set(first.values())) == 1
    agreed = next(iter(first.values()))
    assert 1_000_000 <= agreed <= int(net.now * 1_000_000)
    net.advance(2.0)
    net.replies.clear()
    net.request(0, Ops.put("k", b"v"), timestamp=1)  # the same signed request again
    net.deliver()
    assert _agreed_times(net, 0, 1) == first
    assert all(r.counters["reply_resent"] == 1 for r in net.replicas if r is not None)


def test_the_cached_reply_time_survives_a_snapshot():
    """The client table, with each cached reply's agreed time, is part of the replica state
    a checkpoint snapshot carries (state transfer), so a replica restored from it resends
    the same time."""
    net = Net(4)
    net.advance(0.5)
    net.request(0, Ops.put("k", b"v"))
    net.deliver()
    src = net.replicas[1]
    assert src is not None
    entry = src.client_table[0]
    fresh = net._make(1)
    fresh._restore(src._snapshot())
    assert fresh.client_table[0] == entry and entry[3] == _agreed_times(net, 0, 1)[1]


# ------------------------------------------------------------------ simulator histories


@pytest.mark.parametrize("seed", [SEED, SEED + 1])
def test_every_completion_in_a_sim_history_has_its_batch_time(seed):
    """Issue 22 item 1: each ok/fail completion of a simulator history has `agreed_us`; it
    is the agreed time of the batch the op executed in, which every correct replica
    computes alike (PROTOCOL.md "Execution"): equal for ops of one batch, non-decreasing in
    execution order. The batch each op ran in is read from the replicas' executions."""
    from adversary.sim import SimConfig, Simulation

    print(f"seed={seed}")
    rng = random.Random(seed)
    sim = Simulation(SimConfig(seed=seed, clients=4, requests=25, history=True,
                               lock_fraction=0.3, think_ms=(0.0, float(rng.randint(0, 50))),
                               cluster_overrides={"batch_max_requests": 4}))
    invoked: dict[int, list[int]] = collections.defaultdict(list)  # client -> its timestamps
    batch_of: dict[tuple[int, int], tuple[int, int]] = {}  # (c, t) -> (seq, agreed_us)
    running: dict[int, int] = collections.defaultdict(int)  # replica -> its last batch time
    on_invoke, on_executed = sim.checkers.on_invoke, sim.checkers.on_executed

    def spy_invoke(client: int, timestamp: int, op: bytes, now: float) -> None:
        invoked[client].append(timestamp)
        on_invoke(client, timestamp, op, now)

    def spy_executed(node: int, executed: Any, now: float) -> None:
        batch = executed.batch
        agreed = max(batch.batch_time, running[node])
        if batch.requests:
            running[node] = agreed
        for s in batch.requests:
            key = (s.statement.client, s.statement.timestamp)
            assert batch_of.setdefault(key, (executed.seq, agreed)) == (executed.seq, agreed)
        on_executed(node, executed, now)

    sim.checkers.on_invoke, sim.checkers.on_executed = spy_invoke, spy_executed
    result = sim.run(60)
    assert result.ok, result.violations
    assert sim.history is not None
    nth: dict[int, int] = collections.Counter()
    ttl_ms: dict[int, Any] = {}
    open_ts: dict[int, int] = {}  # process -> the request number of its open op
    by_seq: dict[int, set[int]] = collections.defaultdict(set)
    completions = 0
    for e in sim.history.entries:
        process = e["process"]
        if e["type"] == "invoke":
            open_ts[process] = invoked[process][nth[process]]
            nth[process] += 1
            ttl_ms[process] = e["value"]
            continue
        if e["type"] not in ("ok", "fail"):
            continue
        completions += 1
        seq, agreed = batch_of[(process, open_ts[process])]
        assert e["agreed_us"] == agreed, e
        by_seq[seq].add(e["agreed_us"])
        if e["f"] == "lock" and e.get("result") == "granted":
            # the lock grant's field, from its lease end, is the reply's time
            assert e["expiry_us"] == agreed + ttl_ms[process] * 1000, e
    assert completions == 4 * 25
    assert all(len(times) == 1 for times in by_seq.values())
    per_seq = collections.Counter(s for s, _ in batch_of.values())
    assert max(per_seq.values()) > 1  # some batches held several ops: "equal" was tested
    ordered = [next(iter(by_seq[q])) for q in sorted(by_seq)]
    assert ordered == sorted(ordered)


def test_bft_sim_history_file_has_agreed_times_in_real_time_order(tmp_path, capsys):
    """`bft sim --history FILE`: every ok/fail line has an integer `agreed_us`, and an op that
    completed before another was invoked executed at an agreed time no later than it
    (real-time order, which a linearizable history keeps)."""
    from bft.cli import main
    from bft.history import read_history

    path = tmp_path / "sim.jsonl"
    assert main(["sim", "--seed", str(SEED), "--clients", "3", "--requests", "12",
                 "--drop", "0.02", "--history", str(path)]) == 0
    capsys.readouterr()
    entries = read_history(path)
    done = [e for e in entries if e["type"] in ("ok", "fail")]
    assert len(done) == 36 and all(type(e["agreed_us"]) is int for e in done)
    invoke_index = {}
    for e in entries:
        if e["type"] == "invoke":
            invoke_index[e["process"]] = e["index"]
        elif e["type"] in ("ok", "fail"):
            e["invoked_at"] = invoke_index[e["process"]]
    for a in done:
        for b in done:
            if a["index"] < b["invoked_at"]:
                assert a["agreed_us"] <= b["agreed_us"], (a, b)


# ------------------------------------------------------------------ histories and the runtime


def test_history_records_the_reply_time_on_every_completion():
    """`History.complete(..., agreed_us)` writes it on ok and fail lines alike; a lock grant's
    own field (from its lease end) must agree with it, and a disagreement is refused (both
    come from the replicas: it would be a bug)."""
    from bft.app import Result
    from bft.history import History, check_history_shape

    h = History()
    h.invoke(1, Ops.put("k", b"v"), 1)
    assert h.complete(1, Result("ok").encode(), 2, 5_000)["agreed_us"] == 5_000
    h.invoke(1, Ops.cas("k", b"x", b"y"), 3)
    failed = h.complete(1, Result("cas_failed", value=b"v").encode(), 4, 6_000)
    assert (failed["type"], failed["agreed_us"]) == ("fail", 6_000)
    h.invoke(1, Ops.lock("L", 100), 5)
    grant = Result("granted", token=65536, expiry_us=107_000).encode()
    assert h.complete(1, grant, 6, 7_000)["agreed_us"] == 7_000
    h.invoke(1, Ops.lock("L", 100), 7)
    with pytest.raises(ValueError, match="lock grant at agreed time 7000"):
        h.complete(1, grant, 8, 8_000)
    h.invoke(2, Ops.get("k"), 9)
    assert "agreed_us" not in h.complete(2, Result("value", value=b"v").encode(), 10)
    assert check_history_shape(h.entries) == []


async def test_cluster_client_records_the_f_plus_one_time_and_counts_old_replies(nursery):
    """Over loopback UDP with scripted replicas: `call_recorded` writes the agreed time that
    f+1 replies share (`ClusterClient.last_agreed_us`), not the liar's (replica 3); a reply
    of the old 6-field format is a counted drop (`old_reply_format`), never a crash."""
    from bft.auth import reply_mac
    from bft.history import History, call_recorded
    from tests.test_cluster_client_mux import FakeReplicas, client_on, make_config

    config = make_config(client_timeout_s=0.2)
    fakes = FakeReplicas(config)

    def policy(replica: int, request: Any, rec: Any) -> list[Any]:
        d = sha256(codec.encode(request))  # a signed request's digest: its body's
        return [fakes.auth[replica].seal(Reply(0, request.timestamp, request.client, replica,
                                               d, b"r", 9_999 if replica == 3 else 4_242))]

    fakes.policy = policy
    for replica in fakes.endpoints:
        nursery.start_soon(fakes.serve, replica)
    client = client_on(config, 0)
    try:
        history = History()
        result = await call_recorded(client, Ops.get("k"), history, process=0,
                                     clock_ns=lambda: 0, timeout_s=20)
        assert result == b"r" and client.last_agreed_us == 4_242
        assert history.entries[-1]["agreed_us"] == 4_242
        old = _old_format(Reply(0, 1, 0, 1, DIGEST, b"r", 0))
        mac = reply_mac(b"\x00" * 32, old)
        client._mux._route_untrusted(cbor2.dumps([MacReply.TAG, old, mac], canonical=True),
                                     0.0)
        assert client._mux.statistics()["drops"].get("old_reply_format") == 1
    finally:
        client.close()
        await fakes.__aexit__()


def test_a_snapshot_written_before_agreed_times_still_restores():
    """Nothing lost on upgrade: a state directory written by the version before replies
    carried the agreed time has client-table entries of 4 items [c, t, result, digest]; it
    restores with the cached reply's time 0 (unknown, the same on every replica restoring
    that snapshot) and keeps the data. Failed before the fix: MalformedMessage("bad
    snapshot: not enough values to unpack")."""
    import cbor2

    net = Net(4)
    net.advance(0.5)
    net.request(0, Ops.put("k", b"v"))
    net.deliver()
    src = net.replicas[1]
    assert src is not None
    app_snap, table, last_bt = cbor2.loads(src._snapshot())
    old = cbor2.dumps([app_snap, [entry[:4] for entry in table], last_bt], canonical=True)
    fresh = net._make(1)
    fresh._restore(old)
    t, result, digest, agreed = fresh.client_table[0]
    assert (t, result, digest) == src.client_table[0][:3] and agreed == 0
    assert fresh.app.snapshot() == src.app.snapshot()
