"""eventsourcing's own recorder and factory contract cases, on our PostgreSQL configuration.

Each test gets an empty schema of its own in the session's throwaway
server, reached through a store URL exactly as `ledger --store` takes it.
"""

from __future__ import annotations

import os
from typing import Any

import pytest
from eventsourcing.persistence import InfrastructureFactory
from eventsourcing.postgres import (
    PostgresAggregateRecorder,
    PostgresApplicationRecorder,
    PostgresFactory,
    PostgresProcessRecorder,
    PostgresTrackingRecorder,
)
from eventsourcing.tests import persistence as contract
from eventsourcing.utils import Environment

from adapters.store import parse_store_url
from tests.conftest import POSTGRES_URL_VARIABLE, drop_postgres_schema, fresh_postgres_schema


@pytest.mark.usefixtures("postgres_server")
class OurPostgresConfiguration:
    def setUp(self) -> None:
        self.server_url = os.environ[POSTGRES_URL_VARIABLE]
        self.schema, url = fresh_postgres_schema(self.server_url)
        self.env = Environment("ledger", parse_store_url(url).environment)
        self.factories: list[Any] = []
        super().setUp()  # type: ignore[misc]

    def tearDown(self) -> None:
        super().tearDown()  # type: ignore[misc]
        for factory in self.factories:
            factory.close()
        drop_postgres_schema(self.server_url, self.schema)

    def factory(self) -> Any:
        factory = InfrastructureFactory.construct(self.env)
        assert isinstance(factory, PostgresFactory)
        self.factories.append(factory)
        return factory


class TestAggregateRecorder(OurPostgresConfiguration, contract.AggregateRecorderTestCase):
    def create_recorder(self) -> Any:
        return self.factory().aggregate_recorder()


class TestApplicationRecorder(OurPostgresConfiguration, contract.ApplicationRecorderTestCase):
    def create_recorder(self) -> Any:
        return self.factory().application_recorder()


class TestTrackingRecorder(OurPostgresConfiguration, contract.TrackingRecorderTestCase):
    def create_recorder(self) -> Any:
        return self.factory().tracking_recorder()


class TestProcessRecorder(OurPostgresConfiguration, contract.ProcessRecorderTestCase):
    def create_recorder(self) -> Any:
        return self.factory().process_recorder()


class TestInfrastructureFactory(OurPostgresConfiguration, contract.InfrastructureFactoryTestCase):
    def expected_factory_class(self) -> Any:
        return PostgresFactory

    def expected_aggregate_recorder_class(self) -> Any:
        return PostgresAggregateRecorder

    def expected_application_recorder_class(self) -> Any:
        return PostgresApplicationRecorder

    def expected_tracking_recorder_class(self) -> Any:
        return PostgresTrackingRecorder

    def tracking_recorder_subclass(self) -> Any:
        class OurTrackingRecorder(PostgresTrackingRecorder):
            pass

        return OurTrackingRecorder

    def expected_process_recorder_class(self) -> Any:
        return PostgresProcessRecorder
