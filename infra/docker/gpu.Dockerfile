# syntax=docker/dockerfile:1.7
#
# sln-radiomics GPU worker image: one Dask worker process, one thread, carrying the
# `GPU=1` resource, so the CNN tasks (submitted under dask.annotate(resources={"GPU": 1}))
# run here. Build from the repository root (BuildKit reads
# infra/docker/gpu.Dockerfile.dockerignore as this build's ignore file):
#
#   docker build -f infra/docker/gpu.Dockerfile -t sln-radiomics-gpu:0.1.0 .
#
#   docker run --rm --gpus device=0 -e DASK_SCHEDULER_ADDRESS=tcp://host:8786 \
#     -e PREFECT_API_URL=http://host:4200/api sln-radiomics-gpu:0.1.0
#
# CUDA: torch 2.14.1 from PyPI is the cu130 build (torch.version.cuda == "13.0"); it brings
# its own CUDA 13.0 user-space libraries (nvidia-*-cu13 wheels: cuBLAS, cuDNN 9, NCCL, ...).
# The base is the matching CUDA 13.0 runtime image; the host needs an NVIDIA driver for
# CUDA 13.0 (R580 or newer) and the NVIDIA Container Toolkit. One GPU per container: run
# one container per GPU (--gpus device=N); Slurm/Kubernetes set CUDA_VISIBLE_DEVICES.
#
# Python 3.11 (the project pins >=3.11,<3.12) is not Ubuntu 24.04's python3, so it comes
# from the deadsnakes PPA.

ARG CUDA_IMAGE=nvidia/cuda:13.0.2-runtime-ubuntu24.04

# ---- build: a venv at /opt/venv with the project and its pinned stack ----------------------
FROM ${CUDA_IMAGE} AS build

ARG TORCH_INDEX_URL=https://pypi.org/simple
ARG EXTRA_PIP_PACKAGES=""

ENV DEBIAN_FRONTEND=noninteractive \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PYTHONDONTWRITEBYTECODE=1

RUN apt-get update \
 && apt-get install -y --no-install-recommends software-properties-common gpg-agent \
 && add-apt-repository -y ppa:deadsnakes/ppa \
 && apt-get update \
 && apt-get install -y --no-install-recommends \
      python3.11 python3.11-venv python3.11-dev build-essential \
 && rm -rf /var/lib/apt/lists/*

RUN python3.11 -m venv /opt/venv
ENV PATH=/opt/venv/bin:$PATH

# The same order as `make install`. Known pyradiomics packaging fault: the 3.0.1 sdist
# imports numpy and versioneer from setup.py, so it builds only without build isolation,
# after those are in the venv.
RUN pip install --upgrade pip \
 && pip install "numpy>=1.26,<3" setuptools wheel versioneer \
 && pip install --no-build-isolation pyradiomics==3.0.1

# torch/torchvision cu130 (PyPI's Linux wheels), the largest layer on its own.
RUN pip install --index-url "${TORCH_INDEX_URL}" torch==2.14.1 torchvision==0.29.1

WORKDIR /src
COPY pyproject.toml README.md ./
COPY flows ./flows
COPY tasks ./tasks
RUN pip install . \
 && if [ -n "${EXTRA_PIP_PACKAGES}" ]; then pip install ${EXTRA_PIP_PACKAGES}; fi \
 && pip check

# ---- runtime ------------------------------------------------------------------------------
FROM ${CUDA_IMAGE}

LABEL org.opencontainers.image.title="sln-radiomics-gpu" \
      org.opencontainers.image.description="sln-radiomics Dask GPU worker (CUDA 13.0, torch 2.14.1+cu130)" \
      org.opencontainers.image.licenses="Apache-2.0"

ENV DEBIAN_FRONTEND=noninteractive

# The interpreter the venv links to (same PPA, same path as in the build stage) and tini.
RUN apt-get update \
 && apt-get install -y --no-install-recommends software-properties-common gpg-agent \
 && add-apt-repository -y ppa:deadsnakes/ppa \
 && apt-get update \
 && apt-get install -y --no-install-recommends python3.11 tini \
 && apt-get purge -y --auto-remove software-properties-common gpg-agent \
 && rm -rf /var/lib/apt/lists/*

COPY --from=build /opt/venv /opt/venv

WORKDIR /opt/sln
COPY pyproject.toml README.md ./
COPY flows ./flows
COPY tasks ./tasks
COPY infra/radiomics.yaml ./infra/radiomics.yaml

# Non-root, numeric (Kubernetes runAsNonRoot can only check a numeric user). Ubuntu 24.04
# images ship a user `ubuntu` with uid 1000; ours is 10001.
RUN groupadd --gid 10001 sln \
 && useradd --uid 10001 --gid 10001 --create-home --home-dir /home/sln --shell /bin/bash sln

# One thread per worker process (the GPU does the CNN work; CPU pools stay at one thread);
# Dask's timers and profiler quieted as flows/runtime/env.py's DASK_CONFIG.
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

EXPOSE 8788

# = dask worker $DASK_SCHEDULER_ADDRESS --nthreads 1 --resources "GPU=1": with no address
# argument, `dask worker` reads DASK_SCHEDULER_ADDRESS (dask's `scheduler-address` setting),
# so the exec form needs no shell.
ENTRYPOINT ["tini", "-g", "--"]
CMD ["dask", "worker", "--nthreads", "1", "--nworkers", "1", "--resources", "GPU=1"]
