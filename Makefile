# The two commands of the README: `make up` (the whole stack) and `make test` (the whole suite).
# Both create or update the local virtualenv first; a stamp file makes that instant when nothing changed.

PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
GRAPHIQL := gateway/graphiql
GRAPHIQL_STAMP := $(GRAPHIQL)/node_modules/.installed

.PHONY: up test chaos bench install graphiql clean

$(STAMP): pyproject.toml
	@test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	@echo "installing order-saga and its dependencies into $(VENV) ..."
	@$(BIN)/python -m pip install --quiet --disable-pip-version-check --upgrade pip
	@$(BIN)/python -m pip install --quiet --disable-pip-version-check -e '.[test]'
	@touch $(STAMP)

# GraphiQL's browser files, pinned by $(GRAPHIQL)/package-lock.json. Without npm (or offline) the rest of the
# stack works all the same and the GraphiQL page says what is missing; the next `make up` tries again.
$(GRAPHIQL_STAMP): $(GRAPHIQL)/package-lock.json
	@if ! command -v npm >/dev/null; then \
		echo "npm not found: GraphiQL at /graphql needs Node.js and npm once, to install its files (npm ci)"; \
	else \
		echo "installing GraphiQL's files into $(GRAPHIQL)/node_modules (npm ci) ..."; \
		npm ci --prefix $(GRAPHIQL) --prefer-offline --no-audit --no-fund --loglevel=error && touch $@ \
			|| echo "npm ci failed: GraphiQL at /graphql will say its files are missing"; \
	fi

graphiql: $(GRAPHIQL_STAMP)

install: $(STAMP) $(GRAPHIQL_STAMP)

up: $(STAMP) $(GRAPHIQL_STAMP)
	@$(BIN)/order-saga up

test: $(STAMP) $(GRAPHIQL_STAMP)
	@$(BIN)/python -m pytest $(PYTEST_ARGS)

chaos: $(STAMP)
	@CHAOS_ORDERS=$${CHAOS_ORDERS:-1000} $(BIN)/python -m pytest tests/e2e/test_chaos.py -s $(PYTEST_ARGS)

clean:
	rm -rf $(VENV) var .pytest_cache $(GRAPHIQL)/node_modules

# The benchmarks' extra tools (py-spy for benchmarks/profile.py), on top of the test install.
BENCH_STAMP := $(VENV)/.installed-bench
$(BENCH_STAMP): $(STAMP)
	@$(BIN)/python -m pip install --quiet --disable-pip-version-check -e '.[test,bench]'
	@touch $(BENCH_STAMP)

bench: $(BENCH_STAMP)
	@$(BIN)/python -m benchmarks.run
