"""One-shot operations: each does one thing and exits.

When an engine runs on the store (it holds the lease), the operation goes
through that engine's API; otherwise a short-lived engine starts, does
it, and stops. The output and exit codes are the same either way.

Exit codes: 0 done; 1 refused or rejected (nothing kept but the failed
intent); 2 usage; 3 the outcome is unknown (the intent stays in flight
for recovery) or the store or broker is unavailable.
"""

from __future__ import annotations

import enum
from typing import Annotated

import anyio
import typer

from adapters.bootstrap import open_engine
from adapters.http.client import NoEngine, running_engine, send
from adapters.http.operations import (
    ClosePosition,
    Deposit,
    OpenPosition,
    Operation,
    SetStopLoss,
    SetTakeProfit,
    Withdrawal,
)
from adapters.paper.settings import DEFAULT_BROKER_URL
from adapters.store import DEFAULT_STORE_URL
from commands.shared import (
    BrokerOption,
    JsonOption,
    StoreOption,
    errors_as_exit_codes,
    operator_name,
    print_json,
)
from ledger.ids import parse_id
from ledger.instruments import Side
from ledger.origin import Origin
from ledger.results import OperationResult

Account = Annotated[str, typer.Argument(help="The ledger account.")]
Amount = Annotated[str, typer.Argument(help="How much, e.g. 10000 or 2500.50.")]
Currency = Annotated[str, typer.Option("--currency", help="The account's currency, e.g. USD.")]
PositionId = Annotated[str, typer.Argument(help="The position's id (from `ledger open`).")]


class OrderSide(enum.StrEnum):
    BUY = "buy"
    SELL = "sell"


def run_operation(store: str, broker: str, operation: Operation, *, as_json: bool) -> None:
    """Carry out `operation`: through the running engine if one answers, else in one of its own."""
    result = _through_running_engine(store, operation)
    if result is None:

        async def once() -> OperationResult:
            async with open_engine(store=store, broker=broker) as engine:
                return await operation.apply(engine, Origin(actor=operator_name()))

        result = anyio.run(once)
    if as_json:
        print_json(result)
        return
    parts = [f"{result.kind} {result.status}", f"intent {result.intent_id}"]
    if result.position_id is not None:
        parts.append(f"position {result.position_id}")
    if result.quantity is not None:
        parts.append(f"{result.quantity} at {result.price}")
    if result.pnl is not None:
        parts.append(f"P&L {result.pnl}")
    typer.echo("; ".join(parts))


def _through_running_engine(store: str, operation: Operation) -> OperationResult | None:
    """The running engine's answer, or None when no engine serves the store."""
    address = running_engine(store)
    if address is None:
        return None
    try:
        return send(store, address, operation, operator=operator_name())
    except NoEngine:
        return None


@errors_as_exit_codes
def deposit(
    account: Account,
    amount: Amount,
    currency: Currency,
    store: StoreOption = DEFAULT_STORE_URL,
    broker: BrokerOption = DEFAULT_BROKER_URL,
    as_json: JsonOption = False,  # noqa: FBT002
) -> None:
    """Credit an account in the ledger (opening it in that currency if it is new)."""
    operation = Deposit(account=account, amount=amount, currency=currency)
    run_operation(store, broker, operation, as_json=as_json)


@errors_as_exit_codes
def withdraw(
    account: Account,
    amount: Amount,
    currency: Currency,
    store: StoreOption = DEFAULT_STORE_URL,
    broker: BrokerOption = DEFAULT_BROKER_URL,
    as_json: JsonOption = False,  # noqa: FBT002
) -> None:
    """Debit an account; refused if it would take available funds below zero."""
    operation = Withdrawal(account=account, amount=amount, currency=currency)
    run_operation(store, broker, operation, as_json=as_json)


@errors_as_exit_codes
def open_position(
    account: Account,
    symbol: Annotated[str, typer.Argument(help="What to trade, e.g. BTCUSD.")],
    side: Annotated[OrderSide, typer.Option("--side", help="buy opens a long, sell a short.")],
    quantity: Annotated[str, typer.Option("--quantity", help="How much, on the step.")],
    stop_loss: Annotated[str | None, typer.Option("--sl", help="Stop-loss price.")] = None,
    take_profit: Annotated[str | None, typer.Option("--tp", help="Take-profit price.")] = None,
    store: StoreOption = DEFAULT_STORE_URL,
    broker: BrokerOption = DEFAULT_BROKER_URL,
    as_json: JsonOption = False,  # noqa: FBT002
) -> None:
    """Open a position with a market order."""
    position_side = Side.LONG if side is OrderSide.BUY else Side.SHORT
    operation = OpenPosition(
        account=account,
        symbol=symbol,
        side=position_side,
        quantity=quantity,
        stop_loss=stop_loss,
        take_profit=take_profit,
    )
    run_operation(store, broker, operation, as_json=as_json)


@errors_as_exit_codes
def close_position(
    position: PositionId,
    quantity: Annotated[
        str | None, typer.Option("--quantity", help="Close only this much.")
    ] = None,
    store: StoreOption = DEFAULT_STORE_URL,
    broker: BrokerOption = DEFAULT_BROKER_URL,
    as_json: JsonOption = False,  # noqa: FBT002
) -> None:
    """Close a position, or part of it."""
    operation = ClosePosition(position_id=parse_id(position, "position"), quantity=quantity)
    run_operation(store, broker, operation, as_json=as_json)


@errors_as_exit_codes
def set_stop_loss(
    position: PositionId,
    price: Annotated[str, typer.Argument(help="The new stop-loss price.")],
    store: StoreOption = DEFAULT_STORE_URL,
    broker: BrokerOption = DEFAULT_BROKER_URL,
    as_json: JsonOption = False,  # noqa: FBT002
) -> None:
    """Move a position's stop-loss."""
    operation = SetStopLoss(position_id=parse_id(position, "position"), price=price)
    run_operation(store, broker, operation, as_json=as_json)


@errors_as_exit_codes
def set_take_profit(
    position: PositionId,
    price: Annotated[str, typer.Argument(help="The new take-profit price.")],
    store: StoreOption = DEFAULT_STORE_URL,
    broker: BrokerOption = DEFAULT_BROKER_URL,
    as_json: JsonOption = False,  # noqa: FBT002
) -> None:
    """Move a position's take-profit."""
    operation = SetTakeProfit(position_id=parse_id(position, "position"), price=price)
    run_operation(store, broker, operation, as_json=as_json)


def register(app: typer.Typer) -> None:
    app.command("deposit")(deposit)
    app.command("withdraw")(withdraw)
    app.command("open")(open_position)
    app.command("close")(close_position)
    app.command("set-sl")(set_stop_loss)
    app.command("set-tp")(set_take_profit)
