"""CNN model files: saving and loading fine-tuned checkpoints, the model that embeds."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from tasks.data.store import FeatureStore
from tasks.features.cnn.checkpoints import DROPOUT, load_model, model_for, model_uri, save_model
from tasks.features.cnn.embed import embed_cases
from tasks.features.cnn.network import build_network
from tasks.features.cnn.train import finetune
from tests.tasks.features.cnn.common import SIZE, cnn_settings, cohort_rows

torch.set_num_threads(1)


def test_model_for_gives_the_same_random_start_every_time(tmp_path):
    settings = cnn_settings(tmp_path)
    one, version, meta = model_for("random", False, settings)
    two, _, _ = model_for("random", False, settings)
    assert version == "start-random" and meta["input_size"] == SIZE and not meta["dual"]
    assert all(torch.equal(a, b) for a, b in zip(one.parameters(), two.parameters(), strict=True))
    assert not one.training


def test_load_model_refuses_start_weights(tmp_path):
    torch.save({"state_dict": {}, "meta": {"source": "x"}}, tmp_path / "start.pth")
    with pytest.raises(ValueError, match="not a fine-tuned"):
        load_model(str(tmp_path / "start.pth"))


def test_saved_model_reloads_with_its_meta(tmp_path):
    settings = cnn_settings(tmp_path)
    store = FeatureStore(settings.store)
    torch.manual_seed(1)
    model, start = build_network("random", dual=False, dropout=DROPOUT)
    meta = {
        "kind": "cnn",
        "version": "cnn-test-0001",
        "dual": False,
        "input_size": 48,
        "margin": 0.5,
        "hyperparameters": {"dropout": DROPOUT},
        "start": {"tf_padding": start["tf_padding"]},
    }
    uri = save_model(store, model.state_dict(), meta)
    assert uri == model_uri(store, "cnn-test-0001")
    assert uri == str(Path(settings.store) / "models" / "cnn" / "cnn-test-0001" / "model.pth")
    assert json.loads((Path(uri).parent / "meta.json").read_text()) == meta
    loaded, loaded_meta = load_model(uri)
    assert loaded_meta == meta and not loaded.training
    saved = model.state_dict()
    assert all(torch.equal(v, saved[k]) for k, v in loaded.state_dict().items())
    # model_for takes a fine-tuned model as it is: its version, streams and crop settings.
    _, version, embed_meta = model_for(uri, None, settings)
    assert version == "cnn-test-0001" and embed_meta["input_size"] == 48
    with pytest.raises(ValueError, match="single-stream"):
        model_for(uri, True, settings)


def test_model_on_s3_store(tiny_cohort, tmp_path, s3_bucket):
    rows = cohort_rows(tiny_cohort)
    for row in rows:
        row["cdus_image"] = None
    settings = cnn_settings(tmp_path, store=f"{s3_bucket}/fs", cnn_epochs=1, cnn_batch_size=8)
    meta = finetune(rows, settings, FeatureStore(settings.store), "random")
    assert meta["uri"] == f"{s3_bucket}/fs/models/cnn/{meta['version']}/model.pth"
    _, loaded = load_model(meta["uri"])
    assert loaded["version"] == meta["version"]
    out = embed_cases(rows[:2], meta["uri"], settings)
    assert [r["model_version"] for r in out] == [meta["version"]] * 2
