PYTHON ?= python3

.PHONY: setup setup-test demo example test test-all

setup:
	PYTHON=$(PYTHON) bash scripts/setup.sh

setup-test:
	PYTHON=$(PYTHON) bash scripts/setup.sh test

demo: setup
	$(PYTHON) -m diffpde.cli demo

example: setup
	$(PYTHON) scripts/example_samplers.py

test: setup-test
	$(PYTHON) -m pytest -q

test-all: setup-test
	$(PYTHON) -m pytest -q -m ""
