"""Decoding stored events for the views, without checking them again.

The store's mapper checks every event as it decodes it (every amount's
places, every time's timezone), because aggregates are rebuilt from what
it returns. Every stored event passed those checks when it was written,
and views only read: a rebuild decodes each event of the log, and
checking them all again would cost more than everything else it does.
So events stored at the current version of their class are decoded into
subclasses of their classes whose checks are skipped (`isinstance` and
the fields are the same); events stored at an older version go through
the store's mapper, which upcasts them.
"""

from __future__ import annotations

import types
import typing
from functools import cache
from typing import Any
from uuid import UUID

import msgspec
from eventsourcing.persistence import Notification

from adapters.store import Store
from ledger.events import Event, EventTypes


def _unchecked(self: object) -> None:
    """A `__post_init__` that checks nothing."""


@cache
def trusted(cls: type[msgspec.Struct]) -> type[msgspec.Struct]:
    """A subclass of `cls` (and of the structs in its fields) that skips `__post_init__`;
    `cls` itself when neither it nor any struct in its fields checks anything."""
    fields: list[tuple[str, Any] | tuple[str, Any, Any]] = []
    for info in msgspec.structs.fields(cls):
        hint = _trusted_hint(info.type)
        if hint is not info.type:
            if info.default is not msgspec.NODEFAULT:
                fields.append((info.name, hint, info.default))
            elif info.default_factory is not msgspec.NODEFAULT:
                fields.append(
                    (info.name, hint, msgspec.field(default_factory=info.default_factory))
                )
            else:
                fields.append((info.name, hint))
    if not fields and not hasattr(cls, "__post_init__"):
        return cls
    config = cls.__struct_config__
    return msgspec.defstruct(
        f"Trusted{cls.__name__}",
        fields,
        bases=(cls,),
        module=__name__,
        namespace={"__post_init__": _unchecked},
        frozen=config.frozen,
        kw_only=True,
        omit_defaults=config.omit_defaults,
        forbid_unknown_fields=config.forbid_unknown_fields,
        array_like=config.array_like,
        # A member of a tagged union keeps its tag: the union is told apart by it.
        tag=config.tag,
        tag_field=config.tag_field,
    )


def _trusted_hint(hint: Any) -> Any:  # noqa: ANN401 - any field annotation
    if isinstance(hint, type) and issubclass(hint, msgspec.Struct):
        return trusted(hint)
    origin = typing.get_origin(hint)
    arguments = typing.get_args(hint)
    if origin in {typing.Union, types.UnionType}:
        members = tuple(_trusted_hint(argument) for argument in arguments)
        return hint if members == arguments else typing.Union[members]  # noqa: UP007 - built
    if origin is list:
        (member,) = arguments
        trusted_member = _trusted_hint(member)
        return hint if trusted_member is member else list[trusted_member]  # type: ignore[valid-type]
    return hint


class ViewDecoder:
    """Decodes the notifications of the event types in `names`, for views."""

    def __init__(self, store: Store, names: frozenset[str]) -> None:
        self.store = store
        mapper = store.application.mapper
        self._careful = bool(mapper.cipher or mapper.compressor)
        event_types: EventTypes = mapper.event_types  # type: ignore[attr-defined]
        self._decoders: dict[str, msgspec.msgpack.Decoder[Any]] = {
            f"{cls.stored_name}/v{cls.class_version}": msgspec.msgpack.Decoder(trusted(cls))
            for cls in event_types
            if cls.stored_name in names
        }

    def decode(self, row: RawRow) -> Event:
        """The event stored in `row`, read straight from the events table."""
        sequence, stored_id, version, topic, state = row
        decoder = self._decoders.get(topic)
        event: object
        if decoder is None or self._careful:
            identity = stored_id if isinstance(stored_id, UUID) else UUID(stored_id)
            event = self.store.application.mapper.to_domain_event(
                Notification(
                    id=sequence,
                    originator_id=identity,
                    originator_version=version,
                    topic=topic,
                    state=bytes(state),
                )
            )
        else:
            event = decoder.decode(state)
            if not isinstance(event, Event):  # pragma: no cover - the decoder is typed
                raise TypeError(f"{topic} decoded to {type(event).__name__}")
            # Stored twice, in the row and in the state: they must agree. SQLite keeps
            # the id as text, in the form eventsourcing writes it (32 hex digits).
            same_id = (
                event.originator_id == stored_id
                if isinstance(stored_id, UUID)
                else event.originator_id.hex == stored_id
            )
            if not same_id or event.originator_version != version:
                msg = f"{topic} #{sequence}: its row and state disagree"
                raise ValueError(msg)
        if not isinstance(event, Event):  # pragma: no cover - both decoders are typed
            raise TypeError(f"{topic} decoded to {type(event).__name__}")
        return event


RawRow = tuple[int, "UUID | str", int, str, bytes]
"""A row of the events table: sequence, originator id (a UUID, or SQLite's text), version,
topic, state."""
