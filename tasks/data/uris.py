"""Where files live: local paths and object-store URIs behind one small interface.

Manifest paths may be relative (to the manifest's folder), absolute, or URIs such as
``s3://bucket/key``. Every path is resolved to one canonical string and must sit under one
of the configured data roots, so a manifest cannot make the system read ``/etc/passwd`` or
another bucket. Object access goes through fsspec (s3fs for ``s3://``); clients are made
where they are used, never pickled.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import posixpath
import tempfile
from pathlib import Path

import fsspec
import fsspec.config

CHUNK = 1 << 20

# Retries of transient object-store errors (503 SlowDown, resets, timeouts), set here for
# both clients: s3fs (every fsspec S3 filesystem, through fsspec's config) and delta-rs's
# object_store (``store.s3_storage_options``). A request is given up after about two
# minutes; a "not found" or "access denied" is an answer and never retried.
S3_RETRIES = 10
S3_RETRY_TIMEOUT_S = 120


def s3fs_options() -> dict:
    """s3fs settings: botocore's retries (standard mode: 503, throttling, connection
    errors); s3fs's own loop around them is set by :func:`configure_s3fs`."""
    return {
        "config_kwargs": {
            "retries": {"max_attempts": 5, "mode": "standard"},
            "connect_timeout": 10,
            "read_timeout": 60,
        },
    }


def delta_retry_options() -> dict[str, str]:
    """delta-rs (object_store) storage options with the same retry budget."""
    return {
        "max_retries": str(S3_RETRIES),
        "retry_timeout": f"{S3_RETRY_TIMEOUT_S}s",
        "backoff_config.init_backoff": "100ms",
        "backoff_config.max_backoff": "15s",
    }


def configure_s3fs() -> None:
    """Defaults for every S3 filesystem made in this process: fsspec's config for the
    arguments, and :class:`tasks.data.s3.S3FileSystem` (s3fs with our ``retries``, a class
    attribute there) registered by name, so s3fs is imported only when it is used."""
    for protocol in ("s3", "s3a"):
        fsspec.config.conf.setdefault(protocol, {}).update(s3fs_options())
        fsspec.register_implementation(
            protocol,
            "tasks.data.s3.S3FileSystem",
            clobber=True,
            errtxt="Install s3fs to access S3",
        )


configure_s3fs()


def is_uri(path: str) -> bool:
    return "://" in path


def join(base: str, name: str) -> str:
    """``base/name`` for a folder path or URI."""
    if is_uri(base):
        return base.rstrip("/") + "/" + name
    return str(Path(base) / name)


def parent(uri: str) -> str:
    if is_uri(uri):
        scheme, rest = uri.split("://", 1)
        return f"{scheme}://{posixpath.dirname(rest)}"
    return str(Path(uri).resolve().parent)


def resolve(path: str, base: str) -> str:
    """Resolve a manifest path against the manifest's folder, normalising ``..``."""
    if path.startswith("file://"):  # a local file all the same: links resolved too
        return "file://" + os.path.realpath(path.removeprefix("file://"))
    if is_uri(path):
        scheme, rest = path.split("://", 1)
        return f"{scheme}://{posixpath.normpath(rest)}"
    if base.startswith("file://"):
        return "file://" + os.path.realpath(os.path.join(base.removeprefix("file://"), path))
    if is_uri(base):
        scheme, rest = base.split("://", 1)
        return f"{scheme}://{posixpath.normpath(posixpath.join(rest, path))}"
    # realpath: a symlink inside a root must not lead outside it.
    return os.path.realpath(os.path.join(base, os.path.expanduser(path)))


def normalise_root(root: str) -> str:
    return resolve(root, os.getcwd()) if not is_uri(root) else resolve(root, "")


def within(uri: str, roots: list[str]) -> bool:
    """True when ``uri`` lies under one of ``roots`` (already normalised)."""
    for root in roots:
        prefix = root.rstrip("/")
        if uri == prefix or uri.startswith(prefix + "/"):
            return True
    return False


def open_file(uri: str, mode: str = "rb"):
    return fsspec.open(uri, mode).open()


class StorageError(OSError):
    """The storage failed (unreachable, timed out, refused), not the file: retry, never
    quarantine as bad input."""


def exists(uri: str) -> bool:
    """True for a file, False when nothing (or a folder) is there; :class:`StorageError`
    when the storage cannot say (fsspec's ``isfile`` would answer False to any error, so a
    network hiccup would read as "file not found")."""
    try:
        fs, path = fsspec.core.url_to_fs(uri)
        info = fs.info(path)
    except (FileNotFoundError, NotADirectoryError):
        return False
    except Exception as exc:
        raise StorageError(f"storage error checking {uri}: {type(exc).__name__}: {exc}") from exc
    return info.get("type") == "file"


def sha256(uri: str) -> str:
    """Content hash of a file: the identity of an image or mask in every table.

    ``FileNotFoundError`` when the file is gone (it may vanish between a check and the
    hash: the caller quarantines that case, the rest of the run goes on); any other failure
    of an object store that is not an ``OSError`` becomes a :class:`StorageError`.
    """
    digest = hashlib.sha256()
    try:
        with open_file(uri) as fh:
            while block := fh.read(CHUNK):
                digest.update(block)
    except OSError:
        raise
    except Exception as exc:  # botocore and friends: the storage failed, not the file
        raise StorageError(f"storage error hashing {uri}: {type(exc).__name__}: {exc}") from exc
    return digest.hexdigest()


def write_bytes(uri: str, data: bytes) -> str:
    """Write a whole object; concurrent readers never see a half-written file.

    An object-store PUT is atomic already; a local file is written beside its target and
    renamed over it.
    """
    fs, path = fsspec.core.url_to_fs(uri)
    fs.makedirs(fs._parent(path), exist_ok=True)
    if is_uri(uri) and not uri.startswith("file://"):
        fs.pipe_file(path, data)
        return uri
    fd, tmp = tempfile.mkstemp(dir=os.path.dirname(path), suffix=".part")
    try:
        with os.fdopen(fd, "wb") as handle:
            handle.write(data)
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise
    return uri
