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
# The prebuilt JupyterLab extension (src/ -> ctrlstack/labextension/), rebuilt when a source changes.
LABEXT := ctrlstack/labextension/package.json
LABEXT_LINK := $(VENV)/share/jupyter/labextensions/ctrlstack
LABEXT_SRC := package.json package-lock.json tsconfig.json $(wildcard src/*.ts src/*/*.ts style/*)
# A second venv with ctrlstack's base install only (`pip install .`: no extras, not editable).
MIN_VENV  := .venv-min
MIN_STAMP := $(MIN_VENV)/.installed

.PHONY: lab test setup labextension labextension-link browser-deps lint typecheck pytest test-minimal bench clean chp hub-env

setup: $(STAMP) $(LABEXT) labextension-link

# On a fresh checkout the wheel build hook (hatch-jupyter-builder) builds the lab extension
# during this install (npm install + npm run build:prod, with jupyter-builder from the build env).
# ci/dev-lock.txt: every version of the test environment (scripts/lock-dev writes it), the Dask
# wire packages at the stacks' locks' versions (ci/constraints.txt, see that file).
$(STAMP): pyproject.toml ci/dev-lock.txt
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	@# A re-install would write the wheel's shared data through the link below into the tree.
	test ! -L $(LABEXT_LINK) || rm $(LABEXT_LINK)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e '.[dev]' -c ci/dev-lock.txt
	touch $(STAMP)

# node_modules is cached in the checkout (gitignored): `npm ci` runs only when the lockfile changes.
node_modules/.package-lock.json: package.json package-lock.json
	npm ci --no-audit --no-fund
	touch $@

# Rebuild the extension when a source changes (jupyter-builder comes with JupyterLab in the venv).
$(LABEXT): node_modules/.package-lock.json $(LABEXT_SRC) | $(STAMP)
	PATH="$(abspath $(BIN)):$$PATH" npm run build:prod

# The editable install copied the extension into the venv; a link keeps that copy current.
labextension-link: $(STAMP) $(LABEXT)
	@test -L $(LABEXT_LINK) || { rm -rf $(LABEXT_LINK); ln -s $(CURDIR)/ctrlstack/labextension $(LABEXT_LINK); }

labextension: $(LABEXT) labextension-link

# Browser tests drive Debian's chromium through Playwright (no browser download).
browser-deps:
	@command -v chromium >/dev/null || { \
		if [ "$$(id -u)" = 0 ]; then apt-get update && apt-get install -y chromium; \
		else echo "browser tests need Debian's chromium: sudo apt-get install -y chromium" >&2; exit 1; fi; }

# JupyterLab on the quickstart notebook with the ctrlstack sidebar (the URL below opens it).
lab: setup
	@token=$$($(BIN)/python -c 'import secrets; print(secrets.token_hex(16))'); \
	echo ""; \
	echo "    Open http://127.0.0.1:$(LAB_PORT)/lab/tree/quickstart.ipynb?token=$$token"; \
	echo ""; \
	exec $(BIN)/jupyter lab --no-browser --ip=127.0.0.1 --port=$(LAB_PORT) \
		--ServerApp.root_dir=notebooks --LabApp.default_url=/lab/tree/quickstart.ipynb \
		--ServerApp.token=$$token --ServerApp.port_retries=0 \
		$$( [ "$$(id -u)" = 0 ] && echo --allow-root )

test: setup browser-deps lint typecheck pytest test-minimal

lint: setup
	$(BIN)/ruff check ctrlstack tests benchmarks scripts/slurm
	$(BIN)/ruff format --check ctrlstack tests benchmarks scripts/slurm

typecheck: setup
	$(BIN)/mypy

# The JupyterHub tests (marker hub) need configurable-http-proxy and a Python the test's Unix
# users can execute (the venv's may live under root's 0700 home): see docs/hub.md.
CHP := ci/chp/node_modules/.bin/configurable-http-proxy
HUB_USER_ENV ?= /var/tmp/ctrlstack-hub-userenv

chp: $(CHP)

# The proxy's versions come from its committed lockfile (a new release cannot change the tests).
$(CHP): ci/chp/package.json ci/chp/package-lock.json
	cd ci/chp && npm ci --no-audit --no-fund
	touch $(CHP)

# The spawned servers' Python: this tree + its lab extra in a venv every user can execute, and
# Debian's sudo (for the sudo -u prefix test).  A no-op (~0.1 s) when the tree is unchanged.
hub-env: $(LABEXT)
	$(PYTHON) scripts/hub-userenv --sudo --env $(HUB_USER_ENV)

pytest: setup chp hub-env
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
	$(BIN)/python benchmarks/hub_spawn.py

clean:
	rm -rf $(VENV) $(MIN_VENV) .pytest_cache .mypy_cache .ruff_cache lib tsconfig.tsbuildinfo \
		ctrlstack/labextension
