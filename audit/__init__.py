"""Audit: checking the stored log, and reading history as an auditor reads it.

`verify` recomputes the hash chain (`projections.chain`, sealed by
`projections.seals`) and checks the ledger's invariants (`invariants`);
`replay`, `statement` and `lifecycle` answer what the ledger knew, and
when, from the events themselves (`reading`, `records`, `state`).
"""
