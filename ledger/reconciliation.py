"""The reconciliation log: one stream in which every recovery and reconciliation reports.

A report is recorded when its pass changed the ledger, or found something
the last report did not: so a pass that finds the same state twice writes
nothing the second time, and the log still shows every change of state.
"""

from __future__ import annotations

import enum
import hashlib
from datetime import datetime
from typing import ClassVar, Self
from uuid import NAMESPACE_URL, UUID, uuid5

import msgspec

from ledger.aggregate import Aggregate
from ledger.errors import IllegalTransition
from ledger.events import Event

RECONCILIATION_LOG_ID = uuid5(NAMESPACE_URL, "ledger:reconciliation-log")


class Finding(enum.StrEnum):
    """What a reconciliation can find, and (for the first group) settle from evidence."""

    INTENT_COMPLETED = "intent_completed"
    INTENT_ROLLED_BACK = "intent_rolled_back"
    INTENT_NEEDS_REVIEW = "intent_needs_review"
    INTENT_WAITING = "intent_waiting"
    """The broker cannot tell yet (its visibility lag): asked again on the next pass."""
    FILL_RECORDED = "fill_recorded"
    """A broker fill of a ledger position (a stop hit, a manual close, the rest of an order)."""
    PROTECTION_RESTORED = "protection_restored"
    PROTECTION_ADOPTED = "protection_adopted"
    PROTECTION_MISMATCH = "protection_mismatch"
    QUANTITY_MISMATCH = "quantity_mismatch"
    ORPHAN = "orphan"
    """Open in the ledger, gone at the broker, and no fill says how."""
    EXTERNAL = "external"
    """Open at the broker, unknown to the ledger."""
    EXTERNAL_ADOPTED = "external_adopted"
    UNKNOWN_ACCOUNT = "unknown_account"
    BALANCE_DIFFERENCE = "balance_difference"


class Item(msgspec.Struct, frozen=True, kw_only=True, omit_defaults=True):
    """One finding: about what, what the broker showed, and what was (or would be) written."""

    finding: Finding
    account: str
    subject: str
    """The intent, position or broker reference it is about."""
    detail: str
    applied: bool = False
    """True when the events it describes were written."""


class Trigger(enum.StrEnum):
    STARTUP = "startup"
    PERIODIC = "periodic"
    OPERATOR = "operator"


class ReconciliationRecorded(Event, frozen=True, kw_only=True):
    stored_name: ClassVar[str] = "reconciliation.recorded"
    report_id: UUID
    trigger: Trigger
    broker_time: datetime
    counts: dict[str, int]
    items: list[Item]
    digest: str
    """What was found, without times: equal digests mean the same findings."""


RECONCILIATION_EVENTS: tuple[type[Event], ...] = (ReconciliationRecorded,)


ATTENTION = frozenset(
    {
        Finding.INTENT_NEEDS_REVIEW,
        Finding.INTENT_WAITING,
        Finding.ORPHAN,
        Finding.QUANTITY_MISMATCH,
        Finding.PROTECTION_MISMATCH,
        Finding.EXTERNAL,
        Finding.UNKNOWN_ACCOUNT,
        Finding.BALANCE_DIFFERENCE,
    }
)
"""Findings that are a standing state to look at, not an action a pass took."""


def digest(items: list[Item]) -> str:
    """A fingerprint of the standing findings: equal when a pass finds the same state again."""
    found = sorted(
        f"{item.finding}|{item.account}|{item.subject}|{item.detail}"
        for item in items
        if item.finding in ATTENTION
    )
    return hashlib.sha256("\n".join(found).encode()).hexdigest()


class ReconciliationLog(Aggregate):
    """Every report, in order; remembers the last one's digest."""

    last_digest: str
    reports: int

    @classmethod
    def start(cls) -> Self:
        log = cls._blank(RECONCILIATION_LOG_ID, version=0)
        log.last_digest = digest([])
        log.reports = 0
        return log

    def record(
        self,
        report_id: UUID,
        trigger: Trigger,
        items: list[Item],
        *,
        broker_time: datetime,
        recorded_at: datetime,
    ) -> bool:
        """Record a report if it changed anything or its standing findings did; say if it did."""
        fingerprint = digest(items)
        if fingerprint == self.last_digest and not any(item.applied for item in items):
            return False
        counts: dict[str, int] = {}
        for item in items:
            counts[item.finding.value] = counts.get(item.finding.value, 0) + 1
        self._trigger(
            ReconciliationRecorded,
            recorded_at=recorded_at,
            report_id=report_id,
            trigger=trigger,
            broker_time=broker_time,
            counts=counts,
            items=items,
            digest=fingerprint,
        )
        return True

    def _apply(self, event: Event) -> None:
        if not isinstance(event, ReconciliationRecorded):
            raise IllegalTransition(f"the reconciliation log cannot apply {type(event).__name__}")
        self.last_digest = event.digest
        self.reports += 1

    @classmethod
    def _create(cls, event: Event) -> Self:
        log = cls.start()
        log._apply_checked(event)
        return log
