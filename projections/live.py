"""The store, finding what is live (unfinished intents, open positions) from the views.

Finding them in the log means reading every intent and position event
there ever was: recovery would take longer the longer the history. The
pending and positions views hold exactly the live ones; caught up first
(which costs only what they have not yet seen, a moment's worth under a
running engine), they answer in time that follows the live set instead.
The engine's writer calls this between its commits, so the views see
every commit it made.
"""

from __future__ import annotations

from uuid import UUID

from adapters.store import Store
from projections.catalogue import VIEWS
from projections.database import Database
from projections.pending import PendingView
from projections.positions import PositionsView
from projections.queries import pending_intents, positions
from projections.runner import catch_up


class ViewIndexedStore(Store):
    """A store that lists live intents and positions from the views (open it as any store)."""

    def unfinished_intents(self) -> list[UUID]:
        self._catch_up(PendingView)
        return [row.intent_id for row in pending_intents(self)]

    def open_positions(self) -> list[UUID]:
        self._catch_up(PositionsView)
        return [row.position_id for row in positions(self)]

    def _catch_up(self, view: type[PendingView | PositionsView]) -> None:
        catch_up(self, views=[VIEWS[view.name](Database(self))])
