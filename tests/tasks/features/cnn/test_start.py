"""Start weights of the CNN: resolving the spec, the TFLite conversion, start versions."""

from __future__ import annotations

import logging
import os
import shutil
from pathlib import Path

import pytest

from tasks.data.store import FeatureStore
from tasks.features.cnn.checkpoints import model_for
from tasks.features.cnn.start import resolve_start, start_version, start_weights
from tests.tasks.features.cnn.common import cnn_settings


def test_start_weights_without_tflite(tmp_path, caplog):
    store = FeatureStore(str(tmp_path / "store"))
    assert start_weights(cnn_settings(tmp_path), store) == "random"
    assert start_weights(cnn_settings(tmp_path, cnn_start="s3://b/w.pth"), store) == "s3://b/w.pth"
    empty = cnn_settings(tmp_path, cnn_start="auto", shared_data=tmp_path / "none")
    with caplog.at_level(logging.WARNING, logger="tasks.features.cnn.start"):
        assert start_weights(empty, store) == "random"
    assert "random weights" in caplog.text
    with pytest.raises(FileNotFoundError):
        start_weights(empty.model_copy(update={"cnn_start": "tflite"}), store)


def test_resolve_start_needs_a_store_only_for_tflite(tmp_path):
    settings = cnn_settings(tmp_path, shared_data=tmp_path / "none")
    assert resolve_start("random", settings, None) == "random"
    assert resolve_start("/w/x.pth", settings, None) == "/w/x.pth"
    with pytest.raises(ValueError, match="need a store"):
        resolve_start("auto", settings, None)
    # "auto" without a TFLite file: the random start, whatever settings.cnn_start says.
    spec = settings.model_copy(update={"cnn_start": "/w/x.pth"})
    assert resolve_start("auto", spec, FeatureStore(settings.store)) == "random"


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
    settings = cnn_settings(tmp_path, cnn_start="tflite", shared_data=local)
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
