"""The ledger core: money, instruments, aggregates and their events.

Pure domain code: it imports the standard library, msgspec and
`eventsourcing.domain` only (checked by the import contract in CI).
"""

from ledger import money as _money

# Importing the core installs the Decimal traps, wherever it is imported from.
_money.install_decimal_traps()
