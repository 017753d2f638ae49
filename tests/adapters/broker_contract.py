"""The broker port's contract: what every broker adapter does, and how it refuses.

Not collected on its own (the module name does not start with `test_`).
Each adapter's test module subclasses `BrokerContract`, names the class
`Test...`, and implements the hooks: how to build a broker, how to fund an
account at it, and how to let time pass there. Everything else is asked
through the `Broker` port only.
"""

from __future__ import annotations

import abc
import re
import string
from collections.abc import AsyncIterator
from datetime import datetime, timedelta
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest

from ledger.instruments import Instrument, Price, Quantity, Side
from ledger.money import Money
from ledger.ports import (
    Accepted,
    Balance,
    Broker,
    BrokerPosition,
    CandidateHint,
    ClientIdScope,
    Fill,
    FillReason,
    Found,
    LookupUnsupported,
    NotFound,
    Order,
    OrderAction,
    OrderRequest,
    OrderStatus,
    ProtectionRequest,
    Rejected,
    WriteResult,
)

INVALID_REQUESTS = [
    "unknown_symbol",
    "unknown_account",
    "quantity_off_step",
    "negative_quantity",
    "zero_quantity",
    "insufficient_funds",
    "bad_client_id_characters",
    "client_id_too_long",
    "close_unknown_position",
    "close_more_than_held",
    "reduce_all_of_position",
    "stop_loss_on_wrong_side",
    "take_profit_on_wrong_side",
]


def accepted(result: WriteResult) -> Accepted:
    assert isinstance(result, Accepted), result
    return result


def rejected(result: WriteResult) -> Rejected:
    assert isinstance(result, Rejected), result
    assert result.reason.strip(), "a rejection names its reason"
    return result


def only_fill(result: WriteResult) -> Fill:
    fills = accepted(result).fills
    assert len(fills) == 1, fills
    return fills[0]


def position_named(positions: list[BrokerPosition], ref: str) -> BrokerPosition:
    matching = [position for position in positions if position.broker_ref == ref]
    assert len(matching) == 1, (ref, positions)
    return matching[0]


class BrokerContract(abc.ABC):
    """The suite every `Broker` adapter must pass."""

    account = "main"
    """The account the suite trades in; `fund` creates or credits it."""

    # Hooks -------------------------------------------------------------------------

    @abc.abstractmethod
    def make_broker(self, tmp_path: Path) -> Broker:
        """A new broker with no history, keeping any files it needs under `tmp_path`."""

    def close_broker(self, broker: Broker) -> None:  # noqa: B027 - optional hook
        """Release what `make_broker` opened."""

    @abc.abstractmethod
    async def fund(self, broker: Broker, account: str, amount: Money) -> None:
        """Put `amount` into `account` at the broker."""

    @abc.abstractmethod
    async def let_time_pass(self, broker: Broker, seconds: int) -> None:
        """Let at least `seconds` of the broker's time pass (prices move, orders work)."""

    @property
    @abc.abstractmethod
    def deposit(self) -> Money:
        """What the suite funds its account with, in the instrument's quote currency."""

    @property
    @abc.abstractmethod
    def instrument(self) -> Instrument:
        """The instrument the suite trades, with the venue's terms."""

    @property
    @abc.abstractmethod
    def quantity(self) -> Decimal:
        """A valid quantity; `deposit` must pay for six positions of it."""

    @property
    @abc.abstractmethod
    def unaffordable_quantity(self) -> Decimal:
        """A valid quantity that `deposit` cannot pay for."""

    @property
    def protection_distance(self) -> Decimal:
        """How far from the price a stop-loss or take-profit is put: far enough never to trigger."""
        return self.instrument.price_tick * 2000

    price_slippage = Decimal(0)
    """How far a market fill may be from the quote read right after it."""

    # Fixtures ----------------------------------------------------------------------

    @pytest.fixture
    def anyio_backend(self) -> str:
        return "asyncio"

    @pytest.fixture
    async def broker(self, tmp_path: Path) -> AsyncIterator[Broker]:
        """A fresh broker whose account holds `deposit`."""
        made = self.make_broker(tmp_path)
        try:
            await self.fund(made, self.account, self.deposit)
            yield made
        finally:
            self.close_broker(made)

    # Helpers -----------------------------------------------------------------------

    @property
    def symbol(self) -> str:
        return self.instrument.symbol

    def request(
        self,
        client_id: str,
        *,
        action: OrderAction = OrderAction.OPEN,
        side: Side = Side.LONG,
        quantity: Decimal | None = None,
        position_ref: str | None = None,
        stop_loss: Decimal | None = None,
        take_profit: Decimal | None = None,
        tag: str = "",
        symbol: str | None = None,
        account: str | None = None,
        worst_price: Decimal | None = None,
    ) -> OrderRequest:
        return OrderRequest(
            client_id=client_id,
            account=self.account if account is None else account,
            action=action,
            symbol=self.symbol if symbol is None else symbol,
            side=side,
            quantity=self.quantity if quantity is None else quantity,
            position_ref=position_ref,
            stop_loss=stop_loss,
            take_profit=take_profit,
            tag=tag,
            worst_price=worst_price,
        )

    async def levels(self, broker: Broker, side: Side) -> tuple[Decimal, Decimal]:
        """A stop-loss and a take-profit that are valid now and far from the price."""
        quote = await broker.quote(self.symbol)
        distance = self.protection_distance
        if side is Side.LONG:
            return quote.bid - distance, quote.ask + distance
        return quote.ask + distance, quote.bid - distance

    async def open_position(
        self, broker: Broker, client_id: str, side: Side = Side.LONG, **fields: Any
    ) -> Fill:
        fill = only_fill(await broker.submit(self.request(client_id, side=side, **fields)))
        assert fill.opens
        return fill

    async def balance(self, broker: Broker) -> Balance:
        balances = [b for b in await broker.account() if b.account == self.account]
        assert len(balances) == 1, balances
        return balances[0]

    async def state(
        self, broker: Broker
    ) -> tuple[list[BrokerPosition], list[Fill], list[Balance], list[Order]]:
        """Everything a rejected write must leave as it was."""
        return (
            await broker.positions(),
            await broker.fills(),
            await broker.account(),
            await broker.open_orders(),
        )

    async def orders_of(
        self, broker: Broker, client_id: str, tag: str, since: datetime
    ) -> list[Order]:
        """Every order of `client_id` with `tag`, found without lookup (which a venue may lack)."""
        found: list[Order] = []
        for side in Side:
            hint = CandidateHint(
                account=self.account,
                symbol=self.symbol,
                side=side,
                quantity=self.quantity,
                since=since,
                until=await broker.server_time(),
                tag=tag,
            )
            found += [o for o in await broker.find_candidates(hint) if o.client_id == client_id]
        return found

    # Capabilities ------------------------------------------------------------------

    @pytest.mark.anyio
    async def test_capabilities_match_what_lookup_does(self, broker):
        capabilities = broker.capabilities
        never_used = await broker.lookup("neverused1")
        fill = await self.open_position(broker, "capable1")
        await self.let_time_pass(broker, int(capabilities.visibility_lag.total_seconds()))
        used = await broker.lookup("capable1")
        if capabilities.lookup_by_client_id:
            assert capabilities.client_id_scope is not ClientIdScope.NONE
            assert never_used == NotFound(authoritative=True)
            assert isinstance(used, Found), used
            assert used.order.client_id == "capable1"
            assert used.order.broker_ref == fill.order_ref
            assert used.fills == (fill,)
        else:
            assert capabilities.client_id_scope is ClientIdScope.NONE
            assert never_used == LookupUnsupported()
            assert used == LookupUnsupported()

    @pytest.mark.anyio
    async def test_client_ids_the_capabilities_allow_are_accepted_and_others_refused(self, broker):
        capabilities = broker.capabilities
        # `client_id_characters` is a regular-expression class *body*: what goes inside [...].
        body = capabilities.client_id_characters
        assert not (body.startswith("[") and body.endswith("]")), (
            f"client_id_characters={body!r} is a whole character class, not a class body"
        )
        character = re.compile(f"[{body}]")
        allowed = [c for c in string.ascii_letters + string.digits if character.fullmatch(c)]
        assert allowed, f"client_id_characters={body!r} allows no letter or digit"
        longest = "".join(
            allowed[i % len(allowed)] for i in range(capabilities.client_id_length_max)
        )
        too_long = longest[:-1] + "xy"
        assert character.fullmatch("!") is None
        before = await self.state(broker)
        rejected(await broker.submit(self.request(too_long)))
        rejected(await broker.submit(self.request("bad!" + longest[:2])))
        assert await self.state(broker) == before
        fill = await self.open_position(broker, longest)
        assert fill.client_id == longest

    # Prices and time --------------------------------------------------------------

    @pytest.mark.anyio
    async def test_a_quote_is_stamped_with_the_server_time(self, broker):
        for _ in range(3):
            quote = await broker.quote(self.symbol)
            assert quote.time == await broker.server_time()
            assert quote.symbol == self.symbol
            assert 0 < quote.bid < quote.ask
            self.instrument.price(quote.bid)
            self.instrument.price(quote.ask)
            await self.let_time_pass(broker, 1)
        assert await broker.server_time() > quote.time

    @pytest.mark.anyio
    async def test_the_venue_states_the_terms_of_what_it_trades(self, broker):
        assert await broker.instrument(self.symbol) == self.instrument
        assert await broker.instrument("NOT-TRADED-HERE") is None

    # Opening, amending, closing ----------------------------------------------------

    @pytest.mark.anyio
    @pytest.mark.parametrize("side", [Side.LONG, Side.SHORT])
    async def test_an_open_the_market_is_past_the_protection_price_of_is_rejected(
        self, broker, side
    ):
        quote = await broker.quote(self.symbol)
        # A buy no higher than far below the bid, a sell no lower than far above the ask.
        gap = self.protection_distance
        worst = quote.bid - gap if side is Side.LONG else quote.ask + gap
        rejected(await broker.submit(self.request("guarded1", side=side, worst_price=worst)))
        assert await broker.positions() == []
        assert await broker.open_orders() == []

    @pytest.mark.anyio
    async def test_an_open_within_its_protection_price_fills_no_worse(self, broker):
        quote = await broker.quote(self.symbol)
        worst = quote.ask + self.protection_distance
        fill = only_fill(await broker.submit(self.request("guarded2", worst_price=worst)))
        assert fill.price <= worst

    @pytest.mark.anyio
    async def test_an_open_fills_at_the_ask_and_the_position_carries_its_protection(self, broker):
        stop_loss, take_profit = await self.levels(broker, Side.LONG)
        before = await broker.server_time()
        result = accepted(
            await broker.submit(
                self.request("openlong1", stop_loss=stop_loss, take_profit=take_profit)
            )
        )
        quote = await broker.quote(self.symbol)
        assert len(result.fills) == 1, result.fills
        fill = result.fills[0]
        assert fill.client_id == "openlong1"
        assert fill.order_ref == result.broker_ref
        assert (fill.account, fill.symbol, fill.side) == (self.account, self.symbol, Side.LONG)
        assert fill.opens is True
        assert fill.quantity == self.quantity
        assert fill.reason is FillReason.ORDER
        assert fill.pnl is None
        assert before <= fill.time <= quote.time
        # A long opens by buying: at the ask, not the bid.
        assert abs(fill.price - quote.ask) <= self.price_slippage
        assert fill.price != quote.bid
        [position] = await broker.positions()
        assert position.broker_ref == fill.position_ref
        assert (position.account, position.symbol, position.side) == (
            self.account,
            self.symbol,
            Side.LONG,
        )
        assert position.quantity == self.quantity
        assert position.entry_price == fill.price
        assert position.stop_loss == stop_loss
        assert position.take_profit == take_profit
        assert position.client_id == "openlong1"

    @pytest.mark.anyio
    async def test_a_short_opens_at_the_bid(self, broker):
        stop_loss, take_profit = await self.levels(broker, Side.SHORT)
        fill = await self.open_position(
            broker, "openshort1", Side.SHORT, stop_loss=stop_loss, take_profit=take_profit
        )
        quote = await broker.quote(self.symbol)
        assert abs(fill.price - quote.bid) <= self.price_slippage
        assert fill.price != quote.ask
        position = position_named(await broker.positions(), fill.position_ref)
        assert position.side is Side.SHORT
        assert (position.stop_loss, position.take_profit) == (stop_loss, take_profit)

    @pytest.mark.anyio
    async def test_amending_protection_changes_what_positions_show(self, broker):
        stop_loss, take_profit = await self.levels(broker, Side.LONG)
        fill = await self.open_position(broker, "amend1", stop_loss=stop_loss)
        tick = self.instrument.price_tick
        accepted(
            await broker.amend_protection(
                ProtectionRequest(
                    client_id="amend2",
                    account=self.account,
                    position_ref=fill.position_ref,
                    stop_loss=stop_loss + tick,
                    take_profit=take_profit,
                )
            )
        )
        position = position_named(await broker.positions(), fill.position_ref)
        assert (position.stop_loss, position.take_profit) == (stop_loss + tick, take_profit)
        # A field left unset keeps its level; None removes one.
        accepted(
            await broker.amend_protection(
                ProtectionRequest(
                    client_id="amend3",
                    account=self.account,
                    position_ref=fill.position_ref,
                    take_profit=None,
                )
            )
        )
        position = position_named(await broker.positions(), fill.position_ref)
        assert (position.stop_loss, position.take_profit) == (stop_loss + tick, None)
        # A stop-loss above the price of a long is refused and nothing changes.
        quote = await broker.quote(self.symbol)
        before = await self.state(broker)
        rejected(
            await broker.amend_protection(
                ProtectionRequest(
                    client_id="amend4",
                    account=self.account,
                    position_ref=fill.position_ref,
                    stop_loss=quote.ask + self.protection_distance,
                )
            )
        )
        rejected(
            await broker.amend_protection(
                ProtectionRequest(
                    client_id="amend5",
                    account=self.account,
                    position_ref="P999999",
                    stop_loss=stop_loss,
                )
            )
        )
        assert await self.state(broker) == before

    @pytest.mark.anyio
    async def test_reduce_then_close_realise_pnl_and_the_position_goes(self, broker):
        step = self.instrument.quantity_step
        opened = await self.open_position(broker, "pnlopen1", quantity=self.quantity + step)
        await self.let_time_pass(broker, 3)
        reduced = only_fill(
            await broker.submit(
                self.request(
                    "pnlreduce1",
                    action=OrderAction.REDUCE,
                    quantity=step,
                    position_ref=opened.position_ref,
                )
            )
        )
        quote = await broker.quote(self.symbol)
        # A long is closed by selling: at the bid.
        assert abs(reduced.price - quote.bid) <= self.price_slippage
        assert reduced.opens is False
        assert reduced.position_ref == opened.position_ref
        assert reduced.quantity == step
        assert reduced.client_id == "pnlreduce1"
        assert reduced.pnl == self.instrument.pnl(
            Side.LONG, Quantity(step), Price(opened.price), Price(reduced.price)
        )
        position = position_named(await broker.positions(), opened.position_ref)
        assert position.quantity == self.quantity
        await self.let_time_pass(broker, 3)
        closed = only_fill(
            await broker.submit(
                self.request(
                    "pnlclose1",
                    action=OrderAction.CLOSE,
                    quantity=self.quantity,
                    position_ref=opened.position_ref,
                )
            )
        )
        assert closed.pnl == self.instrument.pnl(
            Side.LONG, Quantity(self.quantity), Price(opened.price), Price(closed.price)
        )
        assert closed.quantity == self.quantity
        assert await broker.positions() == []
        assert [f.fill_id for f in await broker.fills()] == [
            opened.fill_id,
            reduced.fill_id,
            closed.fill_id,
        ]
        balance = await self.balance(broker)
        assert balance.used == Money.zero(self.deposit.currency)
        assert balance.available == balance.balance

    # Fills -------------------------------------------------------------------------

    @pytest.mark.anyio
    async def test_fills_keep_their_ids_and_since_filters_them(self, broker):
        first = await self.open_position(broker, "fills1")
        await self.let_time_pass(broker, 2)
        between = await broker.server_time()
        second = await self.open_position(broker, "fills2", Side.SHORT)
        everything = await broker.fills()
        assert everything == [first, second]
        assert first.fill_id != second.fill_id
        assert await broker.fills() == everything
        assert await broker.fills(since=between) == [second]
        assert await broker.fills(since=between - timedelta(days=1)) == everything
        await self.let_time_pass(broker, 2)
        third = only_fill(
            await broker.submit(
                self.request(
                    "fills3",
                    action=OrderAction.CLOSE,
                    side=Side.SHORT,
                    position_ref=second.position_ref,
                )
            )
        )
        assert await broker.fills() == [first, second, third]
        assert await broker.fills(since=between) == [second, third]
        assert await broker.fills(since=await broker.server_time()) == []

    @pytest.mark.anyio
    async def test_one_submit_makes_exactly_one_order(self, broker):
        since = await broker.server_time()
        result = accepted(await broker.submit(self.request("once1", tag="once")))
        await self.let_time_pass(broker, int(broker.capabilities.visibility_lag.total_seconds()))
        orders = await self.orders_of(broker, "once1", "once", since)
        assert [order.broker_ref for order in orders] == [result.broker_ref]
        assert orders[0].status is OrderStatus.FILLED
        assert orders[0].filled_quantity == self.quantity
        assert await broker.open_orders() == []
        assert {fill.order_ref for fill in await broker.fills()} == {result.broker_ref}
        assert len(await broker.positions()) == 1
        if broker.capabilities.lookup_by_client_id:
            found = await broker.lookup("once1")
            assert isinstance(found, Found), found
            assert found.order == orders[0]

    # Refusals -----------------------------------------------------------------------

    async def invalid_request(self, broker: Broker, case: str, position: Fill) -> OrderRequest:
        stop_loss, _ = await self.levels(broker, Side.LONG)
        quote = await broker.quote(self.symbol)
        step = self.instrument.quantity_step
        client_id = "invalid1"
        close = {"action": OrderAction.CLOSE, "position_ref": position.position_ref}
        requests = {
            "unknown_symbol": lambda: self.request(client_id, symbol="NOSUCHSYMBOL"),
            "unknown_account": lambda: self.request(client_id, account="nosuchaccount"),
            "quantity_off_step": lambda: self.request(client_id, quantity=self.quantity + step / 2),
            "negative_quantity": lambda: self.request(client_id, quantity=-self.quantity),
            "zero_quantity": lambda: self.request(client_id, quantity=Decimal(0)),
            "insufficient_funds": lambda: self.request(
                client_id, quantity=self.unaffordable_quantity
            ),
            "bad_client_id_characters": lambda: self.request("bad id/!"),
            "client_id_too_long": lambda: self.request(
                "A" * (broker.capabilities.client_id_length_max + 1)
            ),
            "close_unknown_position": lambda: self.request(
                client_id, action=OrderAction.CLOSE, position_ref="P999999"
            ),
            "close_more_than_held": lambda: self.request(
                client_id, quantity=self.quantity + step, **close
            ),
            "reduce_all_of_position": lambda: self.request(
                client_id,
                action=OrderAction.REDUCE,
                position_ref=position.position_ref,
                quantity=self.quantity,
            ),
            "stop_loss_on_wrong_side": lambda: self.request(
                client_id, stop_loss=quote.ask + self.protection_distance
            ),
            "take_profit_on_wrong_side": lambda: self.request(
                client_id, stop_loss=stop_loss, take_profit=quote.bid - self.protection_distance
            ),
        }
        assert set(requests) == set(INVALID_REQUESTS)
        return requests[case]()

    @pytest.mark.anyio
    @pytest.mark.parametrize("case", INVALID_REQUESTS)
    async def test_an_invalid_request_is_rejected_and_changes_nothing(self, broker, case):
        position = await self.open_position(broker, "held1")
        request = await self.invalid_request(broker, case, position)
        before = await self.state(broker)
        rejected(await broker.submit(request))
        assert await self.state(broker) == before
        if broker.capabilities.lookup_by_client_id and "client_id" not in case:
            assert await broker.lookup(request.client_id) == NotFound(authoritative=True)
        # The refused request left no trace: its client id is still free.
        fill = await self.open_position(broker, "invalid1")
        assert fill.client_id == "invalid1"
        assert len(await broker.positions()) == 2

    # Client ids ---------------------------------------------------------------------

    @pytest.mark.anyio
    async def test_reusing_a_client_id_does_what_the_declared_scope_says(self, broker):
        scope = broker.capabilities.client_id_scope
        since = await broker.server_time()
        first = await self.open_position(broker, "reused1", tag="reuse")
        await self.let_time_pass(broker, 1)
        before = await self.state(broker)
        again = await broker.submit(self.request("reused1", tag="reuse"))
        await self.let_time_pass(broker, int(broker.capabilities.visibility_lag.total_seconds()))
        orders = await self.orders_of(broker, "reused1", "reuse", since)
        if scope is ClientIdScope.FOREVER:
            rejected(again)
            assert await self.state(broker) == before
            assert [order.broker_ref for order in orders] == [first.order_ref]
            found = await broker.lookup("reused1")
            assert isinstance(found, Found), found
            assert found.order.broker_ref == first.order_ref
        else:
            # OPEN_ONLY: the first order is filled, so its id is free again. NONE: ids repeat.
            second = only_fill(again)
            assert second.order_ref != first.order_ref
            assert second.position_ref != first.position_ref
            assert [order.broker_ref for order in orders] == [first.order_ref, second.order_ref]
            positions = await broker.positions()
            assert [p.client_id for p in positions] == ["reused1", "reused1"]
            found = await broker.lookup("reused1")
            if scope is ClientIdScope.OPEN_ONLY:
                assert isinstance(found, Found), found
                assert found.order.broker_ref in {first.order_ref, second.order_ref}
            else:
                assert found == LookupUnsupported()

    @pytest.mark.anyio
    async def test_find_candidates_matches_the_hint_and_nothing_else(self, broker):
        step = self.instrument.quantity_step
        since = await broker.server_time()
        wanted = await self.open_position(broker, "cand1", tag="alpha")
        await self.open_position(broker, "cand2", Side.SHORT, tag="alpha")
        await self.open_position(broker, "cand3", quantity=self.quantity + step, tag="alpha")
        other_tag = await self.open_position(broker, "cand4", tag="beta")
        until = await broker.server_time()
        await self.let_time_pass(broker, 1)
        later = await self.open_position(broker, "cand5", tag="alpha")
        await self.let_time_pass(broker, int(broker.capabilities.visibility_lag.total_seconds()))
        hint = CandidateHint(
            account=self.account,
            symbol=self.symbol,
            side=Side.LONG,
            quantity=self.quantity,
            since=since,
            until=until,
            tag="alpha",
        )
        found = await broker.find_candidates(hint)
        assert [order.broker_ref for order in found] == [wanted.order_ref]
        assert found[0].client_id == "cand1"
        assert found[0].tag == "alpha"
        assert since <= found[0].created_at <= until
        untagged = await broker.find_candidates(
            CandidateHint(
                account=self.account,
                symbol=self.symbol,
                side=Side.LONG,
                quantity=self.quantity,
                since=since,
                until=until,
            )
        )
        assert [o.broker_ref for o in untagged] == [wanted.order_ref, other_tag.order_ref]
        wider = await broker.find_candidates(
            CandidateHint(
                account=self.account,
                symbol=self.symbol,
                side=Side.LONG,
                quantity=self.quantity,
                since=since,
                until=await broker.server_time(),
                tag="alpha",
            )
        )
        assert [o.broker_ref for o in wider] == [wanted.order_ref, later.order_ref]
        elsewhere = CandidateHint(
            account="nosuchaccount",
            symbol=self.symbol,
            side=Side.LONG,
            quantity=self.quantity,
            since=since,
            until=await broker.server_time(),
        )
        assert await broker.find_candidates(elsewhere) == []

    # Money ---------------------------------------------------------------------------

    @pytest.mark.anyio
    async def test_the_balance_is_deposits_plus_pnl_minus_fees(self, broker):
        zero = Money.zero(self.deposit.currency)
        start = await self.balance(broker)
        assert (start.balance, start.used, start.available) == (self.deposit, zero, self.deposit)
        long = await self.open_position(broker, "money1", quantity=self.quantity * 2)
        short = await self.open_position(broker, "money2", Side.SHORT)
        opened = await self.balance(broker)
        assert opened.balance == self.deposit - long.fee - short.fee
        assert opened.used > zero
        assert opened.available == opened.balance - opened.used
        await self.let_time_pass(broker, 5)
        await broker.submit(
            self.request(
                "money3",
                action=OrderAction.REDUCE,
                position_ref=long.position_ref,
                quantity=self.quantity,
            )
        )
        await self.let_time_pass(broker, 5)
        await broker.submit(
            self.request(
                "money4",
                action=OrderAction.CLOSE,
                side=Side.SHORT,
                position_ref=short.position_ref,
            )
        )
        await self.let_time_pass(broker, 5)
        await broker.submit(
            self.request("money5", action=OrderAction.CLOSE, position_ref=long.position_ref)
        )
        fills = await broker.fills()
        assert len(fills) == 5
        assert [f.pnl is None for f in fills] == [True, True, False, False, False]
        expected = self.deposit
        for fill in fills:
            assert fill.fee.currency == self.deposit.currency
            assert fill.fee >= zero
            expected = expected - fill.fee + (fill.pnl or zero)
        final = await self.balance(broker)
        assert final.balance == expected
        assert final.balance.amount == (
            self.deposit.amount
            + sum((f.pnl.amount for f in fills if f.pnl is not None), Decimal(0))
            - sum((f.fee.amount for f in fills), Decimal(0))
        )
        assert (final.used, final.available) == (zero, final.balance)
        assert await broker.positions() == []
