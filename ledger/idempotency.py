"""Idempotency keys: an operation sent twice under one key is carried out once.

A client that lost an answer (a timeout, its own crash) cannot know
whether its operation happened. It sends it again with the same key and
gets the first answer back, not a second order. A `KeyedRequest` is saved
in commit 1, in the same transaction as the intent it names, and holds
the answer once the commit that concludes the intent is made: so this
holds across restarts, and a key can never name two intents.

Keys are scoped by actor (the token's name): two clients choosing the
same key do not collide.
"""

from __future__ import annotations

from datetime import datetime
from typing import ClassVar, Self
from uuid import NAMESPACE_URL, UUID, uuid5

from ledger.aggregate import Aggregate
from ledger.errors import IllegalTransition, KeyReused, OperationRejected, RequestInFlight
from ledger.events import Event
from ledger.intent import CloseRequest, Intent, IntentStatus, OpenRequest, ProtectionChange
from ledger.origin import Origin
from ledger.position import position_id
from ledger.results import OperationResult
from ledger.writer import UnitOfWork

REQUEST_NAMESPACE = uuid5(NAMESPACE_URL, "ledger:idempotency-key")


def request_id(actor: str, key: str) -> UUID:
    return uuid5(REQUEST_NAMESPACE, f"{actor}\n{key}")


class RequestRecorded(Event, frozen=True, kw_only=True):
    stored_name: ClassVar[str] = "request.recorded"
    actor: str
    key: str
    digest: str
    intent_id: UUID


class RequestAnswered(Event, frozen=True, kw_only=True):
    stored_name: ClassVar[str] = "request.answered"
    result: OperationResult


REQUEST_EVENTS: tuple[type[Event], ...] = (RequestRecorded, RequestAnswered)


class KeyedRequest(Aggregate):
    """The operation an idempotency key names, and its answer once there is one."""

    actor: str
    key: str
    digest: str
    intent_id: UUID
    result: OperationResult | None

    @classmethod
    def record(cls, origin: Origin, intent_id: UUID, *, recorded_at: datetime) -> Self:
        if origin.key is None or origin.digest is None:
            raise IllegalTransition("only a request with a key is recorded")
        request = cls._blank(request_id(origin.actor, origin.key), version=0)
        request._trigger(
            RequestRecorded,
            recorded_at=recorded_at,
            actor=origin.actor,
            key=origin.key,
            digest=origin.digest,
            intent_id=intent_id,
        )
        return request

    def answer(self, result: OperationResult, *, recorded_at: datetime) -> None:
        if self.result is None:
            self._trigger(RequestAnswered, recorded_at=recorded_at, result=result)

    def _apply(self, event: Event) -> None:
        match event:
            case RequestRecorded():
                self.actor = event.actor
                self.key = event.key
                self.digest = event.digest
                self.intent_id = event.intent_id
                self.result = None
            case RequestAnswered():
                self.result = event.result
            case _:
                raise IllegalTransition(f"a keyed request cannot apply {type(event).__name__}")

    @classmethod
    def _create(cls, event: Event) -> Self:
        if not isinstance(event, RequestRecorded):
            raise IllegalTransition(f"a keyed request starts with request.recorded, not {event!r}")
        return super()._create(event)


def claim(unit: UnitOfWork, origin: Origin | None) -> None:
    """Refuse a key already recorded (checked first in commit 1, before anything changes)."""
    if origin is None or origin.key is None:
        return
    earlier = unit.get(KeyedRequest, request_id(origin.actor, origin.key))
    if earlier is not None:
        _check_same(earlier, origin)
        raise RequestInFlight(earlier.intent_id)


def earlier_answer(unit: UnitOfWork, origin: Origin | None) -> OperationResult | None:
    """The answer given to this key before; None if it is new.

    Raises `KeyReused` for a key first sent with another request,
    `RequestInFlight` while the first request's outcome is still open, and
    the first request's `OperationRejected` again if it was refused.
    """
    if origin is None or origin.key is None:
        return None
    earlier = unit.get(KeyedRequest, request_id(origin.actor, origin.key))
    if earlier is None:
        return None
    _check_same(earlier, origin)
    if earlier.result is not None:
        if earlier.result.reason is not None:
            raise OperationRejected(earlier.intent_id, earlier.result.reason)
        return earlier.result
    intent = unit.get(Intent, earlier.intent_id)
    if intent is None or not intent.is_terminal:
        raise RequestInFlight(earlier.intent_id)
    return _concluded_elsewhere(intent)


def answer(unit: UnitOfWork, intent: Intent, result: OperationResult, now: datetime) -> None:
    """Keep `result` as the answer to the key `intent` was sent with, if it had one."""
    origin = intent.origin
    if origin is None or origin.key is None:
        return
    request = unit.get(KeyedRequest, request_id(origin.actor, origin.key))
    if request is not None:
        request.answer(result, recorded_at=now)


def _check_same(earlier: KeyedRequest, origin: Origin) -> None:
    if earlier.digest != origin.digest:
        raise KeyReused(earlier.key, earlier.intent_id)


def _concluded_elsewhere(intent: Intent) -> OperationResult:
    """The answer to an intent concluded by recovery or an operator, not by its sender."""
    if intent.status is not IntentStatus.COMPLETED:
        reason = intent.evidence[-1].detail if intent.evidence else str(intent.status)
        raise OperationRejected(intent.id, f"{intent.status}: {reason}")
    payload = intent.payload
    position = None
    if isinstance(payload, OpenRequest):
        position = position_id(intent.id)
    elif isinstance(payload, CloseRequest | ProtectionChange):
        position = payload.position_id
    return OperationResult(
        intent_id=intent.id,
        kind=intent.kind,
        status=intent.status.value,
        client_id=intent.client_id,
        broker_ref=intent.broker_ref,
        position_id=position,
    )
