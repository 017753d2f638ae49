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
import decimal
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from datetime import UTC, datetime
from decimal import Decimal
from typing import Self, TypeVar
from uuid import UUID, uuid4

import anyio
import msgspec

from ledger.account import Account, account_id, validate_account_name
from ledger.errors import (
    IllegalTransition,
    InvalidValue,
    NotFound,
    OperationRejected,
    OutcomeUnknown,
)
from ledger.instruments import Instrument, Price, Quantity, Side
from ledger.intent import (
    BalanceChange,
    CloseRequest,
    Evidence,
    Intent,
    IntentKind,
    OpenRequest,
    Payload,
    ProtectionChange,
)
from ledger.money import Money
from ledger.ports import (
    Accepted,
    Broker,
    Fill,
    Found,
    LedgerStore,
    LookupUnsupported,
    OrderAction,
    OrderRequest,
    ProtectionRequest,
    Rejected,
    Unknown,
    WriteResult,
)
from ledger.position import CloseReason, Position, check_protection, position_id
from ledger.writer import UnitOfWork, Writer

T = TypeVar("T")

# A market order can fill worse than the quote it was priced from; the
# reservation holds this much more, so a fill within it is always covered.
RESERVATION_MARGIN = Decimal("0.01")
BROKER_TIMEOUT_SECONDS = 10.0
EVIDENCE_ATTEMPTS = 3
EVIDENCE_INTERVAL_SECONDS = 0.2


class OperationResult(msgspec.Struct, frozen=True, kw_only=True):
    """What an operation did, once its outcome is durable."""

    intent_id: UUID
    kind: IntentKind
    status: str
    client_id: str | None = None
    broker_ref: str | None = None
    position_id: UUID | None = None
    price: Decimal | None = None
    quantity: Decimal | None = None
    pnl: Money | None = None
    reason: str | None = None
    """Why the broker refused, when it did."""


def utc_now() -> datetime:
    return datetime.now(UTC)


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
    ) -> None:
        self.store = store
        self.broker = broker
        self.epoch = epoch
        self.clock = clock
        self.broker_timeout = broker_timeout
        self.writer = Writer(store)
        self._instruments: dict[str, Instrument] = {}

    @classmethod
    @asynccontextmanager
    async def open(
        cls, store: LedgerStore, broker: Broker, *, holder: str, **options: object
    ) -> AsyncIterator[Self]:
        """Take the store's lease (as `holder`), start the writer, serve until the block ends."""
        with store.lease(holder) as epoch:
            try:
                async with anyio.create_task_group() as tasks:
                    engine = cls(store, broker, epoch=epoch, **options)  # type: ignore[arg-type]
                    await tasks.start(engine.writer.run)
                    try:
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

    async def deposit(self, account: str, amount: object, currency: str) -> OperationResult:
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
            intent = self._balance_intent(unit, intent_id, ledger_account, money, add=True)
            ledger_account.deposit(money, recorded_at=now, intent_id=intent_id)
            return intent

        return _balance_result(await self.writer.execute(record))

    async def withdraw(self, account: str, amount: object, currency: str) -> OperationResult:
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
            return self._balance_intent(unit, intent_id, ledger_account, money, add=False)

        return _balance_result(await self.writer.execute(record))

    def _balance_intent(
        self, unit: UnitOfWork, intent_id: UUID, account: Account, money: Money, *, add: bool
    ) -> Intent:
        kind = IntentKind.BALANCE_ADD if add else IntentKind.BALANCE_DEDUCT
        intent = self._submitted(unit, intent_id, kind, account, BalanceChange(amount=money))
        now = self.clock()
        intent.complete(
            Evidence(source="ledger", observed_at=now, detail="no broker call"), recorded_at=now
        )
        return intent

    # Trading operations ---------------------------------------------------------------

    async def open_position(
        self,
        account: str,
        symbol: str,
        side: Side | str,
        quantity: object,
        *,
        stop_loss: object = None,
        take_profit: object = None,
    ) -> OperationResult:
        """Open a position with a market order, optionally protected by SL and TP."""
        instrument = await self.instrument(symbol)
        side = Side(side)
        size = instrument.quantity(quantity)
        stop = None if stop_loss is None else instrument.price(stop_loss, field="stop_loss")
        target = None if take_profit is None else instrument.price(take_profit, field="take_profit")
        check_protection(instrument, side, stop, target)
        quote = await self._call(self.broker.quote(symbol))
        estimate = (quote.ask if side is Side.LONG else quote.bid) * (1 + RESERVATION_MARGIN)
        reservation = instrument.funds_required(size, Price(estimate))
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
            # The reservation first: it refuses (insufficient funds) before changing anything.
            ledger_account.reserve(intent_id, reservation, recorded_at=self.clock())
            return self._submitted(
                unit, intent_id, IntentKind.POSITION_OPEN, ledger_account, payload, reservation
            )

        intent = await self.writer.execute(record)
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
        )
        return await self._send(intent, self.broker.submit(order), order)

    async def close_position(self, position: UUID, quantity: object = None) -> OperationResult:
        """Close all of a position, or `quantity` of it."""

        def record(unit: UnitOfWork) -> tuple[Intent, OrderRequest]:
            held = _require_open_position(unit, position)
            size = held.quantity if quantity is None else held.instrument.quantity(quantity)
            if size > held.quantity:
                raise InvalidValue("quantity", f"{size} is more than the {held.quantity} open")
            ledger_account, broker_ref = _at_broker(unit, held)
            intent = self._submitted(
                unit,
                uuid4(),
                IntentKind.POSITION_CLOSE,
                ledger_account,
                CloseRequest(position_id=position, quantity=size),
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

        intent, order = await self.writer.execute(record)
        return await self._send(intent, self.broker.submit(order), order)

    async def change_stop_loss(self, position: UUID, price: object) -> OperationResult:
        return await self._change_protection(position, price, stop_loss=True)

    async def change_take_profit(self, position: UUID, price: object) -> OperationResult:
        return await self._change_protection(position, price, stop_loss=False)

    async def _change_protection(
        self, position: UUID, price: object, *, stop_loss: bool
    ) -> OperationResult:
        field = "stop_loss" if stop_loss else "take_profit"

        def record(unit: UnitOfWork) -> tuple[Intent, ProtectionRequest]:
            held = _require_open_position(unit, position)
            level = None if price is None else held.instrument.price(price, field=field)
            stop, target = (level, held.take_profit) if stop_loss else (held.stop_loss, level)
            check_protection(held.instrument, held.side, stop, target)
            ledger_account, broker_ref = _at_broker(unit, held)
            intent = self._submitted(
                unit,
                uuid4(),
                IntentKind.POSITION_UPDATE,
                ledger_account,
                ProtectionChange(position_id=position, stop_loss=stop, take_profit=target),
            )
            request = ProtectionRequest(
                client_id=intent.client_id,
                account=ledger_account.name,
                position_ref=broker_ref,
                **{field: level},
            )
            return intent, request

        intent, request = await self.writer.execute(record)
        return await self._send(intent, self.broker.amend_protection(request), None)

    def _submitted(
        self,
        unit: UnitOfWork,
        intent_id: UUID,
        kind: IntentKind,
        account: Account,
        payload: Payload,
        reservation: Money | None = None,
    ) -> Intent:
        """Commit 1's intent: recorded and marked submitted, as it goes to the broker next."""
        now = self.clock()
        intent = Intent.record(
            intent_id,
            kind=kind,
            account_id=account.id,
            payload=payload,
            epoch=self.epoch,
            recorded_at=now,
            reservation=reservation,
        )
        intent.submit(recorded_at=now)
        unit.add(intent)
        return intent

    # The broker call and commit 2 -----------------------------------------------------

    async def instrument(self, symbol: str) -> Instrument:
        """The broker's terms for `symbol`, asked once per engine."""
        if symbol not in self._instruments:
            instrument = await self._call(self.broker.instrument(symbol))
            if instrument is None:
                raise InvalidValue("symbol", f"{symbol!r} is not traded at this broker")
            self._instruments[symbol] = instrument
        return self._instruments[symbol]

    async def _call(self, call: Awaitable[T]) -> T:
        with anyio.fail_after(self.broker_timeout):
            return await call

    async def _send(
        self, intent: Intent, call: Awaitable[WriteResult], order: OrderRequest | None
    ) -> OperationResult:
        try:
            result = await self._call(call)
        except TimeoutError:
            result = Unknown(cause=f"no answer within {self.broker_timeout} s")
        if isinstance(result, Unknown):
            found = await self._evidence(intent, order)
            if found is None:
                raise OutcomeUnknown(intent.id, result.cause)
            result = found
        concluded = await self.writer.execute(lambda unit: self._conclude(unit, intent.id, result))
        if concluded.reason is not None:
            raise OperationRejected(intent.id, concluded.reason)
        return concluded

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

    def _conclude(self, unit: UnitOfWork, intent_id: UUID, result: WriteResult) -> OperationResult:
        intent = unit.get(Intent, intent_id)
        if intent is None:  # pragma: no cover - commit 1 stored it
            raise NotFound(f"intent {intent_id}")
        ledger_account = unit.get(Account, intent.account_id)
        if ledger_account is None:  # pragma: no cover - commit 1 checked it
            raise NotFound(f"account of intent {intent_id}")
        now = self.clock()
        if isinstance(result, Rejected):
            intent.fail(
                result.reason,
                recorded_at=now,
                evidence=Evidence(source="submit", observed_at=now, detail=result.reason),
            )
            if intent.id in ledger_account.reservations:
                ledger_account.release_reservation(intent.id, recorded_at=now)
            # Not raised here: the failure must be committed first (see _send).
            return OperationResult(
                intent_id=intent.id,
                kind=intent.kind,
                status=intent.status.value,
                client_id=intent.client_id,
                reason=result.reason,
            )
        if not isinstance(result, Accepted):  # pragma: no cover - Unknown never gets here
            raise IllegalTransition(f"cannot conclude intent {intent_id} from {result!r}")
        return self._apply_acceptance(unit, intent, ledger_account, result)

    def _apply_acceptance(
        self, unit: UnitOfWork, intent: Intent, account: Account, accepted: Accepted
    ) -> OperationResult:
        now = self.clock()
        # A venue may report one fill twice (a duplicate ack): one per fill id.
        fills = list({fill.fill_id: fill for fill in accepted.fills}.values())
        evidence = Evidence(
            source="submit",
            observed_at=now,
            broker_ref=accepted.broker_ref,
            detail=", ".join(f"{f.fill_id}: {f.quantity} at {f.price}" for f in fills),
        )
        payload = intent.payload
        result = OperationResult(
            intent_id=intent.id,
            kind=intent.kind,
            status="completed",
            client_id=intent.client_id,
            broker_ref=accepted.broker_ref,
        )
        if isinstance(payload, OpenRequest):
            result = self._opened(unit, intent, account, payload, fills, result)
        elif isinstance(payload, CloseRequest):
            result = self._closed(unit, intent, account, payload, fills, result)
        elif isinstance(payload, ProtectionChange):
            result = self._protected(unit, intent, payload, result)
        intent.complete(evidence, recorded_at=now)
        return result

    def _opened(
        self,
        unit: UnitOfWork,
        intent: Intent,
        account: Account,
        request: OpenRequest,
        fills: list[Fill],
        result: OperationResult,
    ) -> OperationResult:
        instrument = self._instruments[request.symbol]
        quantity, price, fee = _totals(fills, instrument)
        now = self.clock()
        position = Position.open(
            position_id(intent.id),
            account_id=account.id,
            instrument=instrument,
            side=request.side,
            quantity=quantity,
            entry_price=price,
            recorded_at=now,
            venue_time=fills[0].time,
            stop_loss=_price(request.stop_loss),
            take_profit=_price(request.take_profit),
            broker_ref=fills[0].position_ref,
            client_id=intent.client_id,
            intent_id=intent.id,
        )
        unit.add(position)
        account.settle(
            intent.id,
            position.id,
            instrument.funds_required(quantity, price),
            recorded_at=now,
            venue_time=fills[0].time,
        )
        self._charge(account, fee, intent, position.id)
        return msgspec.structs.replace(
            result, position_id=position.id, price=price, quantity=quantity
        )

    def _closed(
        self,
        unit: UnitOfWork,
        intent: Intent,
        account: Account,
        request: CloseRequest,
        fills: list[Fill],
        result: OperationResult,
    ) -> OperationResult:
        held = _require_open_position(unit, request.position_id)
        quantity, price, fee = _totals(fills, held.instrument)
        now = self.clock()
        committed = account.commitments.get(held.id, Money.zero(account.currency))
        released = (
            committed
            if quantity == held.quantity
            else Money.rounded(
                committed.amount * quantity / held.quantity, account.currency, decimal.ROUND_DOWN
            )
        )
        pnl = held.close(
            quantity,
            price,
            recorded_at=now,
            reason=CloseReason.REQUESTED,
            venue_time=fills[0].time,
            intent_id=intent.id,
            broker_ref=result.broker_ref,
        )
        account.realise_pnl(
            held.id, pnl, released, recorded_at=now, venue_time=fills[0].time, intent_id=intent.id
        )
        self._charge(account, fee, intent, held.id)
        return msgspec.structs.replace(
            result, position_id=held.id, price=price, quantity=quantity, pnl=pnl
        )

    def _protected(
        self,
        unit: UnitOfWork,
        intent: Intent,
        request: ProtectionChange,
        result: OperationResult,
    ) -> OperationResult:
        held = _require_open_position(unit, request.position_id)
        now = self.clock()
        held.change_stop_loss(
            _price(request.stop_loss), "requested", recorded_at=now, intent_id=intent.id
        )
        held.change_take_profit(
            _price(request.take_profit), "requested", recorded_at=now, intent_id=intent.id
        )
        return msgspec.structs.replace(result, position_id=held.id)

    def _charge(self, account: Account, fee: Money, intent: Intent, position: UUID) -> None:
        if not fee.is_zero:
            account.charge_fee(
                fee,
                "trading fee",
                recorded_at=self.clock(),
                intent_id=intent.id,
                position_id=position,
            )


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


def _require_open_position(unit: UnitOfWork, position: UUID) -> Position:
    held = unit.get(Position, position)
    if held is None:
        raise NotFound(f"no position {position}")
    if not held.is_open:
        raise IllegalTransition(f"position {position} is closed")
    return held


def _totals(fills: list[Fill], instrument: Instrument) -> tuple[Quantity, Price, Money]:
    """Total quantity, price and fee of the fills of one order.

    `fills` holds each fill once (the caller drops duplicates by fill id:
    a venue may report one fill twice).
    """
    if not fills:
        raise InvalidValue("fills", "an acceptance without a fill cannot open or close anything")
    quantity = Quantity(sum((fill.quantity for fill in fills), Decimal(0)))
    if len({fill.price for fill in fills}) > 1:
        raise InvalidValue(
            "fills", "fills at several prices need an average the ledger does not take"
        )
    fee = sum((fill.fee for fill in fills), Money.zero(instrument.quote_currency))
    return instrument.quantity(quantity), instrument.price(fills[0].price), fee


def _price(value: Decimal | None) -> Price | None:
    return None if value is None else Price(value)


def _balance_result(intent: Intent) -> OperationResult:
    return OperationResult(
        intent_id=intent.id,
        kind=intent.kind,
        status=intent.status.value,
        client_id=intent.client_id,
    )
