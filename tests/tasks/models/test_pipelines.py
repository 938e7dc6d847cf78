"""The three models: fitted on training rows only, features as the paper's steps select them."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from tasks.config import Settings
from tasks.data.ingest import COHORT_SCHEMA, typed
from tasks.data.schema import perturbed_mask_sha
from tasks.data.store import FeatureStore
from tasks.models.pipelines import FeatureData, fit_models, icc_source, load_features

N_HF, N_DF = 40, 30


def _data(seed: int = 0, n: int = 90) -> FeatureData:
    """Labels driven by hf:0 and df:0..2; repeats for a third of the cases."""
    rng = np.random.default_rng(seed)
    ids = pd.Index([f"C{i:03d}" for i in range(n)], name="case_id")
    y = rng.integers(0, 2, n)
    hf = rng.normal(size=(n, N_HF))
    hf[:, 0] += 1.5 * y
    df = rng.normal(size=(n, N_DF))
    df[:, :3] += 1.0 * y[:, None]
    columns = [f"hf:intratumoral:f{i}" for i in range(N_HF)] + [f"df:{i}" for i in range(N_DF)]
    reader1 = pd.DataFrame(np.hstack([hf, df]), index=ids, columns=columns)
    rep_ids = ids[::3]
    noise = lambda: rng.normal(scale=0.2, size=(len(rep_ids), len(columns)))  # noqa: E731
    X = {
        "reader1": reader1,
        "reader2": reader1.loc[rep_ids] + noise(),
        "repeat": reader1.loc[rep_ids] + noise(),
    }
    split = np.where(
        np.arange(n) < 60, "training", np.where(np.arange(n) < 75, "validation", "testing")
    )
    cases = pd.DataFrame(
        {
            "label": pd.array(y, dtype="Int8"),
            "split": split,
            "site": np.where(split == "validation", "B", "A"),
            "exam_date": "2023-01-01",
        },
        index=ids,
    )
    return FeatureData(X=X, cases=cases, lineage={"params_hash": "p", "cnn_model_version": "m"})


def _fingerprint(models) -> dict:
    return {
        name: (
            model.selected_features(),
            round(model.threshold, 12),
            model.pipeline.named_steps["logit"].intercept_.round(12).tolist(),
        )
        for name, model in models.items()
    }


@pytest.fixture(scope="module")
def settings() -> Settings:
    return Settings(seed=1)


def test_models_select_the_informative_features(settings):
    models = fit_models(_data(), settings)
    assert set(models) == {"ONLY_HF", "ONLY_DF", "COMB"}
    assert "hf:intratumoral:f0" in models["ONLY_HF"].selected_features()
    assert all(name.startswith("df:pc") for name in models["ONLY_DF"].selected_features())
    comb = models["COMB"].selected_features()
    assert any(n.startswith("hf:") for n in comb) and any(n.startswith("df:") for n in comb)
    assert all(m.icc_applied for m in models.values())
    assert 0 < models["COMB"].threshold < 1


def test_nothing_is_fitted_on_validation_or_testing_rows(settings):
    """Changing every non-training row (features, labels, repeats) changes nothing fitted."""
    data = _data()
    before = _fingerprint(fit_models(data, settings))

    changed = _data()
    rng = np.random.default_rng(99)
    others = changed.cases.index[changed.cases["split"] != "training"]
    for frame in changed.X.values():
        rows = frame.index.intersection(others)
        frame.loc[rows] = rng.normal(size=(len(rows), frame.shape[1])) * 10
    changed.cases.loc[others, "label"] = 1 - changed.cases.loc[others, "label"]
    assert _fingerprint(fit_models(changed, settings)) == before

    # The converse: changing one training row does change the fit (the test can fail).
    moved = _data()
    first = moved.cases.index[1]  # a training case without repeats
    moved.X["reader1"].loc[first, "hf:intratumoral:f0"] += 5
    assert _fingerprint(fit_models(moved, settings)) != before


def test_fit_needs_both_labels_in_training(settings):
    data = _data()
    data.cases.loc[data.cases["split"] == "training", "label"] = 0
    with pytest.raises(ValueError, match="both labels"):
        fit_models(data, settings)


# -- ICC repeats: real delineations first, perturbed masks as the fallback ----------------------
def _with_perturbed(data: FeatureData, real: bool = True) -> FeatureData:
    """``data`` plus perturbed-mask rows for the cases without real repeats (or for all)."""
    rng = np.random.default_rng(5)
    reader1 = data.X["reader1"]
    repeats = data.X["reader2"].index
    ids = reader1.index.difference(repeats) if real else reader1.index
    data.X["perturbed"] = reader1.loc[ids] + rng.normal(
        scale=0.3, size=(len(ids), reader1.shape[1])
    )
    if not real:
        del data.X["reader2"], data.X["repeat"]
    return data


def test_pairs_prefer_real_repeats_and_fall_back_to_perturbed_masks(settings):
    data = _with_perturbed(_data())
    training = data.cases.index[data.cases["split"] == "training"]
    pairs = data.pairs(training)
    assert set(pairs) == {"inter", "intra"} and icc_source(pairs) == "delineations"
    assert len(pairs["inter"][0]) == 20  # every third of the 60 training cases

    # Too few real repeats among these cases (fewer than 3): the perturbed set, alone.
    few = training[:5]  # real repeats: C000, C003; perturbed masks: C001, C002, C004
    pairs = data.pairs(few)
    assert set(pairs) == {"perturbed"} and icc_source(pairs) == "perturbed masks"
    ref, rep = pairs["perturbed"]
    assert list(ref.index) == list(rep.index) == ["C001", "C002", "C004"]
    assert np.array_equal(ref.to_numpy(), data.X["reader1"].loc[ref.index].to_numpy())

    only = _with_perturbed(_data(), real=False)
    pairs = only.pairs(training)
    assert set(pairs) == {"perturbed"} and len(pairs["perturbed"][0]) == 60
    models = fit_models(only, settings)
    assert all(m.icc_applied for m in models.values())
    icc = models["COMB"].pipeline.named_steps["features"].branches_["hf"]["icc"]
    assert icc is not None and list(icc.icc_.columns) == ["perturbed"]

    none = _data()
    del none.X["reader2"], none.X["repeat"]
    assert none.pairs(training) == {} and icc_source({}) == "none"
    assert not any(m.icc_applied for m in fit_models(none, settings).values())


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
    cohort = typed(cohort, COHORT_SCHEMA)
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
    store.insert_new("cohort", cohort, ["case_id", "case_version"])
    keys = ["case_id", "region", "mask_variant", "mask_sha256"]
    store.insert_new("radiomics", pd.DataFrame(radiomics), keys)
    store.insert_new("embeddings", pd.DataFrame(embeddings), keys[:1] + keys[2:])
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
    ]
    if repeats:
        assert set(data.X) == {"reader1", "repeat"}
        assert list(data.X["repeat"].index) == ["C0", "C1", "C2"]
        assert data.lineage["icc_source"] == "delineations"
    else:
        assert set(data.X) == {"reader1", "perturbed"}
        assert len(data.X["perturbed"]) == 6  # the stale ids matched nothing
        assert data.lineage["icc_source"] == "perturbed masks"
        assert set(data.pairs()) == {"perturbed"}
