"""Reading history back: startup recovery, view rebuilds, and an account at an old version."""

from __future__ import annotations

import time
from uuid import UUID

import anyio
from eventsourcing.application import Application

from adapters.paper.broker import PaperBroker
from adapters.store import Store
from bench.load import broker_url
from ledger.account import Account, account_id
from ledger.engine import Engine
from projections.live import ViewIndexedStore
from projections.log import log_end
from projections.rebuild import rebuild
from recovery.recover import recover_at_startup


def recovery_seconds(store_url: str) -> float:
    """From opening the engine to ready: the lease, startup recovery, and nothing else."""

    async def ready() -> float:
        with ViewIndexedStore.open(store_url) as store, PaperBroker.open(broker_url()) as broker:
            started = time.perf_counter()
            async with Engine.open(store, broker, holder="bench", startup=recover_at_startup):
                return time.perf_counter() - started

    return anyio.run(ready)


def rebuild_rate(store_url: str) -> float:
    """Events per second of `ledger rebuild` (every view) over the whole log."""
    with Store.open(store_url) as store:
        events = log_end(store)
        started = time.perf_counter()
        rebuild(store)
        return events / (time.perf_counter() - started)


def read_and_decode_rate(application: Application[UUID], page: int = 1000) -> float:
    """Events per second of eventsourcing reading its log and decoding every event."""
    recorder = application.recorder
    mapper = application.mapper
    events = 0
    started = time.perf_counter()
    position = 0
    while True:
        notifications = recorder.select_notifications(
            start=position, limit=page, inclusive_of_start=False
        )
        for notification in notifications:
            mapper.to_domain_event(notification)
        events += len(notifications)
        if len(notifications) < page:
            break
        position = notifications[-1].id
    return events / (time.perf_counter() - started)


def account_seconds(store_url: str, account: str, version: int | None) -> float:
    """Seconds to load `account` at `version` (None: its latest), snapshots allowed."""
    with Store.open(store_url) as store:
        repository = store.application.repository
        started = time.perf_counter()
        repository.get(account_id(account), version=version, projector_func=Account.project)
        return time.perf_counter() - started


def account_full_replay_seconds(store_url: str, account: str) -> float:
    """Seconds to fold every event of `account` from its first, no snapshot used."""
    with Store.open(store_url) as store:
        application = store.application
        started = time.perf_counter()
        stored = application.recorder.select_events(account_id(account))
        events = (application.mapper.to_domain_event(item) for item in stored)
        Account.project(None, events)
        return time.perf_counter() - started
