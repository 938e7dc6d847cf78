"""What every worker process gets: one thread, the malloc thresholds, the GPU resource name."""

from __future__ import annotations

from pathlib import Path

from flows.runtime.env import GPU_RESOURCE, MALLOC_ENV, ONE_THREAD_ENV, WORKER_ENV

ROOT = Path(__file__).resolve().parents[3]


def test_one_compute_thread_per_worker_process():
    for name in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
        assert ONE_THREAD_ENV[name] == "1"
    assert ONE_THREAD_ENV["ITK_GLOBAL_DEFAULT_NUMBER_OF_THREADS"] == "1"


def test_malloc_thresholds_keep_image_arrays_on_the_heap():
    assert int(MALLOC_ENV["MALLOC_MMAP_THRESHOLD_"]) == 64 * 2**20
    assert int(MALLOC_ENV["MALLOC_TRIM_THRESHOLD_"]) >= int(MALLOC_ENV["MALLOC_MMAP_THRESHOLD_"])
    assert WORKER_ENV == {**ONE_THREAD_ENV, **MALLOC_ENV}


def test_the_gpu_resource_is_the_one_cnn_tasks_ask_for():
    source = (ROOT / "flows" / "extract.py").read_text() + (
        ROOT / "flows" / "retrain.py"
    ).read_text()
    assert f'resources={{"{GPU_RESOURCE}": 1}}' in source
