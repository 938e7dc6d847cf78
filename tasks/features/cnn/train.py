"""Fine-tuning step: train the dual-stream MobileNetV2 on the labelled training rows.

Reads ``cohort`` training rows (their images and reader-1 masks, through
:class:`~tasks.features.cnn.dataset.CropDataset`) and the start weights
(:mod:`~tasks.features.cnn.start`). Writes ``<store>/models/cnn/<version>/{model.pth,
meta.json}`` (:func:`~tasks.features.cnn.checkpoints.save_model`): the best epoch's weights
with their lineage (start weights, hyperparameters, seed, the training data's hash, table
versions, the learning curve).
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import torch
from prefect import get_run_logger, task
from prefect.cache_policies import NO_CACHE
from torch import nn
from torch.utils.data import DataLoader

from tasks.config import Settings, code_version
from tasks.data.headers import Limits
from tasks.data.store import FeatureStore
from tasks.features.cnn.augment import AUGMENTATION
from tasks.features.cnn.checkpoints import DROPOUT, model_uri, save_model
from tasks.features.cnn.crops import has_cdus
from tasks.features.cnn.dataset import CropDataset
from tasks.features.cnn.network import build_network
from tasks.features.cnn.runtime import (
    Logger,
    autocast,
    prepare_model,
    resolve_device,
    seeded,
    to_device,
    worker_name,
)
from tasks.features.cnn.start import resolve_start, start_version
from tasks.features.cnn.training_data import (
    check_training,
    early_stopping_fold,
    training_data_sha256,
)
from tasks.features.imaging import case_value, image_limits

logger = logging.getLogger(__name__)


# -- the epoch loop --------------------------------------------------------------------------
def _freeze_batch_norm(model: nn.Module) -> None:
    # Pretrained statistics stay: batches of a few ultrasound crops estimate them badly, and
    # converted TFLite weights carry batch norm folded into an identity (running_var 1) that
    # batch statistics would undo.
    for module in model.modules():
        if isinstance(module, nn.BatchNorm2d):
            module.eval()


def _cpu_state(model: nn.Module) -> dict[str, torch.Tensor]:
    # A copy, not a view: later epochs keep updating the live parameters.
    return {k: v.detach().to("cpu", copy=True) for k, v in model.state_dict().items()}


def _logits(model: nn.Module, bmus, cdus, device: torch.device, dual: bool) -> torch.Tensor:
    with autocast(device):
        return model(to_device(bmus, device), to_device(cdus, device) if dual else None).float()


def _epoch_loss(
    model: nn.Module,
    loader: DataLoader,
    criterion: nn.Module,
    device: torch.device,
    dual: bool,
    optimiser: torch.optim.Optimizer | None = None,
) -> float:
    """Mean loss over one pass; trains when given an optimiser."""
    total, count = 0.0, 0
    for bmus, cdus, label in loader:
        label = label.to(device)
        if optimiser is None:
            with torch.inference_mode():
                loss = criterion(_logits(model, bmus, cdus, device, dual), label)
        else:
            optimiser.zero_grad(set_to_none=True)
            loss = criterion(_logits(model, bmus, cdus, device, dual), label)
            loss.backward()
            optimiser.step()
        total += float(loss.detach()) * len(label)
        count += len(label)
    return total / max(count, 1)


def _train(
    model: nn.Module,
    fit_loader: DataLoader,
    val_loader: DataLoader,
    criterion: nn.Module,
    optimiser: torch.optim.Optimizer,
    settings: Settings,
    device: torch.device,
    dual: bool,
    freeze: bool,
    out: Logger,
) -> tuple[list[dict[str, Any]], int, dict[str, torch.Tensor]]:
    """The epoch loop with early stopping: ``(curve, best epoch, best state on the CPU)``."""
    curve: list[dict[str, Any]] = []
    best_loss, best_epoch, best_state, waited = float("inf"), 0, _cpu_state(model), 0
    for epoch in range(1, settings.cnn_epochs + 1):
        tick = time.perf_counter()
        model.train()
        if freeze:
            _freeze_batch_norm(model)
        train_loss = _epoch_loss(model, fit_loader, criterion, device, dual, optimiser)
        model.eval()
        val_loss = (
            _epoch_loss(model, val_loader, criterion, device, dual)
            if len(val_loader.dataset)
            else None
        )
        seconds = time.perf_counter() - tick
        curve.append(
            {"epoch": epoch, "train_loss": train_loss, "val_loss": val_loss, "seconds": seconds}
        )
        out.info(
            "cnn epoch %d/%d: train loss %.4f, val loss %s, %.1f s",
            epoch,
            settings.cnn_epochs,
            train_loss,
            "-" if val_loss is None else f"{val_loss:.4f}",
            seconds,
        )
        # Without an early-stopping fold (one patient per class) the last epoch wins.
        if val_loss is None or val_loss < best_loss:
            best_loss = float("inf") if val_loss is None else val_loss
            best_epoch, best_state, waited = epoch, _cpu_state(model), 0
        else:
            waited += 1
            if waited >= settings.cnn_patience:
                out.info("cnn early stop after epoch %d (best %d)", epoch, best_epoch)
                break
    return curve, best_epoch, best_state


# -- fine-tuning -----------------------------------------------------------------------------
@dataclass
class _Fitted:
    """What a training run leaves: the start it grew from and its best epoch."""

    dual: bool  # BMUS + CDUS streams
    start_meta: dict[str, Any]  # build_network's meta of the start weights
    freeze: bool  # batch norm kept its start statistics
    curve: list[dict[str, Any]]
    best_epoch: int
    best_state: dict[str, torch.Tensor]  # on the CPU


def _fit(
    fit: CropDataset,
    val: CropDataset,
    start: str,
    pos_weight: float,
    settings: Settings,
    device: torch.device,
    out: Logger,
) -> _Fitted:
    """Build the network from ``start`` and train it, seeded (bitwise reproducible on CPU)."""
    batch, seed, dual = settings.cnn_batch_size, settings.seed, fit.dual
    with seeded(seed, device):
        model, start_meta = build_network(start, dual=dual, dropout=DROPOUT)
        freeze = start != "random"
        prepare_model(model, device)
        # A last batch of one breaks batch norm in training mode (one value per channel).
        fit_loader = DataLoader(
            fit,
            batch_size=batch,
            shuffle=True,
            drop_last=len(fit) % batch == 1 and len(fit) > 1,
            generator=torch.Generator().manual_seed(seed),
            pin_memory=device.type == "cuda",
        )
        val_loader = DataLoader(val, batch_size=batch, shuffle=False)
        criterion = nn.BCEWithLogitsLoss(pos_weight=torch.tensor(pos_weight, device=device))
        optimiser = torch.optim.AdamW(
            model.parameters(), lr=settings.cnn_lr, weight_decay=settings.cnn_weight_decay
        )
        curve, best_epoch, best_state = _train(
            model, fit_loader, val_loader, criterion, optimiser, settings, device, dual, freeze, out
        )
    return _Fitted(dual, start_meta, freeze, curve, best_epoch, best_state)


def _hyperparameters(settings: Settings, pos_weight: float, freeze: bool) -> dict[str, Any]:
    return {
        "epochs": settings.cnn_epochs,
        "batch_size": settings.cnn_batch_size,
        "lr": settings.cnn_lr,
        "weight_decay": settings.cnn_weight_decay,
        "patience": settings.cnn_patience,
        "val_share": settings.cnn_val_share,
        "dropout": DROPOUT,
        "optimiser": "AdamW",
        "loss": "BCEWithLogitsLoss",
        "pos_weight": pos_weight,
        "batch_norm": "frozen" if freeze else "trained",
        "augmentation": AUGMENTATION,
    }


def _model_meta(
    cases: Sequence[Mapping[str, Any]],
    fold: tuple[Sequence[Mapping[str, Any]], Sequence[Mapping[str, Any]]],
    start: str,
    fitted: _Fitted,
    hyper: dict[str, Any],
    settings: Settings,
    device: torch.device,
    store: FeatureStore,
    table_versions: Mapping[str, int | None] | None,
) -> dict[str, Any]:
    """The model's lineage (``meta.json``); its version ends in a hash of what made it."""
    dual, start_meta = fitted.dual, fitted.start_meta
    s_version = start_version(start, start_meta)
    data_sha = training_data_sha256(cases)
    config = {
        "start_sha256": start_meta["sha256"],
        "start_version": s_version,
        "dual": dual,
        "input_size": settings.cnn_size,
        "margin": settings.cnn_margin,
        "hyperparameters": hyper,
        "seed": settings.seed,
        "training_data_sha256": data_sha,
    }
    digest = hashlib.sha256(json.dumps(config, sort_keys=True).encode()).hexdigest()
    version = f"cnn-{datetime.now(UTC):%Y%m%dT%H%M%S}-{digest[:8]}"
    curve = fitted.curve
    return {
        "kind": "cnn",
        "version": version,
        "uri": model_uri(store, version),
        "created_at": datetime.now(UTC).isoformat(),
        "start": {
            "uri": start,
            "sha256": start_meta["sha256"],
            "version": s_version,
            "tf_padding": start_meta["tf_padding"],
            "source": start_meta.get("source"),
            "licence": start_meta.get("licence"),
        },
        "dual": dual,
        "streams": start_meta["streams"],
        "input_size": settings.cnn_size,
        "margin": settings.cnn_margin,
        "mask_variant": "reader1",
        "hyperparameters": hyper,
        "seed": settings.seed,
        "device": str(device),
        "torch_version": str(torch.__version__),
        "code_version": code_version(),
        "training_cases": len(cases),
        "fit_case_ids": [str(c["case_id"]) for c in fold[0]],
        "early_stopping_case_ids": [str(c["case_id"]) for c in fold[1]],
        "curve": curve,
        "best_epoch": fitted.best_epoch,
        "seconds_per_epoch": sum(e["seconds"] for e in curve) / len(curve),
        "training_data_sha256": data_sha,
        "table_versions": dict(table_versions or {}),
    }


def finetune(
    cases: Sequence[Mapping[str, Any]],
    settings: Settings,
    store: FeatureStore,
    start: str,
    table_versions: Mapping[str, int | None] | None = None,
    log: Logger | None = None,
    extra: Mapping[str, Any] | None = None,
    dual: bool | None = None,
) -> dict[str, Any]:
    """Fine-tune the dual-stream MobileNetV2 on the training rows; save it with lineage.

    An early-stopping fold (``cnn_val_share`` of the patients,
    :func:`~tasks.features.cnn.training_data.early_stopping_fold`) watches the validation
    loss: training stops after ``cnn_patience`` epochs without a new best, and the best
    epoch's weights are kept. Loss: ``BCEWithLogitsLoss`` with ``pos_weight = n_neg /
    n_pos`` of the fit part. AdamW. Batch norm keeps its start statistics unless the start
    is random. Seeds are fixed; on CPU the run is bitwise reproducible. Dual-stream when
    every case has a CDUS image, else BMUS only.

    Parameters
    ----------
    cases : ``cohort`` rows, all ``split == "training"`` with a label.
    settings : ``cnn_*`` settings and ``seed``.
    store : where ``models/cnn/<version>/{model.pth,meta.json}`` go.
    start : start weights (:func:`~tasks.features.cnn.start.start_weights`;
        ``"auto"``/``"tflite"`` are resolved through it).
    table_versions : feature-store table versions the rows came from, for lineage.
    log : logger for progress lines (default: this module's).
    extra : more lineage for the meta (a fold model's fold and held-out cases).
    dual : the streams (None: dual when every case has a CDUS image); a fold model takes
        the final model's, so their embeddings have one width.

    Returns
    -------
    The model's meta (also in ``meta.json``), with ``uri`` of ``model.pth`` and ``version``.

    Raises
    ------
    ValueError
        A row is not a labelled training row (leakage guard), or one class is absent.
    """
    out = log or logger
    cases = [dict(c) for c in cases]
    check_training(cases)
    start = resolve_start(start, settings, store)
    dual = has_cdus(cases) if dual is None else dual
    device = resolve_device(settings.cnn_device)
    size, margin, seed = settings.cnn_size, settings.cnn_margin, settings.seed
    fit_rows, val_rows = early_stopping_fold(cases, settings.cnn_val_share, seed)
    n_pos = sum(int(case_value(c, "label")) for c in fit_rows)
    pos_weight = (len(fit_rows) - n_pos) / n_pos
    started = time.perf_counter()
    with image_limits(Limits.of(settings)):  # the run's header limits, as at ingest
        fit = CropDataset(fit_rows, size, margin, train=True, dual=dual, seed=seed)
        val = CropDataset(val_rows, size, margin, train=False, dual=dual)
    out.info(
        "cnn fine-tune: %d fit + %d early-stopping cases, %s, %d px, on %s (cropped in %.1f s)",
        len(fit),
        len(val),
        "dual-stream" if dual else "BMUS only",
        size,
        device,
        time.perf_counter() - started,
    )
    fitted = _fit(fit, val, start, pos_weight, settings, device, out)
    hyper = _hyperparameters(settings, pos_weight, fitted.freeze)
    meta = _model_meta(
        cases, (fit_rows, val_rows), start, fitted, hyper, settings, device, store, table_versions
    )
    meta.update(extra or {})
    save_model(store, fitted.best_state, meta)
    out.info(
        "cnn model %s saved (best epoch %d) to %s", meta["version"], fitted.best_epoch, meta["uri"]
    )
    return meta


# -- Prefect wrapper -------------------------------------------------------------------------
@task(name="finetune-cnn", cache_policy=NO_CACHE)
def finetune_task(
    cases: list[dict[str, Any]],
    settings: Settings,
    start: str,
    table_versions: dict[str, int | None] | None = None,
) -> dict[str, Any]:
    """Fine-tune on a GPU-resource worker (CUDA when present); returns the model's meta."""
    # Fine-tuning runs alone in a retrain: on a CPU-only machine it may use every core.
    torch.set_num_threads(os.cpu_count() or 1)
    meta = finetune(
        cases, settings, FeatureStore(settings.store), start, table_versions, log=get_run_logger()
    )
    meta["worker"] = worker_name()
    return meta
