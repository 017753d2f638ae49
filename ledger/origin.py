"""Who asked for an operation, and the key that makes asking twice safe."""

from __future__ import annotations

import re

import msgspec

from ledger.errors import InvalidValue

KEY_PATTERN = re.compile(r"[!-~]{1,128}")
"""An idempotency key: 1 to 128 visible ASCII characters (no spaces, nothing else)."""
OPERATOR_PATTERN = re.compile(r"[!-~][ -~]{0,63}")
"""An operator's name as a client sends it: 1 to 64 printable ASCII characters."""


class Origin(msgspec.Struct, frozen=True, kw_only=True):
    """Recorded on an operation's intent: its actor, and its idempotency key if it has one.

    `digest` fingerprints the request the key was first sent with; the same
    key sent with another request is refused, never taken for the first.
    """

    actor: str
    key: str | None = None
    digest: str | None = None
    operator: str | None = None
    """Who was at the terminal, as the client says: a one-shot command sent through the
    API names its user, while `actor` is the token it was sent with."""

    def __post_init__(self) -> None:
        if not self.actor.strip():
            raise InvalidValue("actor", "an operation names who asked for it")
        if self.operator is not None and not OPERATOR_PATTERN.fullmatch(self.operator):
            raise InvalidValue("operator", "1 to 64 visible characters")
        if self.key is not None:
            if not KEY_PATTERN.fullmatch(self.key):
                raise InvalidValue(
                    "idempotency_key", "1 to 128 visible ASCII characters, without spaces"
                )
            if not self.digest:
                raise InvalidValue("idempotency_key", "a key needs the digest of its request")
