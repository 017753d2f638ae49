"""Startup recovery and broker reconciliation.

Empty until recovery lands; kept so the layout is the one the import
contract and the documentation describe.
"""
