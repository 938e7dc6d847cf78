"""Configuration in one typed place.

Every setting comes from the environment (prefix ``SLN_``) or its default; the CLI and
flows build one :class:`Settings` and pass it down. Steps never read the environment
themselves. Credentials (AWS_*) are read by s3fs/deltalake from the standard AWS
variables and never stored here, so they cannot end up in a log line or an artifact.
"""

from __future__ import annotations

import functools
import importlib.metadata
import os
import subprocess
from pathlib import Path
from typing import Annotated, Literal

from pydantic import Field, field_validator
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict

PROJECT_ROOT = Path(__file__).resolve().parent.parent
INFRA_DIR = PROJECT_ROOT / "infra"


def default_shared_data() -> Path:
    return PROJECT_ROOT.parent / "shared" / "data"


class Settings(BaseSettings):
    """Run settings. Environment variables: ``SLN_<FIELD>`` (e.g. ``SLN_STORE``)."""

    model_config = SettingsConfigDict(env_prefix="SLN_", extra="ignore", populate_by_name=True)

    store: str = Field("./store", description="Feature store root: a folder or s3://bucket/prefix")
    data_roots: Annotated[list[str], NoDecode] = Field(
        default_factory=list,
        description="Allowed roots for manifest paths (colon-separated in SLN_DATA_ROOTS); "
        "empty means the manifest's own folder",
    )
    validation_sites: Annotated[list[str], NoDecode] = Field(
        default_factory=list,
        description="Sites whose unsplit cases are external validation (comma-separated)",
    )
    test_share: float = Field(0.2, gt=0, lt=1)
    shared_data: Path = Field(default_factory=default_shared_data)
    radiomics_params: Path = Field(INFRA_DIR / "radiomics.yaml")
    seed: int = 20250101
    # Dask: process workers, one thread each (radiomics is CPU-bound and not GIL-free).
    n_workers: int = Field(default_factory=lambda: max(1, os.cpu_count() or 1))
    dask_scheduler_address: str | None = Field(None, validation_alias="DASK_SCHEDULER_ADDRESS")
    chunk_size: int = 20
    compact_at_files: int = Field(
        64,
        ge=1,
        description="A run compacts a feature table it wrote (and checkpoints its Delta log) "
        "once the table holds this many files (each committed chunk adds one)",
    )
    # Peritumoral ring width: millimetres when pixel spacing is known, pixels otherwise.
    ring_mm: float = 3.0
    ring_px: int = 10
    perturb_repeats: bool = Field(
        True,
        description="Cases without reader-2/repeat delineations also get a perturbed reader-1 "
        "mask (erosion/dilation + contour noise) as the ICC filter's repeat",
    )
    # CNN (dual-stream MobileNetV2): input crop, fine-tuning and embedding.
    embed: bool = Field(
        True, description="Compute CNN embeddings in the cohort flow (off: radiomics only)"
    )
    cnn_start: str = Field(
        "auto",
        description="Start weights: 'auto' (converted TFLite ImageNet weights when the "
        "shared file exists, else random), 'tflite', 'random', or a .pth path/URI",
    )
    cnn_size: int = Field(224, ge=32, description="CNN input size in pixels (square crop)")
    cnn_margin: float = Field(0.25, ge=0, description="Crop margin around the lesion bbox")
    cnn_batch_size: int = 16
    cnn_epochs: int = 8
    cnn_lr: float = 3e-4
    cnn_weight_decay: float = 1e-4
    cnn_patience: int = 3
    cnn_val_share: float = Field(0.2, gt=0, lt=1, description="Early-stopping fold share")
    cnn_device: str = Field("auto", description="'auto' (CUDA when present), 'cpu', 'cuda'")
    # Selection and models (fitted on the training split only).
    icc_threshold: float = Field(0.75, ge=0, le=1)
    pearson_threshold: float = Field(0.9, gt=0, le=1)
    pca_variance: float = Field(0.95, gt=0, lt=1, description="Variance kept by deep PCA")
    lasso_rule: str = Field("1se", pattern="^(1se|min)$")
    # Validation and promotion.
    auc_floor: float = Field(0.65, description="validate fails when champion AUC drops below")
    promote_alpha: float = Field(
        0.05, description="promote unless DeLong shows the candidate worse at this level"
    )
    # Excluded from dumps: a database URI may hold a password, and flow parameters are logged.
    mlflow_tracking_uri: str | None = Field(
        None, validation_alias="MLFLOW_TRACKING_URI", exclude=True
    )
    # Where the Dask workers come from (flows/runtime/runners.py, infra/README.md).
    cluster: Literal["auto", "local", "address", "slurm"] = Field(
        "auto",
        description="'local': a loopback cluster per flow run; 'address': the scheduler at "
        "DASK_SCHEDULER_ADDRESS; 'slurm': worker jobs on Slurm (dask-jobqueue), one "
        "scheduler per flow run; 'auto': 'address' when DASK_SCHEDULER_ADDRESS is set, "
        "else 'local'",
    )
    tls_dir: Path | None = Field(
        None,
        description="Folder with ca.pem and scheduler/worker/client certificates "
        "(`sln certs --out DIR`): Dask comms use TLS with them. With cluster='slurm' and "
        "no folder set, certificates are made once in .dask/tls",
    )
    slurm_cpu_partition: str = Field("cpu", description="Partition of the CPU worker jobs")
    slurm_gpu_partition: str = Field("gpu", description="Partition of the GPU=1 worker jobs")
    slurm_cpu_jobs: int = Field(4, ge=0, description="At most this many CPU worker jobs")
    slurm_gpu_jobs: int = Field(1, ge=0, description="At most this many GPU worker jobs")
    slurm_gpu_gres: str = Field(
        "gpu:1", description="--gres of each GPU worker job ('' to request none)"
    )
    slurm_memory: str = Field("4GB", description="Memory of each worker job (one process)")
    slurm_walltime: str = Field("02:00:00", description="Walltime of each worker job")
    slurm_account: str | None = Field(None, description="Account (-A) for the worker jobs")
    slurm_interface: str | None = Field(
        None,
        description="Network interface the scheduler and workers use (ib0, eth0); unset: "
        "127.0.0.1, i.e. every job on the flow's machine (the one-node cluster of `make slurm`)",
    )
    slurm_log_dir: Path = Field(
        PROJECT_ROOT / ".slurm" / "jobs",
        description="Job stdout/stderr files (a folder the compute nodes can write)",
    )
    icc_min_repeats: int = Field(
        20, ge=2, description="Training cases a repeat set needs before the ICC filter uses it"
    )
    drift_permutations: int = Field(
        500, ge=50, description="Resamples of the drift null (per site, per split)"
    )
    # Deep features of training rows (issue 10): out-of-fold CNNs, so nothing fitted on
    # them (LASSO, logistic models, threshold) sees an embedding of a case its CNN trained on.
    cnn_crossfit: Literal["crossfit", "in-sample"] = Field(
        "crossfit",
        description="'crossfit': training rows' deep features come from K CNNs fine-tuned "
        "without them (folds grouped by patient); 'in-sample': from the final CNN",
    )
    cnn_folds: int = Field(5, ge=2, description="K of the cross-fitted CNNs")
    # Scanner harmonisation of the handcrafted features (issue 10): retrain fits the models
    # under each option and reports every one; 'auto' keeps the best by internal testing.
    harmonisation: Literal["auto", "none", "image", "combat"] = Field(
        "auto",
        description="'none'; 'image': intensities normalised before extraction "
        "(radiomics_params_normalised, a second radiomics pass); 'combat': ComBat on the "
        "handcrafted features, fitted on training, a new site from its own unlabelled rows; "
        "'auto': all three fitted, the best COMB AUC on internal testing used (ties: simpler)",
    )
    radiomics_params_normalised: Path = Field(
        INFRA_DIR / "radiomics-normalised.yaml",
        description="pyradiomics params of the image-normalised extraction pass",
    )
    combat_min_cases: int = Field(
        20, ge=2, description="Rows a site needs before ComBat estimates its batch effect"
    )
    # Hostile input: limits checked on the image header before anything is decoded.
    max_image_pixels: int = Field(
        4096 * 4096, ge=1, description="Largest image (pixels per frame) decoded"
    )
    max_image_side: int = Field(8192, ge=1, description="Largest size of any image axis")
    max_frames: int = Field(1, ge=1, description="Frames per image (cine loops are refused)")
    spacing_range_mm: tuple[float, float] = Field(
        (0.005, 5.0), description="Plausible pixel spacing (mm); outside it the case is refused"
    )

    @field_validator("data_roots", mode="before")
    @classmethod
    def _split_roots(cls, value: object) -> object:
        return _split_uri_list(value) if isinstance(value, str) else value

    @field_validator("validation_sites", mode="before")
    @classmethod
    def _split_sites(cls, value: object) -> object:
        if isinstance(value, str):
            return [part.strip() for part in value.split(",") if part.strip()]
        return value


def resolve_settings(settings: Settings | None) -> Settings:
    """The settings a flow runs with: built at the edge (CLI, deployment) and passed down.

    A flow parameter travels as JSON through the Prefect API, which leaves out the fields
    excluded from dumps (a tracking URI may hold a password); those are read again from
    the environment of the process that runs the flow. ``None`` (a deployment run with no
    settings) means the environment's settings.
    """
    if settings is None:
        return Settings()
    return Settings(**settings.model_dump(exclude_unset=True))


def _split_uri_list(value: str) -> list[str]:
    """Split a colon-separated list that may hold ``s3://`` URIs."""
    parts: list[str] = []
    for piece in value.split(":"):
        if piece.startswith("//") and parts:
            parts[-1] = f"{parts[-1]}:{piece}"
        elif piece:
            parts.append(piece)
    return parts


@functools.lru_cache(maxsize=1)
def code_version() -> str:
    """Package version plus the git commit (``+dirty`` with local changes), for lineage."""
    version = importlib.metadata.version("sln-radiomics")
    try:
        commit = subprocess.run(
            ["git", "-C", str(PROJECT_ROOT), "describe", "--always", "--dirty"],
            capture_output=True,
            text=True,
            timeout=10,
            check=True,
        ).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return version
    return f"{version}+{commit}" if commit else version
