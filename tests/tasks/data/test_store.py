"""The feature store's no-duplicates invariant, on a folder and on a real S3 server (moto)."""

from __future__ import annotations

import contextlib
import os
import subprocess
from pathlib import Path

import pandas as pd
import pytest

from tasks.config import Settings
from tasks.data import uris
from tasks.data.ingest import ingest
from tasks.data.store import FeatureStore, s3_storage_options
from tasks.data.tables import COHORT, PREDICTIONS, TABLES


@pytest.fixture(params=["folder", "s3"])
def store(request, tmp_path) -> FeatureStore:
    if request.param == "folder":
        return FeatureStore(str(tmp_path / "store"))
    return FeatureStore(f"{request.getfixturevalue('s3_bucket')}/store")


def _scores(cases: list[str], score: float, run_id: str = "r1") -> pd.DataFrame:
    return pd.DataFrame(
        {
            "run_id": run_id,
            "case_id": cases,
            "score": [score] * len(cases),
            "scored_at": pd.Timestamp("2024-01-01", tz="UTC"),
        }
    )


def _keys(frame: pd.DataFrame) -> list[tuple[str, str]]:
    return sorted(frame[list(PREDICTIONS.keys)].itertuples(index=False, name=None))


def test_a_missing_table_reads_empty(store):
    assert store.read(PREDICTIONS).empty
    assert list(store.read("cohort", columns=["case_id"]).columns) == ["case_id"]
    assert store.version(PREDICTIONS) is None and store.table(PREDICTIONS) is None
    assert store.versions() == dict.fromkeys(TABLES)


def test_insert_new_stores_each_key_once(store):
    assert store.insert_new(PREDICTIONS, _scores(["a", "b", "c"], 0.1)) == 3
    # Overlapping keys: only the new one is stored; the stored rows keep their values.
    assert store.insert_new(PREDICTIONS, _scores(["b", "c", "d"], 0.9)) == 1
    stored = store.read(PREDICTIONS)
    assert _keys(stored) == [("r1", "a"), ("r1", "b"), ("r1", "c"), ("r1", "d")]
    scores = stored.set_index("case_id")["score"].to_dict()
    assert scores == {"a": 0.1, "b": 0.1, "c": 0.1, "d": 0.9}
    # The same case in another run is another key.
    assert store.insert_new(PREDICTIONS, _scores(["a"], 0.5, run_id="r2")) == 1
    assert len(store.read(PREDICTIONS)) == 5


def test_insert_new_collapses_duplicates_in_one_frame_last_wins(store):
    frame = pd.concat([_scores(["a", "b"], 0.1), _scores(["a"], 0.7)], ignore_index=True)
    assert store.insert_new(PREDICTIONS, frame) == 2
    stored = store.read(PREDICTIONS).set_index("case_id")
    assert stored["score"].to_dict() == {"a": 0.7, "b": 0.1}


def test_nothing_new_is_no_commit(store):
    assert store.insert_new(PREDICTIONS, _scores([], 0.1)) == 0
    assert store.version(PREDICTIONS) is None
    store.insert_new(PREDICTIONS, _scores(["a"], 0.1))
    assert store.insert_new(PREDICTIONS, _scores(["a"], 0.2)) == 0
    assert store.version(PREDICTIONS) == 0
    assert store.upsert(PREDICTIONS, _scores([], 0.1)) == {"inserted": 0, "updated": 0}
    assert store.version(PREDICTIONS) == 0


def test_upsert_replaces_rows_in_place_and_inserts_new_keys(store):
    assert store.upsert(PREDICTIONS, _scores(["a", "b"], 0.1)) == {"inserted": 2, "updated": 0}
    assert store.upsert(PREDICTIONS, _scores(["a", "b"], 0.8)) == {"inserted": 0, "updated": 2}
    stored = store.read(PREDICTIONS)
    assert len(stored) == 2
    assert stored.set_index("case_id")["score"].to_dict() == {"a": 0.8, "b": 0.8}

    frame = pd.concat([_scores(["b", "c"], 0.3), _scores(["c"], 0.4)], ignore_index=True)
    assert store.upsert(PREDICTIONS, frame) == {"inserted": 1, "updated": 1}
    stored = store.read(PREDICTIONS)
    assert _keys(stored) == [("r1", "a"), ("r1", "b"), ("r1", "c")]
    assert stored.set_index("case_id")["score"].to_dict() == {"a": 0.8, "b": 0.3, "c": 0.4}


def test_every_commit_is_a_version_and_old_versions_read_back(store):
    store.insert_new(PREDICTIONS, _scores(["a"], 0.1))
    assert store.versions((PREDICTIONS,)) == {"predictions": 0}
    store.insert_new(PREDICTIONS, _scores(["b"], 0.2))
    assert store.version(PREDICTIONS) == 1
    store.upsert(PREDICTIONS, _scores(["a"], 0.9))
    assert store.version(PREDICTIONS) == 2
    assert store.versions() == {**dict.fromkeys(TABLES), "predictions": 2}

    # Time travel: each commit still reads back as it was.
    assert _keys(store.read(PREDICTIONS, version=0)) == [("r1", "a")]
    assert store.read(PREDICTIONS, version=1).set_index("case_id")["score"].to_dict() == {
        "a": 0.1,
        "b": 0.2,
    }
    assert store.read(PREDICTIONS).set_index("case_id").at["a", "score"] == 0.9


def test_compaction_merges_many_files_keeps_rows_and_old_versions(store):
    for i in range(6):  # one file per commit, as one per chunk
        store.insert_new(PREDICTIONS, _scores([f"c{i}a", f"c{i}b"], i / 10))
    before = store.read(PREDICTIONS).sort_values("case_id", ignore_index=True)
    assert store.compact(PREDICTIONS, at_files=7) is None  # too few files: nothing done
    assert store.version(PREDICTIONS) == 5
    assert store.compact(PREDICTIONS, at_files=6) == {
        "files_before": 6,
        "files_after": 1,
        "version": 6,
    }
    assert len(store.table(PREDICTIONS).file_uris()) == 1
    after = store.read(PREDICTIONS).sort_values("case_id", ignore_index=True)
    pd.testing.assert_frame_equal(before, after)
    assert _keys(store.read(PREDICTIONS, version=2)) == [
        ("r1", f"c{i}{s}") for i in range(3) for s in "ab"
    ]
    # The log is checkpointed, and keyed writes go on as before.
    assert uris.exists(store.uri("predictions", "_delta_log", "_last_checkpoint"))
    assert store.insert_new(PREDICTIONS, _scores(["c0a", "new"], 0.9)) == 1
    assert store.table(PREDICTIONS).version() == 7 and len(store.read(PREDICTIONS)) == 13
    assert store.compact(PREDICTIONS, at_files=64) is None  # the default: far from it
    assert store.compact("embeddings", at_files=1) is None  # no table yet


def test_new_value_columns_merge_into_the_schema(store):
    store.insert_new(PREDICTIONS, _scores(["a"], 0.1))
    extra = _scores(["b"], 0.2).assign(model_version="m3")
    assert store.insert_new(PREDICTIONS, extra) == 1
    stored = store.read(PREDICTIONS).set_index("case_id")
    assert stored.at["b", "model_version"] == "m3"
    assert pd.isna(stored.at["a", "model_version"])


def test_strings_and_integers_read_back_nullable(store):
    frame = _scores(["a", "b"], 0.1).assign(rank=pd.array([1, None], dtype="Int64"))
    store.insert_new(PREDICTIONS, frame)
    stored = store.read(PREDICTIONS).sort_values("case_id")
    assert str(stored["case_id"].dtype) == "string"
    assert str(stored["rank"].dtype) == "Int64" and pd.isna(stored["rank"].iloc[1])


def test_write_bytes_puts_an_object_under_the_root(store):
    uri = store.write_bytes(b"<html>", "reports", "r1.html")
    assert uri == store.uri("reports", "r1.html")
    assert uri.startswith(store.root)
    import fsspec

    with fsspec.open(uri, "rb") as fh:
        assert fh.read() == b"<html>"


def test_a_local_root_is_made_absolute(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert FeatureStore("store").root == str(tmp_path / "store")
    assert FeatureStore("store").storage_options is None
    assert FeatureStore("s3://b/p").root == "s3://b/p"


def test_s3_options_come_from_the_environment_and_stay_out_of_the_repr(monkeypatch):
    for key in ("AWS_ENDPOINT_URL_S3", "AWS_REGION", "AWS_SESSION_TOKEN", "SLN_S3_CONDITIONAL_PUT"):
        monkeypatch.delenv(key, raising=False)
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "very-secret")
    monkeypatch.setenv("AWS_ENDPOINT_URL", "http://127.0.0.1:9000")
    monkeypatch.setenv("AWS_DEFAULT_REGION", "eu-west-1")
    options = s3_storage_options()
    assert options["AWS_SECRET_ACCESS_KEY"] == "very-secret"
    assert options["AWS_ALLOW_HTTP"] == "true"
    assert options["AWS_REGION"] == "eu-west-1"
    assert options["aws_conditional_put"] == "etag"
    store = FeatureStore("s3://bucket/prefix")
    assert store.storage_options == options
    assert "very-secret" not in repr(store)


def test_s3_round_trip(tiny_cohort, s3_bucket):
    import s3fs

    fs = s3fs.S3FileSystem()
    fs.put(str(tiny_cohort.parent) + "/", f"{s3_bucket}/export/", recursive=True)
    store_root = f"{s3_bucket}/store"
    settings = Settings(store=store_root, validation_sites=["B"])
    store = FeatureStore(store_root)
    report = ingest(f"{s3_bucket}/export/manifest.csv", store, settings, run_id="s3")
    assert (report.valid, report.quarantined) == (8, 0)
    cohort = store.read("cohort")
    assert len(cohort) == 8
    assert cohort["bmus_image"].str.startswith(f"{s3_bucket}/export/images/").all()
    assert fs.exists(f"{store_root}/cohort/_delta_log/00000000000000000000.json")

    again = ingest(f"{s3_bucket}/export/manifest.csv", store, settings, run_id="s3-2")
    assert again.new_versions == 0
    # Time travel: the first commit still reads back as it was.
    assert len(store.read("cohort", version=0)) == 8
    assert store.version(COHORT) == 0  # nothing new: no second commit


def _insert_batch(root: str, env: dict, start: float) -> int:
    import os
    import time

    os.environ.update(env)
    time.sleep(max(0.0, start - time.time()))  # all writers read the keys at once
    cases = [f"C{i:03d}" for i in range(40)]
    return FeatureStore(root).insert_new(PREDICTIONS, _scores(cases, 0.5))


def test_concurrent_writers_in_separate_processes_store_each_key_once(store):
    # Four processes insert the same 40 keys at the same instant: without the table's
    # lease each reads "no keys stored" and appends all 40.
    import multiprocessing as mp
    import os
    import time

    env = {k: v for k, v in os.environ.items() if k.startswith("AWS_")}
    start = time.time() + 3
    with mp.get_context("spawn").Pool(4) as pool:
        inserted = pool.starmap(_insert_batch, [(store.root, env, start)] * 4)
    assert sorted(inserted) == [0, 0, 0, 40]
    stored = store.read(PREDICTIONS)
    assert len(stored) == 40 and not stored.duplicated(list(PREDICTIONS.keys)).any()


@contextlib.contextmanager
def _read_only(root: Path):
    """``root`` made read-only: a read-only bind mount as root (who ignores file modes),
    else file modes."""
    if os.geteuid() == 0:
        done = subprocess.run(["mount", "--bind", str(root), str(root)], capture_output=True)
        if done.returncode:
            pytest.skip(f"cannot bind-mount as root: {done.stderr.decode().strip()}")
        try:
            subprocess.run(["mount", "-o", "remount,bind,ro", str(root)], check=True)
            yield
        finally:
            subprocess.run(["umount", str(root)], check=True)
        return
    paths = [root, *root.rglob("*")]
    for path in paths:
        path.chmod(0o555 if path.is_dir() else 0o444)
    try:
        yield
    finally:
        for path in paths:
            path.chmod(0o755 if path.is_dir() else 0o644)


def test_a_read_only_store_is_a_clear_error_naming_the_store(tmp_path):
    from tasks.data.store import StoreWriteError

    root = tmp_path / "store"
    store = FeatureStore(str(root))
    store.insert_new(PREDICTIONS, _scores(["A"], 0.1))
    with _read_only(root):
        with pytest.raises(StoreWriteError, match=f"store {root}: cannot write table predictions"):
            store.insert_new(PREDICTIONS, _scores(["B"], 0.2))
        with pytest.raises(StoreWriteError, match=f"store {root}: cannot write reports/r.json"):
            store.write_bytes(b"x", "reports", "r.json")
        assert _keys(store.read(PREDICTIONS)) == [("r1", "A")]  # reads still work
    assert _keys(store.read(PREDICTIONS)) == [("r1", "A")]  # nothing stored was lost


def test_a_full_store_is_a_clear_error_and_leaves_no_lease(tmp_path):
    # A 1 MiB tmpfs filled to the last byte: creating the lease file succeeds, writing it
    # does not. The half-made lease must go (judged by its age alone it would block every
    # writer for the TTL); freed, the next write goes through at once.
    from tasks.data.store import StoreWriteError

    root = tmp_path / "disk"
    root.mkdir()
    done = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=1m", "tmpfs", str(root)])
    if done.returncode:
        pytest.skip("cannot mount a tmpfs (not root)")
    try:
        store = FeatureStore(str(root / "store"))
        store.insert_new(PREDICTIONS, _scores(["A"], 0.1))
        filler = root / "filler"
        with contextlib.suppress(OSError), open(filler, "wb", buffering=0) as handle:
            while True:
                handle.write(b"\0" * 4096)
        with pytest.raises(StoreWriteError, match=f"store {store.root}: .*the store is full"):
            store.insert_new(PREDICTIONS, _scores(["B"], 0.2))
        assert not list((root / "store" / "_locks").iterdir())
        filler.unlink()
        assert store.insert_new(PREDICTIONS, _scores(["B"], 0.2)) == 1
        assert _keys(store.read(PREDICTIONS)) == [("r1", "A"), ("r1", "B")]
    finally:
        subprocess.run(["umount", "-l", str(root)], check=False)


def test_s3_retries_reach_s3fs_and_delta_rs(monkeypatch):
    # One place (tasks.data.uris) sets both clients' retries of transient errors.
    import fsspec

    from tasks.data import uris

    monkeypatch.setenv("AWS_ENDPOINT_URL", "http://127.0.0.1:9000")
    options = s3_storage_options()
    assert options["max_retries"] == str(uris.S3_RETRIES)
    assert options["retry_timeout"] == f"{uris.S3_RETRY_TIMEOUT_S}s"
    fs = fsspec.filesystem("s3", skip_instance_cache=True)
    assert fs.retries == uris.S3_RETRIES
    assert fs.config_kwargs["retries"]["mode"] == "standard"
