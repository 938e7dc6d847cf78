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
# Our module loggers (tasks.*) also reach the run logs in the Prefect UI.
export PREFECT_LOGGING_EXTRA_LOGGERS := tasks

.PHONY: install demo demo-busbra test test-fast lint format ui serve run backfill retrain \
	validate cluster cluster-stop worker-gpu bench bench-scale ui-snapshot clean slurm slurm-stop \
	slurm-status certs fuzz

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
	$(BIN)/ruff check flows tasks tests infra
	$(BIN)/ruff format --check flows tasks tests infra

format: $(STAMP)
	$(BIN)/ruff format flows tasks tests infra
	$(BIN)/ruff check --fix flows tasks tests infra

# The whole suite, slow end-to-end tests included (CI runs exactly this).
test: $(STAMP) lint
	$(BIN)/pytest

test-fast: $(STAMP)
	$(BIN)/pytest -m "not slow"

# The fuzz tests at full size (manifests + image bytes, CSV manifests, DICOM bytes; CI runs
# them smaller inside `make test`).
fuzz: $(STAMP)
	SLN_FUZZ_CASES=10000 $(BIN)/pytest tests/reliability/test_fuzz.py tests/reliability/test_fuzz_csv_dicom.py \
	  -p no:randomly -q

# The main job on the embedded defaults: synthetic cohort -> cohort flow (local Prefect
# server, LocalCluster) -> store under $(STORE).
demo: $(STAMP)
	$(BIN)/sln demo --out $(DEMO_DIR) --store $(STORE)

# Local Prefect server (SQLite under .prefect/, offline), UI on http://127.0.0.1:4200.
ui: $(STAMP)
	$(BIN)/sln server

# Schedules (nightly cohort + validate, weekly retrain, backfill deployment) run here.
serve: $(STAMP)
	$(BIN)/sln serve --store $(STORE) $(if $(MANIFEST),--manifest $(MANIFEST))

run: $(STAMP)
	@test -n "$(MANIFEST)" || (echo "usage: make run MANIFEST=path/to/manifest.csv [STORE=...]"; exit 2)
	$(BIN)/sln run $(MANIFEST) --store $(STORE)

# make backfill FROM=2022-01-01 TO=2022-06-30 [FORCE=1]
backfill: $(STAMP)
	@test -n "$(FROM)" -a -n "$(TO)" || (echo "usage: make backfill FROM=YYYY-MM-DD TO=YYYY-MM-DD [FORCE=1]"; exit 2)
	$(BIN)/sln backfill --from $(FROM) --to $(TO) --store $(STORE) $(if $(FORCE),--force)

retrain: $(STAMP)
	$(BIN)/sln retrain --store $(STORE)

validate: $(STAMP)
	$(BIN)/sln validate --store $(STORE)

# A scheduler, CPU workers and one GPU=1 worker as real processes on 127.0.0.1:8786.
# TLS=1: over TLS with the certificates in $(TLS_DIR) (made when missing); flows then need
# SLN_TLS_DIR=$(TLS_DIR) and DASK_SCHEDULER_ADDRESS=tls://127.0.0.1:8786.
TLS_DIR ?= .dask/tls
cluster: $(STAMP)
	$(if $(TLS),test -f $(TLS_DIR)/ca.pem || $(BIN)/sln certs --out $(TLS_DIR))
	$(if $(TLS),SLN_TLS_DIR=$(abspath $(TLS_DIR))) $(BIN)/sln cluster

cluster-stop: $(STAMP)
	$(BIN)/sln cluster --stop

# make worker-gpu SCHEDULER=tcp://host:8786
worker-gpu: $(STAMP)
	@test -n "$(SCHEDULER)" || (echo "usage: make worker-gpu SCHEDULER=tcp://host:port"; exit 2)
	$(BIN)/sln worker-gpu $(SCHEDULER)

# A real one-node Slurm here: Debian's slurmctld, slurmd and munge (apt, once) as plain
# processes on 127.0.0.1, partitions `cpu` (default) and `gpu`, state in .slurm/. Flows use
# it with SLN_CLUSTER=slurm (`make slurm && SLN_CLUSTER=slurm make demo`); infra/README.md.
slurm:
	infra/hpc/slurm-local.sh start

# Cancels every job, then stops slurmd, slurmctld and munged.
slurm-stop:
	infra/hpc/slurm-local.sh stop

slurm-status:
	infra/hpc/slurm-local.sh status

# A CA and scheduler/worker/client certificates for Dask over TLS (SLN_TLS_DIR).
certs: $(STAMP)
	$(BIN)/sln certs --out $(TLS_DIR)

# BUS-BRA: real B-mode images, label = malignant, a held-out scanner as external validation.
demo-busbra: $(STAMP)
	$(BIN)/sln busbra --out demo-busbra/manifest.csv --limit-patients $(or $(PATIENTS),400)
	$(BIN)/sln local-key --store ./store-busbra  # public data: a local key file is enough
	SLN_DATA_ROOTS=$(SHARED_DATA)/busbra SLN_CNN_SIZE=112 SLN_CNN_EPOCHS=6 \
	  $(BIN)/sln run demo-busbra/manifest.csv --store ./store-busbra
	SLN_CNN_SIZE=112 SLN_CNN_EPOCHS=6 $(BIN)/sln retrain --store ./store-busbra
	SLN_CNN_SIZE=112 $(BIN)/sln validate --store ./store-busbra

# Radiomics: sln run vs the bare per-region pyradiomics loop vs pyradiomics' CLI (ICC and
# reader-1 workloads, one run, same inputs) plus the profile table; then the CNN benchmark.
# The radiomics tables are written into BENCHMARKS.md. Run on a quiet machine. Then one
# chunk's CPU layer by layer (plain process, plain Dask task, Prefect task) and what the
# orchestration costs: per-process memory and CPU of `sln run`, Prefect's CPU per task.
bench: $(STAMP)
	$(BIN)/python -m tests.bench.bench_radiomics --cases $(or $(CASES),400) --datasets busbra \
	  --out bench-out --write
	$(BIN)/python -m tests.bench.worker_layers bench-out/cases-busbra-icc.json --cases 20 \
	  --rounds 4 --perturb --write
	$(BIN)/python -m tests.bench.orchestration --cases 12 --tasks 100 --idle-seconds 60 --write
	$(BIN)/python -m tests.bench.bench_embedding --cases 200 --size 224 --out bench-out --write

# Growing synthetic cohorts (radiomics only) and a store of 100,000 synthesised cases:
# planning, commit time per chunk as the table grows, compaction + log checkpoint.
SIZES ?= 500,1000,2000
STORE_CASES ?= 100000
bench-scale: $(STAMP)
	$(BIN)/python -m tests.bench.bench_scale --sizes $(SIZES) --store-cases $(STORE_CASES) \
	  --out bench-out --write

ui-snapshot: $(STAMP)
	$(BIN)/python infra/ui_snapshot.py --flow-run-id latest

clean:
	rm -rf $(STORE) $(DEMO_DIR) .pytest_cache bench-out demo-busbra store-busbra
