"""Canonical CBOR encoding of messages, and strict decoding of untrusted bytes.

Every message is a CBOR array `[TAG, field1, field2, ...]` in the dataclass's
field order; nested messages are nested arrays; `Signed` is
`[20, body, signature]` where `body` is the encoding of the statement. No
maps, no floats, no tags: one message has exactly one encoding.
"""

from __future__ import annotations

from dataclasses import dataclass, fields
from typing import Any

import cbor2

from bft import messages as m


@dataclass(frozen=True, slots=True)
class Limits:
    """Bounds on what a decoder accepts from the network."""

    max_message_bytes: int = 4 * 1024 * 1024
    max_op_bytes: int = 64 * 1024
    max_text_chars: int = 4096
    max_items: int = 65536  # elements of any one array
    max_depth: int = 16  # nesting of arrays (Signed bodies included)


DEFAULT_LIMITS = Limits()


def _to_cbor(obj: Any) -> Any:
    if isinstance(obj, m.Signed):
        return [m.Signed.TAG, obj.body, obj.signature]
    if isinstance(obj, tuple):
        return [_to_cbor(x) for x in obj]
    tag = getattr(type(obj), "TAG", None)
    if tag is not None:
        return [tag, *(_to_cbor(getattr(obj, f.name)) for f in fields(obj))]
    return obj


def encode(message: Any) -> bytes:
    """Canonical CBOR bytes of a message (same message, same bytes)."""
    return cbor2.dumps(_to_cbor(message), canonical=True)
