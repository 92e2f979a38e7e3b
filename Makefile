PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
export DAGSTER_HOME := $(CURDIR)/dagster_home
export MLFLOW_DISABLE_TELEMETRY := true

.PHONY: install system-deps demo test ui bench soak clean services services-stop

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

# PostgreSQL (catalog, MLflow store, Dagster storage) and an MLflow server on 127.0.0.1, data
# under .icetrain/services; then `export ICETRAIN_PROFILE=services`.
services: install system-deps
	$(BIN)/icetrain services start

services-stop: install
	$(BIN)/icetrain services stop

# The loader benchmark (about 6 minutes: 4,000,000 rows, and a 20,000,000-row table for the scale
# row; ROWS=400000 SCALE_ROWS=0 for a quick look; DEVICE=cuda adds the GPU rows where CUDA exists).
ROWS ?= 4000000
SCALE_ROWS ?= 20000000
DEVICE ?= cpu
bench: install
	$(BIN)/python bench/loader_bench.py --rows $(ROWS) --scale-rows $(SCALE_ROWS) --device $(DEVICE)

# 200 ingests and 20 training runs against its own services (PostgreSQL, MLflow server): planning
# time as snapshots pile up, metadata before/after expire, lineage checked (a few minutes).
soak: install system-deps
	$(BIN)/python bench/soak.py --ingests 200 --trains 20

clean:
	rm -rf .icetrain mlruns mlartifacts dagster_home/storage dagster_home/history dagster_home/schedules dagster_home/logs
