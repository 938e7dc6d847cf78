"""A Dask cluster on Slurm for sln-radiomics: CPU workers and GPU workers, one scheduler.

Approach. dask-jobqueue's ``SLURMCluster`` is a ``SpecCluster``: it always starts its own
scheduler, and a ``JobQueueCluster`` cannot attach to one that already runs (dask-jobqueue
issue #419, open; #381 asks for exactly this CPU + GPU split). Two ``SLURMCluster`` objects
would be two clusters, and a flow talks to one scheduler. So this script runs ONE
``SLURMCluster`` that owns the scheduler and the CPU worker jobs (one process per core, one
thread each), and starts the GPU workers as plain Slurm jobs from
``infra/hpc/gpu-worker.sbatch`` (``--gres=gpu:1``, ``dask worker --resources GPU=1``),
pointed at ``cluster.scheduler_address``. It submits ``--gpu-jobs`` of them, prints the
scheduler address, keeps running until Ctrl-C (or SIGTERM), then cancels the GPU jobs and
closes the cluster (which cancels the CPU jobs).

The CNN tasks are submitted under ``dask.annotate(resources={"GPU": 1})``, so they run only
on the GPU workers; radiomics chunks run on any worker.

dask-jobqueue is not a dependency of sln-radiomics: ``pip install dask-jobqueue`` into the
same venv first. Run this where the compute nodes can reach it (a service node, or inside a
long-running Slurm job), on a filesystem the nodes share (they start the same Python):

    python infra/hpc/slurm_cluster.py --cpu-jobs 4 --cores 8 --memory 32GB \\
        --queue cpu --gpu-jobs 1 --gpu-queue gpu --account myproject --interface ib0

then, wherever the flows run:

    export DASK_SCHEDULER_ADDRESS=tcp://<printed address>
    export PREFECT_API_URL=http://<prefect host>:4200/api
    sln run manifest.csv --store s3://bucket/store
"""

from __future__ import annotations

import argparse
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
GPU_SBATCH = HERE / "gpu-worker.sbatch"

ONE_THREAD_ENV = {
    "OMP_NUM_THREADS": "1",
    "OPENBLAS_NUM_THREADS": "1",
    "MKL_NUM_THREADS": "1",
    "ITK_GLOBAL_DEFAULT_NUMBER_OF_THREADS": "1",
}

MISSING_JOBQUEUE = (
    "infra/hpc/slurm_cluster.py needs dask-jobqueue, which sln-radiomics does not install.\n"
    "Install it into the same environment:  pip install dask-jobqueue"
)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        description="Dask on Slurm: CPU workers (dask-jobqueue) + GPU workers (sbatch), "
        "one scheduler. Runs until Ctrl-C.",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    p.add_argument("--cpu-jobs", type=int, default=2, help="Slurm jobs of CPU workers")
    p.add_argument("--cores", type=int, default=8, help="cores per CPU job (= worker processes)")
    p.add_argument("--memory", default="32GB", help="memory per CPU job")
    p.add_argument("--walltime", default="12:00:00", help="walltime of every worker job")
    p.add_argument("--queue", default=None, help="partition for CPU jobs (-p)")
    p.add_argument("--account", default=None, help="account for all jobs (-A)")
    p.add_argument("--gpu-jobs", type=int, default=1, help="GPU worker jobs (one GPU each)")
    p.add_argument("--gpu-queue", default=None, help="partition for GPU jobs (-p)")
    p.add_argument(
        "--interface", default=None, help="network interface for scheduler/workers (ib0, eth0)"
    )
    p.add_argument("--port", type=int, default=8786, help="scheduler port (0: any free)")
    p.add_argument("--dashboard-port", type=int, default=8787, help="scheduler dashboard port")
    p.add_argument("--log-directory", default="slurm-logs", help="Slurm job output folder")
    p.add_argument(
        "--local-directory",
        default="${TMPDIR:-/tmp}",
        help="worker scratch (spill) on the nodes (expanded in the job script)",
    )
    p.add_argument(
        "--address-file",
        type=Path,
        default=Path(".dask/slurm-scheduler-address"),
        help="also write the scheduler address here",
    )
    p.add_argument(
        "--dry-run",
        action="store_true",
        help="print the CPU job script and the GPU sbatch command, submit nothing",
    )
    return p.parse_args(argv)


def cpu_cluster_kwargs(args: argparse.Namespace) -> dict:
    """SLURMCluster arguments: one worker process per core, one thread per process."""
    prologue = [f"export {k}={v}" for k, v in ONE_THREAD_ENV.items()]
    if os.environ.get("PREFECT_API_URL"):
        prologue.append(f"export PREFECT_API_URL={os.environ['PREFECT_API_URL']}")
    kwargs = {
        "cores": args.cores,
        "processes": args.cores,  # nthreads = cores / processes = 1
        "memory": args.memory,
        "walltime": args.walltime,
        "job_name": "sln-cpu-worker",
        "job_script_prologue": prologue,
        "local_directory": args.local_directory,
        "log_directory": args.log_directory,
        "python": sys.executable,
        "scheduler_options": {
            "port": args.port,
            "dashboard_address": f":{args.dashboard_port}",
        },
    }
    if args.queue:
        kwargs["queue"] = args.queue
    if args.account:
        kwargs["account"] = args.account
    if args.interface:
        kwargs["interface"] = args.interface
    return kwargs


def gpu_sbatch_command(address: str, args: argparse.Namespace) -> list[str]:
    """The sbatch call for one GPU worker job joining ``address``."""
    export = f"ALL,DASK_SCHEDULER_ADDRESS={address},SLN_PYTHON={sys.executable}"
    if args.interface:  # the same network as the CPU workers
        export += f",SLN_WORKER_EXTRA_ARGS=--interface {args.interface}"
    cmd = ["sbatch", "--parsable", f"--export={export}", f"--time={args.walltime}"]
    cmd += [f"--output={Path(args.log_directory) / 'sln-gpu-worker-%j.out'}"]
    if args.gpu_queue:
        cmd += ["--partition", args.gpu_queue]
    if args.account:
        cmd += ["--account", args.account]
    return [*cmd, str(GPU_SBATCH)]


def submit_gpu_jobs(address: str, args: argparse.Namespace) -> list[str]:
    job_ids = []
    for _ in range(args.gpu_jobs):
        out = subprocess.run(
            gpu_sbatch_command(address, args), capture_output=True, text=True, check=True
        ).stdout
        job_ids.append(out.strip().split(";")[0])  # --parsable: "jobid[;cluster]"
    return job_ids


def cancel_jobs(job_ids: list[str]) -> None:
    if job_ids:
        subprocess.run(["scancel", *job_ids], check=False)


def _raise_interrupt(signum, frame):  # SIGTERM (scancel of this job, kill) -> clean exit
    raise KeyboardInterrupt


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    try:
        from dask_jobqueue import SLURMCluster
    except ImportError as exc:
        raise SystemExit(MISSING_JOBQUEUE) from exc
    if not args.dry_run and shutil.which("sbatch") is None:
        raise SystemExit("sbatch not found: run this on a Slurm login/service node")
    if not os.environ.get("PREFECT_API_URL"):
        print(
            "warning: PREFECT_API_URL is not set; workers need a real Prefect API "
            "(export it before starting, it is passed to every worker job)",
            file=sys.stderr,
        )

    Path(args.log_directory).mkdir(parents=True, exist_ok=True)
    cluster = SLURMCluster(**cpu_cluster_kwargs(args))
    address = cluster.scheduler_address
    if args.dry_run:
        print(cluster.job_script())
        print(" ".join(gpu_sbatch_command(address, args)))
        cluster.close()
        return 0

    gpu_jobs: list[str] = []
    signal.signal(signal.SIGTERM, _raise_interrupt)
    try:
        cluster.scale(jobs=args.cpu_jobs)
        gpu_jobs = submit_gpu_jobs(address, args)
        args.address_file.parent.mkdir(parents=True, exist_ok=True)
        args.address_file.write_text(address + "\n")
        print(f"Dask scheduler: {address}")
        print(f"dashboard:      {cluster.dashboard_link}")
        print(f"CPU jobs: {args.cpu_jobs} x {args.cores} workers; GPU jobs: {gpu_jobs or 'none'}")
        print(f"point the flows at it:  export DASK_SCHEDULER_ADDRESS={address}")
        print("Ctrl-C stops the workers and the scheduler.", flush=True)
        while True:
            time.sleep(60)
            workers = cluster.scheduler_info.get("workers", {}).values()
            gpus = sum(1 for w in workers if w.get("resources", {}).get("GPU"))
            print(f"{time.strftime('%H:%M:%S')} workers: {len(workers)} ({gpus} GPU)", flush=True)
    except KeyboardInterrupt:
        print("stopping", flush=True)
    finally:
        cancel_jobs(gpu_jobs)
        cluster.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
