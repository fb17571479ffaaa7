# Two commands a fresh machine needs (see README.md):
#   make lab    set everything up, then run JupyterLab with the quickstart notebook (local profile)
#   make test   set everything up, then run the whole test suite (lint, types, tests)
# Everything is installed from this repository's own files into ./.venv.

PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed
LAB_PORT ?= 8888
PYTEST_ARGS ?=

.PHONY: lab test setup lint typecheck pytest bench clean chp hub-env

setup: $(STAMP)

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e '.[dev]'
	touch $(STAMP)

lab: setup
	$(BIN)/jupyter lab notebooks/quickstart.ipynb --no-browser --ip=127.0.0.1 --port=$(LAB_PORT) \
		$$( [ "$$(id -u)" = 0 ] && echo --allow-root )

test: setup lint typecheck pytest

lint: setup
	$(BIN)/ruff check ctrlstack tests benchmarks
	$(BIN)/ruff format --check ctrlstack tests benchmarks

typecheck: setup
	$(BIN)/mypy

# The JupyterHub tests (marker hub) need configurable-http-proxy and a Python the test's Unix
# users can execute (the venv's may live under root's 0700 home): see docs/hub.md.
CHP := ci/chp/node_modules/.bin/configurable-http-proxy
HUB_USER_ENV ?= /var/tmp/ctrlstack-hub-userenv

chp: $(CHP)

$(CHP): ci/chp/package.json
	cd ci/chp && npm install --no-audit --no-fund
	touch $(CHP)

hub-env:
	test -x $(HUB_USER_ENV)/bin/python || /usr/bin/python3 -m venv $(HUB_USER_ENV)
	$(HUB_USER_ENV)/bin/python -c 'import jupyterhub, jupyter_server, batchspawner' 2>/dev/null || \
		$(HUB_USER_ENV)/bin/python -m pip install --quiet jupyterhub jupyter_server batchspawner

pytest: setup chp hub-env
	$(BIN)/python -m pytest -m "" $(PYTEST_ARGS)

bench: setup
	$(BIN)/python benchmarks/cluster.py
	$(BIN)/python benchmarks/ops.py
	$(BIN)/python benchmarks/hub_spawn.py

clean:
	rm -rf $(VENV) .pytest_cache .mypy_cache .ruff_cache
