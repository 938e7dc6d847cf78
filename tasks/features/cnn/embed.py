"""Embedding step: deep features (DF) of every case x mask variant, and their store side.

Reads ``cohort`` rows' images and masks (:mod:`~tasks.features.cnn.crops`) and the model
that embeds (:func:`~tasks.features.cnn.checkpoints.model_for`: a fine-tuned checkpoint or
untouched start weights; the promoted one is named by ``<store>/models/cnn/CURRENT``).
Returns ``embeddings`` rows, one per case x mask variant, with the pooled BMUS, CDUS and
fused features, the model version and the input hashes; the flow process plans the work and
commits the rows to the ``embeddings`` table (:data:`tasks.data.tables.EMBEDDINGS`), failures to
quarantine.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Mapping, Sequence
from typing import Any

import pandas as pd
import torch
from prefect import get_run_logger, task
from prefect.cache_policies import NO_CACHE

from tasks.config import Settings
from tasks.data import uris
from tasks.data.headers import Limits
from tasks.data.store import FeatureStore
from tasks.data.tables import EMBEDDINGS
from tasks.features.cnn.checkpoints import model_for
from tasks.features.cnn.crops import (
    case_crops,
    file_sha256,
    has_cdus,
    mask_variants,
    require_cdus,
    variant_mask_sha,
)
from tasks.features.cnn.network import DualStreamMobileNetV2
from tasks.features.cnn.runtime import (
    Logger,
    autocast,
    prepare_model,
    resolve_device,
    to_device,
    worker_name,
)
from tasks.features.cnn.start import resolve_start, start_weights
from tasks.features.imaging import InputError, error_reason, image_limits
from tasks.features.plan import (
    ChunkResult,
    CommitCounts,
    EmbeddingWork,
    Window,
    commit_chunk,
    plan_cases,
)

logger = logging.getLogger(__name__)

PROGRESS_EVERY = 5  # batches between progress lines


def _embed_batch(
    model: DualStreamMobileNetV2,
    items: list[tuple[Mapping[str, Any], str, torch.Tensor, torch.Tensor | None]],
    device: torch.device,
    common: dict[str, Any],
) -> list[dict[str, Any]]:
    dual = model.dual
    bmus = torch.stack([b for _, _, b, _ in items])
    cdus = torch.stack([c for _, _, _, c in items]) if dual else None
    with torch.inference_mode(), autocast(device):
        out = model.embed(to_device(bmus, device), to_device(cdus, device) if dual else None)
    vectors = {k: v.float().cpu().numpy() for k, v in out.items()}
    rows = []
    for i, (case, variant, _, _) in enumerate(items):
        rows.append(
            {
                "case_id": str(case["case_id"]),
                "mask_variant": variant,
                "image_sha256": file_sha256(case, "bmus_image"),
                "mask_sha256": variant_mask_sha(case, variant),
                "cdus_sha256": file_sha256(case, "cdus_image") if dual else None,
                "bmus": vectors["bmus"][i].tolist(),
                "cdus": vectors["cdus"][i].tolist() if dual else None,
                "fused": vectors["fused"][i].tolist(),
                **common,
            }
        )
    return rows


def embed_cases(
    cases: Sequence[Mapping[str, Any]],
    model_uri_or_start: str,
    settings: Settings,
    store: FeatureStore | None = None,
    device: str | None = None,
    log: Logger | None = None,
    dual: bool | None = None,
    perturb: bool = False,
) -> list[dict[str, Any]]:
    """Deep features of every case x mask variant present, as ``embeddings`` rows.

    The crop follows each mask, so reader-2 and repeat delineations give the repeated
    deep features the ICC filter needs. Batched (``cnn_batch_size``) inference in eval mode;
    CUDA with bf16 autocast when available.

    Parameters
    ----------
    cases : ``cohort`` rows (any split; labels are not read).
    model_uri_or_start : fine-tuned ``model.pth`` URI, or a start-weights spec
        (``"auto"``/``"tflite"`` are resolved through
        :func:`~tasks.features.cnn.start.start_weights`, which needs ``store``); a
        start-weights model is :func:`~.network.build_network` untouched.
    settings : ``cnn_*`` settings.
    store : feature store, only to resolve ``"auto"``/``"tflite"``.
    device : ``"auto"``/``"cpu"``/``"cuda"``; None means ``settings.cnn_device``.
    log : logger for progress lines.
    dual : streams of a start-weights model; None means dual when every case has a CDUS
        image. Use one value for a whole cohort so every row has the same width.

    Returns
    -------
    One dict per crop: ``case_id, mask_variant, model_version, image_sha256, mask_sha256,
    cdus_sha256, bmus (1280 floats), cdus (1280 floats or None), fused (2560 or 1280),
    crop_size, crop_margin, device``.

    Raises
    ------
    InputError
        A file of a case cannot be used (a header over the run's limits included:
        ``settings.max_image_*``, ``max_frames``).
    ValueError
        A dual-stream model and a case without a CDUS image.
    """
    out = log or logger
    cases = list(cases)
    spec = resolve_start(model_uri_or_start, settings, store)
    model, version, meta = model_for(spec, has_cdus(cases) if dual is None else dual, settings)
    if model.dual:
        require_cdus(cases)
    torch_device = resolve_device(device or settings.cnn_device)
    prepare_model(model, torch_device)
    size, margin, batch = meta["input_size"], meta["margin"], settings.cnn_batch_size
    common = {
        "model_version": version,
        "crop_size": size,
        "crop_margin": margin,
        "device": str(torch_device),
    }
    total = sum(len(mask_variants(c, perturb)) for c in cases)
    rows: list[dict[str, Any]] = []
    pending: list[tuple[Mapping[str, Any], str, torch.Tensor, torch.Tensor | None]] = []
    started, batches = time.perf_counter(), 0

    def flush() -> None:
        nonlocal batches
        rows.extend(_embed_batch(model, pending, torch_device, common))
        pending.clear()
        batches += 1
        if batches % PROGRESS_EVERY == 0 or len(rows) == total:
            elapsed = time.perf_counter() - started
            out.info(
                "embedding %s: %d/%d crops (%.1f crops/s)",
                version,
                len(rows),
                total,
                len(rows) / max(elapsed, 1e-9),
            )

    with image_limits(Limits.of(settings)):  # the run's header limits, as at ingest
        for case in cases:
            crops = case_crops(case, None, size, margin, model.dual, perturb=perturb)
            for variant, (bmus, cdus) in crops.items():
                pending.append((case, variant, bmus, cdus))
                if len(pending) == batch:
                    flush()
    if pending:
        flush()
    return rows


# -- store side: which model embeds, plan and commit (flow process, the single writer) --------
CURRENT_MODEL = ("models", "cnn", "CURRENT")


def current_model(store: FeatureStore, settings: Settings) -> str:
    """The CNN the cohort flow embeds with: the promoted fine-tuned model, else the start."""
    pointer = store.uri(*CURRENT_MODEL)
    if uris.exists(pointer):
        with uris.open_file(pointer) as handle:
            return handle.read().decode().strip()
    return start_weights(settings, store)


def set_current_model(store: FeatureStore, model_uri: str) -> None:
    """Point the nightly runs at ``model_uri`` (the promoted fine-tuned CNN)."""
    store.write_bytes(model_uri.encode(), *CURRENT_MODEL)


def plan_embeddings(
    cohort: pd.DataFrame,
    store: FeatureStore,
    settings: Settings,
    window: Window = Window(),
    model: str | None = None,
) -> EmbeddingWork:
    """Cases (of ``cohort``) x variants lacking embeddings for the model (and crop size)."""
    spec = model or current_model(store, settings)
    cdus = has_cdus(cohort.to_dict("records")) if not cohort.empty else False
    # A fine-tuned model keeps its own streams (a BMUS-only one embeds cases with a CDUS
    # image too, e.g. a fold model's held-out cases); the cases choose a start model's.
    _, version, meta = model_for(spec, None, settings)
    if meta.get("kind") != "cnn" and not cdus:
        _, version, meta = model_for(spec, False, settings)
    elif meta.get("kind") == "cnn" and meta["dual"] and not cdus:
        raise ValueError(f"model {version} is dual-stream; some cases have no CDUS image")
    stored = store.read(EMBEDDINGS, columns=[*EMBEDDINGS.keys, "crop_size"])
    if not stored.empty:
        stored = stored[stored["crop_size"] == meta["input_size"]]
    plan = plan_cases(cohort, stored, "model_version", version, window, settings.perturb_repeats)
    return EmbeddingWork(plan=plan, model=spec, version=version, dual=bool(meta["dual"]))


def embed_chunk(
    cases: Sequence[Mapping[str, Any]],
    model: str,
    dual: bool,
    settings: Settings,
    log: Logger | None = None,
) -> ChunkResult:
    """Embed a chunk; a case that cannot be embedded becomes a quarantine entry.

    The whole chunk goes through the batched path; only when it fails is it retried case by
    case, to isolate the bad case(s) without giving up batching in the common case.
    """
    perturb = settings.perturb_repeats
    try:
        return ChunkResult(
            embed_cases(cases, model, settings, dual=dual, log=log, perturb=perturb), []
        )
    except (InputError, ValueError, RuntimeError):
        pass
    rows: list[dict[str, Any]] = []
    failures: list[dict[str, Any]] = []
    for case in cases:
        try:
            rows.extend(embed_cases([case], model, settings, dual=dual, log=log, perturb=perturb))
        except InputError as exc:
            failures.append(
                {
                    "case_id": case["case_id"],
                    "column": exc.column,
                    "file": exc.file,
                    "reason": f"embedding: {exc.reason}",
                }
            )
        except (ValueError, RuntimeError) as exc:
            failures.append(
                {
                    "case_id": case["case_id"],
                    "column": None,
                    "file": case.get("bmus_image"),
                    "reason": f"embedding: {error_reason(exc)}",
                }
            )
    return ChunkResult(rows, failures)


def commit_embeddings(
    result: ChunkResult, store: FeatureStore, run_id: str, force: bool = False
) -> CommitCounts:
    """Write one chunk's rows (on the lineage keys) and its failures to quarantine."""
    return commit_chunk(EMBEDDINGS, "embedding", result, store, run_id, force)


# -- Prefect wrappers ------------------------------------------------------------------------
set_current_model_task = task(set_current_model, name="set-current-cnn", cache_policy=NO_CACHE)
commit_embeddings_task = task(
    commit_embeddings,
    name="commit-embeddings",
    cache_policy=NO_CACHE,
    retries=2,
    retry_delay_seconds=5,
)


@task(name="embed", cache_policy=NO_CACHE, retries=1, retry_delay_seconds=5)
def embed_chunk_task(
    cases: list[dict[str, Any]], model: str, dual: bool, settings: Settings
) -> ChunkResult:
    """One GPU-resource Dask task: a chunk of cases; rows record the worker that ran it."""
    torch.set_num_threads(1)  # one core per worker; a GPU worker feeds the GPU instead
    worker = worker_name()
    started = time.perf_counter()
    result = embed_chunk(cases, model, dual, settings, log=get_run_logger())
    for row in result.rows:
        row["worker"] = worker
    result.seconds = time.perf_counter() - started
    return result
