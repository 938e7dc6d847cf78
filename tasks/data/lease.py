"""A store-level lease: one writer at a time per table, across processes and hosts.

A lease is an object ``<store>/_locks/<name>.lock`` holding who took it and until when.
Taking it is a conditional create: ``O_CREAT | O_EXCL`` on a local folder (NFS v3+ honours
it too), ``PUT`` with ``If-None-Match: *`` on S3 (AWS, MinIO and moto honour it). Whoever
finds it taken waits and tries again. A holder that died leaves an expired lease (or, on
the same host, a lease whose process is gone); the next writer breaks it: on S3 by an
overwrite conditional on the dead lease's ETag (only one breaker wins), locally by
renaming it aside and checking that the renamed lease is the dead one. Leases are held
only around a key read and its commit (seconds), so the expiry is generous.
"""

from __future__ import annotations

import contextlib
import json
import os
import random
import socket
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass

import fsspec

from tasks.data import uris

TTL_SECONDS = 600.0
WAIT_SECONDS = 1800.0


class LeaseTimeout(TimeoutError):
    """The lease stayed with another live writer for longer than the wait allowed."""


@dataclass(frozen=True)
class Holder:
    token: str
    host: str
    pid: int
    expires: float
    etag: str | None = None

    def stale(self, now: float) -> bool:
        if self.expires < now:
            return True
        if self.host == socket.gethostname():
            try:
                os.kill(self.pid, 0)
            except ProcessLookupError:
                return True
            except PermissionError:  # alive, another user's
                return False
        return False


def _remote(uri: str) -> bool:
    return uris.is_uri(uri) and not uri.startswith("file://")


def _local(uri: str) -> str:
    return uri.removeprefix("file://")


def _body(token: str, ttl: float) -> bytes:
    holder = {
        "token": token,
        "host": socket.gethostname(),
        "pid": os.getpid(),
        "expires": time.time() + ttl,
    }
    return json.dumps(holder).encode()


def _parse(data: bytes, etag: str | None, mtime: float) -> Holder:
    try:
        raw = json.loads(data)
        return Holder(raw["token"], raw["host"], int(raw["pid"]), float(raw["expires"]), etag)
    except (ValueError, KeyError, TypeError):
        # Being written (a local create is not atomic with its content) or garbage: judge
        # by age alone.
        return Holder("", "", -1, mtime + TTL_SECONDS, etag)


def _create(uri: str, body: bytes) -> str | None:
    """Create the lease object only if absent; its ETag (remote) or "" (local), else None."""
    if _remote(uri):
        fs, path = fsspec.core.url_to_fs(uri)
        try:
            out = fs.pipe_file(path, body, mode="create")
        except FileExistsError:
            return None
        return (out or {}).get("ETag") or fs.info(path).get("ETag") or ""
    path = _local(uri)
    os.makedirs(os.path.dirname(path), exist_ok=True)
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
    except FileExistsError:
        return None
    try:
        with os.fdopen(fd, "wb") as handle:
            handle.write(body)
            handle.flush()
            os.fsync(handle.fileno())
    except BaseException:
        # A full disk lets the create through and fails the write: an empty lease left
        # here would be judged by its age alone and block every writer for the TTL.
        with contextlib.suppress(OSError):
            os.unlink(path)
        raise
    return ""


def _read(uri: str) -> Holder | None:
    if _remote(uri):
        fs, path = fsspec.core.url_to_fs(uri)
        try:
            info = fs.info(path, refresh=True)
            data = fs.cat_file(path)
        except FileNotFoundError:
            return None
        return _parse(data, info.get("ETag"), time.time())
    path = _local(uri)
    try:
        with open(path, "rb") as fh:
            data = fh.read()
        mtime = os.stat(path).st_mtime
    except FileNotFoundError:
        return None
    return _parse(data, None, mtime)


def _break(uri: str, dead: Holder, body: bytes) -> str | None:
    """Replace a dead holder's lease by ours; our ETag/"" when we won, None otherwise."""
    if _remote(uri):
        fs, path = fsspec.core.url_to_fs(uri)
        try:
            out = fs.pipe_file(path, body, IfMatch=dead.etag)
        except (OSError, FileExistsError):  # 412: someone else broke or renewed it first
            return None
        fs.invalidate_cache(path)
        return (out or {}).get("ETag") or fs.info(path, refresh=True).get("ETag") or ""
    path = _local(uri)
    aside = f"{path}.{uuid.uuid4().hex}.stale"
    try:
        os.rename(path, aside)
    except FileNotFoundError:
        return None
    moved = _read(aside)
    if moved is not None and moved.token != dead.token:
        # A live lease was created between our read and the rename: put it back.
        with contextlib.suppress(FileExistsError):
            os.link(aside, path)
        os.unlink(aside)
        return None
    os.unlink(aside)
    return _create(uri, body)


def _release(uri: str, token: str, etag: str) -> None:
    current = _read(uri)
    if current is None or current.token != token:
        return  # expired and taken over: the lease is no longer ours to remove
    if _remote(uri):
        fs, path = fsspec.core.url_to_fs(uri)
        bucket, key, _ = fs.split_path(path)
        with contextlib.suppress(OSError, FileNotFoundError):
            fs.call_s3("delete_object", Bucket=bucket, Key=key, IfMatch=current.etag or etag)
        fs.invalidate_cache(path)
        return
    with contextlib.suppress(FileNotFoundError):
        os.unlink(_local(uri))


@contextlib.contextmanager
def lease(
    uri: str, what: str, ttl: float = TTL_SECONDS, wait: float = WAIT_SECONDS
) -> Iterator[None]:
    """Hold the lease at ``uri`` for the ``with`` block; wait for it up to ``wait`` seconds.

    ``what`` names the store and table in the timeout's message.
    """
    token = uuid.uuid4().hex
    deadline = time.monotonic() + wait
    delay = 0.05
    while True:
        body = _body(token, ttl)
        etag = _create(uri, body)
        if etag is None:
            holder = _read(uri)
            if holder is None:
                continue  # released between our create and our read
            if holder.token == token:
                # Our create went through but its answer was lost (a reset, a retried PUT
                # answered 412): the lease is ours; waiting for it would wait for ourselves.
                etag = holder.etag or ""
                break
            if holder.stale(time.time()):
                etag = _break(uri, holder, body)
            if etag is None:
                if time.monotonic() > deadline:
                    raise LeaseTimeout(
                        f"{what}: still locked by {holder.host} pid {holder.pid} after "
                        f"{wait:.0f} s (lease {uri})"
                    )
                time.sleep(delay * (0.5 + random.random()))
                delay = min(delay * 2, 2.0)
                continue
        break
    try:
        yield
    finally:
        _release(uri, token, etag)
