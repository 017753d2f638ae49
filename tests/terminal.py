"""Running the `ledger` command with its stderr on a terminal, as an operator would see it."""

from __future__ import annotations

import os
import pty
import subprocess
import sys
from pathlib import Path

LEDGER = Path(sys.executable).parent / "ledger"


def on_terminal(arguments: list[str], cwd: Path) -> tuple[int, bytes, str]:
    """Run `ledger arguments` with stderr on a pseudo-terminal and stdout piped.

    Returns the exit code, what the terminal showed, and stdout.
    """
    environment = {k: v for k, v in os.environ.items() if k != "LEDGER_STORE"}
    controller, terminal = pty.openpty()
    with subprocess.Popen(
        [str(LEDGER), *arguments],
        cwd=cwd,
        env=environment,
        stdout=subprocess.PIPE,
        stderr=terminal,
        text=True,
    ) as child:
        os.close(terminal)
        shown = b""
        while True:
            try:
                chunk = os.read(controller, 4096)
            except OSError:  # the terminal closed with the child
                break
            if not chunk:
                break
            shown += chunk
        output, _ = child.communicate()
    os.close(controller)
    return child.returncode, shown, output
