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
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from datetime import UTC, datetime
from decimal import Decimal
from typing import Self, TypeVar
from uuid import UUID, uuid4

import anyio

from ledger import settlement
from ledger.account import Account, account_id, validate_account_name
from ledger.errors import (
    Frozen,
    IllegalTransition,
    InvalidValue,
    NotFound,
    NotReady,
    OperationRejected,
    OutcomeUnknown,
)
from ledger.instruments import Instrument, Price, Side
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
from ledger.position import Position, check_protection
from ledger.settlement import OperationResult
from ledger.writer import UnitOfWork, Writer, tagged

T = TypeVar("T")

# A market order can fill worse than the quote it was priced from; the
# reservation holds this much more, so a fill within it is always covered.
RESERVATION_MARGIN = Decimal("0.01")
BROKER_TIMEOUT_SECONDS = 10.0
EVIDENCE_ATTEMPTS = 3
EVIDENCE_INTERVAL_SECONDS = 0.2


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

    async def deposit(self, account: str, amount: object, currency: str) -> OperationResult:
        """Credit `account`, opening it in `currency` if it is new."""
        self._check_ready()
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
        self._check_ready()
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
        self._check_ready()
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
            self._check_not_frozen(ledger_account.id, symbol)
            # The reservation first: it refuses (insufficient funds) before changing anything.
            ledger_account.reserve(intent_id, reservation, recorded_at=self.clock())
            return self._submitted(
                unit,
                intent_id,
                IntentKind.POSITION_OPEN,
                ledger_account,
                payload,
                reservation,
                broker_time=quote.time,
            )

        intent = await self._commit_1(intent_id, record)
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
        self._check_ready()
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

        intent, order = await self._commit_1(intent_id, record)
        return await self._send(intent, self.broker.submit(order), order)

    async def change_stop_loss(self, position: UUID, price: object) -> OperationResult:
        self._check_ready()
        return await self._change_protection(position, price, stop_loss=True)

    async def change_take_profit(self, position: UUID, price: object) -> OperationResult:
        self._check_ready()
        return await self._change_protection(position, price, stop_loss=False)

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
    ) -> OperationResult:
        """Change one level (`stop_loss` True: stop, False: target) or resend both (None)."""
        broker_time = await self._call(self.broker.server_time())
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
            intent = self._submitted(
                unit,
                intent_id,
                IntentKind.POSITION_UPDATE,
                ledger_account,
                ProtectionChange(position_id=position, stop_loss=stop, take_profit=target),
                broker_time=broker_time,
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

        intent, request = await self._commit_1(intent_id, tagged(record, plan_id))
        return await self._send(intent, self.broker.amend_protection(request), None, plan_id)

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
            broker_time=broker_time,
        )
        intent.submit(recorded_at=now)
        unit.add(intent)
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
            instrument = await self._call(self.broker.instrument(symbol))
            if instrument is None:
                raise InvalidValue("symbol", f"{symbol!r} is not traded at this broker")
            self._instruments[symbol] = instrument
        return self._instruments[symbol]

    async def _call(self, call: Awaitable[T]) -> T:
        with anyio.fail_after(self.broker_timeout):
            return await call

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
                    raise OutcomeUnknown(intent.id, result.cause)
                result = found
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
