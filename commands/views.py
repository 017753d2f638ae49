"""`ledger positions`, `ledger balances`, `ledger rebuild`: the read models.

Read commands first bring the views up to the log's end, so what they
show is never older than the last commit. `ledger rebuild --check` exits
with code 4 when a view differs from its rebuild, naming the first
difference; other exit codes are those of every command.
"""

from __future__ import annotations

import enum
import functools
import sys
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from decimal import Decimal
from typing import Annotated, ParamSpec
from uuid import UUID

import msgspec
import typer
from eventsourcing.persistence import PersistenceError
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, ProgressColumn, Task, TextColumn
from rich.text import Text

from adapters.store import DEFAULT_STORE_URL
from commands.shared import (
    EXIT_DIFFERENT,
    EXIT_UNAVAILABLE,
    JsonOption,
    StoreOption,
    errors_as_exit_codes,
    fail,
    open_store,
    print_json,
    show,
)
from projections import ProjectionError, catch_up, check, queries, rebuild
from projections.rebuild import Progress as ProgressCallback

P = ParamSpec("P")

AccountOption = Annotated[
    str | None, typer.Option("--account", help="Only this account.", show_default=False)
]

AllOption = Annotated[bool, typer.Option("--all", help="Closed positions too, not only open ones.")]
CheckOption = Annotated[
    bool, typer.Option("--check", help="Rebuild aside and compare with the view; change nothing.")
]


class ProjectionName(enum.StrEnum):
    ALL = "all"
    POSITIONS = "positions"
    BALANCES = "balances"
    PENDING = "pending"
    RISK = "risk"


ProjectionOption = Annotated[
    ProjectionName, typer.Option("--projection", help="The view to rebuild, or all.")
]


def view_errors(command: Callable[P, None]) -> Callable[P, None]:
    """A view that cannot be read or written is exit code 3 and one line, like a bad store."""

    @functools.wraps(command)
    def wrapper(*args: P.args, **kwargs: P.kwargs) -> None:
        try:
            command(*args, **kwargs)
        except (ProjectionError, PersistenceError) as error:
            fail(str(error), EXIT_UNAVAILABLE)

    return wrapper


class PositionLine(msgspec.Struct, frozen=True, kw_only=True):
    position_id: UUID
    account: str
    symbol: str
    side: str
    quantity: Decimal
    entry_price: Decimal
    stop_loss: Decimal | None
    take_profit: Decimal | None
    status: str
    provenance: str
    flags: str


@errors_as_exit_codes
@view_errors
def positions(
    account: AccountOption = None,
    include_closed: AllOption = False,  # noqa: FBT002
    store: StoreOption = DEFAULT_STORE_URL,
    as_json: JsonOption = False,  # noqa: FBT002
) -> None:
    """Positions from the positions view: open ones, or all with --all."""
    with open_store(store) as opened:
        catch_up(opened)
        rows = queries.positions(opened, account=account, include_closed=include_closed)
    if as_json:
        print_json(rows)
        return
    lines = [
        PositionLine(
            position_id=row.position_id,
            account=row.account,
            symbol=row.symbol,
            side=row.side,
            quantity=row.quantity,
            entry_price=row.entry_price,
            stop_loss=row.stop_loss,
            take_profit=row.take_profit,
            status=row.status,
            provenance=row.provenance,
            flags=",".join(row.flags) or "-",
        )
        for row in rows
    ]
    show(lines, PositionLine.__struct_fields__, as_json=False)


@errors_as_exit_codes
@view_errors
def balances(
    account: AccountOption = None,
    store: StoreOption = DEFAULT_STORE_URL,
    as_json: JsonOption = False,  # noqa: FBT002
) -> None:
    """Balances from the balances view: total, reserved, committed and available money."""
    with open_store(store) as opened:
        catch_up(opened)
        rows = queries.balances(opened, account=account)
    columns = ["account", "currency", "total", "reserved", "committed", "available"]
    show(rows, [*columns, "realised_pnl", "fees"], as_json=as_json)


@errors_as_exit_codes
@view_errors
def rebuild_views(
    projection: ProjectionOption = ProjectionName.ALL,
    check_only: CheckOption = False,  # noqa: FBT002
    store: StoreOption = DEFAULT_STORE_URL,
) -> None:
    """Rebuild views from the start of the log and swap them in at once (readers never wait)."""
    with open_store(store) as opened, progress_bar() as progress:
        if check_only:
            difference = check(opened, projection.value, progress=progress)
        else:
            position = rebuild(opened, projection.value, progress=progress)
    if check_only:
        if difference is not None:
            fail(difference.describe(), EXIT_DIFFERENT)
        typer.echo(f"{projection.value}: equal to a rebuild from the start of the log")
        return
    typer.echo(f"{projection.value}: rebuilt up to event {position}")


class EventsPerSecond(ProgressColumn):
    """The rebuild's speed, in events per second."""

    def render(self, task: Task) -> Text:
        speed = task.finished_speed or task.speed or 0.0
        return Text(f"{speed:,.0f} events/s")


@contextmanager
def progress_bar(label: str = "rebuilding") -> Iterator[ProgressCallback | None]:
    """A progress bar on stderr when it is a terminal; nothing when it is not."""
    if not sys.stderr.isatty():
        yield None
        return
    columns = (TextColumn(label), BarColumn(), MofNCompleteColumn(), EventsPerSecond())
    # What the command prints meanwhile stays on its stdout, which may be a file.
    with Progress(*columns, console=Console(stderr=True), redirect_stdout=False) as bar:
        task = bar.add_task("rebuild", total=None)

        def update(done: int, total: int) -> None:
            bar.update(task, completed=done, total=total)

        yield update


def register(app: typer.Typer) -> None:
    app.command("positions")(positions)
    app.command("balances")(balances)
    app.command("rebuild")(rebuild_views)
