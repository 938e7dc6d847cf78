"""End to end on real services: a Prefect server, a Dask scheduler with two CPU workers and
one GPU-resource worker as processes, a moto S3 server as the store, and ``sln serve``
running the deployments. The test triggers deployments through the Prefect API, as the
scheduler would."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tasks.data.store import FeatureStore

SLN = str(Path(sys.executable).parent / "sln")


def _wait_for_deployment(name: str, timeout: float = 120) -> None:
    from prefect.client.orchestration import get_client

    deadline = time.monotonic() + timeout
    with get_client(sync_client=True) as client:
        while time.monotonic() < deadline:
            try:
                client.read_deployment_by_name(name)
                return
            except Exception:
                time.sleep(1)
    raise TimeoutError(f"deployment {name} was not registered in {timeout} s")


def _run(name: str, **parameters):
    from prefect.deployments import run_deployment

    run = run_deployment(name, parameters=parameters, timeout=900)
    assert run.state.is_completed(), f"{name}: {run.state.type} {run.state.message}"
    return run


def _result(run) -> dict:
    """The run's summary as the UI shows it: its latest ``cohort-run-counts`` table artifact.

    Flow results are not persisted (patient data must not land in Prefect's result storage),
    so a deployment run's summary is read back from its artifact, not from its state."""
    import json

    import httpx

    assert run.state.is_completed()
    api = os.environ["PREFECT_API_URL"]
    resp = httpx.get(f"{api}/artifacts/cohort-run-counts/latest")
    resp.raise_for_status()
    rows = resp.json()["data"]
    rows = json.loads(rows) if isinstance(rows, str) else rows
    out = {}
    for row in rows:
        value = row["value"]
        try:
            out[row["what"]] = json.loads(value) if isinstance(value, str) else value
        except ValueError:
            out[row["what"]] = value
    return out


@pytest.fixture(scope="module")
def services(tmp_path_factory, prefect_api, s3_endpoint, free_tcp_port):
    import boto3

    from flows.runtime.cluster import start_cluster, stop_cluster
    from tasks.data.sources.synthetic import generate_cohort

    root = tmp_path_factory.mktemp("e2e-services")
    manifest = generate_cohort(root / "cohort", n_patients=12, seed=21)
    bucket = f"sln-e2e-{os.getpid()}"
    boto3.client("s3", endpoint_url=s3_endpoint).create_bucket(Bucket=bucket)
    store = f"s3://{bucket}/store"
    env = {**os.environ, "SLN_CNN_SIZE": "64", "SLN_CNN_BATCH_SIZE": "4"}
    saved = dict(os.environ)
    os.environ.update(SLN_CNN_SIZE="64", SLN_CNN_BATCH_SIZE="4")
    state = root / "dask"
    address = start_cluster(cpu_workers=2, port=free_tcp_port(), state=state)
    env["DASK_SCHEDULER_ADDRESS"] = address
    log = open(root / "serve.log", "wb")  # noqa: SIM115
    serve = subprocess.Popen(
        [SLN, "serve", "--manifest", str(manifest), "--store", store],
        env=env,
        stdout=log,
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )
    try:
        _wait_for_deployment("cohort/nightly")
        yield {"manifest": manifest, "store": store, "address": address, "root": root}
    finally:
        serve.terminate()
        serve.wait(timeout=30)
        stop_cluster(state)
        os.environ.clear()
        os.environ.update(saved)


@pytest.mark.slow
def test_nightly_deployment_on_real_services(services):
    import httpx

    run = _run("cohort/nightly")
    summary = _result(run)
    store = FeatureStore(services["store"])
    cohort = store.read("cohort")
    assert len(cohort) == 12 and summary["cases_new"] == 12

    radiomics = store.read("radiomics")
    # Every case exactly once per extraction settings (a second, image-normalised pass has
    # its own params_hash when SLN_HARMONISATION is auto or image).
    keys = ["case_id", "region", "mask_variant", "params_hash"]
    assert radiomics.groupby(keys).size().max() == 1
    assert set(radiomics["case_id"]) == set(cohort["case_id"])
    embeddings = store.read("embeddings")
    assert embeddings.groupby(["case_id", "mask_variant"]).size().max() == 1
    assert set(embeddings["case_id"]) == set(cohort["case_id"])
    # Every CNN task ran on the GPU-resource worker of the external cluster.
    assert set(embeddings["worker"]) == {"gpu-0"}

    api = os.environ["PREFECT_API_URL"]
    artifacts = httpx.post(
        f"{api}/artifacts/filter",
        json={"artifacts": {"flow_run_id": {"any_": [str(run.id)]}}},
    ).json()
    keys_seen = {a["key"] for a in artifacts}
    assert "cohort-run-summary" in keys_seen
    summary_artifact = next(a for a in artifacts if a["key"] == "cohort-run-summary")
    assert "cases_new | 12" in summary_artifact["data"]


@pytest.mark.slow
def test_backfill_deployment_is_idempotent_and_force_replaces(services):
    store = FeatureStore(services["store"])
    cohort = store.read("cohort")
    dates = sorted(cohort["exam_date"])
    start, end = dates[2], dates[7]
    in_window = int(((cohort["exam_date"] >= start) & (cohort["exam_date"] <= end)).sum())
    before = store.read("radiomics")

    again = _result(_run("backfill/on-demand", exam_from=start, exam_to=end))
    assert again["cases_new"] == 0 and again["cases_skipped"] == in_window
    assert len(store.read("radiomics")) == len(before)

    forced = _result(_run("backfill/on-demand", exam_from=start, exam_to=end, force=True))
    assert forced["cases_new"] == in_window
    after = store.read("radiomics")
    assert len(after) == len(before)
    assert after.groupby(["case_id", "region", "mask_variant", "params_hash"]).size().max() == 1
    replaced = after[after["run_id"] == forced["run_id"]]
    assert replaced["case_id"].nunique() == in_window


def test_store_writing_deployments_run_one_at_a_time():
    # Served (flows/schedules.py) and declared (infra/prefect.yaml) alike: cohort/nightly
    # and backfill/on-demand carry a concurrency limit of 1 that queues, never drops, a run;
    # with `prefect deploy` they also share the store-writers work queue.
    import yaml

    from flows.schedules import deployments
    from tasks.config import INFRA_DIR, Settings

    served = {(d.flow_name, d.name): d for d in deployments(Settings(), manifest="m.csv")}
    for key in [("cohort", "nightly"), ("backfill", "on-demand")]:
        assert served[key].concurrency_limit == 1, key
        assert served[key].concurrency_options.collision_strategy == "ENQUEUE", key
    assert served[("validate", "nightly")].concurrency_limit is None

    spec = yaml.safe_load((INFRA_DIR / "prefect.yaml").read_text())
    writers = [d for d in spec["deployments"] if d["entrypoint"].startswith("flows/cohort.py")]
    assert len(writers) == 2
    for item in writers:
        assert item["concurrency_limit"] == {"limit": 1, "collision_strategy": "ENQUEUE"}
        assert item["work_pool"]["work_queue_name"] == "store-writers"
