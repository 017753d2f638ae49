"""`ledger audit verify` and `ledger audit head`: the tamper-evident hash chain.

`verify` recomputes the chain over every stored event, compares it with
every seal (and with `--anchor`, a head kept outside the database), and
checks the ledger's invariants. It exits 0 when all is well and 5
(`EXIT_AUDIT_FAILED`) when not, naming the first problem on stderr.
`head` prints the chain's current head, to be kept somewhere the
database's writers cannot reach.
"""

from __future__ import annotations

from typing import Annotated

import typer

from adapters.store import DEFAULT_STORE_URL
from audit.verify import Anchor, Verdict, parse_anchor, verify
from commands.shared import (
    EXIT_AUDIT_FAILED,
    JsonOption,
    StoreOption,
    errors_as_exit_codes,
    fail,
    open_store,
    print_json,
)
from commands.views import progress_bar, view_errors
from projections.seals import head

audit_app = typer.Typer(
    help="The tamper-evident hash chain over the stored events, and the ledger's invariants.",
    no_args_is_help=True,
)


def _anchor(text: str | None) -> Anchor | None:
    if text is None:
        return None
    try:
        return parse_anchor(text)
    except ValueError as error:
        raise typer.BadParameter(str(error)) from None


AnchorOption = Annotated[
    Anchor | None,
    typer.Option(
        "--anchor",
        parser=_anchor,
        metavar="SEQUENCE:HEAD",
        help="Also check that the chain's head after event SEQUENCE is HEAD "
        "(as `ledger audit head` printed it).",
        show_default=False,
    ),
]


@audit_app.command("verify")
@errors_as_exit_codes
@view_errors
def verify_command(
    anchor: AnchorOption = None,
    store: StoreOption = DEFAULT_STORE_URL,
    as_json: JsonOption = False,  # noqa: FBT002
) -> None:
    """Recompute the hash chain, compare it with every seal, and check the ledger's invariants."""
    with open_store(store) as opened, progress_bar("verifying") as progress:
        verdict = verify(opened, progress=progress, anchor=anchor)
    if as_json:
        print_json(verdict)
    else:
        _show(verdict)
    if not verdict.ok:
        fail(verdict.problems[0].describe(), EXIT_AUDIT_FAILED)


def _show(verdict: Verdict) -> None:
    typer.echo(
        f"{verdict.events} events up to {verdict.sequence}; head {verdict.head}; "
        f"{verdict.seals_checked} seals checked; {verdict.unsealed_events} events not sealed yet"
    )
    for problem in verdict.problems:
        typer.echo(problem.describe())
    if verdict.problem_count > len(verdict.problems):
        typer.echo(f"... and {verdict.problem_count - len(verdict.problems)} more problems")
    if verdict.ok and verdict.seals_checked == 0 and verdict.events:
        # A store that was never sealed and one whose seals were removed look alike.
        typer.echo(
            "ok, but no seal covers any event: only an anchor kept outside the database "
            "(`ledger audit head`) can show the log was not rewritten"
        )
    elif verdict.ok:
        typer.echo("ok: the chain matches every seal and the invariants hold")


@audit_app.command("head")
@errors_as_exit_codes
@view_errors
def head_command(store: StoreOption = DEFAULT_STORE_URL, as_json: JsonOption = False) -> None:  # noqa: FBT002
    """Print the chain's head: keep it outside the database, check it with verify --anchor."""
    with open_store(store) as opened:
        link = head(opened)
    if as_json:
        print_json({"sequence": link.sequence, "events": link.events, "head": link.head.hex()})
        return
    typer.echo(f"{link.sequence}:{link.head.hex()}")
