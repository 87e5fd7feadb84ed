# The two commands in the README: `make demo` and `make test`.
SHELL := /bin/bash
VENV := $(shell scripts/bootstrap.sh)
PY := $(VENV)/bin/python
export PYTHONPATH := $(CURDIR)
export PATH := $(VENV)/bin:$(PATH)

.PHONY: demo test lint typecheck pytest bench

demo:
	$(PY) scripts/demo.py

test: lint typecheck pytest

lint:
	$(PY) -m ruff check .

typecheck:
	$(PY) -m mypy

pytest:
	$(PY) -m pytest -q -p no:cacheprovider $(PYTEST_ARGS)
