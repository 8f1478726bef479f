"""What a STATUS or a FETCH-STATE can make a replica send is bounded (issue 21, item 4).

One 73-byte STATUS claiming to be behind made a replica resend a window of messages
(160 messages, 118 KB), every time it came; 200 identical FETCH-STATEs made it sign and send
its whole snapshot 200 times. Now a replica answers at most one STATUS per peer per
`status_answer_interval_s` and sends its snapshot at most once per requester per
`state_answer_interval_s`; the rest is dropped and counted. The planted replica (limits
turned off, as before) fails the same bound. The replica's time is the `now` it is handed:
every copy below arrives at one instant, then the clock moves past the interval.
"""

from __future__ import annotations

from typing import Any

import pytest

from bft import codec
from bft.effects import Broadcast, Send
from bft.messages import FetchState, Status
from bft.state import STATE_CHUNK_BYTES
from tests.harness import Net, Ops

COPIES = 200
ATTACKER = 3  # a faulty replica: its messages are validly signed in its own name


def busy_net(**overrides: Any) -> Net:
    """Four replicas that executed 60 requests (a stable checkpoint at 48, slots above it)."""
    net = Net(4, checkpoint_interval=16, log_window=64, **overrides)
    for k in range(60):
        net.request(k % 4, Ops.put(f"k{k}", b"v" * 100))
        net.advance(0.05)
    net.advance(0.5)
    r0 = net.replicas[0]
    assert r0 is not None and r0.log.low == 48 and r0.last_executed == 60
    return net


def flood(net: Net, statement: Any, copies: int = COPIES, at: float | None = None) -> tuple[int, int]:
    """Hand replica 0 `copies` identical signed copies of `statement` (from ATTACKER) at one
    instant; the messages and bytes it sends because of them."""
    r0 = net.replicas[0]
    assert r0 is not None
    wire = codec.encode(net.keys.signer("replica", ATTACKER).sign(statement))
    now = net.now if at is None else at
    messages = size = 0
    for _ in range(copies):
        for e in r0.receive(codec.decode_untrusted(wire, net.config.limits), now, net.wall(0)):
            if isinstance(e, (Send, Broadcast)):
                messages += 1
                size += len(codec.encode(e.message))
    return messages, size


def behind_status(net: Net, lag: int = 0) -> Status:
    """A STATUS of ATTACKER claiming to have executed nothing above replica 0's stable
    checkpoint: a correct replica resends it every batch above, with its certificate."""
    r0 = net.replicas[0]
    assert r0 is not None
    return Status(r0.view, r0.log.low, r0.log.low + lag, (), (), 0, ATTACKER)


def check_status_flood_is_bounded(net: Net) -> int:
    """200 copies of a STATUS claiming to be behind cost what one costs. Returns its answer."""
    net.now += 1.0  # (a quiet second: the attacker's last STATUS was answered long ago)
    once, once_bytes = flood(net, behind_status(net), copies=1)
    assert once > 10  # one answer is a real resend (what makes the flood worth bounding)
    net.now += 0.001  # (within the interval)
    more, more_bytes = flood(net, behind_status(net))
    assert more == 0 and more_bytes == 0, f"{COPIES} copies made {more} messages, {more_bytes} bytes"
    return once


def check_fetch_state_flood_is_bounded(net: Net) -> None:
    r0 = net.replicas[0]
    assert r0 is not None and r0.stable_digest is not None
    snapshot = r0.stable_snapshot or b""
    one = max(1, -(-len(snapshot) // STATE_CHUNK_BYTES))  # the chunks of one snapshot
    fetch = FetchState(r0.log.low, r0.stable_digest, ATTACKER)
    messages, size = flood(net, fetch)
    assert messages == one, f"{COPIES} FETCH-STATEs made {messages} chunks, {size} bytes"
    assert r0.counters["state_chunks_sent"] == one and size < len(snapshot) + 1024 * one


def test_identical_statuses_are_answered_once_per_interval() -> None:
    net = busy_net()
    r0 = net.replicas[0]
    assert r0 is not None
    check_status_flood_is_bounded(net)
    assert r0.drops["status_repeat"] == COPIES
    # another STATUS within the interval is dropped as well; after it, the peer is answered
    # again (a correct peer sends one per status_interval_s, above the limit: loss recovery
    # goes on)
    moved = behind_status(net, lag=1)
    assert flood(net, moved, copies=1) == (0, 0)
    assert r0.drops["status_rate_limited"] == 1
    later = net.now + net.config.status_answer_interval_s
    messages, _ = flood(net, behind_status(net), copies=1, at=later)
    assert messages > 10


def test_identical_fetch_states_send_the_snapshot_once_per_interval() -> None:
    net = busy_net()
    r0 = net.replicas[0]
    assert r0 is not None
    check_fetch_state_flood_is_bounded(net)
    assert r0.drops["fetch_state_repeat"] == COPIES - 1
    # a correct requester asks again after max(view-change timer, 0.5 s): it is answered
    before = r0.counters["state_chunks_sent"]
    fetch = FetchState(r0.log.low, r0.stable_digest or b"", ATTACKER)
    messages, _ = flood(net, fetch, copies=1, at=net.now + 0.5)
    assert messages >= 1 and r0.counters["state_chunks_sent"] == before + messages


def test_a_replica_without_the_limits_fails_the_bounds() -> None:
    """The planted replica: both limits off (what every replica did before issue 21)."""
    net = busy_net(status_answer_interval_s=0.0, state_answer_interval_s=0.0)
    with pytest.raises(AssertionError, match="copies made"):
        check_status_flood_is_bounded(net)
    with pytest.raises(AssertionError, match="FETCH-STATEs made"):
        check_fetch_state_flood_is_bounded(net)


def test_a_replica_that_missed_messages_still_catches_up() -> None:
    """Loss recovery and state transfer under the limits: a replica cut off for a while
    catches up (state transfer for what was garbage-collected, STATUS resends for the rest)."""
    net = Net(4, checkpoint_interval=8, log_window=32)
    net.isolate(3)
    for k in range(60):
        net.request(k % 4, Ops.put(f"k{k}", b"v" * 100))
        net.advance(0.05)
    net.heal()
    net.advance(5.0)
    assert len(set(net.digests().values())) == 1
    r3 = net.replicas[3]
    assert r3 is not None and r3.last_executed == net.replicas[0].last_executed  # type: ignore[union-attr]


@pytest.mark.parametrize("field", ["status_answer_interval_s", "state_answer_interval_s"])
def test_a_negative_answer_interval_is_refused_naming_the_field(field: str) -> None:
    from bft.config import ClusterConfig, ConfigError

    with pytest.raises(ConfigError, match=f"network.{field}"):
        ClusterConfig.local(4, **{field: -1.0})
    assert getattr(ClusterConfig.local(4, **{field: 0.0}), field) == 0.0  # 0: no limit
