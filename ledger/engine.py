"""The engine: every operation as a write-ahead intent, in this order.

1. validate: money rules, instrument, account and position state; a
   refusal raises, and nothing is written;
2. commit 1: the intent (submitted) and any reservation, one transaction;
3. the broker call, with the intent's client id;
4. commit 2: what the broker answered. ACCEPTED: the intent completes with
   the ledger events its fills imply; REJECTED: the intent fails and its
   reservation is released; UNKNOWN: the engine asks the broker (reads
   only, a bounded number of times) and decides from evidence, or leaves
   the intent in flight, reservation kept, for recovery. A write whose
   outcome is unknown is never sent again.

A caller's `await` returns only after the commit that decides its outcome
is durable. Deposits and withdrawals involve no broker call: their intent
is recorded and completed in one commit.
"""

from __future__ import annotations

import copy
import functools
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from functools import partial
from typing import Concatenate, ParamSpec, Self, TypeVar
from uuid import UUID, uuid4

import anyio
import anyio.to_thread

from ledger import idempotency, risk, settlement, stops
from ledger.account import Account, account_id, validate_account_name
from ledger.breaker import FAILURES_MAX_DEFAULT, CircuitBreaker, breaker_id
from ledger.errors import (
    BrokerUnavailable,
    Frozen,
    IllegalTransition,
    InvalidValue,
    KeyReused,
    LedgerError,
    NotFound,
    NotReady,
    OperationRejected,
    OutcomeUnknown,
    Refused,
    RequestInFlight,
    shown,
)
from ledger.idempotency import KeyedRequest
from ledger.instruments import Instrument, Price, Side, validate_symbol
from ledger.intent import (
    BalanceChange,
    CloseRequest,
    Evidence,
    Intent,
    IntentKind,
    Levels,
    OpenRequest,
    Payload,
    ProtectionChange,
)
from ledger.limits import Control
from ledger.money import Money
from ledger.origin import Origin
from ledger.ports import (
    Accepted,
    Broker,
    Found,
    LedgerStore,
    LookupUnsupported,
    Observer,
    OrderAction,
    OrderRequest,
    ProtectionRequest,
    Quote,
    Rejected,
    Unknown,
    Unobserved,
    WriteResult,
)
from ledger.position import Position, check_protection
from ledger.refusals import Refusal
from ledger.results import Closing, OperationResult
from ledger.writer import UnitOfWork, Writer, tagged, utc_now

T = TypeVar("T")
P = ParamSpec("P")

# A market order can fill worse than the quote it was priced from; the
# reservation holds this much more, so a fill within it is always covered.
RESERVATION_MARGIN = Decimal("0.01")
PRICE_PROTECTION = Decimal("0.002")
"""An open's market order fills at most this share worse than the quote it was priced from,
or the broker rejects it: its stop-loss risk is measured from that price, so it holds as filled."""
BROKER_TIMEOUT_SECONDS = 10.0
EVIDENCE_ATTEMPTS = 3
EVIDENCE_INTERVAL_SECONDS = 0.2
CHANGE_SETS = {True: Levels.STOP_LOSS, False: Levels.TAKE_PROFIT, None: Levels.BOTH}
"""What `_change_protection(stop_loss=...)` sets."""
QUOTE_AGE_MAX = timedelta(seconds=30)
"""An open priced from an older quote is refused: the market may have moved anywhere."""
PROBE_INTERVAL = timedelta(seconds=5)
"""How often an open circuit breaker lets a write try a read probe."""


OUTCOMES: tuple[tuple[type[BaseException], str], ...] = (
    (OperationRejected, "rejected"),
    (Refused, "refused"),
    (OutcomeUnknown, "unknown"),
    (KeyReused, "conflict"),
    (RequestInFlight, "conflict"),
    (NotReady, "not_ready"),
    (LedgerError, "invalid"),
)
"""How an operation that raised is counted, first match wins; anything else is an error."""


def _operation(
    name: str,
) -> Callable[
    [Callable[Concatenate[Engine, P], Awaitable[OperationResult]]],
    Callable[Concatenate[Engine, P], Awaitable[OperationResult]],
]:
    """Frame a public operation: refused until ready, answered from its key when sent again,
    and counted by outcome."""

    def frame(
        method: Callable[Concatenate[Engine, P], Awaitable[OperationResult]],
    ) -> Callable[Concatenate[Engine, P], Awaitable[OperationResult]]:
        @functools.wraps(method)
        async def run(engine: Engine, /, *args: P.args, **kwargs: P.kwargs) -> OperationResult:
            outcome = "error"
            try:
                engine._check_ready()  # noqa: SLF001 - the frame is the engine's own
                origin = kwargs.get("origin")
                if isinstance(origin, Origin) and origin.key is not None:
                    earlier = await engine.writer.execute(
                        partial(idempotency.earlier_answer, origin=origin)
                    )
                    if earlier is not None:
                        outcome = "repeated"
                        return earlier
                result = await method(engine, *args, **kwargs)
                outcome = result.status
            except BaseException as error:
                outcome = next(
                    (name for kind, name in OUTCOMES if isinstance(error, kind)), "error"
                )
                raise
            else:
                return result
            finally:
                engine.observer.operation(name, outcome)

        return run

    return frame


def _claiming(
    origin: Origin | None, record: Callable[[UnitOfWork], T]
) -> Callable[[UnitOfWork], T]:
    """Commit 1's `record`, refused first if its idempotency key is taken meanwhile."""
    if origin is None or origin.key is None:
        return record

    def claimed(unit: UnitOfWork) -> T:
        idempotency.claim(unit, origin)
        return record(unit)

    return claimed


class Engine:
    """Deposits, withdrawals and trades, each through a write-ahead intent."""

    def __init__(
        self,
        store: LedgerStore,
        broker: Broker,
        *,
        epoch: int,
        clock: Callable[[], datetime] = utc_now,
        broker_timeout: float = BROKER_TIMEOUT_SECONDS,
        quote_age_max: timedelta = QUOTE_AGE_MAX,
        breaker_failures_max: int = FAILURES_MAX_DEFAULT,
        observer: Observer | None = None,
        price_protection: Decimal = PRICE_PROTECTION,
    ) -> None:
        self.store = store
        self.broker = broker
        self.epoch = epoch
        self.broker_timeout = broker_timeout
        self.quote_age_max = quote_age_max
        self.price_protection = price_protection
        self.breaker_failures_max = breaker_failures_max
        self.breaker_id = breaker_id(broker.capabilities.venue)
        self.breaker_open = False
        """Mirrors the stored breaker (see `_breaker`), read without a trip through the writer."""
        self._unknown_in_row = 0
        """Writes in a row whose outcome stayed unknown (answer lost, no evidence found)."""
        self._probed_at: datetime | None = None
        self.observer = observer or Unobserved()
        self.writer = Writer(store, observer=self.observer, clock=clock)
        self.clock: Callable[[], datetime] = self.writer.now
        """What events are recorded at: in the writer, one time per commit (see `Writer.now`)."""
        self.ready = False
        """False until startup recovery is done: until then every operation is refused."""
        self.frozen: dict[tuple[UUID, str], UUID] = {}
        """(account id, symbol) -> the intent awaiting review that freezes its writes."""
        self.in_flight: set[UUID] = set()
        """Intents this engine is sending now: theirs to conclude, not recovery's."""
        self._instruments: dict[str, Instrument] = {}

    @classmethod
    @asynccontextmanager
    async def open(
        cls,
        store: LedgerStore,
        broker: Broker,
        *,
        holder: str,
        startup: Callable[[Engine], Awaitable[object]] | None = None,
        **options: object,
    ) -> AsyncIterator[Self]:
        """Take the store's lease (as `holder`), start the writer, serve until the block ends.

        `startup` (recovery) runs after the lease is taken and before the
        engine is ready: until it returns, every operation is refused.
        Without it the engine is ready at once (tests of the engine alone).
        """
        with store.lease(holder) as epoch:
            try:
                async with anyio.create_task_group() as tasks:
                    engine = cls(store, broker, epoch=epoch, **options)  # type: ignore[arg-type]
                    await tasks.start(engine.writer.run)
                    try:
                        engine.breaker_open = await engine.writer.execute(engine._breaker_is_open)
                        if startup is not None:
                            await startup(engine)
                        engine.ready = True
                        yield engine
                    finally:
                        engine.writer.close()
            except BaseExceptionGroup as group:
                # The task group wraps whatever left the caller's block; a
                # caller expects its own exception back, not a group of one.
                if len(group.exceptions) == 1:
                    raise group.exceptions[0] from None
                raise

    # Reads ------------------------------------------------------------------------------

    async def account(self, name: str) -> Account | None:
        """A copy of the account called `name`, as committed (read through the writer).

        A copy: the writer owns its aggregates, and no other thread may hold one.
        """
        return await self.writer.execute(
            lambda unit: copy.deepcopy(unit.get(Account, account_id(name)))
        )

    # Balance operations ---------------------------------------------------------------

    @_operation("deposit")
    async def deposit(
        self, account: str, amount: object, currency: str, *, origin: Origin | None = None
    ) -> OperationResult:
        """Credit `account`, opening it in `currency` if it is new."""
        money = Money.parse(amount, currency, positive=True)
        validate_account_name(account)
        intent_id = uuid4()

        def record(unit: UnitOfWork) -> Intent:
            now = self.clock()
            ledger_account = unit.get(Account, account_id(account))
            if ledger_account is None:
                ledger_account = Account.open(account, currency, recorded_at=now)
                unit.add(ledger_account)
            elif ledger_account.currency != currency:
                raise InvalidValue(
                    "currency", f"account {account} holds {ledger_account.currency}, not {currency}"
                )
            # The deposit first: it refuses (a total past what the ledger holds) before
            # anything else changes.
            ledger_account.deposit(money, recorded_at=now, intent_id=intent_id)
            return self._balance_intent(unit, intent_id, ledger_account, money, origin, add=True)

        return _balance_result(await self.writer.execute(_claiming(origin, record)))

    @_operation("withdraw")
    async def withdraw(
        self, account: str, amount: object, currency: str, *, origin: Origin | None = None
    ) -> OperationResult:
        """Debit `account`; refused if it would take available funds below zero."""
        money = Money.parse(amount, currency, positive=True)
        intent_id = uuid4()

        def record(unit: UnitOfWork) -> Intent:
            ledger_account = _require_account(unit, account)
            if ledger_account.currency != currency:
                raise InvalidValue(
                    "currency", f"account {account} holds {ledger_account.currency}, not {currency}"
                )
            # The withdrawal first: it refuses (insufficient funds) before changing anything.
            ledger_account.withdraw(money, recorded_at=self.clock(), intent_id=intent_id)
            return self._balance_intent(unit, intent_id, ledger_account, money, origin, add=False)

        return _balance_result(await self.writer.execute(_claiming(origin, record)))

    def _balance_intent(
        self,
        unit: UnitOfWork,
        intent_id: UUID,
        account: Account,
        money: Money,
        origin: Origin | None,
        *,
        add: bool,
    ) -> Intent:
        kind = IntentKind.BALANCE_ADD if add else IntentKind.BALANCE_DEDUCT
        payload = BalanceChange(amount=money)
        intent = self._submitted(unit, intent_id, kind, account, payload, origin=origin)
        now = self.clock()
        intent.complete(
            Evidence(source="ledger", observed_at=now, detail="no broker call"), recorded_at=now
        )
        return intent

    # Trading operations ---------------------------------------------------------------

    @_operation("open")
    async def open_position(
        self,
        account: str,
        symbol: str,
        side: Side | str,
        quantity: object,
        *,
        stop_loss: object = None,
        take_profit: object = None,
        origin: Origin | None = None,
    ) -> OperationResult:
        """Open a position with a market order, optionally protected by SL and TP."""
        instrument = await self.instrument(symbol)
        side = Side(side)
        size = instrument.quantity(quantity)
        stop = None if stop_loss is None else instrument.price(stop_loss, field="stop_loss")
        target = None if take_profit is None else instrument.price(take_profit, field="take_profit")
        check_protection(instrument, side, stop, target)
        refusing = self._refusals(account_id(account), "open", symbol)
        async with refusing:
            await self._check_breaker()
            quote = await self._market(symbol)
            if stop is not None:
                stops.check_side(side, stop, quote)
        entry = Price(quote.ask if side is Side.LONG else quote.bid)
        worst = instrument.worst_fill(side, entry, self.price_protection)
        reservation = instrument.funds_required(size, Price(entry * (1 + RESERVATION_MARGIN)))
        intent_id = uuid4()
        payload = OpenRequest(
            symbol=symbol, side=side, quantity=size, stop_loss=stop, take_profit=target
        )

        def record(unit: UnitOfWork) -> Intent:
            ledger_account = _require_account(unit, account)
            if ledger_account.currency != instrument.quote_currency:
                raise InvalidValue(
                    "symbol",
                    f"{symbol} settles in {instrument.quote_currency}; "
                    f"account {account} holds {ledger_account.currency}",
                )
            self._check_not_frozen(ledger_account.id, symbol)
            now = self.clock()
            at_risk = risk.check_new_open(
                unit,
                ledger_account,
                instrument,
                side,
                size,
                worst,
                stop,
                now.astimezone(UTC).date(),
            )
            # The reservation first: it refuses (insufficient funds) before changing anything.
            ledger_account.reserve(intent_id, reservation, recorded_at=now)
            return self._submitted(
                unit,
                intent_id,
                IntentKind.POSITION_OPEN,
                ledger_account,
                payload,
                reservation,
                broker_time=quote.time,
                at_risk=at_risk,
                origin=origin,
            )

        async with refusing:
            intent = await self._commit_1(intent_id, _claiming(origin, record))
        order = OrderRequest(
            client_id=intent.client_id,
            account=account,
            action=OrderAction.OPEN,
            symbol=symbol,
            side=side,
            quantity=size,
            stop_loss=stop,
            take_profit=target,
            tag=intent.client_id[:8],
            worst_price=worst,
        )
        return await self._send(intent, self.broker.submit(order), order)

    @_operation("close")
    async def close_position(
        self, position: UUID, quantity: object = None, *, origin: Origin | None = None
    ) -> OperationResult:
        """Close all of a position, or `quantity` of it (allowed under a kill switch)."""
        async with self._refusals(None, "close", str(position)):
            await self._check_breaker()
        broker_time = await self._call(self.broker.server_time())
        intent_id = uuid4()

        def record(unit: UnitOfWork) -> tuple[Intent, OrderRequest]:
            held = settlement.open_position(unit, position)
            size = held.quantity if quantity is None else held.instrument.quantity(quantity)
            if size > held.quantity:
                raise InvalidValue("quantity", f"{size} is more than the {held.quantity} open")
            ledger_account, broker_ref = _at_broker(unit, held)
            intent = self._submitted(
                unit,
                intent_id,
                IntentKind.POSITION_CLOSE,
                ledger_account,
                CloseRequest(position_id=position, quantity=size),
                broker_time=broker_time,
                origin=origin,
            )
            order = OrderRequest(
                client_id=intent.client_id,
                account=ledger_account.name,
                action=OrderAction.CLOSE if size == held.quantity else OrderAction.REDUCE,
                symbol=held.instrument.symbol,
                side=held.side,
                quantity=size,
                position_ref=broker_ref,
                tag=intent.client_id[:8],
            )
            return intent, order

        intent, order = await self._commit_1(intent_id, _claiming(origin, record))
        return await self._send(intent, self.broker.submit(order), order)

    async def flatten(self, account: UUID | None) -> list[Closing]:
        """Close every open position of `account` (None: of every account), each by an intent.

        What the kill switch's `--flatten` runs. Positions with a close
        already in flight, or a close order still working at the broker
        (the rest of a partly filled one), are left to it: a second close
        could close twice, and on a netting venue open the other way.
        Every close is tried, whatever the others do; each one's result or
        error is returned.
        """
        self._check_ready()
        working = {
            order.position_ref
            for order in await self._call(self.broker.open_orders())
            if order.action is not OrderAction.OPEN and order.position_ref is not None
        }
        held, closing = await self.writer.execute(
            lambda unit: self._flatten_targets(unit, account, working)
        )
        results: list[Closing] = []

        async def close(position: UUID) -> None:
            try:
                result = await self.close_position(position)
            except LedgerError as error:
                results.append(Closing(position_id=position, error=str(error)))
            else:
                results.append(Closing(position_id=position, result=result))

        async with anyio.create_task_group() as tasks:
            for position in held:
                if position not in closing:
                    tasks.start_soon(close, position)
        return results

    def _flatten_targets(
        self, unit: UnitOfWork, account: UUID | None, working: set[str]
    ) -> tuple[list[UUID], set[UUID]]:
        """Open positions of `account`, and those a close in flight or `working` (broker
        references with a close order working) already closes."""
        held = self._held(unit, account)
        closing = {position.id for position in held if position.broker_ref in working}
        for intent_id in self.store.unfinished_intents():
            intent = unit.get(Intent, intent_id)
            if intent is not None and isinstance(intent.payload, CloseRequest):
                closing.add(intent.payload.position_id)
        return [position.id for position in held], closing

    async def open_positions(self, account: UUID | None) -> list[UUID]:
        """The open positions of `account` (None: of every account), as committed."""
        held = await self.writer.execute(lambda unit: self._held(unit, account))
        return [position.id for position in held]

    def _held(self, unit: UnitOfWork, account: UUID | None) -> list[Position]:
        held = []
        for position_id in self.store.open_positions():
            position = unit.get(Position, position_id)
            if position is not None and position.is_open and account in {None, position.account_id}:
                held.append(position)
        return held

    @_operation("set-sl")
    async def change_stop_loss(
        self, position: UUID, price: object, *, origin: Origin | None = None
    ) -> OperationResult:
        return await self._change_protection(position, price, stop_loss=True, origin=origin)

    @_operation("set-tp")
    async def change_take_profit(
        self, position: UUID, price: object, *, origin: Origin | None = None
    ) -> OperationResult:
        return await self._change_protection(position, price, stop_loss=False, origin=origin)

    async def restore_protection(
        self, position: UUID, *, plan_id: UUID | None = None
    ) -> OperationResult:
        """Send the ledger's stop-loss and take-profit of `position` to the broker again.

        For a broker that lost or changed them: the levels the ledger last
        had confirmed go out through an intent like any other change.
        Recovery's tool: it works before the engine is ready.
        """
        return await self._change_protection(position, None, stop_loss=None, plan_id=plan_id)

    async def _change_protection(
        self,
        position: UUID,
        price: object,
        *,
        stop_loss: bool | None,
        plan_id: UUID | None = None,
        origin: Origin | None = None,
    ) -> OperationResult:
        """Change one level (`stop_loss` True: stop, False: target) or resend both (None)."""
        operation = {True: "set-sl", False: "set-tp", None: "restore-protection"}[stop_loss]
        refusing = self._refusals(None, operation, str(position))
        async with refusing:
            await self._check_breaker()
        broker_time = await self._call(self.broker.server_time())
        quote = await self._stop_quote(position, price) if stop_loss else None
        intent_id = uuid4()

        def record(unit: UnitOfWork) -> tuple[Intent, ProtectionRequest]:
            held = settlement.open_position(unit, position)
            ledger_account, broker_ref = _at_broker(unit, held)
            self._check_not_frozen(ledger_account.id, held.instrument.symbol)
            stop, target = held.stop_loss, held.take_profit
            if stop_loss is not None:
                field = "stop_loss" if stop_loss else "take_profit"
                level = None if price is None else held.instrument.price(price, field=field)
                stop, target = (level, target) if stop_loss else (stop, level)
            check_protection(held.instrument, held.side, stop, target)
            if stop_loss:
                if stop is not None and quote is not None:
                    stops.check_side(held.side, stop, quote)
                risk.check_stop_change(
                    unit, ledger_account, held, stop, self.clock().astimezone(UTC).date()
                )
            intent = self._submitted(
                unit,
                intent_id,
                IntentKind.POSITION_UPDATE,
                ledger_account,
                ProtectionChange(
                    position_id=position,
                    stop_loss=stop,
                    take_profit=target,
                    sets=CHANGE_SETS[stop_loss],
                ),
                broker_time=broker_time,
                origin=origin,
            )
            levels: dict[str, Decimal | None] = {}
            if stop_loss is not False:
                levels["stop_loss"] = stop
            if stop_loss is not True:
                levels["take_profit"] = target
            request = ProtectionRequest(
                client_id=intent.client_id,
                account=ledger_account.name,
                position_ref=broker_ref,
                **levels,
            )
            return intent, request

        async with refusing:
            intent, request = await self._commit_1(
                intent_id, _claiming(origin, tagged(record, plan_id))
            )
        return await self._send(intent, self.broker.amend_protection(request), None, plan_id)

    async def _stop_quote(self, position: UUID, price: object) -> Quote | None:
        """The market a new stop-loss must lie below (a long) or above (a short)."""
        if price is None:
            return None
        held = await self.writer.execute(lambda unit: settlement.open_position(unit, position))
        return await self._call(self.broker.quote(held.instrument.symbol))

    def _submitted(
        self,
        unit: UnitOfWork,
        intent_id: UUID,
        kind: IntentKind,
        account: Account,
        payload: Payload,
        reservation: Money | None = None,
        *,
        broker_time: datetime | None = None,
        at_risk: Money | None = None,
        origin: Origin | None = None,
    ) -> Intent:
        """Commit 1's intent: recorded and marked submitted, as it goes to the broker next.

        Called last in commit 1, once nothing can refuse any more; with the
        intent goes the record of its idempotency key, if it was sent one.
        """
        now = self.clock()
        intent = Intent.record(
            intent_id,
            kind=kind,
            account_id=account.id,
            payload=payload,
            epoch=self.epoch,
            recorded_at=now,
            reservation=reservation,
            broker_time=broker_time,
            at_risk=at_risk,
            origin=origin,
        )
        intent.submit(recorded_at=now)
        unit.add(intent)
        if origin is not None and origin.key is not None:
            unit.add(KeyedRequest.record(origin, intent_id, recorded_at=now))
        return intent

    def _check_ready(self) -> None:
        if not self.ready:
            raise NotReady

    def _check_not_frozen(self, account: UUID, symbol: str) -> None:
        waiting = self.frozen.get((account, symbol))
        if waiting is not None:
            raise Frozen(symbol, waiting)

    # The broker call and commit 2 -----------------------------------------------------

    async def instrument(self, symbol: str) -> Instrument:
        """The broker's terms for `symbol`, asked once per engine."""
        if symbol not in self._instruments:
            validate_symbol(symbol)
            instrument = await self._call(self.broker.instrument(symbol))
            if instrument is None:
                raise InvalidValue("symbol", f"{shown(symbol)} is not traded at this broker")
            self._instruments[symbol] = instrument
        return self._instruments[symbol]

    async def _call(self, call: Awaitable[T]) -> T:
        started = time.perf_counter()
        try:
            with anyio.fail_after(self.broker_timeout):
                return await call
        except TimeoutError:
            raise BrokerUnavailable(self.broker_timeout) from None
        finally:
            self.observer.broker_call(time.perf_counter() - started)

    async def _commit_1(self, intent_id: UUID, record: Callable[[UnitOfWork], T]) -> T:
        """Record the intent; from then until `_send` ends it is this engine's to conclude."""
        # Marked before the commit: a reconciliation pass that sees the intent
        # committed must already see it claimed, or it could decide it too.
        self.in_flight.add(intent_id)
        try:
            return await self.writer.execute(record)
        except BaseException:
            self.in_flight.discard(intent_id)
            raise

    async def _send(
        self,
        intent: Intent,
        call: Awaitable[WriteResult],
        order: OrderRequest | None,
        plan_id: UUID | None = None,
    ) -> OperationResult:
        try:
            try:
                result = await self._call(call)
            except TimeoutError:
                result = Unknown(cause=f"no answer within {self.broker_timeout} s")
            if isinstance(result, Unknown):
                found = await self._evidence(intent, order)
                if found is None:
                    await self._broker_failed(result.cause)
                    raise OutcomeUnknown(intent.id, result.cause)
                result = found
            self._unknown_in_row = 0  # an outcome known, from the answer or the evidence
            return await self._commit_2(intent, result, plan_id)
        finally:
            self.in_flight.discard(intent.id)

    async def _commit_2(
        self, intent: Intent, result: WriteResult, plan_id: UUID | None
    ) -> OperationResult:
        concluded = await self.writer.execute(
            tagged(lambda unit: self._conclude(unit, intent.id, result), plan_id)
        )
        if concluded.reason is not None:
            raise OperationRejected(intent.id, concluded.reason)
        return concluded

    def _conclude(self, unit: UnitOfWork, intent_id: UUID, result: WriteResult) -> OperationResult:
        now = self.clock()
        if isinstance(result, Rejected):
            # Not raised here: the failure must be committed first (see _send).
            return settlement.fail(unit, intent_id, result, now)
        if not isinstance(result, Accepted):  # pragma: no cover - Unknown never gets here
            raise IllegalTransition(f"cannot conclude intent {intent_id} from {result!r}")
        evidence = Evidence(
            source="submit",
            observed_at=now,
            broker_ref=result.broker_ref,
            detail=settlement.describe_fills(result.fills),
        )
        return settlement.complete(unit, intent_id, result, evidence, now, self.known_instrument)

    # Guards before the broker is called -------------------------------------------------

    async def _market(self, symbol: str) -> Quote:
        """A quote to price an open from: refused if the market is closed or the quote stale."""
        quote = await self._call(self.broker.quote(symbol))
        if not quote.market_open:
            raise Refused(Control.MARKET_CLOSED, f"the {symbol} market is closed")
        now = await self._call(self.broker.server_time())
        age = now - quote.time
        if age > self.quote_age_max:
            raise Refused(
                Control.STALE_QUOTE,
                f"the {symbol} quote is {age.total_seconds():.0f} s old "
                f"(at most {self.quote_age_max.total_seconds():.0f} s)",
            )
        return quote

    def _stored_breaker(self, unit: UnitOfWork) -> CircuitBreaker | None:
        return unit.get(CircuitBreaker, self.breaker_id)

    def _breaker_is_open(self, unit: UnitOfWork) -> bool:
        breaker = self._stored_breaker(unit)
        return breaker is not None and breaker.is_open

    async def _check_breaker(self) -> None:
        """Refuse a write while the breaker is open, unless a read probe shows the broker back."""
        if not self.breaker_open:
            return
        now = self.clock()
        if self._probed_at is None or now - self._probed_at >= PROBE_INTERVAL:
            self._probed_at = now
            try:
                await self._call(self.broker.server_time())
            except TimeoutError:
                pass
            else:
                await self.broker_answered("server time")
                return
        raise Refused(
            Control.CIRCUIT_BREAKER,
            f"writes to {self.broker.capabilities.venue} are paused after "
            f"{self.breaker_failures_max} unknown outcomes in a row; a read probe will close it",
        )

    async def _broker_failed(self, cause: str) -> None:
        """A write's outcome is unknown; the breaker opens once that happened enough in a row."""
        self._unknown_in_row += 1
        if self.breaker_open or self._unknown_in_row < self.breaker_failures_max:
            return
        failures = self._unknown_in_row

        def record(unit: UnitOfWork) -> None:
            breaker = self._stored_breaker(unit)
            if breaker is None:
                breaker = CircuitBreaker.start(self.broker.capabilities.venue)
                unit.add(breaker)
            if not breaker.is_open:
                breaker.open(failures, cause, recorded_at=self.clock())

        await self.writer.execute(record)
        self.breaker_open = True
        self._probed_at = self.clock()  # the first probe waits one interval

    async def broker_answered(self, probe: str) -> None:
        """A read the broker answered: an open breaker closes (recorded, with the read named)."""
        if not self.breaker_open:
            return

        def record(unit: UnitOfWork) -> None:
            breaker = self._stored_breaker(unit)
            if breaker is not None and breaker.is_open:
                breaker.close(probe, recorded_at=self.clock())

        await self.writer.execute(record)
        self.breaker_open = False
        self._unknown_in_row = 0

    def _refusals(self, account: UUID | None, operation: str, subject: str) -> _RecordRefusals:
        return _RecordRefusals(self, account, operation, subject)

    async def record_refusal(
        self, account: UUID | None, operation: str, subject: str, refusal: Refused
    ) -> None:
        """Keep a refused operation in the audit trail (the refusal itself changed nothing)."""

        def record(unit: UnitOfWork) -> None:
            unit.add(
                Refusal.record(
                    account_id=account,
                    operation=operation,
                    subject=subject,
                    control=refusal.control,
                    detail=refusal.detail,
                    recorded_at=self.clock(),
                )
            )

        await self.writer.execute(record)

    def known_instrument(self, symbol: str) -> Instrument:
        """The terms of `symbol`, already asked of the broker by `instrument()`."""
        return self._instruments[symbol]

    async def _evidence(self, intent: Intent, order: OrderRequest | None) -> Accepted | None:
        """Ask the broker (reads only) whether an unanswered order happened.

        Returns the acceptance it finds, or None: then the intent stays in
        flight. Never a guess: a missing order is not taken as a rejection,
        because the broker may not show it yet (its visibility lag).
        """
        if order is None:
            return None
        for attempt in range(EVIDENCE_ATTEMPTS):
            if attempt:
                await anyio.sleep(EVIDENCE_INTERVAL_SECONDS)
            try:
                found = await self._call(self.broker.lookup(intent.client_id))
            except TimeoutError:
                continue
            if isinstance(found, LookupUnsupported):
                return None
            if isinstance(found, Found) and found.fills:
                return Accepted(broker_ref=found.order.broker_ref, fills=found.fills)
        return None


class _RecordRefusals:
    """Around a step of an operation: a `Refused` leaving it is recorded, then raised on.

    An operation on a position names no account; the position's is looked
    up only when there is a refusal to record.
    """

    def __init__(self, engine: Engine, account: UUID | None, operation: str, subject: str) -> None:
        self.engine = engine
        self.account = account
        self.operation = operation
        self.subject = subject

    async def __aenter__(self) -> None:
        return None

    async def __aexit__(
        self, kind: type[BaseException] | None, error: BaseException | None, _: object
    ) -> bool:
        if isinstance(error, Refused):
            account = self.account
            if account is None:
                account = await self.engine.writer.execute(self._account_of_position)
            await self.engine.record_refusal(account, self.operation, self.subject, error)
        return False

    def _account_of_position(self, unit: UnitOfWork) -> UUID | None:
        try:
            held = unit.get(Position, UUID(self.subject))
        except ValueError:  # pragma: no cover - subjects of position operations are ids
            return None
        return None if held is None else held.account_id


def _require_account(unit: UnitOfWork, name: str) -> Account:
    account = unit.get(Account, account_id(name))
    if account is None:
        raise NotFound(f"no account {name!r}: deposit into it first")
    return account


def _at_broker(unit: UnitOfWork, held: Position) -> tuple[Account, str]:
    """The account and the broker's reference a position is known by at the broker."""
    account = unit.get(Account, held.account_id)
    if account is None or held.broker_ref is None:
        raise NotFound(f"position {held.id} has no account or broker reference")
    return account, held.broker_ref


def _balance_result(intent: Intent) -> OperationResult:
    return OperationResult(
        intent_id=intent.id,
        kind=intent.kind,
        status=intent.status.value,
        client_id=intent.client_id,
    )
