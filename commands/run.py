"""`ledger run`: the engine as a long-running process, optionally trading a paper demo."""

from __future__ import annotations

import contextlib
import signal
import sys
import time
from dataclasses import dataclass
from functools import partial
from typing import Annotated, NamedTuple

import anyio
import anyio.abc
import typer
from rich.console import Console
from rich.live import Live
from rich.table import Table

from adapters.bootstrap import open_engine
from adapters.http.api import build_app
from adapters.http.metrics import Metrics
from adapters.http.server import DEFAULT_ADDRESS, HttpServer, announced, listen, parse_address
from adapters.http.service import Service
from adapters.http.tokens import Tokens
from adapters.paper.broker import PaperBroker
from adapters.paper.settings import DEFAULT_BROKER_URL
from adapters.store import DEFAULT_STORE_URL, Store
from commands.reconcile import PolicyOption
from commands.shared import BrokerOption, StoreOption, errors_as_exit_codes
from ledger.demo import DemoStatistics, prepare_accounts, run_demo
from ledger.engine import Engine
from ledger.errors import InvalidValue
from projections import follow
from recovery.context import ProtectionPolicy
from recovery.job import reconcile_every
from recovery.recover import Report, recover_at_startup

# After a stop, traders get this long to finish the operation they are in;
# what is still in flight then is left to recovery, never guessed.
GRACE_SECONDS = 10.0
VIEW_INTERVAL_SECONDS = 0.5
LOG_INTERVAL_SECONDS = 2.0
RECONCILE_EVERY_SECONDS = 5.0


@errors_as_exit_codes
def run(
    store: StoreOption = DEFAULT_STORE_URL,
    broker: BrokerOption = DEFAULT_BROKER_URL,
    demo: Annotated[bool, typer.Option("--demo", help="Trade a paper demo session.")] = False,  # noqa: FBT002
    seed: Annotated[int, typer.Option("--seed", help="Seed of the demo traders' choices.")] = 1,
    duration: Annotated[
        float | None,
        typer.Option("--duration", min=0.1, help="Stop after this many seconds."),
    ] = None,
    reconcile_every: Annotated[
        float,
        typer.Option(
            "--reconcile-every",
            min=0.0,
            help="Reconcile with the broker every this many seconds (0: only at startup).",
        ),
    ] = RECONCILE_EVERY_SECONDS,
    policy: PolicyOption = ProtectionPolicy.RESTORE,
    http: Annotated[
        str,
        typer.Option(
            "--http",
            envvar="LEDGER_HTTP",
            help="Serve the API on HOST:PORT (port 0: any free port).",
        ),
    ] = DEFAULT_ADDRESS,
    no_http: Annotated[bool, typer.Option("--no-http", help="Serve no API.")] = False,  # noqa: FBT002
) -> None:
    """Recover, then run the engine and its API; stop with Ctrl-C (SIGINT) or SIGTERM."""
    statistics = DemoStatistics()
    session = Session(
        demo=demo,
        seed=seed,
        reconcile_every=reconcile_every,
        policy=policy,
        http=None if no_http else parse_address(http),
    )
    anyio.run(_serve, store, broker, session, duration, statistics)
    _summary(statistics, demo=demo)


@dataclass(frozen=True)
class Session:
    """What `ledger run` was asked to do."""

    demo: bool
    seed: int
    reconcile_every: float
    policy: ProtectionPolicy
    http: tuple[str, int] | None
    """Where the API listens; None: no API."""


async def _serve(
    store: str,
    broker: str,
    session: Session,
    duration: float | None,
    statistics: DemoStatistics,
) -> None:
    stop = anyio.Event()
    metrics = Metrics()
    # The views read and write through their own connections to the same
    # database: they follow the log the engine's writer appends to.
    with Store.open(store) as views, contextlib.ExitStack() as resources:
        api = None if session.http is None else _api(store, session, metrics, resources)
        async with anyio.create_task_group() as outer:

            async def startup(engine: Engine) -> None:
                # The API answers from the moment the lease is held: /ready
                # says false while recovery runs, and operations are refused.
                if api is not None:
                    api.service.engine = engine
                    await outer.start(api.server.run)
                    resources.enter_context(announced(store, api.server.url))
                    typer.echo(f"API on {api.server.url} (tokens: ledger token show)", err=True)
                metrics.reconciled(await _startup(engine, policy=session.policy))

            async with open_engine(
                store=store, broker=broker, startup=startup, observer=metrics
            ) as engine:
                try:
                    await _run(engine, views, session, duration, stop, statistics, metrics)
                finally:
                    if api is not None:
                        await api.server.stop()


class Api(NamedTuple):
    service: Service
    server: HttpServer


def _api(store: str, session: Session, metrics: Metrics, resources: contextlib.ExitStack) -> Api:
    if session.http is None:  # pragma: no cover - the caller asks only with an address
        raise InvalidValue("http", "no address")
    tokens = Tokens.of_store(store)
    tokens.ensure()
    reader = resources.enter_context(Store.open(store))
    service = Service(reader=reader, tokens=tokens, metrics=metrics, policy=session.policy)
    listener = listen(*session.http)
    resources.callback(listener.close)
    return Api(service, HttpServer(build_app(service), listener))


async def _run(
    engine: Engine,
    views: Store,
    session: Session,
    duration: float | None,
    stop: anyio.Event,
    statistics: DemoStatistics,
    metrics: Metrics,
) -> None:
    async with anyio.create_task_group() as tasks:
        await tasks.start(follow, views)
        tasks.start_soon(_stop_on_signal, stop)
        if duration is not None:
            tasks.start_soon(_stop_after, duration, stop)
        tasks.start_soon(_show, engine, statistics, stop)
        if session.reconcile_every:
            await tasks.start(
                partial(
                    reconcile_every,
                    engine,
                    session.reconcile_every,
                    policy=session.policy,
                    on_report=lambda report: _say_found(report, metrics),
                    on_error=lambda error: typer.echo(f"reconciliation failed: {error}", err=True),
                )
            )
        if session.demo:
            await _demo(engine, session.seed, stop, statistics)
        else:
            typer.echo(f"engine running on epoch {engine.epoch}; Ctrl-C stops it")
            await stop.wait()
        tasks.cancel_scope.cancel()


async def _startup(engine: Engine, *, policy: ProtectionPolicy) -> Report:
    report = await recover_at_startup(engine, policy)
    typer.echo(
        f"recovered: {len(report.items)} findings"
        + ("; some need review (ledger recover)" if report.needs_review else ""),
        err=True,
    )
    return report


def _say_found(report: Report, metrics: Metrics) -> None:
    metrics.reconciled(report)
    applied = sum(item.applied for item in report.items)
    if applied:
        typer.echo(f"reconciliation: {applied} changes from broker evidence", err=True)


async def _demo(engine: Engine, seed: int, stop: anyio.Event, statistics: DemoStatistics) -> None:
    if not isinstance(engine.broker, PaperBroker):
        raise InvalidValue("broker", "the demo trades on the paper broker only")
    await prepare_accounts(engine, engine.broker, engine.broker.fund)
    async with anyio.create_task_group() as traders:

        async def cut_off() -> None:
            await stop.wait()
            await anyio.sleep(GRACE_SECONDS)
            traders.cancel_scope.cancel()

        traders.start_soon(cut_off)
        await run_demo(engine, engine.broker, seed=seed, stop=stop, statistics=statistics)
        traders.cancel_scope.cancel()


async def _stop_on_signal(stop: anyio.Event) -> None:
    with anyio.open_signal_receiver(signal.SIGINT, signal.SIGTERM) as signals:
        async for _ in signals:
            stop.set()
            return


async def _stop_after(seconds: float, stop: anyio.Event) -> None:
    await anyio.sleep(seconds)
    stop.set()


async def _show(engine: Engine, statistics: DemoStatistics, stop: anyio.Event) -> None:
    """A live table on a terminal; a plain line every few seconds when piped."""
    if not sys.stdout.isatty():
        while not stop.is_set():
            await anyio.sleep(LOG_INTERVAL_SECONDS)
            typer.echo(_line(engine, statistics))
        return
    with Live(_table(engine, statistics), console=Console(), auto_refresh=False) as live:
        while not stop.is_set():
            await anyio.sleep(VIEW_INTERVAL_SECONDS)
            live.update(_table(engine, statistics), refresh=True)


def _line(engine: Engine, statistics: DemoStatistics) -> str:
    writer = engine.writer.statistics
    return (
        f"{time.strftime('%H:%M:%S')} ops {statistics.operations} "
        f"({statistics.per_second():.0f}/s) open {len(statistics.open_positions)} "
        f"in flight {statistics.in_flight} rejected {statistics.rejected} "
        f"unknown {statistics.unknown} commits {writer.transactions}"
    )


def _table(engine: Engine, statistics: DemoStatistics) -> Table:
    table = Table(title=f"ledger engine, epoch {engine.epoch}")
    table.add_column("what")
    table.add_column("count", justify="right")
    writer = engine.writer.statistics
    rows = [
        ("operations per second", f"{statistics.per_second():.0f}"),
        ("positions opened", statistics.opened),
        ("positions closed", statistics.closed),
        ("stop-losses moved", statistics.stops_moved),
        ("open positions", len(statistics.open_positions)),
        ("intents in flight", statistics.in_flight),
        ("rejected", statistics.rejected),
        ("outcome unknown", statistics.unknown),
        ("commits / commands", f"{writer.transactions} / {writer.commands}"),
    ]
    for what, count in rows:
        table.add_row(what, str(count))
    return table


def _summary(statistics: DemoStatistics, *, demo: bool) -> None:
    if not demo:
        typer.echo("engine stopped")
        return
    typer.echo(
        f"demo stopped: {statistics.operations} operations "
        f"({statistics.per_second():.0f}/s): {statistics.opened} opened, "
        f"{statistics.closed} closed, {statistics.stops_moved} stop-losses moved, "
        f"{statistics.rejected} rejected, {statistics.unknown} left in flight for recovery"
    )
