"""`ledger limits`, `ledger kill-switch` and `ledger status`, run as an operator runs them.

Real `ledger` processes on a real SQLite store and paper broker. The
controls are written by one process and obeyed by others (a one-shot
operation, a running engine, the next engine after a `kill -9`); a
refusal is exit 1 with one line naming the control, and leaves a refusal
event but no intent.
"""

from __future__ import annotations

import json
import os
import select
import signal
import subprocess
from decimal import Decimal
from uuid import UUID

import anyio
import pytest

from adapters.bootstrap import open_engine
from adapters.paper.broker import PaperBroker
from adapters.store import Store
from ledger.account import account_id
from ledger.controls import KillSwitchReleased, LimitsSet, RiskControls, controls_id
from ledger.events import Event
from ledger.instruments import Side
from ledger.intent import CloseRequest, IntentRecorded
from ledger.ports import BrokerPosition, ProtectionRequest
from ledger.refusals import OperationRefused
from tests.agreement import assert_agrees
from tests.test_cli import LEDGER, ledger
from tests.test_cli_operations import Desk, one_line

MAIN = account_id("main")
OPERATOR = {"LEDGER_OPERATOR": "alice"}
RUN_READY_SECONDS = 15.0


class Operator(Desk):
    """A desk, and the operator's commands on it (some take only --store)."""

    def store_only(self, *arguments: str, env: dict[str, str] | None = None):
        return ledger(*arguments, "--store", self.store_url, cwd=self.folder, env=env)

    def with_broker(
        self, *arguments: str, broker_url: str | None = None, env: dict[str, str] | None = None
    ):
        return ledger(
            *arguments,
            "--store",
            self.store_url,
            "--broker",
            broker_url or self.broker_url,
            cwd=self.folder,
            env=env,
        )

    def broker_command(self, *arguments: str):
        return ledger("broker", *arguments, "--broker", self.clean_broker_url, cwd=self.folder)

    def stored_events(self) -> int:
        """The event count read in-process (`event_count()` asks `ledger info --json`)."""
        with Store.open(self.store_url) as store:
            return store.info().event_count

    def recorded(self, stored_name: str) -> list[Event]:
        """Every event stored under `stored_name`, in commit order."""
        with Store.open(self.store_url) as store:
            found = store.application.recorder.select_notifications(
                start=1, limit=100_000, topics=[f"{stored_name}/v1"]
            )
            events = [store.application.mapper.to_domain_event(item) for item in found]
        return [event for event in events if isinstance(event, Event)]

    def intents(self) -> int:
        return len(self.recorded("intent.recorded"))

    def refusals(self) -> list[OperationRefused]:
        found = self.recorded(OperationRefused.stored_name)
        return [event for event in found if isinstance(event, OperationRefused)]

    def controls(self, scope: UUID | None) -> RiskControls:
        with Store.open(self.store_url) as store:
            held = store.get(RiskControls, controls_id(scope))
        assert held is not None
        return held

    def trade(self, *opens: tuple[str, Side, str, int | None]) -> list[UUID]:
        """In-process, on the clean broker: deposit, then open (symbol, side, quantity, stop
        distance from the market); return the positions' ids."""

        async def steps() -> list[UUID]:
            async with open_engine(store=self.store_url, broker=self.clean_broker_url) as engine:
                await engine.deposit("main", "100000", "USD")
                opened = []
                for symbol, side, quantity, distance in opens:
                    quote = await engine.broker.quote(symbol)
                    stop = None
                    if distance is not None:
                        stop = quote.bid - distance if side is Side.LONG else quote.ask + distance
                    result = await engine.open_position(
                        "main", symbol, side, quantity, stop_loss=stop
                    )
                    assert result.position_id is not None
                    opened.append(result.position_id)
            # Startup recovery reports the broker's balance beyond the deposit once, when it
            # first sees it: seen here, so later event counts are the commands' own.
            async with open_engine(store=self.store_url, broker=self.clean_broker_url):
                pass
            return opened

        return anyio.run(steps)

    def broker_positions(self) -> list[BrokerPosition]:
        with PaperBroker.open(self.clean_broker_url, start_session=False) as broker:
            return anyio.run(broker.positions)


@pytest.fixture
def desk(tmp_path) -> Operator:
    return Operator(tmp_path)


# ledger limits -----------------------------------------------------------------------------


def test_limits_set_are_shown_as_json_with_decimals_as_strings(desk):
    desk.trade()
    result = desk.store_only(
        "limits", "set", "main",
        "--max-trades-per-day", "5", "--max-daily-loss", "250.50",
        "--max-daily-loss-pct", "2.5", "--max-open-positions", "3",
        "--max-position-notional", "5000", "--risk-per-trade-pct", "0.75",
        "--require-stop-loss", "--reason", "desk policy",
        env=OPERATOR,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    assert result.stdout.startswith("limits of main: max_trades_per_day=5, ")
    shown = desk.store_only("limits", "show", "main", "--json")
    assert shown.returncode == 0, shown.stderr
    (row,) = json.loads(shown.stdout)
    assert row["limits"] == {
        "max_trades_per_day": 5,
        "max_daily_loss": {"amount": "250.50", "currency": "USD"},
        "max_daily_loss_pct": "2.5",
        "max_open_positions": 3,
        "max_position_notional": {"amount": "5000.00", "currency": "USD"},
        "risk_per_trade_pct": "0.75",
        "require_stop_loss": True,
    }
    assert (row["account"], row["currency"], row["trades_today"]) == ("main", "USD", 0)
    assert (row["loss_today"], row["at_risk"], row["equity"]) == (
        "0.00",
        "0.00",
        "100000.00",
    )
    (event,) = desk.recorded(LimitsSet.stored_name)
    assert isinstance(event, LimitsSet)
    assert (event.actor, event.reason, event.account_id) == ("alice", "desk policy", MAIN)

    # A second set changes only what it names, and --clear removes a limit.
    again = desk.store_only(
        "limits", "set", "main", "--max-open-positions", "4", "--clear", "max_daily_loss"
    )
    assert again.returncode == 0, again.stderr
    every = desk.store_only("limits", "show", "--json")
    (row,) = json.loads(every.stdout)
    assert "max_daily_loss" not in row["limits"]
    assert row["limits"]["max_open_positions"] == 4
    assert row["limits"]["max_trades_per_day"] == 5


def test_a_whole_percent_is_shown_as_written(desk):
    desk.trade()
    result = desk.store_only("limits", "set", "main", "--stop-loss-margin-pct", "90")
    assert result.returncode == 0, result.stderr
    assert "stop_loss_margin_pct=90" in result.stdout
    shown = desk.store_only("limits", "show", "main", "--json")
    (row,) = json.loads(shown.stdout)
    assert row["limits"]["stop_loss_margin_pct"] == "90"


BAD_LIMITS = [
    (["main", "--max-daily-loss", "NaN"], "max_daily_loss: 'NaN' is not a finite number"),
    (["main", "--max-daily-loss=-0"], "max_daily_loss: negative zero is not a value"),
    (["main", "--max-position-notional", "1e999"], "'1e999' has an exponent out of range"),
    (
        ["main", "--risk-per-trade-pct", "0.123456"],
        "risk_per_trade_pct: '0.123456' has more than 4 decimal places",
    ),
    (["main", "--clear", "max_fun"], "clear: 'max_fun' is not a limit"),
    (["ghost", "--max-open-positions", "1"], "no account 'ghost'"),
]


def test_bad_limits_are_one_line_exit_1_and_change_nothing(desk):
    desk.trade()
    events = desk.event_count()
    for arguments, message in BAD_LIMITS:
        result = desk.store_only("limits", "set", *arguments)
        assert result.returncode == 1, (arguments, result.stderr)
        assert result.stdout == ""
        assert message in one_line(result.stderr), arguments
        assert desk.stored_events() == events, f"{arguments} wrote to the store"
    assert desk.event_count() == events
    assert desk.recorded(LimitsSet.stored_name) == []


def test_an_open_a_limit_refuses_is_exit_1_naming_it_with_a_refusal_and_no_intent(desk):
    desk.trade()
    limited = desk.store_only("limits", "set", "main", "--max-position-notional", "100")
    assert limited.returncode == 0, limited.stderr
    events, intents = desk.event_count(), desk.intents()
    result = desk.with_broker("open", "main", "BTCUSD", "--side", "buy", "--quantity", "0.01")
    assert result.returncode == 1, result.stderr
    assert result.stdout == ""
    line = one_line(result.stderr)
    assert "refused by max_position_notional: notional " in line
    assert "above the limit 100.00 USD" in line
    assert desk.intents() == intents
    assert desk.event_count() == events + 1
    (refusal,) = desk.refusals()
    assert (refusal.control, refusal.operation, refusal.subject) == (
        "max_position_notional",
        "open",
        "BTCUSD",
    )
    assert refusal.account_id == MAIN
    assert desk.broker_orders() == 0
    assert desk.broker_positions() == []


# ledger kill-switch --------------------------------------------------------------------------


def test_an_account_kill_switch_stops_opens_but_not_closes_or_tighter_stops(desk):
    (held,) = desk.trade(("BTCUSD", Side.LONG, "0.1", 5000))
    stop = desk.position(held).stop_loss
    assert stop is not None
    engaged = desk.with_broker(
        "kill-switch", "engage", "--account", "main", "--reason", "runaway bot", env=OPERATOR
    )
    assert engaged.returncode == 0, engaged.stderr
    assert engaged.stdout.strip() == "kill switch engaged for account main"

    intents = desk.intents()
    refused = desk.with_broker("open", "main", "ETHUSD", "--side", "buy", "--quantity", "1")
    assert refused.returncode == 1, refused.stderr
    line = one_line(refused.stderr)
    assert "refused by kill_switch: no new opens in account main: engaged by alice" in line
    assert "(runaway bot)" in line
    assert desk.intents() == intents
    assert [r.control for r in desk.refusals()] == ["kill_switch"]

    # Risk only goes down: a tighter stop and a partial close go through.
    tighter = desk.succeed("set-sl", str(held), str(stop + 1000))
    assert tighter["status"] == "completed"
    closed = desk.succeed("close", str(held), "--quantity", "0.05")
    assert (closed["status"], closed["quantity"]) == ("completed", "0.0500")
    assert desk.position(held).stop_loss == stop + 1000

    status = desk.store_only("kill-switch", "status", "--json")
    assert status.returncode == 0, status.stderr
    rows = {row["scope"]: row for row in json.loads(status.stdout)}
    assert rows["all"]["engaged"] is False
    assert rows["main"]["engaged"] is True
    assert (rows["main"]["actor"], rows["main"]["reason"]) == ("alice", "runaway bot")
    assert rows["main"]["flatten"] is False
    assert rows["main"]["engaged_at"].endswith("Z")

    released = desk.with_broker(
        "kill-switch", "release", "--account", "main", "--reason", "bot fixed", env=OPERATOR
    )
    assert released.returncode == 0, released.stderr
    (release,) = desk.recorded(KillSwitchReleased.stored_name)
    assert isinstance(release, KillSwitchReleased)
    assert (release.account_id, release.actor, release.reason) == (MAIN, "alice", "bot fixed")
    assert desk.controls(MAIN).kill_switch is None
    reopened = desk.succeed("open", "main", "ETHUSD", "--side", "buy", "--quantity", "1")
    assert reopened["status"] == "completed"


def test_flattening_every_account_through_unknown_outcomes_ends_flat(desk):
    desk.trade(("BTCUSD", Side.LONG, "0.1", 5000), ("ETHUSD", Side.SHORT, "2", None))
    # Every close times out before the broker sees it: both stay open, their
    # closes in flight. (Client ids are random per process: a probability
    # below 1 would make the test a lottery.)
    lost = f"{desk.clean_broker_url}&faults=timeout_before_accept:1"
    engaged = desk.with_broker(
        "kill-switch", "engage", "--all", "--flatten", "--reason", "market halt",
        broker_url=lost,
    )  # fmt: skip
    assert engaged.returncode == 3, engaged.stderr
    assert "2 position(s) still open; the switch stays latched" in one_line(engaged.stderr)
    lines = engaged.stdout.strip().splitlines()
    assert lines[0] == "kill switch engaged for every account, flattening"
    assert len([line for line in lines if "not closed yet" in line]) == 2, lines
    assert len(desk.broker_positions()) == 2
    assert len(desk.pending()) == 2

    # Latched: no release while the broker holds positions; engaging again is refused.
    held = desk.with_broker("kill-switch", "release", "--all", "--reason", "too early")
    assert held.returncode == 1
    assert "stays latched while the broker reports 2 open position(s)" in one_line(held.stderr)
    again = desk.with_broker("kill-switch", "engage", "--all", "--flatten", "--reason", "again")
    assert again.returncode == 1
    assert "the kill switch is already engaged" in one_line(again.stderr)

    # A running engine recovers the lost closes and flattens on its next pass.
    running = desk.with_broker(
        "run", "--duration", "2", "--reconcile-every", "0.3", broker_url=desk.clean_broker_url
    )
    assert running.returncode == 0, running.stderr
    assert [p for p in desk.broker_positions() if p.account == "main"] == []
    with Store.open(desk.store_url) as store:
        assert_agrees(store, desk.broker_positions())
        assert store.open_positions() == []
    # Flattening again finds nothing left to close.
    flattened = desk.with_broker("kill-switch", "flatten", "--all")
    assert flattened.returncode == 0, flattened.stderr
    assert flattened.stdout.strip() == "no open position to close"
    released = desk.with_broker("kill-switch", "release", "--all", "--reason", "flat now")
    assert released.returncode == 0, released.stderr
    assert desk.controls(None).kill_switch is None
    refused = desk.with_broker("kill-switch", "flatten", "--all")
    assert refused.returncode == 1
    assert "no kill switch engaged with --flatten for every account" in one_line(refused.stderr)


def test_a_partly_filled_close_is_not_flat_and_is_never_closed_twice(desk):
    desk.trade(("BTCUSD", Side.LONG, "0.1", 5000))
    partial = f"{desk.clean_broker_url}&faults=partial_fill:1"
    engaged = desk.with_broker(
        "kill-switch", "engage", "--account", "main", "--flatten", "--reason", "halt",
        broker_url=partial,
    )  # fmt: skip
    assert engaged.returncode == 3, engaged.stderr
    assert "1 position(s) still open; the switch stays latched" in one_line(engaged.stderr)
    working = desk.broker_command("orders", "--json")
    (close,) = json.loads(working.stdout)
    assert close["action"] in {"close", "reduce"}

    # The rest of the close still works at the broker: no second close is sent.
    again = desk.with_broker("kill-switch", "flatten", "--account", "main")
    assert again.returncode == 3, again.stderr
    assert "1 position(s) still open" in one_line(again.stderr)
    closes = [
        event
        for event in desk.recorded("intent.recorded")
        if isinstance(event, IntentRecorded) and isinstance(event.payload, CloseRequest)
    ]
    assert len(closes) == 1, again.stdout

    # Once the rest fills, recovery records it: flat at the broker and in the ledger.
    moved = desk.broker_command("advance", "1")
    assert moved.returncode == 0, moved.stderr
    done = desk.with_broker("kill-switch", "flatten", "--account", "main")
    assert done.returncode == 0, done.stderr
    assert desk.broker_positions() == []
    with Store.open(desk.store_url) as store:
        assert store.open_positions() == []
        assert_agrees(store, desk.broker_positions())


def test_controls_set_while_an_engine_runs_survive_its_kill_9(desk):
    desk.trade()
    with subprocess.Popen(
        [str(LEDGER), "run", "--reconcile-every", "0", "--store", desk.store_url],
        cwd=desk.folder,
        env={**os.environ, "LEDGER_BROKER": desk.broker_url},
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    ) as engine:
        try:
            ready, _, _ = select.select([engine.stdout], [], [], RUN_READY_SECONDS)
            assert ready, "ledger run did not start"
            assert engine.stdout is not None
            assert engine.stdout.readline().startswith("engine running on epoch ")
            # Operators write the controls without the engine's lease.
            limited = desk.store_only("limits", "set", "main", "--max-open-positions", "2")
            assert limited.returncode == 0, limited.stderr
            engaged = desk.with_broker(
                "kill-switch", "engage", "--account", "main", "--reason", "halt"
            )
            assert engaged.returncode == 0, engaged.stderr
            # The open goes through the running engine's API, which sees the switch at once.
            busy = desk.with_broker("open", "main", "BTCUSD", "--side", "buy", "--quantity", "0.01")
            assert busy.returncode == 1, busy.stderr
            assert "refused by kill_switch" in one_line(busy.stderr)
        finally:
            engine.send_signal(signal.SIGKILL)
            engine.communicate(timeout=30)
    assert engine.returncode == -signal.SIGKILL

    intents = desk.intents()
    refused = desk.with_broker("open", "main", "BTCUSD", "--side", "buy", "--quantity", "0.01")
    assert refused.returncode == 1, refused.stderr
    assert "refused by kill_switch: no new opens in account main" in one_line(refused.stderr)
    assert desk.intents() == intents
    shown = desk.store_only("limits", "show", "main", "--json")
    (row,) = json.loads(shown.stdout)
    assert row["limits"] == {"max_open_positions": 2}
    status = desk.store_only("kill-switch", "status", "--json")
    rows = {row["scope"]: row for row in json.loads(status.stdout)}
    assert (rows["main"]["engaged"], rows["main"]["reason"]) == (True, "halt")


# ledger status ---------------------------------------------------------------------------------


def test_status_lists_positions_whose_stop_the_broker_does_not_hold(desk):
    moved, stripped, covered = desk.trade(
        ("BTCUSD", Side.LONG, "0.1", 5000),
        ("ETHUSD", Side.SHORT, "1", 400),
        ("ETHUSD", Side.LONG, "1", 400),
    )
    old_stop = desk.position(moved).stop_loss
    assert old_stop is not None
    # The broker acknowledges the move but keeps the old level.
    ignored = f"{desk.clean_broker_url}&faults=sl_change_accepted_not_applied:1"
    result = desk.with_broker("set-sl", str(moved), str(old_stop + 1000), broker_url=ignored)
    assert result.returncode == 0, result.stderr
    # Someone removes a stop at the broker by hand.
    stripped_ref = desk.position(stripped).broker_ref
    assert stripped_ref is not None
    with PaperBroker.open(desk.clean_broker_url, start_session=False) as broker:
        request = ProtectionRequest(
            client_id="byhand1", account="main", position_ref=stripped_ref, stop_loss=None
        )
        anyio.run(broker.amend_protection, request)

    status = desk.with_broker("status", "--json")
    assert status.returncode == 0, status.stderr
    report = json.loads(status.stdout)
    naked = {UUID(row["position_id"]): row for row in report["naked_positions"]}
    assert set(naked) == {moved, stripped}, f"{covered} is covered at the broker"
    assert naked[moved]["why"] == "the broker's stop-loss differs"
    assert Decimal(naked[moved]["ledger_stop_loss"]) == old_stop + 1000
    assert Decimal(naked[moved]["broker_stop_loss"]) == old_stop
    assert naked[stripped]["why"] == "the broker holds no stop-loss"
    assert naked[stripped]["broker_stop_loss"] is None
    assert (naked[stripped]["symbol"], naked[stripped]["side"]) == ("ETHUSD", "short")
    assert report["kill_switches"] == []
    assert report["breaker"]["open"] is False
    assert (report["intents_in_flight"], report["intents_needing_review"]) == (0, 0)
    assert (naked[moved]["account"], naked[moved]["quantity"]) == ("main", "0.1000")
