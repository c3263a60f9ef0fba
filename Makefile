# The project's commands. Everything runs in the project's virtual environment: the active one when
# there is one, else ./.venv (created by scripts/setup.sh with $(PYTHON)).
PYTHON ?= python3
VENV ?= $(if $(VIRTUAL_ENV),$(VIRTUAL_ENV),.venv)
PY := $(VENV)/bin/python
export PYTHON VENV

.PHONY: setup setup-test demo example test test-all

setup:
	bash scripts/setup.sh

setup-test:
	bash scripts/setup.sh test

demo: setup
	$(PY) -m diffpde.cli demo

example: setup
	$(PY) scripts/example_samplers.py

test: setup-test
	$(PY) -m pytest -q

test-all: setup-test
	$(PY) -m pytest -q -m ""
