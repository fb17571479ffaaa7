# Two commands a fresh machine needs (see README.md):
#   make lab    set everything up, then run JupyterLab with the quickstart notebook (local profile)
#   make test   set everything up, then run the whole test suite (lint, types, tests, and the
#               smoke test of a plain install: `make test-minimal`)
# Everything is installed from this repository's own files into ./.venv (and ./.venv-min).

PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed
LAB_PORT ?= 8888
PYTEST_ARGS ?=
# A second venv with ctrlstack's base install only (`pip install .`: no extras, not editable).
MIN_VENV  := .venv-min
MIN_STAMP := $(MIN_VENV)/.installed

.PHONY: lab test setup lint typecheck pytest test-minimal bench clean

setup: $(STAMP)

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e '.[dev]'
	touch $(STAMP)

lab: setup
	$(BIN)/jupyter lab notebooks/quickstart.ipynb --no-browser --ip=127.0.0.1 --port=$(LAB_PORT) \
		$$( [ "$$(id -u)" = 0 ] && echo --allow-root )

test: setup lint typecheck pytest test-minimal

lint: setup
	$(BIN)/ruff check ctrlstack tests benchmarks scripts/slurm
	$(BIN)/ruff format --check ctrlstack tests benchmarks scripts/slurm

typecheck: setup
	$(BIN)/mypy

pytest: setup
	$(BIN)/python -m pytest -m "" $(PYTEST_ARGS)

# The venv is rebuilt from scratch when pyproject.toml changes (so nothing but the base install's
# dependencies is ever in it; pip's cache keeps that fast); ctrlstack itself is reinstalled from
# this tree every run.  The '*' .gitignore keeps the venv out of `git status`.
$(MIN_STAMP): pyproject.toml
	rm -rf $(MIN_VENV)
	$(PYTHON) -m venv $(MIN_VENV)
	echo '*' > $(MIN_VENV)/.gitignore
	$(MIN_VENV)/bin/python -m pip install --quiet .
	touch $(MIN_STAMP)

test-minimal: $(MIN_STAMP)
	$(MIN_VENV)/bin/python -m pip install --quiet --no-deps --force-reinstall .
	env -u PYTHONPATH $(MIN_VENV)/bin/python tests/smoke_minimal.py

bench: setup
	$(BIN)/python benchmarks/cluster.py
	$(BIN)/python benchmarks/ops.py

clean:
	rm -rf $(VENV) $(MIN_VENV) .pytest_cache .mypy_cache .ruff_cache
