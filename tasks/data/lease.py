"""A store-level lease: one writer at a time per table, across processes and hosts.

A lease is an object ``<store>/_locks/<name>.lock`` holding who took it and until when.
Taking it is a conditional create: ``O_CREAT | O_EXCL`` on a local folder (NFS v3+ honours
it too), ``PUT`` with ``If-None-Match: *`` on S3 (AWS, MinIO and moto honour it). Whoever
finds it taken waits and tries again. A holder that died leaves an expired lease (or, on
the same host, a lease whose process is gone); the next writer breaks it: on S3 by an
overwrite conditional on the dead lease's ETag (only one breaker wins), locally by
renaming it aside and checking that the renamed lease is the dead one. Leases are held
only around a key read and its commit (seconds), so the expiry is generous.

A held lease is renewed: a heartbeat thread rewrites it with a fresh expiry every third of
its TTL (on S3 conditional on its ETag, so a renewal never overwrites another writer's
lease; locally by an atomic replace, after checking it is still ours and unexpired), so a
commit longer than the TTL (a MERGE on a huge table) keeps it. The heartbeat stops when the
``with`` block ends and before the lease is removed; a holder that dies or hangs (stopped,
swapped out) stops renewing, and its lease expires one TTL after the last renewal.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import random
import socket
import threading
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass

import fsspec

from tasks.data import uris

TTL_SECONDS = 600.0
WAIT_SECONDS = 1800.0
RENEWALS_PER_TTL = 3  # a lease is renewed every TTL / 3: two renewals may fail or be late

logger = logging.getLogger(__name__)


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
    if moved is not None and (moved.token, moved.expires) != (dead.token, dead.expires):
        # (A renewal since our read changes the expiry: the holder is alive after all.)
        # A live lease was created (or renewed) between our read and the rename: put it
        # back.
        with contextlib.suppress(FileExistsError):
            os.link(aside, path)
        os.unlink(aside)
        return None
    os.unlink(aside)
    return _create(uri, body)


def _renew(uri: str, token: str, etag: str, ttl: float, expires: float) -> str | None:
    """Rewrite our lease with a fresh expiry; its new ETag ("" locally), or None when it
    is no longer ours (broken after it expired, or gone): then we stop renewing it."""
    body = _body(token, ttl)
    if _remote(uri):
        fs, path = fsspec.core.url_to_fs(uri)
        try:
            out = fs.pipe_file(path, body, IfMatch=etag)
        except (OSError, FileExistsError):  # 412: replaced since our last write
            current = _read(uri)  # (or our PUT landed and its answer was lost)
            if current is None or current.token != token:
                return None
            return current.etag or ""
        fs.invalidate_cache(path)
        return (out or {}).get("ETag") or fs.info(path, refresh=True).get("ETag") or ""
    path = _local(uri)
    current = _read(uri)
    if current is None or current.token != token or expires < time.time():
        return None  # expired: another writer may be breaking it now; never write over it
    tmp = f"{path}.{token}.renew"
    with open(tmp, "wb") as handle:
        handle.write(body)
        handle.flush()
        os.fsync(handle.fileno())
    os.replace(tmp, path)
    return ""


class _Heartbeat(threading.Thread):
    """Renews a held lease every ``ttl / RENEWALS_PER_TTL`` seconds until stopped."""

    def __init__(self, uri: str, token: str, etag: str, ttl: float, what: str) -> None:
        super().__init__(name=f"lease-heartbeat-{token[:8]}", daemon=True)
        self.uri, self.token, self.etag, self.ttl, self.what = uri, token, etag, ttl, what
        self.expires = time.time() + ttl
        self.halt = threading.Event()
        self.lost = False
        self.renewals = 0

    def run(self) -> None:
        while not self.halt.wait(self.ttl / RENEWALS_PER_TTL):
            expires = time.time() + self.ttl
            try:
                etag = _renew(self.uri, self.token, self.etag, self.ttl, self.expires)
            except OSError as exc:  # a storage hiccup: the next beat tries again
                logger.warning("%s: lease renewal failed (%s); retrying", self.what, exc)
                continue
            if etag is None:
                self.lost = True
                logger.error("%s: the lease expired and was taken over while held", self.what)
                return
            self.etag, self.expires = etag, expires
            self.renewals += 1

    def stop(self) -> None:
        self.halt.set()
        self.join()


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

    ``what`` names the store and table in the timeout's message. While held, the lease is
    renewed every ``ttl / 3`` seconds (a heartbeat thread), so a block longer than ``ttl``
    keeps it; a holder that dies or hangs loses it ``ttl`` after its last renewal.
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
    heartbeat = _Heartbeat(uri, token, etag, ttl, what)
    heartbeat.start()
    try:
        yield
    finally:
        heartbeat.stop()  # before the release: no renewal may recreate a removed lease
        _release(uri, token, heartbeat.etag)
