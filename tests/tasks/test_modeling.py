"""The three models: fitted on training rows only, features as the paper's steps select them."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from tasks.config import Settings
from tasks.modeling import FeatureData, fit_models

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
