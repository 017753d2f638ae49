"""Read models that follow the event log: positions, balances, pending WAL, daily risk.

Each view has tables of its own next to the events, in the same database,
and a tracked position in the notification log written in the same
transaction as its rows.

- `catch_up(store)`: bring every view to the log's end (read commands do
  this first, so what they show is never older than the last commit);
- `follow(store)`: keep them current while the engine runs (an anyio task);
- `rebuild(store, name)`: rebuild from position 0 into fresh tables and
  swap them in at once; `check(store, name)` compares a rebuild with the view;
- `queries`: read the views.
"""

from __future__ import annotations

from projections.catalogue import VIEWS
from projections.errors import ProjectionError, UnknownView, ViewOutdated
from projections.rebuild import Difference, check, rebuild
from projections.runner import catch_up, follow

__all__ = [
    "VIEWS",
    "Difference",
    "ProjectionError",
    "UnknownView",
    "ViewOutdated",
    "catch_up",
    "check",
    "follow",
    "rebuild",
]
