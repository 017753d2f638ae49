"""A MessagePack mapper for eventsourcing, built on msgspec.

Stored events are compact (MessagePack, UUIDs as 16 bytes, Decimals as
exact text) and come back typed: a stored name resolves to its Struct and
msgspec decodes straight into it, validating every field on the way.
Events stored at an older class version are decoded untyped, upcast, and
then converted, so old history loads into today's classes.
"""

from __future__ import annotations

from typing import Any
from uuid import UUID

import msgspec
from eventsourcing.domain import DomainEventProtocol
from eventsourcing.persistence import (
    Cipher,
    Compressor,
    Mapper,
    MapperDeserialisationError,
    StoredEvent,
    Transcoder,
)

from ledger.errors import LedgerError
from ledger.events import Event, EventTypes


class MsgpackTranscoder(Transcoder):
    """Untyped MessagePack, for the states of events that need upcasting."""

    def __init__(self) -> None:
        self._encoder = msgspec.msgpack.Encoder(uuid_format="bytes", decimal_format="string")

    def encode(self, obj: Any) -> bytes:  # noqa: ANN401 - Transcoder's signature
        return self._encoder.encode(obj)

    def decode(self, data: bytes) -> Any:  # noqa: ANN401 - Transcoder's signature
        return msgspec.msgpack.decode(data)


class MsgspecMapper(Mapper[UUID]):
    """Maps our msgspec events to eventsourcing's stored events and back."""

    def __init__(
        self,
        event_types: EventTypes,
        *,
        compressor: Compressor | None = None,
        cipher: Cipher | None = None,
    ) -> None:
        self.transcoder: MsgpackTranscoder
        super().__init__(MsgpackTranscoder(), compressor=compressor, cipher=cipher)
        self.event_types = event_types
        self._decoders = {cls: msgspec.msgpack.Decoder(cls) for cls in event_types}

    def to_stored_event(self, domain_event: DomainEventProtocol[UUID]) -> StoredEvent:
        if not isinstance(domain_event, Event):
            msg = f"{type(domain_event).__name__} is not a ledger event"
            raise TypeError(msg)
        state = self.transcoder.encode(domain_event)
        if self.compressor:
            state = self.compressor.compress(state)
        if self.cipher:
            state = self.cipher.encrypt(state)
        return StoredEvent(
            originator_id=domain_event.originator_id,
            originator_version=domain_event.originator_version,
            topic=self.event_types.topic(type(domain_event)),
            state=state,
        )

    def to_domain_event(self, stored_event: StoredEvent) -> DomainEventProtocol[UUID]:
        try:
            event = self._decode(stored_event)
        except (msgspec.MsgspecError, LedgerError, ValueError, LookupError) as error:
            msg = (
                f"cannot decode stored event {stored_event.topic!r} of "
                f"{stored_event.originator_id} v{stored_event.originator_version}: {error}"
            )
            raise MapperDeserialisationError(msg) from error
        return event

    def _decode(self, stored_event: StoredEvent) -> Event:
        cls, version = self.event_types.resolve(stored_event.topic)
        state = stored_event.state
        if self.cipher:
            state = self.cipher.decrypt(state)
        if self.compressor:
            state = self.compressor.decompress(state)
        if version == cls.class_version:
            event = self._decoders[cls].decode(state)
        else:
            fields = self.transcoder.decode(state)
            self.event_types.upcast(cls, version, fields)
            event = msgspec.convert(fields, cls)
        if not isinstance(event, Event):  # pragma: no cover - the decoders are typed
            msg = f"{stored_event.topic!r} decoded to {type(event).__name__}"
            raise TypeError(msg)
        # The id and version are stored twice, in the row and in the state;
        # a disagreement means the row was altered or mixed up, not a bug here.
        if UUID(str(stored_event.originator_id)) != event.originator_id or (
            stored_event.originator_version != event.originator_version
        ):
            msg = "the event's id or version differs from its row"
            raise ValueError(msg)
        return event
