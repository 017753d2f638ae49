"""One-shot commands beside a running engine go through its API; `ledger token show|rotate`."""

from __future__ import annotations

import json
import re
import stat
from pathlib import Path
from uuid import UUID

from adapters.store import Store
from ledger.intent import Intent
from ledger.origin import Origin
from tests.adapters.http.running import RunningEngine
from tests.test_cli import ledger

RESULT = re.compile(r"^BALANCE_(ADD|DEDUCT) completed; intent [0-9a-f-]{36}$")


def one_shot(engine: RunningEngine, *arguments: str):
    return ledger(
        *arguments,
        "--store",
        engine.store_url,
        "--broker",
        engine.broker_url,
        cwd=engine.folder,
        env={"LEDGER_OPERATOR": "alice"},
    )


def origin_of(store_url: str, intent_id: str) -> Origin | None:
    with Store.open(store_url) as store:
        intent = store.get(Intent, UUID(intent_id))
    assert intent is not None
    return intent.origin


def actor_of(store_url: str, intent_id: str) -> str | None:
    origin = origin_of(store_url, intent_id)
    return None if origin is None else origin.actor


def test_one_shot_commands_go_through_the_running_engine_with_the_same_output(tmp_path):
    with RunningEngine(tmp_path) as engine:
        engine.wait_ready()
        through_api = one_shot(engine, "deposit", "main", "100", "--currency", "USD")
        assert through_api.returncode == 0, through_api.stderr
        assert RESULT.match(through_api.stdout.strip())
        as_json = one_shot(engine, "deposit", "main", "1", "--currency", "USD", "--json")
        intent_id = json.loads(as_json.stdout)["intent_id"]
        refused_there = one_shot(engine, "withdraw", "main", "500", "--currency", "USD")
        unknown_there = one_shot(engine, "close", "00000000-0000-0000-0000-000000000000")
        misnamed_there = one_shot(engine, "deposit", "m" * 72, "1", "--currency", "USD")
        odd_there = one_shot(engine, "deposit", "main", "1" * 80, "--currency", "USD")
    # The write token's name, and who was at the terminal.
    assert origin_of(engine.store_url, intent_id) == Origin(actor="operator", operator="alice")

    # Without an engine, a short-lived one does the same and says the same.
    alone = one_shot(engine, "deposit", "main", "100", "--currency", "USD")
    assert alone.returncode == 0, alone.stderr
    assert RESULT.match(alone.stdout.strip())
    refused_here = one_shot(engine, "withdraw", "main", "500", "--currency", "USD")
    assert refused_there.returncode == refused_here.returncode == 1
    assert refused_there.stderr.startswith("ledger: cannot withdraw 500.00 USD")
    assert refused_here.stderr.startswith("ledger: cannot withdraw 500.00 USD")
    unknown_here = one_shot(engine, "close", "00000000-0000-0000-0000-000000000000")
    assert unknown_there.returncode == unknown_here.returncode == 1
    assert unknown_there.stderr == unknown_here.stderr
    misnamed_here = one_shot(engine, "deposit", "m" * 72, "1", "--currency", "USD")
    assert (misnamed_there.returncode, misnamed_there.stderr) == (1, misnamed_here.stderr)
    assert misnamed_here.stderr.startswith("ledger: account: 'mmmm")
    odd_here = one_shot(engine, "deposit", "main", "1" * 80, "--currency", "USD")
    assert (odd_there.returncode, odd_there.stderr) == (1, odd_here.stderr)


def test_an_address_left_by_a_killed_engine_is_passed_over(tmp_path):
    with RunningEngine(tmp_path) as engine:
        engine.wait_ready()
        engine.kill()
        assert engine.address_file.exists()
        after = one_shot(engine, "deposit", "main", "7", "--currency", "USD", "--json")
    assert after.returncode == 0, after.stderr
    actor = actor_of(engine.store_url, json.loads(after.stdout)["intent_id"])
    assert actor == "alice"  # the operator at the terminal, not a token


def test_token_show_creates_a_private_file_and_rotate_replaces_secrets(tmp_path):
    store = f"sqlite:///{tmp_path / 'ledger.db'}"
    shown = ledger("token", "show", "--json", "--store", store, cwd=tmp_path)
    assert shown.returncode == 0, shown.stderr
    tokens = json.loads(shown.stdout)
    assert [(t["name"], t["scope"]) for t in tokens] == [("operator", "write"), ("reader", "read")]
    path = Path(f"{tmp_path / 'ledger.db'}.tokens")
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert ledger("token", "show", "--json", "--store", store, cwd=tmp_path).stdout == shown.stdout

    rotated = ledger("token", "rotate", "--name", "reader", "--store", store, cwd=tmp_path)
    assert rotated.returncode == 0, rotated.stderr
    after = json.loads(ledger("token", "show", "--json", "--store", store, cwd=tmp_path).stdout)
    assert after[0] == tokens[0]
    assert after[1]["secret"] != tokens[1]["secret"]
    assert stat.S_IMODE(path.stat().st_mode) == 0o600

    unknown = ledger("token", "rotate", "--name", "nobody", "--store", store, cwd=tmp_path)
    assert unknown.returncode == 3
    assert unknown.stderr.strip() == "ledger: no token named 'nobody' (there are: operator, reader)"


def test_what_the_api_wrote_replays_without_a_secret(tmp_path):
    with RunningEngine(tmp_path) as engine:
        engine.wait_ready()
        engine.call(
            "POST",
            "/deposits",
            body={"account": "main", "amount": "5", "currency": "USD"},
            headers={"Idempotency-Key": "fund-1"},
        )
        one_shot(engine, "deposit", "main", "1", "--currency", "USD")
        secrets = list(engine.tokens.values())
    replayed = ledger("replay", "--json", "--store", engine.store_url, cwd=tmp_path)
    assert replayed.returncode == 0, replayed.stderr
    assert '"actor":"operator"' in replayed.stdout.replace(" ", "")
    for secret in secrets:
        assert secret not in replayed.stdout
    assert all(secret not in (tmp_path / "engine.err").read_text() for secret in secrets)
