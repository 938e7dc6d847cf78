"""What every Dask worker process gets, wherever it runs (local, an existing cluster, Slurm,
Kubernetes, the images): one compute thread per process, the malloc thresholds, and the
name of the resource CNN tasks ask for."""

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
WORKER_ENV = {**ONE_THREAD_ENV, **MALLOC_ENV}
