"""Client order ids: derived from an intent, readable back into one.

A client id is what the broker sees of an intent. It must fit every venue
we target (1-32 characters of [A-Za-z0-9]: OKX, Binance, Bybit, Alpaca, an
IB orderRef, an MT5 comment), be the same for the same intent and attempt,
and say which writer epoch sent it, so orders from a zombie process that
lost its lease are recognisable.

Layout, fixed width, base 62: 22 characters of the intent id, 4 of the
epoch, 2 of the attempt. 28 characters in all.
"""

from __future__ import annotations

import string
from typing import NamedTuple
from uuid import UUID

from ledger.errors import InvalidValue

ALPHABET = string.digits + string.ascii_uppercase + string.ascii_lowercase
INTENT_WIDTH = 22  # 62**22 > 2**128
EPOCH_WIDTH = 4
ATTEMPT_WIDTH = 2
EPOCH_MAX = 62**EPOCH_WIDTH - 1
ATTEMPT_MAX = 62**ATTEMPT_WIDTH - 1
CLIENT_ID_LENGTH = INTENT_WIDTH + EPOCH_WIDTH + ATTEMPT_WIDTH


class ClientIdParts(NamedTuple):
    intent_id: UUID
    epoch: int
    attempt: int


def client_id(intent_id: UUID, *, epoch: int, attempt: int) -> str:
    """The client id the broker sees for `attempt` of `intent_id` sent in `epoch`."""
    if not 0 <= epoch <= EPOCH_MAX:
        raise InvalidValue("epoch", f"{epoch} is outside 0..{EPOCH_MAX}")
    if not 1 <= attempt <= ATTEMPT_MAX:
        raise InvalidValue("attempt", f"{attempt} is outside 1..{ATTEMPT_MAX}")
    return (
        _encode(intent_id.int, INTENT_WIDTH)
        + _encode(epoch, EPOCH_WIDTH)
        + _encode(attempt, ATTEMPT_WIDTH)
    )


def parse_client_id(text: str) -> ClientIdParts | None:
    """The intent, epoch and attempt behind `text`, or None if it is not one of ours."""
    if len(text) != CLIENT_ID_LENGTH or any(character not in ALPHABET for character in text):
        return None
    intent_number = _decode(text[:INTENT_WIDTH])
    if intent_number >= 2**128:
        return None
    epoch = _decode(text[INTENT_WIDTH : INTENT_WIDTH + EPOCH_WIDTH])
    attempt = _decode(text[INTENT_WIDTH + EPOCH_WIDTH :])
    if attempt < 1:
        return None
    return ClientIdParts(UUID(int=intent_number), epoch, attempt)


def _encode(number: int, width: int) -> str:
    digits = []
    for _ in range(width):
        number, digit = divmod(number, 62)
        digits.append(ALPHABET[digit])
    if number:  # pragma: no cover - callers check the range first
        raise InvalidValue("client_id", "number too large for its field")
    return "".join(reversed(digits))


def _decode(text: str) -> int:
    number = 0
    for character in text:
        number = number * 62 + ALPHABET.index(character)
    return number
