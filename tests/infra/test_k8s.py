"""infra/k8s against the Kubernetes API schemas of a current release, and against the code.

No cluster runs here, so every manifest is rendered (the work-pool job template as a
Prefect worker fills it) and validated with ``kubernetes-validate``'s schemas, strictly
(no unknown fields). The Dask operator's custom resources have no schema there: their
shape is the operator's CRD (``spec.worker`` / ``spec.scheduler``; dask-kubernetes
``customresources/templates.yaml``), and the pod and service specs inside them are checked
as what the operator turns them into, a ``v1`` Pod and Service. Then the manifests must
agree with the code: image tags, the ``GPU`` resource name the flows annotate CNN tasks
with, the worker environment, the settings' variable names, and the ports.
"""

from __future__ import annotations

import ast
import copy
import importlib.metadata
import json
import shlex
from pathlib import Path

import kubernetes_validate
import pytest
import yaml

from flows.runtime.env import GPU_RESOURCE, WORKER_ENV
from tasks.config import Settings

ROOT = Path(__file__).resolve().parents[2]
K8S = ROOT / "infra" / "k8s"
JOB_TEMPLATE = K8S / "prefect-work-pool-job-template.json"
VERSION = kubernetes_validate.latest_version()  # the newest release the package knows
DASK_API = "kubernetes.dask.org/v1"
# prefect-kubernetes' worker refuses a job manifest without these two keys in the *pod*
# spec ("Job is missing required attributes"), where the Kubernetes schema has no such
# fields: the API server drops them with a warning (unknown fields are warned about, not
# rejected, by default). They are the only keys the strict check below lets through.
PREFECT_POD_KEYS = ("parallelism", "completions")


def yaml_documents() -> list[tuple[str, dict]]:
    docs = []
    for path in sorted(K8S.glob("*.y*ml")):
        for doc in yaml.safe_load_all(path.read_text()):
            if doc:
                docs.append((f"{path.name}:{doc['kind']}/{doc['metadata']['name']}", doc))
    return docs


def validate(resource: dict, strict: bool = True) -> None:
    try:
        kubernetes_validate.validate(resource, VERSION, strict=strict)
    except kubernetes_validate.ValidationError as exc:
        pytest.fail(f"{resource['kind']} is not valid Kubernetes {VERSION}: {exc.message}")


def as_pod(spec: dict, name: str) -> dict:
    return {"apiVersion": "v1", "kind": "Pod", "metadata": {"name": name}, "spec": spec}


def template_defaults() -> dict:
    template = json.loads(JOB_TEMPLATE.read_text())
    props = template["variables"]["properties"]
    return {name: prop["default"] for name, prop in props.items() if "default" in prop}


def rendered_job(values: dict) -> dict:
    """The Job a Prefect Kubernetes worker submits: the template filled with ``values``,
    the command string split into ``args`` (as prefect-kubernetes does)."""
    from prefect.utilities.templating import apply_values

    template = json.loads(JOB_TEMPLATE.read_text())
    job = apply_values(template["job_configuration"], values)["job_manifest"]
    container = job["spec"]["template"]["spec"]["containers"][0]
    if isinstance(container.get("args"), str):
        container["args"] = shlex.split(container["args"])
    return job


def dask_docs() -> dict[str, dict]:
    return {doc["kind"]: doc for _, doc in yaml_documents() if doc["apiVersion"] == DASK_API}


def containers() -> dict[str, dict]:
    docs = dask_docs()
    cluster, gpu = docs["DaskCluster"], docs["DaskWorkerGroup"]
    return {
        "scheduler": cluster["spec"]["scheduler"]["spec"]["containers"][0],
        "cpu-worker": cluster["spec"]["worker"]["spec"]["containers"][0],
        "gpu-worker": gpu["spec"]["worker"]["spec"]["containers"][0],
        "flow": rendered_job(template_defaults())["spec"]["template"]["spec"]["containers"][0],
    }


def env_of(container: dict) -> dict[str, dict]:
    return {e["name"]: e for e in container.get("env", [])}


def flag(args: list[str], name: str) -> str:
    return args[args.index(name) + 1]


# -- schemas --------------------------------------------------------------------------------
@pytest.mark.parametrize(("where", "doc"), yaml_documents(), ids=[w for w, _ in yaml_documents()])
def test_every_manifest_is_valid_for_a_current_kubernetes(where, doc):
    if doc["apiVersion"] != DASK_API:
        validate(doc)
        return
    spec = doc["spec"]
    if doc["kind"] == "DaskCluster":
        assert set(spec) <= {"idleTimeout", "scheduler", "worker"}
        assert isinstance(spec.get("idleTimeout", 0), int)
        assert set(spec["scheduler"]) == {"spec", "service"}
        validate(as_pod(spec["scheduler"]["spec"], "scheduler"))
        service = {"apiVersion": "v1", "kind": "Service", "metadata": {"name": "s"}}
        validate({**service, "spec": spec["scheduler"]["service"]})
    elif doc["kind"] == "DaskWorkerGroup":
        assert set(spec) == {"cluster", "worker"} and isinstance(spec["cluster"], str)
    else:
        pytest.fail(f"{where}: no schema for {doc['kind']}")
    assert set(spec["worker"]) <= {"replicas", "spec"}
    assert isinstance(spec["worker"].get("replicas", 1), int)
    validate(as_pod(spec["worker"]["spec"], "worker"))


@pytest.mark.parametrize(
    "values",
    [
        {},  # the defaults alone, as `prefect work-pool create --base-job-template` stores it
        {
            "name": "sln-nightly",
            "command": "prefect flow-run execute",
            "service_account_name": "sln-flows",
            "labels": {"prefect.io/deployment-name": "nightly"},
            "image": "registry.example.org/sln-radiomics-cpu:0.1.0",
        },
    ],
    ids=["defaults", "a-flow-run"],
)
def test_work_pool_template_renders_a_valid_job(values):
    job = rendered_job({**template_defaults(), **values})
    pod = job["spec"]["template"]["spec"]
    assert all(pod[key] == 1 for key in PREFECT_POD_KEYS)  # prefect-kubernetes wants them
    validate(job, strict=False)
    stripped = copy.deepcopy(job)
    for key in PREFECT_POD_KEYS:
        del stripped["spec"]["template"]["spec"][key]
    validate(stripped)  # and nothing else unknown


# -- agreement with the code ----------------------------------------------------------------
def test_images_are_the_projects_release_and_one_cpu_image_runs_flows_and_scheduler():
    version = importlib.metadata.version("sln-radiomics")
    images = {role: c["image"] for role, c in containers().items()}
    for role, image in images.items():
        assert image.endswith(f":{version}"), (role, image)
    assert images["scheduler"] == images["cpu-worker"] == images["flow"]
    assert images["gpu-worker"] == images["cpu-worker"].replace("-cpu:", "-gpu:")


def annotated_resources() -> set[str]:
    """Resource names in every ``dask.annotate(resources={...})`` call under flows/."""
    names = set()
    for path in (ROOT / "flows").rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Call) and getattr(node.func, "attr", None) == "annotate":
                for kw in node.keywords:
                    if kw.arg == "resources" and isinstance(kw.value, ast.Dict):
                        names |= {ast.literal_eval(k) for k in kw.value.keys}
    return names


def test_gpu_workers_offer_the_resource_the_flows_ask_for():
    assert annotated_resources() == {GPU_RESOURCE}
    gpu, cpu = containers()["gpu-worker"], containers()["cpu-worker"]
    assert flag(gpu["args"], "--resources") == f"{GPU_RESOURCE}=1"
    assert "--resources" not in cpu["args"]
    assert gpu["resources"]["limits"]["nvidia.com/gpu"] == 1
    assert "nvidia.com/gpu" not in cpu["resources"]["limits"]


@pytest.mark.parametrize("role", ["cpu-worker", "gpu-worker"])
def test_workers_get_the_worker_environment_of_the_code(role):
    env = env_of(containers()[role])
    for name, value in WORKER_ENV.items():  # one thread, malloc thresholds (runners.py)
        assert env.get(name, {}).get("value") == value, name
    assert env["PREFECT_API_URL"]["value"].endswith("/api")


def test_every_sln_variable_is_a_setting_and_the_flow_reaches_the_scheduler_service():
    fields = {name.upper() for name in Settings.model_fields}
    for role, container in containers().items():
        for name in env_of(container):
            if name.startswith("SLN_"):
                assert name.removeprefix("SLN_") in fields, (role, name)
    alias = Settings.model_fields["dask_scheduler_address"].validation_alias
    flow_env = env_of(containers()["flow"])
    cluster = dask_docs()["DaskCluster"]
    service_ports = {p["name"]: p for p in cluster["spec"]["scheduler"]["service"]["ports"]}
    expected = f"tcp://{cluster['metadata']['name']}-scheduler:{service_ports['tcp-comm']['port']}"
    assert flow_env[alias]["value"] == expected


def test_ports_agree_between_args_container_ports_probes_and_service():
    scheduler = containers()["scheduler"]
    ports = {p["name"]: p["containerPort"] for p in scheduler["ports"]}
    assert int(flag(scheduler["args"], "--port")) == ports["tcp-comm"]
    assert (
        int(flag(scheduler["args"], "--dashboard-address").lstrip(":")) == (ports["http-dashboard"])
    )
    for probe in ("readinessProbe", "livenessProbe"):
        assert scheduler[probe]["httpGet"]["port"] in ports
    service = dask_docs()["DaskCluster"]["spec"]["scheduler"]["service"]
    for port in service["ports"]:
        assert port["targetPort"] in ports and port["port"] == ports[port["targetPort"]]
    for role in ("cpu-worker", "gpu-worker"):
        worker = containers()[role]
        worker_ports = {p["name"]: p["containerPort"] for p in worker["ports"]}
        assert int(flag(worker["args"], "--dashboard-address")) == worker_ports["http-dashboard"]
