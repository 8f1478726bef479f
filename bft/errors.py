"""The project's error types.

- `MalformedMessage`: bytes from the network that do not decode to a well-formed
  message. The only exception `bft.codec.decode_untrusted` raises.
- `ConfigError`: a configuration problem, naming the file, the field and the fix.
- `InvariantViolation`: a broken internal invariant (a bug): crash and recover.
- `ClientIdInUse`: another process holds the client id this one asked for.

A message that decodes but is invalid (bad signature, wrong view, ...) is not an
error: the replica drops it and records the reason.
"""

from __future__ import annotations


class BftError(Exception):
    """Base class of the project's errors."""


class MalformedMessage(BftError):
    """Bytes that are not a well-formed message (from an untrusted peer)."""


class ConfigError(BftError):
    """A configuration error with the file, the field and how to fix it."""

    def __init__(self, message: str, *, file: str | None = None, field: str | None = None,
                 fix: str | None = None) -> None:
        self.file = file
        self.field = field
        self.fix = fix
        parts = []
        if file:
            parts.append(str(file))
        if field:
            parts.append(field)
        where = ": ".join(parts)
        text = f"{where}: {message}" if where else message
        if fix:
            text += f" ({fix})"
        super().__init__(text)


class InvariantViolation(BftError):
    """An internal invariant broke: a bug, never caused by a peer's input."""


class ClientIdInUse(BftError):
    """Another process uses this client id (holds its lock in the state directory).

    Two processes signing as one client id would reach the same request numbers;
    `bft.node.claim_client_id` refuses the second one with this error."""
