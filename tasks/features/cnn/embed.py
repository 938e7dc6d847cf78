"""Embedding step: lesion crops, fine-tuning the dual-stream MobileNetV2, deep features (DF).

Reads ``cohort`` rows' images and masks (through :mod:`tasks.features.imaging`), the start weights
(the offline TFLite MobileNetV2 in ``shared_data``, converted once, or any ``.pth``) and
fine-tuned checkpoints. Writes ``<store>/models/start/mobilenet_v2_tflite.pth`` (converted
start weights) and ``<store>/models/cnn/<version>/{model.pth,meta.json}`` (a fine-tuned
model with its lineage). Returns ``embeddings`` rows, one per case x mask variant, with the
pooled BMUS, CDUS and fused features, the model version and the input hashes; the flow
writes them to the store.

Input contract of :mod:`~tasks.features.cnn.network`: square crops scaled to [0, 1].
This module crops
and scales; the network normalises, so nothing here applies ImageNet mean/std.
"""

from __future__ import annotations

import contextlib
import hashlib
import io
import json
import logging
import os
import random
import tempfile
import time
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import PurePosixPath
from typing import Any

import fsspec
import numpy as np
import SimpleITK as sitk
import torch
import torch.nn.functional as F
import torchvision.transforms.v2.functional as TF
from prefect import get_run_logger, task
from prefect.cache_policies import NO_CACHE
from torch import nn
from torch.utils.data import DataLoader, Dataset

from tasks.config import Settings, code_version
from tasks.data import uris
from tasks.data.ingest import current_cohort
from tasks.data.schema import GENERATED_VARIANTS, MASK_VARIANTS, case_variants, perturbed_mask_sha
from tasks.data.store import FeatureStore
from tasks.features.cnn.network import DualStreamMobileNetV2, build_network
from tasks.features.cnn.weights import convert_tflite
from tasks.features.imaging import InputError, _as_2d, _get, read_image, to_grey, variant_mask
from tasks.features.plan import Plan, commit_rows, plan_cases

logger = logging.getLogger(__name__)

Logger = logging.Logger | logging.LoggerAdapter
Crop = tuple[torch.Tensor, torch.Tensor | None]

TFLITE_FILE = "mobilenet_v2_1.0_224_quant.tflite"
START_FILE = "mobilenet_v2_tflite.pth"
DROPOUT = 0.2
PROGRESS_EVERY = 5  # batches between progress lines
# Training augmentation. Yang et al. do not list theirs; these ranges are mild enough that
# a lesion keeps its shape and echo texture: degrees, scale, translate (share of the crop
# side), brightness and contrast factor 1 +- INTENSITY.
ROTATION = 10.0
SCALE = (0.9, 1.1)
TRANSLATE = 0.05
INTENSITY = 0.15
AUGMENTATION = {
    "hflip": 0.5,
    "rotation_deg": ROTATION,
    "scale": list(SCALE),
    "translate": TRANSLATE,
    "brightness": INTENSITY,
    "contrast": INTENSITY,
}


# -- input: crops ----------------------------------------------------------------------------
def mask_variants(case: Mapping[str, Any], perturb: bool = False) -> list[str]:
    """The mask variants a row has (``reader1``, ``reader2``, ``repeat``), in that order,
    then ``perturbed`` when ``perturb`` is on and the row has no real repeat
    (:func:`tasks.data.ingest.case_variants` decides)."""
    return [variant.name for variant in case_variants(case, perturb)]


def variant_mask_sha(case: Mapping[str, Any], variant: str) -> str | None:
    """The ``mask_sha256`` an embedding row of ``variant`` carries: the mask file's hash, or
    for a generated variant the derived id of its source's hash (the store's lineage key)."""
    column = GENERATED_VARIANTS.get(variant) or MASK_VARIANTS[variant]
    sha = _image_sha(case, column)
    return perturbed_mask_sha(sha) if sha and variant in GENERATED_VARIANTS else sha


def crop_box(mask: np.ndarray, margin: float) -> tuple[float, float, float]:
    """Square crop around a mask's bounding box, as ``(centre row, centre column, side)``.

    Each side of the box grows by ``margin`` times the box size, so the crop shows the
    peritumoral tissue too; the longer side then sets the square. Coordinates are
    continuous (pixel ``i`` spans ``[i, i + 1)``).

    Raises
    ------
    ValueError
        The mask is empty.
    """
    rows = np.flatnonzero(mask.any(axis=1))
    cols = np.flatnonzero(mask.any(axis=0))
    if rows.size == 0:
        raise ValueError("mask is empty")
    top, bottom, left, right = rows[0], rows[-1] + 1, cols[0], cols[-1] + 1
    side = max(bottom - top, right - left) * (1.0 + 2.0 * margin)
    return (top + bottom) / 2.0, (left + right) / 2.0, float(side)


def _window(array: np.ndarray, top: int, left: int, height: int, width: int) -> np.ndarray:
    """``array[top:top+height, left:left+width]``, zeros where the window leaves the image."""
    out = np.zeros((height, width, *array.shape[2:]), dtype=array.dtype)
    y0, x0 = max(top, 0), max(left, 0)
    y1, x1 = min(top + height, array.shape[0]), min(left + width, array.shape[1])
    if y1 > y0 and x1 > x0:
        out[y0 - top : y1 - top, x0 - left : x1 - left] = array[y0:y1, x0:x1]
    return out


def _crop(
    array: np.ndarray, box: tuple[float, float, float], scale: tuple[float, float], size: int
) -> torch.Tensor:
    """Cut ``box`` (BMUS pixel units, times ``scale`` for this image) and resize to ``size``.

    Padding past the border instead of clamping the box keeps the lesion's aspect ratio
    and its place at the crop centre.
    """
    cy, cx, side = box
    height, width = max(1, round(side * scale[0])), max(1, round(side * scale[1]))
    top, left = round(cy * scale[0] - height / 2), round(cx * scale[1] - width / 2)
    window = torch.from_numpy(_window(array, top, left, height, width))
    window = window[None] if window.ndim == 2 else window.permute(2, 0, 1)
    resized = F.interpolate(
        window[None], size=(size, size), mode="bilinear", antialias=True, align_corners=False
    )
    return resized[0].clamp_(0.0, 1.0).contiguous()


def _unit(array: np.ndarray, dtype: np.dtype) -> np.ndarray:
    """Scale to [0, 1] as float32.

    8-bit images (what scanners export) by 255. Other types have no known full scale (a
    12-bit DICOM in uint16, a float NIfTI), so they use their own maximum.
    """
    array = array.astype(np.float32, copy=False)
    if dtype == np.uint8:
        return array / 255.0
    peak = float(array.max()) if array.size else 0.0
    return array / peak if peak > 1.0 else np.clip(array, 0.0, 1.0)


def _reason(exc: BaseException) -> str:
    lines = str(exc).strip().splitlines()  # SimpleITK puts its message on the last line
    return lines[-1] if lines else type(exc).__name__


def _read(case: Mapping[str, Any], column: str) -> sitk.Image:
    uri = str(case[column])
    try:
        return _as_2d(read_image(uri))
    except (RuntimeError, ValueError, OSError) as exc:
        raise InputError(uri, f"unreadable image: {_reason(exc)}", column) from exc


def _bmus_array(image: sitk.Image) -> tuple[np.ndarray, sitk.Image]:
    """B-mode as [H, W] in [0, 1] (RGB exports -> luminance), and the grey image."""
    grey = to_grey(image)
    dtype = sitk.GetArrayViewFromImage(image).dtype
    return _unit(sitk.GetArrayFromImage(grey), dtype), grey


def _cdus_array(image: sitk.Image) -> np.ndarray:
    """Colour Doppler as [H, W, 3] in [0, 1]; a greyscale file gets three equal channels."""
    array = sitk.GetArrayFromImage(image)
    if array.ndim == 2:
        array = np.repeat(array[..., None], 3, axis=2)
    elif array.shape[2] < 3:
        array = np.repeat(array[..., :1], 3, axis=2)  # grey + alpha
    return _unit(np.ascontiguousarray(array[..., :3]), array.dtype)


def case_crops(
    case: Mapping[str, Any],
    variants: Sequence[str] | None = None,
    size: int = 224,
    margin: float = 0.25,
    with_cdus: bool = True,
    perturb: bool = False,
) -> dict[str, Crop]:
    """Crops of one case for several mask variants, reading each file once.

    Parameters
    ----------
    case : a ``cohort`` row.
    variants : mask variants to crop around; None means every variant the row has
        (:func:`mask_variants` with ``perturb``). ``"perturbed"`` may be asked for by name
        whenever the row would get it with ``perturb`` on.
    size, margin : see :func:`crop_case`.
    with_cdus : also crop the CDUS image (when the row has one).
    perturb : with ``variants=None``, also the ``perturbed`` variant of a row without a
        real repeat (``settings.perturb_repeats``); its box follows the perturbed mask,
        the same one radiomics measures (:func:`tasks.features.imaging.variant_mask`).

    Returns
    -------
    ``{variant: (bmus [1, size, size], cdus [3, size, size] or None)}``, float32 in [0, 1].

    Raises
    ------
    InputError
        An image or mask cannot be read, a mask is empty or does not fit the image, or a
        requested variant has no mask.
    """
    variants = mask_variants(case, perturb) if variants is None else list(variants)
    available = {variant.name: variant for variant in case_variants(case, perturb=True)}
    bmus, grey = _bmus_array(_read(case, "bmus_image"))
    cdus = None
    if with_cdus and _get(case, "cdus_image"):
        cdus = _cdus_array(_read(case, "cdus_image"))
    # The CDUS frame may be stored at another resolution: the same box, scaled per axis.
    scale = (1.0, 1.0)
    if cdus is not None:
        scale = (cdus.shape[0] / bmus.shape[0], cdus.shape[1] / bmus.shape[1])
    crops: dict[str, Crop] = {}
    for variant in variants:
        if variant not in available:
            column = GENERATED_VARIANTS.get(variant) or MASK_VARIANTS[variant]
            real_repeat = variant in GENERATED_VARIANTS and _get(case, column)
            why = "the row has a real repeat" if real_repeat else column
            raise InputError(str(case.get("case_id")), f"no {variant} mask ({why})", column)
        spec = available[variant]
        mask = variant_mask(case, spec, grey)  # InputError naming the file
        try:
            # A copy, not a view: a view of the temporary image would dangle.
            box = crop_box(sitk.GetArrayFromImage(mask), margin)
        except ValueError as exc:
            uri = str(case[spec.column])
            raise InputError(uri, f"unusable mask: {_reason(exc)}", spec.column) from exc
        crops[variant] = (
            _crop(bmus, box, (1.0, 1.0), size),
            None if cdus is None else _crop(cdus, box, scale, size),
        )
    return crops


def crop_case(
    case: Mapping[str, Any], mask_variant: str = "reader1", size: int = 224, margin: float = 0.25
) -> Crop:
    """The network input of one case: a square crop around one mask's lesion.

    The box is the mask's bounding box grown by ``margin`` of its size on each side, made
    square, padded with zeros past the image border and resized (bilinear, antialiased)
    to ``size``. The CDUS crop uses the same box, so both streams see the same anatomy.

    Returns
    -------
    bmus : float32 ``[1, size, size]`` in [0, 1] (RGB B-mode -> luminance).
    cdus : float32 ``[3, size, size]`` in [0, 1], or None when the row has no CDUS image.
    """
    return case_crops(case, [mask_variant], size, margin)[mask_variant]


def _uniform(generator: torch.Generator | None, low: float, high: float) -> float:
    return low + (high - low) * float(torch.rand((), generator=generator))


def augment(
    bmus: torch.Tensor, cdus: torch.Tensor | None = None, generator: torch.Generator | None = None
) -> Crop:
    """One random training transform, drawn once and applied to both streams.

    Horizontal flip, small affine (rotation, scale, translation) and brightness/contrast:
    the CDUS crop moves with the B-mode one because they show the same anatomy, and only
    intensity jitters, never hue, since Doppler colour encodes flow direction.
    """
    flip = float(torch.rand((), generator=generator)) < AUGMENTATION["hflip"]
    angle = _uniform(generator, -ROTATION, ROTATION)
    scale = _uniform(generator, *SCALE)
    translate = [_uniform(generator, -TRANSLATE, TRANSLATE) * bmus.shape[-1] for _ in range(2)]
    brightness = _uniform(generator, 1.0 - INTENSITY, 1.0 + INTENSITY)
    contrast = _uniform(generator, 1.0 - INTENSITY, 1.0 + INTENSITY)

    def apply(image: torch.Tensor) -> torch.Tensor:
        if flip:
            image = TF.horizontal_flip(image)
        image = TF.affine(
            image,
            angle=angle,
            translate=translate,
            scale=scale,
            shear=[0.0, 0.0],
            interpolation=TF.InterpolationMode.BILINEAR,
        )
        return TF.adjust_contrast(TF.adjust_brightness(image, brightness), contrast)

    return apply(bmus), None if cdus is None else apply(cdus)


class CropDataset(Dataset):
    """Lesion crops of a list of cases, preloaded once, augmented when training.

    Reading and cropping every epoch would cost about as much as training at small sizes,
    so it happens once here. Augmentation draws come from one seeded generator, so use it
    with ``num_workers=0`` (the default) for a reproducible run. Items are
    ``(bmus [1,S,S], cdus [3,S,S] or an empty tensor, label float (NaN when unlabelled))``;
    the empty tensor keeps the default collate working for single-stream cohorts.

    Parameters
    ----------
    cases : ``cohort`` rows.
    size, margin : crop size and margin (:func:`crop_case`).
    train : apply :func:`augment` (a new draw per item).
    dual : also load the CDUS crops; every case must then have a CDUS image.
    mask_variant : the mask the crop follows.
    seed : seed of the augmentation draws.
    """

    def __init__(
        self,
        cases: Sequence[Mapping[str, Any]],
        size: int,
        margin: float,
        train: bool,
        dual: bool,
        mask_variant: str = "reader1",
        seed: int = 0,
    ) -> None:
        if dual:
            _require_cdus(cases)
        crops = [case_crops(c, [mask_variant], size, margin, dual)[mask_variant] for c in cases]
        self.case_ids = [str(c["case_id"]) for c in cases]
        self.train = train
        self.dual = dual
        self.bmus = torch.stack([b for b, _ in crops]) if crops else torch.empty(0, 1, size, size)
        self.cdus = torch.stack([c for _, c in crops]) if dual and crops else None
        self.labels = torch.tensor(
            [float(_get(c, "label")) if _get(c, "label") is not None else np.nan for c in cases],
            dtype=torch.float32,
        )
        self.generator = torch.Generator().manual_seed(seed)

    def __len__(self) -> int:
        return len(self.case_ids)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        bmus = self.bmus[index]
        cdus = None if self.cdus is None else self.cdus[index]
        if self.train:
            bmus, cdus = augment(bmus, cdus, self.generator)
        return bmus, torch.empty(0) if cdus is None else cdus, self.labels[index]


def _require_cdus(cases: Sequence[Mapping[str, Any]]) -> None:
    missing = [str(c["case_id"]) for c in cases if not _get(c, "cdus_image")]
    if missing:
        raise ValueError(
            f"dual-stream model needs a CDUS image; missing for {', '.join(missing[:10])}"
            + (f" and {len(missing) - 10} more" if len(missing) > 10 else "")
        )


def has_cdus(cases: Sequence[Mapping[str, Any]]) -> bool:
    """True when every case has a CDUS image, so the dual-stream form applies."""
    return bool(cases) and all(_get(c, "cdus_image") for c in cases)


# -- start weights ---------------------------------------------------------------------------
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


# -- devices and seeds -----------------------------------------------------------------------
def resolve_device(spec: str | torch.device) -> torch.device:
    """``"auto"``: CUDA when present, else CPU; ``"cpu"``/``"cuda"`` as asked.

    Raises
    ------
    RuntimeError
        ``"cuda"`` asked for on a machine without a CUDA device.
    """
    spec = str(spec)
    if spec == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    device = torch.device(spec)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise RuntimeError("cnn_device asks for CUDA but no CUDA device is available")
    return device


def _autocast(device: torch.device):
    # bf16 on GPUs: twice the throughput of fp32 with fp32's range, so no loss scaling.
    return torch.autocast(device.type, dtype=torch.bfloat16, enabled=device.type == "cuda")


def _to(tensor: torch.Tensor, device: torch.device) -> torch.Tensor:
    if device.type == "cuda":
        return tensor.to(device, non_blocking=True, memory_format=torch.channels_last)
    return tensor


def _prepare(model: nn.Module, device: torch.device) -> nn.Module:
    model.to(device)
    if device.type == "cuda":
        model.to(memory_format=torch.channels_last)
    return model


@contextlib.contextmanager
def _seeded(seed: int, device: torch.device) -> Iterator[None]:
    """Seed python, numpy and torch; deterministic kernels on CPU, restored afterwards."""
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)
    saved = (
        torch.are_deterministic_algorithms_enabled(),
        torch.is_deterministic_algorithms_warn_only_enabled(),
    )
    if device.type == "cpu":
        torch.use_deterministic_algorithms(True, warn_only=True)
    try:
        yield
    finally:
        torch.use_deterministic_algorithms(saved[0], warn_only=saved[1])


# -- fine-tuning -----------------------------------------------------------------------------
def _check_training(cases: Sequence[Mapping[str, Any]]) -> None:
    """Leakage guard: fine-tuning sees labelled training rows only."""
    if not cases:
        raise ValueError("no training cases to fine-tune on")
    wrong = [
        f"{c.get('case_id')} (split={_get(c, 'split')}, label={_get(c, 'label')})"
        for c in cases
        if _get(c, "split") != "training" or _get(c, "label") is None
    ]
    if wrong:
        raise ValueError(
            "fine-tuning takes labelled training rows only; got " + ", ".join(wrong[:10])
        )
    labels = {int(_get(c, "label")) for c in cases}
    if labels != {0, 1}:
        raise ValueError(f"fine-tuning needs both classes; the training rows have {labels}")


def early_stopping_fold(
    cases: Sequence[Mapping[str, Any]], share: float, seed: int
) -> tuple[list[Mapping[str, Any]], list[Mapping[str, Any]]]:
    """Split training rows into (fit, early-stopping) parts, by patient, per label.

    A patient's lesions stay together (``patient_key``; ``case_id`` where it is missing), so
    the early-stopping loss is not flattered by a sibling lesion. Patients are drawn per
    label (a patient's label is its highest) so both parts keep the class balance; a label
    with a single patient stays in the fit part. Seeded, so a retrain draws the same fold.
    """
    groups: dict[str, list[int]] = {}
    for i, case in enumerate(cases):
        key = str(_get(case, "patient_key") or case["case_id"])
        groups.setdefault(key, []).append(i)
    strata: dict[int, list[str]] = {}
    for key in sorted(groups):
        label = max(int(_get(cases[i], "label")) for i in groups[key])
        strata.setdefault(label, []).append(key)
    rng = np.random.default_rng(seed)
    held: set[str] = set()
    for label in sorted(strata):
        keys = strata[label]
        if len(keys) < 2:
            continue
        n = min(max(round(share * len(keys)), 1), len(keys) - 1)
        held.update(keys[j] for j in rng.permutation(len(keys))[:n])
    fit = [c for key, idx in groups.items() if key not in held for c in (cases[i] for i in idx)]
    val = [c for key, idx in groups.items() if key in held for c in (cases[i] for i in idx)]
    return fit, val


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


def _image_sha(case: Mapping[str, Any], column: str) -> str | None:
    if not _get(case, column):
        return None
    return _get(case, f"{column}_sha256") or uris.sha256(str(case[column]))


def training_data_sha256(cases: Sequence[Mapping[str, Any]]) -> str:
    """One hash of what the model learnt from: case ids, image and mask hashes, labels."""
    entries = sorted(
        (
            str(c["case_id"]),
            _image_sha(c, "bmus_image"),
            _image_sha(c, "bmus_mask"),
            _image_sha(c, "cdus_image"),
            int(_get(c, "label")),
        )
        for c in cases
    )
    return hashlib.sha256(json.dumps(entries).encode()).hexdigest()


def _logits(model: nn.Module, bmus, cdus, device: torch.device, dual: bool) -> torch.Tensor:
    with _autocast(device):
        return model(_to(bmus, device), _to(cdus, device) if dual else None).float()


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


def _resolve_start(spec: str, settings: Settings, store: FeatureStore | None) -> str:
    if spec not in ("auto", "tflite"):
        return spec
    if store is None:
        raise ValueError(f"start weights {spec!r} need a store to hold the converted file")
    return start_weights(settings.model_copy(update={"cnn_start": spec}), store)


def finetune(
    cases: Sequence[Mapping[str, Any]],
    settings: Settings,
    store: FeatureStore,
    start: str,
    table_versions: dict | None = None,
    log: Logger | None = None,
) -> dict:
    """Fine-tune the dual-stream MobileNetV2 on the training rows; save it with lineage.

    An early-stopping fold (``cnn_val_share`` of the patients, :func:`early_stopping_fold`)
    watches the validation loss: training stops after ``cnn_patience`` epochs without a
    new best, and the best epoch's weights are kept. Loss: ``BCEWithLogitsLoss`` with
    ``pos_weight = n_neg / n_pos`` of the fit part. AdamW. Batch norm keeps its start
    statistics unless the start is random. Seeds are fixed; on CPU the run is bitwise
    reproducible. Dual-stream when every case has a CDUS image, else BMUS only.

    Parameters
    ----------
    cases : ``cohort`` rows, all ``split == "training"`` with a label.
    settings : ``cnn_*`` settings and ``seed``.
    store : where ``models/cnn/<version>/{model.pth,meta.json}`` go.
    start : start weights (:func:`start_weights`; ``"auto"``/``"tflite"`` are resolved
        through it).
    table_versions : feature-store table versions the rows came from, for lineage.
    log : logger for progress lines (default: this module's).

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
    _check_training(cases)
    start = _resolve_start(start, settings, store)
    dual = has_cdus(cases)
    device = resolve_device(settings.cnn_device)
    size, margin, seed = settings.cnn_size, settings.cnn_margin, settings.seed
    fit_rows, val_rows = early_stopping_fold(cases, settings.cnn_val_share, seed)
    n_pos = sum(int(_get(c, "label")) for c in fit_rows)
    pos_weight = (len(fit_rows) - n_pos) / n_pos
    started = time.perf_counter()
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
    batch = settings.cnn_batch_size
    with _seeded(seed, device):
        model, start_meta = build_network(start, dual=dual, dropout=DROPOUT)
        freeze = start != "random"
        _prepare(model, device)
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

    data_sha = training_data_sha256(cases)
    hyper = {
        "epochs": settings.cnn_epochs,
        "batch_size": batch,
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
    s_version = start_version(start, start_meta)
    config = {
        "start_sha256": start_meta["sha256"],
        "start_version": s_version,
        "dual": dual,
        "input_size": size,
        "margin": margin,
        "hyperparameters": hyper,
        "seed": seed,
        "training_data_sha256": data_sha,
    }
    digest = hashlib.sha256(json.dumps(config, sort_keys=True).encode()).hexdigest()
    version = f"cnn-{datetime.now(UTC):%Y%m%dT%H%M%S}-{digest[:8]}"
    meta = {
        "kind": "cnn",
        "version": version,
        "uri": store.uri("models", "cnn", version, "model.pth"),
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
        "input_size": size,
        "margin": margin,
        "mask_variant": "reader1",
        "hyperparameters": hyper,
        "seed": seed,
        "device": str(device),
        "torch_version": str(torch.__version__),
        "code_version": code_version(),
        "training_cases": len(cases),
        "fit_case_ids": [str(c["case_id"]) for c in fit_rows],
        "early_stopping_case_ids": [str(c["case_id"]) for c in val_rows],
        "curve": curve,
        "best_epoch": best_epoch,
        "seconds_per_epoch": sum(e["seconds"] for e in curve) / len(curve),
        "training_data_sha256": data_sha,
        "table_versions": dict(table_versions or {}),
    }
    buffer = io.BytesIO()
    torch.save({"state_dict": best_state, "meta": meta}, buffer)
    folder = ("models", "cnn", version)
    store.write_bytes(buffer.getvalue(), *folder, "model.pth")
    store.write_bytes(json.dumps(meta, indent=2, default=str).encode(), *folder, "meta.json")
    out.info("cnn model %s saved (best epoch %d) to %s", version, best_epoch, meta["uri"])
    return meta


def _read_checkpoint(uri: str) -> dict:
    with fsspec.open(uri, "rb") as handle:
        data = handle.read()
    return torch.load(io.BytesIO(data), map_location="cpu", weights_only=True)


def load_model(uri: str) -> tuple[DualStreamMobileNetV2, dict]:
    """A fine-tuned model (``model.pth`` from :func:`finetune`, any fsspec URI), in eval mode.

    Raises
    ------
    ValueError
        The file is not a fine-tuned checkpoint (e.g. start weights).
    """
    checkpoint = _read_checkpoint(uri)
    meta = (checkpoint.get("meta") or {}) if isinstance(checkpoint, dict) else {}
    if meta.get("kind") != "cnn":
        raise ValueError(f"{uri} is not a fine-tuned CNN checkpoint (no meta kind 'cnn')")
    model, _ = build_network(
        "random",
        dual=meta["dual"],
        dropout=meta["hyperparameters"]["dropout"],
        tf_padding=meta["start"]["tf_padding"],
    )
    model.load_state_dict(checkpoint["state_dict"])
    return model.eval(), meta


# -- embedding -------------------------------------------------------------------------------
def model_for(
    model_uri_or_start: str, dual: bool | None, settings: Settings
) -> tuple[DualStreamMobileNetV2, str, dict]:
    """The model that embeds, its version and meta, in eval mode on the CPU.

    Parameters
    ----------
    model_uri_or_start : a fine-tuned ``model.pth`` URI, or start weights (``"random"`` or a
        checkpoint path/URI; resolve ``"auto"``/``"tflite"`` with :func:`start_weights`).
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
        if isinstance(checkpoint, dict) and (checkpoint.get("meta") or {}).get("kind") == "cnn":
            model, meta = load_model(spec)
            if dual is not None and dual != meta["dual"]:
                raise ValueError(
                    f"model {meta['version']} is {'dual' if meta['dual'] else 'single'}-stream"
                )
            return model, meta["version"], meta
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


def _embed_batch(
    model: DualStreamMobileNetV2,
    items: list[tuple[Mapping[str, Any], str, torch.Tensor, torch.Tensor | None]],
    device: torch.device,
    common: dict[str, Any],
) -> list[dict[str, Any]]:
    dual = model.dual
    bmus = torch.stack([b for _, _, b, _ in items])
    cdus = torch.stack([c for _, _, _, c in items]) if dual else None
    with torch.inference_mode(), _autocast(device):
        out = model.embed(_to(bmus, device), _to(cdus, device) if dual else None)
    vectors = {k: v.float().cpu().numpy() for k, v in out.items()}
    rows = []
    for i, (case, variant, _, _) in enumerate(items):
        rows.append(
            {
                "case_id": str(case["case_id"]),
                "mask_variant": variant,
                "image_sha256": _image_sha(case, "bmus_image"),
                "mask_sha256": variant_mask_sha(case, variant),
                "cdus_sha256": _image_sha(case, "cdus_image") if dual else None,
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
        (``"auto"``/``"tflite"`` are resolved through :func:`start_weights`, which needs
        ``store``); a start-weights model is :func:`~.network.build_network` untouched.
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
        A file of a case cannot be used.
    ValueError
        A dual-stream model and a case without a CDUS image.
    """
    out = log or logger
    cases = list(cases)
    spec = _resolve_start(model_uri_or_start, settings, store)
    model, version, meta = model_for(spec, has_cdus(cases) if dual is None else dual, settings)
    if model.dual:
        _require_cdus(cases)
    torch_device = resolve_device(device or settings.cnn_device)
    _prepare(model, torch_device)
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
EMBEDDING_KEYS = ["case_id", "mask_variant", "model_version", "image_sha256", "mask_sha256"]
CURRENT_MODEL = ("models", "cnn", "CURRENT")


def current_model(store: FeatureStore, settings: Settings) -> str:
    """The CNN the cohort flow embeds with: the promoted fine-tuned model, else the start."""
    pointer = store.uri(*CURRENT_MODEL)
    if uris.exists(pointer):
        with uris.open_file(pointer) as handle:
            return handle.read().decode().strip()
    return start_weights(settings, store)


def set_current_model(store: FeatureStore, model_uri: str) -> None:
    store.write_bytes(model_uri.encode(), *CURRENT_MODEL)


@dataclass
class EmbeddingPlan:
    plan: Plan
    model: str  # fine-tuned model URI or start-weights spec
    version: str
    dual: bool


def plan_embeddings(
    store: FeatureStore,
    settings: Settings,
    exam_from: str | None = None,
    exam_to: str | None = None,
    force: bool = False,
    model: str | None = None,
) -> EmbeddingPlan:
    """Cases x variants lacking embeddings for the current model (and crop size)."""
    spec = model or current_model(store, settings)
    cohort = current_cohort(store.read("cohort"))
    dual = has_cdus(cohort.to_dict("records")) if not cohort.empty else False
    _, version, meta = model_for(spec, dual, settings)
    stored = store.read("embeddings", columns=[*EMBEDDING_KEYS, "crop_size"])
    if not stored.empty:
        stored = stored[stored["crop_size"] == meta["input_size"]]
    plan = plan_cases(
        cohort,
        stored,
        "model_version",
        version,
        exam_from,
        exam_to,
        force,
        settings.perturb_repeats,
    )
    return EmbeddingPlan(plan=plan, model=spec, version=version, dual=bool(meta["dual"]))


def embed_chunk(
    cases: Sequence[Mapping[str, Any]],
    model: str,
    dual: bool,
    settings: Settings,
    log: Logger | None = None,
) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """Embed a chunk; a case that cannot be embedded becomes a quarantine entry.

    The whole chunk goes through the batched path; only when it fails is it retried case by
    case, to isolate the bad case(s) without giving up batching in the common case.
    """
    perturb = settings.perturb_repeats
    try:
        return embed_cases(cases, model, settings, dual=dual, log=log, perturb=perturb), []
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
                    "reason": f"embedding: {_reason(exc)}",
                }
            )
    return rows, failures


def commit_embeddings(
    result: tuple,
    store: FeatureStore,
    run_id: str,
    force: bool = False,
) -> dict[str, Any]:
    """Write one chunk's rows (MERGE on the lineage keys) and its failures to quarantine.

    ``result`` is ``(rows, failures)`` or ``(rows, failures, seconds)`` from the task."""
    rows, failures = result[0], result[1]
    done = commit_rows(
        "embeddings",
        EMBEDDING_KEYS,
        "embedding",
        rows,
        failures,
        store,
        run_id,
        force,
        "embedded_at",
    )
    return {
        **done,
        "workers": sorted({str(row["worker"]) for row in rows if "worker" in row}),
        "seconds": float(result[2]) if len(result) > 2 else 0.0,
    }


# -- Prefect wrappers ------------------------------------------------------------------------
def _worker_name() -> str:
    """The Dask worker running this task (recorded for the GPU-routing checks)."""
    from distributed import get_worker

    try:
        return str(get_worker().name)
    except ValueError:  # a plain call, outside Dask
        return "local"


plan_embeddings_task = task(plan_embeddings, name="plan-embeddings", cache_policy=NO_CACHE)
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
) -> tuple[list[dict[str, Any]], list[dict[str, Any]], float]:
    """One GPU-resource Dask task: a chunk of cases; rows record the worker that ran it."""
    torch.set_num_threads(1)  # one core per worker; a GPU worker feeds the GPU instead
    worker = _worker_name()
    started = time.perf_counter()
    rows, failures = embed_chunk(cases, model, dual, settings, log=get_run_logger())
    for row in rows:
        row["worker"] = worker
    return rows, failures, time.perf_counter() - started


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
    meta["worker"] = _worker_name()
    return meta
