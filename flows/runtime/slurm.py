"""Dask workers as Slurm jobs: CPU jobs on one partition, ``GPU=1`` jobs on another, one
scheduler, scaled with the work, every job released when the flow run ends.

Design. dask-jobqueue's ``SLURMCluster`` is a ``SpecCluster``: it starts its own scheduler
and cannot attach to another one (dask-jobqueue #419; #381 asks for a CPU + GPU split), so
two ``SLURMCluster`` objects would be two schedulers, and a flow talks to one. A
``SpecCluster``'s worker specs need not all be alike, though: :class:`SlurmCluster` is one
``SLURMCluster`` whose specs come in two pools, ``cpu-N`` (the CPU partition) and ``gpu-N``
(the GPU partition, ``--gres`` and ``dask worker --resources GPU=1``), each a job with one
worker process and one thread. :class:`PoolAdaptive` scales each pool with the tasks the
scheduler holds (in this process): tasks annotated ``resources={"GPU": 1}`` count for the
GPU pool, the others for the CPU pool, one job per unfinished task up to the pool's
maximum (CPU jobs also at most what the partition runs at once, less the GPU jobs' cores
where the partitions share nodes). GPU jobs are asked for first, so on a small cluster the
CNN's worker is not left queued behind CPU jobs. Jobs that have not started are cancelled
first when the work shrinks; a running worker is retired (its results moved to another
worker) only when it is idle, and never when it holds the last copy of a result. Closing
the cluster, which the Prefect task runner does when the flow run ends, cancels every job.

Environment of the jobs, without ``--export=ALL``: non-secret settings (``SLN_*``,
``PREFECT_*``, ``AWS_*`` such as the endpoint and region, one-thread and malloc settings)
are ``export`` lines in the job script; secrets (``AWS_SECRET_ACCESS_KEY``, ...) are only
*named* in ``#SBATCH --export=NAME,...``, so sbatch copies their values from its own
environment into the job through Slurm's authenticated RPC: they are never written into a
job script, a command line or a log. Slurm keeps a job's environment in slurmctld's state
folder (mode 0600) as it does for any job.

TLS: the scheduler, the workers and the flow's client use the certificates in
``settings.tls_dir`` (:mod:`flows.runtime.tls`; made once in ``.dask/tls`` when unset), so
every comm is ``tls://`` and a peer without a certificate from that CA is refused.

``infra/hpc/slurm_cluster.py`` starts the same :class:`SlurmCluster` as a standing cluster
that flows reach through ``DASK_SCHEDULER_ADDRESS``.
"""

from __future__ import annotations

import itertools
import math
import os
import re
import shlex
import subprocess
import sys
from pathlib import Path

from distributed.deploy.adaptive import Adaptive

from flows.runtime.env import GPU_RESOURCE, WORKER_ENV
from flows.runtime.tls import ensure_certs, security
from tasks.config import PROJECT_ROOT, Settings

POOLS = ("gpu", "cpu")  # GPU jobs are asked for first
# Passed by name only (#SBATCH --export=NAME): their values never enter a file. Besides
# these, any variable of the prefixes below whose name looks like a credential.
SECRET_ENV = (
    "AWS_ACCESS_KEY_ID",
    "AWS_SECRET_ACCESS_KEY",
    "AWS_SESSION_TOKEN",
    "AWS_SECURITY_TOKEN",
    "PREFECT_API_KEY",
    "PREFECT_API_AUTH_STRING",
    "MLFLOW_TRACKING_URI",
)
SECRET_NAME = re.compile(r"SECRET|PASSWORD|TOKEN|API_KEY|AUTH|CREDENTIAL|CONNECTION_URL")
# What the workers get: these prefixes (plus WORKER_ENV), as `export` lines unless secret.
PLAIN_PREFIXES = ("SLN_", "PREFECT_", "AWS_")
# Where the flow process's Dask/Slurm client settings live; not the workers' business.
NOT_FOR_WORKERS = ("SLN_CLUSTER", "DASK_SCHEDULER_ADDRESS")
LOCAL_SLURM_DIR = PROJECT_ROOT / ".slurm"
DEFAULT_TLS_DIR = PROJECT_ROOT / ".dask" / "tls"
ACTIVE_STATES = ("waiting", "queued", "no-worker", "processing")


def pool_of(name: object) -> str:
    return "gpu" if str(name).startswith("gpu-") else "cpu"


def is_secret(name: str) -> bool:
    return name in SECRET_ENV or bool(SECRET_NAME.search(name))


def worker_env(environ: dict[str, str] | None = None) -> tuple[dict[str, str], list[str]]:
    """What the worker jobs get: plain ``{name: value}`` and the names of secrets."""
    environ = dict(os.environ if environ is None else environ)
    plain = dict(WORKER_ENV)
    secrets = [name for name in SECRET_ENV if environ.get(name)]
    for name, value in sorted(environ.items()):
        if name in NOT_FOR_WORKERS or name in SECRET_ENV or not name.startswith(PLAIN_PREFIXES):
            continue
        if is_secret(name):
            secrets.append(name)
        else:
            plain[name] = value
    return plain, secrets


def job_script_prologue(plain: dict[str, str]) -> list[str]:
    return [f"export {name}={shlex.quote(value)}" for name, value in plain.items()]


def export_directive(secrets: list[str]) -> str:
    """``--export`` naming only the secrets (never ALL): sbatch copies their values."""
    return f"--export={','.join(secrets)}" if secrets else "--export=NONE"


def local_slurm_conf() -> Path | None:
    """The one-node Slurm of ``make slurm`` (``infra/hpc/slurm-local.sh``), if it exists."""
    conf = Path(os.environ.get("SLN_SLURM_DIR", LOCAL_SLURM_DIR)) / "slurm.conf"
    return conf if conf.is_file() else None


def use_local_slurm() -> None:
    """Point sbatch/squeue at ``make slurm``'s cluster unless SLURM_CONF says otherwise."""
    if not os.environ.get("SLURM_CONF") and not Path("/etc/slurm/slurm.conf").exists():
        conf = local_slurm_conf()
        if conf:
            os.environ["SLURM_CONF"] = str(conf)


def tls_dir(settings: Settings) -> Path:
    return ensure_certs(settings.tls_dir or DEFAULT_TLS_DIR)


def _site(key: str):
    """A value of dask's ``jobqueue.slurm`` config (e.g. ~/.config/dask/jobqueue.yaml)."""
    import dask

    value = dask.config.get(f"jobqueue.slurm.{key}", None)
    if key == "local-directory":
        return value
    return list(value or [])


def cluster_kwargs(settings: Settings, environ: dict[str, str] | None = None) -> dict:
    """``SlurmCluster`` arguments from the settings: one process with one thread per job."""
    plain, secrets = worker_env(environ)
    loopback = not settings.slurm_interface
    worker_args = ["--no-dashboard"]
    if loopback:
        # the worker's HTTP server (health, metrics) runs even without the dashboard
        worker_args += ["--host", "127.0.0.1", "--dashboard-address", "127.0.0.1:0"]
    kwargs = {
        "cores": 1,
        "processes": 1,
        "memory": settings.slurm_memory,
        "walltime": settings.slurm_walltime,
        "queue": settings.slurm_cpu_partition,
        "gpu_queue": settings.slurm_gpu_partition,
        "gpu_directives": [f"--gres={settings.slurm_gpu_gres}"] if settings.slurm_gpu_gres else [],
        "job_name": "sln-cpu",
        # a site's own dask-jobqueue settings (jobqueue.slurm.*) come first, ours after
        "job_script_prologue": [*_site("job-script-prologue"), *job_script_prologue(plain)],
        "job_extra_directives": [
            *(d for d in _site("job-extra-directives") if not d.startswith("--export")),
            export_directive(secrets),  # the only --export: never ALL
        ],
        "worker_extra_args": [*_site("worker-extra-args"), *worker_args],
        "python": sys.executable,
        "local_directory": _site("local-directory") or "${TMPDIR:-/tmp}",
        "log_directory": str(settings.slurm_log_dir),
        "security": security(tls_dir(settings)),
        "scheduler_options": {
            "port": 0,
            "dashboard_address": "127.0.0.1:0" if loopback else ":0",
            **({"host": "127.0.0.1"} if loopback else {}),
        },
    }
    if settings.slurm_interface:
        kwargs["interface"] = settings.slurm_interface
    if settings.slurm_account:
        kwargs["account"] = settings.slurm_account
    return kwargs


def partition_cpus(partition: str) -> dict[str, int]:
    """``{node: CPUs}`` of a partition from ``sinfo``; empty when sinfo cannot tell."""
    try:
        out = subprocess.run(
            ["sinfo", "-h", "-N", "-p", partition, "-o", "%N %c"],
            capture_output=True,
            text=True,
            timeout=30,
            check=True,
        ).stdout
    except (OSError, subprocess.SubprocessError):
        return {}
    nodes = {}
    for line in out.splitlines():
        name, _, cpus = line.partition(" ")
        if cpus.strip().isdigit():
            nodes[name] = int(cpus)
    return nodes


def cpu_job_cap(cpu_partition: str, gpu_partition: str, gpu_jobs: int) -> int | None:
    """CPU jobs that can run at once (one core each), leaving cores for ``gpu_jobs`` when
    the two partitions share nodes (as on ``make slurm``'s one node): more would only wait
    in the queue, and a GPU job queued behind them would hold the CNN back until the
    radiomics is done. None when sinfo cannot tell."""
    cpu, gpu = partition_cpus(cpu_partition), partition_cpus(gpu_partition)
    if not cpu:
        return None
    shared = sum(cores for node, cores in cpu.items() if node in gpu)
    reserved = min(gpu_jobs, shared)
    return max(1, sum(cpu.values()) - reserved)


def adapt_kwargs(settings: Settings) -> dict:
    return {
        "minimum": 0,
        "maximum": settings.slurm_cpu_jobs,
        "gpu_maximum": settings.slurm_gpu_jobs,
    }


def make_cluster(**kwargs):
    """A :class:`SlurmCluster` (the class is defined on first use: dask-jobqueue is needed
    only with ``SLN_CLUSTER=slurm``)."""
    use_local_slurm()
    return slurm_cluster_class()(**kwargs)


def slurm_task_runner(settings: Settings):
    from prefect_dask import DaskTaskRunner

    return DaskTaskRunner(
        cluster_class=make_cluster,
        cluster_kwargs=cluster_kwargs(settings),
        adapt_kwargs=adapt_kwargs(settings),
    )


class PoolAdaptive(Adaptive):
    """Adaptive scaling of a :class:`SlurmCluster`'s two pools (see the module docstring).

    ``minimum``/``maximum`` bound the CPU pool, ``gpu_minimum``/``gpu_maximum`` the GPU
    pool; ``wait_count`` adapt intervals pass before a worker is retired."""

    def __init__(self, cluster, gpu_minimum: int = 0, gpu_maximum: int = 1, **kwargs):
        self.bounds = {"gpu": (gpu_minimum, gpu_maximum)}
        self.close_since: dict[str, int] = {}
        super().__init__(cluster, **kwargs)
        self.bounds["cpu"] = (self.minimum, self.maximum)

    def wanted(self) -> dict[str, int]:
        """Unfinished tasks per pool, read from the scheduler in this process."""
        counts = {"gpu": 0, "cpu": 0}
        for ts in self.cluster.scheduler.tasks.values():
            if ts.state in ACTIVE_STATES:
                gpu = GPU_RESOURCE in (ts.resource_restrictions or {})
                counts["gpu" if gpu else "cpu"] += 1
        return counts

    def targets(self) -> dict[str, int]:
        wanted = self.wanted()
        out = {}
        for pool in POOLS:
            low, high = self.bounds[pool]
            out[pool] = int(max(low, min(high, wanted[pool])))
        return out

    def closable(self, pool: str, count: int, closing: set[str]) -> list[str]:
        """Up to ``count`` names in ``pool``: jobs not started yet, then idle workers whose
        results another worker can take (``closing``: names already chosen)."""
        plan = [name for name in self.cluster.worker_spec if pool_of(name) == pool]
        running = {str(ws.name): ws for ws in self.cluster.scheduler.workers.values()}
        out = [name for name in reversed(plan) if name not in running][:count]
        idle = [ws for name, ws in running.items() if pool_of(name) == pool and not ws.processing]
        for ws in sorted(idle, key=lambda ws: ws.nbytes):
            if len(out) >= count:
                break
            staying = set(running) - closing - set(out) - {str(ws.name)}
            if ws.nbytes == 0 or staying:
                out.append(str(ws.name))
        return out

    async def adapt(self) -> None:
        if self._adapting:  # one adapt at a time, as in AdaptiveCore
            return
        self._adapting = True
        try:
            targets = self.targets()
            candidates: set[str] = set()
            for pool in POOLS:
                plan = sum(1 for name in self.cluster.worker_spec if pool_of(name) == pool)
                if targets[pool] > plan:
                    self.log.append((pool, "up", targets[pool]))
                    self.cluster.scale_pool(pool, targets[pool])
                    await self.cluster  # submitted (sbatch) before the next pool's jobs
                elif targets[pool] < plan:
                    candidates |= set(self.closable(pool, plan - targets[pool], candidates))
            # retire only what stayed a candidate for `wait_count` intervals in a row
            self.close_since = {n: self.close_since.get(n, 0) + 1 for n in candidates}
            firm = [n for n, seen in self.close_since.items() if seen >= self.wait_count]
            if firm:
                self.log.append(("down", firm))
                for name in firm:
                    del self.close_since[name]
                await self.scale_down(firm)
        finally:
            self._adapting = False


_CLASS = None


def slurm_cluster_class():
    """``SlurmCluster``: built on first use so that importing this module needs no
    dask-jobqueue."""
    global _CLASS
    if _CLASS is not None:
        return _CLASS
    from dask_jobqueue import SLURMCluster

    class SlurmCluster(SLURMCluster):
        """One scheduler; worker jobs in two pools, ``cpu-N`` on ``queue`` and ``gpu-N``
        on ``gpu_queue`` with ``gpu_directives`` and the Dask resource ``GPU=1``."""

        def __init__(self, *, gpu_queue: str = "gpu", gpu_directives=(), **kwargs):
            self._counters = {pool: itertools.count() for pool in POOLS}
            self._gpu_queue = gpu_queue
            super().__init__(**kwargs)
            base = self._job_kwargs
            self._pool_options = {
                "cpu": dict(base),
                "gpu": {
                    **base,
                    "queue": gpu_queue,
                    "job_name": "sln-gpu",
                    "worker_extra_args": [
                        *base.get("worker_extra_args", []),
                        "--resources",
                        f"{GPU_RESOURCE}=1",
                    ],
                    "job_extra_directives": [
                        *base.get("job_extra_directives", []),
                        *gpu_directives,
                    ],
                },
            }

        def new_pool_spec(self, pool: str) -> dict:
            name = f"{pool}-{next(self._counters[pool])}"
            while name in self.worker_spec:
                name = f"{pool}-{next(self._counters[pool])}"
            options = {**self._pool_options[pool], "job_name": f"sln-{name}"}
            return {name: {"cls": self.job_cls, "options": options}}

        def new_worker_spec(self) -> dict:
            return self.new_pool_spec("cpu")

        def pool(self, pool: str) -> list[str]:
            return [name for name in self.worker_spec if pool_of(name) == pool]

        def scale_pool(self, pool: str, jobs: int) -> None:
            """``jobs`` jobs in ``pool``: drop not-yet-started ones first, newest first."""
            names = self.pool(pool)
            if len(names) > jobs:
                started = {str(w["name"]) for w in self.scheduler_info["workers"].values()}
                order = [n for n in reversed(names) if n not in started]
                order += [n for n in reversed(names) if n in started]
                for name in order[: len(names) - jobs]:
                    del self.worker_spec[name]
            for _ in range(jobs - len(names)):
                self.worker_spec.update(self.new_pool_spec(pool))
            self.loop.add_callback(self._correct_state)

        def scale(self, n=None, jobs=0, memory=None, cores=None):
            """Scale the CPU pool (dask-jobqueue's meaning of ``scale``)."""
            if n is not None:
                jobs = n
            if memory is not None or cores is not None:
                raise ValueError("SlurmCluster.scale takes a number of CPU jobs")
            self.scale_pool("cpu", int(jobs))

        def scale_gpu(self, jobs: int) -> None:
            self.scale_pool("gpu", int(jobs))

        async def _close(self):
            # SpecCluster._close scales to 0 through `scale`, which means the CPU pool here:
            # drop the GPU jobs too, so that every job is cancelled, not just orphaned.
            for name in self.pool("gpu"):
                del self.worker_spec[name]
            await super()._close()

        def adapt(self, minimum=0, maximum=math.inf, gpu_minimum=0, gpu_maximum=1, **kw):
            queue = self._job_kwargs.get("queue")
            cap = cpu_job_cap(queue, self._gpu_queue, gpu_maximum) if queue else None
            maximum = min(maximum, cap) if cap is not None else maximum
            maximum = maximum if math.isinf(maximum) else int(maximum)
            return super().adapt(
                Adaptive=PoolAdaptive,
                minimum=minimum,
                maximum=maximum,
                gpu_minimum=gpu_minimum,
                gpu_maximum=gpu_maximum,
                **kw,
            )

        def gpu_job_script(self) -> str:
            opts = {**self._pool_options["gpu"], "job_name": "sln-gpu-N"}
            return self.job_cls(self.scheduler_address, name="gpu-N", **opts).job_script()

    _CLASS = SlurmCluster
    return _CLASS
