"""Feature store: Delta Lake tables (Parquet + transaction log) under one root.

The root is a local folder (default ``./store``) or ``s3://bucket/prefix``; one code path
serves both. Tables: ``cohort``, ``quarantine``, ``radiomics``, ``embeddings``,
``predictions``, each at ``<root>/<table>``. Writes are keyed (new keys appended after an
anti-join, replacements MERGEd), so re-running a step never duplicates rows, and every
commit is a table version that training can pin.
Every keyed write holds the table's store-level lease (:mod:`tasks.data.lease`) from its
key read to its commit, so two runs on one store (a nightly and a backfill, two hosts)
never both append the same key: the second waits, then finds the keys stored.
A store that cannot be written (read-only, full, no permission) raises
:class:`StoreWriteError` naming the store and the table.
S3 settings come from the standard AWS environment variables (endpoint included); they are
passed to delta-rs but never logged.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator
from pathlib import Path

import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc
from deltalake import DeltaTable, write_deltalake
from deltalake.exceptions import TableNotFoundError

from tasks.data import uris
from tasks.data.lease import lease
from tasks.data.tables import TABLES, TableSpec

_AWS_ENV = (
    "AWS_ACCESS_KEY_ID",
    "AWS_SECRET_ACCESS_KEY",
    "AWS_SESSION_TOKEN",
    "AWS_REGION",
    "AWS_DEFAULT_REGION",
    "AWS_ENDPOINT_URL",
    "AWS_ENDPOINT_URL_S3",
)


def s3_storage_options() -> dict[str, str]:
    """delta-rs options for S3 from the environment (credentials stay in memory only)."""
    options = {k: os.environ[k] for k in _AWS_ENV if os.environ.get(k)}
    endpoint = options.get("AWS_ENDPOINT_URL_S3") or options.get("AWS_ENDPOINT_URL")
    if endpoint:
        options["AWS_ENDPOINT_URL"] = endpoint
        if endpoint.startswith("http://"):
            options["AWS_ALLOW_HTTP"] = "true"
    if "AWS_REGION" not in options:
        options["AWS_REGION"] = options.get("AWS_DEFAULT_REGION", "us-east-1")
    # Safe concurrent commits without DynamoDB: S3 (and moto, MinIO) honour conditional PUT.
    options.setdefault("aws_conditional_put", os.environ.get("SLN_S3_CONDITIONAL_PUT", "etag"))
    options.update(uris.delta_retry_options())  # transient errors retried, as s3fs does
    return options


class StoreWriteError(OSError):
    """The store refuses a write (read-only, full, no permission): nothing was committed."""


class FeatureStore:
    """Delta tables and plain objects under one root URI."""

    def __init__(self, root: str):
        self.root = root if uris.is_uri(root) else str(Path(root).expanduser().resolve())

    def __repr__(self) -> str:
        return f"FeatureStore({self.root!r})"

    # -- locations ---------------------------------------------------------------------
    def uri(self, *parts: str) -> str:
        out = self.root
        for part in parts:
            out = uris.join(out, part)
        return out

    @property
    def storage_options(self) -> dict[str, str] | None:
        return s3_storage_options() if self.root.startswith("s3://") else None

    # -- tables ------------------------------------------------------------------------
    def table(self, spec: TableSpec | str, version: int | None = None) -> DeltaTable | None:
        name = _name(spec)
        try:
            return DeltaTable(self.uri(name), version=version, storage_options=self.storage_options)
        except TableNotFoundError:
            return None

    def version(self, spec: TableSpec | str) -> int | None:
        table = self.table(spec)
        return None if table is None else table.version()

    def versions(
        self, specs: tuple[TableSpec, ...] = tuple(TABLES.values())
    ) -> dict[str, int | None]:
        return {spec.name: self.version(spec) for spec in specs}

    def read(
        self, spec: TableSpec | str, version: int | None = None, columns: list[str] | None = None
    ) -> pd.DataFrame:
        """The table as a DataFrame (empty when the table does not exist yet)."""
        table = self.table(spec, version)
        if table is None:
            return pd.DataFrame(columns=columns or [])
        return table.to_pyarrow_table(columns=columns).to_pandas(types_mapper=_nullable)

    @contextlib.contextmanager
    def writing(self, name: str) -> Iterator[None]:
        """Hold ``name``'s lease; a refused write becomes a :class:`StoreWriteError`."""
        try:
            with lease(self.uri("_locks", f"{name}.lock"), f"store {self.root}, table {name}"):
                yield
        except StoreWriteError:
            raise
        except Exception as exc:
            reason = _refusal(exc)
            if reason is None:
                raise
            raise StoreWriteError(
                f"store {self.root}: cannot write table {name} ({reason}); nothing was "
                "committed, stored rows are unchanged"
            ) from exc

    def insert_new(self, spec: TableSpec, frame: pd.DataFrame) -> int:
        """Insert rows whose keys (``spec.keys``) are not stored yet; returns how many.

        An anti-join on the stored key columns, then a plain append: a MERGE would scan
        every stored file (all feature columns) on each chunk's commit, which grows with
        the table. The table's lease is held from the key read to the append, so a
        concurrent writer cannot slip the same keys in between.
        """
        if frame.empty:
            return 0
        with self.writing(spec.name):
            return self._insert_new(spec, frame)

    def _insert_new(self, spec: TableSpec, frame: pd.DataFrame) -> int:
        keys = list(spec.keys)
        frame = frame.drop_duplicates(subset=keys, keep="last")
        table = self.table(spec)
        if table is not None:
            # Only the stored keys that share a first key with this chunk: the commit then
            # reads and compares a chunk's worth of keys, not the whole table's.
            first = pa.array(frame[keys[0]].astype(str).unique(), pa.string())
            stored = (
                table.to_pyarrow_dataset()
                .to_table(columns=keys, filter=pc.field(keys[0]).isin(first))
                .to_pandas()
            )
            seen = set(stored.astype(str).itertuples(index=False, name=None))
            fresh = [
                row not in seen
                for row in frame[keys].astype(str).itertuples(index=False, name=None)
            ]
            frame = frame[fresh]
            if frame.empty:
                return 0
        write_deltalake(
            self.uri(spec.name),
            pa.Table.from_pandas(frame, preserve_index=False),
            mode="append",
            schema_mode="merge",
            storage_options=self.storage_options,
        )
        return len(frame)

    def upsert(self, spec: TableSpec, frame: pd.DataFrame) -> dict[str, int]:
        """Insert new keys and replace rows with existing keys (backfill with FORCE)."""
        if frame.empty:
            return {"inserted": 0, "updated": 0}
        with self.writing(spec.name):
            return self._upsert(spec, frame)

    def _upsert(self, spec: TableSpec, frame: pd.DataFrame) -> dict[str, int]:
        keys = list(spec.keys)
        frame = frame.drop_duplicates(subset=keys, keep="last")
        data = pa.Table.from_pandas(frame, preserve_index=False)
        table = self.table(spec)
        if table is None:
            write_deltalake(
                self.uri(spec.name), data, mode="append", storage_options=self.storage_options
            )
            return {"inserted": len(frame), "updated": 0}
        predicate = " AND ".join(f"t.`{k}` = s.`{k}`" for k in keys)
        metrics = (
            table.merge(
                source=data,
                predicate=predicate,
                source_alias="s",
                target_alias="t",
                merge_schema=True,
            )
            .when_matched_update_all()
            .when_not_matched_insert_all()
            .execute()
        )
        return {
            "inserted": int(metrics.get("num_target_rows_inserted", 0)),
            "updated": int(metrics.get("num_target_rows_updated", 0)),
        }

    # -- upkeep ------------------------------------------------------------------------
    def compact(self, spec: TableSpec | str, at_files: int) -> dict | None:
        """Merge the table's files into few large ones and checkpoint its log, once it holds
        ``at_files`` files or more (None: fewer, or no table; nothing done).

        Each chunk's commit adds one file and every keyed write reads the key columns of
        every file, so without this a write's cost grows with the number of commits. The
        rows do not change; earlier versions stay readable (nothing is vacuumed), so runs
        pinned to them still reproduce. Held under the table's lease like any write.
        delta-rs itself checkpoints the log every 100 commits (``delta.checkpointInterval``).
        """
        name = _name(spec)
        table = self.table(name)
        if table is None or len(table.file_uris()) < at_files:
            return None
        with self.writing(name):
            table = self.table(name)  # as of now, under the lease
            before = len(table.file_uris())
            if before < at_files:
                return None
            metrics = table.optimize.compact()
            table.create_checkpoint()
        return {
            "files_before": before,
            "files_after": before - metrics["numFilesRemoved"] + metrics["numFilesAdded"],
            "version": table.version(),
        }

    # -- objects (reports, models, images) ---------------------------------------------
    def write_bytes(self, data: bytes, *parts: str) -> str:
        """Write an object under the root (atomically: see :func:`uris.write_bytes`)."""
        try:
            return uris.write_bytes(self.uri(*parts), data)
        except OSError as exc:
            reason = _refusal(exc)
            if reason is None:
                raise
            raise StoreWriteError(
                f"store {self.root}: cannot write {'/'.join(parts)} ({reason})"
            ) from exc


_REFUSALS = {
    "read-only": "the store is read-only",
    "permission denied": "permission denied",
    "no space left": "the store is full",
    "quota": "the store's quota is exceeded",
    "accessdenied": "access denied",
    "access denied": "access denied",
}


def _refusal(exc: BaseException) -> str | None:
    """Why the store refused a write, when the error says so (else None: not ours)."""
    if isinstance(exc, PermissionError):
        return "permission denied"
    text = str(exc).lower()
    for needle, reason in _REFUSALS.items():
        if needle in text:
            return reason
    return None


def _name(spec: TableSpec | str) -> str:
    return spec if isinstance(spec, str) else spec.name


def _nullable(dtype: pa.DataType):
    # Keep integer labels nullable and strings as strings when reading back.
    if pa.types.is_integer(dtype):
        return pd.Int64Dtype() if dtype.bit_width == 64 else None
    if pa.types.is_string(dtype) or pa.types.is_large_string(dtype):
        return pd.StringDtype()
    return None
