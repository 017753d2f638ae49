"""What every command shares: options, exit codes, opening adapters, printing.

Every error a user can cause ends as one line on stderr and an exit code:

    0  success
    1  the ledger refused the request (invalid value, insufficient funds,
       a rejected order, ...)
    2  the command line itself was wrong (unknown option, missing argument)
    3  the store or the broker could not be opened or read (or did not
       answer in time), another engine holds the store, or an operation's
       outcome is unknown; for `recover`
       and `reconcile`: something awaits an operator
    4  `ledger rebuild --check`: a view differs from its rebuild
    5  `ledger audit verify`: the hash chain or an invariant of the ledger
       is broken
"""

from __future__ import annotations

import functools
import getpass
import os
import sys
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from datetime import datetime
from typing import Annotated, NoReturn, ParamSpec

import msgspec
import typer
from eventsourcing.persistence import MapperDeserialisationError

from adapters.http.client import ApiFailure
from adapters.http.server import AddressError
from adapters.http.tokens import TokenError
from adapters.paper.broker import PaperBroker
from adapters.paper.settings import BrokerURLError
from adapters.paper.tables import PaperBrokerError
from adapters.sqlite_store import NotDurableError
from adapters.store import Store, StoreError
from ledger.errors import BrokerUnavailable, LeaseHeld, LedgerError, OutcomeUnknown

EXIT_REFUSED = 1
EXIT_UNAVAILABLE = 3
EXIT_DIFFERENT = 4
EXIT_AUDIT_FAILED = 5

P = ParamSpec("P")

StoreOption = Annotated[
    str,
    typer.Option(
        "--store",
        envvar="LEDGER_STORE",
        help="Store URL: sqlite:///path.db or postgresql://user:pass@host:port/db.",
        show_default=True,
    ),
]
BrokerOption = Annotated[
    str,
    typer.Option(
        "--broker",
        envvar="LEDGER_BROKER",
        help="Broker URL: paper:///path.db[?seed=N&scope=forever|open_only|none&faults=...].",
        show_default=True,
    ),
]
JsonOption = Annotated[bool, typer.Option("--json", help="Print JSON instead of text.")]


def fail(message: str, code: int) -> NoReturn:
    """Print one line on stderr and exit with `code`."""
    typer.echo(f"ledger: {message}", err=True)
    raise typer.Exit(code)


def errors_as_exit_codes(command: Callable[P, None]) -> Callable[P, None]:
    """Turn the ledger's own errors into one line and an exit code, not a traceback."""

    @functools.wraps(command)
    def wrapper(*args: P.args, **kwargs: P.kwargs) -> None:
        try:
            command(*args, **kwargs)
        except (OutcomeUnknown, LeaseHeld, BrokerUnavailable) as error:
            fail(str(error), EXIT_UNAVAILABLE)
        except LedgerError as error:
            fail(str(error), EXIT_REFUSED)
        except (StoreError, BrokerURLError, PaperBrokerError, NotDurableError) as error:
            fail(str(error), EXIT_UNAVAILABLE)
        except ApiFailure as error:
            fail(str(error), EXIT_UNAVAILABLE if error.unavailable else EXIT_REFUSED)
        except (TokenError, AddressError) as error:
            fail(str(error), EXIT_UNAVAILABLE)
        except MapperDeserialisationError as error:
            # A stored event that does not decode: the store cannot be read as it is.
            fail(str(error), EXIT_UNAVAILABLE)

    return wrapper


@contextmanager
def open_broker(url: str) -> Iterator[PaperBroker]:
    try:
        # The operator's commands look at, fund or move the broker: they are
        # not a trading client connecting, so no while-down faults fire.
        broker = PaperBroker.open(url, start_session=False)
    except (BrokerURLError, PaperBrokerError, NotDurableError) as error:
        fail(str(error), EXIT_UNAVAILABLE)
    with broker:
        yield broker


@contextmanager
def open_store(url: str) -> Iterator[Store]:
    try:
        store = Store.open(url)
    except StoreError as error:
        fail(str(error), EXIT_UNAVAILABLE)
    with store:
        yield store


def operator_name() -> str:
    """Who is at the terminal, as recorded on the events an operator's command writes."""
    return os.environ.get("LEDGER_OPERATOR") or getpass.getuser()


def print_json(value: object) -> None:
    sys.stdout.write(msgspec.json.encode(value).decode() + "\n")


def show(rows: Sequence[msgspec.Struct], columns: Sequence[str], *, as_json: bool) -> None:
    """Print rows as JSON (money and prices as strings) or as an aligned table."""
    if as_json:
        print_json(list(rows))
        return
    if not rows:
        typer.echo("(none)")
        return
    cells = [[_cell(getattr(row, column)) for column in columns] for row in rows]
    widths = [
        max(len(column), *(len(line[i]) for line in cells)) for i, column in enumerate(columns)
    ]
    typer.echo(
        "  ".join(column.ljust(width) for column, width in zip(columns, widths, strict=True))
    )
    for line in cells:
        typer.echo("  ".join(cell.ljust(width) for cell, width in zip(line, widths, strict=True)))


def _cell(value: object) -> str:
    if value is None:
        return "-"
    if isinstance(value, datetime):
        return value.isoformat()
    return str(value)
