"""The three models: fitted on training rows only, features as the paper's steps select them."""

from __future__ import annotations

import logging

import numpy as np
import pytest
from prefect.cache_policies import NO_CACHE

from tasks.config import Settings
from tasks.models.pipelines import MODELS, fit_models, fit_models_task
from tests.tasks.models.helpers import feature_data, with_perturbed


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
    models = fit_models(feature_data(), settings)
    assert set(models) == {"ONLY_HF", "ONLY_DF", "COMB"}
    assert "hf:intratumoral:f0" in models["ONLY_HF"].selected_features()
    assert all(name.startswith("df:pc") for name in models["ONLY_DF"].selected_features())
    comb = models["COMB"].selected_features()
    assert any(n.startswith("hf:") for n in comb) and any(n.startswith("df:") for n in comb)
    assert all(m.icc_applied for m in models.values())
    assert 0 < models["COMB"].threshold < 1


def test_nothing_is_fitted_on_validation_or_testing_rows(settings):
    """Changing every non-training row (features, labels, repeats) changes nothing fitted."""
    data = feature_data()
    before = _fingerprint(fit_models(data, settings))

    changed = feature_data()
    rng = np.random.default_rng(99)
    others = changed.cases.index[changed.cases["split"] != "training"]
    for frame in changed.X.values():
        rows = frame.index.intersection(others)
        frame.loc[rows] = rng.normal(size=(len(rows), frame.shape[1])) * 10
    changed.cases.loc[others, "label"] = 1 - changed.cases.loc[others, "label"]
    assert _fingerprint(fit_models(changed, settings)) == before

    # The converse: changing one training row does change the fit (the test can fail).
    moved = feature_data()
    first = moved.cases.index[1]  # a training case without repeats
    moved.X["reader1"].loc[first, "hf:intratumoral:f0"] += 5
    assert _fingerprint(fit_models(moved, settings)) != before


def test_fit_needs_both_labels_in_training(settings):
    data = feature_data()
    data.cases.loc[data.cases["split"] == "training", "label"] = 0
    with pytest.raises(ValueError, match="both labels"):
        fit_models(data, settings)


# -- ICC repeats: real delineations first, perturbed masks as the fallback ----------------------
def test_icc_filter_on_perturbed_masks_without_real_repeats_and_none_without_any(settings, caplog):
    only = with_perturbed(feature_data(), real=False)
    with caplog.at_level(logging.INFO, logger="tasks.models.pipelines"):
        models = fit_models(only, settings)
    assert all(m.icc_applied for m in models.values())
    icc = models["COMB"].pipeline.named_steps["features"].branches_["hf"]["icc"]
    assert icc is not None and list(icc.icc_.columns) == ["perturbed"]
    assert "ICC filter on perturbed masks" in caplog.text

    none = feature_data()
    del none.X["reader2"], none.X["repeat"]
    caplog.clear()
    assert not any(m.icc_applied for m in fit_models(none, settings).values())
    assert "ICC filter not applied" in caplog.text


# -- progress: the slowest step of retraining says where it is ---------------------------------
def test_fit_models_logs_each_model_and_every_lasso_fold(settings, caplog):
    with caplog.at_level(logging.INFO, logger="tasks.models.pipelines"):
        models = fit_models(feature_data(), settings)
    lines = [r.getMessage() for r in caplog.records if r.name == "tasks.models.pipelines"]
    for i, name in enumerate(MODELS, start=1):
        start = lines.index(f"{name}: fitting model {i}/3 on 60 training cases")
        folds = [f"{name}: LASSO fold {fold}/10" for fold in range(1, 11)]
        assert lines[start + 1 : start + 11] == folds
        selected = len(models[name].selected_features())
        assert lines[start + 11] == f"{name}: {selected} features selected"
    fallbacks = [line for line in lines if "fell back" in line]
    assert len(fallbacks) == sum(m.fit_info["lasso"]["fallback"] for m in models.values())
    assert len(lines) == 3 * 12 + len(fallbacks)


def test_fit_models_task_is_a_wrapper_without_cache():
    assert fit_models_task.name == "fit-models" and fit_models_task.cache_policy is NO_CACHE


@pytest.mark.slow
def test_fit_models_task_progress_reaches_the_prefect_run_log(prefect_api, settings):
    import httpx
    from prefect import flow
    from prefect.logging.handlers import APILogWorker

    @flow(name="fit-models-progress")
    def fit_one() -> list[str]:
        return list(fit_models_task(feature_data(), settings, ("ONLY_HF",)))

    state = fit_one(return_state=True)
    assert state.is_completed() and state.result() == ["ONLY_HF"]
    APILogWorker.drain_all(timeout=10)
    resp = httpx.post(
        f"{prefect_api}/logs/filter",
        json={"logs": {"flow_run_id": {"any_": [str(state.state_details.flow_run_id)]}}},
    )
    resp.raise_for_status()
    messages = [entry["message"] for entry in resp.json()]
    assert [f"ONLY_HF: LASSO fold {fold}/10" for fold in range(1, 11)] == [
        m for m in messages if "LASSO fold" in m
    ]


# -- honest fitting ---------------------------------------------------------------------------
def test_final_models_are_unpenalised_and_record_how_they_were_fitted(settings):
    models = fit_models(feature_data(), settings)
    for model in models.values():
        logit = model.pipeline.named_steps["logit"]
        assert np.isinf(logit.C)  # maximum likelihood: no ridge shrinkage (C=1 was)
        info = model.fit_info
        assert info["penalty"].startswith("none")
        assert info["lasso"]["grouped_by_patient"] and info["lasso"]["folds"] == 10
        assert info["icc"]["n_per_set"] == {"inter": 20, "intra": 20}
        assert len(info["training_cases"]) == 60
    # The threshold is learned on the linear predictor; the probability is its expit.
    comb = models["COMB"]
    assert comb.threshold == pytest.approx(1 / (1 + np.exp(-comb.cutoff)))


def test_lasso_folds_keep_a_patients_cases_together(settings, monkeypatch):
    from tasks.models.selection import lasso as lasso_module

    data = feature_data()
    data.cases["patient_key"] = [f"P{i // 3}" for i in range(len(data.cases))]
    seen = []
    real = lasso_module.StratifiedGroupKFold.split

    def spy(self, X, y=None, groups=None):
        for train, test in real(self, X, y, groups):
            seen.append((set(groups[train]), set(groups[test])))
            yield train, test

    monkeypatch.setattr(lasso_module.StratifiedGroupKFold, "split", spy)
    fit_models(data, settings, names=["ONLY_HF"])
    assert len(seen) == 10
    assert all(not (train & test) for train, test in seen)


def test_a_one_se_fallback_is_recorded(settings):
    from tasks.models.selection import LassoSelector

    rng = np.random.default_rng(0)
    X, y = rng.normal(size=(60, 5)), rng.integers(0, 2, 60)  # no signal: 1-SE picks nothing
    lasso = LassoSelector(cv=5, random_state=0).fit(X, y, groups=np.arange(60) // 2)
    assert lasso.fallback_ and lasso.support_.sum() >= 1 and lasso.C_ > lasso.C_rule_
    assert lasso.grouped_
