# README command 1: `make run`; command 2: `make test` (what .ci/run calls, after `make docs`).
# Each target creates .venv in the checkout if it is missing.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
# The installs come from requirements.lock (exact versions and their hashes, resolved by uv
# for CPython 3.11 on Linux x86_64); `make lock` resolves it again after pyproject.toml changes.
LOCK := requirements.lock
PIP_VERSION := 26.3
UV_VERSION := 0.13.9

.PHONY: install lock run test test-all lint bench docs clean

$(BIN)/metarun: pyproject.toml $(LOCK)
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q "pip==$(PIP_VERSION)"
	$(BIN)/python -m pip install -q --require-hashes -r $(LOCK)
	$(BIN)/python -m pip install -q --no-deps -e .
	touch $@

install: $(BIN)/metarun

# Keeps the pins already in the lock where pyproject.toml still allows them;
# `make lock LOCK_ARGS=--upgrade` moves every package to its newest allowed version.
lock:
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q "uv==$(UV_VERSION)"
	$(BIN)/uv pip compile -q pyproject.toml --extra dev --extra docs --python-version 3.11 \
		--python-platform x86_64-manylinux_2_28 --generate-hashes \
		--custom-compile-command "make lock" $(LOCK_ARGS) -o $(LOCK)

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

# The site of docs/ (mkdocs.yml) into site/; --strict: a broken link or anchor, or an API page
# naming a module that is gone, fails the build. `$(BIN)/mkdocs serve` previews it.
docs: install
	NO_MKDOCS_2_WARNING=1 $(BIN)/mkdocs build --strict

clean:
	rm -rf $(VENV) outputs multirun .pytest_cache site
