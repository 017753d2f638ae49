"""Every failure the API answers: JSON with a stable code and one line, never a traceback.

The codes are part of the API: clients branch on them, so they never
change meaning. The message is the same line the CLI prints.
"""

from __future__ import annotations

import logging
from http import HTTPStatus
from typing import Any

import msgspec
from eventsourcing.persistence import PersistenceError
from litestar import MediaType, Request, Response
from litestar.exceptions import (
    HTTPException,
    MethodNotAllowedException,
    NotAuthorizedException,
    NotFoundException,
    PermissionDeniedException,
    ValidationException,
)

from adapters.http.tokens import TokenError
from adapters.store import StoreError
from ledger.errors import (
    BrokerUnavailable,
    CurrencyMismatch,
    Frozen,
    IllegalTransition,
    InsufficientFunds,
    InvalidValue,
    KeyReused,
    LedgerError,
    NotFound,
    NotReady,
    OperationRejected,
    OutcomeUnknown,
    Refused,
    RequestInFlight,
)
from projections import ProjectionError

log = logging.getLogger("ledger.api")


class ApiError(msgspec.Struct, frozen=True, kw_only=True, omit_defaults=True):
    """The body of every answer that is not a success."""

    code: str
    message: str
    intent_id: str | None = None
    """The intent the failure concerns, when one was recorded (a rejection, an unknown outcome)."""


LEDGER_ERRORS: tuple[tuple[type[LedgerError], HTTPStatus, str], ...] = (
    (KeyReused, HTTPStatus.CONFLICT, "idempotency_key_reused"),
    (RequestInFlight, HTTPStatus.CONFLICT, "request_in_flight"),
    (OutcomeUnknown, HTTPStatus.GATEWAY_TIMEOUT, "outcome_unknown"),
    (OperationRejected, HTTPStatus.UNPROCESSABLE_ENTITY, "rejected"),
    (Refused, HTTPStatus.UNPROCESSABLE_ENTITY, "refused"),
    (InsufficientFunds, HTTPStatus.UNPROCESSABLE_ENTITY, "insufficient_funds"),
    (InvalidValue, HTTPStatus.UNPROCESSABLE_ENTITY, "invalid_value"),
    (CurrencyMismatch, HTTPStatus.UNPROCESSABLE_ENTITY, "invalid_value"),
    (NotFound, HTTPStatus.NOT_FOUND, "not_found"),
    (Frozen, HTTPStatus.CONFLICT, "frozen"),
    (IllegalTransition, HTTPStatus.CONFLICT, "illegal_transition"),
    (NotReady, HTTPStatus.SERVICE_UNAVAILABLE, "not_ready"),
    (BrokerUnavailable, HTTPStatus.SERVICE_UNAVAILABLE, "broker_unavailable"),
    (LedgerError, HTTPStatus.UNPROCESSABLE_ENTITY, "refused"),
)
"""Ledger errors by class, the first match wins (subclasses come before their bases)."""

HTTP_ERRORS: tuple[tuple[type[HTTPException], str], ...] = (
    (ValidationException, "malformed_request"),
    (NotAuthorizedException, "unauthorized"),
    (PermissionDeniedException, "forbidden"),
    (NotFoundException, "no_such_endpoint"),
    (MethodNotAllowedException, "method_not_allowed"),
    (HTTPException, "http_error"),
)


def answer(status: int, error: ApiError, headers: dict[str, str] | None = None) -> Response[bytes]:
    return Response(
        content=msgspec.json.encode(error),
        status_code=status,
        media_type=MediaType.JSON,
        headers=headers,
    )


def ledger_error(_: Request[Any, Any, Any], error: LedgerError) -> Response[bytes]:
    status, code = next((s, c) for kind, s, c in LEDGER_ERRORS if isinstance(error, kind))
    intent = getattr(error, "intent_id", None)
    return answer(
        status,
        ApiError(code=code, message=str(error), intent_id=None if intent is None else str(intent)),
    )


def http_error(_: Request[Any, Any, Any], error: HTTPException) -> Response[bytes]:
    code = next(c for kind, c in HTTP_ERRORS if isinstance(error, kind))
    if code == "http_error" and error.status_code == HTTPStatus.BAD_REQUEST:
        code = "malformed_request"  # e.g. a body that is not JSON at all
    message = str(error.detail)
    if isinstance(error, ValidationException) and isinstance(error.extra, list) and error.extra:
        # The first problem msgspec found, e.g. "Expected `str`, got `int` - at `$.amount`".
        first = error.extra[0]
        if isinstance(first, dict):
            where = first.get("key")
            message = str(first.get("message", message))
            message = f"{where}: {message}" if where else message
    headers = {"WWW-Authenticate": "Bearer"} if isinstance(error, NotAuthorizedException) else None
    return answer(error.status_code, ApiError(code=code, message=message), headers)


def store_error(_: Request[Any, Any, Any], error: Exception) -> Response[bytes]:
    return answer(
        HTTPStatus.SERVICE_UNAVAILABLE, ApiError(code="store_unavailable", message=str(error))
    )


def tokens_error(_: Request[Any, Any, Any], error: Exception) -> Response[bytes]:
    return answer(
        HTTPStatus.SERVICE_UNAVAILABLE, ApiError(code="tokens_unreadable", message=str(error))
    )


def too_deep(_: Request[Any, Any, Any], _error: RecursionError) -> Response[bytes]:
    # Only a request can nest this deeply: a body of thousands of brackets.
    return answer(
        HTTPStatus.BAD_REQUEST,
        ApiError(code="malformed_request", message="the body is nested too deeply"),
    )


def internal_error(_: Request[Any, Any, Any], error: Exception) -> Response[bytes]:
    # The traceback goes to the engine's log, never into an answer.
    log.error("internal error answering a request", exc_info=error)
    return answer(
        HTTPStatus.INTERNAL_SERVER_ERROR,
        ApiError(code="internal_error", message="internal error; the engine's log has the details"),
    )


EXCEPTION_HANDLERS = {
    LedgerError: ledger_error,
    HTTPException: http_error,
    StoreError: store_error,
    PersistenceError: store_error,
    ProjectionError: store_error,
    TokenError: tokens_error,
    RecursionError: too_deep,
    Exception: internal_error,
}
