"""Hypothesis strategies for every message type in `bft.messages`.

Every strategy draws well-formed messages within `bft.codec.DEFAULT_LIMITS`:
integers in [0, 2**63), digests of 32 bytes, signatures of 64 random bytes
(nothing here signs or verifies), small ops and blobs, short tuples. A
`Signed` is built the way a signer builds it: its body is `encode(statement)`.

Nested messages follow the protocol's shapes (a view change carries signed
checkpoints and prepared certificates, a new view carries signed view changes
and signed pre-prepares, a batch carries signed requests), which keeps their
nesting within `Limits.max_depth`.

Exports: `statements()`, `signed()`, `wire_messages()` (signed ones),
`all_wire_messages()` (with `MacReply`) and one strategy per
type: `requests()`, `pre_prepares()`, `prepares()`, `commits()`, `replies()`,
`checkpoints()`, `view_changes()`, `new_views()`, `statuses()`, `fetches()`,
`fetch_states()`, `state_chunks()`, `batches()`, `proposals()`,
`prepared_certs()`, `mac_replies()`.
"""

from __future__ import annotations

from hypothesis import strategies as st

from bft import messages as m
from bft.codec import encode

MAX_TUPLE = 3  # items per tuple field: enough to exercise arrays, small enough to be fast


def u64s() -> st.SearchStrategy[int]:
    """Integers a U64 field accepts, with the CBOR head-width boundaries likely."""
    edges = st.sampled_from([0, 23, 24, 255, 256, 65535, 65536, 2**32 - 1, 2**32, 2**63 - 1])
    return st.one_of(edges, st.integers(min_value=0, max_value=2**63 - 1))


def digests() -> st.SearchStrategy[bytes]:
    return st.binary(min_size=m.DIGEST_SIZE, max_size=m.DIGEST_SIZE)


def signatures() -> st.SearchStrategy[bytes]:
    return st.binary(min_size=m.SIGNATURE_SIZE, max_size=m.SIGNATURE_SIZE)


def macs() -> st.SearchStrategy[bytes]:
    return st.binary(min_size=m.MAC_SIZE, max_size=m.MAC_SIZE)


def ops() -> st.SearchStrategy[bytes]:
    """Small byte strings (ops, results, state chunks); limits are tested separately."""
    return st.binary(max_size=64)


def _tuples(strategy: st.SearchStrategy) -> st.SearchStrategy[tuple]:
    return st.lists(strategy, max_size=MAX_TUPLE).map(tuple)


# --------------------------------------------------------------------------
# Statements
# --------------------------------------------------------------------------


def requests() -> st.SearchStrategy[m.Request]:
    return st.builds(m.Request, op=ops(), timestamp=u64s(), client=u64s())


def pre_prepares() -> st.SearchStrategy[m.PrePrepare]:
    return st.builds(m.PrePrepare, view=u64s(), seq=u64s(), digest=digests(), replica=u64s())


def prepares() -> st.SearchStrategy[m.Prepare]:
    return st.builds(m.Prepare, view=u64s(), seq=u64s(), digest=digests(), replica=u64s())


def commits() -> st.SearchStrategy[m.Commit]:
    return st.builds(m.Commit, view=u64s(), seq=u64s(), digest=digests(), replica=u64s())


def replies() -> st.SearchStrategy[m.Reply]:
    return st.builds(
        m.Reply, view=u64s(), timestamp=u64s(), client=u64s(), replica=u64s(),
        request=digests(), result=ops(),
    )


def checkpoints() -> st.SearchStrategy[m.Checkpoint]:
    return st.builds(m.Checkpoint, seq=u64s(), state_digest=digests(), replica=u64s())


def view_changes() -> st.SearchStrategy[m.ViewChange]:
    return st.builds(
        m.ViewChange,
        view=u64s(),
        stable_seq=u64s(),
        state_digest=digests(),
        checkpoint_proof=_tuples(signed(checkpoints())),
        prepared=_tuples(prepared_certs()),
        replica=u64s(),
    )


def new_views() -> st.SearchStrategy[m.NewView]:
    return st.builds(
        m.NewView,
        view=u64s(),
        view_changes=_tuples(signed(view_changes())),
        pre_prepares=_tuples(signed(pre_prepares())),
        replica=u64s(),
    )


def statuses() -> st.SearchStrategy[m.Status]:
    return st.builds(
        m.Status,
        view=u64s(),
        stable_seq=u64s(),
        last_executed=u64s(),
        prepared=_tuples(u64s()),
        committed=_tuples(u64s()),
        in_view_change=u64s(),
        replica=u64s(),
    )


def fetches() -> st.SearchStrategy[m.Fetch]:
    return st.builds(m.Fetch, view=u64s(), seq=u64s(), digest=digests(), replica=u64s())


def fetch_states() -> st.SearchStrategy[m.FetchState]:
    return st.builds(m.FetchState, seq=u64s(), state_digest=digests(), replica=u64s())


def state_chunks() -> st.SearchStrategy[m.StateChunk]:
    return st.builds(
        m.StateChunk,
        seq=u64s(),
        state_digest=digests(),
        index=u64s(),
        count=u64s(),
        data=ops(),
        replica=u64s(),
    )


def statements() -> st.SearchStrategy[m.Statement]:
    """Any statement type (`bft.messages.STATEMENT_TYPES`)."""
    return st.one_of(
        requests(),
        pre_prepares(),
        prepares(),
        commits(),
        replies(),
        checkpoints(),
        view_changes(),
        new_views(),
        statuses(),
        fetches(),
        fetch_states(),
        state_chunks(),
    )


# --------------------------------------------------------------------------
# Envelope and carriers
# --------------------------------------------------------------------------


def _sign(statement: m.Statement, signature: bytes) -> m.Signed:
    return m.Signed(body=encode(statement), signature=signature, statement=statement)


def signed(inner: st.SearchStrategy | None = None) -> st.SearchStrategy[m.Signed]:
    """`Signed` envelopes of statements drawn from `inner` (default: `statements()`).

    The body is the canonical encoding of the statement; the signature is 64
    random bytes.
    """
    if inner is None:
        inner = statements()
    return st.builds(_sign, inner, signatures())


def batches() -> st.SearchStrategy[m.Batch]:
    return st.builds(m.Batch, batch_time=u64s(), requests=_tuples(signed(requests())))


def proposals() -> st.SearchStrategy[m.Proposal]:
    return st.builds(m.Proposal, pre_prepare=signed(pre_prepares()), batch=batches())


def prepared_certs() -> st.SearchStrategy[m.PreparedCert]:
    return st.builds(
        m.PreparedCert, pre_prepare=signed(pre_prepares()), prepares=_tuples(signed(prepares()))
    )


def _mac(reply: m.Reply, mac: bytes) -> m.MacReply:
    return m.MacReply(body=encode(reply), mac=mac, statement=reply)


def mac_replies() -> st.SearchStrategy[m.MacReply]:
    """`MacReply` envelopes: the body is the canonical encoding of a reply, the MAC 32 random
    bytes (nothing here computes one)."""
    return st.builds(_mac, replies(), macs())


def wire_messages() -> st.SearchStrategy[m.WireMessage]:
    """The signed messages that may stand at the top of a datagram: a `Signed` or `Proposal`."""
    return st.one_of(signed(), proposals())


def all_wire_messages() -> st.SearchStrategy[m.WireMessage]:
    """Whatever may stand at the top of a datagram payload (`TOP_LEVEL_TYPES`): a `Signed`,
    a `Proposal` or a `MacReply`."""
    return st.one_of(signed(), proposals(), mac_replies())
