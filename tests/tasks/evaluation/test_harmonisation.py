"""Scanner harmonisation compared: every option scored on every set, the choice made on
internal testing only (ties to the simpler), ComBat inside the models' feature step."""

from __future__ import annotations

import json
import math

import numpy as np
import pandas as pd
import pytest

from tasks.config import Settings
from tasks.evaluation.harmonisation import compare_harmonisation, option_metrics
from tasks.evaluation.metrics import auc_ci
from tasks.evaluation.report import render_html, write_report
from tasks.evaluation.report.readme import readme_tables
from tasks.models.features import FeatureData
from tasks.models.harmonise import SITE_COLUMN, choose_option
from tasks.models.pipelines import fit_models
from tests.tasks.models.helpers import feature_data


@pytest.fixture(scope="module")
def settings() -> Settings:
    return Settings(icc_min_repeats=5, seed=3)


def _with_sites(data: FeatureData) -> FeatureData:
    for X in data.X.values():
        X[SITE_COLUMN] = data.cases.loc[X.index, "site"].to_numpy()
    return data


def _shifted(data: FeatureData, split: str, scale: float) -> FeatureData:
    """A copy whose ``split`` rows carry the label signal ``scale`` times as strongly."""
    X = {k: v.copy() for k, v in data.X.items()}
    rows = data.cases.index[data.cases["split"] == split]
    y = data.cases.loc[rows, "label"].astype(float).to_numpy()
    for column in ("hf:intratumoral:f0", "df:0", "df:1", "df:2"):
        X["reader1"].loc[rows, column] = scale * (y - 0.5) * 2 + 0.1 * np.arange(len(rows))
    return FeatureData(X=X, cases=data.cases, lineage=dict(data.lineage))


def test_choose_option_best_on_testing_ties_to_the_simpler():
    assert choose_option({"none": 0.70, "image": 0.80, "combat": 0.75}) == "image"
    # Within the tie margin the simpler option (listed first) wins.
    assert choose_option({"none": 0.8000, "image": 0.8003, "combat": 0.81}) == "combat"
    assert choose_option({"none": 0.8000, "image": 0.8004, "combat": 0.8001}) == "none"
    # An undefined AUC (one class) never wins over a defined one.
    assert choose_option({"none": math.nan, "image": 0.6}) == "image"
    assert choose_option({"none": math.nan}) == "none"


def test_option_metrics_are_delong_aucs_on_the_linear_predictor(settings):
    data = _with_sites(feature_data())
    models = fit_models(data, settings, names=("COMB",))
    got = option_metrics(models, data)["COMB"]
    assert set(got) == {"training", "validation", "testing"}
    rows = data.cases.index[data.cases["split"] == "testing"]
    y = data.cases.loc[rows, "label"].astype(int).to_numpy()
    auc, lo, hi = auc_ci(y, models["COMB"].decision_function(data.reader1.loc[rows]))
    assert got["testing"] == {
        "auc": pytest.approx(auc),
        "auc_ci": (pytest.approx(lo), pytest.approx(hi)),
        "n": len(rows),
        "n_pos": int(y.sum()),
    }


def test_the_choice_reads_internal_testing_never_external_validation(settings):
    base = _with_sites(feature_data())
    models = fit_models(base, settings, names=("COMB",))
    # "image" scores far better on external validation but worse on testing: not chosen.
    better_external = _shifted(_shifted(base, "validation", 5.0), "testing", -1.0)
    fits = {"none": (models, base), "image": (models, better_external)}
    comparison = compare_harmonisation(fits, "auto")
    options = comparison["options"]
    assert (
        options["image"]["COMB"]["validation"]["auc"] > options["none"]["COMB"]["validation"]["auc"]
    )
    assert options["image"]["COMB"]["testing"]["auc"] < options["none"]["COMB"]["testing"]["auc"]
    assert comparison["chosen"] == "none" and comparison["choice_set"] == "testing"
    # The same data, better on testing: chosen.
    better_testing = _shifted(base, "testing", 5.0)
    comparison = compare_harmonisation(
        {"none": (models, base), "image": (models, better_testing)}, "auto"
    )
    assert comparison["chosen"] == "image"
    assert comparison["params_hash"] == {"none": "p", "image": "p"}


def test_combat_inside_the_models_harmonises_a_scanner_shift_without_labels(settings):
    """Two training sites (A, C) and an external one (B); C and B carry a scanner shift and
    scale on every handcrafted feature. ComBat in the feature step removes it: the
    harmonised hf columns of C and B sit on A's scale; labels play no part in the estimates."""
    data = feature_data(n=150)
    cases = data.cases.copy()
    training = cases.index[cases["split"] == "training"]
    cases.loc[training[::3], "site"] = "C"  # 20 of 60: A (40) is the reference
    cases.loc[cases.index[100:], "split"] = "validation"
    cases.loc[cases.index[100:], "site"] = "B"
    cases.loc[cases.index[90:100], "split"] = "testing"
    cases.loc[cases.index[90:100], "site"] = "A"
    data = _with_sites(FeatureData(X=data.X, cases=cases, lineage=data.lineage))
    hf = [c for c in data.reader1 if c.startswith("hf:")]
    for X in data.X.values():
        shifted = X[SITE_COLUMN].isin(["B", "C"]).to_numpy()
        X.loc[shifted, hf] = X.loc[shifted, hf] * 3.0 + 4.0
    comb = fit_models(data, settings, names=("COMB",), harmonisation="combat")["COMB"]
    assert comb.fit_info["harmonisation"] == {
        "option": "combat",
        "reference_site": "A",
        "training_sites": ["A", "C"],
        "skipped_sites": {},
        "min_cases": settings.combat_min_cases,
    }
    combat = comb.pipeline.named_steps["features"].branches_["hf"]["combat"]
    out = combat.transform(data.reader1[[*hf, SITE_COLUMN]])
    by_site = out.groupby(SITE_COLUMN)[hf].mean().mean(axis=1)
    raw = data.reader1.groupby(SITE_COLUMN)[hf].mean().mean(axis=1)
    assert abs(raw["B"] - raw["A"]) > 3.5 and abs(raw["C"] - raw["A"]) > 3.5
    assert abs(by_site["B"] - by_site["A"]) < 0.2 and abs(by_site["C"] - by_site["A"]) < 0.2
    # The deep family is not harmonised; without ComBat nothing is.
    assert comb.pipeline.named_steps["features"].branches_["df"]["combat"] is None
    none = fit_models(data, settings, names=("COMB",))["COMB"]
    assert none.pipeline.named_steps["features"].branches_["hf"]["combat"] is None
    assert none.fit_info["harmonisation"] == {"option": "none"}
    # Labels are not read: permuted labels give the same site estimates.
    permuted = FeatureData(
        X=data.X,
        cases=data.cases.assign(label=data.cases["label"].sample(frac=1, random_state=0).values),
        lineage=data.lineage,
    )
    other = fit_models(permuted, settings, names=("COMB",), harmonisation="combat")["COMB"]
    again = other.pipeline.named_steps["features"].branches_["hf"]["combat"]
    for site in ("A", "C"):
        for mine, theirs in zip(combat.estimates_[site], again.estimates_[site], strict=True):
            np.testing.assert_allclose(mine, theirs, rtol=1e-12)


def test_one_training_site_makes_combat_equal_none_on_that_site(settings):
    """With a single training site as the reference, ComBat changes no training or testing
    row (same site): the fits and the testing AUC equal 'none' exactly, and the tie goes to
    'none'. Only the external site's rows move."""
    data = _with_sites(feature_data(n=150))
    cases = data.cases
    cases.loc[cases.index[100:], "split"] = "validation"  # 50 external rows at site B
    cases.loc[cases.index[100:], "site"] = "B"
    data = _with_sites(data)
    hf = [c for c in data.reader1 if c.startswith("hf:")]
    external = (data.reader1[SITE_COLUMN] == "B").to_numpy()
    data.reader1.loc[external, hf] = data.reader1.loc[external, hf] * 2.0 + 1.0
    fits = {
        option: (fit_models(data, settings, names=("COMB",), harmonisation=option), data)
        for option in ("none", "combat")
    }
    comparison = compare_harmonisation(fits, "auto")
    none, combat = (comparison["options"][o]["COMB"] for o in ("none", "combat"))
    assert none["testing"] == combat["testing"] and none["training"] == combat["training"]
    assert comparison["chosen"] == "none"
    lp = {o: fits[o][0]["COMB"].decision_function(data.reader1) for o in fits}
    assert np.array_equal(lp["none"][~external], lp["combat"][~external])
    assert not np.allclose(lp["none"][external], lp["combat"][external])


def test_report_shows_every_option_and_the_choice(sample_evaluation, tmp_path, settings):
    data = _with_sites(feature_data())
    fits = {
        o: (fit_models(data, settings, names=("COMB",), harmonisation=o), data)
        for o in ("none", "combat")
    }
    comparison = compare_harmonisation(fits, "auto", {"image": "no image-normalised rows"})
    evaluation = sample_evaluation.with_harmonisation(comparison)
    uris = write_report(evaluation, str(tmp_path / "r"))
    report = json.loads((tmp_path / "r" / "report.json").read_text())
    assert report["harmonisation"]["chosen"] == "none"
    assert set(report["harmonisation"]["options"]) == {"none", "combat"}
    assert report["harmonisation"]["unavailable"] == {"image": "no image-normalised rows"}
    assert (
        "scanner harmonisation: none (compared: none, combat"
        in (report["tripod"]["predictors"]["harmonisation"])
    )
    page = render_html(evaluation)
    assert "Scanner harmonisation compared" in page and "image: not compared" in page
    text = readme_tables(report)
    auc = comparison["options"]["combat"]["COMB"]["testing"]["auc"]
    assert "| combat | COMB |" in text and f"{auc:.3f}" in text
    assert "| **none** (chosen) | COMB |" in text
    assert uris["json"].endswith("report.json")
    assert pd.Series(report["decision_sets"]).str.contains("never the external").sum() >= 2
