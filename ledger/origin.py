"""Who asked for an operation, and the key that makes asking twice safe."""

from __future__ import annotations

import re

import msgspec

from ledger.errors import InvalidValue

KEY_PATTERN = re.compile(r"[!-~]{1,128}")
"""An idempotency key: 1 to 128 visible ASCII characters (no spaces, nothing else)."""


class Origin(msgspec.Struct, frozen=True, kw_only=True):
    """Recorded on an operation's intent: its actor, and its idempotency key if it has one.

    `digest` fingerprints the request the key was first sent with; the same
    key sent with another request is refused, never taken for the first.
    """

    actor: str
    key: str | None = None
    digest: str | None = None

    def __post_init__(self) -> None:
        if not self.actor.strip():
            raise InvalidValue("actor", "an operation names who asked for it")
        if self.key is not None:
            if not KEY_PATTERN.fullmatch(self.key):
                raise InvalidValue(
                    "idempotency_key", "1 to 128 visible ASCII characters, without spaces"
                )
            if not self.digest:
                raise InvalidValue("idempotency_key", "a key needs the digest of its request")
