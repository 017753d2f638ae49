"""The routes: operations (write scope), views (read scope), health, readiness, metrics, schema.

Every route but `/health` needs a bearer token (see `tokens`); writes
need one with write scope, and its name is the actor recorded on the
intent. A write may carry an `Idempotency-Key` header: sent again with
the same body it gets the first answer back and writes nothing; with
another body it is a 409.
"""

from __future__ import annotations

from collections.abc import Callable
from http import HTTPStatus
from typing import Annotated, Any

import msgspec
from litestar import Litestar, MediaType, Request, Response, get, post
from litestar.connection import ASGIConnection
from litestar.di import Provide
from litestar.exceptions import (
    NotAuthorizedException,
    PermissionDeniedException,
    ValidationException,
)
from litestar.handlers import BaseRouteHandler, HTTPRouteHandler
from litestar.openapi import OpenAPIConfig, ResponseSpec
from litestar.openapi.plugins import JsonRenderPlugin
from litestar.openapi.spec import Components, SecurityScheme
from litestar.params import HeaderParameter
from litestar.types import AnyCallable

from adapters.http.errors import EXCEPTION_HANDLERS, ApiError
from adapters.http.operations import OPERATIONS, Operation
from adapters.http.service import Service
from adapters.http.tokens import Scope, Token
from audit.lifecycle import Lifecycle, lifecycle
from ledger.errors import InvalidValue
from ledger.ids import parse_id
from ledger.origin import Origin
from ledger.reconciliation import Trigger
from ledger.results import OperationResult
from ledger.usage import LimitsRow, SwitchRow, every_limits_row, switch_rows
from projections import queries
from projections.balances import BalanceRow
from projections.pending import PendingIntentRow
from projections.positions import PositionRow
from recovery.context import Apply
from recovery.recover import Report, reconcile

SCOPE = "scope"
"""The key in a route's `opt` naming the scope it needs (read if unnamed); None: no token."""
QUERY = "query"
"""The key in a route's `opt` naming the query parameters it takes; any other is refused."""
BEARER: list[dict[str, list[str]]] = [{"bearer": []}]
"""The OpenAPI security of every route but /health."""
ERRORS: dict[int, str] = {
    HTTPStatus.BAD_REQUEST: "malformed_request: not JSON, a wrong type, an unknown field",
    HTTPStatus.UNAUTHORIZED: "unauthorized: no bearer token, or an unknown one",
    HTTPStatus.FORBIDDEN: "forbidden: a read token on a write",
    HTTPStatus.NOT_FOUND: "not_found: no such account, position or intent",
    HTTPStatus.CONFLICT: "idempotency_key_reused, request_in_flight, frozen, illegal_transition",
    HTTPStatus.UNPROCESSABLE_ENTITY: "invalid_value, insufficient_funds, refused, rejected",
    HTTPStatus.SERVICE_UNAVAILABLE: (
        "not_ready: recovery has not finished; store_unavailable, broker_unavailable, "
        "tokens_unreadable"
    ),
    HTTPStatus.GATEWAY_TIMEOUT: "outcome_unknown: the intent stays in flight for recovery",
}
"""What every failure may be; its body is always an `ApiError`."""


def _errors(*statuses: int) -> dict[int, ResponseSpec]:
    return {
        status: ResponseSpec(data_container=ApiError, description=ERRORS[status])
        for status in statuses
    }


READ_ERRORS = _errors(400, 401, 404, 503)
WRITE_ERRORS = _errors(400, 401, 403, 404, 409, 422, 503, 504)
WRITE = {SCOPE: Scope.WRITE}

IdempotencyKey = Annotated[
    str | None,
    HeaderParameter(
        name="Idempotency-Key",
        description="Makes a write safe to send again: same key and body, same answer.",
        min_length=1,
        max_length=128,
        pattern=r"^[!-~]+$",
    ),
]

OnBehalfOf = Annotated[
    str | None,
    HeaderParameter(
        name="Ledger-Operator",
        description="Who is at the client's terminal; recorded beside the token's name.",
        min_length=1,
        max_length=64,
        pattern=r"^[!-~][ -~]*$",
    ),
]


def authorise(connection: ASGIConnection[Any, Any, Any, Any], route: BaseRouteHandler) -> None:
    """The guard of every route: a known bearer token, with the scope the route needs.

    It also refuses query parameters the route does not take, or given
    twice: a misspelt or doubled filter must not silently answer for
    something else.
    """
    query = connection.query_params
    unknown = sorted(set(query) - set(route.opt.get(QUERY, ())))
    if unknown:
        raise ValidationException(f"unknown query parameter {unknown[0]!r}")
    repeated = sorted(name for name in query if len(query.getall(name)) > 1)
    if repeated:
        raise ValidationException(f"query parameter {repeated[0]!r} is given more than once")
    needed = route.opt.get(SCOPE, Scope.READ)
    if needed is None:
        return
    service: Service = connection.app.state.service
    scheme, _, secret = connection.headers.get("authorization", "").partition(" ")
    token = service.tokens.find(secret.strip()) if scheme.lower() == "bearer" else None
    if token is None:
        raise NotAuthorizedException("a bearer token is needed: `ledger token show` prints them")
    if not token.allows(needed):
        raise PermissionDeniedException(f"token {token.name!r} may only read")
    connection.state.token = token


def reading(
    path: str, summary: str, *, query: tuple[str, ...] = (), media_type: str = MediaType.JSON
) -> Callable[[AnyCallable], HTTPRouteHandler]:
    """A read route: a read token, the query parameters it takes, and its errors documented."""
    return get(
        path,
        opt={SCOPE: Scope.READ, QUERY: query},
        security=BEARER,
        responses=READ_ERRORS,
        summary=summary,
        media_type=media_type,
    )


def _operation_route(operation: type[Operation], summary: str) -> HTTPRouteHandler:
    async def perform(
        data: Operation,
        request: Request[Any, Any, Any],
        service: Service,
        idempotency_key: IdempotencyKey = None,
        operator: OnBehalfOf = None,
    ) -> OperationResult:
        token: Token = request.state.token
        origin = Origin(
            actor=token.name,
            key=idempotency_key,
            digest=None if idempotency_key is None else data.digest(),
            operator=operator,
        )
        result: OperationResult = await data.apply(service.running(), origin)
        return result

    # The route's body type is the operation's own Struct: Litestar decodes and
    # validates it, and the schema shows its fields.
    perform.__annotations__["data"] = operation
    perform.__name__ = perform.__qualname__ = operation.__name__.lower()
    return post(
        operation.path,
        status_code=HTTPStatus.OK,
        summary=summary,
        opt=WRITE,
        security=BEARER,
        responses=WRITE_ERRORS,
    )(perform)


@get("/health", opt={SCOPE: None}, summary="The process is alive (no token needed).")
async def health() -> dict[str, str]:
    return {"status": "alive"}


class Readiness(msgspec.Struct, frozen=True, kw_only=True):
    ready: bool
    epoch: int | None = None


@reading("/ready", "Whether the lease is held and recovery has finished.")
async def ready(service: Service) -> Response[Readiness]:
    engine = service.engine
    answer = Readiness(ready=service.ready, epoch=None if engine is None else engine.epoch)
    status = HTTPStatus.OK if answer.ready else HTTPStatus.SERVICE_UNAVAILABLE
    return Response(answer, status_code=status)


@reading("/metrics", "Counters in the Prometheus text format.", media_type=MediaType.TEXT)
async def metrics(service: Service) -> Response[str]:
    return Response(
        service.metrics.render(service.engine),
        media_type="text/plain; version=0.0.4; charset=utf-8",
    )


@reading(
    "/positions", "Open positions (all with include_closed).", query=("account", "include_closed")
)
async def positions(
    service: Service,
    account: str | None = None,
    include_closed: bool = False,  # noqa: FBT001, FBT002 - a query parameter
) -> list[PositionRow]:
    return await service.read(
        lambda store: queries.positions(store, account=account, include_closed=include_closed)
    )


@reading("/balances", "Balances: total, reserved, committed and available.", query=("account",))
async def balances(service: Service, account: str | None = None) -> list[BalanceRow]:
    return await service.read(lambda store: queries.balances(store, account=account))


@reading("/wal/pending", "Intents not yet completed, failed or rolled back.")
async def pending(service: Service) -> list[PendingIntentRow]:
    return await service.read(queries.pending_intents)


@reading("/wal/{intent_id:str}", "One intent's lifecycle, evidence and events.")
async def intent(service: Service, intent_id: str) -> Lifecycle:
    # Taken as text and parsed here: a malformed id is a malformed request
    # (400), not a route that does not exist (404).
    try:
        target = parse_id(intent_id, "intent")
    except InvalidValue as error:
        raise ValidationException(detail=str(error)) from None
    return await service.read(lambda store: lifecycle(store, target))


@reading("/limits", "Each account's limits and today's use of them.")
async def limits(service: Service) -> list[LimitsRow]:
    return await service.read(every_limits_row)


@reading("/kill-switch", "Every kill switch, over all accounts and each one.")
async def kill_switch(service: Service) -> list[SwitchRow]:
    return await service.read(switch_rows)


@reading("/reconciliation/plan", "What reconciliation would change now (nothing is applied).")
async def reconciliation_plan(service: Service) -> Report:
    return await reconcile(
        service.running(), trigger=Trigger.OPERATOR, apply=Apply.NOTHING, policy=service.policy
    )


def build_app(service: Service) -> Litestar:
    routes: list[HTTPRouteHandler] = [
        *(_operation_route(operation, summary) for operation, summary in OPERATIONS),
        health,
        ready,
        metrics,
        positions,
        balances,
        pending,
        intent,
        limits,
        kill_switch,
        reconciliation_plan,
    ]
    app = Litestar(
        route_handlers=routes,
        guards=[authorise],
        dependencies={"service": Provide(lambda: service, sync_to_thread=False, use_cache=True)},
        exception_handlers=EXCEPTION_HANDLERS,  # type: ignore[arg-type]
        openapi_config=OpenAPIConfig(
            title="ledger",
            version="1",
            path="/schema",
            render_plugins=[JsonRenderPlugin(path=["/", "/openapi.json"])],
            components=Components(
                security_schemes={"bearer": SecurityScheme(type="http", scheme="bearer")}
            ),
        ),
        debug=False,
    )
    app.state.service = service
    return app
