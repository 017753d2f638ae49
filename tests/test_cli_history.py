"""`ledger replay`, `ledger statement` and `ledger wal show`, run as a user runs them."""

from __future__ import annotations

import csv
import io
import json
import sqlite3
from contextlib import closing
from uuid import uuid4

import anyio
import pytest
from typer.testing import CliRunner

from adapters.store import Store
from audit.records import KIND_OF
from cli import app
from ledger.catalogue import EVENT_TYPES
from ledger.origin import Origin
from projections.database import Database
from tests.ledger.test_engine import Setup
from tests.projections.scenario import Scenario
from tests.terminal import on_terminal
from tests.test_cli import ledger


@pytest.fixture
def history(store_url):
    with Store.open(store_url) as store:
        ids = Scenario(store).write_everything()
    return store_url, ids


@pytest.fixture
def written(sqlite_url):
    """The same history on SQLite alone, for what the two stores cannot do differently."""
    with Store.open(sqlite_url) as store:
        ids = Scenario(store).write_everything()
    return sqlite_url, ids


def footprint(url: str) -> tuple[int, int, list[str]]:
    """What a command could have written: the events, and every table there is."""
    with Store.open(url) as store:
        info = store.info()
        database = Database(store)
        with database.transaction(commit=False) as cursor:
            tables = database.tables_named_like(cursor, "%")
    return info.event_count, info.last_sequence, tables


def succeed(*arguments: str, cwd) -> str:
    result = ledger(*arguments, cwd=cwd)
    assert result.returncode == 0, result.stderr
    assert result.stderr == ""  # no terminal, no progress bar
    return result.stdout


def test_replay_json_is_one_object_per_event_then_the_state_the_views_show(history, tmp_path):
    url, _ = history
    before = footprint(url)
    output = succeed("replay", "--json", "--store", url, cwd=tmp_path)
    assert footprint(url) == before  # it read the log, and wrote nothing
    *events, last = [json.loads(line) for line in output.splitlines()]
    assert [event["sequence"] for event in events] == list(range(1, before[1] + 1))
    assert events[1]["type"] == "account.deposited"
    assert events[1]["payload"] == {"amount": {"amount": "100000.00", "currency": "USD"}}
    assert set(events[1]) == {
        "sequence",
        "recorded_at",
        "venue_time",
        "aggregate",
        "aggregate_id",
        "version",
        "type",
        "payload",
    }
    state = last["state"]
    assert state["sequence"] == before[1]
    assert state["balances"][0]["total"] == "99643.10"
    assert state["balances"] == json.loads(
        succeed("balances", "--json", "--store", url, cwd=tmp_path)
    )
    assert state["positions"] == json.loads(
        succeed("positions", "--json", "--store", url, cwd=tmp_path)
    )
    if url.startswith("postgresql"):
        password = url.split(":")[2].split("@")[0]
        assert password not in output


def test_replay_text_is_a_line_per_event_then_two_tables(written, tmp_path):
    url, ids = written
    output = succeed(
        "replay", "--account", "main", "--from", "5", "--until", "20", "--store", url, cwd=tmp_path
    )
    lines = output.splitlines()
    assert [int(line.split()[0]) for line in lines[:16]] == list(range(5, 21))
    assert lines[0].split()[3:5] == ["account.funds_reserved", "account"]
    assert lines[16].startswith("state after event 20 (recorded 2026-03-05T09:00:00+00:00)")
    assert lines[17] == "balances"
    assert lines[18].split()[:3] == ["account", "currency", "total"]
    assert lines[19].split()[:3] == ["main", "USD", "99993.00"]  # its P&L is event 21
    assert lines[20] == "open positions"
    assert str(ids["kept"]) in lines[22]


def test_statement_as_csv_and_as_json(written, tmp_path):
    url, _ = written
    rows = list(
        csv.DictReader(
            io.StringIO(succeed("statement", "main", "--csv", "--store", url, cwd=tmp_path))
        )
    )
    assert rows[0]["type"] == "account.deposited"
    assert (rows[-1]["type"], rows[-1]["total"], rows[-1]["available"]) == (
        "account.withdrawn",
        "99643.10",
        "50393.10",
    )
    document = json.loads(
        succeed(
            "statement",
            "main",
            "--json",
            "--from",
            "2026-03-05T00:00:00Z",
            "--store",
            url,
            cwd=tmp_path,
        )
    )
    assert (document["account"], document["currency"]) == ("main", "USD")
    assert document["lines"][0]["type"] == "opening"
    assert document["lines"][0]["total"] == "99996.50"
    assert [line["total"] for line in document["lines"][1:]] == [
        row["total"] for row in rows if row["recorded_at"] >= "2026-03-05"
    ]


def test_wal_show_json_is_the_intent_and_what_it_wrote(written, tmp_path):
    url, ids = written
    found = json.loads(
        succeed("wal", "show", str(ids["in_flight"]), "--json", "--store", url, cwd=tmp_path)
    )
    assert (found["kind"], found["status"], found["account"]) == (
        "POSITION_OPEN",
        "in_progress",
        "main",
    )
    assert found["resolved_at"] is None
    assert found["reservation"] == {"amount": "1000.00", "currency": "USD"}
    assert [event["type"] for event in found["produced"]] == ["account.funds_reserved"]
    assert [step["type"] for step in found["steps"]] == ["intent.recorded", "intent.submitted"]
    text = succeed("wal", "show", str(ids["reviewed"]), "--store", url, cwd=tmp_path)
    assert "review:      two candidate orders" in text
    assert text.endswith("ledger events it produced\n(none)\n")


@pytest.mark.parametrize(
    ("arguments", "message"),
    [
        (["replay", "--until", "yesterday"], "until: 'yesterday' is not an ISO 8601 time"),
        (["replay", "--until", "2026-03-04T05:00:00"], "has no timezone"),
        (["replay", "--position", "P-1"], "position: 'P-1' is not a valid id"),
        (["replay", "--account", "no body"], "account: 'no body' must be"),
        (["statement", "nobody"], "no account 'nobody'"),
        (["statement", "main", "--csv", "--json"], "say --json or --csv"),
        (["statement", "main", "--from", "soon"], "from: 'soon' is not an ISO 8601 time"),
        (["wal", "show", "not-an-id"], "intent: 'not-an-id' is not a valid id"),
        (["wal", "show", str(uuid4())], "no intent"),
        (["replay", "--account", "ghost"], "no account 'ghost'"),
        (["replay", "--position", "00000000-0000-0000-0000-000000000000"], "no position"),
        (["replay", "--from", "5", "--until", "2"], "until: event 2 comes before --from 5"),
        (["replay", "--until", "99999"], "until: event 99999 is past the log's last event"),
        (["replay", "--until", "-5"], "until: '-5': a sequence number is 1 or more"),
        (["replay", "--until", "0"], "until: a sequence number is 1 or more"),
        (
            ["statement", "main", "--from", "2030-01-01T00:00Z", "--until", "2020-01-01T00:00Z"],
            "until: 2020-01-01T00:00Z comes before --from 2030-01-01T00:00Z",
        ),
    ],
)
def test_bad_input_is_one_line_exit_code_1_and_nothing_written(written, arguments, message):
    url, _ = written
    before = footprint(url)
    result = CliRunner().invoke(app, [*arguments, "--store", url])
    assert result.exit_code == 1
    (line,) = result.stderr.splitlines()
    assert line.startswith("ledger: ")
    assert message in line
    assert result.stdout == ""
    assert footprint(url) == before


@pytest.mark.tampered
def test_an_event_that_no_longer_decodes_stops_the_replay_with_one_line(sqlite_url, tmp_path):
    with Store.open(sqlite_url) as store:
        Scenario(store)
    with closing(sqlite3.connect(sqlite_url.removeprefix("sqlite:///"))) as connection:
        connection.execute("UPDATE stored_events SET state = X'C0' WHERE rowid = 2")
        connection.commit()
    result = ledger("replay", "--store", sqlite_url, cwd=tmp_path)
    assert result.returncode == 3
    (line,) = result.stderr.splitlines()
    assert line.startswith("ledger: cannot decode stored event 'account.deposited/v1'")


# The first account's stream, altered in place: a version missing, or one out of order.
FIRST_ACCOUNT = (
    "originator_id = (SELECT originator_id FROM stored_events "
    "WHERE topic LIKE 'account.opened/%' ORDER BY rowid LIMIT 1)"
)
VERSION = "SELECT rowid FROM stored_events WHERE {account} AND originator_version = {version}"
DAMAGES = {
    "deleted": (["DELETE FROM stored_events WHERE rowid = {v2}"], "v3 after v1"),
    # Versions 2 and 3 trade places in the log: each row is intact, their order is not.
    "swapped": (
        [
            "UPDATE stored_events SET rowid = -1 WHERE rowid = {v2}",
            "UPDATE stored_events SET rowid = {v2} WHERE rowid = {v3}",
            "UPDATE stored_events SET rowid = {v3} WHERE rowid = -1",
        ],
        "v3 after v1",
    ),
}


@pytest.mark.parametrize("damage", sorted(DAMAGES))
@pytest.mark.tampered
def test_a_log_an_aggregate_refuses_stops_the_replay_with_one_line_exit_5(
    sqlite_url, tmp_path, damage
):
    statements, problem = DAMAGES[damage]
    with Store.open(sqlite_url) as store:
        Scenario(store).write_everything()
    with closing(sqlite3.connect(sqlite_url.removeprefix("sqlite:///"))) as connection:
        v2, v3 = (
            connection.execute(VERSION.format(account=FIRST_ACCOUNT, version=n)).fetchone()[0]
            for n in (2, 3)
        )
        for statement in statements:
            assert connection.execute(statement.format(v2=v2, v3=v3)).rowcount == 1
        connection.commit()
    result = ledger("replay", "--store", sqlite_url, cwd=tmp_path)
    assert result.returncode == 5, result.stderr
    (line,) = result.stderr.splitlines()
    assert line.startswith("ledger: the log does not replay at event ")
    assert problem in line
    assert "`ledger audit verify`" in line


def test_replay_to_a_file_shows_progress_on_the_terminal(written, tmp_path):
    url, _ = written
    returncode, shown, output = on_terminal(["replay", "--json", "--store", url], tmp_path)
    assert returncode == 0
    assert b"replaying" in shown
    assert b"events/s" in shown
    assert json.loads(output.splitlines()[-1])["state"]["sequence"] == 41


def test_replay_and_wal_show_read_a_history_with_idempotency_keys(tmp_path):
    setup = Setup(tmp_path)

    async def keyed() -> str:
        async with setup.engine() as engine:
            origin = Origin(actor="bot", key="fund-1", digest="d" * 64)
            result = await engine.deposit("main", "100", "USD", origin=origin)
            await engine.deposit("main", "100", "USD", origin=origin)  # the same, again
        return str(result.intent_id)

    intent_id = anyio.run(keyed)
    replayed = ledger("replay", "--json", "--store", setup.store_url, cwd=tmp_path)
    assert replayed.returncode == 0, replayed.stderr
    types = [json.loads(line)["type"] for line in replayed.stdout.splitlines()[:-1]]
    assert types.count("request.recorded") == 1
    shown = json.loads(
        ledger("wal", "show", intent_id, "--json", "--store", setup.store_url, cwd=tmp_path).stdout
    )
    assert shown["origin"] == {
        "actor": "bot",
        "key": "fund-1",
        "digest": "d" * 64,
        "operator": None,
    }
    assert "request.recorded" in [record["type"] for record in shown["produced"]]
    assert ledger("audit", "verify", "--store", setup.store_url, cwd=tmp_path).returncode == 0


def test_every_stored_event_type_has_a_kind_for_the_auditor():
    assert set(KIND_OF) == {cls.stored_name for cls in EVENT_TYPES}
