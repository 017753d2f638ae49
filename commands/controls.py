"""Risk controls from the command line: `ledger limits ...` and `ledger kill-switch ...`.

These write the controls' own streams straight to the store, without the
lease: a running engine reads them afresh for every batch it commits, so
a kill switch engaged here stops its next open. Flattening needs an
engine: with none running, one starts here for the closes; with one
running, its next reconciliation pass flattens.
"""

from __future__ import annotations

from collections.abc import Iterator
from datetime import UTC, datetime
from typing import Annotated
from uuid import UUID

import anyio
import msgspec
import typer

from adapters.bootstrap import open_engine
from adapters.paper.settings import DEFAULT_BROKER_URL
from adapters.store import DEFAULT_STORE_URL, Store
from commands.shared import (
    EXIT_UNAVAILABLE,
    BrokerOption,
    JsonOption,
    StoreOption,
    errors_as_exit_codes,
    fail,
    open_broker,
    open_store,
    operator_name,
    print_json,
    show,
)
from ledger.account import Account, account_id
from ledger.errors import IllegalTransition, InvalidValue, LeaseHeld, NotFound
from ledger.limits import Limits, updated
from ledger.results import Closing
from ledger.usage import limits_row, stored_controls, switch_rows

limits_app = typer.Typer(help="Per-account risk limits.", no_args_is_help=True)
kill_switch_app = typer.Typer(
    help="Stop new opens, for one account or all, across restarts.", no_args_is_help=True
)

AccountArgument = Annotated[str, typer.Argument(help="The ledger account.")]


TradesPerDay = Annotated[
    str | None, typer.Option(help="Opens per UTC day, those in flight included.")
]
DailyLoss = Annotated[
    str | None,
    typer.Option(
        help="An amount: today's net realised loss plus what open positions and opens in "
        "flight could lose at their stops stays within it."
    ),
]
DailyLossPct = Annotated[
    str | None,
    typer.Option(help="The same, in percent of the total less today's realised P&L."),
]
OpenPositions = Annotated[
    str | None, typer.Option(help="Open positions, those in flight included.")
]
PositionNotional = Annotated[
    str | None, typer.Option(help="One open's notional, at the worst price it may fill at.")
]
RiskPerTrade = Annotated[
    str | None,
    typer.Option(help="Percent of the total one stop-loss may put at stake (needs a stop)."),
]
Scope = Annotated[str | None, typer.Option("--account", help="One account.")]
AllAccounts = Annotated[bool, typer.Option("--all", help="Every account.")]
Flatten = Annotated[
    bool, typer.Option("--flatten", help="Also close every open position, by intents.")
]
Reason = Annotated[str, typer.Option("--reason", help="Why: recorded with the event.")]


def _now() -> datetime:
    return datetime.now(UTC)


def _account(store: Store, name: str) -> Account:
    found = store.get(Account, account_id(name))
    if found is None:
        raise NotFound(f"no account {name!r}")
    return found


# ledger limits ---------------------------------------------------------------------------


@limits_app.command("set")
@errors_as_exit_codes
def set_limits(
    account: AccountArgument,
    max_trades_per_day: TradesPerDay = None,
    max_daily_loss: DailyLoss = None,
    max_daily_loss_pct: DailyLossPct = None,
    max_open_positions: OpenPositions = None,
    max_position_notional: PositionNotional = None,
    risk_per_trade_pct: RiskPerTrade = None,
    stop_loss_margin_pct: Annotated[
        str | None,
        typer.Option(help="Percent of the per-trade risk a stop may use (default 95)."),
    ] = None,
    require_stop_loss: Annotated[
        bool | None,
        typer.Option("--require-stop-loss/--no-require-stop-loss", help="Every open needs an SL."),
    ] = None,
    clear: Annotated[
        list[str] | None, typer.Option("--clear", help="Remove this limit (repeatable).")
    ] = None,
    reason: Annotated[str, typer.Option("--reason", help="Why: recorded with the event.")] = "",
    store: StoreOption = DEFAULT_STORE_URL,
) -> None:
    """Set an account's limits; the ones not named keep their values."""
    given = {
        "max_trades_per_day": max_trades_per_day,
        "max_daily_loss": max_daily_loss,
        "max_daily_loss_pct": max_daily_loss_pct,
        "max_open_positions": max_open_positions,
        "max_position_notional": max_position_notional,
        "risk_per_trade_pct": risk_per_trade_pct,
        "stop_loss_margin_pct": stop_loss_margin_pct,
        "require_stop_loss": require_stop_loss,
    }
    changes: dict[str, object] = {name: value for name, value in given.items() if value is not None}
    with open_store(store) as opened:
        held = _account(opened, account)
        controls = stored_controls(opened, held.id)
        limits = updated(controls.limits, changes, clear or [], held.currency)
        controls.set_limits(limits, actor=operator_name(), reason=reason, recorded_at=_now())
        opened.save(controls)
    typer.echo(f"limits of {account}: {_describe(limits)}")


@limits_app.command("show")
@errors_as_exit_codes
def show_limits(
    account: Annotated[str | None, typer.Argument(help="Only this account.")] = None,
    store: StoreOption = DEFAULT_STORE_URL,
    as_json: JsonOption = False,  # noqa: FBT002
) -> None:
    """Each account's limits and today's use of them (intents in flight at their worst case)."""
    with open_store(store) as opened:
        if account is not None:
            accounts = [_account(opened, account)]
        else:
            accounts = [a for i in opened.accounts() if (a := opened.get(Account, i)) is not None]
        rows = [limits_row(opened, held) for held in accounts]
    if as_json:
        print_json(rows)
        return
    if not rows:
        typer.echo("(no accounts)")
    for row in rows:
        typer.echo(f"{row.account} ({row.currency}): {_describe(row.limits)}")
        typer.echo(
            f"  today: {row.trades_today} trades, {row.open_positions} open, "
            f"lost {row.loss_today}, {row.at_risk} at risk in open positions and in flight, "
            f"equity for daily percentages {row.equity}"
        )
        for unbounded in row.unbounded:
            typer.echo(f"  no stop-loss, nothing bounds its loss: {unbounded}")


def _describe(limits: Limits) -> str:
    values = msgspec.structs.asdict(limits)
    # `is`, not `in`: a limit of 0 equals False, and is a limit all the same.
    shown = [
        f"{name}={value}"
        for name, value in values.items()
        if value is not None and value is not False
    ]
    return ", ".join(shown) if shown else "none"


# ledger kill-switch ----------------------------------------------------------------------


def _scope(store: Store, account: str | None, *, every: bool) -> tuple[UUID | None, str]:
    if (account is None) == (not every):
        raise InvalidValue("scope", "name one --account, or --all")
    if account is None:
        return None, "every account"
    return _account(store, account).id, f"account {account}"


@kill_switch_app.command("engage")
@errors_as_exit_codes
def engage(
    reason: Reason,
    account: Scope = None,
    every: AllAccounts = False,  # noqa: FBT002
    flatten: Flatten = False,  # noqa: FBT002
    store: StoreOption = DEFAULT_STORE_URL,
    broker: BrokerOption = DEFAULT_BROKER_URL,
) -> None:
    """Engage the kill switch: no new opens (closes and tighter stops still go through)."""
    with open_store(store) as opened:
        scope, named = _scope(opened, account, every=every)
        controls = stored_controls(opened, scope)
        controls.engage(actor=operator_name(), reason=reason, flatten=flatten, recorded_at=_now())
        opened.save(controls)
    typer.echo(f"kill switch engaged for {named}" + (", flattening" if flatten else ""))
    if flatten:
        _flatten_now(store, broker, scope)


def _flatten_now(store: str, broker: str, scope: UUID | None) -> None:
    async def once() -> tuple[list[Closing], list[UUID]]:
        async with open_engine(store=store, broker=broker) as engine:
            closings = await engine.flatten(scope)
            return closings, await engine.open_positions(scope)

    try:
        closings, still_open = anyio.run(once)
    except LeaseHeld:
        typer.echo(
            "a running engine holds the store: its reconciliation passes flatten "
            "(if it runs them: see `ledger run --reconcile-every`)"
        )
        return
    for line in _closing_lines(closings):
        typer.echo(line)
    if still_open:
        # A close may be done and its position not: a partly filled close
        # leaves the rest working at the broker.
        fail(
            f"{len(still_open)} position(s) still open; the switch stays latched: run "
            "`ledger kill-switch flatten` again (or `ledger run`) once the broker has filled "
            "or answered",
            EXIT_UNAVAILABLE,
        )


@kill_switch_app.command("flatten")
@errors_as_exit_codes
def flatten_again(
    account: Scope = None,
    every: AllAccounts = False,  # noqa: FBT002
    store: StoreOption = DEFAULT_STORE_URL,
    broker: BrokerOption = DEFAULT_BROKER_URL,
) -> None:
    """Close what is still open under a kill switch engaged with --flatten (recovery first)."""
    with open_store(store) as opened:
        scope, named = _scope(opened, account, every=every)
        engaged = stored_controls(opened, scope).kill_switch
    if engaged is None or not engaged.flatten:
        raise IllegalTransition(f"no kill switch engaged with --flatten for {named}")
    _flatten_now(store, broker, scope)


def _closing_lines(closings: list[Closing]) -> Iterator[str]:
    if not closings:
        yield "no open position to close"
    for closing in closings:
        if closing.result is not None:
            yield f"position {closing.position_id}: {closing.result.status}"
        else:
            yield f"position {closing.position_id}: not closed yet: {closing.error}"


@kill_switch_app.command("release")
@errors_as_exit_codes
def release(
    reason: Reason,
    account: Scope = None,
    every: AllAccounts = False,  # noqa: FBT002
    store: StoreOption = DEFAULT_STORE_URL,
    broker: BrokerOption = DEFAULT_BROKER_URL,
) -> None:
    """Release the kill switch; one that flattens only once the broker reports no position."""
    with open_store(store) as opened:
        scope, named = _scope(opened, account, every=every)
        controls = stored_controls(opened, scope)
        with open_broker(broker) as venue:
            positions = anyio.run(venue.positions)
        if account is not None:
            positions = [p for p in positions if p.account == account]
        controls.release(
            actor=operator_name(),
            reason=reason,
            broker_positions=len(positions),
            recorded_at=_now(),
        )
        opened.save(controls)
    typer.echo(f"kill switch released for {named}")


@kill_switch_app.command("status")
@errors_as_exit_codes
def switch_status(
    store: StoreOption = DEFAULT_STORE_URL,
    as_json: JsonOption = False,  # noqa: FBT002
) -> None:
    """Every kill switch: the one over all accounts, then each account's."""
    with open_store(store) as opened:
        rows = switch_rows(opened)
    show(rows, ["scope", "engaged", "actor", "reason", "engaged_at", "flatten"], as_json=as_json)


def register(app: typer.Typer) -> None:
    app.add_typer(limits_app, name="limits")
    app.add_typer(kill_switch_app, name="kill-switch")
