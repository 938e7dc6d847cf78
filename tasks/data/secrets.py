"""The pseudonymisation key: the secret that turns a ``patient_id`` into a ``patient_key``.

Read only here, only in the process that ingests, and never passed on: it is not a
:class:`~tasks.config.Settings` field (settings travel as Prefect flow parameters, which
the API stores and the UI shows), never a task argument, never logged. Where it comes from,
first match wins:

1. ``SLN_PSEUDONYM_KEY`` in the environment (production: a secret manager or the
   deployment's secret env injects it). At least 32 characters.
2. ``<store>/.secrets/pseudonym.key`` when that file exists: made by ``sln demo`` (and the
   test fixtures) with :func:`create_local_key`, mode 0600, for synthetic data only.
3. Neither: :class:`MissingKeyError`, so a run on real data refuses to start rather than
   keying patients with something guessable.

Losing the key re-keys every patient (their split memory is lost): keep it with the
store's backups, never in it for real data.
"""

from __future__ import annotations

import os
import secrets
from pathlib import Path

from tasks.data import uris

ENV = "SLN_PSEUDONYM_KEY"
KEY_FILE = (".secrets", "pseudonym.key")
MIN_LENGTH = 32


class MissingKeyError(RuntimeError):
    """No pseudonymisation key: the run must not start."""


def key_file(store: str) -> str:
    """Where the demo's local key lives under a store root."""
    out = store if uris.is_uri(store) else str(Path(store).expanduser().resolve())
    for part in KEY_FILE:
        out = uris.join(out, part)
    return out


def pseudonym_key(store: str) -> bytes:
    """The key: ``SLN_PSEUDONYM_KEY``, else the store's local key file, else an error."""
    value = os.environ.get(ENV, "").strip()
    if value:
        if len(value) < MIN_LENGTH:
            raise MissingKeyError(f"{ENV} is too short (at least {MIN_LENGTH} characters)")
        return value.encode()
    path = key_file(store)
    try:
        if uris.exists(path):
            with uris.open_file(path) as fh:
                data = fh.read().strip()
            if len(data) >= MIN_LENGTH:
                return data
            raise MissingKeyError(f"the pseudonymisation key file of store {store} is too short")
    except FileNotFoundError:
        pass
    raise MissingKeyError(
        f"no pseudonymisation key: set {ENV} (a secret of at least {MIN_LENGTH} characters) "
        f"or, for synthetic data only, run `sln demo` which makes one under store {store}"
    )


def create_local_key(store: str) -> str:
    """Make the store's local key file once (mode 0600); an existing key is kept.

    For the demo and tests on synthetic data: a key kept beside the data it protects is no
    secret from whoever can read the store.
    """
    path = key_file(store)
    value = secrets.token_hex(32).encode()
    if uris.is_uri(path) and not path.startswith("file://"):
        if not uris.exists(path):
            uris.write_bytes(path, value)
        return path
    local = Path(path.removeprefix("file://"))
    local.parent.mkdir(parents=True, exist_ok=True)
    os.chmod(local.parent, 0o700)
    try:
        fd = os.open(local, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except FileExistsError:
        return path
    with os.fdopen(fd, "wb") as handle:
        handle.write(value)
    return path
