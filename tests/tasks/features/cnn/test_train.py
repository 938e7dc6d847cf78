"""Fine-tuning step: leakage guard, learning, saving with lineage, reproducibility."""

from __future__ import annotations

import hashlib
import json
import logging
from pathlib import Path

import numpy as np
import pytest
import torch
import torchvision
from PIL import Image

from tasks.data.store import FeatureStore
from tasks.features.cnn.checkpoints import load_model, model_for
from tasks.features.cnn.dataset import CropDataset
from tasks.features.cnn.embed import embed_cases
from tasks.features.cnn.train import finetune
from tests.tasks.features.cnn.common import SIZE, cnn_settings, cohort_rows

torch.set_num_threads(1)


def _easy(rows: list[dict]) -> list[dict]:
    """Make the label visible: label-1 lesions are bright instead of dark."""
    for row in rows:
        if row["label"] == 1:
            image = np.asarray(Image.open(row["bmus_image"]))
            lesion = np.asarray(Image.open(row["bmus_mask"])) > 0
            image = image.copy()
            image[lesion] = 230
            Image.fromarray(image).save(row["bmus_image"])
    return rows


def test_finetune_refuses_rows_outside_the_training_split(tiny_cohort, tmp_path):
    rows = cohort_rows(tiny_cohort)
    rows[3]["split"] = "testing"
    settings = cnn_settings(tmp_path)
    with pytest.raises(ValueError, match="training rows only"):
        finetune(rows, settings, FeatureStore(settings.store), "random")
    rows[3]["split"], rows[4]["label"] = "training", None
    with pytest.raises(ValueError, match="training rows only"):
        finetune(rows, settings, FeatureStore(settings.store), "random")


def test_finetune_reads_crops_under_the_run_s_header_limits(tiny_cohort, tmp_path):
    """SLN_MAX_IMAGE_SIDE applies to fine-tuning's reads too, not only ingest's and
    embedding's: images the defaults accept are refused before any pixel is decoded."""
    from tasks.features.imaging import InputError

    rows = cohort_rows(tiny_cohort)
    settings = cnn_settings(tmp_path, max_image_side=32)
    with pytest.raises(InputError, match="over max_image_side 32"):
        finetune(rows, settings, FeatureStore(settings.store), "random")


@pytest.fixture(scope="module")
def pretrained(tmp_path_factory) -> str:
    """A stand-in for ImageNet start weights: random, with batch-norm statistics measured.

    Fine-tuning keeps a pretrained start's batch-norm statistics; a random start trains
    them from batches of a few crops, which is too noisy for a test of a few steps.
    """
    torch.manual_seed(0)
    net = torchvision.models.mobilenet_v2(weights=None)
    for module in net.modules():
        if isinstance(module, torch.nn.BatchNorm2d):
            module.momentum = None  # a plain average over the calibration batches
    with torch.no_grad():
        for _ in range(4):
            net(torch.randn(8, 3, SIZE, SIZE))
    path = tmp_path_factory.mktemp("start") / "calibrated.pth"
    torch.save(net.state_dict(), path)
    return str(path)


def test_finetune_learns_saves_and_reloads(tiny_cohort, tmp_path, caplog, pretrained):
    rows = _easy(cohort_rows(tiny_cohort))
    settings = cnn_settings(tmp_path, cnn_epochs=5, cnn_lr=1e-3, cnn_patience=5, cnn_batch_size=4)
    store = FeatureStore(settings.store)
    with caplog.at_level(logging.INFO, logger="tasks.features.cnn.train"):
        meta = finetune(rows, settings, store, pretrained, table_versions={"cohort": 3})
    assert "cnn epoch 5/5" in caplog.text

    curve = meta["curve"]
    assert len(curve) == 5
    assert all(e["val_loss"] is not None for e in curve)
    assert meta["best_epoch"] == 1 + min(range(5), key=lambda i: curve[i]["val_loss"])
    assert meta["version"].startswith("cnn-") and meta["dual"] is True
    sha = hashlib.sha256(Path(pretrained).read_bytes()).hexdigest()
    assert meta["start"] == {
        "uri": pretrained,
        "sha256": sha,
        "version": f"start-calibrated-{sha[:8]}",
        "tf_padding": False,
        "source": None,
        "licence": None,
    }
    assert meta["hyperparameters"]["batch_norm"] == "frozen"
    assert meta["input_size"] == SIZE and meta["margin"] == settings.cnn_margin
    assert meta["hyperparameters"]["lr"] == 1e-3 and meta["hyperparameters"]["pos_weight"] == 1
    assert meta["training_cases"] == 8 and len(meta["early_stopping_case_ids"]) == 2
    assert len(meta["training_data_sha256"]) == 64 and meta["table_versions"] == {"cohort": 3}
    assert meta["device"] == "cpu" and meta["seed"] == settings.seed
    assert meta["seconds_per_epoch"] > 0
    folder = Path(settings.store) / "models" / "cnn" / meta["version"]
    assert meta["uri"] == str(folder / "model.pth")
    assert json.loads((folder / "meta.json").read_text()) == meta

    # The checkpoint rebuilds the same network: identical logits and embeddings.
    model, loaded = load_model(meta["uri"])
    again, _ = load_model(meta["uri"])
    assert loaded == meta
    crops = CropDataset(rows, SIZE, settings.cnn_margin, train=False, dual=True)
    bmus, cdus = crops.bmus, crops.cdus
    with torch.inference_mode():
        # It learnt: the loss on the training crops (no augmentation, no dropout) fell well
        # below the start's (model_for builds the start as fine-tuning did, head included).
        before = model_for(pretrained, True, settings)[0](bmus, cdus)
        loss = torch.nn.functional.binary_cross_entropy_with_logits
        assert loss(model(bmus, cdus), crops.labels) < 0.5 * loss(before, crops.labels)
        assert torch.equal(model(bmus, cdus), again(bmus, cdus))
        assert torch.equal(model.embed(bmus, cdus)["fused"], again.embed(bmus, cdus)["fused"])

    # Embedding with the fine-tuned model records its version and uses its crop settings.
    embedded = embed_cases(rows[:2], meta["uri"], settings.model_copy(update={"cnn_size": 48}))
    assert {r["model_version"] for r in embedded} == {meta["version"]}
    assert {r["crop_size"] for r in embedded} == {SIZE}
    with torch.inference_mode():
        expected = model.embed(bmus[:2], cdus[:2])["fused"]  # the same batch: same kernels
    assert [r["fused"] for r in embedded] == expected.tolist()


def test_finetune_is_reproducible(tiny_cohort, tmp_path):
    rows = cohort_rows(tiny_cohort)
    for row in rows:  # single-stream, and no CDUS to read: the quicker run
        row["cdus_image"] = None
    settings = cnn_settings(tmp_path, cnn_epochs=2, cnn_batch_size=8)
    store = FeatureStore(settings.store)
    first = finetune(rows, settings, store, "random")
    second = finetune(rows, settings, store, "random")
    assert first["dual"] is False
    assert [e["train_loss"] for e in first["curve"]] == [e["train_loss"] for e in second["curve"]]
    assert first["training_data_sha256"] == second["training_data_sha256"]
    assert first["version"].split("-")[-1] == second["version"].split("-")[-1]
