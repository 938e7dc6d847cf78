# sln-radiomics. Every target installs what it needs first (`make install` is idempotent:
# a stamp file; a second run does nothing).
PY ?= python3.11
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
STORE ?= ./store
DEMO_DIR ?= ./demo
SHARED_DATA ?= $(abspath ../shared/data)
export PREFECT_SERVER_ANALYTICS_ENABLED := false
export SLN_SHARED_DATA := $(SHARED_DATA)

.PHONY: install demo test test-fast lint format ui run bench clean

install: $(STAMP)

$(STAMP): pyproject.toml
	test -d $(VENV) || $(PY) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	# Known pyradiomics packaging fault: 3.1.0 does not build on Python 3.11 here, and the
	# 3.0.1 sdist imports numpy and versioneer from setup.py, so it builds only without
	# build isolation, after those are in the venv.
	$(BIN)/pip install -q "numpy>=1.26,<3" setuptools wheel versioneer
	$(BIN)/pip install -q --no-build-isolation pyradiomics==3.0.1
	$(BIN)/pip install -q -e '.[test]'
	touch $(STAMP)

lint: $(STAMP)
	$(BIN)/ruff check flows tasks tests
	$(BIN)/ruff format --check flows tasks tests

format: $(STAMP)
	$(BIN)/ruff format flows tasks tests
	$(BIN)/ruff check --fix flows tasks tests

# The whole suite, slow end-to-end tests included (CI runs exactly this).
test: $(STAMP) lint
	$(BIN)/pytest

test-fast: $(STAMP)
	$(BIN)/pytest -m "not slow"

# The main job on the embedded defaults: synthetic cohort -> cohort flow (local Prefect
# server, LocalCluster) -> store under $(STORE).
demo: $(STAMP)
	$(BIN)/sln demo --out $(DEMO_DIR) --store $(STORE)

# Local Prefect server (SQLite under .prefect/, offline), UI on http://127.0.0.1:4200.
ui: $(STAMP)
	$(BIN)/sln server

run: $(STAMP)
	@test -n "$(MANIFEST)" || (echo "usage: make run MANIFEST=path/to/manifest.csv [STORE=...]"; exit 2)
	$(BIN)/sln run $(MANIFEST) --store $(STORE)

bench: $(STAMP)
	$(BIN)/python -m tests.bench.bench_radiomics --cases $(or $(CASES),400) --out bench-out

clean:
	rm -rf $(STORE) $(DEMO_DIR) .pytest_cache bench-out
