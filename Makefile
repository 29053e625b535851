# The few commands people need. `make run` and `make test` work on a fresh machine.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
RUNTIME_STAMP := $(VENV)/.installed-runtime

.PHONY: install run test test-fast lint format system-deps bench clean

# The service alone (what `make run` needs), and everything for tests and lint.
$(RUNTIME_STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -e .
	touch $(RUNTIME_STAMP)

$(STAMP): $(RUNTIME_STAMP)
	$(BIN)/pip install --quiet -e '.[dev]'
	touch $(STAMP)

install: $(STAMP)

## Serve the API on 127.0.0.1:8000 on the embedded PostgreSQL in ./.rewardpoints (no other
## PostgreSQL needed; the first start creates it in a few seconds).
run: $(RUNTIME_STAMP)
	$(BIN)/rewardpoints serve

## Chromium for the browser tests, and the local PostgreSQL started if it is down.
system-deps:
	scripts/system-deps

## The whole suite.
test: install system-deps
	$(BIN)/pytest

## Everything but the tests that start servers or a browser.
test-fast: install
	$(BIN)/pytest -m "not slow and not browser"

lint: install
	$(BIN)/ruff check src tests migrations
	$(BIN)/ruff format --check src tests migrations
	$(BIN)/mypy src tests

format: install
	$(BIN)/ruff check --fix src tests migrations
	$(BIN)/ruff format src tests migrations

bench: install system-deps
	bench/run

clean:
	rm -rf $(VENV) .pytest_cache .mypy_cache .ruff_cache
