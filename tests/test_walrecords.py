"""The replica's WAL record and snapshot codec (bft/walrecords.py).

The format is the one the replica wrote before issue 20 moved it out of bft/replica.py
(`cbor2.dumps([kind, codec.encode(message)])`): records written that way decode, and a
replica recovers a prepared certificate from them. Anything else raises MalformedMessage
with the record's problem named.
"""

from __future__ import annotations

import cbor2
import pytest
from harness import Net, Ops

from bft import codec
from bft.crypto import SimKeys, batch_digest
from bft.errors import MalformedMessage
from bft.messages import (
    Batch,
    Checkpoint,
    Commit,
    NewView,
    PreparedCert,
    Prepare,
    PrePrepare,
    Proposal,
    Request,
)
from bft.walrecords import (
    REC_CERT,
    REC_NEW_VIEW,
    REC_PROPOSAL,
    REC_SENT,
    decode_record,
    decode_snapshot,
    encode_record,
    encode_snapshot,
)

LIMITS = codec.DEFAULT_LIMITS


def _messages() -> dict[int, object]:
    keys = SimKeys(7, n_replicas=4, n_clients=1)
    r = [keys.signer("replica", i) for i in range(4)]
    request = keys.signer("client", 0).sign(Request(b"op", 1, 0))
    batch = Batch(5, (request,))
    d = batch_digest(batch)
    pp = r[0].sign(PrePrepare(0, 1, d, 0))
    cert = PreparedCert(pp, tuple(r[i].sign(Prepare(0, 1, d, i)) for i in (1, 2)))
    nv = r[1].sign(NewView(1, (), (), 1))
    return {REC_SENT: r[1].sign(Commit(0, 1, d, 1)), REC_PROPOSAL: Proposal(pp, batch),
            REC_CERT: cert, REC_NEW_VIEW: nv}


@pytest.mark.parametrize("kind", [REC_SENT, REC_PROPOSAL, REC_CERT, REC_NEW_VIEW])
def test_records_round_trip_in_the_format_written_before(kind: int) -> None:
    message = _messages()[kind]
    raw = encode_record(kind, message)  # type: ignore[arg-type]
    assert raw == cbor2.dumps([kind, codec.encode(message)])  # the pre-issue-20 writer
    got_kind, got = decode_record(raw, LIMITS)
    assert got_kind == kind and got == message
    assert codec.encode(got) == codec.encode(message)


def test_bad_records_raise_malformed_with_the_reason() -> None:
    msgs = _messages()
    cert_body = codec.encode(msgs[REC_CERT])
    cases = {
        b"\xff": "bad WAL record",
        cbor2.dumps([9, codec.encode(msgs[REC_SENT])]): "unknown kind 9",
        cbor2.dumps([REC_SENT, "text"]): "not a byte string",
        cbor2.dumps([REC_SENT, codec.encode(msgs[REC_PROPOSAL])]): "holds a Proposal",
        cbor2.dumps([REC_PROPOSAL, codec.encode(msgs[REC_SENT])]): "holds a Signed",
        cbor2.dumps([REC_CERT, codec.encode(msgs[REC_SENT])]): "",
        cbor2.dumps([REC_CERT, cert_body + b"\x00"]): "trailing",
        cbor2.dumps([REC_CERT, cert_body[:-3]]): "",
        cbor2.dumps([REC_SENT]): "bad WAL record",
    }
    for raw, reason in cases.items():
        with pytest.raises(MalformedMessage, match=reason or None):
            decode_record(raw, LIMITS)


def test_snapshot_round_trip_and_bad_snapshots() -> None:
    keys = SimKeys(7, n_replicas=4, n_clients=1)
    proof = tuple(keys.signer("replica", i).sign(Checkpoint(8, b"\x05" * 32, i)) for i in range(3))
    data = encode_snapshot(8, b"\x05" * 32, b"state", proof)
    assert data == cbor2.dumps([8, b"\x05" * 32, b"state", [codec.encode(s) for s in proof]])
    assert decode_snapshot(data, LIMITS) == (8, b"\x05" * 32, b"state", proof)
    for bad in (b"\x00", cbor2.dumps([8, b"d", b"s"]), cbor2.dumps([-1, b"d", b"s", []]),
                cbor2.dumps([8, b"d", b"s", ["x"]]), cbor2.dumps([8, b"d", b"s", [b"\x00"]]),
                cbor2.dumps([8, b"d", b"s", [codec.encode(_messages()[REC_PROPOSAL])]])):
        with pytest.raises(MalformedMessage):
            decode_snapshot(bad, LIMITS)


def test_a_replica_recovers_its_prepared_certificate_from_the_wal() -> None:
    """Crash recovery: the certificate persisted before the COMMIT comes back from the WAL
    (decoded directly, no re-encoding), and the slot counts as prepared again."""
    net = Net(4)
    net.request(0, Ops.put("a", b"1"), to=0)
    net.deliver()
    kinds = [decode_record(r, LIMITS)[0] for r in net.storage[1].records()]
    assert REC_CERT in kinds
    cert = net.replicas[1].log.get(1).cert
    assert cert is not None
    net.crash(1)
    net.restart(1)
    slot = net.replicas[1].log.get(1)
    assert slot.cert == cert and slot.prepared
    assert [p.statement.replica for p in slot.cert.prepares] == \
        [p.statement.replica for p in cert.prepares]
