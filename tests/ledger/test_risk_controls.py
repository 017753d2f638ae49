"""Risk controls in the engine: limits, kill switch, stop-loss fail-safe, breaker, stale markets.

A real engine over a real SQLite store and the paper broker; the
controls are written to the store the way an operator's command writes
them, from outside the engine.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from decimal import Decimal

import pytest

from adapters.store import Store
from ledger.account import Account, account_id
from ledger.breaker import CircuitBreaker, breaker_id
from ledger.controls import RiskControls, controls_id
from ledger.engine import PRICE_PROTECTION, Engine
from ledger.errors import OutcomeUnknown, Refused
from ledger.instruments import Price, Quantity, Side
from ledger.intent import Intent
from ledger.limits import Control, Limits, updated
from ledger.money import Money
from ledger.position import Position
from ledger.refusals import OperationRefused
from ledger.risk import exposure
from ledger.stops import worst_loss
from ledger.writer import UnitOfWork
from projections.queries import daily_risk
from projections.runner import catch_up
from tests.ledger.test_engine import Setup

pytestmark = pytest.mark.anyio
MAIN = account_id("main")


def usd(text: str) -> Money:
    return Money.parse(text, "USD")


@pytest.fixture
def anyio_backend():
    return "asyncio"


async def funded(setup: Setup) -> Setup:
    await setup.fund_broker()
    async with setup.engine() as engine:
        await engine.deposit("main", "10000", "USD")
    return setup


@pytest.fixture
async def ready(tmp_path) -> Setup:
    return await funded(Setup(tmp_path))


def set_limits(setup: Setup, **changes: object) -> None:
    with Store.open(setup.store_url) as store:
        controls = store.get(RiskControls, controls_id(MAIN)) or RiskControls.start(MAIN)
        limits = updated(controls.limits, changes, [], "USD")
        controls.set_limits(limits, actor="ops", reason="test", recorded_at=datetime.now(UTC))
        store.save(controls)


def engage(setup: Setup, account=MAIN, *, flatten: bool = False) -> None:
    with Store.open(setup.store_url) as store:
        controls = store.get(RiskControls, controls_id(account)) or RiskControls.start(account)
        controls.engage(actor="ops", reason="halt", flatten=flatten, recorded_at=datetime.now(UTC))
        store.save(controls)


def release(setup: Setup, account=MAIN) -> None:
    with Store.open(setup.store_url) as store:
        controls = store.get(RiskControls, controls_id(account))
        assert controls is not None
        controls.release(
            actor="ops", reason="resume", broker_positions=0, recorded_at=datetime.now(UTC)
        )
        store.save(controls)


def refusals(setup: Setup) -> list[OperationRefused]:
    with Store.open(setup.store_url) as store:
        recorder = store.application.recorder
        topics = [f"{OperationRefused.stored_name}/v1"]
        stored = recorder.select_notifications(start=1, limit=1000, topics=topics)
        mapper = store.application.mapper
        return [mapper.to_domain_event(item) for item in stored]  # type: ignore[misc]


def intent_count(setup: Setup) -> int:
    with Store.open(setup.store_url) as store:
        recorder = store.application.recorder
        return len(
            recorder.select_notifications(start=1, limit=10_000, topics=["intent.recorded/v1"])
        )


@pytest.mark.parametrize(
    ("limits", "first", "control"),
    [
        ({"max_open_positions": "1"}, "open", Control.MAX_OPEN_POSITIONS),
        ({"max_trades_per_day": "1"}, "round trip", Control.MAX_TRADES_PER_DAY),
        ({"max_position_notional": "100"}, None, Control.MAX_POSITION_NOTIONAL),
        ({"max_daily_loss": "300"}, None, Control.MAX_DAILY_LOSS),
        ({"max_daily_loss_pct": "1"}, None, Control.MAX_DAILY_LOSS_PCT),
        ({"risk_per_trade_pct": "0.1"}, None, Control.RISK_PER_TRADE),
        ({"require_stop_loss": True}, None, Control.STOP_LOSS_REQUIRED),
    ],
)
async def test_a_limit_refuses_names_itself_and_leaves_only_a_refusal(
    ready, limits, first, control
):
    set_limits(ready, **limits)
    async with ready.engine() as engine:
        if first is not None:
            opened = await engine.open_position("main", "BTCUSD", "long", "0.01")
            if first == "round trip":
                await engine.close_position(opened.position_id)
        quote = await engine.broker.quote("BTCUSD")
        # Without a stop an open puts its whole reservation at risk (about 650 here).
        stop = quote.bid - 1000 if control is Control.RISK_PER_TRADE else None
        intents, events = intent_count(ready), ready.event_count()
        with pytest.raises(Refused, match=f"refused by {control}") as refused:
            await engine.open_position("main", "BTCUSD", "long", "0.01", stop_loss=stop)
    assert refused.value.control == control
    assert intent_count(ready) == intents
    assert ready.event_count() == events + 1
    [recorded] = refusals(ready)
    assert (recorded.control, recorded.operation, recorded.subject) == (control, "open", "BTCUSD")
    assert recorded.account_id == MAIN


async def test_intents_in_flight_count_at_their_worst_case(tmp_path):
    setup = await funded(Setup(tmp_path, faults="timeout_before_accept:1"))
    set_limits(setup, max_open_positions="1", max_trades_per_day="1")
    async with setup.engine(startup=None) as engine:
        with pytest.raises(OutcomeUnknown):
            await engine.open_position("main", "BTCUSD", "long", "0.01")
        # No position is open, but the unknown one may be: it counts.
        with pytest.raises(Refused, match=r"1 (trades today|positions open) or in flight"):
            await engine.open_position("main", "BTCUSD", "long", "0.01")
    with Store.open(setup.store_url) as store:
        account = store.get(Account, MAIN)
        assert account is not None
        used = exposure(UnitOfWork({}, store), account, datetime.now(UTC).date())
    assert (used.open_positions, used.trades_today) == (1, 1)
    # Without a stop, a long's worst case is its whole value at the worst price it may fill
    # at (0.2% past the quote), and the fee on the way in; it reserved 1% past the quote.
    ((intent_id, reserved),) = account.reservations.items()
    assert used.at_risk == setup.intent(intent_id).at_risk
    assert reserved.amount * Decimal("0.99") < used.at_risk.amount < reserved.amount


async def test_a_kill_switch_engaged_elsewhere_stops_the_running_engine_at_once(ready):
    async with ready.engine() as engine:
        opened = await engine.open_position("main", "BTCUSD", "long", "0.02")
        quote = await engine.broker.quote("BTCUSD")
        await engine.change_stop_loss(opened.position_id, quote.bid - 2000)
        engage(ready, None)  # every account, from another store handle
        with pytest.raises(Refused, match="refused by kill_switch: no new opens in account main"):
            await engine.open_position("main", "ETHUSD", "long", "1")
        # Tightening and closing reduce risk: still allowed.
        await engine.change_stop_loss(opened.position_id, quote.bid - 1000)
        with pytest.raises(Refused, match="kill_switch: no widened stop-loss"):
            await engine.change_stop_loss(opened.position_id, quote.bid - 1500)
        await engine.close_position(opened.position_id, "0.01")
        release(ready, None)
        await engine.open_position("main", "ETHUSD", "long", "1")
    assert [r.control for r in refusals(ready)] == [Control.KILL_SWITCH] * 2


async def test_an_account_switch_leaves_other_accounts_trading(ready):
    async with ready.engine() as engine:
        await engine.deposit("other", "5000", "USD")
        engage(ready)
        with pytest.raises(Refused, match="kill_switch"):
            await engine.open_position("main", "BTCUSD", "long", "0.01")
        await ready_other_broker(ready)
        await engine.open_position("other", "BTCUSD", "long", "0.01")


async def ready_other_broker(setup: Setup) -> None:
    from adapters.paper.broker import PaperBroker  # noqa: PLC0415 - only this test funds two
    from ledger.money import Money  # noqa: PLC0415

    with PaperBroker.open(setup.clean_broker_url) as broker:
        await broker.fund("other", Money.parse("5000", "USD"))


async def test_stop_losses_widen_only_within_the_cap_and_tighten_freely(ready):
    set_limits(ready, risk_per_trade_pct="1")  # 1% of 10000, 95%: 95.00 at stake
    async with ready.engine() as engine:
        quote = await engine.broker.quote("BTCUSD")
        opened = await engine.open_position(
            "main", "BTCUSD", "long", "0.01", stop_loss=quote.bid - 5000
        )
        assert opened.price is not None
        with pytest.raises(Refused, match="refused by risk_per_trade_pct"):
            await engine.change_stop_loss(opened.position_id, quote.bid - 9600)
        with pytest.raises(Refused, match="refused by risk_per_trade_pct"):
            await engine.change_stop_loss(opened.position_id, None)
        await engine.change_stop_loss(opened.position_id, quote.bid - 9000)  # 90.xx at stake
        await engine.change_stop_loss(opened.position_id, quote.bid - 100)
        with pytest.raises(Refused, match="refused by stop_loss_side"):
            await engine.change_stop_loss(opened.position_id, quote.bid + 100)


async def test_a_stop_on_the_wrong_side_of_the_market_is_refused(ready):
    async with ready.engine() as engine:
        quote = await engine.broker.quote("BTCUSD")
        with pytest.raises(Refused, match="must be below the bid"):
            await engine.open_position("main", "BTCUSD", "long", "0.01", stop_loss=quote.bid)
        with pytest.raises(Refused, match="must be above the ask"):
            await engine.open_position("main", "BTCUSD", "short", "0.01", stop_loss=quote.ask)
    assert intent_count(ready) == 1  # the deposit's


@pytest.mark.parametrize(
    ("fault", "control"),
    [("stale_quote", Control.STALE_QUOTE), ("market_closed", Control.MARKET_CLOSED)],
)
async def test_a_stale_or_closed_market_fails_closed(tmp_path, fault, control):
    setup = await funded(Setup(tmp_path, faults=f"{fault}:1"))
    async with setup.engine() as engine:
        with pytest.raises(Refused, match=f"refused by {control}"):
            await engine.open_position("main", "BTCUSD", "long", "0.01")
    assert [r.control for r in refusals(setup)] == [control]
    assert intent_count(setup) == 1


async def test_the_breaker_opens_after_unknown_writes_survives_a_restart_and_a_probe_closes_it(
    tmp_path,
):
    setup = await funded(Setup(tmp_path, faults="timeout_before_accept:1"))

    async def unknown_opens(engine: Engine, count: int) -> None:
        for _ in range(count):
            with pytest.raises(OutcomeUnknown):
                await engine.open_position("main", "BTCUSD", "long", "0.001")

    async with setup.engine(startup=None) as engine:
        await unknown_opens(engine, 3)
        with pytest.raises(Refused, match="refused by circuit_breaker"):
            await engine.open_position("main", "BTCUSD", "long", "0.001")
        later = datetime.now(UTC) + timedelta(minutes=1)
        engine.clock = lambda: later
        # The probe is due: it reads (reads work under this fault) and closes the
        # breaker, and the write goes out; three more unknowns open it again.
        await unknown_opens(engine, 3)
        assert engine.breaker_open
    with Store.open(setup.store_url) as store:
        breaker = store.get(CircuitBreaker, breaker_id("paper"))
        assert breaker is not None
        assert (breaker.is_open, breaker.version) == (True, 3)
        assert "timed out" in (breaker.cause or "")

    async def nothing(_engine: object) -> None:
        return None

    async with setup.engine(startup=nothing) as engine:
        assert engine.breaker_open  # as it was left
        await unknown_opens(engine, 1)  # a restart probes at the first write
        assert not engine.breaker_open
    assert len(refusals(setup)) == 1


async def test_startup_recovery_closes_an_open_breaker(tmp_path):
    setup = await funded(Setup(tmp_path, faults="timeout_before_accept:1"))
    async with setup.engine(startup=None) as engine:
        for _ in range(3):
            with pytest.raises(OutcomeUnknown):
                await engine.open_position("main", "BTCUSD", "long", "0.001")
        assert engine.breaker_open
    async with setup.engine() as engine:
        assert not engine.breaker_open


async def test_the_account_counts_its_day_as_the_daily_risk_view_does(ready):
    async with ready.engine() as engine:
        first = await engine.open_position("main", "BTCUSD", "long", "0.01")
        await engine.open_position("main", "ETHUSD", "short", "1")
        await engine.close_position(first.position_id)
    with Store.open(ready.store_url) as store:
        catch_up(store)
        [row] = daily_risk(store, account="main")
        account = store.get(Account, MAIN)
    assert account is not None
    usage = account.usage_on(datetime.fromisoformat(row.day).date())
    assert (usage.opened, usage.net_pnl.amount) == (row.trades_opened, row.net_pnl)
    assert usage.opened == 2
    assert usage.net_pnl.amount < 0  # fees at least


async def test_an_in_flight_intent_is_loaded_for_its_risk(ready):
    # The worst case of an open with a stop is its stop distance, not its reservation.
    set_limits(ready, max_daily_loss="200")
    async with ready.engine() as engine:
        quote = await engine.broker.quote("BTCUSD")
        instrument = await engine.instrument("BTCUSD")
        stop = Price(quote.bid - 5000)
        opened = await engine.open_position("main", "BTCUSD", "long", "0.01", stop_loss=stop)
    with Store.open(ready.store_url) as store:
        intent = store.get(Intent, opened.intent_id)
    assert intent is not None
    assert intent.at_risk is not None
    assert intent.reservation is not None
    assert intent.at_risk < intent.reservation
    # Measured from the worst price the order may fill at, both fees included.
    worst = instrument.worst_fill(Side.LONG, Price(quote.ask), PRICE_PROTECTION)
    expected = worst_loss(instrument, Side.LONG, Quantity(Decimal("0.01")), worst, stop)
    assert intent.at_risk == expected
    assert Decimal(50) <= intent.at_risk.amount <= Decimal(53)


async def test_limits_set_while_the_engine_runs_apply_to_its_next_open(ready):
    async with ready.engine() as engine:
        await engine.open_position("main", "BTCUSD", "long", "0.01")
        set_limits(ready, max_open_positions="1")
        with pytest.raises(Refused, match="max_open_positions"):
            await engine.open_position("main", "BTCUSD", "long", "0.01")
    with Store.open(ready.store_url) as store:
        controls = store.get(RiskControls, controls_id(MAIN))
    assert controls is not None
    assert controls.limits == Limits(max_open_positions=1)


async def test_open_positions_count_against_the_daily_loss_at_their_stops(ready):
    set_limits(ready, max_daily_loss="20")
    opened = []
    async with ready.engine() as engine:
        quote = await engine.broker.quote("BTCUSD")
        instrument = await engine.instrument("BTCUSD")
        stop = Price(quote.bid - 100)
        with pytest.raises(Refused, match="max_daily_loss"):  # noqa: PT012 - the fifth is refused
            for _ in range(5):
                result = await engine.open_position(
                    "main", "BTCUSD", "long", "0.02", stop_loss=stop
                )
                opened.append(result)
    # Each risks about 2 + 2 x 0.65 in fees: four fit in 20.00, never five.
    assert 2 <= len(opened) <= 4
    with Store.open(ready.store_url) as store:
        account = store.get(Account, MAIN)
        assert account is not None
        used = exposure(UnitOfWork({}, store), account, datetime.now(UTC).date())
        positions = [store.get(Position, result.position_id) for result in opened]
    held_risk = sum(
        (
            instrument.loss_at(p.side, p.quantity, p.entry_price, stop)
            + instrument.fee(p.quantity, stop)
            for p in positions
            if p is not None
        ),
        usd("0"),
    )
    assert used.at_risk == held_risk
    assert used.loss_today + used.at_risk <= usd("20")


async def test_a_stop_moved_away_is_held_to_the_daily_loss_too(ready):
    async with ready.engine() as engine:
        quote = await engine.broker.quote("BTCUSD")
        opened = await engine.open_position(
            "main", "BTCUSD", "long", "0.02", stop_loss=quote.bid - 100
        )
        assert opened.position_id is not None
        set_limits(ready, max_daily_loss="20")
        await engine.change_stop_loss(opened.position_id, quote.bid - 200)  # about 5.30 at risk
        with pytest.raises(Refused, match=r"max_daily_loss: .* at risk in position"):
            await engine.change_stop_loss(opened.position_id, quote.bid - 1000)
        # Without its stop, a long may lose its whole value: far past the limit.
        with pytest.raises(
            Refused, match=r"max_daily_loss: .* 13\d\d\.\d\d USD at risk in position"
        ):
            await engine.change_stop_loss(opened.position_id, None)
        await engine.change_stop_loss(opened.position_id, quote.bid - 50)  # tighter: always


async def test_under_a_daily_loss_limit_a_short_needs_a_stop_and_a_naked_one_blocks_opens(ready):
    async with ready.engine() as engine:
        naked = await engine.open_position("main", "BTCUSD", "short", "0.01")
        set_limits(ready, max_daily_loss="500")
        quote = await engine.broker.quote("BTCUSD")
        with pytest.raises(Refused, match=f"position {naked.position_id} .*: nothing bounds"):
            await engine.open_position("main", "BTCUSD", "long", "0.01", stop_loss=quote.bid - 10)
        await engine.change_stop_loss(naked.position_id, quote.ask + 100)
        with pytest.raises(Refused, match="this open has no stop-loss: nothing bounds its loss"):
            await engine.open_position("main", "BTCUSD", "short", "0.01")
        await engine.open_position("main", "BTCUSD", "long", "0.01", stop_loss=quote.bid - 10)
    assert {r.control for r in refusals(ready)} == {Control.MAX_DAILY_LOSS}


async def test_a_margin_long_without_a_stop_is_at_risk_of_its_whole_value(ready):
    async with ready.engine() as engine:
        quote = await engine.broker.quote("EURUSD")
        instrument = await engine.instrument("EURUSD")
        opened = await engine.open_position("main", "EURUSD", "long", "0.01")
    intent = ready.intent(opened.intent_id)
    worst = instrument.worst_fill(Side.LONG, Price(quote.ask), PRICE_PROTECTION)
    value = Money.rounded(Decimal("0.01") * instrument.contract_size * worst, "USD", "ROUND_UP")
    assert intent.at_risk == value + instrument.fee(Quantity(Decimal("0.01")), worst)
    assert intent.reservation is not None
    assert intent.at_risk.amount > intent.reservation.amount * 10  # leverage 30
