"""Paths and URIs: resolution, data-root confinement, atomic writes, content hashes."""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

import pytest

from tasks.data import uris


def _confined(path: str, base: str, root: str) -> bool:
    return uris.within(uris.resolve(path, base), [uris.normalise_root(root)])


def test_dot_dot_segments_are_resolved_before_the_check(tmp_path):
    root = tmp_path / "root"
    (root / "images").mkdir(parents=True)
    assert _confined("images/a.png", str(root), str(root))
    assert _confined("images/../images/a.png", str(root), str(root))
    assert not _confined("../secret.png", str(root), str(root))
    assert not _confined("images/../../secret.png", str(root), str(root))
    assert not _confined(str(root / "images" / ".." / ".." / "x.png"), "/", str(root))
    assert not _confined("/etc/passwd", str(root), str(root))


def test_a_symlink_inside_a_root_pointing_outside_is_refused(tmp_path):
    root, outside = tmp_path / "root", tmp_path / "outside"
    root.mkdir()
    outside.mkdir()
    (outside / "secret.png").write_bytes(b"x")
    (root / "link").symlink_to(outside, target_is_directory=True)
    (root / "file_link.png").symlink_to(outside / "secret.png")
    assert not _confined("link/secret.png", str(root), str(root))
    assert not _confined("file_link.png", str(root), str(root))
    # A link that stays inside the root is fine.
    (root / "real.png").write_bytes(b"y")
    (root / "inner_link.png").symlink_to(root / "real.png")
    assert _confined("inner_link.png", str(root), str(root))


def test_a_root_given_through_a_symlink_still_holds_its_files(tmp_path):
    real = tmp_path / "real"
    real.mkdir()
    (tmp_path / "alias").symlink_to(real, target_is_directory=True)
    assert _confined("a.png", str(real), str(tmp_path / "alias"))


def test_a_sibling_whose_name_starts_with_the_roots_name_is_refused(tmp_path):
    root, sibling = tmp_path / "data" / "root", tmp_path / "data" / "root2"
    root.mkdir(parents=True)
    sibling.mkdir()
    assert not _confined(str(sibling / "a.png"), str(root), str(root))
    assert not _confined("../root2/a.png", str(root), str(root))
    assert not uris.within("/data/root2/a.png", ["/data/root"])
    assert not uris.within("/data/root2", ["/data/root"])
    assert uris.within("/data/root/a.png", ["/data/root"])
    assert uris.within("/data/root", ["/data/root"])
    assert uris.within("/data/root/a.png", ["/data/root/"])  # a trailing slash is the same root
    assert uris.within("/b/x.png", ["/a", "/b"])  # any of several roots


@pytest.mark.parametrize(
    "uri",
    [
        "s3://other-bucket/x/a.png",
        "s3://bucket-evil/x/a.png",
        "s3://bucket/x2/a.png",
        "s3://bucket/y/a.png",
        "s3://bucket/x/../y/a.png",
        "gs://bucket/x/a.png",
    ],
)
def test_object_store_uris_outside_the_root_are_refused(uri):
    root = uris.normalise_root("s3://bucket/x")
    assert not uris.within(uris.resolve(uri, "s3://bucket/x"), [root])


def test_object_store_uris_inside_the_root_are_accepted():
    root = uris.normalise_root("s3://bucket/x/")
    assert uris.within(uris.resolve("images/a.png", "s3://bucket/x"), [root])
    assert uris.within(uris.resolve("s3://bucket/x/./a/../b.png", ""), [root])
    assert not uris.within(uris.resolve("../../other/a.png", "s3://bucket/x"), [root])


def test_resolve():
    assert uris.resolve("a/../b.png", "s3://bucket/x") == "s3://bucket/x/b.png"
    assert uris.resolve("s3://bucket/x/./y//z.png", "/ignored") == "s3://bucket/x/y/z.png"
    assert uris.resolve("/abs/./a.png", "/base") == os.path.realpath("/abs/a.png")
    assert uris.resolve("rel/a.png", "/base") == os.path.realpath("/base/rel/a.png")
    assert uris.resolve("~/a.png", "/base") == os.path.realpath(os.path.expanduser("~/a.png"))


def test_normalise_root_makes_a_relative_folder_absolute(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert uris.normalise_root("data/../data") == str(tmp_path.resolve() / "data")
    assert uris.normalise_root("s3://bucket/a/../b") == "s3://bucket/b"


def test_join_and_parent():
    assert uris.join("s3://bucket/x/", "a.png") == "s3://bucket/x/a.png"
    assert uris.join("s3://bucket/x", "a.png") == "s3://bucket/x/a.png"
    assert uris.join("/data/x", "a.png") == "/data/x/a.png"
    assert uris.parent("s3://bucket/x/m.csv") == "s3://bucket/x"
    assert uris.parent("s3://bucket/m.csv") == "s3://bucket"
    assert uris.parent("/data/x/m.csv") == str(Path("/data/x").resolve())
    assert uris.is_uri("s3://b/k") and not uris.is_uri("/data/x")


def test_write_bytes_is_atomic_and_replaces_the_whole_file(tmp_path):
    target = tmp_path / "reports" / "r.html"  # the folder is made
    assert uris.write_bytes(str(target), b"a long first version") == str(target)
    assert target.read_bytes() == b"a long first version"
    uris.write_bytes(str(target), b"short")
    assert target.read_bytes() == b"short"  # replaced whole, not overwritten in place
    assert sorted(p.name for p in target.parent.iterdir()) == ["r.html"]  # no .part left


def test_a_failed_write_leaves_the_old_file_and_no_part(tmp_path, monkeypatch):
    target = tmp_path / "r.html"
    target.write_bytes(b"old")

    def fail(src, dst):
        raise OSError("disk full")

    monkeypatch.setattr(uris.os, "replace", fail)
    with pytest.raises(OSError, match="disk full"):
        uris.write_bytes(str(target), b"new")
    assert target.read_bytes() == b"old"
    assert [p.name for p in tmp_path.iterdir()] == ["r.html"]


def test_write_bytes_to_s3(s3_bucket):
    uri = f"{s3_bucket}/reports/r.html"
    assert uris.write_bytes(uri, b"one") == uri
    uris.write_bytes(uri, b"two")
    with uris.open_file(uri) as fh:
        assert fh.read() == b"two"
    assert uris.exists(uri) and not uris.exists(f"{s3_bucket}/reports/none.html")


def test_sha256_and_exists(tmp_path):
    data = os.urandom(3 * uris.CHUNK + 17)  # more than one read block
    path = tmp_path / "image.bin"
    path.write_bytes(data)
    assert uris.sha256(str(path)) == hashlib.sha256(data).hexdigest()
    assert uris.exists(str(path))
    assert not uris.exists(str(tmp_path / "missing.bin"))
    assert not uris.exists(str(tmp_path))  # a folder is not a file
    with pytest.raises(FileNotFoundError):
        uris.sha256(str(tmp_path / "missing.bin"))


def test_a_symlink_inside_a_file_uri_root_pointing_outside_is_refused(tmp_path):
    root, outside = tmp_path / "root", tmp_path / "outside"
    root.mkdir()
    outside.mkdir()
    (outside / "secret.png").write_bytes(b"x")
    (root / "link").symlink_to(outside, target_is_directory=True)
    assert not _confined("link/secret.png", f"file://{root}", f"file://{root}")


def test_exists_tells_not_found_from_a_storage_failure(tmp_path, monkeypatch, free_tcp_port):
    # fsspec's isfile answers False to every error: an unreachable store would read as
    # "file not found" and quarantine good cases. Here it is a StorageError (retried).
    from tasks.data.s3 import S3FileSystem  # the class fsspec makes for s3:// paths

    (tmp_path / "f.png").write_bytes(b"x")
    assert uris.exists(str(tmp_path / "f.png"))
    assert not uris.exists(str(tmp_path / "nope.png"))
    assert not uris.exists(str(tmp_path / "f.png" / "below"))  # a file as a folder
    assert not uris.exists(str(tmp_path))  # a folder is not a file
    monkeypatch.setenv("AWS_ENDPOINT_URL", f"http://127.0.0.1:{free_tcp_port()}")  # nobody
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "x")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "x")
    monkeypatch.setattr(S3FileSystem, "retries", 1)
    S3FileSystem.clear_instance_cache()
    with pytest.raises(uris.StorageError, match="storage error checking s3://b/k.png"):
        uris.exists("s3://b/k.png")
    S3FileSystem.clear_instance_cache()


def test_exists_on_s3(s3_bucket):
    uris.write_bytes(f"{s3_bucket}/a/f.png", b"x")
    assert uris.exists(f"{s3_bucket}/a/f.png")
    assert not uris.exists(f"{s3_bucket}/a/nope.png")


def test_sha256_tells_a_vanished_file_from_a_storage_failure(tmp_path, monkeypatch):
    """Vanished: FileNotFoundError (ingest quarantines that case); an object store's own
    exception (not an OSError): StorageError (retried)."""
    with pytest.raises(FileNotFoundError):
        uris.sha256(str(tmp_path / "vanished.png"))

    class ClientError(Exception):  # what botocore raises, outside the OSError tree
        pass

    def broken(uri, mode="rb"):
        raise ClientError("SlowDown")

    monkeypatch.setattr(uris, "open_file", broken)
    with pytest.raises(uris.StorageError, match="storage error hashing .*: ClientError: SlowDown"):
        uris.sha256(str(tmp_path / "any.png"))
