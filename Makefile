# The two commands: `make demo` and `make test`. Everything they need is installed here.
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
PY_STAMP   := $(VENV)/.installed
NODE_STAMP := node_modules/.installed
# checkov pins its own dependency tree, so it lives in its own venv.
CHECKOV_VENV  := .venv-checkov
CHECKOV_STAMP := $(CHECKOV_VENV)/.installed

.PHONY: install browser demo test lint typecheck unit bench simulate clean

install: $(PY_STAMP) $(NODE_STAMP) $(CHECKOV_STAMP)

$(PY_STAMP): requirements.txt requirements-dev.txt pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip setuptools
	$(BIN)/python -m pip install -q -r requirements-dev.txt
	$(BIN)/python -m pip install -q --no-deps --no-build-isolation -e .
	touch $@

$(NODE_STAMP): package.json package-lock.json
	npm ci --no-audit --no-fund --loglevel=error
	touch $@

$(CHECKOV_STAMP):
	$(PYTHON) -m venv $(CHECKOV_VENV)
	$(CHECKOV_VENV)/bin/python -m pip install -q --upgrade pip
	$(CHECKOV_VENV)/bin/python -m pip install -q checkov==3.3.30
	touch $@

# Headless Chromium and its driver from Debian's packages, for the report's browser test (tests/test_report_html.py).
# Only `make test` needs them; `make demo` writes the report without a browser.
# chromium-driver depends on chromium: its driver being there means both are.
CHROMEDRIVER := /usr/bin/chromedriver
browser: $(CHROMEDRIVER)

$(CHROMEDRIVER):
	apt-get update -q
	DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends chromium chromium-driver

demo: $(PY_STAMP) $(NODE_STAMP)
	$(BIN)/python -m emulator.demo

lint: install
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

typecheck: install
	$(BIN)/mypy shared emulator function_app.py

unit: install browser
	$(BIN)/python -m pytest

test: lint typecheck unit

bench: install
	$(BIN)/python -m bench.scan --json
	$(BIN)/python -m bench.rotate --json
	$(BIN)/python -m bench.simulate --json

# The long mode of the randomized simulations: SIM_SEEDS seeds (from 1000) of SIM_DAYS simulated days each, and
# FAULT_EXAMPLES hypothesis fault schedules. `SIM_SEED=<n> make simulate` replays one seed.
SIM_SEEDS      ?= 40
SIM_DAYS       ?= 120
FAULT_EXAMPLES ?= 1000
simulate: install
	SIM_SEEDS=$(SIM_SEEDS) SIM_DAYS=$(SIM_DAYS) $(BIN)/python -m pytest tests/test_simulation_random.py -q -k months
	FAULT_EXAMPLES=$(FAULT_EXAMPLES) $(BIN)/python -m pytest tests/test_rotation_faults.py -q -k random_schedules

clean:
	rm -rf $(VENV) $(CHECKOV_VENV) node_modules .pytest_cache .mypy_cache .ruff_cache .hypothesis .run
