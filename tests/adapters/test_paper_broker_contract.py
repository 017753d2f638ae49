"""The paper broker passes the broker contract, in each client-id scope it can play."""

from __future__ import annotations

from datetime import timedelta
from decimal import Decimal
from pathlib import Path

import pytest

from adapters.paper import market
from adapters.paper.broker import PaperBroker
from adapters.paper.settings import FEE_RATE_DEFAULT
from adapters.paper.tables import PaperBrokerError
from ledger.instruments import Instrument
from ledger.money import Money
from ledger.ports import Broker, ClientIdScope
from tests.adapters.broker_contract import BrokerContract, only_fill

BTCUSD = market.instrument("BTCUSD", FEE_RATE_DEFAULT)
assert BTCUSD is not None


class PaperBrokerContract(BrokerContract):
    scope: ClientIdScope
    seed = 11

    deposit = Money.parse("10000", "USD")
    instrument: Instrument = BTCUSD
    quantity = Decimal("0.0100")
    unaffordable_quantity = Decimal("1.0000")

    def url(self, tmp_path: Path) -> str:
        return f"paper:///{tmp_path}/broker.db?seed={self.seed}&scope={self.scope}"

    def make_broker(self, tmp_path: Path) -> Broker:
        return PaperBroker.open(self.url(tmp_path))

    def close_broker(self, broker: Broker) -> None:
        assert isinstance(broker, PaperBroker)
        broker.close()

    async def fund(self, broker: Broker, account: str, amount: Money) -> None:
        assert isinstance(broker, PaperBroker)
        await broker.fund(account, amount)

    async def let_time_pass(self, broker: Broker, seconds: int) -> None:
        assert isinstance(broker, PaperBroker)
        # One price step is one second of the broker's clock.
        steps = -(-timedelta(seconds=seconds) // market.STEP)
        if steps:
            await broker.advance(steps)

    # Paper only ------------------------------------------------------------------

    @pytest.mark.anyio
    async def test_the_broker_declares_the_scope_of_its_url(self, broker):
        capabilities = broker.capabilities
        assert capabilities.client_id_scope is self.scope
        assert capabilities.lookup_by_client_id is (self.scope is not ClientIdScope.NONE)
        assert capabilities.client_id_length_max == 32
        assert capabilities.visibility_lag == timedelta(0)
        assert capabilities.native_protection_amend is True

    @pytest.mark.anyio
    async def test_a_fee_is_the_notional_times_the_fee_rate_rounded_up(self, broker):
        fill = only_fill(await broker.submit(self.request("fee1", quantity=Decimal("0.0123"))))
        exact = fill.quantity * fill.price * FEE_RATE_DEFAULT
        assert fill.fee == Money.rounded(exact, "USD", "ROUND_UP")
        assert fill.fee == self.instrument.fee(fill.quantity, fill.price)
        assert fill.fee.amount >= exact
        assert fill.fee.amount - exact < Decimal("0.01")

    @pytest.mark.anyio
    async def test_reopening_with_another_scope_or_seed_is_refused(self, broker, tmp_path):
        await broker.submit(self.request("scoped1"))
        other = next(scope for scope in ClientIdScope if scope is not self.scope)
        path = tmp_path / "broker.db"
        with pytest.raises(PaperBrokerError, match=f"scope={self.scope}, not scope={other}"):
            PaperBroker.open(f"paper:///{path}?seed={self.seed}&scope={other}")
        with pytest.raises(PaperBrokerError, match=f"seed={self.seed}, not seed=12"):
            PaperBroker.open(f"paper:///{path}?seed=12&scope={self.scope}")
        assert len(await broker.positions()) == 1


class TestPaperBrokerForever(PaperBrokerContract):
    scope = ClientIdScope.FOREVER


class TestPaperBrokerOpenOnly(PaperBrokerContract):
    scope = ClientIdScope.OPEN_ONLY


class TestPaperBrokerNone(PaperBrokerContract):
    scope = ClientIdScope.NONE
