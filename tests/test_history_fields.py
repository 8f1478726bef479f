"""Histories record each op's fence and what the reply says of agreed time (issue 22 item 1):
`fence: [lock, token]` on a fenced write's lines, `result` (the store's result kind) on
completions, and on a granted lock its lease end `expiry_us` and the agreed batch time it
executed at (`agreed_us = expiry_us - ttl_ms * 1000`, bft/app.py: a lease expires at
batch_time + ttl). Failed before the fix: none of these fields were written (KeyError).
"""

from __future__ import annotations

from bft.app import Ops, Result
from bft.history import History, check_history_shape


def test_fence_result_and_agreed_time_are_recorded():
    h = History()
    h.invoke(1, Ops.lock("L", 250), 1)
    grant = h.complete(1, Result("granted", token=65536, expiry_us=1_250_000).encode(), 2)
    assert grant is not None
    assert (grant["value"], grant["result"], grant["expiry_us"], grant["agreed_us"]) == \
        (65536, "granted", 1_250_000, 1_000_000)
    inv = h.invoke(1, Ops.put("k", b"v", fence=("L", 65536)), 3)
    assert inv["fence"] == ["L", 65536]
    done = h.complete(1, Result("stale_token").encode(), 4)
    assert done is not None and done["fence"] == ["L", 65536] and done["type"] == "fail"
    h.invoke(2, Ops.lock("L", 100), 5)
    refused = h.complete(2, Result("locked", holder=1, expiry_us=1_250_000).encode(), 6)
    assert refused is not None
    assert (refused["holder"], refused["expiry_us"], refused["result"]) == (1, 1_250_000,
                                                                           "locked")
    h.invoke(2, Ops.delete("absent"), 7)
    gone = h.complete(2, Result("not_found").encode(), 8)
    assert gone is not None and (gone["type"], gone["result"]) == ("ok", "not_found")
    h.invoke(2, Ops.cas("k", b"x", b"y"), 9)
    failed = h.complete(2, Result("cas_failed", value=b"v").encode(), 10)
    assert failed is not None and failed["current"] == "v"
    h.invoke(3, Ops.delete("k", fence=("L", 7)), 11)
    h.finish(12)
    assert h.entries[-1]["type"] == "info" and h.entries[-1]["fence"] == ["L", 7]
    assert "fence" not in h.entries[0]
    assert check_history_shape(h.entries) == []
