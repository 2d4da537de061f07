# Two commands do all the set-up on a fresh machine:
#   make run    start the relay on ws://127.0.0.1:7777 (SQLite under ./data, demo payments)
#   make test   run the whole test suite
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
LNBITS_VENV := .venv-lnbits

.PHONY: run test lint bench test-deps chromium deploy-tools

$(BIN)/satsrelay: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q -e '.[dev]'
	touch $@

# A real LNbits server for the Lightning tests lives in its own venv: its pins clash with ours.
$(LNBITS_VENV)/.installed:
	$(PYTHON) -m venv $(LNBITS_VENV)
	$(LNBITS_VENV)/bin/pip install -q "lnbits==1.6.2" "bitstring<5"
	touch $@

# Debian's Chromium for the join-page browser test (browser downloads do not work here).
chromium:
	@command -v chromium >/dev/null 2>&1 || (apt-get update -q && apt-get install -y -q chromium)

# Debian's nginx, Caddy, systemd and Prometheus for the deploy tests (tests/test_deploy_*.py,
# tests/test_monitoring.py): nginx and Caddy are each run unprivileged in front of the relay
# with their own config in a temp folder (Caddy with its internal CA: no ACME), systemd-analyze
# verifies deploy/satsrelay.service, promtool checks the alert rules and the dashboard's
# queries. (On a machine booted with systemd, Debian's packages also start their own nginx,
# Caddy and Prometheus services; the tests use none: `systemctl disable --now nginx caddy prometheus`.)
deploy-tools:
	@command -v nginx >/dev/null 2>&1 || (apt-get update -q && apt-get install -y -q nginx)
	@command -v caddy >/dev/null 2>&1 || (apt-get update -q && apt-get install -y -q caddy)
	@command -v systemd-analyze >/dev/null 2>&1 || (apt-get update -q && apt-get install -y -q systemd)
	@command -v promtool >/dev/null 2>&1 || (apt-get update -q && apt-get install -y -q --no-install-recommends prometheus)

# nostr-tools (Node) for the zap tests: an independent NIP-57 implementation.
tests/node/node_modules/.package-lock.json: tests/node/package-lock.json
	cd tests/node && npm ci --no-audit --no-fund

test-deps: $(BIN)/satsrelay $(LNBITS_VENV)/.installed chromium deploy-tools tests/node/node_modules/.package-lock.json

# `make run WORKERS=auto` (or a number): serve --workers, one process per core on SQLite too
run: $(BIN)/satsrelay
	$(BIN)/satsrelay serve --config config.example.toml $(if $(WORKERS),--workers $(WORKERS))

# The PostgreSQL half (tests marked postgres) runs against $$SATSRELAY_TEST_POSTGRES, else
# against postgresql://postgres@127.0.0.1:5432/test when that answers; otherwise it is skipped
# and the run's last line says how to include it (README: Tests).
test: test-deps
	$(BIN)/python -m pytest -q

lint: $(BIN)/satsrelay
	$(BIN)/ruff check relay lightning wot tests bench
	$(BIN)/mypy --strict relay lightning wot

bench: $(BIN)/satsrelay
	$(BIN)/python -m bench
