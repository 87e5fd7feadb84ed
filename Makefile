# The two commands in the README: `make demo` and `make test`.
SHELL := /bin/bash
VENV := $(shell scripts/bootstrap.sh)
PY := $(VENV)/bin/python
export PYTHONPATH := $(CURDIR)
export PATH := $(VENV)/bin:$(PATH)

.PHONY: demo test lint typecheck pytest bench bench-deps

demo:
	$(PY) scripts/demo.py

test: lint typecheck pytest

lint:
	$(PY) -m ruff check .

typecheck:
	$(PY) -m mypy

# Two test processes (pytest-xdist; PYTEST_WORKERS=0 runs in one): many tests wait on real
# servers and worker processes, so two keep both cores busy. Each process has its own
# PostgreSQL database, SeaweedFS and queue names.
PYTEST_WORKERS ?= 2
# --durations: the slowest tests in every CI log, where the suite's time goes
pytest:
	$(PY) -m pytest -q -p no:cacheprovider -n $(PYTEST_WORKERS) --durations=40 $(PYTEST_ARGS)

# Benchmark-only packages (bench/auto.py's real MiniLM), into the project venv; the lock
# constrains them, so no locked package (torch above all) changes version.
bench-deps:
	$(PY) -m pip install -r requirements-bench.txt -c requirements.lock
