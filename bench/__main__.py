"""`python -m bench [--quick]`: every scenario, a table, and bench/results/latest.json."""

from __future__ import annotations

import argparse
import sys
import tempfile
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from functools import partial
from pathlib import Path

import anyio
import msgspec
import psycopg

from adapters.store import Store
from bench.fsync import fsync_rate
from bench.history import deposits, pending_opens
from bench.load import Load, engine_cycles, naive_cycles
from bench.machine import describe
from bench.measure import Figure, bounded, compared
from bench.memory import engine_peak_mib, without_views
from bench.naive import naive_log
from bench.replays import (
    account_full_replay_seconds,
    account_seconds,
    read_and_decode_rate,
    rebuild_rate,
    recovery_seconds,
)
from projections.runner import catch_up
from tests.conftest import drop_postgres_schema, fresh_postgres_schema
from tests.postgres_server import throwaway_postgres

RESULTS = Path(__file__).parent / "results" / "latest.json"


@dataclass(frozen=True)
class Sizes:
    fsyncs: int
    naive_cycles: int
    cycles: dict[int, int]
    """Open/close cycles at each concurrency."""
    pending: int
    histories: tuple[int, ...]
    account_events: int
    demo_seconds: float
    """How long the engine trades in the memory scenario."""


QUICK = Sizes(
    fsyncs=200,
    naive_cycles=60,
    cycles={1: 60, 16: 256, 256: 512},
    pending=100,
    histories=(1_000, 10_000),
    account_events=5_000,
    demo_seconds=2,
)
FULL = Sizes(
    fsyncs=2_000,
    naive_cycles=400,
    cycles={1: 400, 16: 2_048, 256: 4_096},
    pending=1_000,
    histories=(10_000, 100_000, 1_000_000),
    account_events=100_000,
    demo_seconds=10,
)


class Report(msgspec.Struct, frozen=True, kw_only=True):
    mode: str
    machine: object
    figures: list[Figure]


@contextmanager
def postgres_schemas() -> Iterator[Callable[[], str]]:
    """A throwaway server; each call gives the URL of a fresh, empty schema in it."""
    made: list[str] = []
    with throwaway_postgres() as server:

        def fresh() -> str:
            schema, url = fresh_postgres_schema(server)
            made.append(schema)
            return url

        try:
            yield fresh
        finally:
            for schema in made:
                drop_postgres_schema(server, schema)


def load_figures(
    kind: str, fresh: Callable[[], str], sizes: Sizes, fsync_p50: float
) -> list[Figure]:
    naive = anyio.run(lambda: naive_cycles(fresh(), cycles=sizes.naive_cycles))
    figures = [
        Figure(scenario=f"naive baseline ({kind})", name="ops/s", value=naive.rate, unit="1/s")
    ]
    loads: dict[int, Load] = {}
    for concurrency, cycles in sizes.cycles.items():
        loads[concurrency] = anyio.run(
            partial(engine_cycles, fresh(), concurrency=concurrency, cycles=cycles)
        )
        figures.append(
            Figure(
                scenario=f"engine ({kind})",
                name=f"ops/s at concurrency {concurrency}",
                value=loads[concurrency].rate,
                unit="1/s",
            )
        )
    top = max(sizes.cycles)
    figures.append(
        compared(
            f"engine ({kind})",
            f"ops/s at {top} vs naive",
            loads[top].rate,
            "1/s",
            baseline="naive ops/s",
            baseline_value=naive.rate,
            target=(">=", 10.0 if kind == "sqlite" else 5.0),
        )
    )
    figures.extend(
        Figure(
            scenario=f"latency ({kind})",
            name=f"p{round(share * 100)} at concurrency {concurrency}",
            value=loads[concurrency].p(share) * 1000,
            unit="ms",
        )
        for concurrency in (1, top)
        for share in (0.5, 0.99)
    )
    if kind == "sqlite":
        figures.append(
            compared(
                "latency (sqlite)",
                "p50 at concurrency 1 vs fsync p50",
                loads[1].p(0.5),
                "s",
                baseline="fsync p50",
                baseline_value=fsync_p50,
                target=("<=", 5.0),
            )
        )
        slow = anyio.run(
            partial(
                engine_cycles, fresh(), concurrency=top, cycles=sizes.cycles[top], latency_ms=20
            )
        )
        figures.append(
            compared(
                "broker latency 20 ms (sqlite)",
                f"ops/s at {top} vs zero latency",
                slow.rate,
                "1/s",
                baseline="zero-latency ops/s",
                baseline_value=loads[top].rate,
                target=(">=", 0.5),
            )
        )
    return figures


def history_figures(folder: Path, sizes: Sizes) -> list[Figure]:
    figures = []
    seconds: dict[int, float] = {}
    for events in sizes.histories:
        url = f"sqlite:///{folder / f'history-{events}.db'}"
        with Store.open(url) as store:
            deposits(store, "bench", events)
            pending_opens(store, "bench", sizes.pending)
            # As a running engine leaves them: its views follow the log.
            catch_up(store)
        seconds[events] = recovery_seconds(url)
        figures.append(
            Figure(
                scenario="recovery (sqlite)",
                name=f"{sizes.pending} pending over {events:,} events",
                value=seconds[events],
                unit="s",
            )
        )
    smallest, largest = min(seconds), max(seconds)
    figures.append(
        compared(
            "recovery (sqlite)",
            f"{largest:,} vs {smallest:,} events",
            seconds[largest],
            "s",
            baseline=f"{smallest:,} events",
            baseline_value=seconds[smallest],
            target=("<=", 1.5),
        )
    )
    figures += memory_figures(folder, sizes)
    rebuilt = f"sqlite:///{folder / f'history-{largest}.db'}"
    baseline = naive_log(folder / "naive-log.db", events=largest)
    figures.append(
        compared(
            "rebuild (sqlite)",
            "views rebuilt, events/s vs read-and-decode",
            rebuild_rate(rebuilt),
            "1/s",
            baseline="eventsourcing read-and-decode events/s",
            baseline_value=read_and_decode_rate(baseline),
            target=(">=", 1.0),
        )
    )
    baseline.close()
    account = f"sqlite:///{folder / 'account.db'}"
    with Store.open(account) as store:
        deposits(store, "long", sizes.account_events, intents=False)
    old = account_seconds(account, "long", sizes.account_events // 2)
    full = account_full_replay_seconds(account, "long")
    figures.append(
        compared(
            "point in time (sqlite)",
            f"account at version {sizes.account_events // 2:,} of {sizes.account_events:,}",
            old,
            "s",
            baseline="full replay of the account",
            baseline_value=full,
            target=("<=", 1 / 50),
        )
    )
    return figures


def memory_figures(folder: Path, sizes: Sizes) -> list[Figure]:
    """The engine's peak memory over the two longest histories (building their views from
    the first event), and how much it grew."""
    smaller, larger = sizes.histories[-2:]
    peaks = {
        events: engine_peak_mib(
            without_views(folder / f"history-{events}.db", folder / f"memory-{events}.db"),
            seconds=sizes.demo_seconds,
        )
        for events in (smaller, larger)
    }
    figures = [
        Figure(
            scenario="memory (sqlite)",
            name=f"engine peak RSS over {events:,} events",
            value=peak,
            unit="MiB",
        )
        for events, peak in peaks.items()
    ]
    figures.append(
        bounded(
            "memory (sqlite)",
            f"growth from {smaller:,} to {larger:,} events",
            peaks[larger] - peaks[smaller],
            "MiB",
            baseline=f"peak over {smaller:,} events",
            baseline_value=peaks[smaller],
            bound=64,
        )
    )
    return figures


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m bench", description=__doc__)
    parser.add_argument("--quick", action="store_true", help="small sizes: under a minute")
    arguments = parser.parse_args()
    sizes = QUICK if arguments.quick else FULL
    with tempfile.TemporaryDirectory(prefix="ledger-bench-", dir=Path.cwd()) as name:
        folder = Path(name)
        figures, fsync_p50 = fsync_rate(folder, sizes.fsyncs)
        counter = iter(range(1_000_000))
        figures += load_figures(
            "sqlite", lambda: f"sqlite:///{folder / f'load-{next(counter)}.db'}", sizes, fsync_p50
        )
        with postgres_schemas() as fresh:
            figures += load_figures("postgresql", fresh, sizes, fsync_p50)
            version = server_version(fresh().split("?")[0])
        figures += history_figures(folder, sizes)
    mode = "quick" if arguments.quick else "full"
    report = Report(mode=mode, machine=describe(version), figures=figures)
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_bytes(msgspec.json.format(msgspec.json.encode(report)) + b"\n")
    sys.stdout.write(table(report) + "\n")


def server_version(url: str) -> str:
    with psycopg.connect(url) as connection:
        row = connection.execute("SHOW server_version").fetchone()
    return "unknown" if row is None else str(row[0])


def table(report: Report) -> str:
    """The figures as a Markdown table, with the machine above it."""
    lines = [f"{report.mode} run on: {msgspec.json.encode(report.machine).decode()}", ""]
    lines.append("| scenario | figure | value | baseline | ratio | target | met |")
    lines.append("| --- | --- | --- | --- | --- | --- | --- |")
    for figure in report.figures:
        baseline = f"{figure.baseline} = {figure.baseline_value:.4g}" if figure.baseline else ""
        ratio = f"{figure.ratio:.3g}" if figure.ratio is not None else ""
        met = {True: "yes", False: "**no**", None: ""}[figure.met]
        lines.append(
            f"| {figure.scenario} | {figure.name} | {figure.value:.4g} {figure.unit} | "
            f"{baseline} | {ratio} | {figure.target or ''} | {met} |"
        )
    return "\n".join(lines)


if __name__ == "__main__":
    main()
