"""Planning: which mask variants a case has, and which cases still need work."""

from __future__ import annotations

import pandas as pd
import pytest

from tasks.config import Settings
from tasks.data.schema import perturbed_mask_sha
from tasks.features.plan import plan_cases, variant_keys
from tests.tasks.data.rows import case_row


def test_the_setting_is_on_by_default(monkeypatch):
    assert Settings().perturb_repeats is True
    monkeypatch.setenv("SLN_PERTURB_REPEATS", "false")
    assert Settings().perturb_repeats is False


def test_variant_keys():
    assert variant_keys(case_row()) == [("C1", "reader1", "img-C1", "m1-C1")]
    assert variant_keys(case_row(), perturb=True) == [
        ("C1", "reader1", "img-C1", "m1-C1"),
        ("C1", "perturbed", "img-C1", perturbed_mask_sha("m1-C1")),
    ]
    assert variant_keys(case_row(repeat=True), perturb=True) == [
        ("C1", "reader1", "img-C1", "m1-C1"),
        ("C1", "repeat", "img-C1", "rep-C1"),
    ]


def _stored(keys: list[tuple[str, str, str, str]], version: str = "p1") -> pd.DataFrame:
    frame = pd.DataFrame(keys, columns=["case_id", "mask_variant", "image_sha256", "mask_sha256"])
    frame["params_hash"] = version
    return frame


@pytest.fixture
def cohort() -> pd.DataFrame:
    return pd.DataFrame([case_row("A"), case_row("B", repeat=True), case_row("C")])


def test_a_case_without_its_perturbed_rows_is_todo_only_when_perturbing(cohort):
    # Everything stored as before the feature: reader 1 for all, B's repeat.
    stored = _stored([k for case in cohort.to_dict("records") for k in variant_keys(case)])
    plan = plan_cases(cohort, stored, "params_hash", "p1")
    assert plan.todo == [] and plan.skipped == 3
    plan = plan_cases(cohort, stored, "params_hash", "p1", perturb=True)
    assert [c["case_id"] for c in plan.todo] == ["A", "C"]  # B has a real repeat
    assert plan.skipped == 1 and plan.window == 3

    # A's perturbed rows stored: only C is left.
    keys = [k for case in cohort.to_dict("records") for k in variant_keys(case)]
    keys.append(("A", "perturbed", "img-A", perturbed_mask_sha("m1-A")))
    plan = plan_cases(cohort, _stored(keys), "params_hash", "p1", perturb=True)
    assert [c["case_id"] for c in plan.todo] == ["C"]

    # Perturbed rows of another perturbation version (another derived id) do not count.
    keys[-1] = ("A", "perturbed", "img-A", "some-older-perturbation-id")
    plan = plan_cases(cohort, _stored(keys), "params_hash", "p1", perturb=True)
    assert [c["case_id"] for c in plan.todo] == ["A", "C"]


def test_a_new_repeat_delineation_replaces_the_perturbed_variant(cohort):
    keys = [k for case in cohort.to_dict("records") for k in variant_keys(case, perturb=True)]
    assert plan_cases(cohort, _stored(keys), "params_hash", "p1", perturb=True).todo == []
    # C gets a reader-2 delineation (a new case version): it needs reader 2, not perturbed.
    cohort.loc[2, ["bmus_mask_reader2", "bmus_mask_reader2_sha256"]] = ["/d/C_r2.png", "r2-C"]
    plan = plan_cases(cohort, _stored(keys), "params_hash", "p1", perturb=True)
    assert [c["case_id"] for c in plan.todo] == ["C"]
    assert variant_keys(plan.todo[0], perturb=True)[-1][1] == "reader2"


def test_a_plan_survives_the_store_as_json(tmp_path):
    import numpy as np

    from tasks.data.store import FeatureStore
    from tasks.features.plan import EmbeddingWork, Plan, Window, WorkPlan, load_plan, save_plan

    case = {**case_row("A"), "label": np.int8(1), "pixel_spacing_mm": np.float64(0.1)}
    case["ingested_at"] = pd.Timestamp("2024-01-01", tz="UTC")
    work = WorkPlan(
        radiomics=Plan(todo=[case], skipped=2, window=3),
        params={"setting": {"binWidth": 25}},
        embeddings=EmbeddingWork(Plan([case], 0, 1), "random", "start-random", True),
        window=Window("2024-01-01", None, True),
    )
    store = FeatureStore(str(tmp_path))
    uri = save_plan(store, "run-1", work)
    assert uri.endswith("plans/run-1.json")
    back = load_plan(store, "run-1")
    assert back.window == work.window and back.params == work.params
    assert back.radiomics.skipped == 2 and back.embeddings.version == "start-random"
    restored = back.radiomics.todo[0]
    # numbers stay numbers (label 1, not "1"); timestamps become ISO text
    assert restored["label"] == 1 and isinstance(restored["label"], int)
    assert restored["pixel_spacing_mm"] == 0.1
    assert restored["ingested_at"].startswith("2024-01-01")


def test_commit_chunk_stores_rows_once_and_counts(tmp_path):
    from tasks.data.store import FeatureStore
    from tasks.data.tables import QUARANTINE, RADIOMICS
    from tasks.features.plan import ChunkResult, CommitCounts, commit_chunk

    store = FeatureStore(str(tmp_path))
    key = {
        "case_id": "A",
        "mask_variant": "reader1",
        "image_sha256": "i",
        "mask_sha256": "m",
        "params_hash": "p",
    }
    rows = [{**key, "region": region, "f1": 1.0} for region in ("intratumoral", "peritumoral")]
    failure = {"case_id": "B", "column": "bmus_image", "file": "b.png", "reason": "unreadable"}
    result = ChunkResult(rows, [failure], seconds=1.5)
    first = commit_chunk(RADIOMICS, "radiomics", result, store, "run-1")
    assert (first.rows, first.cases, first.failed, first.chunks) == (2, 1, 1, 1)
    again = commit_chunk(RADIOMICS, "radiomics", result, store, "run-2")
    assert again.rows == 0  # nothing stored twice
    stored = store.read(RADIOMICS)
    assert len(stored) == 2 and set(stored["run_id"]) == {"run-1"}
    assert stored["extracted_at"].notna().all()
    assert len(store.read(QUARANTINE)) == 1
    # force replaces in place
    replaced = commit_chunk(RADIOMICS, "radiomics", result, store, "run-3", force=True)
    assert replaced.rows == 2 and set(store.read(RADIOMICS)["run_id"]) == {"run-3"}

    total = CommitCounts()
    total.add(first)
    total.add(replaced)
    assert (total.rows, total.chunks, total.seconds) == (4, 2, 3.0)
