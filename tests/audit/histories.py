"""Engine histories for the history commands' tests, played by the views' tests' `History`:
each played once per test module and store kind, for tests that only read them.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import anyio
import pytest

from adapters.store import Store
from ledger.position import PositionFlag
from tests.conftest import drop_postgres_schema, fresh_postgres_schema
from tests.projections.test_histories import FAULTS, History

# Both accounts, with the broker's faults: deposits and withdrawals, opens and closes (whole
# and partial), a stop-loss removed, a position adopted, flagged and partly closed at the
# broker, a restart, a day passing, and the views catching up on the way.
FIXED_STEPS: list[tuple[Any, ...]] = [
    ("deposit", "desk", 250_000),
    ("open", "main", "BTCUSD", True),
    ("open", "desk", "ETHUSD", False),
    ("open", "main", "ETHUSD", True),
    ("catch_up", 60),
    ("stop", 0),
    ("close", 1, True),
    ("adopt", "desk"),
    ("flag", 3, PositionFlag.ORPHAN),
    ("tomorrow",),
    ("closed_at_broker", 3, True),
    ("withdraw", "main", 100_000),
    ("restart",),
    ("close", 0, False),
    ("open", "desk", "BTCUSD", True),
    ("catch_up", 100),
    ("close", 2, False),
]


# Trading alone, through the engine, with every stop-loss change refused by the broker: every
# change of a balance has an intent behind it, and one intent of each kind and outcome.
TRADING_STEPS: list[tuple[Any, ...]] = [
    ("open", "main", "BTCUSD", True),
    ("open", "main", "ETHUSD", False),
    ("stop", 0),
    ("close", 0, True),
    ("close", 0, False),
    ("close", 1, False),
    ("withdraw", "main", 50_000),
    ("deposit", "main", 10_000),
]
TRADING_FAULTS = "reject_sl_change:1"


def play(
    url: str, folder: Path, steps: list[tuple[Any, ...]], *, faults: str = FAULTS, seed: int = 7
) -> History:
    """Run `steps` through the engine on the store at `url`, the broker with `faults`."""
    history = History(url, folder, seed)
    history.broker = f"{history.clean_broker}&faults={faults}"
    with Store.open(url) as reader:
        anyio.run(history.play, steps, reader)
    return history


def played_once(name: str, steps: list[tuple[Any, ...]], *, faults: str = FAULTS) -> Any:
    """A fixture called `name`: `steps` played once per test module and store kind.

    Tests only read it. A test module imports it under another name (pytest
    registers it as `name`), so its tests' `name` arguments shadow nothing.
    """

    @pytest.fixture(scope="module", params=["sqlite", "postgresql"], name=name)
    def fixture(request, tmp_path_factory) -> Iterator[History]:
        folder = tmp_path_factory.mktemp(name)
        if request.param == "sqlite":
            yield play(f"sqlite:///{folder / 'ledger.db'}", folder, steps, faults=faults)
            return
        server = request.getfixturevalue("postgres_server")
        schema, url = fresh_postgres_schema(server)
        try:
            yield play(url, folder, steps, faults=faults)
        finally:
            drop_postgres_schema(server, schema)

    return fixture


fixed_history_fixture = played_once("fixed_history", FIXED_STEPS)
trading_history_fixture = played_once("trading_history", TRADING_STEPS, faults=TRADING_FAULTS)
