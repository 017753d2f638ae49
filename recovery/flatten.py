"""Flattening for kill switches engaged with `--flatten`, while the engine runs.

The switch is engaged from another process (it writes only an event);
the running engine finds it here, after each reconciliation pass, and
closes what is still open through normal intents. A close whose outcome
is unknown is left to the next pass's recovery, and the pass after that
closes whatever is still open: so the account ends flat at the broker,
and the switch stays latched until it is.
"""

from __future__ import annotations

from uuid import UUID

from ledger.controls import RiskControls, controls_id
from ledger.engine import Engine
from ledger.results import Closing
from ledger.writer import UnitOfWork


async def flatten_latched(engine: Engine) -> list[Closing]:
    """Close the open positions of every account under a flattening kill switch."""
    scopes = await engine.writer.execute(lambda unit: _flattening(engine, unit))
    if None in scopes:
        return await engine.flatten(None)
    closings: list[Closing] = []
    for scope in scopes:
        closings += await engine.flatten(scope)
    return closings


def _flattening(engine: Engine, unit: UnitOfWork) -> list[UUID | None]:
    """The scopes (None: every account) whose kill switch is engaged to flatten."""
    flattening: list[UUID | None] = []
    for scope in [None, *engine.store.accounts()]:
        controls = unit.current(RiskControls, controls_id(scope))
        engaged = None if controls is None else controls.kill_switch
        if engaged is not None and engaged.flatten:
            flattening.append(scope)
    return flattening
