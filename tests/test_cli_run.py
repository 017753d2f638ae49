"""`ledger run`: started, stopped by a signal or a duration, summarised."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import time

import pytest

from tests.test_cli import LEDGER, ledger


@pytest.mark.parametrize("stop", [signal.SIGTERM, signal.SIGINT])
def test_a_signal_stops_the_demo_cleanly_with_a_summary(tmp_path, stop):
    with subprocess.Popen(
        [str(LEDGER), "run", "--demo", "--http", "127.0.0.1:0"],
        cwd=tmp_path,
        env={k: v for k, v in os.environ.items() if not k.startswith("LEDGER_")},
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    ) as demo:
        time.sleep(3)
        demo.send_signal(stop)
        output, errors = demo.communicate(timeout=30)
    assert demo.returncode == 0, errors
    summary = output.strip().splitlines()[-1]
    assert summary.startswith("demo stopped: ")
    assert " opened, " in summary
    # Piped output is a plain log, not a live terminal view.
    assert "\x1b[" not in output
    pending = json.loads(ledger("wal", "pending", "--json", cwd=tmp_path).stdout)
    unknown = int(summary.split(", ")[-1].split()[0])
    assert len(pending) == unknown


def test_run_without_demo_holds_the_lease_until_its_duration_ends(tmp_path):
    with subprocess.Popen(
        [str(LEDGER), "run", "--duration", "3", "--no-http"],
        cwd=tmp_path,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    ) as engine:
        time.sleep(1.5)
        second = ledger("deposit", "main", "5", "--currency", "USD", cwd=tmp_path)
        output, _ = engine.communicate(timeout=30)
    assert second.returncode == 3
    assert "in use by another engine (pid " in second.stderr
    assert output.splitlines()[0].startswith("engine running on epoch 1")
    assert output.strip().endswith("engine stopped")
    after = ledger("deposit", "main", "5", "--currency", "USD", "--json", cwd=tmp_path)
    assert after.returncode == 0, after.stderr
