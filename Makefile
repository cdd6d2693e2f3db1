# Two entry points: `make demo` and `make test`. Each creates .venv if needed, installs, runs.
PYTHON ?= python3
VENV ?= .venv
TORCH_SPEC ?= torch==2.13.0
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
WORKDIR ?= demo-work
PYTEST_ARGS ?=

export DO_NOT_TRACK := true
export PREFECT_SERVER_ANALYTICS_ENABLED := false
export MLFLOW_DISABLE_TELEMETRY := true
export PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS := 90

.PHONY: demo test env lint clean

$(STAMP): pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	# torch first and pinned, so that a CPU machine never pulls a multi-GB CUDA build
	$(PY) -m pip install -q "$(TORCH_SPEC)"
	$(PY) -m pip install -q -e '.[test]'
	touch $(STAMP)

env: $(STAMP)

demo: $(STAMP)
	$(VENV)/bin/pgl demo --workdir $(WORKDIR)

test: $(STAMP)
	$(VENV)/bin/lint-imports
	$(PY) -m pytest -m "not gpu" -p no:cacheprovider $(PYTEST_ARGS)

clean:
	rm -rf $(VENV) $(WORKDIR) .pytest_cache .hypothesis
