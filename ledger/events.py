"""The base of every stored event, and the registry of stored names.

Each event class declares the name it is stored under (`stored_name`) and
its schema version (`class_version`). The stored name never depends on the
module path, so code can move without orphaning history. When a class
changes shape its version goes up and it gains a static method
`upcast_v{n}_v{n+1}(state)` that rewrites a decoded older state in place.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from datetime import datetime
from decimal import Decimal
from typing import Any, ClassVar
from uuid import UUID

import msgspec

from ledger.errors import InvalidValue, UnknownEventType
from ledger.invariants import invariant


class Event(msgspec.Struct, frozen=True, kw_only=True, omit_defaults=True):
    """What every stored event carries besides its own fields.

    `recorded_at` is when the ledger decided the event; `venue_time` is when
    it happened at the broker, when the broker says so.
    """

    stored_name: ClassVar[str]
    class_version: ClassVar[int] = 1

    originator_id: UUID
    originator_version: int
    recorded_at: datetime
    venue_time: datetime | None = None
    plan_id: UUID | None = None
    """The reconciliation plan that wrote this event, when one did."""

    def __post_init__(self) -> None:
        if self.originator_version < 1:
            raise InvalidValue("originator_version", "must be 1 or more")
        # Our encoder writes Decimals as text; a stored NaN, infinity or -0
        # (from a float in the payload) is refused when it is read back.
        for name in self.__struct_fields__:
            value = getattr(self, name)
            if isinstance(value, Decimal) and (
                not value.is_finite() or (value.is_zero() and value.is_signed())
            ):
                raise InvalidValue(name, f"{value} is not a value an event may hold")
        for field, moment in (("recorded_at", self.recorded_at), ("venue_time", self.venue_time)):
            if moment is not None and moment.utcoffset() is None:
                raise InvalidValue(field, "a time without a timezone is ambiguous")


class EventTypes:
    """Stored name <-> event class, for the codec.

    Built from explicit tuples of classes, so the full list of what can be
    in the store is one grep away.
    """

    def __init__(self, classes: Iterable[type[Event]]) -> None:
        self._by_name: dict[str, type[Event]] = {}
        for cls in classes:
            name = cls.stored_name
            invariant(name not in self._by_name, f"stored name {name!r} is used twice")
            for version in range(1, cls.class_version):
                invariant(
                    callable(getattr(cls, f"upcast_v{version}_v{version + 1}", None)),
                    f"{cls.__qualname__} lacks upcast_v{version}_v{version + 1}",
                )
            self._by_name[name] = cls

    def __iter__(self) -> Iterator[type[Event]]:
        return iter(self._by_name.values())

    def __len__(self) -> int:
        return len(self._by_name)

    def topic(self, cls: type[Event]) -> str:
        """The stored topic of `cls`: its stored name and current version."""
        invariant(self._by_name.get(cls.stored_name) is cls, f"{cls} is not registered")
        return f"{cls.stored_name}/v{cls.class_version}"

    def resolve(self, topic: str) -> tuple[type[Event], int]:
        """The class a stored topic names, and the version it was stored at."""
        name, _, version_text = topic.rpartition("/v")
        cls = self._by_name.get(name)
        if cls is None or not version_text.isdigit():
            raise UnknownEventType(f"no event type is stored as {topic!r}")
        version = int(version_text)
        if not 1 <= version <= cls.class_version:
            raise UnknownEventType(
                f"{topic!r} is newer than this code ({cls.stored_name} v{cls.class_version})"
            )
        return cls, version

    def upcast(self, cls: type[Event], version: int, state: dict[str, Any]) -> None:
        """Bring a decoded state stored at `version` up to `cls.class_version`."""
        while version < cls.class_version:
            getattr(cls, f"upcast_v{version}_v{version + 1}")(state)
            version += 1
