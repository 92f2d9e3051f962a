# README command 1: `make run`; command 2: `make test` (what .ci/run calls).
# Each target creates .venv in the checkout if it is missing.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin

.PHONY: install run test test-all lint bench clean

$(BIN)/metarun: pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -m pip install -q -e ".[dev]"
	touch $@

install: $(BIN)/metarun

run: install
	$(BIN)/metarun $(ARGS)

# The learning tests of the other metric and black-box learners add ~5 minutes: test-all.
test: install
	$(BIN)/python -m pytest -q -m "not extended" $(PYTEST_ARGS)

test-all: install
	$(BIN)/python -m pytest -q $(PYTEST_ARGS)

lint: install
	$(BIN)/ruff check src tests scripts
	$(BIN)/ruff format --check src tests scripts

bench: install
	$(BIN)/python scripts/bench.py $(BENCH_ARGS)

clean:
	rm -rf $(VENV) outputs multirun .pytest_cache
