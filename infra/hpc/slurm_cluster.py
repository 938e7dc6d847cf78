"""A standing Dask cluster on Slurm that flows reach through ``DASK_SCHEDULER_ADDRESS``.

The flows do not need this: with ``SLN_CLUSTER=slurm`` each flow run starts its own
scheduler and worker jobs and releases them when it ends (``flows/runtime/slurm.py``).
This script runs the same :class:`~flows.runtime.slurm.SlurmCluster`, built from the same
settings (``SLN_SLURM_*``, ``SLN_TLS_DIR``), as one long-lived scheduler that several flow
runs, or a Prefect worker, share: fixed numbers of CPU and GPU jobs (``--cpu-jobs``,
``--gpu-jobs``) or scaled with the work (``--adapt``). Ctrl-C (or SIGTERM, e.g. scancel
of the job this runs in) cancels every worker job and stops the scheduler.

    python infra/hpc/slurm_cluster.py --cpu-jobs 8 --gpu-jobs 2 --port 8786
    # prints, and writes to .dask/slurm-scheduler-address:
    #   export SLN_CLUSTER=address DASK_SCHEDULER_ADDRESS=tls://10.1.2.3:8786 SLN_TLS_DIR=...

Run it where the compute nodes can reach it (a login/service node, or inside a long Slurm
job), with ``SLN_SLURM_INTERFACE`` set to the nodes' network (``ib0``) and the venv, the
certificates and ``SLN_SLURM_LOG_DIR`` on a filesystem the nodes share. ``--dry-run``
prints the CPU and GPU job scripts and submits nothing.
"""

from __future__ import annotations

import argparse
import signal
import sys
import time
from pathlib import Path

from flows.runtime.slurm import adapt_kwargs, cluster_kwargs, make_cluster, tls_dir
from tasks.config import Settings


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        description="A standing Dask cluster on Slurm (CPU and GPU=1 worker jobs, one "
        "TLS scheduler). Runs until Ctrl-C.",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    p.add_argument("--cpu-jobs", type=int, default=2, help="CPU worker jobs")
    p.add_argument("--gpu-jobs", type=int, default=1, help="GPU=1 worker jobs")
    p.add_argument(
        "--adapt",
        action="store_true",
        help="scale with the work instead (at most SLN_SLURM_CPU_JOBS / SLN_SLURM_GPU_JOBS)",
    )
    p.add_argument("--port", type=int, default=8786, help="scheduler port (0: any free)")
    p.add_argument(
        "--address-file",
        type=Path,
        default=Path(".dask/slurm-scheduler-address"),
        help="write the client environment (export line) here too",
    )
    p.add_argument("--dry-run", action="store_true", help="print the job scripts, submit none")
    return p.parse_args(argv)


def standing_kwargs(settings: Settings, port: int) -> dict:
    kwargs = cluster_kwargs(settings)
    kwargs["scheduler_options"] = {**kwargs["scheduler_options"], "port": port}
    return kwargs


def client_env(address: str, settings: Settings) -> str:
    return (
        f"export SLN_CLUSTER=address DASK_SCHEDULER_ADDRESS={address} "
        f"SLN_TLS_DIR={tls_dir(settings)}"
    )


def _raise_interrupt(signum, frame):  # SIGTERM (scancel of this job, kill) -> clean exit
    raise KeyboardInterrupt


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    settings = Settings()
    cluster = make_cluster(**standing_kwargs(settings, 0 if args.dry_run else args.port))
    try:
        if args.dry_run:
            print(cluster.job_script())
            print(cluster.gpu_job_script())
            return 0
        signal.signal(signal.SIGTERM, _raise_interrupt)
        if args.adapt:
            cluster.adapt(**adapt_kwargs(settings))
        else:
            cluster.scale(args.cpu_jobs)
            cluster.scale_gpu(args.gpu_jobs)
        line = client_env(cluster.scheduler_address, settings)
        args.address_file.parent.mkdir(parents=True, exist_ok=True)
        args.address_file.write_text(line + "\n")
        print(f"Dask scheduler {cluster.scheduler_address} (dashboard {cluster.dashboard_link})")
        print(f"point the flows at it:\n  {line}")
        print("Ctrl-C cancels the worker jobs and stops the scheduler.", flush=True)
        while True:
            time.sleep(60)
            workers = cluster.scheduler_info.get("workers", {}).values()
            gpus = sum(1 for w in workers if w.get("resources", {}).get("GPU"))
            print(f"{time.strftime('%H:%M:%S')} workers: {len(workers)} ({gpus} GPU)", flush=True)
    except KeyboardInterrupt:
        print("stopping", flush=True)
    finally:
        cluster.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
