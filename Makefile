# FleetFL: two commands. `make demo` runs the main job on the embedded default; `make test` runs
# the test suite. Both create the environments they need; a second run installs nothing.
SHELL := /bin/bash
PYTHON ?= $(shell command -v python3.11 || command -v python3)
VENV := .venv
AGENT_VENV := .venv-agent
PY := $(VENV)/bin/python
PYTEST_ARGS ?=

.PHONY: demo test lint install clean-demo

install: $(VENV)/.installed $(AGENT_VENV)/.installed

$(VENV)/.installed: requirements.txt requirements-dev.txt pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --disable-pip-version-check -r requirements.txt -r requirements-dev.txt
	$(PY) -m pip install -q --disable-pip-version-check --no-deps --no-build-isolation -e .
	touch $@

$(AGENT_VENV)/.installed: requirements-agent.txt
	test -x $(AGENT_VENV)/bin/python || $(PYTHON) -m venv $(AGENT_VENV)
	$(AGENT_VENV)/bin/python -m pip install -q --disable-pip-version-check -r requirements-agent.txt
	touch $@

demo: install
	$(VENV)/bin/fleetfl demo --out runs/demo

test: install
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .
	$(VENV)/bin/actionlint
	$(PY) -m pytest $(PYTEST_ARGS)

lint: $(VENV)/.installed
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .
	$(VENV)/bin/actionlint
