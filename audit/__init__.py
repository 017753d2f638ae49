"""Audit: the tamper-evident hash chain over the stored log, the ledger's invariants, and history.

`chain` hashes the stored events in log order and seals the head;
`verify` recomputes the chain and checks the invariants; `replay`,
`statement` and `lifecycle` answer what the ledger knew, and when.
"""
