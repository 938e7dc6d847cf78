"""Shared fixtures: real services on loopback (moto's S3 server), tiny real cohorts."""

from __future__ import annotations

import os
import socket
import uuid
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from tasks.config import default_shared_data


def original_only_params(folder: Path, source: Path | None = None) -> Path:
    """The project's radiomics settings (``source``: default the main extraction's YAML) on
    the original image only (no wavelet, no LoG): an eighth of the extraction time, for
    whole-pipeline tests whose subject is not the features (the cluster, what gets written
    where, reproducibility, the flows' wiring)."""
    import yaml

    from tasks.config import INFRA_DIR

    source = source or INFRA_DIR / "radiomics.yaml"
    params = yaml.safe_load(source.read_text())
    params["imageType"] = {"Original": {}}
    path = folder / f"{source.stem}-original.yaml"
    path.write_text(yaml.safe_dump(params))
    return path


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@pytest.fixture(scope="session", autouse=True)
def pseudonym_key() -> bytes:
    """A fresh pseudonymisation key for the session, in the environment as a deployment
    would set it (subprocesses inherit it). Tests of a missing key unset it themselves."""
    import secrets

    from tasks.data.secrets import ENV

    saved = os.environ.get(ENV)
    os.environ[ENV] = secrets.token_hex(32)
    yield os.environ[ENV].encode()
    if saved is None:
        os.environ.pop(ENV, None)
    else:
        os.environ[ENV] = saved


@pytest.fixture(scope="session", autouse=True)
def harmonisation_none():
    """Tests run with SLN_HARMONISATION=none unless they set it: the default 'auto' extracts
    radiomics twice (an image-normalised pass) and fits every model three times. The flow
    tests of retrain, validate and reproducibility (tests/flows/conftest.py) run 'auto'."""
    saved = os.environ.get("SLN_HARMONISATION")
    os.environ.setdefault("SLN_HARMONISATION", "none")
    yield
    if saved is None:
        os.environ.pop("SLN_HARMONISATION", None)


@pytest.fixture(scope="session")
def free_tcp_port():
    """A function returning a free loopback port."""
    return free_port


@pytest.fixture(scope="session")
def shared_data() -> Path:
    path = Path(os.environ.get("SLN_SHARED_DATA", default_shared_data()))
    if not path.is_dir():
        pytest.skip(f"shared reference data not found at {path} (set SLN_SHARED_DATA)")
    return path


@pytest.fixture(scope="session")
def s3_endpoint():
    """A real S3-protocol server (moto) on 127.0.0.1, as s3fs's own tests use."""
    from moto.server import ThreadedMotoServer

    port = free_port()
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=port)
    server.start()
    endpoint = f"http://127.0.0.1:{port}"
    saved = {k: os.environ.get(k) for k in _S3_ENV}
    os.environ.update(
        AWS_ACCESS_KEY_ID="testing",
        AWS_SECRET_ACCESS_KEY="testing",
        AWS_REGION="us-east-1",
        AWS_DEFAULT_REGION="us-east-1",
        AWS_ENDPOINT_URL=endpoint,
    )
    yield endpoint
    server.stop()
    for key, value in saved.items():
        if value is None:
            os.environ.pop(key, None)
        else:
            os.environ[key] = value


_S3_ENV = (
    "AWS_ACCESS_KEY_ID",
    "AWS_SECRET_ACCESS_KEY",
    "AWS_REGION",
    "AWS_DEFAULT_REGION",
    "AWS_ENDPOINT_URL",
)


@pytest.fixture
def s3_bucket(s3_endpoint) -> str:
    """A fresh bucket per test; returns ``s3://<bucket>``."""
    import boto3

    from tasks.data.s3 import S3FileSystem  # the class fsspec makes for s3:// paths

    name = f"sln-{uuid.uuid4().hex[:12]}"
    boto3.client("s3", endpoint_url=s3_endpoint).create_bucket(Bucket=name)
    S3FileSystem.clear_instance_cache()
    return f"s3://{name}"


def _disk(shape: tuple[int, int], centre: tuple[int, int], radius: int) -> np.ndarray:
    yy, xx = np.mgrid[: shape[0], : shape[1]]
    return ((yy - centre[0]) ** 2 + (xx - centre[1]) ** 2 <= radius**2).astype(np.uint8)


def write_case(folder: Path, case_id: str, rng: np.random.Generator, shape=(96, 112)) -> dict:
    """One small but real case: speckled B-mode with a dark lesion, RGB Doppler, masks."""
    (folder / "images").mkdir(parents=True, exist_ok=True)
    radius = int(rng.integers(12, 22))
    centre = (shape[0] // 2 + int(rng.integers(-6, 6)), shape[1] // 2 + int(rng.integers(-6, 6)))
    lesion = _disk(shape, centre, radius)
    bmus = np.clip(rng.rayleigh(40, shape) + 60 - 45 * lesion, 0, 255).astype(np.uint8)
    cdus = np.repeat(bmus[..., None], 3, axis=2)
    flow = (rng.random(shape) < 0.05) & (_disk(shape, centre, radius + 6) > 0)
    cdus[flow] = (220, 30, 30)
    paths = {
        "bmus_image": f"images/{case_id}_bmus.png",
        "bmus_mask": f"images/{case_id}_mask.png",
        "cdus_image": f"images/{case_id}_cdus.png",
    }
    Image.fromarray(bmus).save(folder / paths["bmus_image"])
    Image.fromarray(lesion * 255).save(folder / paths["bmus_mask"])
    Image.fromarray(cdus).save(folder / paths["cdus_image"])
    return paths


@pytest.fixture
def tiny_cohort(tmp_path) -> Path:
    """Eight cases at two sites, written from scratch (independent of the generator)."""
    rng = np.random.default_rng(7)
    rows = []
    for i in range(8):
        case_id = f"T{i:03d}"
        rows.append(
            {
                "case_id": case_id,
                "patient_id": f"P{i:03d}",
                "site": "A" if i < 6 else "B",
                "exam_date": f"2023-0{1 + i % 6}-15",
                "label": i % 2,
                "split": "",
                **write_case(tmp_path, case_id, rng),
                "pixel_spacing_mm": 0.1,
            }
        )
    manifest = tmp_path / "manifest.csv"
    pd.DataFrame(rows).to_csv(manifest, index=False)
    return manifest


@pytest.fixture(scope="session")
def prefect_api(tmp_path_factory):
    """A real Prefect server (``prefect server start``, SQLite) on a free loopback port.

    Dask worker processes inherit ``PREFECT_API_URL`` from the environment; this process
    takes it through Prefect's settings context.
    """
    from prefect.settings import PREFECT_API_URL, temporary_settings

    from flows.runtime.server import start_server

    home = tmp_path_factory.mktemp("prefect-home")
    url, proc = start_server(home=home, port=free_port(), timeout=180)
    saved = os.environ.get("PREFECT_API_URL")
    os.environ["PREFECT_API_URL"] = url
    with temporary_settings(updates={PREFECT_API_URL: url}):
        yield url
        from prefect.logging.handlers import APILogWorker

        APILogWorker.drain_all(timeout=10)  # ship buffered run logs before the server stops
    if saved is None:
        os.environ.pop("PREFECT_API_URL", None)
    else:
        os.environ["PREFECT_API_URL"] = saved
    if proc is not None:
        proc.terminate()
        proc.wait(timeout=30)
