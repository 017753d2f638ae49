"""The `ledger` command, run as a user runs it: a real process on a real store."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

LEDGER = Path(sys.executable).parent / "ledger"


def ledger(
    *arguments: str, cwd: Path, env: dict[str, str] | None = None
) -> subprocess.CompletedProcess[str]:
    environment = {k: v for k, v in os.environ.items() if k != "LEDGER_STORE"}
    environment.update(env or {})
    return subprocess.run(
        [str(LEDGER), *arguments],
        cwd=cwd,
        env=environment,
        capture_output=True,
        text=True,
        check=False,
    )


def test_info_json_reports_an_empty_default_store(tmp_path):
    result = ledger("info", "--json", cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    report = json.loads(result.stdout)
    assert report == {
        "kind": "sqlite",
        "location": str(tmp_path / "ledger.db"),
        "event_count": 0,
        "last_sequence": 0,
        "schema_version": 1,
    }
    assert (tmp_path / "ledger.db").stat().st_mode & 0o777 == 0o600


def test_info_reads_the_store_from_the_environment(tmp_path):
    result = ledger("info", cwd=tmp_path, env={"LEDGER_STORE": f"sqlite:///{tmp_path}/other.db"})
    assert result.returncode == 0, result.stderr
    assert f"location: {tmp_path}/other.db" in result.stdout
    assert "event count: 0" in result.stdout


@pytest.mark.usefixtures("postgres_server")
def test_info_on_postgresql_hides_the_password(postgres_url, tmp_path):
    result = ledger("info", "--json", "--store", postgres_url, cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    report = json.loads(result.stdout)
    assert report["kind"] == "postgresql"
    assert report["event_count"] == 0
    password = postgres_url.split(":")[2].split("@")[0]
    assert password not in result.stdout + result.stderr


@pytest.mark.parametrize(
    ("store", "message"),
    [
        ("mysql://somewhere/db", "unknown store kind 'mysql'"),
        ("sqlite:///no/such/folder/ledger.db", "does not exist"),
        (
            "postgresql://nobody:wrong@127.0.0.1:1/db?connect_timeout=1",
            "cannot open postgresql://nobody@127.0.0.1:1/db",
        ),
    ],
)
def test_a_bad_store_is_one_line_on_stderr_and_exit_code_3(store, message, tmp_path):
    result = ledger("info", "--store", store, cwd=tmp_path)
    assert result.returncode == 3
    assert result.stdout == ""
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert message in lines[0]
    assert "wrong" not in result.stderr
    assert list(tmp_path.iterdir()) == []


def test_help_lists_the_commands(tmp_path):
    result = ledger("--help", cwd=tmp_path)
    assert result.returncode == 0
    assert "info" in result.stdout


@pytest.mark.parametrize(
    ("arguments", "message"),
    [
        (["info", "--bogus"], "ledger: No such option: --bogus"),
        (["nonsense"], "ledger: No such command 'nonsense'."),
        (["broker", "fund", "desk"], "ledger: Missing argument 'amount'."),
    ],
)
def test_usage_errors_are_one_line_and_exit_code_2(tmp_path, arguments, message):
    result = ledger(*arguments, cwd=tmp_path)
    assert result.returncode == 2
    assert result.stderr.strip().splitlines() == [message]
    assert list(tmp_path.iterdir()) == []
