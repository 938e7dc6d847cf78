"""TLS for Dask comms: a private CA and one certificate per role, made by the project.

``sln certs --out DIR`` (or :func:`make_certs`) writes::

    ca.pem                          the CA certificate every peer checks the others against
    scheduler.pem  scheduler-key.pem
    worker.pem     worker-key.pem
    client.pem     client-key.pem   (the flow process)

The CA's private key is never written: it signs the three certificates and is dropped,
so nobody can mint another certificate for this cluster; run the command again (a new CA)
to rotate them all. Keys are mode 0600 in a 0700 folder; on a multi-node cluster the
folder lives on the filesystem the jobs share, readable by the submitting user only.

Dask checks every peer's certificate against ``ca.pem`` (``CERT_REQUIRED``, no hostname
check, as ``distributed.security`` sets it), so a process without a certificate from this
CA cannot join the cluster or talk to the scheduler; :func:`security` says
``require_encryption=True``, so a ``tcp://`` address is refused.
"""

from __future__ import annotations

import datetime as dt
import ipaddress
import os
import socket
from pathlib import Path

ROLES = ("scheduler", "worker", "client")
CA_FILE = "ca.pem"


def cert_file(tls_dir: Path, role: str) -> Path:
    return Path(tls_dir) / f"{role}.pem"


def key_file(tls_dir: Path, role: str) -> Path:
    return Path(tls_dir) / f"{role}-key.pem"


def _names(hosts: list[str]):
    from cryptography import x509

    names: list = []
    seen: set[str] = set()
    for host in ["localhost", "127.0.0.1", socket.gethostname(), socket.getfqdn(), *hosts]:
        if not host or host in seen:
            continue
        seen.add(host)
        try:
            names.append(x509.IPAddress(ipaddress.ip_address(host)))
        except ValueError:
            names.append(x509.DNSName(host))
    return names


def _write(path: Path, data: bytes, mode: int) -> None:
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, mode)
    with os.fdopen(fd, "wb") as handle:
        handle.write(data)
    os.chmod(path, mode)  # an existing file keeps its old mode through os.open


def make_certs(out: Path, hosts: list[str] | None = None, days: int = 365) -> Path:
    """Write a fresh CA certificate and scheduler/worker/client certificates into ``out``.

    ``hosts`` are extra DNS names or IP addresses for the certificates' subjectAltName
    (informational: Dask verifies the chain, not the hostname)."""
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    os.chmod(out, 0o700)
    now = dt.datetime.now(dt.UTC)
    start, end = now - dt.timedelta(minutes=5), now + dt.timedelta(days=days)

    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca_name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "sln-radiomics dask CA")])
    ca_cert = (
        x509.CertificateBuilder()
        .subject_name(ca_name)
        .issuer_name(ca_name)
        .public_key(ca_key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(start)
        .not_valid_after(end)
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=False,
                content_commitment=False,
                key_encipherment=False,
                data_encipherment=False,
                key_agreement=False,
                key_cert_sign=True,
                crl_sign=True,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(ca_key.public_key()), False)
        .sign(ca_key, hashes.SHA256())
    )
    _write(out / CA_FILE, ca_cert.public_bytes(serialization.Encoding.PEM), 0o644)

    alt_names = x509.SubjectAlternativeName(_names(hosts or []))
    for role in ROLES:
        key = ec.generate_private_key(ec.SECP256R1())
        subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, f"sln-dask-{role}")])
        cert = (
            x509.CertificateBuilder()
            .subject_name(subject)
            .issuer_name(ca_name)
            .public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(start)
            .not_valid_after(end)
            .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
            .add_extension(alt_names, critical=False)
            # Every Dask peer both accepts and opens connections.
            .add_extension(
                x509.ExtendedKeyUsage(
                    [ExtendedKeyUsageOID.SERVER_AUTH, ExtendedKeyUsageOID.CLIENT_AUTH]
                ),
                critical=False,
            )
            .add_extension(
                x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_key.public_key()), False
            )
            .sign(ca_key, hashes.SHA256())
        )
        _write(cert_file(out, role), cert.public_bytes(serialization.Encoding.PEM), 0o644)
        pem = key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
        _write(key_file(out, role), pem, 0o600)
    return out


def certs_valid(tls_dir: Path, margin: dt.timedelta = dt.timedelta(days=1)) -> bool:
    """All files present and every certificate valid for at least ``margin`` more."""
    from cryptography import x509

    tls_dir = Path(tls_dir)
    files = [tls_dir / CA_FILE]
    for role in ROLES:
        files += [cert_file(tls_dir, role), key_file(tls_dir, role)]
    if not all(path.is_file() for path in files):
        return False
    deadline = dt.datetime.now(dt.UTC) + margin
    for path in (f for f in files if not f.name.endswith("-key.pem")):
        cert = x509.load_pem_x509_certificate(path.read_bytes())
        if cert.not_valid_after_utc < deadline:
            return False
    return True


def ensure_certs(tls_dir: Path) -> Path:
    """``tls_dir`` with valid certificates, made there first when missing or expiring."""
    if not certs_valid(tls_dir):
        make_certs(tls_dir)
    return Path(tls_dir)


def security(tls_dir: Path):
    """A ``distributed.Security`` for every role, from the files in ``tls_dir``."""
    from distributed.security import Security

    tls_dir = Path(tls_dir).resolve()
    return Security(
        require_encryption=True,
        tls_ca_file=str(tls_dir / CA_FILE),
        tls_scheduler_cert=str(cert_file(tls_dir, "scheduler")),
        tls_scheduler_key=str(key_file(tls_dir, "scheduler")),
        tls_worker_cert=str(cert_file(tls_dir, "worker")),
        tls_worker_key=str(key_file(tls_dir, "worker")),
        tls_client_cert=str(cert_file(tls_dir, "client")),
        tls_client_key=str(key_file(tls_dir, "client")),
    )


def cli_args(tls_dir: Path, role: str) -> list[str]:
    """``dask scheduler`` / ``dask worker`` flags for ``role`` (``make cluster TLS=1``)."""
    tls_dir = Path(tls_dir).resolve()
    return [
        "--tls-ca-file",
        str(tls_dir / CA_FILE),
        "--tls-cert",
        str(cert_file(tls_dir, role)),
        "--tls-key",
        str(key_file(tls_dir, role)),
    ]
