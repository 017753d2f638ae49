"""The engine's counters in the Prometheus text format, for `/metrics`.

`Metrics` is the engine's observer (see `ledger.ports.Observer`): the
engine and its writer report to it as they work, all on the event loop's
thread, so it needs no lock. Gauges (intents in flight, the breaker,
readiness) are read from the engine when scraped.
"""

from __future__ import annotations

import bisect
import math
from collections import Counter
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field

from ledger.engine import Engine
from recovery.recover import Report

SECONDS_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5)
BATCH_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256, 512)


@dataclass
class Histogram:
    buckets: Sequence[float]
    counts: list[int] = field(init=False)
    total: float = 0.0
    count: int = 0

    def __post_init__(self) -> None:
        self.counts = [0] * len(self.buckets)

    def observe(self, value: float) -> None:
        index = bisect.bisect_left(self.buckets, value)
        if index < len(self.counts):
            self.counts[index] += 1
        self.total += value
        self.count += 1

    def lines(self, name: str) -> Iterator[str]:
        cumulative = 0
        for bound, count in zip(self.buckets, self.counts, strict=True):
            cumulative += count
            yield f'{name}_bucket{{le="{_number(bound)}"}} {cumulative}'
        yield f'{name}_bucket{{le="+Inf"}} {self.count}'
        yield f"{name}_sum {_number(self.total)}"
        yield f"{name}_count {self.count}"


class Metrics:
    """What the engine did since it started, as Prometheus reads it."""

    def __init__(self) -> None:
        self.operations: Counter[tuple[str, str]] = Counter()
        self.commit_seconds = Histogram(SECONDS_BUCKETS)
        self.commit_batch = Histogram(BATCH_BUCKETS)
        self.broker_seconds = Histogram(SECONDS_BUCKETS)
        self.reconciliations = 0
        self.differences: Counter[str] = Counter()
        self.standing: Counter[str] = Counter()
        """The differences the last pass found, by finding."""

    # The engine's observer --------------------------------------------------------------

    def operation(self, name: str, outcome: str) -> None:
        self.operations[name, outcome] += 1

    def broker_call(self, seconds: float) -> None:
        self.broker_seconds.observe(seconds)

    def commit(self, commands: int, seconds: float) -> None:
        self.commit_seconds.observe(seconds)
        self.commit_batch.observe(commands)

    def reconciled(self, report: Report) -> None:
        """A reconciliation pass ended; each finding is a difference between ledger and broker."""
        self.reconciliations += 1
        self.standing = Counter(str(item.finding) for item in report.items)
        self.differences.update(self.standing)

    # The text -------------------------------------------------------------------------

    def render(self, engine: Engine | None) -> str:
        return "\n".join(self._lines(engine)) + "\n"

    def _lines(self, engine: Engine | None) -> Iterator[str]:
        yield from _family("ledger_operations_total", "counter", "Operations by kind and outcome.")
        for (name, outcome), count in sorted(self.operations.items()):
            yield f'ledger_operations_total{{operation="{name}",outcome="{outcome}"}} {count}'
        gauges: list[tuple[str, str, Callable[[Engine], float]]] = [
            ("ledger_ready", "1 once the lease is held and recovery finished.", _ready),
            ("ledger_intents_in_flight", "Intents this engine is sending now.", _in_flight),
            ("ledger_circuit_breaker_open", "1 while broker writes are paused.", _breaker),
        ]
        for name, help_text, read in gauges:
            yield from _family(name, "gauge", help_text)
            yield f"{name} {_number(read(engine) if engine is not None else 0)}"
        histograms = [
            ("ledger_commit_seconds", "Time of one group commit.", self.commit_seconds),
            ("ledger_commit_batch_size", "Commands in one group commit.", self.commit_batch),
            ("ledger_broker_call_seconds", "Time of one broker call.", self.broker_seconds),
        ]
        for name, help_text, histogram in histograms:
            yield from _family(name, "histogram", help_text)
            yield from histogram.lines(name)
        yield from _family("ledger_reconciliations_total", "counter", "Reconciliation passes.")
        yield f"ledger_reconciliations_total {self.reconciliations}"
        yield from _family(
            "ledger_reconciliation_differences_total",
            "counter",
            "Differences found between ledger and broker, by finding, summed over every pass.",
        )
        for finding, count in sorted(self.differences.items()):
            yield f'ledger_reconciliation_differences_total{{finding="{finding}"}} {count}'
        yield from _family(
            "ledger_reconciliation_differences",
            "gauge",
            "Differences between ledger and broker the last pass found, by finding.",
        )
        # Every finding ever seen stays a series: one that went away reads 0, not missing.
        for finding in sorted(self.differences):
            count = self.standing[finding]
            yield f'ledger_reconciliation_differences{{finding="{finding}"}} {count}'


def _family(name: str, kind: str, help_text: str) -> Iterator[str]:
    yield f"# HELP {name} {help_text}"
    yield f"# TYPE {name} {kind}"


def _ready(engine: Engine) -> float:
    return float(engine.ready)


def _in_flight(engine: Engine) -> float:
    return float(len(engine.in_flight))


def _breaker(engine: Engine) -> float:
    return float(engine.breaker_open)


def _number(value: float) -> str:
    if math.isinf(value):
        return "+Inf"
    return repr(float(value)) if not float(value).is_integer() else str(int(value))
