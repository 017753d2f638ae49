"""`ledger token show|rotate`: the API's bearer tokens, kept in a 0600 file beside the store."""

from __future__ import annotations

from typing import Annotated

import typer

from adapters.http.tokens import Tokens
from adapters.store import DEFAULT_STORE_URL
from commands.shared import JsonOption, StoreOption, errors_as_exit_codes, show

token_app = typer.Typer(help="The API's bearer tokens.", no_args_is_help=True)


@token_app.command("show")
@errors_as_exit_codes
def show_tokens(store: StoreOption = DEFAULT_STORE_URL, as_json: JsonOption = False) -> None:  # noqa: FBT002
    """Every token: its name (the actor on what it writes), scope and secret."""
    tokens = Tokens.of_store(store)
    rows = tokens.ensure()
    if not as_json:
        typer.echo(f"# {tokens.path}", err=True)
    show(rows, ["name", "scope", "secret"], as_json=as_json)


@token_app.command("rotate")
@errors_as_exit_codes
def rotate_tokens(
    name: Annotated[
        str | None, typer.Option("--name", help="Only this token (default: every one).")
    ] = None,
    store: StoreOption = DEFAULT_STORE_URL,
) -> None:
    """New secrets; the old ones stop working at once, also for a running engine."""
    rotated = Tokens.of_store(store).rotate(name)
    names = [token.name for token in rotated if name in {None, token.name}]
    typer.echo(f"rotated: {', '.join(names)} (ledger token show prints the new secrets)")


def register(app: typer.Typer) -> None:
    app.add_typer(token_app, name="token")
