PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
export DAGSTER_HOME := $(CURDIR)/dagster_home
export MLFLOW_DISABLE_TELEMETRY := true

.PHONY: install system-deps demo test ui bench clean

install: $(VENV)/.installed

# Debian packages the tests use: PostgreSQL (throwaway catalog clusters) and Chromium (the
# browser tests drive both UIs with Playwright; never `playwright install`).
SYSTEM_PACKAGES = $(if $(wildcard /usr/lib/postgresql/*/bin/initdb),,postgresql) $(if $(wildcard /usr/bin/chromium),,chromium chromium-driver)
system-deps:
	@if [ -n "$(strip $(SYSTEM_PACKAGES))" ]; then \
		echo "installing Debian's $(strip $(SYSTEM_PACKAGES))"; \
		apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq $(SYSTEM_PACKAGES) >/dev/null; \
	fi

$(VENV)/.installed: pyproject.toml constraints.txt
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -c constraints.txt -e '.[dev,postgres]'
	touch $@

demo: install
	$(BIN)/icetrain demo

test: install system-deps
	$(BIN)/python -m pytest -q

ui: install
	$(BIN)/icetrain ui

# The loader benchmark (about 5 minutes at the default 4,000,000 rows; ROWS=400000 for a quick look).
ROWS ?= 4000000
bench: install
	$(BIN)/python bench/loader_bench.py --rows $(ROWS)

clean:
	rm -rf .icetrain mlruns mlartifacts dagster_home/storage dagster_home/history dagster_home/schedules dagster_home/logs
