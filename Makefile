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

.PHONY: lab test setup lint typecheck pytest bench clean

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

pytest: setup
	$(BIN)/python -m pytest -m "" $(PYTEST_ARGS)

bench: setup
	$(BIN)/python benchmarks/cluster.py
	$(BIN)/python benchmarks/ops.py

clean:
	rm -rf $(VENV) .pytest_cache .mypy_cache .ruff_cache
