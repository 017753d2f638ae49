"""The `ledger` command's subcommands, one module per group; `cli.py` assembles them."""
