"""The cohort flow on a DICOM cohort (``sln synth --dicom``): the same radiomics as the same
cohort written as PNG, the pixel size from the ultrasound regions, no header identifier in
the store, the run's logs or its artifacts."""

from __future__ import annotations

import logging

import numpy as np
import pydicom
import pytest

from flows.cohort import cohort as cohort_flow
from tasks.config import Settings
from tasks.data.sources.synthetic import generate_cohort
from tasks.data.store import FeatureStore
from tasks.data.tables import TABLES
from tests.tasks.data.dicom_files import IDENTIFIERS

MANIFEST_VARIANTS = ("reader1", "reader2", "repeat")  # "perturbed" is seeded by the mask
# file's hash, and a SEG is not the PNG's bytes: it is compared as a variant, not a value.


def _plant_identifiers(folder) -> None:
    """What a PACS export carries: real-looking names, ids, dates, institution, accession."""
    for path in folder.rglob("*.dcm"):
        ds = pydicom.dcmread(path)
        for keyword, value in IDENTIFIERS.items():
            setattr(ds, keyword, value)
        ds.save_as(path)


def _api_text(api_url: str) -> str:
    import httpx

    text = ""
    for what in ("logs", "artifacts", "flow_runs", "task_runs"):
        resp = httpx.post(f"{api_url}/{what}/filter", json={"limit": 200})
        resp.raise_for_status()
        text += resp.text
    return text


@pytest.mark.slow
def test_dicom_cohort_gives_the_png_cohorts_radiomics(tmp_path, prefect_api, monkeypatch, caplog):
    monkeypatch.setenv("SLN_CNN_SIZE", "64")
    monkeypatch.setenv("SLN_CNN_BATCH_SIZE", "4")
    caplog.set_level(logging.DEBUG)
    png = generate_cohort(tmp_path / "png", n_patients=6, seed=21, repeat_share=0.5)
    dcm = generate_cohort(tmp_path / "dcm", n_patients=6, seed=21, repeat_share=0.5, dicom=True)
    _plant_identifiers(tmp_path / "dcm")

    stores = {}
    for name, manifest in (("png", png), ("dcm", dcm)):
        settings = Settings(store=str(tmp_path / f"store-{name}"), n_workers=2, chunk_size=3)
        summary = cohort_flow(str(manifest), settings)
        assert summary["cases_new"] == 6 and summary["cases_failed"] == 0, summary
        stores[name] = FeatureStore(settings.store)

    cohort = {name: store.read("cohort").set_index("case_id") for name, store in stores.items()}
    assert (cohort["dcm"]["pixel_spacing_source"] == "us_region").all()
    assert (cohort["png"]["pixel_spacing_source"] == "manifest").all()
    assert np.allclose(cohort["dcm"]["pixel_spacing_mm"], cohort["png"]["pixel_spacing_mm"])

    keys = ["case_id", "region", "mask_variant"]
    radiomics = {}
    for name, store in stores.items():
        table = store.read("radiomics")
        radiomics[name] = table.set_index(keys).sort_index()
    assert set(radiomics["dcm"].index) == set(radiomics["png"].index)
    prefixes = ("original_", "wavelet", "log-")
    features = [c for c in radiomics["png"].columns if c.startswith(prefixes)]
    assert len(features) > 200
    same = radiomics["png"].index.get_level_values("mask_variant").isin(MANIFEST_VARIANTS)
    a = radiomics["png"].loc[same, features].to_numpy(float)
    b = radiomics["dcm"].loc[radiomics["png"].index[same], features].to_numpy(float)
    assert np.allclose(a, b, rtol=1e-9, atol=1e-12, equal_nan=True)
    assert len(stores["dcm"].read("embeddings")) == len(stores["png"].read("embeddings"))

    # No planted identifier in any table, any stored file, the run's logs or artifacts.
    text = "".join(stores["dcm"].read(name).astype(str).to_csv() for name in TABLES)
    blobs = b"".join(p.read_bytes() for p in (tmp_path / "store-dcm").rglob("*") if p.is_file())
    text += caplog.text + _api_text(prefect_api)
    for value in IDENTIFIERS.values():
        for part in {value, value.split("^")[0]}:
            assert part not in text, part
            assert part.encode() not in blobs, part
