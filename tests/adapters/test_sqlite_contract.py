"""eventsourcing's own recorder and factory contract cases, on our SQLite configuration.

The abstract cases are imported through their module so that pytest
collects only the concrete subclasses here.
"""

from __future__ import annotations

import shutil
import tempfile
from pathlib import Path
from typing import Any

from eventsourcing.persistence import InfrastructureFactory
from eventsourcing.sqlite import (
    SQLiteAggregateRecorder,
    SQLiteApplicationRecorder,
    SQLiteProcessRecorder,
    SQLiteTrackingRecorder,
)
from eventsourcing.tests import persistence as contract
from eventsourcing.utils import Environment

from adapters.sqlite_store import DurableSQLiteFactory, create_private_file
from adapters.store import parse_store_url


class OurSQLiteConfiguration:
    """A fresh database file per test, configured exactly as `ledger` configures one."""

    def setUp(self) -> None:
        self.folder = Path(tempfile.mkdtemp(prefix="ledger-contract-"))
        location = parse_store_url(f"sqlite:///{self.folder / 'ledger.db'}")
        assert location.path is not None
        create_private_file(location.path)
        self.env = Environment("ledger", location.environment)
        super().setUp()  # type: ignore[misc]

    def tearDown(self) -> None:
        super().tearDown()  # type: ignore[misc]
        shutil.rmtree(self.folder, ignore_errors=True)

    def factory(self) -> Any:
        factory = InfrastructureFactory.construct(self.env)
        assert isinstance(factory, DurableSQLiteFactory)
        return factory


class TestAggregateRecorder(OurSQLiteConfiguration, contract.AggregateRecorderTestCase):
    def create_recorder(self) -> Any:
        return self.factory().aggregate_recorder()


class TestApplicationRecorder(OurSQLiteConfiguration, contract.ApplicationRecorderTestCase):
    def create_recorder(self) -> Any:
        return self.factory().application_recorder()


class TestTrackingRecorder(OurSQLiteConfiguration, contract.TrackingRecorderTestCase):
    def create_recorder(self) -> Any:
        return self.factory().tracking_recorder()


class TestProcessRecorder(OurSQLiteConfiguration, contract.ProcessRecorderTestCase):
    def create_recorder(self) -> Any:
        return self.factory().process_recorder()


class TestInfrastructureFactory(OurSQLiteConfiguration, contract.InfrastructureFactoryTestCase):
    def expected_factory_class(self) -> Any:
        return DurableSQLiteFactory

    def expected_aggregate_recorder_class(self) -> Any:
        return SQLiteAggregateRecorder

    def expected_application_recorder_class(self) -> Any:
        return SQLiteApplicationRecorder

    def expected_tracking_recorder_class(self) -> Any:
        return SQLiteTrackingRecorder

    def tracking_recorder_subclass(self) -> Any:
        class OurTrackingRecorder(SQLiteTrackingRecorder):
            pass

        return OurTrackingRecorder

    def expected_process_recorder_class(self) -> Any:
        return SQLiteProcessRecorder
