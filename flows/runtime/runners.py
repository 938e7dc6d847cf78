"""Where tasks run: ``settings.cluster`` (``SLN_CLUSTER``) picks the Dask cluster.

- ``local`` (the default without ``DASK_SCHEDULER_ADDRESS``): process workers with one
  thread each (pyradiomics and SimpleITK are CPU-bound; threads would fight over the GIL
  and over BLAS pools), BLAS/OMP limited to one thread, and exactly one worker that
  carries the ``GPU=1`` resource, so CNN tasks submitted under
  ``dask.annotate(resources={"GPU": 1})`` all land there (on the CPU when no CUDA device
  exists). One flow run's extractions share one such cluster (:func:`run_cluster`).
- ``address`` (the default with ``DASK_SCHEDULER_ADDRESS`` set): that existing cluster,
  over TLS when ``SLN_TLS_DIR`` holds the certificates (``sln certs``).
- ``slurm``: worker jobs on Slurm through dask-jobqueue, a scheduler per flow run
  (:mod:`flows.runtime.slurm`).
"""

from __future__ import annotations

import contextlib
import os
import time
from collections.abc import Iterator, Mapping
from contextvars import ContextVar
from typing import TYPE_CHECKING

import dask

from flows.runtime.env import DASK_CONFIG, GPU_RESOURCE, MALLOC_ENV, ONE_THREAD_ENV
from tasks.config import Settings

if TYPE_CHECKING:  # distributed and prefect_dask load when a run extracts (about 0.5 s)
    from distributed import SpecCluster
    from prefect_dask import DaskTaskRunner


def local_cluster(
    n_workers: int = 2,
    gpu_workers: int = 1,
    memory_limit: str = "auto",
    dask_config: Mapping[str, object] = DASK_CONFIG,
):
    """A loopback cluster: ``n_workers`` process workers, ``gpu_workers`` of them GPU=1.
    ``dask_config``: Dask settings for its servers ({} keeps Dask's own, for comparison)."""
    from distributed import Nanny, Scheduler, SpecCluster

    env = dict(ONE_THREAD_ENV)
    if os.environ.get("PREFECT_API_URL"):
        env["PREFECT_API_URL"] = os.environ["PREFECT_API_URL"]
    workers = {}
    for i in range(n_workers):
        name = f"gpu-{i}" if i < gpu_workers else f"cpu-{i - gpu_workers}"
        options = {
            "nthreads": 1,
            "env": env,
            "memory_limit": memory_limit,
            "name": name,
            "host": "127.0.0.1",
            "dashboard_address": "127.0.0.1:0",  # the worker's HTTP server: loopback only
        }
        if i < gpu_workers:
            options["resources"] = {GPU_RESOURCE: 1}
        workers[name] = {"cls": Nanny, "options": options}
    scheduler = {
        "cls": Scheduler,
        "options": {"host": "127.0.0.1", "dashboard_address": "127.0.0.1:0"},
    }
    # glibc reads MALLOC_* at process start: they must be in the nanny's pre-spawn env.
    pre_spawn = {**dask.config.get("distributed.nanny.pre-spawn-environ"), **MALLOC_ENV}
    # The scheduler and nannies run in this process, so the quieted timers and profiler
    # (flows.runtime.env.DASK_CONFIG) are set here; the nannies pass them to their workers.
    config = {"distributed.nanny.pre-spawn-environ": pre_spawn, **dask_config}
    with dask.config.set(config):
        return SpecCluster(workers=workers, scheduler=scheduler, name="sln-local")


class RunCluster:
    """A local cluster that every extraction of one flow run shares (the cohort flow's two
    radiomics passes): started at first use, so a run with nothing to extract starts none,
    and closed once at the end. Saves one cluster start, one set of worker imports and one
    shutdown per extra pass. Records the seconds both took, for the run's time split."""

    def __init__(self, n_workers: int):
        self.n_workers = n_workers
        self.cluster: SpecCluster | None = None
        self.start_seconds = 0.0
        self.stop_seconds = 0.0

    def address(self) -> str:
        if self.cluster is None:
            started = time.monotonic()
            self.cluster = local_cluster(n_workers=self.n_workers, gpu_workers=1)
            self.start_seconds = time.monotonic() - started
        return self.cluster.scheduler_address

    def close(self) -> None:
        if self.cluster is not None:
            started = time.monotonic()
            self.cluster.close()
            self.cluster = None
            self.stop_seconds = time.monotonic() - started


_RUN_CLUSTER: ContextVar[RunCluster | None] = ContextVar("sln_run_cluster", default=None)


@contextlib.contextmanager
def run_cluster(settings: Settings) -> Iterator[RunCluster | None]:
    """Within the block, :func:`task_runner` hands out one shared local cluster (yielded);
    for an external cluster (``address``, ``slurm``) nothing changes and None is yielded."""
    if cluster_kind(settings) != "local" or _RUN_CLUSTER.get() is not None:
        yield None
        return
    shared = RunCluster(settings.n_workers)
    token = _RUN_CLUSTER.set(shared)
    try:
        yield shared
    finally:
        _RUN_CLUSTER.reset(token)
        shared.close()


def check_gpu_workers(address: str, timeout: float = 30, security=None) -> list[str]:
    """Names of the workers offering ``GPU``; fail fast when there are none, since CNN
    tasks would otherwise wait forever for a worker that can take them."""
    from distributed import Client

    with Client(address, timeout=timeout, security=security) as client:
        workers = client.scheduler_info(n_workers=-1)["workers"].values()
        names = [str(w.get("name")) for w in workers if w.get("resources", {}).get(GPU_RESOURCE)]
    if not names:
        raise RuntimeError(
            f"the Dask cluster at {address} has no worker with the GPU=1 resource: CNN "
            f"tasks would never start. Add one: make worker-gpu SCHEDULER={address}"
        )
    return names


def cluster_kind(settings: Settings) -> str:
    if settings.cluster != "auto":
        return settings.cluster
    return "address" if settings.dask_scheduler_address else "local"


def task_runner(settings: Settings) -> DaskTaskRunner:
    from prefect_dask import DaskTaskRunner

    kind = cluster_kind(settings)
    if kind == "slurm":
        from flows.runtime.slurm import slurm_task_runner

        return slurm_task_runner(settings)
    if kind == "address":
        if not settings.dask_scheduler_address:
            raise ValueError("SLN_CLUSTER=address needs DASK_SCHEDULER_ADDRESS")
        client_kwargs = {}
        if settings.tls_dir:
            from flows.runtime.tls import security

            client_kwargs["security"] = security(settings.tls_dir)
        check_gpu_workers(settings.dask_scheduler_address, security=client_kwargs.get("security"))
        return DaskTaskRunner(address=settings.dask_scheduler_address, client_kwargs=client_kwargs)
    if (shared := _RUN_CLUSTER.get()) is not None:
        return DaskTaskRunner(address=shared.address())
    return DaskTaskRunner(
        cluster_class=local_cluster,
        cluster_kwargs={"n_workers": settings.n_workers, "gpu_workers": 1},
    )
