"""What every Dask worker process gets, wherever it runs (local, an existing cluster, Slurm,
Kubernetes, the images): one compute thread per process, the malloc thresholds, Dask's
timers and profiler quieted, and the name of the resource CNN tasks ask for."""

from __future__ import annotations

ONE_THREAD_ENV = {
    "OMP_NUM_THREADS": "1",
    "OPENBLAS_NUM_THREADS": "1",
    "MKL_NUM_THREADS": "1",
    "ITK_GLOBAL_DEFAULT_NUMBER_OF_THREADS": "1",
}
# The Dask resource CNN tasks are annotated with (dask.annotate(resources={GPU_RESOURCE: 1}))
# and GPU workers offer (`dask worker --resources GPU=1`): here, in the Slurm GPU jobs, the
# Kubernetes GPU worker group and the GPU image.
GPU_RESOURCE = "GPU"
# Dask's nanny gives workers MALLOC_TRIM_THRESHOLD_=65536. Setting it also freezes glibc's
# mmap threshold at 128 KiB, so every image-sized numpy array pyradiomics makes is mmap'd,
# page-faulted and munmap'd: measured here, workers then spent about half their CPU in the
# kernel. Trim later and serve arrays up to 64 MiB from the heap.
MALLOC_ENV = {
    "MALLOC_TRIM_THRESHOLD_": str(64 * 2**20),
    "MALLOC_MMAP_THRESHOLD_": str(64 * 2**20),
}
# Dask's housekeeping in every server of a cluster (scheduler, nannies, workers): an
# event-loop latency tick every 20 ms and a psutil sample of the machine every 500 ms by
# default, plus a statistical profiler sampling every worker thread. Batch runs watch none
# of them closely. Measured on two cores: an idle local cluster (scheduler, 2 nannies, 2
# workers) costs about three times the CPU with Dask's settings as with these (`make
# bench`, BENCHMARKS.md's orchestration table); the profiler cost about +20% CPU on a
# radiomics task.
DASK_CONFIG: dict[str, object] = {
    "distributed.admin.tick.interval": "1s",
    "distributed.admin.system-monitor.interval": "2s",
    "distributed.worker.profile.enabled": False,
}


def dask_env(config: dict[str, object]) -> dict[str, str]:
    """``config`` as the ``DASK_*`` variables Dask reads at start-up (for remote workers)."""
    return {
        "DASK_" + key.upper().replace(".", "__").replace("-", "_"): str(value)
        for key, value in config.items()
    }


WORKER_ENV = {**ONE_THREAD_ENV, **MALLOC_ENV, **dask_env(DASK_CONFIG)}
