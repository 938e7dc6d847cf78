"""Cross-fitted deep features: patient-grouped stratified folds, fold CNNs that never learn
from the cases they embed, the case -> fold model map in the store."""

from __future__ import annotations

import json
import logging
from collections import Counter
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from prefect.cache_policies import NO_CACHE

from tasks.data.store import FeatureStore
from tasks.features.cnn.crossfit import (
    CROSSFIT,
    IN_SAMPLE,
    assign_folds,
    crossfit_map,
    finetune_fold,
    finetune_fold_task,
    fold_numbers,
    fold_parts,
    held_out_cohorts,
    load_crossfit,
    record_crossfit,
    record_crossfit_task,
)
from tasks.features.cnn.embed import plan_embeddings
from tasks.features.cnn.train import finetune
from tests.tasks.features.cnn.common import cnn_settings, cohort_rows

torch.set_num_threads(1)


def _cases(n_patients: int = 40) -> list[dict]:
    """Patients with one to three lesions; a patient's lesions share its label (a third
    positive), so a fold split by case would break both rules."""
    cases = []
    for p in range(n_patients):
        for lesion in range(1 + p % 3):
            cases.append(
                {
                    "case_id": f"C{p:02d}-{lesion}",
                    "patient_key": f"key-{p:02d}",
                    "label": int(p % 3 == 0),
                    "split": "training",
                }
            )
    return cases


# -- folds -----------------------------------------------------------------------------------
def test_folds_keep_a_patient_together_and_each_fold_stratified():
    cases = _cases()
    folds = assign_folds(cases, 5, seed=11)
    assert sorted(set(folds)) == [0, 1, 2, 3, 4]
    by_patient: dict[str, set[int]] = {}
    for case, fold in zip(cases, folds, strict=True):
        by_patient.setdefault(case["patient_key"], set()).add(fold)
    assert all(len(f) == 1 for f in by_patient.values())  # grouped by patient
    positives = Counter(f for c, f in zip(cases, folds, strict=True) if c["label"])
    sizes = Counter(folds)
    overall = sum(c["label"] for c in cases) / len(cases)
    for fold in range(5):  # stratified: every fold near the overall positive share
        assert positives[fold] >= 1
        assert abs(positives[fold] / sizes[fold] - overall) < 0.2
    # Seeded; and the folds do not depend on the (secret) patient key values.
    assert assign_folds(cases, 5, seed=11) == folds
    renamed = [c | {"patient_key": "x" + c["patient_key"][::-1]} for c in cases]
    assert assign_folds(renamed, 5, seed=11) == folds
    assert assign_folds(cases, 5, seed=12) != folds
    # A case without a patient key is its own patient.
    alone = [c | {"patient_key": None} for c in cases]
    assert len(set(assign_folds(alone, 5, seed=11))) == 5


def test_fold_parts_hold_out_one_fold_and_train_on_the_rest():
    cases = _cases()
    held_ids: list[str] = []
    for fold in range(1, 4):
        train, held = fold_parts(cases, fold, 3, seed=1)
        assert len(train) + len(held) == len(cases) and held
        assert not {c["patient_key"] for c in train} & {c["patient_key"] for c in held}
        held_ids += [c["case_id"] for c in held]
    assert sorted(held_ids) == sorted(c["case_id"] for c in cases)
    with pytest.raises(ValueError, match="not in 1..3"):
        fold_parts(cases, 4, 3, seed=1)
    with pytest.raises(ValueError, match="at least 5 patients"):
        assign_folds(_cases(4), 5, seed=1)


def test_fold_numbers_follow_the_mode(tmp_path):
    assert fold_numbers(cnn_settings(tmp_path, cnn_folds=3)) == [1, 2, 3]
    assert fold_numbers(cnn_settings(tmp_path, cnn_crossfit="in-sample")) == []


# -- the map -----------------------------------------------------------------------------------
def test_the_map_refuses_a_fold_model_that_learnt_from_a_held_out_case():
    final = {"version": "final", "fit_case_ids": ["a", "b", "c"], "early_stopping_case_ids": ["d"]}
    one = {"version": "f1", "fit_case_ids": ["c"], "early_stopping_case_ids": ["d"]}
    two = {"version": "f2", "fit_case_ids": ["a"], "early_stopping_case_ids": ["b"]}
    ok = crossfit_map(
        final, [one | {"held_out_case_ids": ["a", "b"]}, two | {"held_out_case_ids": ["c", "d"]}]
    )
    assert ok["cases"] == {"a": "f1", "b": "f1", "c": "f2", "d": "f2"}
    assert ok["fold_models"] == ["f1", "f2"] and ok["folds"] == 2
    with pytest.raises(ValueError, match="trained on held-out cases"):
        crossfit_map(final, [one | {"held_out_case_ids": ["a", "c"]}])
    with pytest.raises(ValueError, match="held out by two"):
        again = {"version": "f3", "fit_case_ids": ["c"], "held_out_case_ids": ["a"]}
        crossfit_map(final, [one | {"held_out_case_ids": ["a"]}, again])
    with pytest.raises(ValueError, match="missing"):
        crossfit_map(final, [one | {"held_out_case_ids": ["a", "b"]}])


@pytest.fixture
def crossfitted(tiny_cohort, tmp_path):
    """The final CNN and two fold CNNs on the eight tiny cases (32 px, one epoch)."""
    rows = cohort_rows(tiny_cohort)
    for row in rows:
        row["patient_key"] = row["case_id"]
    rows[1]["patient_key"] = rows[0]["patient_key"]  # one patient, two lesions (labels 0, 1)
    settings = cnn_settings(tmp_path, cnn_epochs=1, cnn_batch_size=4, cnn_folds=2)
    store = FeatureStore(settings.store)
    final = finetune(rows, settings, store, "random")
    folds = [finetune_fold(rows, k, settings, store, "random") for k in (1, 2)]
    return rows, settings, store, final, folds


def _embedding_model(meta: dict, store: FeatureStore, case_id: str) -> str:
    """The CNN whose embedding a training case's deep features come from."""
    summary = meta["crossfit"]
    if summary["mode"] != CROSSFIT:
        return meta["version"]
    return load_crossfit(store, summary)["cases"][case_id]


def _trained_on(store: FeatureStore, version: str) -> set[str]:
    meta = json.loads(Path(store.uri("models", "cnn", version, "meta.json")).read_text())
    return {*meta["fit_case_ids"], *meta["early_stopping_case_ids"]}


def test_no_training_case_is_embedded_by_a_cnn_that_learnt_from_it(crossfitted, caplog):
    rows, settings, store, final, folds = crossfitted
    meta = record_crossfit(store, final, folds, settings)
    summary = meta["crossfit"]
    assert summary["mode"] == CROSSFIT and summary["folds"] == 2
    assert summary["fold_models"] == [f["version"] for f in folds]
    assert summary["mapping"] == f"models/cnn/{final['version']}/crossfit.json"
    assert "cases" not in summary  # no case id in what goes to MLflow
    # Exclusivity, from each fold model's recorded training cases (fit + early stopping).
    for row in rows:
        version = _embedding_model(meta, store, row["case_id"])
        assert version != final["version"]
        assert row["case_id"] not in _trained_on(store, version), (row["case_id"], version)
    # The two lesions of one patient are held out by the same fold model.
    mapping = load_crossfit(store, summary)
    assert mapping["cases"][rows[0]["case_id"]] == mapping["cases"][rows[1]["case_id"]]
    for fold, f in enumerate(folds, 1):
        assert f["crossfit"] == {"fold": fold, "folds": 2, "seed": settings.seed}
        assert f["dual"] == final["dual"] and f["training_cases"] < len(rows)
        assert f["version"] != final["version"]
    # In-sample (today's behaviour) every case gets the final model's: the check fails.
    in_sample = record_crossfit(
        store, final, [], settings.model_copy(update={"cnn_crossfit": IN_SAMPLE})
    )
    assert in_sample["crossfit"] == {"mode": IN_SAMPLE, "folds": None, "fold_models": []}
    assert rows[0]["case_id"] in _trained_on(
        store, _embedding_model(in_sample, store, rows[0]["case_id"])
    )


def test_a_fold_model_embeds_its_held_out_cases_every_mask_variant(crossfitted, caplog):
    rows, settings, store, final, folds = crossfitted
    meta = record_crossfit(store, final, folds, settings)
    mapping = load_crossfit(store, meta["crossfit"])
    cohort = pd.DataFrame(rows)
    cohort.loc[0, "bmus_mask_reader2"] = cohort.loc[0, "bmus_mask"]  # a second delineation
    cohorts = held_out_cohorts(cohort, mapping, store)
    assert [uri for uri, _ in cohorts] == [f["uri"] for f in folds]
    for (_, held), fold in zip(cohorts, folds, strict=True):
        assert sorted(held["case_id"]) == sorted(fold["held_out_case_ids"])
    uri, held = next((u, h) for u, h in cohorts if rows[0]["case_id"] in set(h["case_id"]))
    work = plan_embeddings(held, store, settings, model=uri)
    assert work.version == mapping["cases"][rows[0]["case_id"]]
    assert {c["case_id"] for c in work.plan.todo} == set(held["case_id"])


def test_fold_progress_is_logged(tiny_cohort, tmp_path, caplog):
    rows = cohort_rows(tiny_cohort)
    settings = cnn_settings(tmp_path, cnn_epochs=1, cnn_batch_size=4, cnn_folds=2)
    with caplog.at_level(logging.INFO, logger="tasks.features.cnn.crossfit"):
        meta = finetune_fold(rows, 2, settings, FeatureStore(settings.store), "random")
    assert "cnn fold 2/2: 4 fit cases, 4 held out" in caplog.text
    assert len(meta["held_out_case_ids"]) == 4


def test_task_wrappers():
    for wrapper, name in (
        (finetune_fold_task, "finetune-cnn-fold"),
        (record_crossfit_task, "record-crossfit"),
    ):
        assert wrapper.name == name and wrapper.cache_policy is NO_CACHE


def test_model_head_on_the_stored_embedding_is_the_cnns_logit(crossfitted):
    """The cross-fitted deep feature (tasks.models.features.DEEP_LOGIT) is each model's head
    applied to its stored fused embedding: the model's own output, on one scale for all."""
    from tasks.features.cnn.checkpoints import load_model, model_head
    from tasks.features.cnn.crops import case_crops
    from tasks.features.cnn.embed import embed_cases

    rows, settings, store, final, folds = crossfitted
    for meta in (final, *folds):
        weight, bias = model_head(store, meta["version"])
        embedded = embed_cases(rows[:3], meta["uri"], settings, store)
        model, _ = load_model(meta["uri"])
        for row, case in zip(
            [e for e in embedded if e["mask_variant"] == "reader1"], rows[:3], strict=True
        ):
            bmus, cdus = case_crops(
                case, ["reader1"], settings.cnn_size, settings.cnn_margin, meta["dual"]
            )["reader1"]
            with torch.no_grad():
                logit = float(
                    model(
                        torch.as_tensor(bmus)[None],
                        None if cdus is None else torch.as_tensor(cdus)[None],
                    )
                )
            assert np.asarray(row["fused"]) @ weight + bias == pytest.approx(logit, abs=1e-4)
