"""The physical limit: 64-byte writes, each followed by fsync, one thread, on the store's disk."""

from __future__ import annotations

import os
import time
from pathlib import Path

from bench.measure import Figure, percentile

RECORD = b"x" * 64


def fsync_rate(folder: Path, count: int) -> tuple[list[Figure], float]:
    """Figures for `count` write+fsync pairs in `folder`; also the p50 in seconds."""
    path = folder / "fsync.bin"
    descriptor = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
    samples = []
    try:
        for _ in range(count):
            started = time.perf_counter()
            os.write(descriptor, RECORD)
            os.fsync(descriptor)
            samples.append(time.perf_counter() - started)
    finally:
        os.close(descriptor)
        path.unlink()
    p50 = percentile(samples, 0.5)
    figures = [
        Figure(scenario="physical limit", name="fsyncs/s", value=count / sum(samples), unit="1/s"),
        Figure(scenario="physical limit", name="fsync p50", value=p50 * 1000, unit="ms"),
    ]
    return figures, p50
