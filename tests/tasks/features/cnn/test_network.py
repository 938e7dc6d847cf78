"""Dual-stream MobileNetV2: shapes, modes, determinism, TF padding swap."""

from __future__ import annotations

import hashlib

import pytest
import torch
import torchvision

from tasks.features.cnn.network import DualStreamMobileNetV2, build_network
from tasks.features.cnn.weights import Conv2dSame, use_tf_padding

torch.set_num_threads(1)

SIZE = 64  # small inputs keep these tests fast; the network is size-agnostic


@pytest.fixture
def images() -> tuple[torch.Tensor, torch.Tensor]:
    generator = torch.Generator().manual_seed(0)
    bmus = torch.rand(2, 1, SIZE, SIZE, generator=generator)
    cdus = torch.rand(2, 3, SIZE, SIZE, generator=generator)
    return bmus, cdus


def _network(**kwargs) -> tuple[DualStreamMobileNetV2, dict]:
    torch.manual_seed(0)
    return build_network(**kwargs)


def test_dual_stream_shapes(images):
    model, meta = _network()
    assert meta["streams"] == ["bmus", "cdus"] and meta["start"] == "random"
    with torch.no_grad():
        out = model.eval().embed(*images)
        logits = model(*images)
    assert {k: tuple(v.shape) for k, v in out.items()} == {
        "bmus": (2, 1280),
        "cdus": (2, 1280),
        "fused": (2, 2560),
    }
    assert logits.shape == (2,)


def test_single_stream_shapes_without_cdus(images):
    model, meta = _network(dual=False)
    assert meta["streams"] == ["bmus"] and model.cdus is None
    with torch.no_grad():
        out = model.eval().embed(images[0])
        logits = model(images[0], cdus=None)
    assert {k: tuple(v.shape) for k, v in out.items()} == {"bmus": (2, 1280), "fused": (2, 1280)}
    assert logits.shape == (2,)
    with pytest.raises(ValueError, match="single-stream"):
        model(*images)


def test_dual_stream_needs_cdus(images):
    model, _ = _network()
    with pytest.raises(ValueError, match="needs a CDUS image"):
        model(images[0])
    with pytest.raises(ValueError, match=r"\[N, 1 or 3, H, W\]"):
        model(images[0][:, 0], images[1])


def test_eval_embeddings_are_deterministic_and_grey_is_replicated(images):
    model, _ = _network(dropout=0.5)
    model.eval()
    bmus, cdus = images
    with torch.no_grad():
        first, second = model.embed(bmus, cdus), model.embed(bmus, cdus)
        grey_as_rgb = model.embed(bmus.expand(-1, 3, -1, -1), cdus)
        assert torch.equal(model(bmus, cdus), model(bmus, cdus))  # dropout off in eval
    for key in first:
        assert torch.equal(first[key], second[key])
    assert torch.equal(first["bmus"], grey_as_rgb["bmus"])


def test_streams_start_from_the_same_weights_without_sharing_them():
    model, _ = _network()
    bmus, cdus = model.bmus.state_dict(), model.cdus.state_dict()
    assert all(torch.equal(bmus[k], cdus[k]) for k in bmus)
    assert model.bmus[0][0].weight is not model.cdus[0][0].weight
    assert {k.split(".")[0] for k in model.state_dict()} == {"bmus", "cdus", "head"}


def test_start_from_a_plain_torchvision_checkpoint(tmp_path, images):
    torch.manual_seed(1)
    reference = torchvision.models.mobilenet_v2()
    path = tmp_path / "plain.pth"
    torch.save(reference.state_dict(), path)
    model, meta = build_network(str(path), dual=False, dropout=0.1)
    assert meta["start"] == str(path) and meta["tf_padding"] is False and meta["dropout"] == 0.1
    assert meta["sha256"] == hashlib.sha256(path.read_bytes()).hexdigest()
    x = images[1]
    normalised = (x - model.mean) / model.std
    with torch.no_grad():
        expected = reference.eval().features(normalised).mean(dim=(2, 3))
        assert torch.allclose(model.eval().embed(x)["bmus"], expected, atol=1e-6)


def test_tf_padding_swaps_only_stride2_convs_and_keeps_keys(images):
    plain = torchvision.models.mobilenet_v2()
    keys = list(plain.state_dict())
    types_before = {name: type(m) for name, m in plain.named_modules()}
    use_tf_padding(plain)
    assert list(plain.state_dict()) == keys
    changed = {name for name, m in plain.named_modules() if type(m) is not types_before[name]}
    assert changed == {
        "features.0.0",
        "features.2.conv.1.0",
        "features.4.conv.1.0",
        "features.7.conv.1.0",
        "features.14.conv.1.0",
    }
    assert all(isinstance(plain.get_submodule(name), Conv2dSame) for name in changed)

    padded, meta = _network(tf_padding=True)
    symmetric, _ = _network(tf_padding=False)
    assert meta["tf_padding"] is True
    assert list(padded.state_dict()) == list(symmetric.state_dict())
    padded.load_state_dict(symmetric.state_dict())  # same weights, only padding differs
    with torch.no_grad():
        a = padded.eval().embed(*images)["fused"]
        b = symmetric.eval().embed(*images)["fused"]
    # Random weights shrink activations to ~1e-9 at eval, so compare relative to scale.
    assert a.shape == b.shape and (a - b).abs().max() > 1e-2 * b.abs().max()
