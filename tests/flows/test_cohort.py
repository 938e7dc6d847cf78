"""The cohort flow under a real Prefect server, real Dask process workers, local and S3 stores."""

from __future__ import annotations

import pandas as pd
import pytest

from flows.cohort import cohort as cohort_flow
from tasks.config import Settings
from tasks.data.store import FeatureStore


def _artifact(api_url: str, key: str, run_id: str) -> dict:
    """The artifact ``key`` of one flow run (the server is shared by the whole session)."""
    import httpx

    flow_run_id = run_id.removeprefix("cohort-")
    query = {"artifacts": {"key": {"any_": [key]}, "flow_run_id": {"any_": [flow_run_id]}}}
    resp = httpx.post(f"{api_url}/artifacts/filter", json=query)
    resp.raise_for_status()
    found = resp.json()
    assert len(found) == 1, f"{len(found)} artifacts {key} for run {run_id}"
    return found[0]


@pytest.fixture(autouse=True)
def small_cnn(monkeypatch):
    # Small crops keep CPU embedding fast; the code path is the same as at 224 px.
    monkeypatch.setenv("SLN_CNN_SIZE", "64")
    monkeypatch.setenv("SLN_CNN_BATCH_SIZE", "4")


@pytest.mark.slow
def test_cohort_flow_extracts_once_and_quarantines_bad_cases(tiny_cohort, tmp_path, prefect_api):
    # One case whose mask is too small for pyradiomics' minimum ROI: extraction fails, the
    # case is quarantined with the reason, the other cases land.
    import numpy as np
    from PIL import Image

    frame = pd.read_csv(tiny_cohort, dtype=str, keep_default_na=False)
    shape = np.asarray(Image.open(tiny_cohort.parent / frame.loc[0, "bmus_image"])).shape
    tiny = np.zeros(shape, np.uint8)
    tiny[40:43, 40:43] = 255
    Image.fromarray(tiny).save(tiny_cohort.parent / "images" / "tiny_mask.png")
    frame.loc[0, "bmus_mask"] = "images/tiny_mask.png"
    frame.to_csv(tiny_cohort, index=False)

    settings = Settings(store=str(tmp_path / "store"), n_workers=2, chunk_size=1)
    first = cohort_flow(str(tiny_cohort), settings)
    assert first["cases_new"] == 7 and first["cases_failed"] == 1
    # The run's time split: each part measured, none larger than the whole.
    assert 0 < first["cluster_start_seconds"] < first["extract_seconds"]
    assert 0 < first["commit_seconds"] < first["extract_seconds"] < first["seconds"]
    assert first["cluster_stop_seconds"] > 0 and first["ingest_plan_seconds"] > 0
    store = FeatureStore(settings.store)
    radiomics = store.read("radiomics")
    assert set(radiomics["case_id"]) == {f"T{i:03d}" for i in range(1, 8)}
    assert set(radiomics["region"]) == {"intratumoral", "peritumoral"}
    # No repeat delineations in this cohort: a perturbed-mask variant stands in for ICC.
    assert set(radiomics["mask_variant"]) == {"reader1", "perturbed"}
    assert len(radiomics) == 7 * 2 * 2
    features = [c for c in radiomics.columns if c.startswith(("original_", "wavelet", "log-"))]
    assert len(features) > 200
    assert not radiomics[features].isna().all().any()
    assert (
        radiomics["params_hash"].nunique() == 1
        and radiomics["run_id"].str.startswith("cohort-").all()
    )
    quarantine = store.read("quarantine")
    failed = quarantine[quarantine["stage"] == "radiomics"]
    assert failed["case_id"].tolist() == ["T000"]
    assert "tiny_mask.png" in failed["file"].iloc[0]

    artifact = _artifact(prefect_api, "cohort-run-summary", first["run_id"])
    assert "cases_new | 7" in artifact["data"]

    # Embeddings: every case (the tiny mask still gives a crop), start weights named.
    embeddings = store.read("embeddings")
    assert sorted(set(embeddings["case_id"])) == [f"T{i:03d}" for i in range(8)]
    assert len(embeddings) == 8 * 2
    assert embeddings["model_version"].str.startswith("start-").all()
    assert first["model_version"] == embeddings["model_version"].iloc[0]
    assert {len(v) for v in embeddings["fused"]} == {2560}
    # GPU routing: every CNN chunk ran on the one GPU-resource worker, none elsewhere.
    assert set(embeddings["worker"]) == {"gpu-0"}
    assert first["embedding_workers"] == ["gpu-0"]

    second = cohort_flow(str(tiny_cohort), settings)
    assert second["cases_new"] == 0 and second["cases_embedded"] == 0
    assert len(store.read("radiomics")) == 28
    assert len(store.read("embeddings")) == 16


@pytest.mark.slow
def test_both_radiomics_passes_share_one_cluster_and_tables_get_compacted(
    tiny_cohort, tmp_path, prefect_api, monkeypatch
):
    """Harmonisation 'image': radiomics as stored, then image-normalised, on one local
    cluster; each pass's eight one-case chunks are compacted once past five files."""
    from flows.runtime import runners

    started, real_cluster = [], runners.local_cluster  # count the (real) clusters started
    monkeypatch.setattr(
        runners, "local_cluster", lambda **kw: started.append(kw) or real_cluster(**kw)
    )
    settings = Settings(
        store=str(tmp_path / "store"),
        n_workers=2,
        chunk_size=1,
        harmonisation="image",
        embed=False,
        perturb_repeats=False,
        compact_at_files=5,
    )
    summary = cohort_flow(str(tiny_cohort), settings)
    assert len(started) == 1
    assert summary["radiomics_rows"] == summary["radiomics_rows_normalised"] == 8 * 2
    store = FeatureStore(settings.store)
    radiomics = store.read("radiomics")
    assert radiomics.groupby("params_hash").size().tolist() == [16, 16]
    assert not radiomics.duplicated(["case_id", "region", "params_hash"]).any()
    history = [h["operation"] for h in store.table("radiomics").history()]
    assert history.count("OPTIMIZE") == 2  # once after each pass
    assert len(store.table("radiomics").file_uris()) == 1
    assert summary["commit_seconds"] > 0


@pytest.mark.slow
def test_cohort_flow_on_s3_store(tiny_cohort, s3_bucket, prefect_api):
    settings = Settings(store=f"{s3_bucket}/store", n_workers=2, chunk_size=4)
    summary = cohort_flow(str(tiny_cohort), settings)
    assert summary["cases_new"] == 8
    radiomics = FeatureStore(settings.store).read("radiomics")
    assert len(radiomics) == 8 * 2 * 2  # reader1 + perturbed, two regions
    assert radiomics.groupby(["case_id", "region", "mask_variant"]).size().max() == 1
    assert len(FeatureStore(settings.store).read("embeddings")) == 8 * 2


@pytest.mark.slow
def test_radiomics_only_mode_skips_the_cnn(tiny_cohort, tmp_path, prefect_api, monkeypatch):
    monkeypatch.setenv("SLN_EMBED", "false")
    monkeypatch.setenv("SLN_PERTURB_REPEATS", "false")
    settings = Settings(store=str(tmp_path / "store"), n_workers=2)
    summary = cohort_flow(str(tiny_cohort), settings)
    assert summary["cases_new"] == 8 and summary["cases_embedded"] == 0
    assert summary["model_version"] is None
    store = FeatureStore(settings.store)
    assert set(store.read("radiomics")["mask_variant"]) == {"reader1"}
    assert store.read("embeddings").empty
