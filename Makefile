# The two set-up commands: `make run` and `make test`. Both build .venv on first use.
# `make run PORT=8001` listens elsewhere; `make sample PORT=8001` sends to it.
PYTHON ?= python3.11
VENV := .venv
BIN := $(VENV)/bin
# For trying stagesync out only: `make run` and `make sample` use it when
# STAGESYNC_HUBSPOT_CLIENT_SECRET is unset, and `serve` prints a banner saying so.
DEMO_SECRET := demo-client-secret-not-for-production
PORT ?= $(or $(STAGESYNC_PORT),8000)
WITH_DEMO_SECRET = STAGESYNC_HUBSPOT_CLIENT_SECRET="$${STAGESYNC_HUBSPOT_CLIENT_SECRET:-$(DEMO_SECRET)}"

.PHONY: run sample test lint bench clean

$(BIN)/stagesync: pyproject.toml
	@command -v $(PYTHON) >/dev/null 2>&1 || { echo "need $(PYTHON) on PATH"; exit 1; }
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q -e .
	@touch $@

$(VENV)/.dev: $(BIN)/stagesync
	$(BIN)/pip install -q -e '.[dev]'
	@touch $@

run: $(BIN)/stagesync
	$(WITH_DEMO_SECRET) STAGESYNC_PORT=$(PORT) $(BIN)/stagesync serve

sample: $(BIN)/stagesync
	$(WITH_DEMO_SECRET) STAGESYNC_PORT=$(PORT) $(BIN)/stagesync send-sample

lint: $(VENV)/.dev
	$(BIN)/ruff check receiver tests bench
	$(BIN)/ruff format --check receiver tests bench
	$(BIN)/mypy --strict receiver
	$(BIN)/lint-imports

test: lint
	$(BIN)/pytest

bench: $(VENV)/.dev
	$(BIN)/python -m bench

clean:
	rm -rf $(VENV) *.egg-info .pytest_cache .mypy_cache .ruff_cache
