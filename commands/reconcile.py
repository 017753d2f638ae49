"""`ledger recover`, `ledger reconcile` and `ledger wal resolve`.

Exit codes: `recover` and `reconcile` exit 0 when the ledger and the
broker agree and nothing awaits an operator, 3 when something does.
"""

from __future__ import annotations

import enum
import functools
import sys
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Annotated
from uuid import UUID

import anyio
import msgspec
import typer
from rich.console import Console

from adapters.bootstrap import open_engine
from adapters.paper.settings import DEFAULT_BROKER_URL
from adapters.store import DEFAULT_STORE_URL
from commands.shared import (
    EXIT_UNAVAILABLE,
    BrokerOption,
    JsonOption,
    StoreOption,
    errors_as_exit_codes,
    open_broker,
    open_store,
    operator_name,
    print_json,
    show,
)
from ledger import settlement
from ledger.engine import Engine
from ledger.errors import InvalidValue
from ledger.ids import parse_id
from ledger.intent import Intent, IntentKind, IntentStatus, OpenRequest
from ledger.ports import Accepted
from ledger.reconciliation import Trigger
from ledger.writer import UnitOfWork
from recovery.context import Apply, ProtectionPolicy
from recovery.recover import Report, reconcile

PolicyOption = Annotated[
    ProtectionPolicy,
    typer.Option(
        "--sl-policy",
        help="When the broker's SL/TP differ: restore the ledger's, adopt the broker's, or flag.",
        case_sensitive=False,
    ),
]

PlanOption = Annotated[
    bool, typer.Option("--plan", help="Show the differences and what would be written.")
]
ApplyOption = Annotated[
    bool, typer.Option("--apply", help="Write them, adoptions of external positions included.")
]


class Outcome(enum.StrEnum):
    COMPLETED = "completed"
    ROLLED_BACK = "rolled_back"


@errors_as_exit_codes
def recover(
    store: StoreOption = DEFAULT_STORE_URL,
    broker: BrokerOption = DEFAULT_BROKER_URL,
    policy: PolicyOption = ProtectionPolicy.RESTORE,
    as_json: JsonOption = False,  # noqa: FBT002
) -> None:
    """Run startup recovery alone: settle what broker evidence backs, flag the rest."""
    report = _as_startup(store, broker, Trigger.STARTUP, Apply.EVIDENCE, policy)
    _finish(report, as_json=as_json)


def _as_startup(
    store: str, broker: str, trigger: Trigger, apply: Apply, policy: ProtectionPolicy
) -> Report:
    """Take the lease and run one pass as the engine's startup; return its report."""
    reports: list[Report] = []

    async def startup(engine: Engine) -> None:
        with stages() as progress:
            reports.append(
                await reconcile(
                    engine, trigger=trigger, apply=apply, policy=policy, progress=progress
                )
            )

    async def once() -> None:
        async with open_engine(store=store, broker=broker, startup=startup):
            pass

    anyio.run(once)
    return reports[0]


@contextmanager
def stages() -> Iterator[Callable[[str], None]]:
    """Show the stage a pass is in, on a terminal (stderr); nothing when it is not one."""
    if not sys.stderr.isatty():
        yield lambda _: None
        return
    console = Console(stderr=True)
    with console.status("reconciling") as status:
        yield status.update


@errors_as_exit_codes
def reconcile_command(
    store: StoreOption = DEFAULT_STORE_URL,
    broker: BrokerOption = DEFAULT_BROKER_URL,
    plan: PlanOption = False,  # noqa: FBT002
    apply: ApplyOption = False,  # noqa: FBT002
    policy: PolicyOption = ProtectionPolicy.RESTORE,
    as_json: JsonOption = False,  # noqa: FBT002
) -> None:
    """Compare the ledger with the broker: --plan writes nothing, --apply writes the plan."""
    if plan == apply:
        raise InvalidValue("reconcile", "say --plan or --apply")
    if plan:
        report = anyio.run(functools.partial(_plan, store, broker, policy))
    else:
        report = _as_startup(store, broker, Trigger.OPERATOR, Apply.ALL, policy)
    _finish(report, as_json=as_json)


async def _plan(store: str, broker: str, policy: ProtectionPolicy) -> Report:
    # A plan takes no lease and starts no broker session: it only reads, so
    # it may run beside an engine, and looking changes nothing.
    with open_store(store) as opened_store, open_broker(broker) as opened_broker:
        async with anyio.create_task_group() as tasks:
            engine = Engine(opened_store, opened_broker, epoch=0)
            await tasks.start(engine.writer.run)
            try:
                with stages() as progress:
                    report = await reconcile(
                        engine,
                        trigger=Trigger.OPERATOR,
                        apply=Apply.NOTHING,
                        policy=policy,
                        progress=progress,
                    )
            finally:
                engine.writer.close()
    return report


def _finish(report: Report, *, as_json: bool) -> None:
    if as_json:
        print_json({**msgspec.structs.asdict(report), "needs_review": report.needs_review})
    else:
        written = "recorded" if report.recorded else "not recorded: nothing new"
        typer.echo(
            f"{report.trigger} reconciliation {report.report_id} "
            f"({report.apply}; {len(report.items)} findings; {written})"
        )
        show(report.items, ["finding", "account", "subject", "applied", "detail"], as_json=False)
    if report.needs_review:
        raise typer.Exit(EXIT_UNAVAILABLE)


@errors_as_exit_codes
def resolve(
    intent_id: Annotated[str, typer.Argument(help="The intent under review.")],
    outcome: Annotated[Outcome, typer.Option("--outcome", help="What happened at the broker.")],
    reason: Annotated[str, typer.Option("--reason", help="Why: what the operator checked.")],
    broker_ref: Annotated[
        str | None,
        typer.Option("--broker-ref", help="The broker's order that carried it out (completed)."),
    ] = None,
    store: StoreOption = DEFAULT_STORE_URL,
    broker: BrokerOption = DEFAULT_BROKER_URL,
) -> None:
    """Resolve an intent awaiting review, recording the operator and the reason."""
    target = parse_id(intent_id, "intent")
    if not reason.strip():
        raise InvalidValue("reason", "say why")
    if outcome is Outcome.COMPLETED and broker_ref is None:
        raise InvalidValue("broker-ref", "a completed resolution names the broker's order")
    actor = operator_name()

    async def once() -> None:
        async with open_engine(store=store, broker=broker) as engine:
            await _resolve(engine, target, outcome, actor, reason, broker_ref)

    anyio.run(once)
    typer.echo(f"intent {target} {outcome} by {actor}")


async def _resolve(
    engine: Engine,
    intent_id: UUID,
    outcome: Outcome,
    actor: str,
    reason: str,
    broker_ref: str | None,
) -> None:
    intent = await engine.writer.execute(lambda unit: unit.get(Intent, intent_id))
    if intent is None:
        raise InvalidValue("intent", f"no intent {intent_id}")
    if isinstance(intent.payload, OpenRequest):
        await engine.instrument(intent.payload.symbol)
    accepted = None
    if outcome is Outcome.COMPLETED and broker_ref is not None:
        fills = tuple(f for f in await engine.broker.fills() if f.order_ref == broker_ref)
        if not fills and intent.kind is not IntentKind.POSITION_UPDATE:
            raise InvalidValue("broker-ref", f"the broker shows no fill of order {broker_ref}")
        accepted = Accepted(broker_ref=broker_ref, fills=fills)
    now = engine.clock()

    def command(unit: UnitOfWork) -> None:
        settlement.resolve_by_operator(
            unit,
            intent_id,
            IntentStatus(outcome.value),
            actor=actor,
            reason=reason,
            accepted=accepted,
            now=now,
            instrument_of=engine.known_instrument,
        )

    await engine.writer.execute(command)


def register(app: typer.Typer, wal_app: typer.Typer) -> None:
    app.command("recover")(recover)
    app.command("reconcile")(reconcile_command)
    wal_app.command("resolve")(resolve)
