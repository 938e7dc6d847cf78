"""Deployment specs under infra/: they parse, and the invariants the flows rely on hold.

Nothing here builds an image or talks to Kubernetes/Slurm; it reads the files (and uses
Prefect's own work-pool template validator and templating), so it runs in about a second.
"""

from __future__ import annotations

import importlib.util
import json
import re
import shutil
import subprocess
from pathlib import Path

import pytest
import yaml

from flows.runtime.env import DASK_CONFIG, MALLOC_ENV, dask_env
from tasks.config import Settings

ROOT = Path(__file__).resolve().parents[2]
INFRA = ROOT / "infra"
DASKCLUSTER = INFRA / "k8s" / "daskcluster.yaml"
JOB_TEMPLATE = INFRA / "k8s" / "prefect-work-pool-job-template.json"
DOCKERFILES = {
    "cpu": INFRA / "docker" / "cpu.Dockerfile",
    "gpu": INFRA / "docker" / "gpu.Dockerfile",
}
SLURM_SCRIPT = INFRA / "hpc" / "slurm_cluster.py"
SLURM_LOCAL = INFRA / "hpc" / "slurm-local.sh"
AWS_SECRET_VARS = {"AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN"}
ONE_THREAD = ["OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"]


def load_module(path: Path, name: str):
    spec = importlib.util.spec_from_file_location(name, path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def dask_docs() -> dict[str, dict]:
    docs = [d for d in yaml.safe_load_all(DASKCLUSTER.read_text()) if d]
    return {d["kind"]: d for d in docs}


def env_of(container: dict) -> dict[str, dict]:
    return {e["name"]: e for e in container.get("env", [])}


def flag_value(args: list[str], flag: str) -> str | None:
    return args[args.index(flag) + 1] if flag in args else None


def dockerfile_cmd(text: str) -> list[str]:
    line = [ln for ln in text.splitlines() if ln.startswith("CMD ")][-1]
    return json.loads(line[len("CMD ") :])


# -- Kubernetes: DaskCluster + GPU DaskWorkerGroup ------------------------------------------
def test_daskcluster_has_scheduler_cpu_workers_and_a_gpu_group():
    docs = dask_docs()
    assert set(docs) == {"DaskCluster", "DaskWorkerGroup"}
    cluster, gpu = docs["DaskCluster"], docs["DaskWorkerGroup"]
    for doc in (cluster, gpu):
        assert doc["apiVersion"] == "kubernetes.dask.org/v1"
    spec = cluster["spec"]
    assert {"scheduler", "worker"} <= set(spec)
    service_ports = {p["name"]: p["port"] for p in spec["scheduler"]["service"]["ports"]}
    assert service_ports["tcp-comm"] == 8786
    assert service_ports["http-dashboard"] == 8787  # the operator retires workers through it

    cpu = spec["worker"]["spec"]["containers"][0]
    assert cpu["args"][:2] == ["dask", "worker"]
    assert flag_value(cpu["args"], "--nthreads") == "1"
    assert "--resources" not in cpu["args"]
    assert cpu["resources"]["limits"]["cpu"] == "1"
    assert "memory" in cpu["resources"]["limits"]

    assert gpu["spec"]["cluster"] == cluster["metadata"]["name"]
    gpu_container = gpu["spec"]["worker"]["spec"]["containers"][0]
    assert flag_value(gpu_container["args"], "--resources") == "GPU=1"
    assert flag_value(gpu_container["args"], "--nthreads") == "1"
    assert gpu_container["resources"]["limits"]["nvidia.com/gpu"] == 1


@pytest.mark.parametrize("kind", ["DaskCluster", "DaskWorkerGroup"])
def test_dask_workers_get_store_prefect_api_and_aws_from_a_secret(kind):
    doc = dask_docs()[kind]
    container = doc["spec"]["worker"]["spec"]["containers"][0]
    env = env_of(container)
    assert env["SLN_STORE"]["value"].startswith("s3://")
    assert env["PREFECT_API_URL"]["value"].endswith("/api")
    for name in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY"):
        assert "value" not in env[name]
        assert env[name]["valueFrom"]["secretKeyRef"]["key"] == name
    for name in ONE_THREAD:
        assert env[name]["value"] == "1"


# -- Prefect Kubernetes work pool base job template -----------------------------------------
def rendered_job_configuration() -> dict:
    """The job configuration a worker would get from the template's defaults."""
    from prefect.utilities.templating import apply_values

    template = json.loads(JOB_TEMPLATE.read_text())
    defaults = {
        name: prop["default"]
        for name, prop in template["variables"]["properties"].items()
        if "default" in prop
    }
    return apply_values(template["job_configuration"], defaults)


def test_job_template_is_a_valid_work_pool_template():
    from prefect.server.schemas.actions import validate_base_job_template

    template = json.loads(JOB_TEMPLATE.read_text())
    validate_base_job_template(template)  # every {{ placeholder }} is a declared variable
    manifest = template["job_configuration"]["job_manifest"]
    pod = manifest["spec"]["template"]["spec"]
    # what prefect-kubernetes' worker insists on
    assert manifest["apiVersion"] == "batch/v1" and manifest["kind"] == "Job"
    assert pod["restartPolicy"] == "Never"
    assert pod["parallelism"] == 1 and pod["completions"] == 1
    assert pod["containers"][0]["name"] == "prefect-job"


def test_job_template_points_flows_at_the_k8s_dask_scheduler():
    config = rendered_job_configuration()
    container = config["job_manifest"]["spec"]["template"]["spec"]["containers"][0]
    env = env_of(container)
    cluster_name = dask_docs()["DaskCluster"]["metadata"]["name"]
    # the operator names the scheduler Service <cluster>-scheduler
    assert env["DASK_SCHEDULER_ADDRESS"]["value"] == f"tls://{cluster_name}-scheduler:8786"
    assert env["SLN_STORE"]["value"].startswith("s3://")
    for name in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY"):
        assert "value" not in env[name]
        assert env[name]["valueFrom"]["secretKeyRef"] == {"name": "sln-aws", "key": name}
    assert container["image"].endswith("sln-radiomics-cpu:0.1.0")


# -- no literal credentials anywhere in infra/ ---------------------------------------------
def test_no_literal_aws_secrets_in_infra():
    access_key = re.compile(r"\b(AKIA|ASIA)[0-9A-Z]{16}\b")
    secret_value = re.compile(
        r"aws_secret_access_key\s*[:=]\s*[\"']?[A-Za-z0-9/+=]{40}", re.IGNORECASE
    )
    checked = 0
    for path in INFRA.rglob("*"):
        if not path.is_file() or path.suffix == ".png" or "__pycache__" in path.parts:
            continue
        text = path.read_text(errors="replace")
        assert not access_key.search(text), f"an AWS access key id in {path}"
        assert not secret_value.search(text), f"an AWS secret access key in {path}"
        checked += 1
    assert checked >= 8

    containers = [
        doc["spec"]["worker"]["spec"]["containers"][0] for doc in dask_docs().values()
    ] + [dask_docs()["DaskCluster"]["spec"]["scheduler"]["spec"]["containers"][0]]
    template = json.loads(JOB_TEMPLATE.read_text())
    containers.append(
        template["job_configuration"]["job_manifest"]["spec"]["template"]["spec"]["containers"][0]
    )
    for container in containers:
        for name, entry in env_of(container).items():
            if name in AWS_SECRET_VARS:
                assert "value" not in entry and "secretKeyRef" in entry["valueFrom"]


# -- Dockerfiles ----------------------------------------------------------------------------
@pytest.mark.parametrize("kind", ["cpu", "gpu"])
def test_dockerfile_installs_like_the_makefile_and_runs_one_thread(kind):
    text = DOCKERFILES[kind].read_text()
    first_deps = text.index("versioneer")
    pyradiomics = text.index("pip install --no-build-isolation pyradiomics==3.0.1")
    project = text.index("pip install .")
    assert first_deps < pyradiomics < project  # numpy/versioneer, then pyradiomics, then us
    assert "torch==2.14.1" in text and "torchvision==0.29.1" in text
    for name in [*ONE_THREAD, "ITK_GLOBAL_DEFAULT_NUMBER_OF_THREADS"]:
        assert re.search(rf"\b{name}=1\b", text), name
    for name, value in MALLOC_ENV.items():  # as flows/runtime/runners.py gives workers
        assert re.search(rf"\b{name}={value}\b", text), name
    for name, value in dask_env(DASK_CONFIG).items():  # Dask's timers, as flows/runtime/env.py
        assert re.search(rf"\b{name}={value}(\s|$)", text), name
    cmd = dockerfile_cmd(text)
    assert cmd[:2] == ["dask", "worker"]
    assert flag_value(cmd, "--nthreads") == "1"
    user = re.findall(r"^USER\s+(\S+)", text, re.MULTILINE)
    assert user and user[-1].split(":")[0] not in {"0", "root"}
    assert re.search(r'^ENTRYPOINT \["tini"', text, re.MULTILINE)
    # every COPY source exists in the repository (the build context)
    for src in re.findall(r"^COPY (?!--from)(.+) \S+$", text, re.MULTILINE):
        for item in src.split():
            assert (ROOT / item).exists(), f"COPY {item}: not in the repository"
    assert DOCKERFILES[kind].with_name(f"{kind}.Dockerfile.dockerignore").is_file()


def test_gpu_image_is_cuda13_and_carries_the_gpu_resource():
    text = DOCKERFILES["gpu"].read_text()
    assert re.search(r"^ARG CUDA_IMAGE=nvidia/cuda:13\.0\.\d+-runtime-", text, re.MULTILINE)
    assert "python3.11" in text
    assert flag_value(dockerfile_cmd(text), "--resources") == "GPU=1"
    assert re.search(r"^ARG PYTHON_IMAGE=python:3\.11-slim", DOCKERFILES["cpu"].read_text(), re.M)


# -- Slurm ----------------------------------------------------------------------------------
def test_standing_slurm_cluster_runs_the_flows_slurm_code_path():
    from flows.runtime import slurm

    module = load_module(SLURM_SCRIPT, "sln_slurm_cluster")
    assert module.make_cluster is slurm.make_cluster  # the same cluster class, not a copy
    assert module.cluster_kwargs is slurm.cluster_kwargs
    settings = Settings(tls_dir=ROOT / "unused-tls")
    args = module.parse_args(["--cpu-jobs", "8", "--gpu-jobs", "2", "--port", "8786"])
    assert (args.cpu_jobs, args.gpu_jobs, args.port) == (8, 2, 8786)
    line = module.client_env("tls://10.0.0.5:8786", settings.model_copy(update={"tls_dir": None}))
    assert "SLN_CLUSTER=address" in line and "DASK_SCHEDULER_ADDRESS=tls://10.0.0.5:8786" in line


def test_slurm_local_script_is_bash_with_two_partitions_on_loopback():
    text = SLURM_LOCAL.read_text()
    assert "PartitionName=cpu Nodes=$HOST Default=YES" in text
    assert "PartitionName=gpu Nodes=$HOST Default=NO" in text
    assert "Gres=gpu:1" in text and "GresTypes=gpu" in text
    assert "NodeAddr=127.0.0.1" in text and "NoCtldInAddrAny" in text
    assert "ProctrackType=proctrack/linuxproc" in text and "TaskPlugin=task/none" in text
    assert "slurmctld slurmd slurm-client munge" in text.replace("(", "").replace(")", "")
    bash = shutil.which("bash")
    if bash:
        subprocess.run([bash, "-n", str(SLURM_LOCAL)], check=True)


# -- UI snapshot script ---------------------------------------------------------------------
def test_ui_snapshot_urls_flags_and_missing_chromium(tmp_path, capsys):
    module = load_module(INFRA / "ui_snapshot.py", "sln_ui_snapshot")
    base = "http://127.0.0.1:4200/"
    assert module.flow_runs_url(base) == "http://127.0.0.1:4200/v2/runs"
    assert module.flow_run_url(base, "abc") == (
        "http://127.0.0.1:4200/v2/runs/flow-run/abc?tab=Artifacts"
    )
    assert module.flow_run_url(base, "abc", ui="v1").endswith("/runs/flow-run/abc?tab=Artifacts")
    cmd = module.chromium_command("/usr/bin/chromium", "http://x", tmp_path / "a.png", tmp_path)
    for flag in ("--headless", "--no-sandbox", "--virtual-time-budget=15000"):
        assert flag in cmd
    assert cmd[-1] == "http://x"
    assert module.main(["--chromium", str(tmp_path / "no-chromium")]) == 2
    assert "apt-get install -y chromium" in capsys.readouterr().err
