# `make run`  : create .venv, install pinned deps, run the whole pipeline (dvc repro) on params.yaml
# `make test` : create .venv, install pinned deps, run the test suite
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
	python -m pytest -q -ra

clean:
	rm -rf data/raw data/validated data/reports data/models data/metrics data/plots data/eval data/registry mlruns mlflow.db
