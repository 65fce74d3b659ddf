# Everyday commands. Newcomers need two: `make run` (the whole stack) and `make test`.

PYTHON   ?= python3
VENV     ?= .venv
BIN      := $(VENV)/bin
# Reinstall only when the dependency list changes, not on every command.
STAMP    := $(VENV)/.installed
PACKAGES := api activities workflows agentpod gateway/agentpod_gateway chaos worker.py tests

.PHONY: venv run test lint image bench chaos openapi clean

venv: $(STAMP)

$(STAMP): pyproject.toml gateway/pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -e ./gateway -e '.[dev]'
	touch $@

run: venv ## migrate, then Temporal dev server + UI, worker and API (Ctrl-C stops all)
	$(BIN)/agentpod dev

# Two processes side by side: the Docker tests (they share the engine's sandbox network, whose host
# firewall allowlists one stack's test services at a time, so they run one after another) and all the
# others. Each has its own temporary directory; the second's report follows the first's.
TEST_TMP := $(or $(TMPDIR),/tmp)/agentpod-tests

test: venv ## e.g. make test PYTEST_ARGS='-k sandbox -x'
	@mkdir -p $(TEST_TMP)
	@$(BIN)/pytest -q -m "not docker" --basetemp=$(TEST_TMP)/rest $(PYTEST_ARGS) > $(TEST_TMP)/rest.log 2>&1 & rest=$$!; \
	$(BIN)/pytest -q -m docker --basetemp=$(TEST_TMP)/docker $(PYTEST_ARGS); docker=$$?; \
	wait $$rest; others=$$?; \
	echo; echo "=== tests without Docker ==="; cat $(TEST_TMP)/rest.log; \
	[ $$docker -eq 0 -o $$docker -eq 5 ] && [ $$others -eq 0 -o $$others -eq 5 ]

lint: venv
	$(BIN)/ruff check .
	$(BIN)/mypy $(PACKAGES)

image:
	bash images/build.sh

bench: venv
	$(BIN)/python -m bench

chaos: venv ## kill worker/API/Temporal/containers under user journeys; e.g. make chaos CHAOS_ARGS='--iterations 5 --seed 7'
	$(BIN)/python -m chaos $(CHAOS_ARGS)

openapi: venv
	$(BIN)/agentpod openapi

# Leaves the virtualenv and ./var (local data) alone: `rm -rf .venv var` resets those too.
clean:
	rm -rf build .pytest_cache .mypy_cache .ruff_cache *.egg-info
	find . -path ./$(VENV) -prune -o -name __pycache__ -type d -prune -exec rm -rf {} +
