"""infra/docker/compose.yaml: TLS between the Dask processes, the Prefect API behind basic
auth, secrets from files, every container hardened, nothing published beyond loopback.
No Docker engine here: the file is read (YAML merge keys resolved) and checked."""

from __future__ import annotations

import re
from pathlib import Path

import yaml

from flows.runtime.tls import CA_FILE

ROOT = Path(__file__).resolve().parents[2]
DOCKER = ROOT / "infra" / "docker"
COMPOSE = DOCKER / "compose.yaml"


def compose() -> dict:
    return yaml.safe_load(COMPOSE.read_text())


def command(service: dict) -> str:
    cmd = service["command"]
    return " ".join(cmd) if isinstance(cmd, list) else cmd


def flag(cmd: str, name: str) -> str:
    return re.search(rf"{name}\s+(\S+)", cmd).group(1)


def test_every_service_is_hardened_and_published_on_loopback_only():
    services = compose()["services"]
    assert {"prefect", "scheduler", "worker", "worker-gpu"} <= set(services)
    for name, svc in services.items():
        assert svc["read_only"] is True, name
        assert svc["cap_drop"] == ["ALL"] and not svc.get("cap_add"), name
        assert "no-new-privileges:true" in svc["security_opt"], name
        assert not svc.get("privileged") and svc.get("network_mode") != "host", name
        assert "/tmp" in svc["tmpfs"], name
        # the operator's uid and gid, required (no default, so never root by accident)
        assert re.fullmatch(r"\$\{SLN_UID:\?[^}]*\}:\$\{SLN_GID:\?[^}]*\}", svc["user"]), name
        for port in svc.get("ports", []):
            assert str(port).startswith("127.0.0.1:"), (name, port)
        for volume in svc.get("volumes", []):
            assert "docker.sock" not in volume, name
    published = {p for svc in services.values() for p in svc.get("ports", [])}
    assert published == {"127.0.0.1:4200:4200", "127.0.0.1:8786:8786", "127.0.0.1:8787:8787"}


def test_dask_processes_use_tls_with_their_own_role_files_from_secrets():
    doc = compose()
    services, secrets = doc["services"], doc["secrets"]

    def files(svc: dict) -> set[str]:
        return {Path(secrets[s]["file"]).name for s in svc["secrets"] if s.startswith("dask_")}

    scheduler = command(services["scheduler"])
    assert flag(scheduler, "--protocol") == "tls"
    assert files(services["scheduler"]) == {CA_FILE, "scheduler.pem", "scheduler-key.pem"}
    for name in ("worker", "worker-gpu"):
        cmd = command(services[name])
        assert re.search(r"dask worker tls://sln-dask-scheduler:8786\b", cmd), name
        assert files(services[name]) == {CA_FILE, "worker.pem", "worker-key.pem"}
        for option in ("--tls-ca-file", "--tls-cert", "--tls-key"):
            path = flag(cmd, option)
            assert (
                path.startswith("/run/secrets/")
                and path.split("/")[-1] in services[name]["secrets"]
            ), (name, option)
    assert services["scheduler"]["hostname"] == "sln-dask-scheduler"
    for secret in secrets.values():
        assert "${" in secret["file"]  # a path the operator can move, not a file in the repo


def test_prefect_api_auth_string_comes_from_a_secret_file_on_both_sides():
    services = compose()["services"]
    server = command(services["prefect"])
    assert 'PREFECT_SERVER_API_AUTH_STRING="$$(cat /run/secrets/prefect_auth)"' in server
    assert "exec prefect server start --host 0.0.0.0" in server
    for name in ("worker", "worker-gpu"):
        assert 'PREFECT_API_AUTH_STRING="$$(cat /run/secrets/prefect_auth)"' in command(
            services[name]
        )
        assert services[name]["environment"]["PREFECT_API_URL"] == "http://prefect:4200/api"
    text = COMPOSE.read_text()
    for svc in services.values():  # no auth string, password or key in the environment
        for var in svc.get("environment") or {}:
            assert not re.search("AUTH|SECRET|PASSWORD|TOKEN|KEY", var), var
    assert not re.search(r"AUTH_STRING\s*[:=]\s*['\"]?\w+:\w", text)


def test_readme_run_lines_publish_on_loopback_and_harden():
    text = (DOCKER / "README.md").read_text()
    published = re.findall(r"-p\s+(\S*\d+:\d+)", text)  # port mappings
    assert published and all(p.startswith("127.0.0.1:") for p in published), published
    for line in re.findall(r"^docker run .*$", text, re.MULTILINE):
        if " -d " in line or "--rm" in line:
            assert "$HARDEN" in line or "$COMMON" in line, line
    assert "--security-opt no-new-privileges" in text and "--cap-drop ALL" in text
    assert "--read-only" in text
