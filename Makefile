# `make run` and `make test` each set up everything they need on a fresh clone.

PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
INSTALLED := $(VENV)/.installed

.PHONY: run test lint postgres-server bench bench-quick clean

$(INSTALLED): pyproject.toml
	@$(PYTHON) -c 'import sys; sys.exit(0 if sys.version_info >= (3, 11) else "Python 3.11 or newer is needed")'
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e '.[dev]'
	touch $(INSTALLED)

run: $(INSTALLED)
	$(BIN)/ledger run --demo --duration 10

lint: $(INSTALLED)
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/mypy
	$(BIN)/lint-imports

test: lint postgres-server
	$(BIN)/pytest

# Benchmarks: figures beside baselines measured in the same run (see bench/).
bench: $(INSTALLED) postgres-server
	$(BIN)/python -m bench

bench-quick: $(INSTALLED) postgres-server
	$(BIN)/python -m bench --quick

# The tests start and stop their own throwaway PostgreSQL from the server
# binaries; this only makes sure the binaries are installed.
postgres-server:
	@scripts/ensure-postgres

clean:
	rm -rf $(VENV) .mypy_cache .pytest_cache .ruff_cache .hypothesis
