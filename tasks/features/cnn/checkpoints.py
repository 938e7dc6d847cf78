"""CNN model files: fine-tuned checkpoints saved and loaded, and the model that embeds.

Writes ``<store>/models/cnn/<version>/model.pth`` (``{"state_dict", "meta"}``) and
``meta.json`` beside it, through the store's atomic write. Reads such a checkpoint (any
fsspec URI), or builds an untouched start-weights model (:mod:`~tasks.features.cnn.start`).
"""

from __future__ import annotations

import io
import json
from collections.abc import Mapping
from typing import Any

import numpy as np
import torch

from tasks.config import Settings
from tasks.data import uris
from tasks.data.store import FeatureStore
from tasks.features.cnn.network import DualStreamMobileNetV2, build_network
from tasks.features.cnn.start import start_version

DROPOUT = 0.2  # before the head; a fine-tuned model records its own in its hyperparameters
MODELS = ("models", "cnn")  # <store>/models/cnn/<version>/{model.pth,meta.json}


def model_uri(store: FeatureStore, version: str) -> str:
    """Where the checkpoint of fine-tuned model ``version`` lives in ``store``."""
    return store.uri(*MODELS, version, "model.pth")


def save_model(
    store: FeatureStore, state_dict: Mapping[str, torch.Tensor], meta: Mapping[str, Any]
) -> str:
    """Write a fine-tuned model (weights and ``meta``, which names its ``version``) and its
    ``meta.json``; returns the URI of ``model.pth``."""
    buffer = io.BytesIO()
    torch.save({"state_dict": state_dict, "meta": meta}, buffer)
    folder = (*MODELS, meta["version"])
    uri = store.write_bytes(buffer.getvalue(), *folder, "model.pth")
    store.write_bytes(json.dumps(meta, indent=2, default=str).encode(), *folder, "meta.json")
    return uri


def _read_checkpoint(uri: str) -> Any:
    with uris.open_file(uri) as handle:
        data = handle.read()
    return torch.load(io.BytesIO(data), map_location="cpu", weights_only=True)


def model_head(store: FeatureStore, version: str) -> tuple[np.ndarray, float]:
    """The output layer of fine-tuned model ``version``: (weights over the fused
    embedding, bias), so that ``fused @ weights + bias`` is the model's logit."""
    state = _read_checkpoint(model_uri(store, version))["state_dict"]
    weight = state["head.weight"].double().numpy().ravel()
    return weight, float(state["head.bias"].double().item())


def _fine_tuned_meta(checkpoint: Any) -> dict | None:
    """The meta of a fine-tuned checkpoint; None for anything else (e.g. start weights)."""
    meta = (checkpoint.get("meta") or {}) if isinstance(checkpoint, dict) else {}
    return meta if meta.get("kind") == "cnn" else None


def _rebuild(checkpoint: dict, meta: dict) -> DualStreamMobileNetV2:
    model, _ = build_network(
        "random",
        dual=meta["dual"],
        dropout=meta["hyperparameters"]["dropout"],
        tf_padding=meta["start"]["tf_padding"],
    )
    model.load_state_dict(checkpoint["state_dict"])
    return model.eval()


def load_model(uri: str) -> tuple[DualStreamMobileNetV2, dict]:
    """A fine-tuned model (``model.pth`` from :func:`save_model`, any fsspec URI), in eval mode.

    Raises
    ------
    ValueError
        The file is not a fine-tuned checkpoint (e.g. start weights).
    """
    checkpoint = _read_checkpoint(uri)
    meta = _fine_tuned_meta(checkpoint)
    if meta is None:
        raise ValueError(f"{uri} is not a fine-tuned CNN checkpoint (no meta kind 'cnn')")
    return _rebuild(checkpoint, meta), meta


def model_for(
    model_uri_or_start: str, dual: bool | None, settings: Settings
) -> tuple[DualStreamMobileNetV2, str, dict]:
    """The model that embeds, its version and meta, in eval mode on the CPU.

    Parameters
    ----------
    model_uri_or_start : a fine-tuned ``model.pth`` URI, or start weights (``"random"`` or a
        checkpoint path/URI; resolve ``"auto"``/``"tflite"`` with
        :func:`~tasks.features.cnn.start.start_weights`).
    dual : streams of a start-weights model; a fine-tuned model keeps its own (None, or the
        same value, is accepted).
    settings : crop size and margin of start-weights models; ``seed`` for random weights.

    Returns
    -------
    model, version (``cnn-...`` or ``start-...``), meta with at least ``dual``,
    ``input_size`` and ``margin`` (a fine-tuned model's own, which embedding must use).
    """
    spec = model_uri_or_start
    if spec != "random":
        checkpoint = _read_checkpoint(spec)
        meta = _fine_tuned_meta(checkpoint)
        if meta is not None:
            if dual is not None and dual != meta["dual"]:
                raise ValueError(
                    f"model {meta['version']} is {'dual' if meta['dual'] else 'single'}-stream"
                )
            return _rebuild(checkpoint, meta), meta["version"], meta
    dual = True if dual is None else dual
    # Random weights must be the same in every worker for "start-random" to mean one model.
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(settings.seed)
        model, meta = build_network(spec, dual=dual, dropout=DROPOUT)
    version = start_version(spec, meta)
    meta = {
        **meta,
        "version": version,
        "dual": dual,
        "input_size": settings.cnn_size,
        "margin": settings.cnn_margin,
    }
    return model.eval(), version, meta
