"""Helpers of the reliability tests: the ``sln`` command in a real process, and the
invariant every fault test ends with (every current case's rows stored exactly once)."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import psutil

from tasks.data.store import FeatureStore
from tasks.data.tables import COHORT, EMBEDDINGS, QUARANTINE, RADIOMICS, current_cohort

ROOT = Path(__file__).resolve().parents[2]
SLN = [sys.executable, "-m", "flows.cli"]


def sln(args: list[str], env: dict[str, str], log: Path) -> subprocess.Popen:
    """``sln <args>`` in its own process (stdout and stderr to ``log``)."""
    handle = open(log, "ab")  # noqa: SIM115 (closed by the child's exit)
    return subprocess.Popen(
        [*SLN, *args],
        cwd=ROOT,
        env={**os.environ, **env},
        stdout=handle,
        stderr=subprocess.STDOUT,
    )


def dask_workers(proc: subprocess.Popen) -> list[psutil.Process]:
    """The Dask worker processes a flow process spawned (its nannies' children)."""
    try:
        children = psutil.Process(proc.pid).children(recursive=True)
    except psutil.NoSuchProcess:
        return []
    out = []
    for child in children:
        try:
            cmd = " ".join(child.cmdline())
        except psutil.Error:
            continue
        if "spawn_main" in cmd and "resource_tracker" not in cmd:
            out.append(child)
    return out


def wait_for(condition: Callable[[], object], proc: subprocess.Popen, timeout: float = 400):
    """Poll ``condition`` (every 20 ms) while ``proc`` runs; its first truthy value, else None."""
    deadline = time.monotonic() + timeout
    while proc.poll() is None and time.monotonic() < deadline:
        if value := condition():
            return value
        time.sleep(0.02)
    return None


def kill_tree(proc: subprocess.Popen) -> None:
    """SIGKILL ``proc`` and every process it spawned (its Dask workers would outlive it)."""
    try:
        children = psutil.Process(proc.pid).children(recursive=True)
    except psutil.NoSuchProcess:
        children = []
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait(timeout=30)
    for child in children:
        try:
            child.kill()
        except psutil.NoSuchProcess:
            pass
    psutil.wait_procs(children, timeout=30)


def loads_torch(worker: psutil.Process) -> bool:
    """True once a worker process has torch mapped (it has started an embedding chunk)."""
    try:
        return "libtorch" in Path(f"/proc/{worker.pid}/maps").read_text()
    except OSError:
        return False


def upload(folder: Path, bucket: str, prefix: str, endpoint: str) -> str:
    """Copy ``folder`` (a manifest and its images) to ``s3://bucket/prefix``."""
    import boto3

    client = boto3.client("s3", endpoint_url=endpoint)
    name = bucket.removeprefix("s3://")
    for path in folder.rglob("*"):
        if path.is_file():
            key = f"{prefix}/{path.relative_to(folder).as_posix()}"
            client.upload_file(str(path), name, key)
    return f"s3://{name}/{prefix}"


def assert_every_case_once(root: str, embeddings: bool = False) -> dict[str, int]:
    """Every current case has its rows, and no table holds a key twice."""
    store = FeatureStore(root)
    counts = {}
    tables = [COHORT, QUARANTINE, RADIOMICS] + ([EMBEDDINGS] if embeddings else [])
    for spec in tables:
        frame = store.read(spec)
        duplicated = frame.duplicated(list(spec.keys)).sum() if not frame.empty else 0
        assert duplicated == 0, f"{spec.name}: {duplicated} duplicated keys"
        counts[spec.name] = len(frame)
    cases = set(current_cohort(store.read(COHORT))["case_id"])
    quarantined = set(store.read(QUARANTINE)["case_id"].dropna()) if counts["quarantine"] else set()
    extracted = set(store.read(RADIOMICS, columns=["case_id"])["case_id"])
    missing = cases - extracted - quarantined
    assert not missing, f"cases without radiomics rows (lost): {sorted(missing)}"
    if embeddings:
        embedded = set(store.read(EMBEDDINGS, columns=["case_id"])["case_id"])
        assert not cases - embedded - quarantined, "cases without embeddings (lost)"
    return counts
