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

# Tests start their own brokers and buses: they need the mosquitto and dbus-daemon binaries,
# not running services.
test-deps:
	@missing=""; \
	if ! command -v mosquitto >/dev/null 2>&1 && [ ! -x /usr/sbin/mosquitto ]; then missing="$$missing mosquitto"; fi; \
	if ! command -v dbus-daemon >/dev/null 2>&1; then missing="$$missing dbus-daemon"; fi; \
	if [ -n "$$missing" ]; then \
		echo "installing Debian's$$missing for the tests"; \
		$(SUDO) apt-get update -qq && DEBIAN_FRONTEND=noninteractive $(SUDO) apt-get install -y -qq $$missing; \
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
