"""Each fault the paper broker injects, as a caller of the broker port observes it.

Every fault is tested at probability 1 (it always happens) and at 0 (it
never does). A crash is a real SIGKILL, so it runs in a child process.
"""

from __future__ import annotations

import os
import re
import signal
import sys
from collections.abc import Callable, Coroutine
from datetime import timedelta
from decimal import Decimal
from pathlib import Path
from typing import Any

import anyio
import msgspec
import pytest

from adapters.paper import market
from adapters.paper.broker import PaperBroker
from adapters.paper.settings import BrokerURLError, Fault, parse_broker_url
from ledger.instruments import Price, Quantity, Side
from ledger.money import Money
from ledger.ports import (
    Accepted,
    FillReason,
    Found,
    NotFound,
    OrderAction,
    OrderRequest,
    OrderStatus,
    ProtectionRequest,
    Rejected,
    Unknown,
    WriteResult,
)

ROOT = Path(__file__).resolve().parents[2]
# The virtualenv's interpreter: the one running these tests.
PYTHON = Path(sys.executable)
ACCOUNT = "main"
DEPOSIT = Money.parse("10000", "USD")
BTC = market.instrument("BTCUSD")
assert BTC is not None
QUANTITY = Decimal("0.0100")
HALF = Decimal("0.0050")


@pytest.fixture
def anyio_backend():
    return "asyncio"


def broker_url(tmp_path: Path, faults: str = "", *, seed: int = 5, extra: str = "") -> str:
    query = f"seed={seed}&scope=forever"
    if faults:
        query += f"&faults={faults}"
    return f"paper:///{tmp_path}/broker.db?{query}{extra}"


async def funded(url: str) -> PaperBroker:
    broker = PaperBroker.open(url)
    await broker.fund(ACCOUNT, DEPOSIT)
    return broker


def order(client_id: str, **fields: Any) -> OrderRequest:
    values: dict[str, Any] = {
        "client_id": client_id,
        "account": ACCOUNT,
        "action": OrderAction.OPEN,
        "symbol": "BTCUSD",
        "side": Side.LONG,
        "quantity": QUANTITY,
    }
    values.update(fields)
    return OrderRequest(**values)


async def stop_loss_below(broker: PaperBroker) -> Decimal:
    return (await broker.quote("BTCUSD")).bid - 1000


def amendment(client_id: str, position_ref: str, stop_loss: Decimal) -> ProtectionRequest:
    return ProtectionRequest(
        client_id=client_id, account=ACCOUNT, position_ref=position_ref, stop_loss=stop_loss
    )


def accepted(result: WriteResult) -> Accepted:
    assert isinstance(result, Accepted), result
    return result


# Probability 0 ------------------------------------------------------------------------


async def everyday_session(url: str) -> list[object]:
    """Calls that reach every fault's decision point: submits, amendments, a restart."""
    transcript: list[object] = []
    broker = await funded(url)
    stop_loss = await stop_loss_below(broker)
    opened = await broker.submit(order("zero1", stop_loss=stop_loss))
    transcript.append(opened)
    ref = accepted(opened).fills[0].position_ref
    transcript.append(await broker.amend_protection(amendment("zero2", ref, stop_loss + 1)))
    transcript.append(await broker.lookup("zero1"))
    transcript.append(await broker.submit(order("zero3", side=Side.SHORT)))
    broker.close()
    broker = PaperBroker.open(url)
    await broker.advance(3)
    transcript.append(
        await broker.submit(
            order("zero4", action=OrderAction.REDUCE, quantity=HALF, position_ref=ref)
        )
    )
    transcript.append(await broker.positions())
    transcript.append(await broker.fills())
    transcript.append(broker.dump())
    broker.close()
    return transcript


@pytest.mark.anyio
@pytest.mark.parametrize("fault", list(Fault))
async def test_a_fault_at_probability_zero_never_happens(tmp_path, fault):
    (tmp_path / "plain").mkdir()
    (tmp_path / "zero").mkdir()
    plain = await everyday_session(broker_url(tmp_path / "plain"))
    zero = await everyday_session(broker_url(tmp_path / "zero", f"{fault}:0"))
    assert parse_broker_url(broker_url(tmp_path, f"{fault}:0")).faults == {fault: 0}
    assert msgspec.to_builtins(zero) == msgspec.to_builtins(plain)
    writes = [zero[0], zero[1], zero[3], zero[4]]
    assert all(isinstance(result, Accepted) for result in writes), writes
    assert [len(result.fills) for result in writes if isinstance(result, Accepted)] == [1, 0, 1, 1]
    positions = zero[5]
    assert isinstance(positions, list)
    assert [(p.client_id, p.quantity) for p in positions] == [("zero1", HALF), ("zero3", QUANTITY)]


# Write faults -----------------------------------------------------------------------------


@pytest.mark.anyio
async def test_timeout_before_accept_is_unknown_and_nothing_happened(tmp_path):
    with await funded(broker_url(tmp_path, "timeout_before_accept:1")) as broker:
        result = await broker.submit(order("tba1"))
        assert isinstance(result, Unknown), result
        assert "before" in result.cause
        assert await broker.lookup("tba1") == NotFound(authoritative=True)
        await broker.advance(5)
        assert await broker.lookup("tba1") == NotFound(authoritative=True)
        assert await broker.all_orders() == []
        assert await broker.positions() == []
        assert await broker.fills() == []
        [balance] = await broker.account()
        assert balance.balance == DEPOSIT


@pytest.mark.anyio
async def test_timeout_after_accept_is_unknown_but_the_order_was_filled(tmp_path):
    with await funded(broker_url(tmp_path, "timeout_after_accept:1")) as broker:
        result = await broker.submit(order("taa1"))
        assert isinstance(result, Unknown), result
        assert "after" in result.cause
        found = await broker.lookup("taa1")
        assert isinstance(found, Found), found
        assert found.order.status is OrderStatus.FILLED
        assert found.order.filled_quantity == QUANTITY
        [fill] = found.fills
        assert (fill.client_id, fill.quantity, fill.opens) == ("taa1", QUANTITY, True)
        assert fill.order_ref == found.order.broker_ref
        assert await broker.fills() == [fill]
        [position] = await broker.positions()
        assert position.broker_ref == fill.position_ref
        # An amendment that times out after acceptance was applied all the same.
        stop_loss = await stop_loss_below(broker)
        amended = await broker.amend_protection(amendment("taa2", position.broker_ref, stop_loss))
        assert isinstance(amended, Unknown), amended
        [position] = await broker.positions()
        assert position.stop_loss == stop_loss


CRASH_SCRIPT = """
import sys
from decimal import Decimal

import anyio

from adapters.paper.broker import PaperBroker
from ledger.instruments import Side
from ledger.money import Money
from ledger.ports import OrderAction, OrderRequest


async def main():
    broker = PaperBroker.open(sys.argv[1])
    await broker.fund("main", Money.parse("10000", "USD"))
    print("funded", flush=True)
    result = await broker.submit(OrderRequest(
        client_id="crash1", account="main", action=OrderAction.OPEN,
        symbol="BTCUSD", side=Side.LONG, quantity=Decimal("0.0100"),
    ))
    print("survived", result, flush=True)


anyio.run(main)
"""


@pytest.mark.anyio
async def test_crash_after_accept_kills_the_caller_and_the_order_survives(tmp_path):
    url = broker_url(tmp_path, "crash_after_accept:1")
    environment = {**os.environ, "PYTHONPATH": str(ROOT)}
    with anyio.fail_after(60):
        child = await anyio.run_process(
            [str(PYTHON), "-c", CRASH_SCRIPT, url], env=environment, check=False
        )
    assert child.returncode == -signal.SIGKILL, (child.returncode, child.stderr)
    assert child.stdout == b"funded\n"
    # A new process opens the file: what the broker acknowledged is there.
    with PaperBroker.open(broker_url(tmp_path)) as broker:
        found = await broker.lookup("crash1")
        assert isinstance(found, Found), found
        assert found.order.status is OrderStatus.FILLED
        [fill] = found.fills
        assert fill.client_id == "crash1"
        [position] = await broker.positions()
        assert (position.client_id, position.quantity) == ("crash1", QUANTITY)
        [balance] = await broker.account()
        assert balance.balance == DEPOSIT - fill.fee


@pytest.mark.anyio
async def test_duplicate_ack_reports_one_fill_twice(tmp_path):
    with await funded(broker_url(tmp_path, "duplicate_ack:1")) as broker:
        result = accepted(await broker.submit(order("dup1")))
        first, second = result.fills
        assert first == second
        assert [fill.fill_id for fill in await broker.fills()] == [first.fill_id, first.fill_id]
        found = await broker.lookup("dup1")
        assert isinstance(found, Found), found
        assert found.fills == (first, first)
        # Reported twice, executed once.
        [position] = await broker.positions()
        assert position.quantity == QUANTITY
        assert found.order.filled_quantity == QUANTITY
        [balance] = await broker.account()
        assert balance.balance == DEPOSIT - first.fee


async def partly_filled(broker: PaperBroker) -> tuple[Accepted, Found]:
    result = accepted(await broker.submit(order("part1", quantity=QUANTITY)))
    [fill] = result.fills
    assert fill.quantity == HALF
    found = await broker.lookup("part1")
    assert isinstance(found, Found), found
    assert found.order.status is OrderStatus.WORKING
    assert (found.order.quantity, found.order.filled_quantity) == (QUANTITY, HALF)
    assert await broker.open_orders() == [found.order]
    [position] = await broker.positions()
    assert position.quantity == HALF
    return result, found


@pytest.mark.anyio
async def test_partial_fill_leaves_a_working_rest_that_fills_at_the_next_step(tmp_path):
    with await funded(broker_url(tmp_path, "partial_fill:1")) as broker:
        result, _ = await partly_filled(broker)
        await broker.advance()
        assert await broker.open_orders() == []
        found = await broker.lookup("part1")
        assert isinstance(found, Found), found
        assert found.order.status is OrderStatus.FILLED
        assert found.order.filled_quantity == QUANTITY
        first, rest = found.fills
        assert first == result.fills[0]
        assert rest.quantity == HALF
        assert rest.fill_id != first.fill_id
        assert rest.time == first.time + market.STEP
        [position] = await broker.positions()
        assert position.quantity == QUANTITY
        assert position.entry_price == (first.price + rest.price) / 2


@pytest.mark.anyio
async def test_partial_fill_rest_can_be_cancelled(tmp_path):
    with await funded(broker_url(tmp_path, "partial_fill:1")) as broker:
        await partly_filled(broker)
        cancelled = await broker.cancel("part1", ACCOUNT)
        assert isinstance(cancelled, Accepted), cancelled
        found = await broker.lookup("part1")
        assert isinstance(found, Found), found
        assert found.order.status is OrderStatus.CANCELLED
        assert found.order.filled_quantity == HALF
        assert await broker.open_orders() == []
        await broker.advance(3)
        [position] = await broker.positions()
        assert position.quantity == HALF
        assert len(await broker.fills()) == 1


@pytest.mark.anyio
@pytest.mark.parametrize("while_down", ["manual_close", "stop_hit_while_down"])
async def test_a_working_rest_whose_position_closed_while_down_is_cancelled(tmp_path, while_down):
    url = broker_url(tmp_path, f"partial_fill:1,{while_down}:1")
    with await funded(url) as broker:
        stop_loss = await stop_loss_below(broker)
        opened = accepted(await broker.submit(order("wd1", stop_loss=stop_loss)))
        ref = opened.fills[0].position_ref
        await broker.advance()
        reduced = accepted(
            await broker.submit(
                order("wd2", action=OrderAction.REDUCE, quantity=HALF, position_ref=ref)
            )
        )
        assert reduced.fills[0].quantity == Decimal("0.0025")
        assert [o.client_id for o in await broker.open_orders()] == ["wd2"]
    with PaperBroker.open(url) as broker:
        assert await broker.positions() == []
        fills = await broker.fills()
        await broker.advance()
        assert await broker.positions() == []
        assert await broker.fills() == fills
        found = await broker.lookup("wd2")
        assert isinstance(found, Found), found
        assert found.order.status is OrderStatus.CANCELLED
        assert found.order.filled_quantity == Decimal("0.0025")


# Protection faults -------------------------------------------------------------------------


@pytest.mark.anyio
async def test_reject_sl_change_refuses_and_keeps_the_stop(tmp_path):
    with await funded(broker_url(tmp_path, "reject_sl_change:1")) as broker:
        stop_loss = await stop_loss_below(broker)
        fill = accepted(await broker.submit(order("rsl1", stop_loss=stop_loss))).fills[0]
        result = await broker.amend_protection(amendment("rsl2", fill.position_ref, stop_loss + 5))
        assert isinstance(result, Rejected), result
        assert "refused" in result.reason
        [position] = await broker.positions()
        assert (position.stop_loss, position.take_profit) == (stop_loss, None)


@pytest.mark.anyio
async def test_sl_change_accepted_not_applied_keeps_the_old_stop(tmp_path):
    with await funded(broker_url(tmp_path, "sl_change_accepted_not_applied:1")) as broker:
        stop_loss = await stop_loss_below(broker)
        fill = accepted(await broker.submit(order("nap1", stop_loss=stop_loss))).fills[0]
        result = await broker.amend_protection(amendment("nap2", fill.position_ref, stop_loss + 5))
        assert result == Accepted(broker_ref=fill.position_ref)
        [position] = await broker.positions()
        assert position.stop_loss == stop_loss
        await broker.advance(3)
        [position] = await broker.positions()
        assert position.stop_loss == stop_loss


# Read faults ---------------------------------------------------------------------------------


@pytest.mark.anyio
async def test_lookup_lag_hides_an_accepted_order_for_the_declared_lag(tmp_path):
    with await funded(broker_url(tmp_path, "lookup_lag:1", extra="&lag_seconds=5")) as broker:
        assert broker.capabilities.visibility_lag == timedelta(seconds=5)
        result = accepted(await broker.submit(order("lag1")))
        [fill] = result.fills
        assert await broker.lookup("lag1") == NotFound(authoritative=True)
        assert await broker.fills() == []
        assert await broker.open_orders() == []
        await broker.advance(4)
        assert await broker.lookup("lag1") == NotFound(authoritative=True)
        await broker.advance(1)
        found = await broker.lookup("lag1")
        assert isinstance(found, Found), found
        assert found.order.broker_ref == result.broker_ref
        assert found.fills == (fill,)
        assert await broker.fills() == [fill]


# Faults while the broker was not watched -------------------------------------------------------


@pytest.mark.anyio
async def test_stop_hit_while_down_closes_a_protected_position_at_its_stop(tmp_path):
    url = broker_url(tmp_path, "stop_hit_while_down:1")
    with await funded(url) as broker:
        stop_loss = await stop_loss_below(broker)
        protected = accepted(await broker.submit(order("shd1", stop_loss=stop_loss))).fills[0]
        bare = accepted(await broker.submit(order("shd2"))).fills[0]
    with PaperBroker.open(url) as broker:
        [position] = await broker.positions()
        assert position.broker_ref == bare.position_ref
        _, _, stopped = await broker.fills()
        assert stopped.reason is FillReason.STOP_LOSS
        assert stopped.position_ref == protected.position_ref
        assert (stopped.client_id, stopped.order_ref, stopped.opens) == (None, None, False)
        assert stopped.price == stop_loss
        assert stopped.quantity == QUANTITY
        assert stopped.pnl == BTC.pnl(
            Side.LONG, Quantity(QUANTITY), Price(protected.price), Price(stop_loss)
        )
        [balance] = await broker.account()
        assert balance.balance == (DEPOSIT - protected.fee - bare.fee - stopped.fee + stopped.pnl)


@pytest.mark.anyio
async def test_manual_close_closes_a_position_by_hand_while_down(tmp_path):
    url = broker_url(tmp_path, "manual_close:1")
    with await funded(url) as broker:
        opened = accepted(await broker.submit(order("man1"))).fills[0]
    with PaperBroker.open(url) as broker:
        assert await broker.positions() == []
        _, closed = await broker.fills()
        quote = await broker.quote("BTCUSD")
        assert closed.reason is FillReason.MANUAL
        assert (closed.position_ref, closed.client_id, closed.order_ref) == (
            opened.position_ref,
            None,
            None,
        )
        assert closed.price == quote.bid
        assert closed.pnl == BTC.pnl(
            Side.LONG, Quantity(QUANTITY), Price(opened.price), Price(quote.bid)
        )
        # Our order is as it was: filled, with its one fill; the close is not ours.
        found = await broker.lookup("man1")
        assert isinstance(found, Found), found
        assert found.order.status is OrderStatus.FILLED
        assert found.fills == (opened,)


@pytest.mark.anyio
async def test_external_order_opens_a_position_that_is_not_ours(tmp_path):
    url = broker_url(tmp_path, "external_order:1")
    with await funded(url) as broker:
        ours = accepted(await broker.submit(order("ext1"))).fills[0]
        assert len(await broker.positions()) == 1
    with PaperBroker.open(url) as broker:
        positions = await broker.positions()
        assert [p.client_id for p in positions] == ["ext1", None]
        theirs = positions[1]
        assert theirs.broker_ref != ours.position_ref
        _, external = await broker.fills()
        assert external.reason is FillReason.EXTERNAL
        assert (external.client_id, external.opens) == (None, True)
        assert external.position_ref == theirs.broker_ref
        listed = market.instrument(theirs.symbol)
        assert listed is not None
        assert listed.quote_currency == "USD"
        assert theirs.quantity == listed.quantity_step
        [order_of_theirs] = [o for o in await broker.all_orders() if o.client_id is None]
        assert order_of_theirs.tag == "external"
        assert order_of_theirs.status is OrderStatus.FILLED


# Quote faults ------------------------------------------------------------------------------


@pytest.mark.anyio
async def test_stale_quote_is_priced_long_before_the_server_time(tmp_path):
    with await funded(broker_url(tmp_path, "stale_quote:1")) as broker:
        quote = await broker.quote("BTCUSD")
        assert await broker.server_time() - quote.time == market.STALE_QUOTE_AGE
        assert quote.market_open
    (tmp_path / "fresh").mkdir()
    with await funded(broker_url(tmp_path / "fresh")) as broker:
        quote = await broker.quote("BTCUSD")
        assert quote.time == await broker.server_time()


@pytest.mark.anyio
async def test_market_closed_says_so_in_the_quote(tmp_path):
    with await funded(broker_url(tmp_path, "market_closed:1")) as broker:
        quote = await broker.quote("BTCUSD")
        assert not quote.market_open
        assert quote.time == await broker.server_time()


FAULT_TESTS: dict[Fault, Callable[..., Coroutine[Any, Any, None]]] = {
    Fault.TIMEOUT_BEFORE_ACCEPT: test_timeout_before_accept_is_unknown_and_nothing_happened,
    Fault.TIMEOUT_AFTER_ACCEPT: test_timeout_after_accept_is_unknown_but_the_order_was_filled,
    Fault.CRASH_AFTER_ACCEPT: test_crash_after_accept_kills_the_caller_and_the_order_survives,
    Fault.DUPLICATE_ACK: test_duplicate_ack_reports_one_fill_twice,
    Fault.PARTIAL_FILL: test_partial_fill_leaves_a_working_rest_that_fills_at_the_next_step,
    Fault.REJECT_SL_CHANGE: test_reject_sl_change_refuses_and_keeps_the_stop,
    Fault.SL_CHANGE_ACCEPTED_NOT_APPLIED: test_sl_change_accepted_not_applied_keeps_the_old_stop,
    Fault.LOOKUP_LAG: test_lookup_lag_hides_an_accepted_order_for_the_declared_lag,
    Fault.STOP_HIT_WHILE_DOWN: test_stop_hit_while_down_closes_a_protected_position_at_its_stop,
    Fault.MANUAL_CLOSE: test_manual_close_closes_a_position_by_hand_while_down,
    Fault.EXTERNAL_ORDER: test_external_order_opens_a_position_that_is_not_ours,
    Fault.STALE_QUOTE: test_stale_quote_is_priced_long_before_the_server_time,
    Fault.MARKET_CLOSED: test_market_closed_says_so_in_the_quote,
}


def test_every_fault_has_a_test_at_probability_one():
    assert set(FAULT_TESTS) == set(Fault)
    for fault, test in FAULT_TESTS.items():
        assert test.__name__.startswith("test_"), fault


# The fault plan in the URL -------------------------------------------------------------------


def test_a_fault_plan_parses_to_exact_probabilities(tmp_path):
    settings = parse_broker_url(
        broker_url(tmp_path, "partial_fill:0.3,duplicate_ack:1,lookup_lag:0.000001")
    )
    assert settings.faults == {
        Fault.PARTIAL_FILL: Decimal("0.3"),
        Fault.DUPLICATE_ACK: Decimal(1),
        Fault.LOOKUP_LAG: Decimal("0.000001"),
    }
    assert settings.probability(Fault.MANUAL_CLOSE) == 0
    assert settings.lag_seconds == 5
    assert parse_broker_url(broker_url(tmp_path)).lag_seconds == 0


@pytest.mark.parametrize(
    ("query", "message"),
    [
        ("faults=teleport:0.5", "unknown fault 'teleport'; known faults: timeout_before_accept"),
        ("faults=partial_fill", "fault 'partial_fill' needs a probability"),
        ("faults=partial_fill:", "partial_fill"),
        ("faults=partial_fill:1.5", "fault partial_fill: probability 1.500000 is outside 0..1"),
        ("faults=partial_fill:-0.1", "outside 0..1"),
        ("faults=partial_fill:lots", "partial_fill"),
        ("faults=partial_fill:0.0000001", "more than 6 decimal places"),
        ("faults=partial_fill:0.1,partial_fill:0.2", "fault 'partial_fill' is given twice"),
        ("colour=red", "unknown paper broker option 'colour'"),
        ("scope=sometimes", "unknown client-id scope 'sometimes'; use one of forever"),
        ("seed=-1", "seed='-1' is not a whole number"),
        ("seed=1.5", "seed='1.5' is not a whole number"),
        ("lag_seconds=soon", "lag_seconds='soon' is not a whole number"),
        ("fee_rate=1", "fee_rate: 1.000000 is outside 0..1"),
        ("latency_ms=10001", "latency_ms"),
        ("latency_ms=fast", "latency_ms='fast' is not a whole number"),
    ],
)
def test_a_bad_broker_url_is_refused_with_what_is_wrong(query, message):
    with pytest.raises(BrokerURLError, match=message.replace(".", r"\.")):
        parse_broker_url(f"paper:////tmp/broker.db?{query}")


@pytest.mark.parametrize(
    "url",
    ["sqlite:///broker.db", "paper://host/broker.db", "paper:///", "broker.db"],
)
def test_a_url_that_is_not_a_paper_broker_is_refused(url):
    with pytest.raises(BrokerURLError, match=re.escape("paper:///path/to/broker.db")):
        parse_broker_url(url)


@pytest.mark.parametrize(
    "seed",
    ["%C2%B2", "9" * 5000],
    ids=["superscript-two", "five-thousand-digits"],
)
def test_a_seed_that_is_not_plain_digits_is_a_broker_url_error(seed):
    with pytest.raises(BrokerURLError, match="seed="):
        parse_broker_url(f"paper:////tmp/broker.db?seed={seed}")


@pytest.mark.anyio
async def test_books_in_memory_trade_like_books_on_disk(tmp_path):
    on_disk = await everyday_session(broker_url(tmp_path))
    in_memory = await everyday_session("paper:///:memory:?seed=5&scope=forever")
    # The same seed and calls give the same answers until the session reopens the
    # books: what was in memory is gone then, as a restarted process would find.
    assert msgspec.to_builtins(in_memory[:4]) == msgspec.to_builtins(on_disk[:4])
    assert in_memory[4] == Rejected(reason="no account 'main' at this broker")
    assert list(tmp_path.iterdir()) == [tmp_path / "broker.db"]


@pytest.mark.anyio
async def test_latency_delays_every_call_but_calls_overlap(tmp_path):
    url = broker_url(tmp_path, extra="&latency_ms=200")
    assert parse_broker_url(url).latency_ms == 200
    with PaperBroker.open(url) as broker:
        started = anyio.current_time()
        async with anyio.create_task_group() as tasks:
            for _ in range(10):
                tasks.start_soon(broker.server_time)
        took = anyio.current_time() - started
    assert 0.2 <= took < 2.0  # ten calls of 0.2 s each, together
