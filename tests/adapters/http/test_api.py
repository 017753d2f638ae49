"""The API of a running engine: auth, every endpoint, idempotency across restarts, errors."""

from __future__ import annotations

import json
import re
from uuid import UUID

import pytest
from prometheus_client.parser import text_string_to_metric_families

from adapters.store import Store
from ledger.intent import Intent
from tests.adapters.http.running import RunningEngine
from tests.agreement import assert_audit_clean
from tests.test_cli import ledger

READ_ROUTES = [
    "/ready",
    "/metrics",
    "/schema",
    "/positions",
    "/balances",
    "/wal/pending",
    "/limits",
    "/kill-switch",
    "/reconciliation/plan",
    "/wal/00000000-0000-0000-0000-000000000000",
]
WRITE_ROUTES = [
    ("/deposits", {"account": "main", "amount": "10", "currency": "USD"}),
    ("/withdrawals", {"account": "main", "amount": "10", "currency": "USD"}),
    ("/positions", {"account": "main", "symbol": "BTCUSD", "side": "long", "quantity": "0.01"}),
    ("/positions/close", {"position_id": "00000000-0000-0000-0000-000000000000"}),
    ("/positions/stop-loss", {"position_id": "00000000-0000-0000-0000-000000000000", "price": "1"}),
    (
        "/positions/take-profit",
        {"position_id": "00000000-0000-0000-0000-000000000000", "price": "1"},
    ),
]


@pytest.fixture
def engine(tmp_path):
    with RunningEngine(tmp_path) as running:
        running.wait_ready()
        yield running


def fund_broker(engine: RunningEngine, amount: str = "1000000") -> None:
    funded = ledger(
        "broker",
        "fund",
        "main",
        amount,
        "--currency",
        "USD",
        "--broker",
        engine.broker_url,
        cwd=engine.folder,
    )
    assert funded.returncode == 0, funded.stderr


def test_health_needs_no_token_and_every_other_route_does(engine):
    assert engine.call("GET", "/health", who=None).json() == {"status": "alive"}
    for path in READ_ROUTES:
        for token in (None, "not-a-token"):
            answer = engine.call("GET", path, who=token)
            assert answer.status_code == 401, path
            assert answer.json()["code"] == "unauthorized"
            assert answer.headers["www-authenticate"] == "Bearer"
    for path, body in WRITE_ROUTES:
        answer = engine.call("POST", path, who=None, body=body)
        assert answer.status_code == 401, path


def test_a_read_token_reads_and_cannot_write(engine):
    assert engine.call("GET", "/balances", who="reader").status_code == 200
    before = engine.event_count()
    for path, body in WRITE_ROUTES:
        answer = engine.call("POST", path, who="reader", body=body)
        assert answer.status_code == 403, path
        assert answer.json() == {"code": "forbidden", "message": "token 'reader' may only read"}
    assert engine.event_count() == before


def test_every_endpoint_does_its_job(engine):
    fund_broker(engine, "99000")  # what the ledger will hold: no difference to reconcile
    deposit = engine.call(
        "POST", "/deposits", body={"account": "main", "amount": "100000", "currency": "USD"}
    )
    assert deposit.status_code == 200, deposit.text
    assert deposit.json()["status"] == "completed"
    withdrawal = engine.call(
        "POST", "/withdrawals", body={"account": "main", "amount": "1000", "currency": "USD"}
    )
    assert withdrawal.json()["kind"] == "BALANCE_DEDUCT"
    opened = engine.call(
        "POST",
        "/positions",
        body={
            "account": "main",
            "symbol": "BTCUSD",
            "side": "long",
            "quantity": "0.01",
            "stop_loss": "1000",
        },
    ).json()
    assert opened["kind"] == "POSITION_OPEN", opened
    position = opened["position_id"]
    moved = engine.call(
        "POST", "/positions/stop-loss", body={"position_id": position, "price": "2000"}
    )
    assert moved.json()["status"] == "completed", moved.text
    target = engine.call(
        "POST", "/positions/take-profit", body={"position_id": position, "price": "900000"}
    )
    assert target.json()["status"] == "completed", target.text

    [row] = engine.call("GET", "/positions").json()
    assert (row["position_id"], row["stop_loss"], row["take_profit"]) == (
        position,
        "2000.0",
        "900000.0",
    )
    [balance] = engine.call("GET", "/balances", params={"account": "main"}).json()
    assert balance["committed"] != "0.00"
    assert engine.call("GET", "/wal/pending").json() == []
    lifecycle = engine.call("GET", f"/wal/{opened['intent_id']}").json()
    assert lifecycle["status"] == "completed"
    [limits] = engine.call("GET", "/limits").json()
    assert limits["open_positions"] == 1
    switches = engine.call("GET", "/kill-switch").json()
    assert [s["scope"] for s in switches] == ["all", "main"]
    plan = engine.call("GET", "/reconciliation/plan").json()
    assert plan["apply"] == "nothing"
    assert plan["items"] == []

    closed = engine.call("POST", "/positions/close", body={"position_id": position}).json()
    assert closed["kind"] == "POSITION_CLOSE", closed
    assert engine.call("GET", "/positions").json() == []
    assert len(engine.call("GET", "/positions", params={"include_closed": "true"}).json()) == 1

    schema = engine.call("GET", "/schema").json()
    assert schema["openapi"].startswith("3.")
    assert {"/deposits", "/positions/close", "/metrics", "/ready"} <= set(schema["paths"])


def test_the_actor_of_a_write_is_the_token_name(engine):
    intent_id = engine.call(
        "POST", "/deposits", body={"account": "main", "amount": "5", "currency": "USD"}
    ).json()["intent_id"]
    with Store.open(engine.store_url) as store:
        intent = store.get(Intent, UUID(intent_id))
    assert intent is not None
    assert intent.origin is not None
    assert intent.origin.actor == "operator"


@pytest.mark.parametrize("kind", ["sqlite", "postgresql"])
def test_an_idempotency_key_replays_the_first_answer_also_after_a_restart_and_a_kill(
    tmp_path, request, kind
):
    store_url = None if kind == "sqlite" else request.getfixturevalue("postgres_url")
    body = {"account": "main", "symbol": "BTCUSD", "side": "long", "quantity": "0.01"}
    key = {"Idempotency-Key": "order-1"}
    with RunningEngine(tmp_path, store_url=store_url) as engine:
        engine.wait_ready()
        fund_broker(engine)
        engine.call(
            "POST", "/deposits", body={"account": "main", "amount": "100000", "currency": "USD"}
        )
        first = engine.call("POST", "/positions", body=body, headers=key)
        assert first.status_code == 200, first.text
        events = engine.event_count()
        assert engine.call("POST", "/positions", body=body, headers=key).json() == first.json()
        assert engine.event_count() == events
        other = engine.call("POST", "/positions", body={**body, "quantity": "0.02"}, headers=key)
        assert other.status_code == 409
        assert other.json()["code"] == "idempotency_key_reused"
        assert engine.event_count() == events

        engine.stop()
        engine.start()
        engine.wait_ready()
        assert engine.call("POST", "/positions", body=body, headers=key).json() == first.json()

        engine.kill()
        engine.start()
        engine.wait_ready()
        assert engine.call("POST", "/positions", body=body, headers=key).json() == first.json()
        assert len(engine.call("GET", "/positions").json()) == 1
    with Store.open(engine.store_url) as store:
        assert_audit_clean(store)


MALFORMED = [
    (b"{not json", "malformed_request"),
    (b'{"account": "main", "amount": 5, "currency": "USD"}', "malformed_request"),
    (b'{"account": "main", "amount": "5", "currency": "USD", "extra": 1}', "malformed_request"),
    (b'{"account": "main", "currency": "USD"}', "malformed_request"),
    (b'{"account": "main", "amount": "NaN", "currency": "USD"}', "invalid_value"),
    (b'{"account": "main", "amount": "Infinity", "currency": "USD"}', "invalid_value"),
    (b'{"account": "main", "amount": "-0", "currency": "USD"}', "invalid_value"),
    (b'{"account": "main", "amount": "1e999999", "currency": "USD"}', "invalid_value"),
    (b'{"account": "main", "amount": "1.001", "currency": "USD"}', "invalid_value"),
    (b'{"account": "main", "amount": "5", "currency": "XXX"}', "invalid_value"),
    (b'{"account": "no spaces", "amount": "5", "currency": "USD"}', "invalid_value"),
]


@pytest.mark.parametrize(("body", "code"), MALFORMED)
def test_malformed_input_is_a_4xx_with_a_code_and_writes_nothing(engine, body, code):
    before = engine.event_count()
    answer = engine.call(
        "POST", "/deposits", content=body, headers={"Content-Type": "application/json"}
    )
    assert 400 <= answer.status_code < 500
    error = answer.json()
    assert error["code"] == code
    assert "\n" not in error["message"]
    assert "Traceback" not in answer.text
    assert engine.event_count() == before


def test_a_bad_idempotency_key_or_path_is_refused(engine):
    answer = engine.call(
        "POST",
        "/deposits",
        body={"account": "main", "amount": "5", "currency": "USD"},
        headers={"Idempotency-Key": "x" * 129},
    )
    assert answer.status_code == 400
    not_an_id = engine.call("GET", "/wal/not-a-uuid")
    assert not_an_id.status_code == 400
    assert not_an_id.json() == {
        "code": "malformed_request",
        "message": "intent: 'not-a-uuid' is not a valid id",
    }
    assert engine.call("GET", "/nowhere").json()["code"] == "no_such_endpoint"
    assert engine.call("DELETE", "/deposits").json()["code"] == "method_not_allowed"


EXPECTED_FAMILIES = {
    "ledger_operations": "counter",
    "ledger_ready": "gauge",
    "ledger_intents_in_flight": "gauge",
    "ledger_circuit_breaker_open": "gauge",
    "ledger_commit_seconds": "histogram",
    "ledger_commit_batch_size": "histogram",
    "ledger_broker_call_seconds": "histogram",
    "ledger_reconciliations": "counter",
    "ledger_reconciliation_differences": "gauge",
}


def _counter(metrics: str, name: str, labels: str = "") -> float:
    match = re.search(rf"^{re.escape(name + labels)} (\S+)$", metrics, re.MULTILINE)
    return float(match.group(1)) if match else 0.0


def test_metrics_move_with_operations(engine):
    before = engine.call("GET", "/metrics").text
    for amount in ("1", "2"):
        engine.call(
            "POST", "/deposits", body={"account": "main", "amount": amount, "currency": "USD"}
        )
    engine.call(
        "POST", "/withdrawals", body={"account": "main", "amount": "999", "currency": "USD"}
    )
    after = engine.call("GET", "/metrics")
    assert after.headers["content-type"].startswith("text/plain; version=0.0.4")
    text = after.text
    completed = '{operation="deposit",outcome="completed"}'
    assert (
        _counter(text, "ledger_operations_total", completed)
        == _counter(before, "ledger_operations_total", completed) + 2
    )
    assert (
        _counter(text, "ledger_operations_total", '{operation="withdraw",outcome="invalid"}') == 1
    )
    assert (
        _counter(text, "ledger_commit_seconds_count")
        >= _counter(before, "ledger_commit_seconds_count") + 2
    )
    assert _counter(text, "ledger_ready") == 1
    assert _counter(text, "ledger_reconciliations_total") == 1  # the startup pass
    assert "ledger_broker_call_seconds_bucket" in text
    assert "ledger_circuit_breaker_open 0" in text
    # What Prometheus itself reads of it: every family, of its declared type.
    families = {family.name: family for family in text_string_to_metric_families(text)}
    assert {name: families[name].type for name in EXPECTED_FAMILIES} == EXPECTED_FAMILIES
    (batches,) = (
        sample.value
        for sample in families["ledger_commit_batch_size"].samples
        if sample.name.endswith("_count")
    )
    assert batches == _counter(text, "ledger_commit_seconds_count")


def test_rotating_tokens_takes_effect_on_the_running_engine(engine):
    old = engine.tokens["operator"]
    rotated = ledger(
        "token", "rotate", "--name", "operator", "--store", engine.store_url, cwd=engine.folder
    )
    assert rotated.returncode == 0, rotated.stderr
    assert engine.call("GET", "/balances", who=old).status_code == 401
    new = ledger("token", "show", "--json", "--store", engine.store_url, cwd=engine.folder)
    secrets = {t["name"]: t["secret"] for t in json.loads(new.stdout)}
    assert secrets["operator"] != old
    assert engine.call("GET", "/balances", who=secrets["operator"]).status_code == 200
    assert engine.call("GET", "/balances", who="reader").status_code == 200


def test_input_that_reached_inside_the_engine_is_answered_with_a_code(engine):
    before = engine.event_count()
    deep = b"[" * 5000 + b"]" * 5000
    nested = engine.call(
        "POST", "/deposits", content=deep, headers={"Content-Type": "application/json"}
    )
    assert (nested.status_code, nested.json()["code"]) == (400, "malformed_request")
    assert engine.event_count() == before
    engine.call(
        "POST",
        "/deposits",
        body={"account": "main", "amount": "999999999999990", "currency": "USD"},
    )
    written = engine.event_count()
    too_much = engine.call(
        "POST", "/deposits", body={"account": "main", "amount": "100", "currency": "USD"}
    )
    assert (too_much.status_code, too_much.json()["code"]) == (422, "invalid_value")
    assert "more than the ledger can hold" in too_much.json()["message"]
    assert engine.event_count() == written
    # The engine goes on serving.
    other = engine.call(
        "POST", "/deposits", body={"account": "other", "amount": "1", "currency": "USD"}
    )
    assert other.status_code == 200, other.text


def test_a_damaged_token_file_is_a_503_not_a_crash(engine):
    tokens = next(engine.folder.glob("*.tokens"))
    tokens.write_text('{"tokens": [')
    answer = engine.call("GET", "/balances")
    assert (answer.status_code, answer.json()["code"]) == (503, "tokens_unreadable")
    assert engine.call("GET", "/health", who=None).status_code == 200
