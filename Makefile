# Everyday commands. Newcomers need two: `make run` (the whole stack) and `make test`.

PYTHON   ?= python3
VENV     ?= .venv
BIN      := $(VENV)/bin
# Reinstall only when the dependency list changes, not on every command.
STAMP    := $(VENV)/.installed
PACKAGES := api activities workflows core store domain security cli integrations notify gateway worker.py tests

.PHONY: venv run test lint image bench openapi clean

venv: $(STAMP)

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -e '.[dev]'
	touch $@

run: venv ## migrate, then Temporal dev server + UI, worker and API (Ctrl-C stops all)
	$(BIN)/agentpod dev

test: venv ## e.g. make test PYTEST_ARGS='-k sandbox -x'
	$(BIN)/pytest -q $(PYTEST_ARGS)

lint: venv
	$(BIN)/ruff check .
	$(BIN)/mypy $(PACKAGES)

image:
	bash images/build.sh

bench: venv
	$(BIN)/python -m bench

openapi: venv
	$(BIN)/agentpod openapi

# Leaves the virtualenv and ./var (local data) alone: `rm -rf .venv var` resets those too.
clean:
	rm -rf build .pytest_cache .mypy_cache .ruff_cache *.egg-info
	find . -path ./$(VENV) -prune -o -name __pycache__ -type d -prune -exec rm -rf {} +
