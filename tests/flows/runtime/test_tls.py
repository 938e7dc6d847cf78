"""TLS for Dask comms with the project's certificates (flows/runtime/tls.py, ``sln certs``)."""

from __future__ import annotations

import asyncio
import stat

import pytest
from cryptography import x509
from distributed import Client, Scheduler, Worker

from flows.runtime.cluster import start_cluster, stop_cluster
from flows.runtime.runners import check_gpu_workers, task_runner
from flows.runtime.tls import ROLES, certs_valid, ensure_certs, make_certs, security
from tasks.config import Settings


def test_certs_are_signed_by_the_ca_and_keys_are_private(tmp_path):
    folder = make_certs(tmp_path / "tls", hosts=["node7", "10.1.2.3"])
    assert stat.S_IMODE(folder.stat().st_mode) == 0o700
    ca = x509.load_pem_x509_certificate((folder / "ca.pem").read_bytes())
    assert ca.extensions.get_extension_for_class(x509.BasicConstraints).value.ca
    for role in ROLES:
        cert = x509.load_pem_x509_certificate((folder / f"{role}.pem").read_bytes())
        cert.verify_directly_issued_by(ca)
        names = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
        assert "node7" in names.get_values_for_type(x509.DNSName)
        assert stat.S_IMODE((folder / f"{role}-key.pem").stat().st_mode) == 0o600
    assert not list(folder.glob("ca-key*"))  # the CA key is never written
    assert certs_valid(folder)
    before = (folder / "ca.pem").read_bytes()
    assert ensure_certs(folder) == folder and (folder / "ca.pem").read_bytes() == before


async def _roundtrip(ours, other_ca) -> tuple[int, str, str]:
    async with Scheduler(
        host="127.0.0.1", port=0, protocol="tls", security=ours, dashboard_address=None
    ) as scheduler:
        async with Worker(scheduler.address, security=ours, nthreads=1):
            async with Client(scheduler.address, security=ours, asynchronous=True) as client:
                result = await client.submit(sum, [1, 2], pure=False)
        refused = []
        for address, sec in [
            (scheduler.address.replace("tls://", "tcp://"), None),  # no TLS at all
            (scheduler.address, other_ca),  # TLS, but a certificate from another CA
        ]:
            try:
                async with Client(address, security=sec, asynchronous=True, timeout="3s"):
                    refused.append("connected")
            except (OSError, TimeoutError) as exc:
                refused.append(type(exc).__name__)
        return result, *refused


def test_tls_cluster_admits_only_peers_with_a_certificate_from_its_ca(tmp_path):
    ours = security(make_certs(tmp_path / "ours"))
    theirs = security(make_certs(tmp_path / "theirs"))
    result, plain, foreign = asyncio.run(_roundtrip(ours, theirs))
    assert result == 3
    assert plain != "connected" and foreign != "connected"


@pytest.mark.slow
def test_make_cluster_tls(tmp_path, free_tcp_port):
    """``make cluster TLS=1``: scheduler and workers as processes, over TLS."""
    folder = make_certs(tmp_path / "tls")
    state = tmp_path / "dask"
    address = start_cluster(cpu_workers=1, port=free_tcp_port(), state=state, tls_dir=folder)
    try:
        assert address.startswith("tls://127.0.0.1:")
        assert check_gpu_workers(address, security=security(folder)) == ["gpu-0"]
        runner = task_runner(
            Settings(cluster="address", dask_scheduler_address=address, tls_dir=folder)
        )
        assert runner.address == address
        assert runner.client_kwargs["security"].require_encryption
        with pytest.raises(OSError):
            check_gpu_workers(address.replace("tls://", "tcp://"), timeout=3)
    finally:
        stop_cluster(state)
