"""Settings: from the environment, validated, and carried whole through a flow parameter."""

from __future__ import annotations

import importlib.metadata
import os
import subprocess
from pathlib import Path

import pytest
from pydantic import ValidationError

from tasks import config
from tasks.config import PROJECT_ROOT, Settings, code_version, resolve_settings

_ALIASES = ("DASK_SCHEDULER_ADDRESS", "MLFLOW_TRACKING_URI")


@pytest.fixture(autouse=True)
def clean_env(monkeypatch):
    """Each test starts from an environment without any setting of ours."""
    for key in list(os.environ):
        if key.startswith("SLN_") or key in _ALIASES:
            monkeypatch.delenv(key)


def test_defaults():
    settings = Settings()
    assert settings.store == "./store"
    assert settings.data_roots == [] and settings.validation_sites == []
    assert settings.test_share == 0.2 and settings.seed == 20250101
    assert settings.cluster == "auto" and settings.dask_scheduler_address is None
    assert settings.mlflow_tracking_uri is None
    assert settings.radiomics_params == PROJECT_ROOT / "infra" / "radiomics.yaml"
    assert settings.shared_data == PROJECT_ROOT.parent / "shared" / "data"
    assert settings.n_workers >= 1
    # Scanner harmonisation: every option compared by default, the normalised pass's params.
    assert settings.harmonisation == "auto" and settings.combat_min_cases == 20
    assert (
        settings.radiomics_params_normalised == PROJECT_ROOT / "infra" / "radiomics-normalised.yaml"
    )


def test_settings_come_from_sln_variables(monkeypatch):
    monkeypatch.setenv("SLN_STORE", "s3://bucket/store")
    monkeypatch.setenv("SLN_SEED", "7")
    monkeypatch.setenv("SLN_TEST_SHARE", "0.25")
    monkeypatch.setenv("SLN_PERTURB_REPEATS", "false")
    monkeypatch.setenv("SLN_CLUSTER", "slurm")
    monkeypatch.setenv("SLN_TLS_DIR", "/certs")
    monkeypatch.setenv("DASK_SCHEDULER_ADDRESS", "tls://10.0.0.1:8786")
    monkeypatch.setenv("MLFLOW_TRACKING_URI", "postgresql://u:pw@db/mlflow")
    monkeypatch.setenv("SLN_NOT_A_SETTING", "ignored")
    settings = Settings()
    assert settings.store == "s3://bucket/store"
    assert (settings.seed, settings.test_share, settings.perturb_repeats) == (7, 0.25, False)
    assert settings.cluster == "slurm" and settings.tls_dir == Path("/certs")
    assert settings.dask_scheduler_address == "tls://10.0.0.1:8786"
    assert settings.mlflow_tracking_uri == "postgresql://u:pw@db/mlflow"
    assert not hasattr(settings, "not_a_setting")
    # Keyword arguments win over the environment.
    assert Settings(store="/here").store == "/here"


@pytest.mark.parametrize(
    ("value", "roots"),
    [
        ("/data/a", ["/data/a"]),
        ("/data/a:/data/b", ["/data/a", "/data/b"]),
        ("s3://bucket/x", ["s3://bucket/x"]),
        ("/data/a:s3://bucket/x:/data/b", ["/data/a", "s3://bucket/x", "/data/b"]),
        ("s3://a/x:s3://b/y", ["s3://a/x", "s3://b/y"]),
        ("/data/a::/data/b:", ["/data/a", "/data/b"]),
        ("", []),
    ],
)
def test_data_roots_split_on_colons_keeping_uris_whole(monkeypatch, value, roots):
    monkeypatch.setenv("SLN_DATA_ROOTS", value)
    assert Settings().data_roots == roots


def test_a_list_of_roots_is_taken_as_it_is():
    assert Settings(data_roots=["s3://a/x", "/b"]).data_roots == ["s3://a/x", "/b"]


def test_validation_sites_are_a_comma_list(monkeypatch):
    monkeypatch.setenv("SLN_VALIDATION_SITES", " B, site C ,,D ")
    assert Settings().validation_sites == ["B", "site C", "D"]
    assert Settings(validation_sites=["X"]).validation_sites == ["X"]


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("test_share", 0),
        ("test_share", 1),
        ("test_share", 1.5),
        ("icc_threshold", 1.2),
        ("pearson_threshold", 0),
        ("pca_variance", 1),
        ("cnn_val_share", 0),
        ("cnn_size", 16),
        ("cnn_margin", -0.1),
        ("slurm_cpu_jobs", -1),
        ("lasso_rule", "max"),
        ("cluster", "kubernetes"),
        ("seed", "not a number"),
    ],
)
def test_out_of_range_values_are_refused(field, value):
    with pytest.raises(ValidationError, match=field):
        Settings(**{field: value})


def test_an_out_of_range_environment_value_is_refused(monkeypatch):
    monkeypatch.setenv("SLN_TEST_SHARE", "2")
    with pytest.raises(ValidationError, match="test_share"):
        Settings()


def _through_the_api(settings: Settings) -> Settings:
    # A flow parameter: dumped to JSON by the caller, validated back by the flow's process.
    return Settings.model_validate_json(settings.model_dump_json())


def test_resolve_settings_keeps_every_field_of_a_flow_parameter(monkeypatch):
    sent = Settings(
        store="s3://bucket/store",
        data_roots=["s3://bucket/data", "/mnt/data"],
        validation_sites=["B"],
        seed=11,
        test_share=0.3,
        perturb_repeats=False,
        tls_dir=Path("/certs"),
        radiomics_params=Path("/etc/sln/radiomics.yaml"),
        dask_scheduler_address="tls://10.0.0.1:8786",
        cluster="address",
        mlflow_tracking_uri="postgresql://u:secret@db/mlflow",
    )
    assert "secret" not in sent.model_dump_json()
    # The flow's process has its own environment: it must not override the parameter...
    monkeypatch.setenv("SLN_STORE", "/elsewhere")
    monkeypatch.setenv("SLN_SEED", "99")
    monkeypatch.setenv("DASK_SCHEDULER_ADDRESS", "tcp://other:8786")
    # ... except for the excluded field, which is read from it again.
    monkeypatch.setenv("MLFLOW_TRACKING_URI", "http://tracking:5000")
    received = resolve_settings(_through_the_api(sent))
    assert received.model_dump(exclude={"mlflow_tracking_uri"}) == sent.model_dump(
        exclude={"mlflow_tracking_uri"}
    )
    assert received.mlflow_tracking_uri == "http://tracking:5000"
    assert isinstance(received.tls_dir, Path)


def test_resolve_settings_of_none_is_the_environments(monkeypatch):
    monkeypatch.setenv("SLN_STORE", "/from/env")
    monkeypatch.setenv("SLN_VALIDATION_SITES", "B,C")
    settings = resolve_settings(None)
    assert settings.store == "/from/env" and settings.validation_sites == ["B", "C"]


def test_code_version_is_the_package_version_and_the_commit():
    version = importlib.metadata.version("sln-radiomics")
    code_version.cache_clear()
    out = code_version()
    assert out == version or out.startswith(f"{version}+")
    if "+" in out:
        # The suffix names a real commit of this checkout (HEAD may move on meanwhile).
        described = out.split("+", 1)[1].removesuffix("-dirty")
        found = subprocess.run(
            ["git", "-C", str(PROJECT_ROOT), "rev-parse", "--verify", f"{described}^{{commit}}"],
            capture_output=True,
            check=False,
        )
        assert found.returncode == 0, out
    assert code_version() is out  # computed once per process


def test_code_version_without_git_is_the_package_version(monkeypatch):
    def no_git(*args, **kwargs):
        raise FileNotFoundError("git")

    monkeypatch.setattr(config.subprocess, "run", no_git)
    code_version.cache_clear()
    try:
        assert code_version() == importlib.metadata.version("sln-radiomics")
    finally:
        code_version.cache_clear()
