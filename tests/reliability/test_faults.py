"""Faults injected into real runs (``sln run`` processes, a real Prefect server, Dask
process workers): each test ends with the same check, every current case's rows stored
exactly once, and the run Completed (or Completed after one plain re-run)."""

from __future__ import annotations

import os
import signal
import time

import pytest

from tasks.data.store import FeatureStore
from tasks.data.tables import RADIOMICS
from tests.reliability.helpers import assert_every_case_once, dask_workers, sln

pytestmark = pytest.mark.slow

RADIOMICS_ONLY = {"SLN_EMBED": "false"}


def _finish(proc, timeout=600) -> int:
    try:
        return proc.wait(timeout=timeout)
    except Exception:
        proc.kill()
        raise


def test_a_worker_killed_mid_radiomics_loses_and_duplicates_nothing(
    tiny_cohort, tmp_path, prefect_api
):
    # allowed-failures 0: the scheduler gives up on a chunk at its first dead worker, so
    # the flow sees KilledWorker (with the default 3 Dask reschedules it by itself).
    store = str(tmp_path / "store")
    env = RADIOMICS_ONLY | {"DASK_DISTRIBUTED__SCHEDULER__ALLOWED_FAILURES": "0"}
    args = ["run", str(tiny_cohort), "--store", store, "--workers", "2", "--chunk-size", "1"]
    log = tmp_path / "run.log"
    proc = sln(args, env, log)
    killed = None
    deadline = time.monotonic() + 400
    while proc.poll() is None and time.monotonic() < deadline:
        workers = dask_workers(proc)
        # Kill once the first chunk is committed: the workers are busy with the next ones.
        if len(workers) == 2 and FeatureStore(store).version(RADIOMICS) is not None:
            killed = workers[0].pid
            os.kill(killed, signal.SIGKILL)
            break
        time.sleep(0.2)
    assert killed, log.read_text()[-3000:]
    rc = _finish(proc)
    runs = 1
    if rc != 0:  # allowed: one plain re-run completes the rest
        rc, runs = _finish(sln(args, env, log)), 2
    assert rc == 0, log.read_text()[-4000:]
    assert runs == 1, "the killed worker's chunk was not resubmitted"
    assert "resubmitted once" in log.read_text()
    counts = assert_every_case_once(store)
    assert counts["cohort"] == 8


@pytest.mark.parametrize("where", ["folder", "s3"])
def test_two_cohort_runs_at_once_store_every_key_once(
    tiny_cohort, tmp_path, prefect_api, where, request
):
    # The manifest's images stay local; the store is a folder or a bucket on moto.
    if where == "folder":
        store = str(tmp_path / "store")
    else:
        store = f"{request.getfixturevalue('s3_bucket')}/store"
    args = ["run", str(tiny_cohort), "--store", store, "--workers", "1", "--chunk-size", "2"]
    logs = [tmp_path / "a.log", tmp_path / "b.log"]
    procs = [sln(args, RADIOMICS_ONLY, log) for log in logs]
    codes = [_finish(p) for p in procs]
    assert codes == [0, 0], [log.read_text()[-3000:] for log in logs]
    counts = assert_every_case_once(store)
    assert counts["cohort"] == 8
