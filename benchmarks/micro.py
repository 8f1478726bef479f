"""Microbenchmark: cost per message of encode, decode, sign, verify, frame and checksum.

Run: python benchmarks/micro.py [--seconds S]
Prints one line per operation with microseconds per call (best of 5 rounds),
in CPU time of the benchmarking thread (`time.thread_time`), which other
processes on a shared machine disturb less than wall time.
The rows marked "reference" time bft.codec's reference encoder (cbor2) and
reference decoder on the same message, which `encode` / `decode_untrusted`
use only for values and bytes their fast paths leave to them; "rejected"
times bytes that fail late (the fast reader gives up, the reference decoder
says why).
"""

from __future__ import annotations

import argparse
import os
import platform
import time

import crc32c

from bft import codec
from bft.crypto import Ed25519Keys, batch_digest
from bft.errors import MalformedMessage
from bft.messages import Batch, Prepare, PrePrepare, Proposal, Request
from transport.frame import decode_frame_untrusted, encode_frames


def bench(fn, seconds: float) -> float:
    """Best-of-5 CPU microseconds per call of fn()."""
    n = 1
    while True:  # calibrate so one round takes about seconds/5
        t0 = time.thread_time()
        for _ in range(n):
            fn()
        dt = time.thread_time() - t0
        if dt > seconds / 5 / 4:
            break
        n *= 2
    best = float("inf")
    for _ in range(5):
        t0 = time.thread_time()
        for _ in range(n):
            fn()
        best = min(best, (time.thread_time() - t0) / n)
    return best * 1e6


def _rejected(data: bytes) -> None:
    try:
        codec.decode_untrusted(data)
    except MalformedMessage:
        return
    raise AssertionError("expected MalformedMessage")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--seconds", type=float, default=1.0, help="time per benchmark")
    args = ap.parse_args()
    keys = Ed25519Keys(4, 1, seed=1)
    s0, s1, c0 = keys.signer("replica", 0), keys.signer("replica", 1), keys.signer("client", 0)
    verifier = keys.verifier(cache_entries=1)  # effectively uncached: measure the real verify
    prepare = Prepare(3, 1234, b"\x11" * 32, 1)
    signed_prepare = s1.sign(prepare)
    wire = codec.encode(signed_prepare)
    reqs = tuple(c0.sign(Request(b"x" * 16, t, 0)) for t in range(1, 11))
    batch = Batch(1_700_000_000_000_000, reqs)
    proposal = Proposal(s0.sign(PrePrepare(3, 1234, batch_digest(batch), 0)), batch)
    proposal_wire = codec.encode(proposal)
    request_wire = codec.encode(reqs[0])
    bad_wire = wire[:-1] + bytes([wire[-1] ^ 1]) + b"\x00"  # a trailing byte
    top, limits = codec._TOP_LEVEL_BY_TAG, codec.DEFAULT_LIMITS
    frames = encode_frames(1, 42, wire, 1400)
    other = [s1.sign(Prepare(3, i, b"\x22" * 32, 1)) for i in range(64)]
    k = [0]

    def verify_uncached():
        k[0] = (k[0] + 1) % 64
        verifier.verify(other[k[0]])

    rows = [
        ("encode Prepare (the body to sign)", lambda: codec.encode(prepare)),
        ("  reference encoder", lambda: codec._encode_reference(prepare)),
        ("encode Signed(Prepare)", lambda: codec.encode(signed_prepare)),
        ("  reference encoder", lambda: codec._encode_reference(signed_prepare)),
        ("decode_untrusted Signed(Prepare)", lambda: codec.decode_untrusted(wire)),
        ("  reference decoder", lambda: codec._decode_whole(top, wire, 1, limits)),
        ("  rejected (trailing byte)", lambda: _rejected(bad_wire)),
        ("decode_untrusted Signed(Request)", lambda: codec.decode_untrusted(request_wire)),
        ("decode_statement_untrusted Prepare", lambda: codec.decode_statement_untrusted(
            signed_prepare.body)),
        ("sign Prepare (encode + Ed25519)", lambda: s1.sign(prepare)),
        ("verify Signed(Prepare) (Ed25519)", verify_uncached),
        ("frame (encode_frames, 1 datagram)", lambda: encode_frames(1, 42, wire, 1400)),
        ("unframe (decode_frame_untrusted)", lambda: decode_frame_untrusted(frames[0])),
        ("crc32c of the datagram", lambda: crc32c.crc32c(frames[0])),
        ("encode Proposal (10 requests)", lambda: codec.encode(proposal)),
        ("  reference encoder", lambda: codec._encode_reference(proposal)),
        ("decode_untrusted Proposal (10 requests)", lambda: codec.decode_untrusted(proposal_wire)),
        ("  reference decoder", lambda: codec._decode_whole(top, proposal_wire, 1, limits)),
        ("batch_digest (10 requests)", lambda: batch_digest(batch)),
    ]
    print(f"# {platform.processor() or platform.machine()}, {os.cpu_count()} cores, "
          f"Python {platform.python_version()}, {time.strftime('%Y-%m-%d')}")
    print(f"# Signed(Prepare) is {len(wire)} bytes on the wire, Proposal(10) {len(proposal_wire)}")
    for name, fn in rows:
        print(f"{name:<42} {bench(fn, args.seconds):8.2f} us")


if __name__ == "__main__":
    main()
