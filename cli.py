"""The `ledger` command line, and the composition root.

This is the one place concrete adapters are chosen: the store from
`--store` / `LEDGER_STORE`, the broker from `--broker` / `LEDGER_BROKER`.
The exit codes are in `commands/shared.py`.
"""

from __future__ import annotations

import sys

import typer
from typer.exceptions import TyperException

from adapters.store import DEFAULT_STORE_URL
from commands import controls, history, operations, reconcile, run, status, tokens, views
from commands.audit import audit_app
from commands.broker import broker_app
from commands.shared import JsonOption, StoreOption, errors_as_exit_codes, open_store, print_json
from commands.wal import wal_app

app = typer.Typer(
    name="ledger",
    help="An event-sourced trading ledger with a write-ahead intent log.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)
app.add_typer(broker_app, name="broker")
app.add_typer(wal_app, name="wal")
app.add_typer(audit_app, name="audit")
operations.register(app)
controls.register(app)
app.command("status")(status.status)
views.register(app)
reconcile.register(app, wal_app)
history.register(app, wal_app)
app.command("run")(run.run)
tokens.register(app)


@app.callback()
def ledger() -> None:
    """An event-sourced trading ledger with a write-ahead intent log."""


@app.command()
@errors_as_exit_codes
def info(store: StoreOption = DEFAULT_STORE_URL, as_json: JsonOption = False) -> None:  # noqa: FBT002
    """Show the store's kind and location, event count, last sequence number and schema version."""
    with open_store(store) as opened:
        details = opened.info()
    if as_json:
        print_json(details)
        return
    for field in details.__struct_fields__:
        typer.echo(f"{field.replace('_', ' ')}: {getattr(details, field)}")


def main() -> None:
    """Run the CLI; a usage error is one line on stderr and exit code 2, like any other error."""
    try:
        code = app(standalone_mode=False)
    except TyperException as error:  # the command line was wrong: usage errors are these
        typer.echo(f"ledger: {error.format_message()}", err=True)
        sys.exit(error.exit_code)
    except typer.Abort:
        typer.echo("ledger: aborted", err=True)
        sys.exit(130)
    sys.exit(code if isinstance(code, int) else 0)


if __name__ == "__main__":
    main()
