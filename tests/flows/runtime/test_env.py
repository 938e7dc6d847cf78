"""What every worker process gets: one thread, the malloc thresholds, Dask's timers quieted,
the GPU resource name."""

from __future__ import annotations

from pathlib import Path

import dask

from flows.runtime.env import (
    DASK_CONFIG,
    GPU_RESOURCE,
    MALLOC_ENV,
    ONE_THREAD_ENV,
    WORKER_ENV,
    dask_env,
)

ROOT = Path(__file__).resolve().parents[3]


def test_one_compute_thread_per_worker_process():
    for name in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
        assert ONE_THREAD_ENV[name] == "1"
    assert ONE_THREAD_ENV["ITK_GLOBAL_DEFAULT_NUMBER_OF_THREADS"] == "1"


def test_malloc_thresholds_keep_image_arrays_on_the_heap():
    assert int(MALLOC_ENV["MALLOC_MMAP_THRESHOLD_"]) == 64 * 2**20
    assert int(MALLOC_ENV["MALLOC_TRIM_THRESHOLD_"]) >= int(MALLOC_ENV["MALLOC_MMAP_THRESHOLD_"])
    assert WORKER_ENV == {**ONE_THREAD_ENV, **MALLOC_ENV, **dask_env(DASK_CONFIG)}


def test_remote_workers_read_the_quieted_dask_settings_from_their_environment():
    """The ``DASK_*`` names Slurm and Kubernetes workers get parse, as Dask itself reads
    its environment at start-up, to the very settings the local cluster is given."""
    env = {k: v for k, v in WORKER_ENV.items() if k.startswith("DASK_")}
    assert len(env) == len(DASK_CONFIG) == 3
    with dask.config.set(dask.config.collect_env(env)):
        for key, value in DASK_CONFIG.items():
            assert dask.config.get(key) == value


def test_the_gpu_resource_is_the_one_cnn_tasks_ask_for():
    source = (ROOT / "flows" / "extract.py").read_text() + (
        ROOT / "flows" / "retrain.py"
    ).read_text()
    assert f'resources={{"{GPU_RESOURCE}": 1}}' in source
