"""A reply answers one request: issue 18, safety bug 1e.

PROTOCOL.md "Requests and replies" (OSDI'99 4.1): a replica keeps, per client,
the last executed t and its reply, and resends that reply for a request with
`t ==` last executed. The resent reply must answer *that* request: a second,
different request of the same client under the same t (two processes sharing
a client id reach it easily) must never be answered with the first one's
result, or the client accepts the result of an operation it never sent.

Replies carry the digest of the request they answer (`Reply.request`,
`bft.crypto.request_digest`); a replica resends its cached reply only to the
same request (same digest) and drops any other as `conflicting_request`; the
client counts only replies whose digest is that of the request it sent.
"""

from __future__ import annotations

from typing import Any

from harness import Net, Ops

from bft import codec
from bft.app import OK as OK_RESULT
from bft.app import decode_result
from bft.auth import sim_reply_auth
from bft.client import Client, Completed, SendAll, SendTo, peek_reply_untrusted
from bft.crypto import request_digest
from bft.messages import MacReply, Reply, Request

SEED = 18
OK = OK_RESULT.encode()


def _client(net: Net, client_id: int, first_timestamp: int) -> Client:
    """A pure client of `net` with its own keys and MAC keys (as `bft client` has)."""
    auth = sim_reply_auth(net.seed, "client", client_id, n_replicas=net.n,
                          n_clients=len(net.config.clients))
    return Client(net.config, client_id, net.keys.signer("client", client_id),
                  net.keys.verifier(), first_timestamp=first_timestamp, reply_auth=auth,
                  send_to_all=True)


def _run(net: Net, client: Client, effects: list[Any]) -> list[Completed]:
    """Carry out `client`'s sends, deliver everything, feed it every new reply (through
    the codec, as over the wire); return what completed."""
    seen = len(net.replies.get(client.client_id, []))
    for e in effects:
        if isinstance(e, (SendTo, SendAll)):
            targets = range(net.n) if isinstance(e, SendAll) else [e.replica]
            for j in targets:
                net.queue.append((-1, j, e.request))
    net.deliver()
    done = []
    for message in net.replies.get(client.client_id, [])[seen:]:
        wire = codec.decode_untrusted(codec.encode(message), net.config.limits)
        done += [x for x in client.receive(wire, net.now) if isinstance(x, Completed)]
    return done


def test_a_second_request_under_the_same_timestamp_never_gets_the_first_ones_result():
    """PROTOCOL.md "Requests and replies": the cached reply is resent only for the request
    it answers. Two clients sharing client id 0 (two processes) both start at t = 100:
    A's `put x=1` executes; B's `put x=2` under t = 100 must not complete (not even after
    B retransmits to every replica), and x stays 1.

    Failed before the fix: every replica resent its cached reply (t = 100, result ok) to
    B's request whatever its op, and B's client accepted it from f+1 replicas: B's
    `put x=2` returned ok while x stayed 1 everywhere."""
    print(f"seed={SEED}")
    net = Net(4, seed=SEED)
    a = _client(net, 0, first_timestamp=100)
    done = _run(net, a, a.submit(Ops.put("x", b"1"), net.now))
    assert [decode_result(d.result).kind for d in done] == ["ok"]

    b = _client(net, 0, first_timestamp=100)
    done = _run(net, b, b.submit(Ops.put("x", b"2"), net.now))
    for _ in range(3):  # B's retransmissions (to every replica) change nothing
        net.now += 10 * net.config.client_timeout_s
        done += _run(net, b, b.tick(net.now))
    assert done == [], f"B accepted {done}: the result of A's request"
    assert b.busy
    assert len({r.app.digest() for r in net.replicas}) == 1
    assert all(r.drops["conflicting_request"] >= 1 for r in net.replicas)

    reader = _client(net, 1, first_timestamp=1)
    done = _run(net, reader, reader.submit(Ops.get("x"), net.now))
    assert [decode_result(d.result).value for d in done] == [b"1"]


def test_the_client_counts_only_replies_to_the_request_it_sent():
    """PROTOCOL.md "Requests and replies": the client accepts a result once f+1 replies
    match; they must answer the request it sent. Authentic replies from every replica
    with the outstanding number but another request's digest (what replicas answer when
    another process's request under this number executed) are dropped as
    `other_request`, before and after screening, and use up no replica's vote.

    Could not be written against the old code (a reply named no request); the behaviour
    it guards failed before the fix in the test above."""
    print(f"seed={SEED}")
    net = Net(4, seed=SEED)
    client = _client(net, 0, first_timestamp=100)
    sent = client.submit(Ops.put("x", b"2"), net.now)[0].request
    theirs = net.keys.signer("client", 0).sign(Request(Ops.put("x", b"1"), 100, 0))
    auth = {i: sim_reply_auth(net.seed, "replica", i, n_replicas=net.n,
                              n_clients=len(net.config.clients)) for i in range(net.n)}

    def answer(replica: int, request: bytes) -> MacReply:
        sealed = auth[replica].seal(Reply(0, 100, 0, replica, request, OK))
        assert sealed is not None
        return sealed

    for i in range(net.n):
        message = answer(i, request_digest(theirs))
        claim = peek_reply_untrusted(codec.encode(message))
        assert claim == (0, 100, i, request_digest(theirs))
        assert not client.prescreen(*claim[1:])
        assert client.receive(message, net.now) == []
    assert client.busy
    assert client.statistics()["drops"] == {"other_request": 2 * net.n}
    assert client.receive(answer(3, request_digest(sent)), net.now) == []
    assert client.receive(answer(1, request_digest(sent)), net.now) == [
        Completed(100, OK, 0.0)]


def test_a_restarted_replica_keeps_what_its_cached_reply_answers():
    """PROTOCOL.md "Requests and replies" and "Checkpoints": the client table travels in
    the replica's snapshot with each entry's request digest, so a replica restarted from
    a stable checkpoint resends its cached reply to the executed request only, and
    drops another request under the same number as `conflicting_request`.

    Failed before the fix: the restored replica resent the cached reply to any request
    under the executed number (the snapshot held no digest)."""
    print(f"seed={SEED}")
    net = Net(4, seed=SEED, checkpoint_interval=2, log_window=4, max_in_flight=4)
    a = _client(net, 0, first_timestamp=100)
    assert len(_run(net, a, a.submit(Ops.put("x", b"1"), net.now))) == 1
    other = _client(net, 1, first_timestamp=1)
    assert len(_run(net, other, other.submit(Ops.put("y", b"1"), net.now))) == 1
    assert all(r.stable_seq == 2 for r in net.replicas)
    net.crash(2)
    net.restart(2)
    assert net.replicas[2].last_executed == 2 and not net.storage[2].records()

    executed = net.keys.signer("client", 0).sign(Request(Ops.put("x", b"1"), 100, 0))
    conflicting = net.keys.signer("client", 0).sign(Request(Ops.put("x", b"2"), 100, 0))
    seen = len(net.replies.get(0, []))
    net.queue.append((-1, 2, conflicting))
    net.deliver()
    assert net.replies[0][seen:] == []
    assert net.replicas[2].drops["conflicting_request"] == 1
    net.queue.append((-1, 2, executed))
    net.deliver()
    [resent] = net.replies[0][seen:]
    assert resent.statement.request == request_digest(executed)
    assert resent.statement.result == OK
