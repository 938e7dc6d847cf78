"""Radiomics step: handcrafted features of every region of a case, with pyradiomics.

Reads the extraction settings (``infra/radiomics.yaml``, validated against pyradiomics' own
schema at start-up) and the ``cohort`` rows' images and masks (through
:mod:`tasks.features.imaging`); returns ``radiomics`` rows, one per case x region x mask variant,
each with its lineage (image and mask hashes, params hash, pyradiomics version). Cases that
cannot be measured come back as quarantine entries, never as missing rows. pyradiomics
owns the feature definitions (one module per family); this module only orchestrates.
"""

from __future__ import annotations

import contextlib
import copy
import hashlib
import json
import logging
import os
import time
import warnings
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pykwalify.core
import pykwalify.errors
import radiomics
import SimpleITK as sitk
import yaml
from prefect import get_run_logger, task
from prefect.cache_policies import NO_CACHE
from radiomics import featureextractor, getParameterValidationFiles

from tasks.config import Settings
from tasks.data.tables import RADIOMICS
from tasks.features.imaging import (
    InputError,
    Region,
    case_regions,
    error_reason,
    image_limits,
    storage_error,
)
from tasks.features.plan import ChunkResult, CommitCounts, Plan, Window, commit_chunk, plan_cases
from tasks.features.radiomics_shared import SharedImage, log_sigmas, log_size_problem

if TYPE_CHECKING:  # the store side runs in the flow process; workers need not load it
    import pandas as pd

    from tasks.data.store import FeatureStore

logger = logging.getLogger(__name__)

Logger = logging.Logger | logging.LoggerAdapter
PYRADIOMICS_VERSION = str(radiomics.__version__)
# The pyradiomics diagnostics worth a column; every other diagnostics_* entry is dropped
# (settings and versions are already in params_hash and pyradiomics_version).
DIAGNOSTICS = {
    "diagnostics_Versions_PyRadiomics": "pyradiomics_version",
    "diagnostics_Mask-original_VoxelNum": "voxel_count",
}
META_COLUMNS = (
    "case_id",
    "region",
    "mask_variant",
    "image_sha256",
    "mask_sha256",
    "params_hash",
    "pyradiomics_version",
    "voxel_count",
)
PROGRESS_EVERY = 5  # cases between progress lines


class ParamsError(ValueError):
    """The extraction settings file is not valid YAML or not valid pyradiomics params."""

    def __init__(self, file: str, reason: str) -> None:
        super().__init__(file, reason)
        self.file = file
        self.reason = reason

    def __str__(self) -> str:
        return f"invalid radiomics params in {self.file}: {self.reason}"


class ExtractionError(RuntimeError):
    """A case cannot be measured: which case, which file, and why.

    The flow quarantines the case and goes on. Picklable (Dask returns it across processes).
    Its message names the case and the reason only: the file's path (which may hold a
    patient's name) goes to the quarantine table, never into a log line.
    """

    def __init__(self, case_id: str, file: str | None, reason: str, column: str | None = None):
        super().__init__(case_id, file, reason, column)
        self.case_id = case_id
        self.file = file
        self.reason = reason
        self.column = column

    def __str__(self) -> str:
        return f"case {self.case_id}: {self.reason}"

    def quarantine_entry(self) -> dict[str, Any]:
        """The entry :func:`tasks.data.quarantine.quarantine_frame` takes."""
        return {
            "case_id": self.case_id,
            "column": self.column,
            "file": self.file,
            "reason": self.reason,
        }


@contextlib.contextmanager
def _quiet_pykwalify() -> Iterator[None]:
    # pykwalify logs every error itself before raising (ours names the file instead), and
    # its extension loader uses a deprecated importlib call on every validation.
    pk_logger = logging.getLogger("pykwalify")
    level = pk_logger.level
    pk_logger.setLevel(logging.CRITICAL)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", DeprecationWarning)
            yield
    finally:
        pk_logger.setLevel(level)


def _check_2d(params: Mapping[str, Any]) -> str | None:
    """Reason the settings do not fit 2D ultrasound frames, or None."""
    settings = params.get("setting") or {}
    if settings.get("force2D"):
        # Images reach pyradiomics as 2D SimpleITK images, which it handles natively. With
        # force2D on a 2D array pyradiomics drops array axis force2Ddimension (the rows):
        # texture matrices then see horizontal neighbours only and the wavelet becomes 1D.
        return "force2D must be false: images are passed as 2D frames (see the YAML comment)"
    if "shape" in (params.get("featureClass") or {}):
        return "featureClass 'shape' is 3D only; use shape2D"
    return None


def validate_params(params: Mapping[str, Any], source: str = "<params>") -> dict[str, Any]:
    """Validate params with pyradiomics' own schema (pykwalify); raise :class:`ParamsError`."""
    if not isinstance(params, Mapping):
        raise ParamsError(source, f"expected a mapping at the top level, got {type(params)}")
    schema, functions = getParameterValidationFiles()
    data = copy.deepcopy(dict(params))
    try:
        with _quiet_pykwalify():
            core = pykwalify.core.Core(
                source_data=data, schema_files=[schema], extensions=[functions]
            )
            core.validate(raise_exception=True)
    except (pykwalify.errors.PyKwalifyException, ValueError, TypeError) as exc:
        reason = getattr(exc, "msg", None) or str(exc)
        raise ParamsError(source, " ".join(str(reason).split())) from exc
    return data


def load_params(path: str | Path) -> dict[str, Any]:
    """Read and validate the extraction settings file; errors name the file."""
    source = str(path)
    try:
        params = yaml.safe_load(Path(path).read_text())
    except OSError as exc:
        raise ParamsError(source, f"cannot read: {exc}") from exc
    except yaml.YAMLError as exc:
        raise ParamsError(source, f"not valid YAML: {' '.join(str(exc).split())}") from exc
    params = validate_params(params, source)
    if reason := _check_2d(params):
        raise ParamsError(source, reason)
    return params


def params_hash(params: Mapping[str, Any], **extra: Any) -> str:
    """sha256 of the canonical JSON of the params (sorted keys) and the pyradiomics version.

    ``extra`` holds any other setting that changes the output (the ring widths), so a
    change there also gives a new hash and a re-extraction.
    """
    payload: dict[str, Any] = {"params": params, "pyradiomics": PYRADIOMICS_VERSION}
    if extra:
        payload["extra"] = extra
    text = json.dumps(payload, sort_keys=True, separators=(",", ":"), default=str)
    return hashlib.sha256(text.encode()).hexdigest()


def limit_threads() -> None:
    """One thread per worker process: SimpleITK filters, and BLAS/OpenMP where loaded.

    Dask runs one single-threaded worker per core; nested thread pools only oversubscribe.
    """
    sitk.ProcessObject.SetGlobalDefaultNumberOfThreads(1)
    for var in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
        os.environ.setdefault(var, "1")  # for libraries loaded after this point
    with contextlib.suppress(ImportError):
        from threadpoolctl import threadpool_limits

        threadpool_limits(1)  # for those already loaded (numpy's BLAS)


class _DropRedundantNotice(logging.Filter):
    # pyradiomics warns on every GLCM that Sum Average = 2 x Joint Average (symmetric GLCM):
    # true, known, and repeated per image; the redundancy filter downstream drops it.
    def filter(self, record: logging.LogRecord) -> bool:
        return "Sum Average = 2 * Joint Average" not in record.getMessage()


_NOTICE_FILTER = _DropRedundantNotice()


def quiet_radiomics() -> None:
    """pyradiomics logs at WARNING and above only, without its per-GLCM notice."""
    radiomics.setVerbosity(logging.WARNING)
    logging.getLogger("radiomics").setLevel(logging.WARNING)
    glcm_logger = logging.getLogger("radiomics.glcm")
    if _NOTICE_FILTER not in glcm_logger.filters:
        glcm_logger.addFilter(_NOTICE_FILTER)


def make_extractor(params: Mapping[str, Any]) -> featureextractor.RadiomicsFeatureExtractor:
    """A pyradiomics extractor for ``params`` (validated again by pyradiomics itself)."""
    limit_threads()
    quiet_radiomics()
    with _quiet_pykwalify():
        return featureextractor.RadiomicsFeatureExtractor(copy.deepcopy(dict(params)))


def extract_region(
    extractor: featureextractor.RadiomicsFeatureExtractor,
    region: Region,
    image: SharedImage | None = None,
) -> dict[str, Any]:
    """Features of one region: pyradiomics name -> float, plus the kept diagnostics; with
    ``image`` (the region's image, filtered once) the values of ``execute``, without it."""
    if image is not None and image.image is region.image:
        result = image.measure(region.mask)
    else:
        result = extractor.execute(region.image, region.mask)
    row: dict[str, Any] = {}
    for name, value in result.items():
        if name in DIAGNOSTICS:
            row[DIAGNOSTICS[name]] = value
        elif not name.startswith("diagnostics_"):
            row[name] = float(value)
    if "voxel_count" in row:
        row["voxel_count"] = int(row["voxel_count"])
    return row


def _check_log_size(
    case_id: str, case: Mapping[str, Any], region: Region, params: Mapping[str, Any]
) -> None:
    if reason := log_size_problem(region.image, log_sigmas(params)):
        raise ExtractionError(case_id, str(case["bmus_image"]), reason, "bmus_image")


def extract_case(
    case: Mapping[str, Any],
    params: Mapping[str, Any],
    ring_mm: float = 3.0,
    ring_px: int = 10,
    extractor: featureextractor.RadiomicsFeatureExtractor | None = None,
    perturb: bool = False,
) -> list[dict[str, Any]]:
    """``radiomics`` rows of one ``cohort`` row: one per region x mask variant.

    ``params_hash`` covers the params, the pyradiomics version and the ring widths. Raises
    :class:`ExtractionError` naming the case, the file and the reason when any region fails,
    so the case is quarantined as a whole rather than stored with some regions missing.
    A filesystem ``OSError`` (a file vanished or unreadable mid-run, EIO) is not the case's
    fault: it propagates, so the task's retry runs (:func:`~tasks.features.imaging.storage_error`).
    """
    case_id = str(case["case_id"])
    extractor = extractor or make_extractor(params)
    phash = params_hash(params, ring_mm=ring_mm, ring_px=ring_px)
    try:
        regions = case_regions(case, ring_mm, ring_px, perturb)
    except InputError as exc:
        raise ExtractionError(case_id, exc.file, exc.reason, exc.column) from exc
    if not regions:
        raise ExtractionError(case_id, case.get("bmus_mask"), "no mask to measure", "bmus_mask")
    _check_log_size(case_id, case, regions[0], params)
    rows = []
    shared = SharedImage(extractor, regions[0].image)  # case_regions reads the image once
    for region in regions:
        try:
            features = extract_region(extractor, region, shared)
        except Exception as exc:  # any pyradiomics failure quarantines the case, not the run
            if storage_error(exc):
                raise  # a filesystem error is not the case's fault: the task's retry runs
            failure = error_reason(exc, with_type=True)
            reason = f"{region.region} ({region.mask_variant}) extraction failed: {failure}"
            raise ExtractionError(case_id, region.mask_file, reason, region.mask_column) from exc
        meta = {
            "case_id": case_id,
            "region": region.region,
            "mask_variant": region.mask_variant,
            "image_sha256": region.image_sha256,
            "mask_sha256": region.mask_sha256,
            "params_hash": phash,
            "pyradiomics_version": features.pop("pyradiomics_version", PYRADIOMICS_VERSION),
            "voxel_count": features.pop("voxel_count", None),
        }
        rows.append(meta | features)
    return rows


def feature_columns(rows: Sequence[Mapping[str, Any]]) -> list[str]:
    """The feature columns of ``radiomics`` rows (every column but the lineage ones)."""
    return [name for name in rows[0] if name not in META_COLUMNS] if rows else []


def extract_cases(
    cases: Sequence[Mapping[str, Any]],
    params: Mapping[str, Any],
    ring_mm: float = 3.0,
    ring_px: int = 10,
    log: Logger | None = None,
    perturb: bool = False,
) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """Extract a chunk of cases: ``(rows, failures)``; one bad case never stops the chunk.

    ``failures`` are quarantine entries (case_id, column, file, reason). This is the unit
    of work one Dask/Prefect task runs; progress goes to ``log`` every few cases.
    """
    out = log or logger
    extractor = make_extractor(params)
    rows: list[dict[str, Any]] = []
    failures: list[dict[str, Any]] = []
    start = time.perf_counter()
    for k, case in enumerate(cases, start=1):
        try:
            rows.extend(
                extract_case(case, params, ring_mm, ring_px, extractor=extractor, perturb=perturb)
            )
        except ExtractionError as exc:
            # case and column only: file paths stay in the quarantine table, out of the logs
            out.warning(
                "radiomics quarantine: case %s (%s): %s", exc.case_id, exc.column, exc.reason
            )
            failures.append(exc.quarantine_entry())
        if k % PROGRESS_EVERY == 0 or k == len(cases):
            elapsed = time.perf_counter() - start
            out.info(
                "radiomics: %d/%d cases (%d failed, %.2f s/case)",
                k,
                len(cases),
                len(failures),
                elapsed / k,
            )
    return rows, failures


def extract_chunk(
    chunk: Sequence[Mapping[str, Any]],
    params: Mapping[str, Any],
    settings: Settings,
    log: Logger | None = None,
) -> ChunkResult:
    """A chunk of cases with the run's settings: ring widths, perturbed repeats, and the
    run's header limits (``SLN_MAX_IMAGE_*``, ``SLN_MAX_FRAMES``) on every file read, as
    at ingest (:func:`~tasks.features.imaging.image_limits`)."""
    from tasks.data.headers import Limits

    started = time.perf_counter()
    with image_limits(Limits.of(settings)):
        rows, failures = extract_cases(
            chunk,
            params,
            settings.ring_mm,
            settings.ring_px,
            log=log,
            perturb=settings.perturb_repeats,
        )
    return ChunkResult(rows, failures, time.perf_counter() - started)


# -- store side: plan and commit (run in the flow process, the single writer) ---------------
def current_params_hash(settings: Settings) -> str:
    """The params hash rows extracted with the current settings carry."""
    params = load_params(settings.radiomics_params)
    return params_hash(params, ring_mm=settings.ring_mm, ring_px=settings.ring_px)


def plan_radiomics(
    cohort: pd.DataFrame, store: FeatureStore, settings: Settings, window: Window = Window()
) -> tuple[Plan, dict[str, Any]]:
    """Validated params and the current cases (of ``cohort``) that lack rows for them."""
    params = load_params(settings.radiomics_params)
    phash = params_hash(params, ring_mm=settings.ring_mm, ring_px=settings.ring_px)
    stored = store.read(RADIOMICS, columns=list(RADIOMICS.keys))
    plan = plan_cases(cohort, stored, "params_hash", phash, window, settings.perturb_repeats)
    return plan, params


def commit_radiomics(
    result: ChunkResult, store: FeatureStore, run_id: str, force: bool = False
) -> CommitCounts:
    """Write one chunk's rows (on the lineage keys) and its failures to quarantine."""
    return commit_chunk(RADIOMICS, "radiomics", result, store, run_id, force)


# -- Prefect wrappers ------------------------------------------------------------------------
commit_radiomics_task = task(
    commit_radiomics,
    name="commit-radiomics",
    cache_policy=NO_CACHE,
    retries=2,
    retry_delay_seconds=5,
)


@task(name="extract-radiomics", cache_policy=NO_CACHE, retries=1, retry_delay_seconds=5)
def extract_chunk_task(
    chunk: list[dict[str, Any]], params: dict[str, Any], settings: Settings
) -> ChunkResult:
    """One Dask task: a chunk of cases, progress to the Prefect run log."""
    limit_threads()
    return extract_chunk(chunk, params, settings, get_run_logger())
