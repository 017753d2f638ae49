"""Risk controls an operator sets: an account's limits and its kill switch, as events.

One stream per account, plus one for every account at once (`ALL`), so
a control survives restarts and a running engine sees a change on its
next operation (it reads these streams afresh for every batch it
commits). Only operators write them, never the engine: so an operator's
command never races the engine's own writes.

A kill switch engaged with `flatten` stays latched until the broker
reports the account flat: releasing it earlier is refused.
"""

from __future__ import annotations

from datetime import datetime
from typing import ClassVar, Self
from uuid import NAMESPACE_URL, UUID, uuid5

import msgspec

from ledger.aggregate import Aggregate
from ledger.errors import IllegalTransition, InvalidValue
from ledger.events import Event
from ledger.limits import Limits

CONTROLS_NAMESPACE = uuid5(NAMESPACE_URL, "ledger:risk-controls")
ALL_ACCOUNTS_CONTROLS_ID = uuid5(CONTROLS_NAMESPACE, "all")
ACTOR_LENGTH_MAX = 64
REASON_LENGTH_MAX = 500


def controls_id(account_id: UUID | None) -> UUID:
    """The stream of `account_id`'s controls; None: the controls over every account."""
    return (
        ALL_ACCOUNTS_CONTROLS_ID
        if account_id is None
        else uuid5(CONTROLS_NAMESPACE, str(account_id))
    )


def check_text(value: str, field: str, length_max: int) -> str:
    """An actor's name or a reason: printable, not empty, bounded."""
    text = value.strip()
    if not text or len(text) > length_max or not text.isprintable():
        raise InvalidValue(field, f"must be 1-{length_max} printable characters")
    return text


class LimitsSet(Event, frozen=True, kw_only=True):
    stored_name: ClassVar[str] = "controls.limits_set"
    account_id: UUID | None
    limits: Limits
    actor: str
    reason: str = ""


class KillSwitchEngaged(Event, frozen=True, kw_only=True):
    stored_name: ClassVar[str] = "controls.kill_switch_engaged"
    account_id: UUID | None
    actor: str
    reason: str
    flatten: bool = False


class KillSwitchReleased(Event, frozen=True, kw_only=True):
    stored_name: ClassVar[str] = "controls.kill_switch_released"
    account_id: UUID | None
    actor: str
    reason: str


CONTROLS_EVENTS: tuple[type[Event], ...] = (LimitsSet, KillSwitchEngaged, KillSwitchReleased)


class KillSwitch(msgspec.Struct, frozen=True, kw_only=True):
    """An engaged kill switch: who engaged it, why, when, and whether it flattens."""

    actor: str
    reason: str
    engaged_at: datetime
    flatten: bool


class RiskControls(Aggregate):
    """The limits and the kill switch of one account (or of every account)."""

    account_id: UUID | None
    limits: Limits
    kill_switch: KillSwitch | None
    modified_at: datetime | None

    @classmethod
    def start(cls, account_id: UUID | None) -> Self:
        """Controls never set: no limits, the kill switch released."""
        controls = cls._blank(controls_id(account_id), version=0)
        controls.account_id = account_id
        controls.limits = Limits()
        controls.kill_switch = None
        controls.modified_at = None
        return controls

    def set_limits(self, limits: Limits, *, actor: str, reason: str, recorded_at: datetime) -> None:
        self._trigger(
            LimitsSet,
            recorded_at=recorded_at,
            account_id=self.account_id,
            limits=limits,
            actor=check_text(actor, "actor", ACTOR_LENGTH_MAX),
            reason=reason.strip()[:REASON_LENGTH_MAX],
        )

    def engage(self, *, actor: str, reason: str, flatten: bool, recorded_at: datetime) -> None:
        """Engage the kill switch; engaging it again may add `flatten`, never drop it."""
        if self.kill_switch is not None and (self.kill_switch.flatten or not flatten):
            raise IllegalTransition("the kill switch is already engaged")
        self._trigger(
            KillSwitchEngaged,
            recorded_at=recorded_at,
            account_id=self.account_id,
            actor=check_text(actor, "actor", ACTOR_LENGTH_MAX),
            reason=check_text(reason, "reason", REASON_LENGTH_MAX),
            flatten=flatten,
        )

    def release(
        self, *, actor: str, reason: str, broker_positions: int, recorded_at: datetime
    ) -> None:
        """Release the kill switch; a flattening one only once the broker holds no position."""
        if self.kill_switch is None:
            raise IllegalTransition("the kill switch is not engaged")
        if self.kill_switch.flatten and broker_positions:
            raise IllegalTransition(
                f"the kill switch flattens: it stays latched while the broker reports "
                f"{broker_positions} open position(s)"
            )
        self._trigger(
            KillSwitchReleased,
            recorded_at=recorded_at,
            account_id=self.account_id,
            actor=check_text(actor, "actor", ACTOR_LENGTH_MAX),
            reason=check_text(reason, "reason", REASON_LENGTH_MAX),
        )

    def _apply(self, event: Event) -> None:
        self.modified_at = event.recorded_at
        match event:
            case LimitsSet():
                self.limits = event.limits
            case KillSwitchEngaged():
                self.kill_switch = KillSwitch(
                    actor=event.actor,
                    reason=event.reason,
                    engaged_at=event.recorded_at,
                    flatten=event.flatten,
                )
            case KillSwitchReleased():
                self.kill_switch = None
            case _:
                raise IllegalTransition(f"risk controls cannot apply {type(event).__name__}")

    @classmethod
    def _create(cls, event: Event) -> Self:
        if not isinstance(event, LimitsSet | KillSwitchEngaged | KillSwitchReleased):
            raise IllegalTransition(f"risk controls cannot start with {event!r}")
        controls = cls.start(event.account_id)
        controls._apply_checked(event)
        return controls
