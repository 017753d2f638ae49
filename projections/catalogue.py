"""Every view, by name: what `ledger rebuild --projection NAME` accepts."""

from __future__ import annotations

from projections.balances import BalancesView
from projections.database import Database
from projections.errors import UnknownView
from projections.pending import PendingView
from projections.positions import PositionsView
from projections.risk import RiskView
from projections.view import View

VIEWS: dict[str, type[View]] = {
    view.name: view for view in (PositionsView, BalancesView, PendingView, RiskView)
}


def view_names(name: str | None = None) -> list[str]:
    """`[name]` if it names a view, every view's name for None or "all"."""
    if name is None or name == "all":
        return list(VIEWS)
    if name not in VIEWS:
        raise UnknownView(f"no view named {name!r} (known: {', '.join(VIEWS)}, all)")
    return [name]


def live_views(database: Database, names: list[str] | None = None) -> list[View]:
    """The views readers see, one instance each."""
    return [VIEWS[name](database) for name in names or list(VIEWS)]
