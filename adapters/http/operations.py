"""The engine's operations as requests: what the API takes and the CLI sends.

One Struct per operation, with the path it is posted to and what it asks
of the engine. The CLI builds the same Struct whether it posts it to a
running engine or applies it to a short-lived one, so both ways do the
same thing. Amounts and prices are strings: the ledger parses them
exactly (Decimal), and refuses what is not a plain decimal number.
"""

from __future__ import annotations

import hashlib
from typing import Annotated, ClassVar
from uuid import UUID

import msgspec

from ledger.engine import Engine
from ledger.instruments import Side
from ledger.origin import Origin
from ledger.results import OperationResult

# Text, checked by the ledger itself and not here, so an operation is refused
# with the same message whether it comes through the API or the CLI.
Name = Annotated[str, msgspec.Meta(examples=["main"])]
Symbol = Annotated[str, msgspec.Meta(examples=["BTCUSD"])]
Currency = Annotated[str, msgspec.Meta(examples=["USD"])]
Number = Annotated[
    str,
    msgspec.Meta(
        examples=["2500.50"],
        description="A decimal number as a string; exact, never rounded.",
    ),
]


class Operation(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    """An operation request; subclasses name their path and how the engine carries them out."""

    path: ClassVar[str]

    async def apply(self, engine: Engine, origin: Origin) -> OperationResult:
        raise NotImplementedError

    def digest(self) -> str:
        """The request's fingerprint: the same for the same operation with the same values."""
        return hashlib.sha256(self.path.encode() + b"\n" + msgspec.json.encode(self)).hexdigest()


class BalanceOperation(Operation, frozen=True, kw_only=True):
    """A deposit or a withdrawal: an amount in the account's currency."""

    account: Name
    amount: Number
    currency: Currency


class Deposit(BalanceOperation, frozen=True, kw_only=True):
    path: ClassVar[str] = "/deposits"

    async def apply(self, engine: Engine, origin: Origin) -> OperationResult:
        return await engine.deposit(self.account, self.amount, self.currency, origin=origin)


class Withdrawal(BalanceOperation, frozen=True, kw_only=True):
    path: ClassVar[str] = "/withdrawals"

    async def apply(self, engine: Engine, origin: Origin) -> OperationResult:
        return await engine.withdraw(self.account, self.amount, self.currency, origin=origin)


class OpenPosition(Operation, frozen=True, kw_only=True):
    path: ClassVar[str] = "/positions"
    account: Name
    symbol: Symbol
    side: Side
    quantity: Number
    stop_loss: Number | None = None
    take_profit: Number | None = None

    async def apply(self, engine: Engine, origin: Origin) -> OperationResult:
        return await engine.open_position(
            self.account,
            self.symbol,
            self.side,
            self.quantity,
            stop_loss=self.stop_loss,
            take_profit=self.take_profit,
            origin=origin,
        )


class ClosePosition(Operation, frozen=True, kw_only=True):
    path: ClassVar[str] = "/positions/close"
    position_id: UUID
    quantity: Number | None = None
    """Close only this much; all of it when left out."""

    async def apply(self, engine: Engine, origin: Origin) -> OperationResult:
        return await engine.close_position(self.position_id, self.quantity, origin=origin)


class SetStopLoss(Operation, frozen=True, kw_only=True):
    path: ClassVar[str] = "/positions/stop-loss"
    position_id: UUID
    price: Number

    async def apply(self, engine: Engine, origin: Origin) -> OperationResult:
        return await engine.change_stop_loss(self.position_id, self.price, origin=origin)


class SetTakeProfit(Operation, frozen=True, kw_only=True):
    path: ClassVar[str] = "/positions/take-profit"
    position_id: UUID
    price: Number

    async def apply(self, engine: Engine, origin: Origin) -> OperationResult:
        return await engine.change_take_profit(self.position_id, self.price, origin=origin)


OPERATIONS: tuple[tuple[type[Operation], str], ...] = (
    (Deposit, "Credit an account (opening it in that currency if it is new)."),
    (Withdrawal, "Debit an account; refused if it would take available funds below zero."),
    (OpenPosition, "Open a position with a market order, optionally with stop-loss and target."),
    (ClosePosition, "Close a position, or part of it."),
    (SetStopLoss, "Move a position's stop-loss."),
    (SetTakeProfit, "Move a position's take-profit."),
)
