"""Splits: grouped by patient, stratified, seeded, and never moving an assigned patient."""

from __future__ import annotations

import numpy as np
import pandas as pd

from tasks.config import Settings
from tasks.data.splits import _check_patient_splits, _train_test, assign_splits


def _cohort(patients: list[str], sites: list[str] | None = None, labels=None) -> pd.DataFrame:
    n = len(patients)
    return pd.DataFrame(
        {
            "case_id": [f"c{i}" for i in range(n)],
            "patient_key": patients,
            "site": sites or ["A"] * n,
            "label": pd.array(labels if labels is not None else [0] * n, dtype="Int8"),
            "split": pd.array([None] * n, dtype="string"),
            "split_source": pd.array([None] * n, dtype="string"),
        }
    )


def test_derived_splits_group_by_patient_and_stratify(tmp_path):
    rng = np.random.default_rng(0)
    n = 300
    patients = [f"p{i // 2}" for i in range(n)]  # two lesions per patient
    labels = [int(rng.random() < 0.4) for _ in range(n // 2) for _ in range(2)]
    cohort = pd.DataFrame(
        {
            "case_id": [f"c{i}" for i in range(n)],
            "patient_key": patients,
            "site": "A",
            "label": pd.array(labels, dtype="Int8"),
            "split": pd.array([None] * n, dtype="string"),
            "split_source": pd.array([None] * n, dtype="string"),
        }
    )
    out = assign_splits(cohort, pd.DataFrame(), Settings(test_share=0.2, seed=3))
    assert out.groupby("patient_key")["split"].nunique().max() == 1
    share = (out["split"] == "testing").mean()
    assert 0.15 < share < 0.25
    prevalence = out.groupby("split")["label"].mean()
    assert abs(prevalence["training"] - prevalence["testing"]) < 0.08
    again = assign_splits(cohort, pd.DataFrame(), Settings(test_share=0.2, seed=3))
    assert again["split"].tolist() == out["split"].tolist()
    assert set(out["split_source"]) == {"derived"}
    assert cohort["split"].isna().all()  # the input is left as it was


def test_manifest_splits_win_and_stored_patients_keep_theirs():
    cohort = _cohort(["p1", "p2", "p3"], sites=["A", "B", "A"])
    cohort.loc[0, ["split", "split_source"]] = ["validation", "manifest"]
    stored = pd.DataFrame(
        {
            "patient_key": ["p1", "p2", "p2"],
            "split": ["training", "testing", "training"],
            "ingested_at": pd.to_datetime(["2024-01-01", "2024-01-01", "2024-02-01"], utc=True),
        }
    )
    out = assign_splits(cohort, stored, Settings(validation_sites=["B"])).set_index("patient_key")
    assert (out.at["p1", "split"], out.at["p1", "split_source"]) == ("validation", "manifest")
    # The store wins over the validation site, and its latest split is the one kept.
    assert (out.at["p2", "split"], out.at["p2", "split_source"]) == ("training", "store")
    assert out.at["p3", "split"] in {"training", "testing"}
    assert out.at["p3", "split_source"] == "derived"


def test_new_patients_at_a_validation_site_are_validation():
    cohort = _cohort(["p1", "p2"], sites=["B", "A"])
    out = assign_splits(cohort, pd.DataFrame(), Settings(validation_sites=["B"]))
    assert out["split"].tolist()[0] == "validation"
    assert out["split"].tolist()[1] in {"training", "testing"}
    assert out["split_source"].tolist() == ["derived", "derived"]


def test_a_quiet_night_falls_back_to_a_seeded_hash_per_patient():
    # Three patients cannot fill five stratified folds: each patient is hashed instead.
    rows = _cohort(["p1", "p1", "p2", "p3"], labels=[0, 0, 1, 1])
    first = _train_test(rows, Settings(test_share=0.2, seed=1))
    assert first == _train_test(rows, Settings(test_share=0.2, seed=1))
    assert first[0] == first[1]  # one patient, one split
    assert set(first) <= {"training", "testing"}
    # One positive case cannot be stratified into two folds either; the seed changes the draw.
    few = _cohort(["p1", "p2", "p3"], labels=[0, 0, 1])
    seeds = {tuple(_train_test(few, Settings(test_share=0.5, seed=s))) for s in range(20)}
    assert len(seeds) > 1


def test_unlabelled_cases_are_split_too():
    rows = _cohort([f"p{i}" for i in range(50)], labels=[None] * 25 + [0] * 25)
    out = _train_test(rows, Settings(test_share=0.2, seed=2))
    assert len(out) == 50 and set(out) == {"training", "testing"}


def test_check_patient_splits_names_the_splits_of_a_leaking_patient():
    records = [
        {"patient_id": "P1", "split": "training"},
        {"patient_id": "P1", "split": "testing"},
        {"patient_id": "P1", "split": None},  # an unsplit case of a leaking patient leaks too
        {"patient_id": "P2", "split": "training"},
        {"patient_id": "P2", "split": "training"},
        {"patient_id": "P3", "split": None},
    ]
    leak = "patient's cases span splits testing, training (leakage)"
    assert _check_patient_splits(records) == [leak, leak, leak, None, None, None]
    assert _check_patient_splits([]) == []
