"""Leaks sought: patient identifiers, DICOM-like identifiers, the pseudonymisation key and
an AWS secret are planted in the input and the environment; cohort, retrain and validate
run as real ``sln`` processes against their own Prefect server; then every byte the runs
wrote (the store with MLflow, the Prefect home and server database, the captured logs) is
searched. Also: every listener of the local stack (Prefect server, Dask scheduler,
dashboard, workers) is on loopback."""

from __future__ import annotations

import hashlib
import os
import sqlite3
import threading
import time
from pathlib import Path

import pandas as pd
import psutil
import pytest

from tests.conftest import free_port, original_only_params
from tests.reliability.helpers import sln

# Three flows on 40 patients: longer than the default per-test timeout on two shared cores.
pytestmark = [pytest.mark.slow, pytest.mark.timeout(1800)]

SMALL_CNN = {"SLN_CNN_SIZE": "64", "SLN_CNN_EPOCHS": "1", "SLN_CNN_BATCH_SIZE": "8"}
AWS_SECRET = "ZqxAwsSecret/8f3kQ0vPlanted+Key0123456789"
PSEUDONYM_KEY = "zqx-pseudonym-key-planted-" + "5" * 40
LOOPBACK = {"127.0.0.1", "::1", "::ffff:127.0.0.1"}


def _plant(manifest: Path) -> dict[str, list[str]]:
    """Patient ids (7-digit MRNs) and DICOM-like extra columns in the manifest."""
    frame = pd.read_csv(manifest, dtype=str, keep_default_na=False)
    patients = {p: f"{9300001 + i}" for i, p in enumerate(sorted(set(frame["patient_id"])))}
    frame["patient_id"] = frame["patient_id"].map(patients)
    frame["PatientName"] = [f"Zqxdoe^Jane{i:03d}" for i in range(len(frame))]
    frame["PatientID"] = "ZQXPID-" + frame["patient_id"]
    frame["PatientBirthDate"] = "19020304"
    frame["AccessionNumber"] = [f"ZQXACC{i:05d}" for i in range(len(frame))]
    frame.to_csv(manifest, index=False)
    mrns = sorted(patients.values())
    old = [hashlib.sha256(f"sln-patient:20250101:{m}".encode()).hexdigest()[:16] for m in mrns]
    return {
        "patient id": [f"ZQXPID-{m}" for m in mrns] + [f",{m}," for m in mrns],
        "seed-keyed pseudonym": old,
        "PatientName": ["Zqxdoe^Jane"],
        "birth date": ["19020304"],
        "AccessionNumber": ["ZQXACC"],
        "AWS secret": [AWS_SECRET],
        "pseudonymisation key": [PSEUDONYM_KEY],
    }


def _listeners(pids: list[int]) -> set[tuple[str, int, int]]:
    out = set()
    for pid in pids:
        try:
            procs = [psutil.Process(pid), *psutil.Process(pid).children(recursive=True)]
        except psutil.NoSuchProcess:
            continue
        for proc in procs:
            try:
                conns = proc.net_connections(kind="inet")
            except psutil.Error:
                continue
            for c in conns:
                if c.status == psutil.CONN_LISTEN:
                    out.add((c.laddr.ip, c.laddr.port, proc.pid))
    return out


def _files(*roots: Path):
    for root in roots:
        for path in root.rglob("*"):
            if path.is_file() and not path.is_symlink():
                yield path


def test_nothing_identifying_is_written_anywhere_and_every_listener_is_loopback(
    tmp_path, monkeypatch
):
    from flows.runtime.server import start_server
    from tasks.data.sources.synthetic import generate_cohort

    # 40 patients (the smallest cohort whose training split has the 10 cases per class that
    # LASSO's 10-fold CV needs) and the original image only: the leaks sought do not depend
    # on how many features a case has, and the test stays a few minutes long.
    manifest = generate_cohort(tmp_path / "cohort", n_patients=40, seed=13)
    needles = _plant(manifest)
    server_home, client_home = tmp_path / "server-home", tmp_path / "client-home"
    store, logs = tmp_path / "store", tmp_path / "logs"
    logs.mkdir()
    url, server = start_server(home=server_home, port=free_port(), timeout=180)
    for key in [k for k in os.environ if k.startswith("AWS_")]:
        monkeypatch.delenv(key)
    env = SMALL_CNN | {
        "PREFECT_API_URL": url,
        "PREFECT_HOME": str(client_home),
        "AWS_ACCESS_KEY_ID": "AKIAZQXPLANTED000000",
        "AWS_SECRET_ACCESS_KEY": AWS_SECRET,
        "SLN_PSEUDONYM_KEY": PSEUDONYM_KEY,
        "MLFLOW_TRACKING_URI": "",
        "SLN_RADIOMICS_PARAMS": str(original_only_params(tmp_path)),
    }
    seen: set[tuple[str, int, int]] = set()
    try:
        cohort = sln(
            ["run", str(manifest), "--store", str(store), "--workers", "2"],
            env,
            logs / "cohort.log",
        )
        stop = threading.Event()

        def sample() -> None:
            while not stop.is_set():
                seen.update(_listeners([cohort.pid, server.pid]))
                time.sleep(0.5)

        sampler = threading.Thread(target=sample, daemon=True)
        sampler.start()
        assert cohort.wait(timeout=1200) == 0, (logs / "cohort.log").read_text()[-4000:]
        stop.set()
        sampler.join()
        retrain = sln(
            ["retrain", "--store", str(store), "--workers", "2"], env, logs / "retrain.log"
        )
        assert retrain.wait(timeout=1200) == 0, (logs / "retrain.log").read_text()[-4000:]
        validate = sln(
            ["validate", "--store", str(store), "--workers", "2", "--auc-floor", "0"],
            env,
            logs / "validate.log",
        )
        assert validate.wait(timeout=900) == 0, (logs / "validate.log").read_text()[-4000:]
    finally:
        if server is not None:
            server.terminate()
            server.wait(timeout=30)

    # Every byte written: the store (tables, plans, reports, MLflow), the Prefect homes
    # (local result storage, the server's SQLite database and its WAL), the logs.
    found = []
    files = list(_files(store, server_home, client_home, logs))
    assert any(p.name.endswith(".db") for p in files)  # the server's and MLflow's databases
    for path in files:
        data = path.read_bytes()
        for what, values in needles.items():
            for value in values:
                if value.encode() in data:
                    found.append(f"{what} ({value}) in {path.relative_to(tmp_path)}")
    assert not found, "\n".join(found[:40])
    # Prefect keeps no persisted results (plans, chunk rows) anywhere.
    assert not list(_files(client_home / "storage")) if (client_home / "storage").exists() else True
    # Logs name no image file: not in the captured output, not in the server's log table.
    images = str(tmp_path / "cohort" / "images")
    for path in logs.iterdir():
        assert images not in path.read_text(errors="replace"), path.name
    db = next(server_home.rglob("prefect.db"))
    with sqlite3.connect(db) as con:
        messages = [m for (m,) in con.execute("select message from log")]
    assert messages and not [m for m in messages if images in m]

    # Every listener seen while the cohort ran: the Prefect server, the Dask scheduler,
    # its dashboard, the nannies and workers (their comms and HTTP servers); all on loopback.
    assert len({port for _, port, _ in seen}) >= 4, seen
    exposed = sorted((ip, port, pid) for ip, port, pid in seen if ip not in LOOPBACK)
    assert not exposed, f"listeners on other interfaces (ip, port, pid): {exposed}"
