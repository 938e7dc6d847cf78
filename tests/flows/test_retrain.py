"""The retrain flow end to end: fine-tune, embed, select, fit, evaluate, register, promote."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from tasks.data.store import FeatureStore


@pytest.mark.slow
def test_retrain_registers_promotes_and_reports(trained):
    from tasks.features.cnn.embed import current_model
    from tasks.features.radiomics import current_params_hash
    from tasks.models.harmonise import choose_option, image_pass_settings
    from tasks.models.registry import champion

    settings, cohort, summary = trained
    store = FeatureStore(settings.store)
    assert cohort["cases_new"] == 80 and cohort["cases_embedded"] == 80
    # The CNN was fine-tuned on the GPU-resource worker and every case re-embedded.
    assert summary["cnn_worker"] == "gpu-0"
    assert summary["cnn_model_version"].startswith("cnn-")
    embeddings = store.read("embeddings")
    new = embeddings[embeddings["model_version"] == summary["cnn_model_version"]]
    assert new["case_id"].nunique() == 80 and set(new["worker"]) == {"gpu-0"}
    # First model: registered and promoted; nightly runs now embed with the new CNN.
    assert summary["promoted"] and summary["promotion"] == "no champion yet"
    assert champion(settings, store)["version"] == summary["registered_version"]
    assert current_model(store, settings).endswith("model.pth")

    report = json.loads(open(summary["report"].replace("report.html", "report.json")).read())
    for model in ("COMB", "ONLY_HF", "ONLY_DF"):
        for split in ("training", "validation", "testing"):
            metrics = report["models"][model][split]
            for key in ("auc", "accuracy", "sensitivity", "specificity", "ppv", "npv", "n"):
                assert key in metrics
            lo, hi = metrics["auc_ci"]
            assert lo <= metrics["auc"] <= hi
    assert report["selected_features"]["COMB"]
    assert set(report["delong"]["validation"]) == {"COMB_vs_ONLY_HF", "COMB_vs_ONLY_DF"}
    # Cross-fitted deep features: every labelled training case is embedded (every mask
    # variant) by the fold CNN that held it out, which never saw it; the map is in the store.
    deep = report["versions"]["deep_features"]
    assert deep["mode"] == "crossfit" and deep["folds"] == 2 and len(deep["fold_models"]) == 2
    mapping = json.loads(Path(store.uri(*deep["mapping"].split("/"))).read_text())
    rows = store.read("cohort")
    training = rows[(rows["split"] == "training") & rows["label"].notna()]
    assert set(mapping["cases"]) == set(training["case_id"])
    variants = new.groupby("case_id")["mask_variant"].apply(set)
    for version in deep["fold_models"]:
        meta = json.loads(Path(store.uri("models", "cnn", version, "meta.json")).read_text())
        held = {c for c, v in mapping["cases"].items() if v == version}
        assert held == set(meta["held_out_case_ids"])
        assert not held & {*meta["fit_case_ids"], *meta["early_stopping_case_ids"]}
        fold = embeddings[embeddings["model_version"] == version]
        assert set(fold["case_id"]) == held
        assert fold.groupby("case_id")["mask_variant"].apply(set).equals(variants.loc[sorted(held)])
    html = open(summary["report"]).read()
    assert "not a cleared medical device" in html and html.count("<img") >= 4

    # Scanner harmonisation (SLN_HARMONISATION=auto): the cohort flow extracted every case a
    # second time with intensity normalisation; retrain fitted and scored all three options
    # on the same run and kept the best COMB AUC on internal testing.
    radiomics = store.read("radiomics")
    hashes = {
        current_params_hash(settings): 80,
        current_params_hash(image_pass_settings(settings)): 80,
    }
    assert radiomics.groupby("params_hash")["case_id"].nunique().to_dict() == hashes
    assert cohort["radiomics_rows_normalised"] > 0
    h = report["harmonisation"]
    assert list(h["options"]) == ["none", "image", "combat"] and not h["unavailable"]
    for by_model in h["options"].values():
        assert set(by_model) == {"ONLY_HF", "ONLY_DF", "COMB"}
        assert all(set(s) == {"training", "validation", "testing"} for s in by_model.values())
    testing = {o: h["options"][o]["COMB"]["testing"]["auc"] for o in h["options"]}
    assert h["chosen"] == choose_option(testing) == summary["harmonisation"]
    assert report["versions"]["harmonisation"] == h["chosen"]
    assert report["versions"]["params_hash"] == h["params_hash"][h["chosen"]]
    # One training site (A) is ComBat's reference: training and testing rows (site A) are
    # left as they are, so ComBat ties with none there and only site B's numbers move.
    assert set(rows.loc[rows["split"] == "training", "site"]) == {"A"}
    assert h["combat"]["reference_site"] == "A" and h["combat"]["training_sites"] == ["A"]
    for model in ("ONLY_HF", "COMB"):
        assert h["options"]["combat"][model]["testing"] == h["options"]["none"][model]["testing"]
    assert h["chosen"] != "combat"
    assert "Scanner harmonisation compared" in html
