"""Timing and the shape of a result: a figure, its baseline, their ratio and the target."""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager

import msgspec


class Figure(msgspec.Struct, frozen=True, kw_only=True):
    """One measured figure and what it is compared with."""

    scenario: str
    name: str
    value: float
    unit: str
    baseline: str | None = None
    """What `ratio` divides by, named, when the figure has a target."""
    baseline_value: float | None = None
    ratio: float | None = None
    target: str | None = None
    """The target: a ratio (e.g. '>= 10' or '<= 1.5'), or a bound with its unit ('<= 64 MiB')."""
    met: bool | None = None


def compared(
    scenario: str,
    name: str,
    value: float,
    unit: str,
    *,
    baseline: str,
    baseline_value: float,
    target: tuple[str, float],
) -> Figure:
    """A figure with its ratio to `baseline_value` and whether the target ratio is met."""
    ratio = value / baseline_value if baseline_value else math.inf
    sign, bound = target
    met = ratio >= bound if sign == ">=" else ratio <= bound
    return Figure(
        scenario=scenario,
        name=name,
        value=value,
        unit=unit,
        baseline=baseline,
        baseline_value=baseline_value,
        ratio=ratio,
        target=f"{sign} {bound:g}",
        met=met,
    )


def bounded(
    scenario: str,
    name: str,
    value: float,
    unit: str,
    *,
    baseline: str,
    baseline_value: float,
    bound: float,
) -> Figure:
    """A figure whose target is an absolute bound in its own unit (e.g. growth in MiB)."""
    return Figure(
        scenario=scenario,
        name=name,
        value=value,
        unit=unit,
        baseline=baseline,
        baseline_value=baseline_value,
        target=f"<= {bound:g} {unit}",
        met=value <= bound,
    )


def percentile(samples: list[float], share: float) -> float:
    """The `share` (0..1) percentile of `samples`, nearest rank."""
    if not samples:
        return math.nan
    ordered = sorted(samples)
    rank = max(1, math.ceil(share * len(ordered)))
    return ordered[rank - 1]


@contextmanager
def stopwatch() -> Iterator[Callable[[], float]]:
    """Seconds since the block began, readable inside it and after it."""
    started = time.perf_counter()
    ended: list[float] = []

    def elapsed() -> float:
        return (ended[0] if ended else time.perf_counter()) - started

    try:
        yield elapsed
    finally:
        ended.append(time.perf_counter())
