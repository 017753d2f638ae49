"""The paper broker's settings and fault plan, from its URL.

    paper:///./paper-broker.db?seed=7&scope=forever&faults=timeout_after_accept:0.05,partial_fill:0.1

Options: `seed` (an integer; fixes prices and every fault decision),
`scope` (forever, open_only, none), `faults` (name:probability, comma
separated), `spread_ticks` (bid/ask spread in ticks, default 2),
`fee_rate` (fraction of notional, default 0.0005), `lag_seconds` (the
visibility lag the broker declares, default 0, or 5 with lookup_lag),
`latency_ms` (how long every call takes to travel, default 0).
`paper:///:memory:` keeps the books in memory only.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass, field
from decimal import Decimal
from pathlib import Path
from urllib.parse import parse_qs, unquote, urlsplit

from ledger.money import parse_decimal
from ledger.ports import ClientIdScope

DEFAULT_BROKER_URL = "paper:///./paper-broker.db"
SEED_DEFAULT = 1
SPREAD_TICKS_DEFAULT = 2
FEE_RATE_DEFAULT = Decimal("0.0005")
LOOKUP_LAG_SECONDS_DEFAULT = 5
LAG_SECONDS_MAX = 86_400
LATENCY_MS_MAX = 10_000
SPREAD_TICKS_MAX = 1_000


class BrokerURLError(ValueError):
    """Raised when a broker URL, or its fault plan, cannot be understood."""


class Fault(enum.StrEnum):
    """The broker faults the paper broker can inject, each with a probability."""

    TIMEOUT_BEFORE_ACCEPT = "timeout_before_accept"
    """A write times out and the broker never saw it."""
    TIMEOUT_AFTER_ACCEPT = "timeout_after_accept"
    """The broker accepts and executes a write, but the answer is lost."""
    CRASH_AFTER_ACCEPT = "crash_after_accept"
    """The broker accepts a write, then the calling process dies (SIGKILL)."""
    DUPLICATE_ACK = "duplicate_ack"
    """The acceptance, and its fill, are reported twice."""
    PARTIAL_FILL = "partial_fill"
    """A market order fills partly; the rest keeps working until the next price step."""
    REJECT_SL_CHANGE = "reject_sl_change"
    """An amendment of a stop-loss or take-profit is refused."""
    SL_CHANGE_ACCEPTED_NOT_APPLIED = "sl_change_accepted_not_applied"
    """An amendment is acknowledged, but the position keeps its old levels."""
    LOOKUP_LAG = "lookup_lag"
    """An accepted order stays invisible to reads for the visibility lag."""
    STOP_HIT_WHILE_DOWN = "stop_hit_while_down"
    """When the broker is opened again, a position's stop-loss has been hit meanwhile."""
    EXTERNAL_ORDER = "external_order"
    """When the broker is opened again, a position has been opened by someone else."""
    MANUAL_CLOSE = "manual_close"
    """When the broker is opened again, a position has been closed by hand."""
    STALE_QUOTE = "stale_quote"
    """A quote is the one from STALE_QUOTE_AGE ago: the price feed stalled."""
    MARKET_CLOSED = "market_closed"
    """A quote says the market is closed."""


@dataclass(frozen=True)
class PaperSettings:
    path: Path
    seed: int = SEED_DEFAULT
    scope: ClientIdScope = ClientIdScope.FOREVER
    faults: dict[Fault, Decimal] = field(default_factory=dict)
    spread_ticks: int = SPREAD_TICKS_DEFAULT
    fee_rate: Decimal = FEE_RATE_DEFAULT
    lag_seconds: int = 0
    latency_ms: int = 0

    def probability(self, fault: Fault) -> Decimal:
        return self.faults.get(fault, Decimal(0))


def parse_broker_url(url: str) -> PaperSettings:
    """Parse a `paper://` URL, or raise `BrokerURLError` naming what is wrong."""
    parts = urlsplit(url)
    if parts.scheme != "paper":
        shown = parts.scheme or "(none)"
        raise BrokerURLError(f"unknown broker kind {shown!r}: use paper:///path/to/broker.db")
    if parts.netloc or not parts.path.startswith("/") or len(parts.path) < 2:
        raise BrokerURLError("a paper broker URL is paper:///path/to/broker.db")
    query = parse_qs(parts.query, keep_blank_values=True)
    options = {name: values[-1] for name, values in query.items()}
    known = {"seed", "scope", "faults", "spread_ticks", "fee_rate", "lag_seconds", "latency_ms"}
    for name in options.keys() - known:
        raise BrokerURLError(f"unknown paper broker option {name!r}")
    faults = _parse_faults(options.get("faults", ""))
    default_lag = LOOKUP_LAG_SECONDS_DEFAULT if faults.get(Fault.LOOKUP_LAG, 0) > 0 else 0
    return PaperSettings(
        path=Path(unquote(parts.path[1:])),
        seed=_integer(options, "seed", SEED_DEFAULT, minimum=0, maximum=2**63 - 1),
        scope=_scope(options.get("scope", ClientIdScope.FOREVER.value)),
        faults=faults,
        spread_ticks=_integer(
            options, "spread_ticks", SPREAD_TICKS_DEFAULT, minimum=0, maximum=SPREAD_TICKS_MAX
        ),
        fee_rate=_fee_rate(options.get("fee_rate")),
        lag_seconds=_integer(
            options, "lag_seconds", default_lag, minimum=0, maximum=LAG_SECONDS_MAX
        ),
        latency_ms=_integer(options, "latency_ms", 0, minimum=0, maximum=LATENCY_MS_MAX),
    )


def _parse_faults(text: str) -> dict[Fault, Decimal]:
    faults: dict[Fault, Decimal] = {}
    for item in filter(None, (part.strip() for part in text.split(","))):
        name, separator, probability_text = item.partition(":")
        try:
            fault = Fault(name)
        except ValueError:
            known = ", ".join(fault.value for fault in Fault)
            raise BrokerURLError(f"unknown fault {name!r}; known faults: {known}") from None
        if not separator:
            raise BrokerURLError(f"fault {name!r} needs a probability, as in {name}:0.1")
        try:
            probability = parse_decimal(probability_text, field=f"fault {name}", places=6)
        except ValueError as error:
            raise BrokerURLError(str(error)) from None
        if not 0 <= probability <= 1:
            raise BrokerURLError(f"fault {name}: probability {probability} is outside 0..1")
        if fault in faults:
            raise BrokerURLError(f"fault {name!r} is given twice")
        faults[fault] = probability
    return faults


def _integer(
    options: dict[str, str], name: str, default: int, *, minimum: int, maximum: int
) -> int:
    text = options.get(name)
    if text is None:
        return default
    # isdigit() alone accepts "²" and other digits int() will not take.
    if not (text.isascii() and text.isdigit()) or len(text) > 19:
        raise BrokerURLError(f"paper broker option {name}={text!r} is not a whole number")
    if not minimum <= int(text) <= maximum:
        raise BrokerURLError(f"paper broker option {name}={text} is outside {minimum}..{maximum}")
    return int(text)


def _scope(text: str) -> ClientIdScope:
    try:
        return ClientIdScope(text)
    except ValueError:
        known = ", ".join(scope.value for scope in ClientIdScope)
        raise BrokerURLError(f"unknown client-id scope {text!r}; use one of {known}") from None


def _fee_rate(text: str | None) -> Decimal:
    if text is None:
        return FEE_RATE_DEFAULT
    try:
        rate = parse_decimal(text, field="fee_rate", places=6)
    except ValueError as error:
        raise BrokerURLError(str(error)) from None
    if not 0 <= rate < 1:
        raise BrokerURLError(f"fee_rate: {rate} is outside 0..1")
    return rate
