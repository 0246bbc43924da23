# regdiff: `make run` starts the service (embedded SQLite + SQLite broker, worker included);
# `make test` runs the whole suite. Both set up .venv first (a second run installs nothing).
PYTHON ?= python3.11
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed

.PHONY: run worker test migrate bench clean

$(STAMP): pyproject.toml client/pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -e '.[test]' -e ./client
	touch $(STAMP)

migrate: $(STAMP)
	$(PY) -m alembic upgrade head

run: $(STAMP)
	$(PY) -m api.launcher

worker: $(STAMP)
	$(PY) -m worker

test: $(STAMP)
	OMP_NUM_THREADS=1 $(PY) -m pytest -q --durations=25

bench: $(STAMP)
	$(PY) bench/train_throughput.py

clean:
	rm -rf var .pytest_cache
