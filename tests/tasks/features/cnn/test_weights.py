"""Offline ImageNet MobileNetV2: TFLite conversion, dequantisation, loading."""

from __future__ import annotations

import hashlib

import fsspec
import numpy as np
import pytest
import torch
from PIL import Image

from tasks.features.cnn.weights import (
    LICENCE,
    Conv2dSame,
    _same_padding,
    convert_tflite,
    dequantize,
    imagenet_transform,
    load_backbone,
)

torch.set_num_threads(1)

TFLITE_FILES = ("mobilenet_v2_1.0_224_quant.tflite", "tf2_mobilenet_v2_1.0_224_ptq.tflite")
# torchvision's 1000-class indices (TFLite's minus its background class).
EXPECTED_TOP1 = {"cat.bmp": 285, "parrot.jpg": 88}  # Egyptian cat, macaw


@pytest.fixture(scope="module")
def tflite_dir(shared_data):
    folder = shared_data / "mobilenet_v2_tflite"
    if not folder.is_dir():
        pytest.skip(f"MobileNetV2 TFLite files not found in {folder}")
    return folder


@pytest.fixture(scope="module")
def converted(tflite_dir, tmp_path_factory) -> dict:
    """Each TFLite file converted once per module: name -> (checkpoint path, meta)."""
    out = tmp_path_factory.mktemp("weights")
    return {
        name: (out / f"{name}.pth", convert_tflite(tflite_dir / name, out / f"{name}.pth"))
        for name in TFLITE_FILES
    }


@pytest.fixture(scope="module")
def test_images(tflite_dir) -> torch.Tensor:
    transform = imagenet_transform()
    return torch.stack(
        [transform(Image.open(tflite_dir / name).convert("RGB")) for name in EXPECTED_TOP1]
    )


def test_dequantize_per_tensor_uint8():
    q = np.array([0, 127, 128, 255], dtype=np.uint8)
    real = dequantize(q, np.array([0.5]), np.array([128]))
    np.testing.assert_array_equal(real, [-64.0, -0.5, 0.0, 63.5])
    assert real.dtype == np.float32


def test_dequantize_per_channel_int8_on_any_axis():
    q = np.array([[-128, 0, 127], [-2, 1, 3]], dtype=np.int8)
    real = dequantize(q, np.array([0.1, 2.0]), np.array([0, 0]), axis=0)
    np.testing.assert_allclose(real, [[-12.8, 0.0, 12.7], [-4.0, 2.0, 6.0]], rtol=1e-6)
    # Depthwise weights are quantised along their last axis (1HWC) with a single zero point.
    depthwise = q.T.reshape(1, 1, 3, 2)
    real = dequantize(depthwise, np.array([0.1, 2.0]), np.array([0]), axis=3)
    np.testing.assert_allclose(real.reshape(3, 2).T, [[-12.8, 0.0, 12.7], [-4.0, 2.0, 6.0]])


def test_dequantize_rejects_scales_that_do_not_fit():
    with pytest.raises(ValueError, match="3 scales"):
        dequantize(np.zeros((2, 2), np.int8), np.ones(3), np.zeros(1), axis=0)


def test_same_padding_puts_the_odd_pixel_bottom_right():
    assert _same_padding(224, 3, 2, 1) == (0, 1)
    assert _same_padding(225, 3, 2, 1) == (1, 1)
    assert _same_padding(56, 3, 1, 1) == (1, 1)
    assert _same_padding(7, 1, 1, 1) == (0, 0)


@pytest.mark.parametrize("tf_padding", [True, False], ids=["tf-padding", "torchvision-padding"])
@pytest.mark.parametrize("name", TFLITE_FILES)
def test_converted_top1(converted, test_images, name, tf_padding):
    model, meta = load_backbone(str(converted[name][0]), tf_padding=tf_padding)
    assert meta["tf_padding"] is tf_padding
    with torch.no_grad():
        logits = model.eval()(test_images)
    assert logits.shape == (2, 1000)
    assert logits.argmax(1).tolist() == list(EXPECTED_TOP1.values())


@pytest.mark.parametrize("name", TFLITE_FILES)
def test_converted_meta_and_identity_batch_norm(converted, tflite_dir, name):
    path, meta = converted[name]
    source_sha = hashlib.sha256((tflite_dir / name).read_bytes()).hexdigest()
    assert (meta["source"], meta["source_sha256"], meta["tf_padding"]) == (name, source_sha, True)
    assert meta["licence"] == LICENCE and "Apache-2.0" in LICENCE

    model, loaded = load_backbone(str(path))
    assert loaded["tf_padding"] is True  # converted weights default to TF padding
    assert loaded["sha256"] == hashlib.sha256(path.read_bytes()).hexdigest()
    assert loaded["licence"] == LICENCE and loaded["start"] == str(path)
    assert isinstance(model.features[0][0], Conv2dSame)
    bn = model.features[5].conv[1][1].eval()
    x = torch.randn(1, bn.num_features, 3, 3)
    with torch.no_grad():
        assert torch.equal(bn(x), x + bn.bias.view(1, -1, 1, 1))  # BN only adds the folded bias


def test_round_trip_gives_identical_outputs(converted, test_images):
    path = converted[TFLITE_FILES[1]][0]
    model, meta = load_backbone(str(path))
    with torch.no_grad():
        expected = model.eval()(test_images)
    # A plain torchvision state_dict, through an fsspec URI, with the padding named again.
    with fsspec.open("memory://weights/plain.pth", "wb") as handle:
        torch.save(model.state_dict(), handle)
    again, again_meta = load_backbone("memory://weights/plain.pth", tf_padding=True)
    assert again_meta["start"] == "memory://weights/plain.pth" and "licence" not in again_meta
    with torch.no_grad():
        assert torch.equal(again.eval()(test_images), expected)


def test_convert_to_and_load_from_s3(tflite_dir, s3_bucket, test_images, converted):
    uri = f"{s3_bucket}/models/mobilenet_v2.pth"
    convert_tflite(tflite_dir / TFLITE_FILES[0], uri)
    from_s3, meta = load_backbone(uri)
    local, _ = load_backbone(str(converted[TFLITE_FILES[0]][0]))
    assert meta["start"] == uri and meta["tf_padding"] is True
    with torch.no_grad():
        assert torch.equal(from_s3.eval()(test_images), local.eval()(test_images))


def test_random_start():
    model, meta = load_backbone("random")
    assert meta == {"start": "random", "sha256": None, "tf_padding": False}
    assert type(model.features[0][0]) is torch.nn.Conv2d
