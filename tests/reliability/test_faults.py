"""Faults injected into real runs (``sln run`` processes, a real Prefect server, Dask
process workers): each test ends with the same check, every current case's rows stored
exactly once, and the run Completed (or Completed after one plain re-run)."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import time

import pandas as pd
import pytest

from tasks.data.store import FeatureStore
from tasks.data.tables import COHORT, QUARANTINE, RADIOMICS
from tests.reliability.helpers import (
    assert_every_case_once,
    dask_workers,
    kill_tree,
    loads_torch,
    sln,
    upload,
    wait_for,
)
from tests.reliability.s3proxy import FaultyS3Proxy

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
    args += ["--verbose"]  # the INFO line of a wait for the store's writing slot
    logs = [tmp_path / "a.log", tmp_path / "b.log"]
    procs = [sln(args, RADIOMICS_ONLY, log) for log in logs]
    codes = [_finish(p) for p in procs]
    texts = [log.read_text() for log in logs]
    assert codes == [0, 0], [text[-3000:] for text in texts]
    counts = assert_every_case_once(store)
    assert counts["cohort"] == 8
    # The store's writing slot (flows.extract.store_writer): the second run's extraction
    # waited for the first's, so it extracted nothing twice at the same time.
    waits = ["for another run writing this store" in text for text in texts]
    assert sum(waits) == 1, waits
    # ... and then extracted none of the cases the first had stored meanwhile.
    assert sorted("cases_new: 0" in text for text in texts) == [False, True]


def _rerun_once(proc, args, env, log) -> tuple[int, int]:
    """The run's exit code, or (a fault allows it) one plain re-run's; and the run count."""
    rc = _finish(proc)
    if rc == 0:
        return rc, 1
    return _finish(sln(args, env, log)), 2


def test_a_worker_killed_mid_embedding_loses_and_duplicates_nothing(
    tiny_cohort, tmp_path, prefect_api
):
    # The GPU=1 worker (the only one taking CNN chunks) is killed once it has torch loaded,
    # i.e. while it runs an embedding chunk; allowed-failures 0 as above.
    store = str(tmp_path / "store")
    env = {
        "SLN_EMBED": "true",
        "SLN_CNN_SIZE": "64",
        "SLN_CNN_BATCH_SIZE": "4",
        "DASK_DISTRIBUTED__SCHEDULER__ALLOWED_FAILURES": "0",
    }
    args = ["run", str(tiny_cohort), "--store", store, "--workers", "2", "--chunk-size", "1"]
    log = tmp_path / "run.log"
    proc = sln(args, env, log)
    worker = wait_for(lambda: next(filter(loads_torch, dask_workers(proc)), None), proc)
    assert worker, log.read_text()[-3000:]
    os.kill(worker.pid, signal.SIGKILL)
    rc, runs = _rerun_once(proc, args, env, log)
    assert rc == 0, log.read_text()[-4000:]
    assert runs == 1, "the killed worker's embedding chunk was not resubmitted"
    assert "embeddings: a worker died running a chunk; resubmitted once" in log.read_text()
    assert assert_every_case_once(store, embeddings=True)["cohort"] == 8


def test_the_flow_process_killed_mid_run_then_rerun_completes(tiny_cohort, tmp_path, prefect_api):
    # SIGKILL the `sln run` process while it holds the radiomics table's lease (a commit in
    # flight): the lease stays behind; the same command again breaks it (same host, dead
    # pid) and stores the rest.
    store = tmp_path / "store"
    lock = store / "_locks" / "radiomics.lock"
    args = ["run", str(tiny_cohort), "--store", str(store), "--workers", "1", "--chunk-size", "1"]
    log = tmp_path / "run.log"
    proc = sln(args, RADIOMICS_ONLY, log)
    assert wait_for(lock.exists, proc), log.read_text()[-3000:]
    kill_tree(proc)
    assert lock.exists(), "the kill missed the commit: no lease left behind"
    assert json.loads(lock.read_text())["pid"] == proc.pid
    assert _finish(sln(args, RADIOMICS_ONLY, log)) == 0, log.read_text()[-4000:]
    assert not lock.exists()
    assert assert_every_case_once(str(store))["cohort"] == 8


def test_a_backfill_during_the_nightly_run_duplicates_no_key(tiny_cohort, tmp_path, prefect_api):
    # The nightly ingests and extracts everything; a forced backfill over half the exam
    # dates starts as soon as the cohort table exists, so both extract (and one MERGEs)
    # the same keys at once.
    store = str(tmp_path / "store")
    env = RADIOMICS_ONLY | {"SLN_N_WORKERS": "1", "SLN_CHUNK_SIZE": "2"}
    logs = [tmp_path / "nightly.log", tmp_path / "backfill.log"]
    nightly = sln(["run", str(tiny_cohort), "--store", store], env, logs[0])
    assert wait_for(lambda: FeatureStore(store).version(COHORT) is not None, nightly)
    window = ["--from", "2023-01-01", "--to", "2023-03-31", "--force"]
    backfill = sln(["backfill", *window, "--store", store], env, logs[1])
    codes = [_finish(nightly), _finish(backfill)]
    assert codes == [0, 0], [log.read_text()[-3000:] for log in logs]
    assert "cases_new: 0" not in logs[1].read_text()  # the backfill did extract
    assert assert_every_case_once(store)["cohort"] == 8


def test_an_s3_endpoint_failing_a_tenth_of_requests_is_ridden_out(
    tiny_cohort, tmp_path, prefect_api, s3_bucket, s3_endpoint
):
    # Manifest, images and store all on S3 behind a proxy that answers 503 SlowDown or
    # resets the connection for a seeded 10% of requests: the run completes on retries and
    # nothing valid is quarantined.
    data = upload(tiny_cohort.parent, s3_bucket, "cohort", s3_endpoint)
    store = f"{s3_bucket}/store"
    with FaultyS3Proxy(s3_endpoint, share=0.1, seed=11) as proxy:
        env = RADIOMICS_ONLY | {"AWS_ENDPOINT_URL": proxy.url}
        args = ["run", f"{data}/manifest.csv", "--store", store, "--workers", "2"]
        log = tmp_path / "run.log"
        rc, runs = _rerun_once(sln([*args, "--chunk-size", "2"], env, log), args, env, log)
        counts = dict(proxy.counts)
    print("proxy:", counts, "runs:", runs)
    assert rc == 0, log.read_text()[-4000:]
    assert runs == 1, "a transient storage error failed the run"
    assert counts["503"] + counts["reset"] >= 10, counts
    stored = assert_every_case_once(store)
    assert stored["cohort"] == 8 and stored["quarantine"] == 0, FeatureStore(store).read(QUARANTINE)


def test_the_prefect_server_restarted_mid_flow(tiny_cohort, tmp_path, free_tcp_port):
    # A server of its own (the session's serves the other tests), stopped once the first
    # chunk is committed and started again on the same port and database.
    from flows.runtime.server import start_server

    home, port = tmp_path / "prefect", free_tcp_port()
    url, server = start_server(home=home, port=port, timeout=180)
    store = str(tmp_path / "store")
    env = RADIOMICS_ONLY | {"PREFECT_API_URL": url}
    args = ["run", str(tiny_cohort), "--store", store, "--workers", "1", "--chunk-size", "1"]
    log = tmp_path / "run.log"
    try:
        proc = sln(args, env, log)
        assert wait_for(lambda: FeatureStore(store).version(RADIOMICS) is not None, proc)
        os.killpg(server.pid, signal.SIGTERM)
        server.wait(timeout=60)
        down = time.monotonic()
        _, server = start_server(home=home, port=port, timeout=180)
        down, running = time.monotonic() - down, proc.poll() is None
        rc, runs = _rerun_once(proc, args, env, log)
    finally:
        os.killpg(server.pid, signal.SIGTERM)
        server.wait(timeout=60)
    print(f"runs: {runs}, server down {down:.1f} s")
    assert running, "the flow ended before the server came back: no fault was ridden out"
    assert rc == 0, log.read_text()[-4000:]
    assert assert_every_case_once(store)["cohort"] == 8


@pytest.fixture
def small_disk(tmp_path):
    """A 16 MiB tmpfs (root only); unmounted whatever happens."""
    mount = tmp_path / "disk"
    mount.mkdir()
    done = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", "size=16m", "tmpfs", str(mount)], capture_output=True
    )
    if done.returncode:
        pytest.skip(f"cannot mount a tmpfs: {done.stderr.decode().strip()}")
    try:
        yield mount
    finally:
        subprocess.run(["umount", "-l", str(mount)], check=False)


def test_a_full_disk_fails_naming_the_store_and_loses_nothing(
    tiny_cohort, tmp_path, small_disk, prefect_api
):
    # Half the cohort ingested; the disk filled; the full run fails with the store named
    # and the stored rows intact; space freed, the same command completes.
    store = small_disk / "store"
    frame = pd.read_csv(tiny_cohort, dtype=str, keep_default_na=False)
    half = tiny_cohort.with_name("half.csv")
    frame.iloc[:4].to_csv(half, index=False)
    log = tmp_path / "run.log"
    assert _finish(sln(["ingest", str(half), "--store", str(store)], {}, log)) == 0
    filler = small_disk / "filler"
    with contextlib.suppress(OSError), open(filler, "wb", buffering=0) as handle:
        while True:
            handle.write(b"\0" * (1 << 16))
    args = ["run", str(tiny_cohort), "--store", str(store), "--workers", "1"]
    assert _finish(sln(args, RADIOMICS_ONLY, log)) != 0
    text = log.read_text()
    assert f"store {store}: cannot write" in text and "(the store is full)" in text, text[-3000:]
    assert len(FeatureStore(str(store)).read(COHORT)) == 4
    assert not list((store / "_locks").glob("*.lock")), "a lease was left behind"
    filler.unlink()
    assert _finish(sln(args, RADIOMICS_ONLY, log)) == 0, log.read_text()[-4000:]
    assert assert_every_case_once(str(store))["cohort"] == 8
