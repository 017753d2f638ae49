"""One reconciliation pass: what it may write, what the broker showed, what it found.

A pass reads the broker once where it can (positions, fills, working
orders) and reads the ledger through the engine's writer, so it sees
exactly what is committed and never races the writer's cache.
"""

from __future__ import annotations

import copy
import enum
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from decimal import Decimal
from typing import TypeVar
from uuid import UUID, uuid4

import msgspec

from ledger.account import Account
from ledger.aggregate import Aggregate
from ledger.engine import Engine
from ledger.intent import CloseRequest, Intent, IntentStatus, OpenRequest, ProtectionChange
from ledger.ports import BrokerPosition, Fill, Order
from ledger.position import Position
from ledger.reconciliation import Finding, Item, Trigger
from ledger.writer import UnitOfWork, tagged

A = TypeVar("A", bound=Aggregate)
T = TypeVar("T")


class Apply(enum.StrEnum):
    """How much a pass may write."""

    NOTHING = "nothing"
    """A plan: find and report, write nothing."""
    EVIDENCE = "evidence"
    """What broker evidence backs: intent resolutions, recorded fills, SL restores, flags."""
    ALL = "all"
    """Also adopt what the broker holds and the ledger does not (an operator's `--apply`)."""


class ProtectionPolicy(enum.StrEnum):
    """What to do when the broker's stop-loss or take-profit differs from the ledger's."""

    RESTORE = "restore"
    """Send the ledger's last confirmed levels to the broker again, through an intent."""
    ADOPT = "adopt"
    """Record the broker's levels in the ledger."""
    FLAG = "flag"
    """Flag the position and change nothing."""


@dataclass
class Pass:
    """The state of one pass."""

    engine: Engine
    trigger: Trigger
    apply: Apply
    policy: ProtectionPolicy
    broker_time: datetime
    first_seen: dict[UUID, datetime]
    """When each unfinished intent was first seen by a pass, on the broker's clock."""
    report_id: UUID = field(default_factory=uuid4)
    items: list[Item] = field(default_factory=list)
    names: dict[UUID, str] = field(default_factory=dict)
    claimed: set[str] = field(default_factory=set)
    """Broker orders matched to an intent by this pass, so no other intent takes them."""
    positions: list[BrokerPosition] = field(default_factory=list)
    fills: list[Fill] = field(default_factory=list)
    orders: list[Order] = field(default_factory=list)
    settled: set[UUID] = field(default_factory=set)
    """Intents this pass completed or rolled back (or, planning, would)."""
    planned_levels: dict[UUID, tuple[Decimal | None, Decimal | None]] = field(default_factory=dict)
    """Planning: the SL/TP a position would have once the changes this pass settles are."""
    unrecorded: dict[str, Decimal] = field(default_factory=dict)
    """By account: what the broker's fills not recorded yet (a plan) did to its balance."""

    @property
    def writes(self) -> bool:
        return self.apply is not Apply.NOTHING

    @property
    def lag(self) -> timedelta:
        return self.engine.broker.capabilities.visibility_lag

    def lag_passed(self, intent_id: UUID) -> bool:
        """Whether the broker's visibility lag has passed since the intent was surely sent.

        An unfinished intent not being sent by this engine was sent, if at
        all, before a pass first saw it: that moment, on the broker's clock,
        is the reference, so clock skew between us and the venue cannot
        make "not found" look authoritative too early.
        """
        seen = self.first_seen.setdefault(intent_id, self.broker_time)
        return self.broker_time >= seen + self.lag

    def note_unrecorded(self, account: str, fills: Iterable[Fill]) -> None:
        """Planning: what fills the ledger has not recorded would do to `account`'s balance."""
        for fill in fills:
            effect = (fill.pnl.amount if fill.pnl else Decimal(0)) - fill.fee.amount
            self.unrecorded[account] = self.unrecorded.get(account, Decimal(0)) + effect

    def found(self, finding: Finding, account: str, subject: object, detail: str) -> Item:
        item = Item(finding=finding, account=account, subject=str(subject), detail=detail)
        self.items.append(item)
        return item

    def mark_applied(self, item: Item) -> None:
        self.items[self.items.index(item)] = msgspec.structs.replace(item, applied=True)

    async def write(self, command: Callable[[UnitOfWork], T]) -> T:
        """Run `command` in the writer, every event it triggers tagged with this pass's id."""
        return await self.engine.writer.execute(tagged(command, self.report_id))

    async def read(self, aggregate_class: type[A], aggregate_id: UUID) -> A | None:
        """A copy of an aggregate as committed (the writer owns the original)."""
        return await self.engine.writer.execute(
            lambda unit: copy.deepcopy(unit.get(aggregate_class, aggregate_id))
        )

    async def read_all(self, aggregate_class: type[A], listed: Callable[[], list[UUID]]) -> list[A]:
        """Copies of every aggregate `listed` names, read in one writer command."""

        def read(unit: UnitOfWork) -> list[A]:
            found = (unit.get(aggregate_class, aggregate_id) for aggregate_id in listed())
            return [copy.deepcopy(aggregate) for aggregate in found if aggregate is not None]

        return await self.engine.writer.execute(read)

    async def open_positions(self) -> list[Position]:
        """Every open position, as committed."""
        positions = await self.read_all(Position, self.engine.store.open_positions)
        return [held for held in positions if held.is_open]

    async def account_name(self, account_id: UUID) -> str:
        if account_id not in self.names:
            account = await self.read(Account, account_id)
            self.names[account_id] = account.name if account else str(account_id)
        return self.names[account_id]

    async def symbol_of(self, intent: Intent) -> str | None:
        """The symbol an intent trades, from its request or from its position."""
        payload = intent.payload
        if isinstance(payload, OpenRequest):
            return payload.symbol
        if isinstance(payload, CloseRequest | ProtectionChange):
            held = await self.read(Position, payload.position_id)
            return None if held is None else held.instrument.symbol
        return None


async def refresh_frozen(run: Pass, intents: list[Intent]) -> None:
    """Freeze writes on every account and symbol with an intent awaiting review."""
    frozen: dict[tuple[UUID, str], UUID] = {}
    for intent in intents:
        if intent.status is IntentStatus.NEEDS_REVIEW:
            symbol = await run.symbol_of(intent)
            if symbol is not None:
                frozen[intent.account_id, symbol] = intent.id
    run.engine.frozen = frozen
