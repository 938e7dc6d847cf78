# sln-radiomics: every target installs what it needs first (make install is idempotent).
PY ?= python3.11
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
STORE ?= ./store
DEMO_DIR ?= ./demo
export PREFECT_SERVER_ANALYTICS_ENABLED := false

.PHONY: install demo test lint format clean

install: $(STAMP)

$(STAMP): pyproject.toml
	test -d $(VENV) || $(PY) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	# pyradiomics packaging fault: 3.1.0 does not build on Python 3.11 here, and 3.0.1's
	# sdist imports numpy/versioneer in setup.py, so it only builds without build isolation
	# after those are present in the venv.
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

test: $(STAMP) lint
	$(BIN)/pytest

demo: $(STAMP)
	$(BIN)/sln demo --out $(DEMO_DIR) --store $(STORE)

clean:
	rm -rf $(STORE) $(DEMO_DIR) .pytest_cache
