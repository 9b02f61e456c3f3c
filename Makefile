# The two set-up commands: `make run` and `make test`. Both build .venv on first use.
PYTHON ?= python3.11
VENV := .venv
BIN := $(VENV)/bin
DEMO_SECRET := demo-client-secret-not-for-production

.PHONY: run test lint bench clean

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
	STAGESYNC_HUBSPOT_CLIENT_SECRET="$${STAGESYNC_HUBSPOT_CLIENT_SECRET:-$(DEMO_SECRET)}" \
		$(BIN)/stagesync serve

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
