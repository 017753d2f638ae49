"""Running a child process until it pauses at a named point, then `kill -9`."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

from projections.runner import PAUSE_VARIABLE

ROOT = Path(__file__).resolve().parents[2]


def kill_when_paused(
    code: str,
    *arguments: str,
    point: str,
    set_pause: bool = True,
    while_paused: Callable[[], None] | None = None,
) -> list[str]:
    """Run `code` with `arguments`; SIGKILL it once it says it paused at `point`.

    With `set_pause`, the child pauses at the first `point` it reaches;
    without, the child sets LEDGER_TEST_VIEWS_PAUSE itself when it should.
    `while_paused` runs while the child waits, before it is killed.
    Returns the lines the child printed on stdout.
    """
    environment = {**os.environ, "PYTHONPATH": str(ROOT)}
    if set_pause:
        environment[PAUSE_VARIABLE] = point
    with subprocess.Popen(
        [sys.executable, "-c", code, *arguments],
        cwd=ROOT,
        env=environment,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    ) as child:
        assert child.stderr is not None
        said = []
        for line in child.stderr:
            said.append(line)
            if line.strip() == f"paused at {point}":
                try:
                    if while_paused is not None:
                        while_paused()
                finally:
                    child.send_signal(signal.SIGKILL)
                break
        printed, _ = child.communicate()
    assert child.returncode == -signal.SIGKILL, "".join(said)
    return printed.splitlines()
