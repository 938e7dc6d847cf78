"""Start weights of the CNN: what fine-tuning (or an untouched embedding model) starts from.

Reads ``settings.cnn_start``: ``"random"``, a ``.pth`` path or URI, or ``"tflite"``/``"auto"``
for the offline TFLite MobileNetV2 in ``<shared_data>/mobilenet_v2_tflite/``. Writes
``<store>/models/start/mobilenet_v2_tflite.pth``, that file converted once
(:func:`~tasks.features.cnn.weights.convert_tflite`), so workers that see only the store
can use it.
"""

from __future__ import annotations

import logging
import os
import tempfile
from collections.abc import Mapping
from pathlib import PurePosixPath
from typing import Any

from prefect import task
from prefect.cache_policies import NO_CACHE

from tasks.config import Settings
from tasks.data import uris
from tasks.data.store import FeatureStore
from tasks.features.cnn.weights import convert_tflite

logger = logging.getLogger(__name__)

TFLITE_FILE = "mobilenet_v2_1.0_224_quant.tflite"
START_FILE = "mobilenet_v2_tflite.pth"


def start_weights(settings: Settings, store: FeatureStore) -> str:
    """Resolve ``settings.cnn_start`` to what :func:`~.network.build_network` takes.

    ``"random"`` stays; a path or URI is returned as given; ``"tflite"`` and ``"auto"``
    convert ``<shared_data>/mobilenet_v2_tflite/mobilenet_v2_1.0_224_quant.tflite`` once
    into ``<store>/models/start/mobilenet_v2_tflite.pth`` and return that URI (an existing
    copy is used as it is). ``"auto"`` falls back to ``"random"``, with a warning, when
    neither the copy nor the TFLite file exists.

    Raises
    ------
    FileNotFoundError
        ``"tflite"`` without the TFLite file.
    """
    spec = settings.cnn_start
    if spec not in ("auto", "tflite"):
        return spec
    target = store.uri("models", "start", START_FILE)
    # The store's copy first: GPU workers may see the store but not the shared folder.
    if uris.exists(target):
        return target
    source = settings.shared_data / "mobilenet_v2_tflite" / TFLITE_FILE
    if not source.is_file():
        if spec == "tflite":
            raise FileNotFoundError(f"cnn_start='tflite' but {source} does not exist")
        logger.warning("no TFLite MobileNetV2 at %s: the CNN starts from random weights", source)
        return "random"
    with tempfile.TemporaryDirectory() as tmp:
        local = os.path.join(tmp, START_FILE)
        convert_tflite(source, local)
        with open(local, "rb") as handle:
            uris.write_bytes(target, handle.read())
    logger.info("converted %s into %s", source.name, target)
    return target


def resolve_start(spec: str, settings: Settings, store: FeatureStore | None) -> str:
    """A start spec as :func:`~.network.build_network` takes it: ``"auto"``/``"tflite"``
    through :func:`start_weights` (which needs ``store``), anything else as given."""
    if spec not in ("auto", "tflite"):
        return spec
    if store is None:
        raise ValueError(f"start weights {spec!r} need a store to hold the converted file")
    return start_weights(settings.model_copy(update={"cnn_start": spec}), store)


def start_version(start: str, meta: Mapping[str, Any] | None = None) -> str:
    """Model version of untouched start weights, for embeddings made before fine-tuning.

    ``start-random``, ``start-tflite-<sha8>`` (a converted TFLite checkpoint) or
    ``start-<file stem>-<sha8>``, where sha8 starts the checkpoint file's SHA-256 (taken
    from ``meta["sha256"]`` as :func:`~.weights.load_backbone` gives it, else hashed).
    """
    if start == "random":
        return "start-random"
    meta = meta or {}
    sha = meta.get("sha256") or uris.sha256(start)
    if meta.get("converter") == convert_tflite.__module__ + ".convert_tflite":
        name = "tflite"
    else:
        name = PurePosixPath(start.split("://", 1)[-1]).name.split(".")[0] or "weights"
    return f"start-{name}-{sha[:8]}"


# -- Prefect wrappers ------------------------------------------------------------------------
start_weights_task = task(start_weights, name="start-weights", cache_policy=NO_CACHE)
