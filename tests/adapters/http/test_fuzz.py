"""The API fuzzed from its own OpenAPI schema: no 5xx, malformed requests rejected, nothing written.

A bounded run: a few examples per operation, valid (positive) and
malformed (negative) ones, against a real `ledger run`.
"""

from __future__ import annotations

from collections import Counter

import schemathesis
from hypothesis import HealthCheck, given, settings
from hypothesis.errors import Unsatisfiable
from schemathesis.checks import not_a_server_error
from schemathesis.generation import GenerationMode
from schemathesis.specs.openapi.checks import (
    content_type_conformance,
    negative_data_rejection,
    response_schema_conformance,
    status_code_conformance,
)

from tests.adapters.http.running import RunningEngine

EXAMPLES = 30
CHECKS = [
    not_a_server_error,
    negative_data_rejection,
    status_code_conformance,
    content_type_conformance,
    response_schema_conformance,
]
"""No 5xx; malformed requests refused; every answer as the schema documents it."""
WRITTEN_WHEN_REFUSED = {"rejected", "refused"}
"""Refusals the audit trail keeps by design: a failed intent, a control's refusal record."""


def test_fuzzing_the_api_finds_no_server_error_and_rejections_write_nothing(tmp_path):
    with RunningEngine(tmp_path) as engine:
        engine.wait_ready()
        engine.call("POST", "/deposits", body={"account": "main", "amount": "5", "currency": "USD"})
        auth = {"Authorization": f"Bearer {engine.tokens['operator']}"}
        schema = schemathesis.openapi.from_url(f"{engine.url}/schema/openapi.json", headers=auth)
        operations = [result.ok() for result in schema.get_all_operations()]
        unbreakable: list[str] = []
        answered: Counter[int] = Counter()
        assert len(operations) >= 15
        for operation in operations:
            for mode in (GenerationMode.POSITIVE, GenerationMode.NEGATIVE):

                @given(case=operation.as_strategy(generation_mode=mode))
                @settings(
                    max_examples=EXAMPLES,
                    deadline=None,
                    database=None,
                    derandomize=True,
                    suppress_health_check=list(HealthCheck),
                )
                def fuzz(case: schemathesis.Case) -> None:
                    before = engine.event_count()
                    response = case.call(base_url=engine.url, headers=auth)
                    answered[response.status_code // 100] += 1
                    case.validate_response(response, checks=CHECKS)
                    if 400 <= response.status_code < 500:
                        error = response.json()
                        assert set(error) >= {"code", "message"}, response.text
                        if error["code"] not in WRITTEN_WHEN_REFUSED:
                            assert engine.event_count() == before, (case.path, response.text)

                try:
                    fuzz()
                except Unsatisfiable:
                    # Nothing to malform: no parameters and no body (e.g. /health).
                    assert mode is GenerationMode.NEGATIVE, operation.label
                    unbreakable.append(operation.label)
        assert not [label for label in unbreakable if label.startswith("POST")], unbreakable
        # The run was not vacuous: it reached the handlers, with valid and malformed requests.
        assert answered[2] >= 50, answered
        assert answered[4] >= 100, answered
