"""The live intents and positions, as the views list them, are the ones the log holds."""

from __future__ import annotations

from projections.live import ViewIndexedStore
from tests.projections.scenario import Scenario


def test_the_views_list_what_a_scan_of_the_log_finds(store, store_url):
    indexed = ViewIndexedStore.open(store_url)
    assert indexed.unfinished_intents() == []
    assert indexed.open_positions() == []
    scenario = Scenario(store)
    scenario.write_everything()
    assert set(indexed.unfinished_intents()) == set(store.unfinished_intents())
    assert set(indexed.open_positions()) == set(store.open_positions())
    assert len(indexed.unfinished_intents()) >= 2  # one in flight, one awaiting review
    assert indexed.open_positions()
    # Later commits show at once: the views catch up before answering.
    opened = scenario.open_position()
    assert opened.id in indexed.open_positions()
    scenario.close(opened, str(opened.quantity), "61000")
    assert opened.id not in indexed.open_positions()
    assert set(indexed.open_positions()) == set(store.open_positions())
    assert indexed.accounts() == store.accounts()
    indexed.close()
