"""`ledger broker ...`: what the broker itself says, beside the ledger's view."""

from __future__ import annotations

from typing import Annotated

import anyio
import typer

from adapters.paper.settings import DEFAULT_BROKER_URL
from commands.shared import BrokerOption, JsonOption, errors_as_exit_codes, open_broker, show
from ledger.money import Money

AllOption = Annotated[
    bool, typer.Option("--all", help="Include finished orders and closed positions.")
]

broker_app = typer.Typer(
    help="What the broker itself says: its positions, orders, fills and balances.",
    no_args_is_help=True,
)


@broker_app.command("positions")
@errors_as_exit_codes
def broker_positions(
    broker: BrokerOption = DEFAULT_BROKER_URL,
    include_closed: AllOption = False,  # noqa: FBT002
    as_json: JsonOption = False,  # noqa: FBT002
) -> None:
    """The broker's open positions, with its stop-loss and take-profit levels."""
    with open_broker(broker) as opened:
        rows = anyio.run(opened.all_positions if include_closed else opened.positions)
    columns = ["broker_ref", "account", "symbol", "side", "quantity", "entry_price"]
    show(rows, [*columns, "stop_loss", "take_profit", "client_id"], as_json=as_json)


@broker_app.command("orders")
@errors_as_exit_codes
def broker_orders(
    broker: BrokerOption = DEFAULT_BROKER_URL,
    include_done: AllOption = False,  # noqa: FBT002
    as_json: JsonOption = False,  # noqa: FBT002
) -> None:
    """Working orders; with --all, every order the broker ever accepted."""
    with open_broker(broker) as opened:
        rows = anyio.run(opened.all_orders if include_done else opened.open_orders)
    columns = ["broker_ref", "client_id", "account", "action", "symbol", "side", "quantity"]
    show(rows, [*columns, "filled_quantity", "status"], as_json=as_json)


@broker_app.command("fills")
@errors_as_exit_codes
def broker_fills(
    broker: BrokerOption = DEFAULT_BROKER_URL,
    as_json: JsonOption = False,  # noqa: FBT002
) -> None:
    """Every execution, with its stable fill id, fee, P&L and reason."""
    with open_broker(broker) as opened:
        rows = anyio.run(opened.fills)
    columns = ["fill_id", "order_ref", "position_ref", "account", "symbol", "side", "quantity"]
    show(rows, [*columns, "price", "fee", "pnl", "reason", "client_id"], as_json=as_json)


@broker_app.command("balance")
@errors_as_exit_codes
def broker_balance(
    broker: BrokerOption = DEFAULT_BROKER_URL,
    as_json: JsonOption = False,  # noqa: FBT002
) -> None:
    """Each account's balance, funds held by open positions, and what is available."""
    with open_broker(broker) as opened:
        rows = anyio.run(opened.account)
    show(rows, ["account", "currency", "balance", "used", "available"], as_json=as_json)


@broker_app.command("fund")
@errors_as_exit_codes
def broker_fund(
    account: Annotated[str, typer.Argument(help="The paper account to credit.")],
    amount: Annotated[str, typer.Argument(help="How much, e.g. 10000 or 2500.50.")],
    currency_code: Annotated[str, typer.Option("--currency", help="The account's currency.")],
    broker: BrokerOption = DEFAULT_BROKER_URL,
) -> None:
    """Credit a paper broker account (creating it in that currency if it is new)."""
    money = Money.parse(amount, currency_code, positive=True)
    with open_broker(broker) as opened:
        anyio.run(opened.fund, account, money)
    typer.echo(f"funded {account} with {money}")


@broker_app.command("advance")
@errors_as_exit_codes
def broker_advance(
    steps: Annotated[
        int, typer.Argument(min=1, max=86_400, help="Price steps (broker seconds) to move on.")
    ] = 1,
    broker: BrokerOption = DEFAULT_BROKER_URL,
) -> None:
    """Let the paper broker's time pass: prices move, stops and targets trigger."""
    with open_broker(broker) as opened:
        anyio.run(opened.advance, steps)
        now = anyio.run(opened.server_time)
    typer.echo(f"advanced {steps} steps; broker time is {now.isoformat()}")
