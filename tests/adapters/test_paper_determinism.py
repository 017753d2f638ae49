"""The paper broker is a reproducible simulation: the seed and the calls decide everything."""

from __future__ import annotations

import os
import stat
from decimal import Decimal
from pathlib import Path
from typing import Any

import msgspec
import pytest

from adapters.paper import market
from adapters.paper.broker import PaperBroker
from ledger.instruments import Side
from ledger.money import Money
from ledger.ports import (
    Accepted,
    FillReason,
    OrderAction,
    OrderRequest,
    ProtectionRequest,
    Rejected,
    Unknown,
)

ACCOUNT = "main"
QUANTITY = Decimal("0.0100")
# Every fault but crash_after_accept, which would kill the test run itself.
FAULTS = ",".join(
    f"{fault}:0.3"
    for fault in (
        "timeout_before_accept",
        "timeout_after_accept",
        "duplicate_ack",
        "partial_fill",
        "reject_sl_change",
        "sl_change_accepted_not_applied",
        "lookup_lag",
        "stop_hit_while_down",
        "manual_close",
        "external_order",
    )
)


@pytest.fixture
def anyio_backend():
    return "asyncio"


def broker_url(folder: Path, *, seed: int, faults: str = "") -> str:
    folder.mkdir(exist_ok=True)
    extra = f"&faults={faults}" if faults else ""
    return f"paper:///{folder}/broker.db?seed={seed}&scope=open_only{extra}"


async def open_funded(url: str) -> PaperBroker:
    broker = PaperBroker.open(url)
    await broker.fund(ACCOUNT, Money.parse("20000", "USD"))
    return broker


async def trading_session(url: str, *, restarts: tuple[int, ...] = (2, 4, 6, 8, 10)) -> list[Any]:
    """Twelve rounds of opening, amending and closing, with restarts; every answer kept."""
    transcript: list[Any] = []
    broker = await open_funded(url)
    try:
        for round_number in range(12):
            if round_number in restarts:
                broker.close()
                broker = PaperBroker.open(url)
            side = Side.LONG if round_number % 2 == 0 else Side.SHORT
            quote = await broker.quote("BTCUSD")
            stop_loss = quote.bid - 500 if side is Side.LONG else quote.ask + 500
            transcript.append(
                await broker.submit(
                    OrderRequest(
                        client_id=f"det{round_number}",
                        account=ACCOUNT,
                        action=OrderAction.OPEN,
                        symbol="BTCUSD",
                        side=side,
                        quantity=QUANTITY,
                        stop_loss=stop_loss,
                    )
                )
            )
            ours = [p for p in await broker.positions() if p.symbol == "BTCUSD"]
            for position in ours[:1]:
                assert position.stop_loss is not None
                moved = position.stop_loss - 50 * position.side.sign
                transcript.append(
                    await broker.amend_protection(
                        ProtectionRequest(
                            client_id=f"amend{round_number}",
                            account=ACCOUNT,
                            position_ref=position.broker_ref,
                            stop_loss=moved,
                        )
                    )
                )
            positions = await broker.positions()
            if round_number % 3 == 2 and positions:
                last = positions[-1]
                transcript.append(
                    await broker.submit(
                        OrderRequest(
                            client_id=f"close{round_number}",
                            account=ACCOUNT,
                            action=OrderAction.CLOSE,
                            symbol=last.symbol,
                            side=last.side,
                            quantity=last.quantity,
                            position_ref=last.broker_ref,
                        )
                    )
                )
            await broker.advance(2)
            transcript.append(await broker.lookup(f"det{round_number}"))
        transcript.extend(
            [
                await broker.positions(),
                await broker.all_orders(),
                await broker.fills(),
                await broker.account(),
                await broker.server_time(),
            ]
        )
        transcript.append(broker.dump())
    finally:
        broker.close()
    return transcript


def what_happened(transcript: list[Any]) -> set[str]:
    """The kinds of fault visible in a session's answers."""
    seen: set[str] = set()
    fills = transcript[-4]
    for entry in transcript:
        if isinstance(entry, Unknown):
            seen.add("unknown")
        elif isinstance(entry, Rejected):
            seen.add("rejected")
        elif isinstance(entry, Accepted) and len(entry.fills) == 2:
            seen.add("duplicate")
        elif isinstance(entry, Accepted) and any(f.quantity < QUANTITY for f in entry.fills):
            seen.add("partial")
    seen.update(fill.reason.value for fill in fills if fill.reason is not FillReason.ORDER)
    return seen


@pytest.mark.anyio
async def test_the_same_seed_and_calls_give_the_same_broker(tmp_path):
    first = await trading_session(broker_url(tmp_path / "first", seed=42, faults=FAULTS))
    second = await trading_session(broker_url(tmp_path / "second", seed=42, faults=FAULTS))
    assert first[-1] == second[-1]
    assert msgspec.to_builtins(first) == msgspec.to_builtins(second)
    # The faults did happen: the sessions are alike in all their accidents.
    assert what_happened(first) == {
        "unknown",
        "rejected",
        "duplicate",
        "partial",
        "stop_loss",
        "manual",
        "external",
    }
    dump = first[-1]
    assert [row["value"] for row in dump["settings"]] == ["open_only", "42"]
    assert dump["clock"] == [{"id": 1, "step": market.step_at(first[-2]), "sessions": 6}]
    assert len(dump["orders"]) >= 12


@pytest.mark.anyio
async def test_another_seed_walks_other_prices(tmp_path):
    quotes: dict[int, list[tuple[Decimal, Decimal]]] = {}
    for seed in (1, 2):
        with PaperBroker.open(broker_url(tmp_path / f"seed{seed}", seed=seed)) as broker:
            start = [await broker.quote(symbol) for symbol in sorted(market.LISTINGS)]
            assert [q.bid + (q.ask - q.bid) / 2 for q in start] == [
                market.LISTINGS[symbol].start for symbol in sorted(market.LISTINGS)
            ]
            await broker.advance(20)
            quotes[seed] = [
                ((q := await broker.quote(symbol)).bid, q.ask) for symbol in sorted(market.LISTINGS)
            ]
    for symbol, one, two in zip(sorted(market.LISTINGS), quotes[1], quotes[2], strict=True):
        assert one != two, symbol


@pytest.mark.anyio
async def test_a_restarted_broker_carries_on_as_if_it_had_not_stopped(tmp_path):
    through = await trading_session(broker_url(tmp_path / "through", seed=9), restarts=())
    restarted = await trading_session(broker_url(tmp_path / "restarted", seed=9), restarts=(3, 7))
    through_dump, restarted_dump = through.pop(), restarted.pop()
    assert through_dump["clock"][0]["sessions"] == 1
    assert restarted_dump["clock"][0]["sessions"] == 3
    for dump in (through_dump, restarted_dump):
        del dump["clock"][0]["sessions"]
    assert restarted_dump == through_dump
    assert msgspec.to_builtins(restarted) == msgspec.to_builtins(through)
    assert len(through_dump["fills"]) >= 16


@pytest.mark.anyio
async def test_the_broker_file_is_private_whatever_the_umask(tmp_path):
    previous = os.umask(0)
    try:
        broker = await open_funded(broker_url(tmp_path / "private", seed=1))
    finally:
        os.umask(previous)
    with broker:
        files = sorted((tmp_path / "private").iterdir())
        assert files[0].name == "broker.db"
        for file in files:
            assert stat.S_IMODE(file.stat().st_mode) == 0o600, file
    assert stat.S_IMODE((tmp_path / "private" / "broker.db").stat().st_mode) == 0o600
