"""The embedded Prefect server: reuse the one configured, or start (or find) a local one.

Process workers need a real Prefect API (an ephemeral in-process server per Dask worker
times out on these machines), so every flow runs against a server: ``PREFECT_API_URL``
when set, otherwise a local ``prefect server start`` (SQLite under ``.prefect/`` in the
project, offline, UI on 127.0.0.1:4200) that stays up so runs remain visible in the UI.
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

from tasks.config import PROJECT_ROOT

HOST = "127.0.0.1"
PORT = int(os.environ.get("SLN_PREFECT_PORT", "4200"))


def api_url(port: int = PORT) -> str:
    return f"http://{HOST}:{port}/api"


def healthy(url: str, timeout: float = 2.0) -> bool:
    try:
        with urllib.request.urlopen(f"{url.rstrip('/')}/health", timeout=timeout) as resp:
            return resp.status == 200
    except OSError:
        return False


LEASE_STORAGE = "prefect.server.concurrency.lease_storage.filesystem"


def server_env(home: Path) -> dict[str, str]:
    env = dict(os.environ)
    env.update(
        PREFECT_HOME=str(home),
        PREFECT_SERVER_ANALYTICS_ENABLED="false",
        PREFECT_UI_ENABLED=env.get("PREFECT_UI_ENABLED", "true"),
    )
    # Concurrency-slot leases on disk, not in memory: a server restarted while a run holds a
    # store's writer slot (flows/extract.py:store_writer) would otherwise keep it taken for
    # good (measured: tests/reliability/test_store_writer.py).
    env.setdefault("PREFECT_SERVER_CONCURRENCY_LEASE_STORAGE", LEASE_STORAGE)
    # The server must not point at itself through an inherited client setting.
    env.pop("PREFECT_API_URL", None)
    return env


def start_server(
    home: Path | None = None, port: int = PORT, timeout: float = 120.0
) -> tuple[str, subprocess.Popen | None]:
    """Start ``prefect server start`` in the background unless one already answers."""
    url = api_url(port)
    if healthy(url):
        return url, None
    home = home or PROJECT_ROOT / ".prefect"
    home.mkdir(parents=True, exist_ok=True)
    log = open(home / f"server-{port}.log", "ab")  # noqa: SIM115 (owned by the server)
    proc = subprocess.Popen(
        [sys.executable, "-m", "prefect", "server", "start", "--host", HOST, "--port", str(port)],
        env=server_env(home),
        stdout=log,
        stderr=subprocess.STDOUT,
        start_new_session=True,  # outlives the command that started it
    )
    (home / f"server-{port}.pid").write_text(str(proc.pid))
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if healthy(url):
            return url, proc
        if proc.poll() is not None:
            raise RuntimeError(f"Prefect server exited early; see {home / f'server-{port}.log'}")
        time.sleep(1.0)
    proc.terminate()
    raise RuntimeError(f"Prefect server did not answer at {url} within {timeout:.0f} s")


def ensure_api() -> str:
    """Point this process (and the Dask workers it starts) at a live Prefect API."""
    url = os.environ.get("PREFECT_API_URL")
    if url:
        if not healthy(url, timeout=10):
            raise RuntimeError(f"PREFECT_API_URL={url} does not answer /health")
        return url
    url, _ = start_server()
    os.environ["PREFECT_API_URL"] = url
    return url


def stop_server(home: Path | None = None, port: int = PORT) -> bool:
    """Stop a server this module started (its pid file), if it still runs."""
    import signal

    pid_file = (home or PROJECT_ROOT / ".prefect") / f"server-{port}.pid"
    if not pid_file.exists():
        return False
    pid = int(pid_file.read_text())
    pid_file.unlink()
    try:
        os.killpg(pid, signal.SIGTERM)  # its own session: uvicorn workers go too
    except ProcessLookupError:
        return False
    return True
