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
    expected = f"tls://{cluster['metadata']['name']}-scheduler:{service_ports['tcp-comm']['port']}"
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


# -- security: TLS, Prefect auth, pod hardening, network policy ------------------------------
TLS_SECRET = "sln-dask-tls"
AUTH_SECRET = {"name": "sln-prefect-auth", "key": "auth-string"}
TLS_MOUNT = "/etc/sln/tls"


def pod_specs() -> dict[str, dict]:
    """Every pod spec the manifests make, by role: the Dask operator's (scheduler and
    worker groups), the Deployments' templates, and the flow-run Job the template renders."""
    specs = {}
    docs = dask_docs()
    specs["scheduler"] = docs["DaskCluster"]["spec"]["scheduler"]["spec"]
    specs["cpu-worker"] = docs["DaskCluster"]["spec"]["worker"]["spec"]
    specs["gpu-worker"] = docs["DaskWorkerGroup"]["spec"]["worker"]["spec"]
    for where, doc in yaml_documents():
        if doc["kind"] in {"Deployment", "StatefulSet", "DaemonSet", "Job"}:
            specs[doc["metadata"]["name"]] = doc["spec"]["template"]["spec"]
        else:
            assert doc["kind"] not in {"Pod", "CronJob", "ReplicaSet"}, f"{where}: add it here"
    specs["flow"] = rendered_job(template_defaults())["spec"]["template"]["spec"]
    return specs


def test_every_pod_is_hardened():
    specs = pod_specs()
    assert {"scheduler", "cpu-worker", "gpu-worker", "flow", "prefect-server"} <= set(specs)
    assert "sln-prefect-worker" in specs
    for role, pod in specs.items():
        ctx = pod["securityContext"]
        assert ctx["runAsNonRoot"] is True and ctx["runAsUser"] != 0, role
        assert ctx["seccompProfile"] == {"type": "RuntimeDefault"}, role
        assert pod["automountServiceAccountToken"] is False, role
        assert not pod.get("hostNetwork") and not pod.get("hostPID") and not pod.get("hostIPC")
        writable = {v["name"] for v in pod.get("volumes", []) if "emptyDir" in v}
        writable |= {v["name"] for v in pod.get("volumes", []) if "persistentVolumeClaim" in v}
        for container in pod["containers"] + pod.get("initContainers", []):
            sc = container["securityContext"]
            assert sc["allowPrivilegeEscalation"] is False, role
            assert sc["capabilities"]["drop"] == ["ALL"] and not sc["capabilities"].get("add")
            assert sc["readOnlyRootFilesystem"] is True, role
            assert not sc.get("privileged"), role
            mounts = {m["mountPath"]: m["name"] for m in container.get("volumeMounts", [])}
            assert mounts.get("/tmp") in writable, f"{role}: no writable /tmp"
            assert not any(v.get("hostPath") for v in pod.get("volumes", [])), role


def test_only_the_prefect_worker_holds_an_api_token_and_only_for_its_namespace():
    specs = pod_specs()
    tokens = {
        role
        for role, pod in specs.items()
        for volume in pod.get("volumes", [])
        for source in volume.get("projected", {}).get("sources", [])
        if "serviceAccountToken" in source
    }
    assert tokens == {"sln-prefect-worker"}
    by_kind = {doc["kind"]: doc for where, doc in yaml_documents() if "prefect-worker" in where}
    assert "ClusterRole" not in by_kind and "ClusterRoleBinding" not in by_kind
    role = by_kind["Role"]
    verbs = {
        (g, r): set(rule["verbs"])
        for rule in role["rules"]
        for g in rule["apiGroups"]
        for r in rule["resources"]
    }
    assert verbs[("batch", "jobs")] <= {"create", "get", "list", "watch", "delete"}
    assert all("*" not in v and "escalate" not in v and "bind" not in v for v in verbs.values())
    assert ("", "secrets") not in verbs  # Secrets reach pods by reference, never by the worker


def test_dask_comms_are_tls_with_the_projects_certificates_one_role_per_pod():
    from flows.runtime.tls import CA_FILE, cert_file, key_file

    def secret_files(pod: dict) -> set[str]:
        (volume,) = [
            v for v in pod["volumes"] if v.get("secret", {}).get("secretName") == TLS_SECRET
        ]
        assert volume["secret"]["defaultMode"] & 0o007 == 0  # not world-readable
        return {item["path"] for item in volume["secret"]["items"]}

    def role_files(role: str) -> set[str]:
        tls = Path(TLS_MOUNT)
        return {CA_FILE, cert_file(tls, role).name, key_file(tls, role).name}

    specs, boxes = pod_specs(), containers()
    scheduler = boxes["scheduler"]["args"]
    assert flag(scheduler, "--protocol") == "tls"
    assert flag(scheduler, "--tls-key") == f"{TLS_MOUNT}/scheduler-key.pem"
    assert secret_files(specs["scheduler"]) == role_files("scheduler")
    for role in ("cpu-worker", "gpu-worker"):
        args = boxes[role]["args"]
        assert args[2].startswith("tls://"), role  # not the operator's injected tcp:// one
        assert flag(args, "--tls-ca-file") == f"{TLS_MOUNT}/{CA_FILE}"
        assert flag(args, "--tls-cert") == f"{TLS_MOUNT}/worker.pem"
        assert flag(args, "--tls-key") == f"{TLS_MOUNT}/worker-key.pem"
        assert secret_files(specs[role]) == role_files("worker")
    flow = env_of(boxes["flow"])
    assert flow["DASK_SCHEDULER_ADDRESS"]["value"].startswith("tls://")
    assert flow["SLN_TLS_DIR"]["value"] == TLS_MOUNT
    assert secret_files(specs["flow"]) == role_files("client")
    for pod in specs.values():  # the mount is where the args and SLN_TLS_DIR point
        for container in pod["containers"]:
            mounts = {m["name"]: m for m in container.get("volumeMounts", [])}
            if "tls" in mounts:
                assert mounts["tls"]["mountPath"] == TLS_MOUNT and mounts["tls"]["readOnly"]


def all_containers() -> dict[str, dict]:
    return {
        f"{role}/{c['name']}": c for role, pod in pod_specs().items() for c in pod["containers"]
    }


def test_prefect_api_needs_the_auth_string_and_it_comes_only_from_a_secret():
    from prefect.settings import Settings as PrefectSettings

    boxes = all_containers()
    server = env_of(boxes["prefect-server/prefect-server"])
    assert server["PREFECT_SERVER_API_AUTH_STRING"]["valueFrom"]["secretKeyRef"] == AUTH_SECRET
    clients = [name for name, c in boxes.items() if "PREFECT_API_URL" in env_of(c)]
    assert len(clients) >= 3  # workers, the Prefect worker (flows get the URL from it)
    for name, container in boxes.items():
        env = env_of(container)
        if "PREFECT_API_URL" in env or name.startswith("flow/"):
            ref = env["PREFECT_API_AUTH_STRING"]["valueFrom"]["secretKeyRef"]
            assert ref == AUTH_SECRET, name  # the flow's: the template default, rendered
        for var, entry in env.items():
            if any(word in var for word in ("AUTH", "SECRET", "PASSWORD", "TOKEN", "API_KEY")):
                assert "value" not in entry, f"{name}: {var} is a literal"
    # the names are the installed Prefect's settings, server side and client side
    names = {"PREFECT_SERVER_API_AUTH_STRING": "u:server", "PREFECT_API_AUTH_STRING": "u:client"}
    with pytest.MonkeyPatch.context() as mp:
        for var, value in names.items():
            mp.setenv(var, value)
        settings = PrefectSettings()
    assert settings.server.api.auth_string.get_secret_value() == "u:server"
    assert settings.api.auth_string.get_secret_value() == "u:client"


def test_the_prefect_worker_does_not_copy_its_auth_string_into_flow_run_jobs():
    """A Prefect worker passes its own settings to every Job as literal env values
    (``BaseJobConfiguration.prepare_for_flow_run``); the template's ``env`` default sets
    ``PREFECT_API_AUTH_STRING`` to null, which drops it, so the pod reads the Secret."""
    import asyncio
    import uuid

    from prefect.client.schemas.objects import FlowRun
    from prefect.settings import PREFECT_API_AUTH_STRING, PREFECT_API_URL, temporary_settings
    from prefect.workers.base import BaseJobConfiguration

    template = json.loads(JOB_TEMPLATE.read_text())
    base = {
        "job_configuration": {
            k: template["job_configuration"][k] for k in ("command", "env", "labels", "name")
        },
        "variables": template["variables"],
    }
    with temporary_settings(
        {PREFECT_API_AUTH_STRING: "sln:leaked", PREFECT_API_URL: "http://p/api"}
    ):
        config = asyncio.run(BaseJobConfiguration.from_template_and_values(base, {}))
        config.prepare_for_flow_run(FlowRun(flow_id=uuid.uuid4(), name="r"))
        assert config.env.get("PREFECT_API_URL") == "http://p/api"  # the worker's settings
        assert "PREFECT_API_AUTH_STRING" not in config.env
        assert "sln:leaked" not in json.dumps(config.env)


def policies() -> list[dict]:
    return [doc for _, doc in yaml_documents() if doc["kind"] == "NetworkPolicy"]


# What the Dask operator labels its pods with (dask-kubernetes, operator/controller); the
# scheduler Service selects by the same labels. The others are in the manifests.
OPERATOR_LABELS = {
    "scheduler": {"dask.org/cluster-name": "sln-dask", "dask.org/component": "scheduler"},
    "cpu-worker": {
        "dask.org/cluster-name": "sln-dask",
        "dask.org/component": "worker",
        "dask.org/workergroup-name": "sln-dask-default",
    },
    "gpu-worker": {
        "dask.org/cluster-name": "sln-dask",
        "dask.org/component": "worker",
        "dask.org/workergroup-name": "sln-dask-gpu",
    },
}
NAMESPACE = "sln"


def pod_labels() -> dict[str, dict]:
    labels = dict(OPERATOR_LABELS)
    service = dask_docs()["DaskCluster"]["spec"]["scheduler"]["service"]["selector"]
    assert service.items() <= labels["scheduler"].items()
    for _, doc in yaml_documents():
        if doc["kind"] == "Deployment":
            labels[doc["metadata"]["name"]] = doc["spec"]["template"]["metadata"]["labels"]
    job = rendered_job(template_defaults())
    labels["flow"] = job["spec"]["template"]["metadata"]["labels"]
    labels["intruder"] = {"app": "anything-else-in-the-namespace"}
    return labels


def matches(selector: dict, labels: dict) -> bool:
    assert set(selector) <= {"matchLabels"}  # no matchExpressions in these files
    return selector.get("matchLabels", {}).items() <= labels.items()


def peer_allowed(peers: list[dict], labels: dict | None, namespace: str | None) -> bool:
    """Does one of ``peers`` (a rule's from/to) admit this pod (``labels`` in
    ``namespace``) or, with ``labels`` None, an address outside the cluster?"""
    for peer in peers:
        if "ipBlock" in peer:
            if labels is None:
                return True
            continue
        if labels is None:
            continue
        if "namespaceSelector" in peer:
            ns_ok = matches(peer["namespaceSelector"], {"kubernetes.io/metadata.name": namespace})
        else:
            ns_ok = namespace == NAMESPACE
        if ns_ok and matches(peer.get("podSelector", {}), labels):
            return True
    return False


def port_allowed(rule: dict, port: int) -> bool:
    return "ports" not in rule or any(p["port"] == port for p in rule["ports"])


def allowed(src: str | None, dst: str | None, port: int, labels: dict) -> bool:
    """Kubernetes NetworkPolicy semantics for TCP ``src`` -> ``dst``:``port`` (None: outside
    the cluster): allowed when the source's egress and the destination's ingress allow it
    (a pod no policy of that direction selects allows everything in it)."""

    def direction(pod: str | None, kind: str, other: str | None) -> bool:
        if pod is None:
            return True  # the outside world is not ours to police
        selecting = [
            p
            for p in policies()
            if kind.capitalize() in p["spec"]["policyTypes"]
            and matches(p["spec"]["podSelector"], labels[pod])
        ]
        if not selecting:
            return True
        key = "egress" if kind == "egress" else "ingress"
        peer_key = "to" if kind == "egress" else "from"
        other_labels = labels[other] if other is not None else None
        return any(
            port_allowed(rule, port)
            and (
                "to" not in rule
                and "from" not in rule
                or peer_allowed(rule[peer_key], other_labels, NAMESPACE)
            )
            for policy in selecting
            for rule in policy["spec"].get(key, [])
        )

    return direction(src, "egress", dst) and direction(dst, "ingress", src)


def test_network_policy_denies_by_default_and_opens_only_the_needed_paths():
    labels = pod_labels()
    default = [
        p
        for p in policies()
        if p["spec"]["podSelector"] == {}
        and set(p["spec"]["policyTypes"]) == {"Ingress", "Egress"}
        and not p["spec"].get("ingress")
        and not p["spec"].get("egress")
    ]
    assert default, "no default-deny NetworkPolicy"
    workers = {"cpu-worker", "gpu-worker"}
    prefect_clients = workers | {"flow", "sln-prefect-worker"}
    pods = set(labels)
    expected = {
        ("scheduler", 8786): workers | {"flow"},
        ("cpu-worker", 8789): {"scheduler", "flow"} | workers,
        ("gpu-worker", 8790): {"scheduler", "flow"} | workers,
        ("prefect-server", 4200): prefect_clients,
    }
    for (dst, port), sources in expected.items():
        got = {src for src in pods if src != dst and allowed(src, dst, port, labels)}
        assert got == sources - {dst}, (dst, port)
        assert not allowed(None, dst, port, labels), f"{dst}:{port} open to the outside"
    # nothing reaches a flow run, the Prefect worker, or a worker's dashboard
    for dst, port in [("flow", 8786), ("sln-prefect-worker", 4200), ("cpu-worker", 8788)]:
        assert not any(allowed(src, dst, port, labels) for src in pods | {None}), (dst, port)
    # object storage (443) from workers and flows only; every pod has DNS
    assert {src for src in pods if allowed(src, None, 443, labels)} == (
        workers | {"flow", "sln-prefect-worker"}  # the worker: the Kubernetes API
    )
    dns = [p for p in policies() if p["spec"]["podSelector"] == {} and p["spec"].get("egress")]
    assert dns and all(
        r["port"] == 53 for p in dns for e in p["spec"]["egress"] for r in e["ports"]
    )
    # the scheduler dashboard (the operator retires workers through it) only from its namespace
    operator = [p for p in policies() if matches(p["spec"]["podSelector"], labels["scheduler"])]
    sources = [
        peer
        for p in operator
        for rule in p["spec"].get("ingress", [])
        if port_allowed(rule, 8787)
        for peer in rule["from"]
    ]
    assert sources == [
        {"namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": "dask-operator"}}}
    ]


def test_object_storage_egress_excludes_the_metadata_service_and_private_ranges():
    for policy in policies():
        for rule in policy["spec"].get("egress", []):
            for peer in rule.get("to", []):
                if "ipBlock" in peer and policy["metadata"]["name"] != "sln-prefect-worker":
                    assert "169.254.0.0/16" in peer["ipBlock"].get("except", []), policy
                    if any(p["port"] == 443 for p in rule["ports"]):
                        assert "10.0.0.0/8" in peer["ipBlock"]["except"], policy
