"""Read models that follow the event log: positions, balances, pending WAL, risk.

Empty until the projections land; kept so the layout is the one the
import contract and the documentation describe.
"""
