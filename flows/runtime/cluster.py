"""A real Dask cluster on loopback: a scheduler, CPU workers and one ``GPU=1`` worker as
separate processes (``make cluster``), or one GPU worker joining a scheduler
(``make worker-gpu``). Point flows at it with ``DASK_SCHEDULER_ADDRESS``.

With ``SLN_TLS_DIR`` set (``make cluster TLS=1`` makes the certificates with ``sln certs``),
every process uses TLS with them and the address is ``tls://``; flows reach it with the
same ``SLN_TLS_DIR``."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path

from flows.runtime.env import WORKER_ENV
from flows.runtime.tls import cli_args
from tasks.config import PROJECT_ROOT, Settings

STATE = PROJECT_ROOT / ".dask"


def _cli(*args: str) -> list[str]:
    bindir = Path(sys.executable).parent
    return [str(bindir / "dask"), *args]


def _tls_dir(tls_dir: Path | None) -> Path | None:
    return tls_dir if tls_dir is not None else Settings().tls_dir


def worker_command(scheduler: str, name: str, gpu: bool, tls_dir: Path | None = None) -> list[str]:
    """``dask worker`` for one process and one thread; TLS when ``tls_dir`` (default:
    ``SLN_TLS_DIR``) is set."""
    tls_dir = _tls_dir(tls_dir)
    cmd = _cli(
        "worker",
        scheduler,
        "--nthreads",
        "1",
        "--nworkers",
        "1",
        "--name",
        name,
        "--host",
        "127.0.0.1",
        "--no-dashboard",
        # the worker's HTTP server (health, metrics) runs even without the dashboard
        "--dashboard-address",
        "127.0.0.1:0",
    )
    if gpu:
        cmd += ["--resources", "GPU=1"]
    if tls_dir:
        cmd += cli_args(tls_dir, "worker")
    return cmd


def _env() -> dict[str, str]:
    return {**os.environ, **WORKER_ENV}


def start_cluster(
    cpu_workers: int = 2,
    port: int = 8786,
    state: Path = STATE,
    timeout: float = 60,
    tls_dir: Path | None = None,
) -> str:
    """Start scheduler + workers in the background; return the scheduler address."""
    from distributed import Client

    tls_dir = _tls_dir(tls_dir)
    state.mkdir(parents=True, exist_ok=True)
    address = f"{'tls' if tls_dir else 'tcp'}://127.0.0.1:{port}"
    scheduler = _cli(
        "scheduler",
        "--host",
        "127.0.0.1",
        "--port",
        str(port),
        "--dashboard-address",
        "127.0.0.1:0",
    )
    if tls_dir:
        scheduler += ["--protocol", "tls", *cli_args(tls_dir, "scheduler")]
    specs = [("scheduler", scheduler)]
    specs += [
        (f"cpu-{i}", worker_command(address, f"cpu-{i}", False, tls_dir))
        for i in range(cpu_workers)
    ]
    specs += [("gpu-0", worker_command(address, "gpu-0", True, tls_dir))]
    for name, cmd in specs:
        log = open(state / f"{name}.log", "ab")  # noqa: SIM115 (owned by the process)
        proc = subprocess.Popen(
            cmd, env=_env(), stdout=log, stderr=subprocess.STDOUT, start_new_session=True
        )
        (state / f"{name}.pid").write_text(str(proc.pid))
    sec = None
    if tls_dir:
        from flows.runtime.tls import security

        sec = security(tls_dir)
    with Client(address, timeout=timeout, security=sec) as client:
        client.wait_for_workers(cpu_workers + 1, timeout=timeout)
    return address


def stop_cluster(state: Path = STATE) -> int:
    stopped = 0
    for pid_file in sorted(state.glob("*.pid")):
        try:
            os.killpg(int(pid_file.read_text()), signal.SIGTERM)
            stopped += 1
        except ProcessLookupError:
            pass
        pid_file.unlink()
    return stopped
