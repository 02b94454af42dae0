# `make run`  : create .venv, install pinned deps, run the whole pipeline (dvc repro) on params.yaml
# `make test` : create .venv, install pinned deps, run the test suite in 3 workers (pytest-xdist; torch gets one
#               thread per worker, tests/conftest.py; end-to-end tests wait for servers and schedules much of the
#               time, which the third worker fills on 2 cores); a file's tests stay in one worker (module fixtures start once)
VENV ?= .venv
PY := $(VENV)/bin/python
FIND_LINKS := $(if $(wildcard /opt/wheels),--find-links /opt/wheels,)
export PATH := $(CURDIR)/$(VENV)/bin:$(PATH)
export DO_NOT_TRACK := 1
export DVC_NO_ANALYTICS := 1
export PREFECT_SERVER_ANALYTICS_ENABLED := false
export GX_ANALYTICS_ENABLED := false
export MLFLOW_ENABLE_TELEMETRY := false

.PHONY: install run test flow clean

$(VENV)/.installed: constraints.txt pyproject.toml
	python3 -m venv $(VENV)
	$(PY) -m pip install -q $(FIND_LINKS) -c constraints.txt -e ".[dev]"
	touch $@

install: $(VENV)/.installed

run: install
	dvc repro

flow: install
	python -m flows.retrain

test: install
	ruff check .
	python -m pytest -q -ra -n 3 --dist loadfile

clean:
	rm -rf data/raw data/validated data/reports data/models data/metrics data/plots data/eval data/registry mlruns mlflow.db
