# edge: `make run` shows readings flowing from emulated scales; `make test` runs every test.
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.stamp-install
SUDO   := $(shell [ "$$(id -u)" -eq 0 ] || echo sudo)

.PHONY: install run test lint unit bench demo-clean test-deps

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q -e '.[test]'
	touch $@

install: $(STAMP)

run: $(STAMP)
	$(BIN)/edge run

# Tests start their own brokers, buses and FHIR server: they need the mosquitto and dbus-daemon
# binaries, node with the pinned Medplum packages (tests/fhir_server), not running services.
FHIR_SERVER := tests/fhir_server
NODE_VERSION := 20.20.2
NODE_ARCH := $(shell uname -m | sed 's/x86_64/x64/; s/aarch64/arm64/')
NODE_TOOL := .tools/node_modules/node-linux-$(NODE_ARCH)/bin/node
test-deps:
	@missing=""; \
	if ! command -v mosquitto >/dev/null 2>&1 && [ ! -x /usr/sbin/mosquitto ]; then missing="$$missing mosquitto"; fi; \
	if ! command -v dbus-daemon >/dev/null 2>&1; then missing="$$missing dbus-daemon"; fi; \
	if ! command -v node >/dev/null 2>&1; then missing="$$missing nodejs"; fi; \
	if ! command -v npm >/dev/null 2>&1; then missing="$$missing npm"; fi; \
	if [ -n "$$missing" ]; then \
		echo "installing Debian's$$missing for the tests"; \
		$(SUDO) apt-get update -qq && DEBIAN_FRONTEND=noninteractive $(SUDO) apt-get install -y -qq $$missing; \
	fi
	@# Medplum 4.5.2 needs node ^20.19 or >= 22.12; Debian 12's nodejs is 18. Then a pinned node
	@# binary comes from the npm registry into .tools (tests/support/fhir_server.py prefers it).
	@if ! node -e 'const [a,b]=process.versions.node.split(".").map(Number); process.exit(a>22||(a===22&&b>=12)||(a===20&&b>=19)?0:1)' 2>/dev/null \
		&& [ ! -x $(NODE_TOOL) ]; then \
		echo "node missing or older than 20.19: installing node $(NODE_VERSION) into .tools"; \
		npm install --prefix .tools --no-save --no-audit --no-fund node-linux-$(NODE_ARCH)@$(NODE_VERSION); \
	fi
	@# npm ci: exactly the locked versions, again whenever package-lock.json changes.
	@if [ ! -d $(FHIR_SERVER)/node_modules ] || [ $(FHIR_SERVER)/package-lock.json -nt $(FHIR_SERVER)/node_modules ]; then \
		echo "installing the FHIR test server's node packages"; \
		npm ci --prefix $(FHIR_SERVER) --no-audit --no-fund && touch $(FHIR_SERVER)/node_modules; \
	fi

lint: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/mypy

test: $(STAMP) test-deps lint
	$(BIN)/pytest -q

bench: $(STAMP)
	$(BIN)/python -m bench.ingest
	$(BIN)/python -m bench.racp

demo-clean:
	rm -rf edge-data
