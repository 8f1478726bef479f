"""Client protocol (PROTOCOL.md "Requests and replies", "Loss recovery"; OSDI'99 section 4.1)."""

from __future__ import annotations

from dataclasses import dataclass

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from bft.auth import ReplyAuth, reply_mac, sim_reply_auth
from bft.client import (
    Client,
    ClientBusy,
    ClientTimer,
    Completed,
    Failed,
    SendAll,
    SendTo,
    peek_reply_untrusted,
)
from bft.codec import encode as codec_encode
from bft.crypto import SimKeys, sha256
from bft.messages import MacReply, Reply, Request, Signed

N_CLIENTS = 3


@dataclass(frozen=True)
class FakeConfig:
    """The part of ClusterConfig the client reads (n = 4, f = 1)."""

    n: int = 4
    f: int = 1
    client_timeout_s: float = 1.0

    @property
    def weak(self) -> int:
        return self.f + 1

    def primary(self, view: int) -> int:
        return view % self.n


def make_config():
    """The real ClusterConfig when bft/config.py is there, else the fake with the same fields."""
    try:
        from bft.config import ClusterConfig
    except ImportError:
        return FakeConfig()
    return ClusterConfig.local(n=4, client_timeout_s=1.0)


@pytest.fixture
def keys() -> SimKeys:
    return SimKeys(1, n_replicas=4, n_clients=N_CLIENTS)


@pytest.fixture
def client(keys: SimKeys) -> Client:
    return Client(make_config(), 0, keys.signer("client", 0), keys.verifier())


def digest_of(timestamp: int, *, op: bytes = b"op", client: int = 0) -> bytes:
    """The digest of request `timestamp` of `client` with `op` (bft.crypto.request_digest:
    a signed request's body is the canonical encoding of its statement)."""
    return sha256(codec_encode(Request(op=op, timestamp=timestamp, client=client)))


def reply(keys: SimKeys, replica: int, timestamp: int, result: bytes, *, view: int = 0,
          client: int = 0, op: bytes = b"op") -> Signed:
    """Replica `replica`'s signed reply to request `timestamp` of `client` with `op`."""
    return keys.signer("replica", replica).sign(
        Reply(view=view, timestamp=timestamp, client=client, replica=replica,
              request=digest_of(timestamp, op=op, client=client), result=result))


def completions(effects) -> list[Completed]:
    return [e for e in effects if isinstance(e, Completed)]


def test_submit_signs_request_and_sends_to_primary(client: Client, keys: SimKeys) -> None:
    effects = client.submit(b"op", now=10.0)
    assert isinstance(effects[0], SendTo) and effects[0].replica == 0
    signed = effects[0].request
    assert signed.statement == Request(op=b"op", timestamp=1, client=0)
    assert keys.verifier().verify(signed)
    assert effects[1] == ClientTimer(11.0)


def test_timestamps_strictly_increase(client: Client, keys: SimKeys) -> None:
    seen = []
    for i in range(3):
        signed = client.submit(b"x", now=float(i))[0].request
        seen.append(signed.statement.timestamp)
        ts = signed.statement.timestamp
        client.receive(reply(keys, 1, ts, b"r", op=b"x"), now=i + 0.1)
        client.receive(reply(keys, 2, ts, b"r", op=b"x"), now=i + 0.2)
        assert not client.busy
    assert seen == [1, 2, 3]


def test_first_timestamp_respected(keys: SimKeys) -> None:
    c = Client(make_config(), 1, keys.signer("client", 1), keys.verifier(), first_timestamp=42)
    assert c.submit(b"x", now=0.0)[0].request.statement.timestamp == 42


def test_completes_on_f_plus_one_matching_replies(client: Client, keys: SimKeys) -> None:
    client.submit(b"op", now=0.0)
    assert client.receive(reply(keys, 0, 1, b"ok"), now=0.5) == []
    effects = client.receive(reply(keys, 3, 1, b"ok"), now=0.75)
    assert effects == [Completed(1, b"ok", 0.75)]
    assert not client.busy
    # Late replies for a completed request change nothing.
    assert client.receive(reply(keys, 1, 1, b"ok"), now=0.8) == []
    assert client.statistics()["completed"] == 1


def test_mismatched_results_not_accepted(client: Client, keys: SimKeys) -> None:
    client.submit(b"op", now=0.0)
    assert client.receive(reply(keys, 0, 1, b"lie"), now=0.1) == []
    assert client.receive(reply(keys, 1, 1, b"truth"), now=0.2) == []
    assert client.busy
    # The third distinct replica decides: two now match on "truth".
    assert completions(client.receive(reply(keys, 2, 1, b"truth"), now=0.3)) == [
        Completed(1, b"truth", 0.3)]


def test_one_replica_counts_once_first_reply_wins(client: Client, keys: SimKeys) -> None:
    client.submit(b"op", now=0.0)
    assert client.receive(reply(keys, 0, 1, b"a"), now=0.1) == []
    # The same replica repeating or changing its answer never makes a quorum alone.
    assert client.receive(reply(keys, 0, 1, b"a"), now=0.2) == []
    assert client.receive(reply(keys, 0, 1, b"b"), now=0.3) == []
    assert client.busy
    # Replica 0's first answer ("a") is the one that counts.
    assert client.receive(reply(keys, 1, 1, b"b"), now=0.4) == []
    assert completions(client.receive(reply(keys, 2, 1, b"a"), now=0.5)) == [
        Completed(1, b"a", 0.5)]
    assert client.statistics()["drops"]["duplicate_replica"] == 2


def test_bad_signatures_ignored(client: Client, keys: SimKeys) -> None:
    client.submit(b"op", now=0.0)
    good = reply(keys, 1, 1, b"ok")
    forged = Signed(body=good.body, signature=bytes(64), statement=good.statement)
    # Replica 2's reply signed with replica 3's key: a forgery too.
    body_of_2 = reply(keys, 2, 1, b"ok")
    stolen = Signed(body=body_of_2.body, signature=reply(keys, 3, 1, b"ok").signature,
                    statement=body_of_2.statement)
    assert client.receive(forged, now=0.1) == []
    assert client.receive(stolen, now=0.1) == []
    assert client.receive(reply(keys, 0, 1, b"ok"), now=0.2) == []
    assert client.busy
    assert client.statistics()["drops"]["bad_signature"] == 2
    # The forgeries did not use up replica 1's or 2's vote.
    assert completions(client.receive(good, now=0.3)) == [Completed(1, b"ok", 0.3)]


def test_replies_for_others_or_non_replicas_ignored(client: Client, keys: SimKeys) -> None:
    client.submit(b"op", now=0.0)
    assert client.receive(reply(keys, 0, 1, b"ok", client=1), now=0.1) == []  # other client
    assert client.receive(reply(keys, 1, 7, b"ok"), now=0.1) == []  # other timestamp
    request = keys.signer("client", 0).sign(Request(op=b"x", timestamp=1, client=0))
    assert client.receive(request, now=0.1) == []  # not a reply
    # A replica id outside the cluster, even correctly signed by a larger key set.
    big = SimKeys(1, n_replicas=10, n_clients=N_CLIENTS)
    assert client.receive(reply(big, 7, 1, b"ok"), now=0.1) == []
    drops = client.statistics()["drops"]
    assert drops == {"other_client": 1, "stale_timestamp": 1, "not_a_reply": 1,
                     "unknown_replica": 1}
    assert client.busy
    assert client.receive(reply(keys, 0, 1, b"ok"), now=0.2) == []  # only one vote so far


def test_retransmit_to_primary_then_broadcast(client: Client) -> None:
    signed = client.submit(b"op", now=0.0)[0].request
    assert client.tick(0.5) == [ClientTimer(1.0)]  # not yet
    first = client.tick(1.0)
    assert first[0] == SendTo(0, signed)
    second_at = first[1].at
    assert second_at == pytest.approx(2.0)
    assert client.tick(second_at - 0.01) == [ClientTimer(second_at)]
    second = client.tick(second_at)
    assert second[0] == SendAll(signed)
    third = client.tick(second[1].at)
    assert third[0] == SendAll(signed)
    # Backoff doubles between retransmissions and stays capped.
    waits = []
    now = third[1].at
    for _ in range(8):
        effects = client.tick(now)
        assert isinstance(effects[0], SendAll)
        waits.append(effects[1].at - now)
        now = effects[1].at
    assert waits[-1] == waits[-2] == pytest.approx(4.0)  # max_backoff (4) x client_timeout_s
    stats = client.statistics()
    assert stats["retransmits"] == 11 and stats["broadcasts"] == 10
    assert client.busy  # no deadline: never gives up


def test_failed_only_with_deadline(client: Client, keys: SimKeys) -> None:
    client.submit(b"op", now=0.0, deadline=2.5)
    effects = client.tick(1.0)
    assert isinstance(effects[0], SendTo)
    assert effects[1] == ClientTimer(2.0)
    effects = client.tick(2.0)
    assert isinstance(effects[0], SendAll)
    assert effects[1] == ClientTimer(2.5)  # the deadline comes before the next retransmit
    effects = client.tick(2.5)
    assert len(effects) == 1 and isinstance(effects[0], Failed) and effects[0].timestamp == 1
    assert not client.busy
    # The next request gets a fresh number; replies to the failed one are ignored.
    signed = client.submit(b"op2", now=3.0)[0].request
    assert signed.statement.timestamp == 2
    assert client.receive(reply(keys, 0, 1, b"ok"), now=3.1) == []
    assert client.receive(reply(keys, 1, 1, b"ok"), now=3.1) == []
    assert client.busy


def test_submit_while_busy_raises(client: Client) -> None:
    client.submit(b"op", now=0.0)
    with pytest.raises(ClientBusy):
        client.submit(b"op2", now=0.1)


def test_learns_view_from_replies(client: Client, keys: SimKeys) -> None:
    client.submit(b"op", now=0.0)
    client.receive(reply(keys, 1, 1, b"ok", view=5), now=0.1)
    client.receive(reply(keys, 2, 1, b"ok", view=5), now=0.2)
    assert client.view == 5
    assert client.submit(b"op2", now=1.0)[0].replica == 5 % 4


def test_lone_liar_cannot_move_the_view(client: Client, keys: SimKeys) -> None:
    client.submit(b"op", now=0.0)
    client.receive(reply(keys, 3, 1, b"ok", view=1000), now=0.1)
    client.receive(reply(keys, 1, 1, b"ok", view=0), now=0.2)
    assert not client.busy
    assert client.view == 0


@settings(max_examples=50)
@given(st.lists(st.tuples(st.integers(0, 3), st.sampled_from([b"a", b"b", b"c"])),
                max_size=12))
def test_completion_needs_f_plus_one_distinct_matching(replies: list[tuple[int, bytes]]) -> None:
    """Property: completes exactly when f+1 distinct replicas' first replies match."""
    keys = SimKeys(2, n_replicas=4, n_clients=1)
    c = Client(make_config(), 0, keys.signer("client", 0), keys.verifier())
    c.submit(b"op", now=0.0)
    first: dict[int, bytes] = {}
    expected = None
    got = None
    for replica, result in replies:
        first.setdefault(replica, result)
        if expected is None:
            counts = [r for r in first.values() if r == first[replica]]
            if len(counts) >= 2:
                expected = first[replica]
        done = completions(c.receive(reply(keys, replica, 1, result), now=1.0))
        if done:
            assert got is None
            got = done[0].result
    assert got == expected


# --------------------------------------------------------------------------
# Replies authenticated by MACs (bft/auth.py) and sending to every replica
# --------------------------------------------------------------------------


def replica_auth(replica: int) -> ReplyAuth:
    return sim_reply_auth(1, "replica", replica, n_replicas=4, n_clients=N_CLIENTS)


def mac_reply(replica: int, timestamp: int, result: bytes, *, view: int = 0,
              client: int = 0, op: bytes = b"op") -> MacReply:
    """Replica `replica`'s MAC'd reply to request `timestamp` of `client` with `op`."""
    request = digest_of(timestamp, op=op, client=client)
    out = replica_auth(replica).seal(Reply(view, timestamp, client, replica, request, result))
    assert out is not None
    return out


@pytest.fixture
def mac_client(keys: SimKeys) -> Client:
    auth = sim_reply_auth(1, "client", 0, n_replicas=4, n_clients=N_CLIENTS)
    return Client(make_config(), 0, keys.signer("client", 0), keys.verifier(), reply_auth=auth)


def test_completes_on_f_plus_one_matching_mac_replies(mac_client: Client) -> None:
    mac_client.submit(b"op", now=0.0)
    assert mac_client.receive(mac_reply(2, 1, b"ok", view=3), now=0.1) == []
    assert mac_client.receive(mac_reply(1, 1, b"ok", view=3), now=0.2) == [
        Completed(1, b"ok", 0.2)]
    assert mac_client.view == 3
    assert mac_client.statistics()["drops"] == {}


def test_mac_and_signed_replies_count_together(mac_client: Client, keys: SimKeys) -> None:
    mac_client.submit(b"op", now=0.0)
    assert mac_client.receive(mac_reply(0, 1, b"ok"), now=0.1) == []
    assert completions(mac_client.receive(reply(keys, 3, 1, b"ok"), now=0.2)) == [
        Completed(1, b"ok", 0.2)]


def test_bad_macs_dropped_and_counted(mac_client: Client) -> None:
    mac_client.submit(b"op", now=0.0)
    good = mac_reply(1, 1, b"ok")
    flipped = MacReply(good.body, bytes([good.mac[0] ^ 1]) + good.mac[1:], good.statement)
    # replica 2's reply MAC'd under the key of replica 3 (a liar posing as replica 2)
    claim = Reply(0, 1, 0, 2, digest_of(1), b"ok")
    body = codec_encode(claim)
    stolen = MacReply(body, reply_mac(replica_auth(3).keys.key(0), body), claim)
    # a reply MAC'd for client 1, re-addressed to client 0
    other = mac_reply(0, 1, b"ok", client=1)
    readdressed_claim = Reply(0, 1, 0, 0, digest_of(1), b"ok")
    readdressed = MacReply(codec_encode(readdressed_claim), other.mac, readdressed_claim)
    for forged in (flipped, stolen, readdressed):
        assert mac_client.receive(forged, now=0.1) == []
    assert mac_client.statistics()["drops"] == {"bad_mac": 3}
    assert mac_client.busy
    # The forgeries used up no replica's vote: replicas 1 and 2 still complete the request.
    assert mac_client.receive(good, now=0.2) == []
    assert completions(mac_client.receive(mac_reply(2, 1, b"ok"), now=0.3)) == [
        Completed(1, b"ok", 0.3)]


def test_client_without_reply_keys_drops_mac_replies(client: Client, keys: SimKeys) -> None:
    client.submit(b"op", now=0.0)
    assert client.receive(mac_reply(0, 1, b"ok"), now=0.1) == []
    assert client.receive(mac_reply(1, 1, b"ok"), now=0.1) == []
    assert client.busy and client.statistics()["drops"] == {"bad_mac": 2}


def test_mac_replies_for_others_are_sorted_before_any_check(mac_client: Client) -> None:
    mac_client.submit(b"op", now=0.0)
    assert mac_client.receive(mac_reply(0, 1, b"ok", client=1), now=0.1) == []
    assert mac_client.receive(mac_reply(0, 9, b"ok"), now=0.1) == []
    big = sim_reply_auth(1, "replica", 7).seal(Reply(0, 1, 0, 7, digest_of(1), b"ok"))
    assert mac_client.receive(big, now=0.1) == []
    assert mac_client.statistics()["drops"] == {"other_client": 1, "stale_timestamp": 1,
                                                "unknown_replica": 1}


def test_send_to_all_sends_every_request_and_retransmission_to_all(keys: SimKeys) -> None:
    c = Client(make_config(), 0, keys.signer("client", 0), keys.verifier(), send_to_all=True)
    effects = c.submit(b"op", now=0.0)
    signed = effects[0].request
    assert effects == [SendAll(signed), ClientTimer(1.0)]
    first = c.tick(1.0)  # the retransmission that would go to the primary
    assert first[0] == SendAll(signed)
    assert c.tick(first[1].at)[0] == SendAll(signed)
    c.receive(reply(keys, 0, 1, b"ok"), now=5.0)
    c.receive(reply(keys, 1, 1, b"ok"), now=5.0)
    second = c.submit(b"op2", now=6.0)[0]
    assert isinstance(second, SendAll) and second.request.statement.timestamp == 2


# --------------------------------------------------------------------------
# Screening replies before decoding them; abandoning a request
# --------------------------------------------------------------------------


@settings(max_examples=60)
@given(view=st.integers(0, 2**63 - 1), timestamp=st.integers(0, 2**63 - 1),
       client=st.integers(0, 2**63 - 1), replica=st.integers(0, 2**63 - 1),
       request=st.binary(min_size=32, max_size=32), result=st.binary(max_size=300),
       signed=st.booleans())
def test_peek_reads_what_every_encoded_reply_claims(view: int, timestamp: int, client: int,
                                                    replica: int, request: bytes, result: bytes,
                                                    signed: bool) -> None:
    """Property: the peek of any well-formed reply (signed or MAC'd) is exactly its
    (client, timestamp, replica, request digest), so screening by it never misroutes a
    reply."""
    claim = Reply(view=view, timestamp=timestamp, client=client, replica=replica,
                  request=request, result=result)
    body = codec_encode(claim)
    message = (Signed(body=body, signature=b"\x01" * 64, statement=claim) if signed
               else MacReply(body=body, mac=b"\x02" * 32, statement=claim))
    assert peek_reply_untrusted(codec_encode(message)) == (client, timestamp, replica, request)


@settings(max_examples=80)
@given(st.binary(max_size=80))
def test_peek_never_raises_on_junk(data: bytes) -> None:
    got = peek_reply_untrusted(data)
    assert got is None or (len(got) == 4 and all(isinstance(x, int) and x >= 0 for x in got[:3])
                           and isinstance(got[3], bytes) and len(got[3]) == 32)
    # truncations of a real reply: a claim or None, never an exception
    real = codec_encode(mac_reply(1, 5, data))
    for cut in range(len(real)):
        peek_reply_untrusted(real[:cut])
        peek_reply_untrusted(real[:cut] + data)


def test_peek_says_none_for_messages_that_are_not_replies(keys: SimKeys) -> None:
    request = keys.signer("client", 0).sign(Request(op=b"op", timestamp=1, client=0))
    assert peek_reply_untrusted(codec_encode(request)) is None
    assert peek_reply_untrusted(b"") is None


def test_prescreen_drops_what_receive_would_drop_and_counts_it_alike(
        mac_client: Client) -> None:
    d = digest_of(1)
    assert not mac_client.prescreen(1, 0, d)  # nothing outstanding
    mac_client.submit(b"op", now=0.0)
    assert mac_client.prescreen(1, 0, d) and mac_client.prescreen(1, 3, d)
    assert not mac_client.prescreen(2, 0, d)  # another request number
    assert not mac_client.prescreen(1, 4, d)  # not a replica of the cluster (n = 4)
    assert not mac_client.prescreen(1, 0, digest_of(1, op=b"other"))  # another request
    assert mac_client.receive(mac_reply(0, 1, b"ok"), now=0.1) == []
    assert not mac_client.prescreen(1, 0, d)  # replica 0 already counted
    assert mac_client.prescreen(1, 1, d)
    stats = mac_client.statistics()
    assert stats["drops"] == {"stale_timestamp": 2, "unknown_replica": 1,
                              "other_request": 1, "duplicate_replica": 1}
    assert stats["replies_received"] == 6  # 5 screened out, 1 received


@settings(max_examples=50)
@given(st.lists(st.tuples(st.integers(0, 5), st.integers(0, 3), st.sampled_from([b"a", b"b"]),
                          st.booleans(), st.booleans()), max_size=14))
def test_prescreening_changes_no_outcome(
        replies: list[tuple[int, int, bytes, bool, bool]]) -> None:
    """Property: a client that screens every reply first (and passes on only those it
    lets through) completes the same requests with the same results, at the same
    replies, as one that receives them all; forged replies included."""
    keys = SimKeys(3, n_replicas=4, n_clients=1)
    plain = Client(make_config(), 0, keys.signer("client", 0), keys.verifier())
    screened = Client(make_config(), 0, keys.signer("client", 0), keys.verifier())
    for c in (plain, screened):
        c.submit(b"op", now=0.0)
    for k, (replica, timestamp_offset, result, forged, other) in enumerate(replies):
        timestamp = plain.outstanding_timestamp or 1
        timestamp += timestamp_offset % 2  # the outstanding number, or the next one
        op = b"other" if other else b"op"  # the request sent, or another under its number
        if replica < 4:
            message = reply(keys, replica, timestamp, result, op=op)
        else:  # a replica the cluster does not have (unsigned: nobody can sign as it)
            claim = Reply(view=0, timestamp=timestamp, client=0, replica=replica,
                          request=digest_of(timestamp, op=op), result=result)
            message = Signed(codec_encode(claim), bytes(64), claim)
        if forged:
            message = Signed(message.body, bytes(64), message.statement)
        want = plain.receive(message, now=float(k))
        got = (screened.receive(message, now=float(k))
               if screened.prescreen(message.statement.timestamp, message.statement.replica,
                                     message.statement.request)
               else [])
        assert want == got
        for c in (plain, screened):
            if not c.busy:
                c.submit(b"op", now=float(k))
    assert plain.statistics()["completed"] == screened.statistics()["completed"]
    assert plain.statistics()["replies_received"] == screened.statistics()["replies_received"]


def test_abandon_frees_the_client_and_drops_late_replies(client: Client, keys: SimKeys) -> None:
    assert client.abandon() is None
    client.submit(b"op", now=0.0)
    assert client.abandon() == 1
    assert not client.busy and client.tick(5.0) == []
    assert client.receive(reply(keys, 0, 1, b"ok"), now=0.1) == []
    assert client.receive(reply(keys, 1, 1, b"ok"), now=0.1) == []  # never completes
    effects = client.submit(b"op2", now=1.0)
    assert effects[0].request.statement.timestamp == 2  # a number is never used twice
    stats = client.statistics()
    assert stats["abandoned"] == 1 and stats["completed"] == 0
    assert stats["drops"] == {"stale_timestamp": 2}


# ---------------------------------------------------------------- measured retransmit timeout


def _complete(client: Client, keys: SimKeys, submitted: float, latency_s: float) -> None:
    effects = client.submit(b"op", submitted)
    t = client.outstanding_timestamp
    now = submitted
    while now + 0.25 < submitted + latency_s:  # the timer fires on the way, as in a runtime
        now += 0.25
        effects = client.tick(now)
    for r in (1, 2):
        effects = client.receive(reply(keys, r, t, b"ok"), submitted + latency_s)
    assert completions(effects)


def test_a_slow_cluster_raises_the_retransmit_timeout_rfc6298(client: Client, keys: SimKeys):
    """DDIA ch. 8: timeouts from measured delays. Requests that take 2 s on a cluster whose
    configured timeout is 1 s are not retransmitted once a few latencies are measured."""
    assert client.retransmit_timeout_s == 1.0
    now = 0.0
    _complete(client, keys, now, 0.5)  # fast: no retransmission, measured
    assert client.retransmit_timeout_s >= 1.0
    for _ in range(6):
        now += 10.0
        _complete(client, keys, now, 0.9)
    before = client.statistics()["retransmits"]
    for _ in range(6):  # latencies creep up while the timeout keeps ahead of them
        now += 10.0
        _complete(client, keys, now, 1.3)
    timeout = client.retransmit_timeout_s
    assert 1.3 < timeout <= 16.0
    assert client.statistics()["retransmit_timeout_s"] == timeout
    assert client.statistics()["retransmits"] - before <= 2  # only while it was learning


def test_retransmitted_requests_are_not_measured_karn(client: Client, keys: SimKeys):
    """A retransmitted request's latency is ambiguous (which copy was answered?): only
    requests answered without retransmission feed the estimate (Karn's rule)."""
    _complete(client, keys, 0.0, 5.0)  # retransmitted on the way (timeout 1 s)
    assert client.statistics()["retransmits"] >= 1
    assert client.retransmit_timeout_s == 1.0  # nothing measured
    _complete(client, keys, 10.0, 0.2)
    assert client.retransmit_timeout_s == 1.0  # measured fast: the configured floor holds
