# The two commands of the README: `make up` (the whole stack) and `make test` (the whole suite).
# Both create or update the local virtualenv first; a stamp file makes that instant when nothing changed.

PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: up test chaos bench install clean

$(STAMP): pyproject.toml
	@test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	@echo "installing order-saga and its dependencies into $(VENV) ..."
	@$(BIN)/python -m pip install --quiet --disable-pip-version-check --upgrade pip
	@$(BIN)/python -m pip install --quiet --disable-pip-version-check -e '.[test]'
	@touch $(STAMP)

install: $(STAMP)

up: $(STAMP)
	@$(BIN)/order-saga up

test: $(STAMP)
	@$(BIN)/python -m pytest $(PYTEST_ARGS)

chaos: $(STAMP)
	@CHAOS_ORDERS=$${CHAOS_ORDERS:-1000} $(BIN)/python -m pytest tests/e2e/test_chaos.py -s $(PYTEST_ARGS)

clean:
	rm -rf $(VENV) var .pytest_cache

bench: $(STAMP)
	@$(BIN)/python -m benchmarks.run
