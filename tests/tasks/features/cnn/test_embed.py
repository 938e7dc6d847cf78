"""Embedding step: lesion crops, augmentation, fine-tuning, checkpoints, deep features."""

from __future__ import annotations

import hashlib
import json
import logging
import os
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
import torchvision
from PIL import Image

from tasks.config import Settings
from tasks.data.ingest import validate_manifest
from tasks.data.schema import perturbed_mask_sha
from tasks.data.store import FeatureStore
from tasks.features.cnn.embed import (
    CropDataset,
    augment,
    case_crops,
    crop_box,
    crop_case,
    early_stopping_fold,
    embed_cases,
    finetune,
    load_model,
    mask_variants,
    model_for,
    start_version,
    start_weights,
    variant_mask_sha,
)
from tasks.features.imaging import InputError, perturb_mask, perturb_seed

torch.set_num_threads(1)

SIZE = 32  # the network is size-agnostic; small crops keep fine-tuning to seconds


def _png(folder: Path, name: str, array: np.ndarray) -> str:
    path = folder / name
    Image.fromarray(array).save(path)
    return str(path)


def _case(folder: Path, bmus: np.ndarray, mask: np.ndarray, cdus: np.ndarray | None = None):
    """A row with just the file columns the crop reads."""
    return {
        "case_id": "C1",
        "bmus_image": _png(folder, "bmus.png", bmus),
        "bmus_mask": _png(folder, "mask.png", mask * 255),
        "cdus_image": None if cdus is None else _png(folder, "cdus.png", cdus),
        "bmus_mask_reader2": float("nan"),  # missing values come as NaN from pandas
        "bmus_mask_repeat": None,
    }


def _rect(shape, rows: tuple[int, int], cols: tuple[int, int]) -> np.ndarray:
    """uint8 0/1 mask with rows[0]..rows[1] x cols[0]..cols[1] set (inclusive)."""
    mask = np.zeros(shape, np.uint8)
    mask[rows[0] : rows[1] + 1, cols[0] : cols[1] + 1] = 1
    return mask


def _cohort_rows(manifest: Path, split: str | None = "training") -> list[dict]:
    rows = validate_manifest(str(manifest), Settings(), "t").cohort.to_dict("records")
    for row in rows:
        row["split"] = split
    return rows


def _settings(tmp_path: Path, **kwargs) -> Settings:
    defaults = {"store": str(tmp_path / "store"), "cnn_size": SIZE, "cnn_start": "random"}
    return Settings(**{**defaults, **kwargs})


# -- crops -----------------------------------------------------------------------------------
def test_crop_keeps_the_lesion_with_its_margin_in_a_square(tmp_path):
    bmus = np.full((64, 80), 50, np.uint8)
    mask = _rect(bmus.shape, (20, 29), (30, 49))  # 10 x 20 px lesion
    bmus[mask == 1] = 200
    case = _case(tmp_path, bmus, mask)
    # Side 20 * (1 + 2 * 0.25) = 30 px: at size 30 the crop is the window itself.
    crop, cdus = crop_case(case, size=30, margin=0.25)
    assert cdus is None and crop.shape == (1, 30, 30) and crop.dtype == torch.float32
    lesion = torch.zeros(30, 30, dtype=torch.bool)
    lesion[10:20, 5:25] = True  # 10 rows of margin above and below, 5 columns each side
    torch.testing.assert_close(crop[0][lesion], torch.full((200,), 200 / 255))
    torch.testing.assert_close(crop[0][~lesion], torch.full((700,), 50 / 255))
    big, _ = crop_case(case, size=60, margin=0.25)
    assert big.shape == (1, 60, 60) and 0.0 <= big.min() and big.max() <= 1.0
    wide = (big[0] > 0.5).any(dim=0).nonzero()
    assert wide.min() == 10 and wide.max() == 49  # two thirds of the width, centred


def test_cdus_crop_has_the_bmus_geometry_at_any_resolution(tmp_path):
    bmus = np.full((64, 80), 60, np.uint8)
    mask = _rect(bmus.shape, (20, 30), (30, 50))  # centre pixel (25, 40)
    for factor in (1, 2):
        cdus = np.full((64 * factor, 80 * factor, 3), 60, np.uint8)
        cdus[25 * factor : 26 * factor, 40 * factor : 41 * factor] = (255, 0, 0)
        case = _case(tmp_path, bmus, mask, cdus)
        _, crop = crop_case(case, size=64, margin=0.25)
        assert crop.shape == (3, 64, 64)
        redness = crop[0] - crop[1]
        row, col = divmod(int(redness.argmax()), 64)
        assert abs(row - 32) <= 2 and abs(col - 32) <= 2, (factor, row, col)
        assert crop[1].max() <= crop[0].max()  # colour kept


def test_crop_pads_past_the_border_instead_of_distorting(tmp_path):
    bmus = np.full((60, 60), 100, np.uint8)
    mask = _rect(bmus.shape, (30, 39), (0, 9))  # touches the left border
    bmus[mask == 1] = 250
    # Side 10 * 2 = 20 px centred on the lesion: 5 columns fall left of the image.
    crop, _ = crop_case(_case(tmp_path, bmus, mask), size=20, margin=0.5)
    assert torch.all(crop[0, :, :5] == 0)
    bright = (crop[0] > 0.9).nonzero()
    assert bright[:, 0].min() == 5 and bright[:, 0].max() == 14  # rows: 10 px, centred
    assert bright[:, 1].min() == 5 and bright[:, 1].max() == 14  # columns: still 10 px


def test_rgb_bmode_becomes_luminance(tmp_path):
    bmus = np.zeros((40, 40, 3), np.uint8)
    bmus[...] = (100, 150, 50)
    mask = _rect((40, 40), (15, 24), (15, 24))
    crop, _ = crop_case(_case(tmp_path, bmus, mask), size=SIZE)
    assert crop.shape == (1, SIZE, SIZE)
    expected = (0.299 * 100 + 0.587 * 150 + 0.114 * 50) / 255
    torch.testing.assert_close(crop, torch.full_like(crop, expected))


def test_empty_or_missing_mask_names_the_file(tmp_path):
    bmus = np.full((40, 40), 100, np.uint8)
    case = _case(tmp_path, bmus, np.zeros((40, 40), np.uint8))
    with pytest.raises(InputError, match="mask is empty") as err:
        crop_case(case)
    assert err.value.column == "bmus_mask"
    with pytest.raises(InputError, match="no reader2 mask"):
        crop_case(case, mask_variant="reader2")


def test_crops_of_the_perturbed_mask_when_asked(tmp_path):
    bmus = (np.arange(80 * 100).reshape(80, 100) % 251).astype(np.uint8)
    yy, xx = np.mgrid[:80, :100]
    mask = (((yy - 40) ** 2 + (xx - 50) ** 2) <= 20**2).astype(np.uint8)
    case = _case(tmp_path, bmus, mask) | {"bmus_mask_sha256": "m1"}
    assert mask_variants(case) == ["reader1"]
    assert mask_variants(case, perturb=True) == ["reader1", "perturbed"]
    assert list(case_crops(case, size=SIZE)) == ["reader1"]
    crops = case_crops(case, size=SIZE, perturb=True)
    assert list(crops) == ["reader1", "perturbed"]
    # The box follows the perturbed mask: the one radiomics measures, seeded by the case.
    perturbed = perturb_mask(mask, perturb_seed("C1", "m1"))
    assert crop_box(perturbed, 0.25) != crop_box(mask, 0.25)
    box = crop_box(perturbed, 0.25)
    side = round(box[2])
    window = bmus[
        round(box[0] - side / 2) : round(box[0] - side / 2) + side,
        round(box[1] - side / 2) : round(box[1] - side / 2) + side,
    ]
    expected = torch.nn.functional.interpolate(
        torch.from_numpy(window / 255.0).float()[None, None],
        size=(SIZE, SIZE),
        mode="bilinear",
        antialias=True,
        align_corners=False,
    )[0]
    torch.testing.assert_close(crops["perturbed"][0], expected, atol=1e-5, rtol=0)
    assert not torch.equal(crops["perturbed"][0], crops["reader1"][0])
    # Asked for by name: the same crop.
    torch.testing.assert_close(case_crops(case, ["perturbed"], SIZE)["perturbed"][0], expected)
    assert variant_mask_sha(case, "perturbed") == perturbed_mask_sha("m1")
    assert variant_mask_sha(case, "reader1") == "m1"

    # A case with a real repeat is never perturbed.
    repeat = case | {"bmus_mask_repeat": case["bmus_mask"], "bmus_mask_repeat_sha256": "m1"}
    assert list(case_crops(repeat, size=SIZE, perturb=True)) == ["reader1", "repeat"]
    with pytest.raises(InputError, match="no perturbed mask"):
        case_crops(repeat, ["perturbed"], SIZE)


# -- augmentation ----------------------------------------------------------------------------
def test_augmentation_only_in_training_and_the_same_for_both_streams(tmp_path):
    rng = np.random.default_rng(0)
    bmus = rng.integers(0, 255, (48, 48), dtype=np.uint8)
    bmus[:, :20] //= 4  # asymmetric, so a flip on one stream only would show
    mask = _rect(bmus.shape, (14, 33), (14, 33))
    cdus = np.repeat(bmus[..., None], 3, axis=2)  # CDUS = B-mode: streams must stay equal
    case = {**_case(tmp_path, bmus, mask, cdus), "label": 1}
    frozen = CropDataset([case], SIZE, 0.25, train=False, dual=True)
    first, second = frozen[0], frozen[0]
    assert all(torch.equal(a, b) for a, b in zip(first, second, strict=True))
    assert first[2].item() == 1.0
    training = CropDataset([case], SIZE, 0.25, train=True, dual=True, seed=1)
    draws = [training[0] for _ in range(4)]
    for b, c, _ in draws:
        assert not torch.equal(b, first[0])
        torch.testing.assert_close(c, b.expand(3, -1, -1), atol=1e-5, rtol=0)
    assert not torch.equal(draws[0][0], draws[1][0])


def test_augment_flips_both_streams_alike():
    bmus = torch.zeros(1, 8, 8)
    bmus[..., :2] = 1.0
    cdus = torch.zeros(3, 8, 8)
    cdus[0, :, :2] = 1.0
    for seed in range(6):  # flip is one of the draws: some seeds flip, others do not
        b, c = augment(bmus, cdus, torch.Generator().manual_seed(seed))
        left_b = b[0, :, :4].sum() > b[0, :, 4:].sum()
        left_c = c[0, :, :4].sum() > c[0, :, 4:].sum()
        assert left_b == left_c


# -- fine-tuning -----------------------------------------------------------------------------
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


def test_early_stopping_fold_is_grouped_stratified_and_seeded():
    cases = [
        {"case_id": f"C{i}", "patient_key": f"P{i // 2}", "label": (i // 2) % 2} for i in range(20)
    ]
    fit, val = early_stopping_fold(cases, 0.2, seed=3)
    assert len(fit) + len(val) == 20
    assert {c["patient_key"] for c in fit}.isdisjoint({c["patient_key"] for c in val})
    assert sorted(c["label"] for c in val) == [0, 0, 1, 1]  # one patient of each label
    again = early_stopping_fold(cases, 0.2, seed=3)[1]
    assert [c["case_id"] for c in again] == [c["case_id"] for c in val]


def test_finetune_refuses_rows_outside_the_training_split(tiny_cohort, tmp_path):
    rows = _cohort_rows(tiny_cohort)
    rows[3]["split"] = "testing"
    settings = _settings(tmp_path)
    with pytest.raises(ValueError, match="training rows only"):
        finetune(rows, settings, FeatureStore(settings.store), "random")
    rows[3]["split"], rows[4]["label"] = "training", None
    with pytest.raises(ValueError, match="training rows only"):
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
    rows = _easy(_cohort_rows(tiny_cohort))
    settings = _settings(tmp_path, cnn_epochs=5, cnn_lr=1e-3, cnn_patience=5, cnn_batch_size=4)
    store = FeatureStore(settings.store)
    with caplog.at_level(logging.INFO, logger="tasks.features.cnn.embed"):
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

    torch.save({"state_dict": {}, "meta": {"source": "x"}}, tmp_path / "start.pth")
    with pytest.raises(ValueError, match="not a fine-tuned"):
        load_model(str(tmp_path / "start.pth"))


def test_finetune_is_reproducible(tiny_cohort, tmp_path):
    rows = _cohort_rows(tiny_cohort)
    for row in rows:  # single-stream, and no CDUS to read: the quicker run
        row["cdus_image"] = None
    settings = _settings(tmp_path, cnn_epochs=2, cnn_batch_size=8)
    store = FeatureStore(settings.store)
    first = finetune(rows, settings, store, "random")
    second = finetune(rows, settings, store, "random")
    assert first["dual"] is False
    assert [e["train_loss"] for e in first["curve"]] == [e["train_loss"] for e in second["curve"]]
    assert first["training_data_sha256"] == second["training_data_sha256"]
    assert first["version"].split("-")[-1] == second["version"].split("-")[-1]


# -- embedding -------------------------------------------------------------------------------
def test_embed_cases_rows_per_mask_variant(tiny_cohort, tmp_path, caplog):
    rows = _cohort_rows(tiny_cohort, split=None)
    for row in rows[:2]:  # a second reader's delineation: the lesion mask grown a little
        mask = np.asarray(Image.open(row["bmus_mask"])) > 0
        grown = (np.pad(mask, 2)[:-4, 2:-2] | mask).astype(np.uint8)  # union with a 2 px shift
        row["bmus_mask_reader2"] = _png(tmp_path, f"{row['case_id']}_r2.png", grown * 255)
        row["bmus_mask_reader2_sha256"] = "r2-" + row["case_id"]
    settings = _settings(tmp_path, cnn_batch_size=4)
    with caplog.at_level(logging.INFO, logger="tasks.features.cnn.embed"):
        out = embed_cases(rows, "random", settings)
    assert "10/10 crops" in caplog.text
    assert len(out) == 10
    keys = {(r["case_id"], r["mask_variant"]) for r in out}
    assert keys == {(r["case_id"], "reader1") for r in rows} | {
        (r["case_id"], "reader2") for r in rows[:2]
    }
    first = out[0]
    assert set(first) == {
        "case_id",
        "mask_variant",
        "model_version",
        "image_sha256",
        "mask_sha256",
        "cdus_sha256",
        "bmus",
        "cdus",
        "fused",
        "crop_size",
        "crop_margin",
        "device",
    }
    assert len(first["bmus"]) == 1280 and len(first["cdus"]) == 1280 and len(first["fused"]) == 2560
    assert first["model_version"] == "start-random" and first["device"] == "cpu"
    assert first["image_sha256"] == rows[0]["bmus_image_sha256"]
    assert first["cdus_sha256"] == rows[0]["cdus_image_sha256"]
    reader2 = next(r for r in out if r["mask_variant"] == "reader2")
    assert reader2["mask_sha256"] == "r2-" + reader2["case_id"]
    assert reader2["fused"] != next(
        r["fused"] for r in out if r["case_id"] == reader2["case_id"] and r is not reader2
    )

    again = embed_cases(rows, "random", settings)
    assert [r["fused"] for r in again] == [r["fused"] for r in out]


def test_embed_cases_single_stream_without_cdus(tiny_cohort, tmp_path):
    rows = _cohort_rows(tiny_cohort, split=None)[:3]
    rows[1]["cdus_image"] = float("nan")
    out = embed_cases(rows, "random", _settings(tmp_path))
    assert all(r["cdus"] is None and r["cdus_sha256"] is None for r in out)
    assert all(len(r["fused"]) == 1280 and r["fused"] == r["bmus"] for r in out)
    with pytest.raises(ValueError, match="needs a CDUS image"):
        embed_cases(rows, "random", _settings(tmp_path), dual=True)


def test_model_for_gives_the_same_random_start_every_time(tmp_path):
    settings = _settings(tmp_path)
    one, version, meta = model_for("random", False, settings)
    two, _, _ = model_for("random", False, settings)
    assert version == "start-random" and meta["input_size"] == SIZE and not meta["dual"]
    assert all(torch.equal(a, b) for a, b in zip(one.parameters(), two.parameters(), strict=True))
    assert not one.training


# -- start weights ---------------------------------------------------------------------------
def test_start_weights_without_tflite(tmp_path, caplog):
    store = FeatureStore(str(tmp_path / "store"))
    assert start_weights(_settings(tmp_path), store) == "random"
    assert start_weights(_settings(tmp_path, cnn_start="s3://b/w.pth"), store) == "s3://b/w.pth"
    empty = _settings(tmp_path, cnn_start="auto", shared_data=tmp_path / "none")
    with caplog.at_level(logging.WARNING, logger="tasks.features.cnn.embed"):
        assert start_weights(empty, store) == "random"
    assert "random weights" in caplog.text
    with pytest.raises(FileNotFoundError):
        start_weights(empty.model_copy(update={"cnn_start": "tflite"}), store)


def test_start_version_names():
    assert start_version("random") == "start-random"
    meta = {"sha256": "ab" * 32, "converter": "tasks.features.cnn.weights.convert_tflite"}
    assert start_version("s3://b/models/start/x.pth", meta) == "start-tflite-abababab"
    assert start_version("/w/imagenet.v2.pth", {"sha256": "cd" * 32}) == "start-imagenet-cdcdcdcd"


def test_tflite_start_weights_are_converted_once(shared_data, tmp_path):
    source = shared_data / "mobilenet_v2_tflite" / "mobilenet_v2_1.0_224_quant.tflite"
    if not source.is_file():
        pytest.skip(f"{source} not found")
    local = tmp_path / "shared"
    (local / "mobilenet_v2_tflite").mkdir(parents=True)
    shutil.copy(source, local / "mobilenet_v2_tflite" / source.name)
    settings = _settings(tmp_path, cnn_start="tflite", shared_data=local)
    store = FeatureStore(settings.store)
    uri = start_weights(settings, store)
    assert uri == str(Path(settings.store) / "models" / "start" / "mobilenet_v2_tflite.pth")
    mtime = os.stat(uri).st_mtime_ns
    assert start_weights(settings, store) == uri
    # Once converted, the store's copy serves workers that lack the shared folder.
    (local / "mobilenet_v2_tflite" / source.name).unlink()
    assert start_weights(settings.model_copy(update={"cnn_start": "auto"}), store) == uri
    assert os.stat(uri).st_mtime_ns == mtime
    _, version, meta = model_for(uri, False, settings)
    assert version.startswith("start-tflite-") and meta["tf_padding"] is True


def test_model_on_s3_store(tiny_cohort, tmp_path, s3_bucket):
    rows = _cohort_rows(tiny_cohort)
    for row in rows:
        row["cdus_image"] = None
    settings = _settings(tmp_path, store=f"{s3_bucket}/fs", cnn_epochs=1, cnn_batch_size=8)
    meta = finetune(rows, settings, FeatureStore(settings.store), "random")
    assert meta["uri"] == f"{s3_bucket}/fs/models/cnn/{meta['version']}/model.pth"
    _, loaded = load_model(meta["uri"])
    assert loaded["version"] == meta["version"]
    out = embed_cases(rows[:2], meta["uri"], settings)
    assert [r["model_version"] for r in out] == [meta["version"]] * 2
