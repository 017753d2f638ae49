"""Ids as people type them: on the command line, in a URL."""

from __future__ import annotations

from uuid import UUID

from ledger.errors import InvalidValue


def parse_id(text: str, field: str) -> UUID:
    """`text` as the id of an intent, position or account; one clear error if it is none."""
    try:
        return UUID(text)
    except ValueError:
        raise InvalidValue(field, f"{text!r} is not a valid id") from None
