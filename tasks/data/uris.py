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

CHUNK = 1 << 20


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
    """Content hash of a file: the identity of an image or mask in every table."""
    digest = hashlib.sha256()
    with open_file(uri) as fh:
        while block := fh.read(CHUNK):
            digest.update(block)
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
