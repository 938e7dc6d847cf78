"""The models' input: feature matrices from the store, and the ICC repeat sets they give."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from prefect.cache_policies import NO_CACHE

from tasks.data.schema import perturbed_mask_sha
from tasks.data.store import FeatureStore
from tasks.data.tables import COHORT, EMBEDDINGS, RADIOMICS
from tasks.models.features import (
    icc_source,
    load_features,
    load_features_task,
    training_cases,
    training_cases_task,
)
from tests.tasks.models.helpers import feature_data, with_perturbed


# -- ICC repeats: real delineations first, perturbed masks as the fallback ----------------------
def test_pairs_prefer_real_repeats_and_fall_back_to_perturbed_masks():
    data = with_perturbed(feature_data())
    training = data.cases.index[data.cases["split"] == "training"]
    pairs = data.pairs(training)
    assert set(pairs) == {"inter", "intra"} and icc_source(pairs) == "delineations"
    assert len(pairs["inter"][0]) == 20  # every third of the 60 training cases

    # Too few real repeats among these cases (fewer than 3): the perturbed set, alone.
    few = training[:5]  # real repeats: C000, C003; perturbed masks: C001, C002, C004
    pairs = data.pairs(few, min_repeats=3)
    assert set(pairs) == {"perturbed"} and icc_source(pairs) == "perturbed masks"
    ref, rep = pairs["perturbed"]
    assert list(ref.index) == list(rep.index) == ["C001", "C002", "C004"]
    assert np.array_equal(ref.to_numpy(), data.X["reader1"].loc[ref.index].to_numpy())

    only = with_perturbed(feature_data(), real=False)
    pairs = only.pairs(training)
    assert set(pairs) == {"perturbed"} and len(pairs["perturbed"][0]) == 60

    none = feature_data()
    del none.X["reader2"], none.X["repeat"]
    assert none.pairs(training) == {} and icc_source({}) == "none"


def test_a_repeat_set_needs_twenty_training_cases_by_default():
    # 19 real repeats in training: not enough (a true-ICC-0.60 feature passes 0.75 too
    # often at small n); the perturbed masks of 40 cases stand in, and the counts say why.
    data = with_perturbed(feature_data())
    training = data.cases.index[data.cases["split"] == "training"]
    nineteen = training[: 3 * 19]  # every third case has real repeats
    assert data.repeat_counts(nineteen) == {"inter": 19, "intra": 19, "perturbed": 38}
    assert set(data.pairs(nineteen)) == {"perturbed"}
    assert set(data.pairs(training)) == {"inter", "intra"}  # exactly 20
    # Fewer than 20 perturbed too: no ICC filter at all.
    assert data.pairs(training[:20]) == {}


# -- from the store -----------------------------------------------------------------------------
def _store_with_features(tmp_path, repeats: bool) -> tuple[FeatureStore, pd.DataFrame]:
    """A store with 6 training cases: reader 1 for all, and either a repeat delineation for
    three of them or perturbed-mask rows for all."""
    ids = [f"C{i}" for i in range(6)]
    cohort = pd.DataFrame(
        {
            "case_id": ids,
            "case_version": "v1",
            "patient_key": ids,
            "site": "A",
            "label": [0, 1] * 3,
            "split": "training",
            "bmus_image": [f"/d/{c}.png" for c in ids],
            "bmus_image_sha256": [f"img-{c}" for c in ids],
            "bmus_mask": [f"/d/{c}_m.png" for c in ids],
            "bmus_mask_sha256": [f"m1-{c}" for c in ids],
            "bmus_mask_repeat": [
                f"/d/{c}_rep.png" if repeats and i < 3 else None for i, c in enumerate(ids)
            ],
            "bmus_mask_repeat_sha256": [
                f"rep-{c}" if repeats and i < 3 else None for i, c in enumerate(ids)
            ],
            "ingested_at": pd.Timestamp("2024-01-01", tz="UTC"),
        }
    )
    cohort = COHORT.typed(cohort)
    rng = np.random.default_rng(0)
    radiomics, embeddings = [], []
    for case in cohort.to_dict("records"):
        variants = [("reader1", case["bmus_mask_sha256"])]
        if isinstance(case["bmus_mask_repeat_sha256"], str):
            variants.append(("repeat", case["bmus_mask_repeat_sha256"]))
        elif not repeats:
            variants.append(("perturbed", perturbed_mask_sha(case["bmus_mask_sha256"])))
        # A stale perturbed row under an old id (an earlier perturbation version): ignored.
        variants.append(("perturbed", "old-perturbation-id"))
        for variant, sha in variants:
            lineage = {
                "case_id": case["case_id"],
                "mask_variant": variant,
                "image_sha256": case["bmus_image_sha256"],
                "mask_sha256": sha,
            }
            for region in ("intratumoral", "peritumoral"):
                radiomics.append(
                    lineage
                    | {
                        "region": region,
                        "params_hash": "p",
                        "f1": rng.normal(),
                        "f2": rng.normal(),
                        "extracted_at": pd.Timestamp.now(tz="UTC"),
                    }
                )
            embeddings.append(
                lineage
                | {
                    "model_version": "m",
                    "fused": rng.normal(size=4).tolist(),
                    "embedded_at": pd.Timestamp.now(tz="UTC"),
                }
            )
    store = FeatureStore(str(tmp_path / "store"))
    store.insert_new(COHORT, cohort)
    store.insert_new(RADIOMICS, pd.DataFrame(radiomics))
    store.insert_new(EMBEDDINGS, pd.DataFrame(embeddings))
    return store, cohort


@pytest.mark.parametrize("repeats", [True, False])
def test_load_features_builds_the_perturbed_matrix_and_records_the_icc_source(tmp_path, repeats):
    store, _ = _store_with_features(tmp_path, repeats)
    data = load_features(store, "p", "m")
    assert list(data.reader1.index) == [f"C{i}" for i in range(6)]
    assert list(data.reader1.columns) == [
        "hf:intratumoral:f1",
        "hf:intratumoral:f2",
        "hf:peritumoral:f1",
        "hf:peritumoral:f2",
        "df:0",
        "df:1",
        "df:2",
        "df:3",
        "meta:site",
    ]
    assert set(data.reader1["meta:site"]) == {"A"}  # for ComBat
    # Six training cases are fewer than a repeat set needs (20): no ICC filter.
    assert data.lineage["icc_source"] == "none"
    if repeats:
        assert set(data.X) == {"reader1", "repeat"}
        assert list(data.X["repeat"].index) == ["C0", "C1", "C2"]
        assert icc_source(data.pairs(min_repeats=3)) == "delineations"
    else:
        assert set(data.X) == {"reader1", "perturbed"}
        assert len(data.X["perturbed"]) == 6  # the stale ids matched nothing
        assert icc_source(data.pairs(min_repeats=3)) == "perturbed masks"
        assert set(data.pairs(min_repeats=3)) == {"perturbed"}


def test_training_cases_are_the_current_labelled_training_rows(tmp_path):
    store, cohort = _store_with_features(tmp_path, repeats=True)
    cases = training_cases(store)
    assert [case["case_id"] for case in cases] == list(cohort["case_id"])
    assert all(case["split"] == "training" and case["label"] in (0, 1) for case in cases)
    assert training_cases(store, cohort_version=0) == cases


def test_task_wrappers_call_the_steps(tmp_path):
    store, _ = _store_with_features(tmp_path, repeats=True)
    wrappers = {"load-features": load_features_task, "training-cases": training_cases_task}
    for name, wrapper in wrappers.items():
        assert wrapper.name == name and wrapper.cache_policy is NO_CACHE
    data = load_features_task.fn(store, "p", "m")
    pd.testing.assert_frame_equal(data.reader1, load_features(store, "p", "m").reader1)
    assert training_cases_task.fn(store) == training_cases(store)


# -- cross-fitted deep features -----------------------------------------------------------------
def _with_fold_embeddings(store: FeatureStore, cohort: pd.DataFrame, folded: dict[str, str]):
    """Fold model rows for the cases of ``folded`` (case -> fold version), every variant the
    final model ``m`` has, their vectors all ``100 + case number``."""
    final = store.read(EMBEDDINGS)
    rows = final[final["case_id"].isin(list(folded)) & (final["model_version"] == "m")].copy()
    rows["model_version"] = rows["case_id"].map(folded)
    rows["fused"] = [[100.0 + int(c[1:])] * 4 for c in rows["case_id"]]
    store.insert_new(EMBEDDINGS, rows)


CROSSFIT_MAP = {
    "mode": "crossfit",
    "folds": 2,
    "final_model": "m",
    "fold_models": ["f1", "f2"],
    "cases": {"C0": "f1", "C1": "f2", "C2": "f1", "C3": "f2", "C4": "f1"},
}


# Each model's output layer over the 4-value test vectors: (weights, bias).
HEADS = {
    "m": (np.full(4, 0.5), 1.0),
    "f1": (np.full(4, 1.0), 0.0),
    "f2": (np.full(4, 2.0), -1.0),
}


def test_load_features_takes_the_fold_models_logit_for_the_mapped_cases(tmp_path):
    from tasks.features.cnn.crossfit import save_crossfit
    from tasks.models.features import DEEP_LOGIT

    store, cohort = _store_with_features(tmp_path, repeats=True)
    _with_fold_embeddings(store, cohort, CROSSFIT_MAP["cases"])
    in_sample = load_features(store, "p", "m")
    assert in_sample.lineage["deep_features"] == {
        "mode": "in-sample",
        "folds": None,
        "fold_models": [],
        "feature": "embedding",
    }
    summary = {
        "mode": "crossfit",
        "folds": 2,
        "fold_models": ["f1", "f2"],
        "mapping": save_crossfit(store, CROSSFIT_MAP),
    }
    hf = [c for c in in_sample.reader1.columns if c.startswith("hf:")]
    final_vectors = in_sample.reader1[[f"df:{i}" for i in range(4)]]
    for crossfit in (CROSSFIT_MAP, summary):  # the map itself, or the CNN meta's summary
        data = load_features(store, "p", "m", crossfit=crossfit, heads=HEADS)
        # Fine-tuned CNNs share their output scale, not their embedding space: one deep
        # column, the logit, of the model that produced each row's embedding.
        assert [c for c in data.reader1.columns if c.startswith("df:")] == [DEEP_LOGIT]
        assert sorted(data.reader1.index) == [f"C{i}" for i in range(6)]
        for case, fold in CROSSFIT_MAP["cases"].items():  # their fold model's, every variant
            weight, bias = HEADS[fold]
            expected = (100 + int(case[1:])) * weight.sum() + bias
            assert data.reader1.loc[case, DEEP_LOGIT] == pytest.approx(expected)
            if case in data.X["repeat"].index:
                assert data.X["repeat"].loc[case, DEEP_LOGIT] == pytest.approx(expected)
        # An unmapped case gets the final model's logit; handcrafted columns do not change.
        weight, bias = HEADS["m"]
        expected = float(final_vectors.loc["C5"].to_numpy() @ weight + bias)
        assert data.reader1.loc["C5", DEEP_LOGIT] == pytest.approx(expected)
        pd.testing.assert_frame_equal(
            data.reader1[hf], in_sample.reader1.loc[data.reader1.index, hf]
        )
        lineage = data.lineage["deep_features"]
        assert lineage["mode"] == "crossfit" and lineage["folds"] == 2
        assert lineage["fold_models"] == ["f1", "f2"] and lineage["feature"] == "logit"
    assert data.lineage["deep_features"]["mapping"] == "models/cnn/m/crossfit.json"
    # In-sample summary (or none, an old bundle): the fused embeddings.
    same = load_features(store, "p", "m", crossfit={"mode": "in-sample"})
    pd.testing.assert_frame_equal(same.reader1, in_sample.reader1)


def test_a_mapped_training_case_without_its_fold_embedding_is_an_error(tmp_path):
    store, cohort = _store_with_features(tmp_path, repeats=True)
    _with_fold_embeddings(store, cohort, CROSSFIT_MAP["cases"])
    mapping = CROSSFIT_MAP | {"cases": CROSSFIT_MAP["cases"] | {"C5": "f2"}}
    with pytest.raises(ValueError, match=r"C5 \(fold model f2\)"):
        load_features(store, "p", "m", crossfit=mapping, heads=HEADS)
    with pytest.raises(ValueError, match="map of m given for CNN other"):
        load_features(
            store, "p", "other", crossfit=CROSSFIT_MAP, heads=HEADS | {"other": HEADS["m"]}
        )


def test_a_cases_logit_depends_on_its_own_embedding_only():
    # BLAS gemv rounds a row differently by the matrix's shape and the row's place in it;
    # the logit of a case must not change with the other cases or the embedding order
    # (the reproducibility test caught a run-to-run difference in ONLY_DF from this).
    from tasks.models.features import DEEP_LOGIT, deep_matrix

    rng = np.random.default_rng(3)
    n, width = 130, 1280
    cases = [f"C{i:03d}" for i in range(n)]
    cohort = pd.DataFrame(
        {"case_id": cases, "bmus_mask": "m.png", "bmus_image_sha256": "i", "bmus_mask_sha256": "k"}
    )
    vectors = rng.standard_normal((n, width)).astype(np.float32)
    embeddings = pd.DataFrame(
        {
            "case_id": cases,
            "mask_variant": "reader1",
            "image_sha256": "i",
            "mask_sha256": "k",
            "model_version": "m",
            "fused": [v.tolist() for v in vectors],
            "embedded_at": pd.date_range("2026-01-01", periods=n, freq="s", tz="UTC"),
        }
    )
    heads = {"m": (rng.standard_normal(width), 0.25)}
    mapping = {"final_model": "m", "fold_models": [], "cases": {}}
    whole = deep_matrix(embeddings, cohort, "reader1", "m", mapping, heads)[DEEP_LOGIT]
    assert list(whole.index) == sorted(cases)  # one order, whatever the embedding order
    shuffled = embeddings.sample(frac=1.0, random_state=1)
    shuffled["embedded_at"] = embeddings["embedded_at"].to_numpy()[::-1]
    again = deep_matrix(shuffled, cohort, "reader1", "m", mapping, heads)[DEEP_LOGIT]
    alone = pd.concat(
        deep_matrix(embeddings.iloc[[i]], cohort, "reader1", "m", mapping, heads)[DEEP_LOGIT]
        for i in range(n)
    )
    assert (again == whole).all() and (alone.loc[whole.index] == whole).all()
    weight, bias = heads["m"]
    np.testing.assert_allclose(whole, vectors.astype(np.float64) @ weight + bias, rtol=1e-12)
