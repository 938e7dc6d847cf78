# syntax=docker/dockerfile:1.7
#
# sln-radiomics CPU image: Dask scheduler, CPU Dask workers, and the flow runner (Prefect
# Kubernetes/process work pools). Build from the repository root (BuildKit reads
# infra/docker/cpu.Dockerfile.dockerignore as this build's ignore file):
#
#   docker build -f infra/docker/cpu.Dockerfile -t sln-radiomics-cpu:0.1.0 .
#
# Default command: one Dask worker process with one thread, joining the scheduler named by
# DASK_SCHEDULER_ADDRESS (dask reads it as its `scheduler-address` setting):
#
#   docker run --rm -e DASK_SCHEDULER_ADDRESS=tcp://host:8786 \
#     -e PREFECT_API_URL=http://host:4200/api sln-radiomics-cpu:0.1.0
#
# Any other command runs under tini (signals, zombie reaping), e.g.
#   docker run ... sln-radiomics-cpu:0.1.0 dask scheduler
#   docker run ... sln-radiomics-cpu:0.1.0 prefect worker start --pool sln-process
#   docker run ... sln-radiomics-cpu:0.1.0 sln run s3://bucket/manifest.csv --store s3://bucket/store
#
# Torch comes from PyPI by default (the same wheel as `make install`; on Linux it pulls the
# CUDA 13 user-space libraries, about 3 GB). For a smaller CPU-only image build with
#   --build-arg TORCH_INDEX_URL=https://download.pytorch.org/whl/cpu

ARG PYTHON_IMAGE=python:3.11-slim

# ---- build: a venv at /opt/venv with the project and its pinned stack ----------------------
FROM ${PYTHON_IMAGE} AS build

ARG TORCH_INDEX_URL=https://pypi.org/simple
ARG EXTRA_PIP_PACKAGES=""

ENV PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PYTHONDONTWRITEBYTECODE=1

# A C toolchain: pyradiomics 3.0.1 is an sdist with C extensions.
RUN apt-get update \
 && apt-get install -y --no-install-recommends build-essential \
 && rm -rf /var/lib/apt/lists/*

RUN python -m venv /opt/venv
ENV PATH=/opt/venv/bin:$PATH

# The same order as `make install`. Known pyradiomics packaging fault: the 3.0.1 sdist
# imports numpy and versioneer from setup.py, so it builds only without build isolation,
# after those are in the venv.
RUN pip install --upgrade pip \
 && pip install "numpy>=1.26,<3" setuptools wheel versioneer \
 && pip install --no-build-isolation pyradiomics==3.0.1

# The largest layer on its own, so source changes do not re-download it.
RUN pip install --index-url "${TORCH_INDEX_URL}" torch==2.14.1 torchvision==0.29.1

# The project itself (non-editable) and anything extra the deployment asks for
# (e.g. --build-arg EXTRA_PIP_PACKAGES="prefect-kubernetes dask-jobqueue").
WORKDIR /src
COPY pyproject.toml README.md ./
COPY flows ./flows
COPY tasks ./tasks
RUN pip install . \
 && if [ -n "${EXTRA_PIP_PACKAGES}" ]; then pip install ${EXTRA_PIP_PACKAGES}; fi \
 && pip check

# ---- runtime ------------------------------------------------------------------------------
FROM ${PYTHON_IMAGE}

LABEL org.opencontainers.image.title="sln-radiomics-cpu" \
      org.opencontainers.image.description="sln-radiomics Dask workers and flow runner (CPU)" \
      org.opencontainers.image.licenses="Apache-2.0"

RUN apt-get update \
 && apt-get install -y --no-install-recommends tini \
 && rm -rf /var/lib/apt/lists/*

COPY --from=build /opt/venv /opt/venv

# The source tree again, read-only, for file-path deployment entrypoints
# (`flows/cohort.py:cohort` with a set_working_directory pull step to /opt/sln), and the
# radiomics settings, which the flow process reads (workers get them from the flow).
WORKDIR /opt/sln
COPY pyproject.toml README.md ./
COPY flows ./flows
COPY tasks ./tasks
COPY infra/radiomics.yaml ./infra/radiomics.yaml

# Non-root, numeric (Kubernetes runAsNonRoot can only check a numeric user).
RUN groupadd --gid 10001 sln \
 && useradd --uid 10001 --gid 10001 --create-home --home-dir /home/sln --shell /bin/bash sln

# One thread per worker process: BLAS/OpenMP/ITK pools at one thread (process workers, one
# thread each, are the parallelism); glibc malloc thresholds as flows/runtime/runners.py sets
# them (Dask's nanny default would freeze the mmap threshold); Dask's timers and profiler
# quieted as flows/runtime/env.py's DASK_CONFIG. PATH puts the venv first.
ENV PATH=/opt/venv/bin:$PATH \
    PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    OMP_NUM_THREADS=1 \
    OPENBLAS_NUM_THREADS=1 \
    MKL_NUM_THREADS=1 \
    ITK_GLOBAL_DEFAULT_NUMBER_OF_THREADS=1 \
    MALLOC_TRIM_THRESHOLD_=67108864 \
    MALLOC_MMAP_THRESHOLD_=67108864 \
    DASK_DISTRIBUTED__ADMIN__TICK__INTERVAL=1s \
    DASK_DISTRIBUTED__ADMIN__SYSTEM_MONITOR__INTERVAL=2s \
    DASK_DISTRIBUTED__WORKER__PROFILE__ENABLED=False \
    SLN_RADIOMICS_PARAMS=/opt/sln/infra/radiomics.yaml \
    PREFECT_SERVER_ANALYTICS_ENABLED=false \
    PREFECT_HOME=/home/sln/.prefect \
    HOME=/home/sln

USER 10001:10001

# 8786 scheduler, 8787 scheduler dashboard, 8788 worker dashboard (when enabled).
EXPOSE 8786 8787 8788

ENTRYPOINT ["tini", "-g", "--"]
CMD ["dask", "worker", "--nthreads", "1", "--nworkers", "1"]
