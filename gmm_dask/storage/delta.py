"""Delta Lake tables through delta-rs (the ``deltalake`` package): the ``delta`` table format.

A Delta table is a directory of Parquet files plus a transaction log, ``_delta_log/``, whose
numbered JSON commits say which files make up each version. Readers (Spark, Trino, DuckDB's
``delta`` extension, pandas/pyarrow via ``deltalake``) read the files the latest commit lists,
never a directory listing, so:

* a partition is replaced by ONE commit that removes the old partition's files and adds the new
  ones: readers see the old or the new partition, whole (on S3 the commit is a conditional
  ``PUT`` of ``_delta_log/<n>.json`` with ``If-None-Match: *``, so two writers cannot both take
  version *n*; delta-rs needs no lock service for this since 1.0);
* files written before the commit are invisible, so a writer killed mid-write leaves only
  unreferenced files behind (``vacuum`` deletes them);
* the previous version stays readable (``DeltaTable(uri, version=n)``) until vacuumed;
* each commit carries the gmm-dask metadata of its partition (table, schema and model version)
  in its ``commitInfo``, beside the schema in the log's ``metaData``.

gmm-dask writes the data files itself (the workers write pieces in parallel, as for the Parquet
layout) into ``<table>/<key>=<date>/run-<id>/`` and commits them with
:meth:`deltalake.DeltaTable.create_write_transaction`. It reads a partition through the file
list of the table's current version. Tables gmm-dask writes use no deletion vectors and no
column mapping; input tables that do are refused (their raw files do not hold the table's rows).
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from types import ModuleType
from typing import TYPE_CHECKING, Any

import pyarrow as pa
import pyarrow.parquet as pq
from fsspec import AbstractFileSystem

from gmm_dask.errors import ConcurrentCommitError, ConfigError, DataError

if TYPE_CHECKING:  # deltalake is optional: imported where a Delta table is used
    from deltalake import DeltaTable
    from deltalake.transaction import AddAction, CommitProperties

logger = logging.getLogger(__name__)

#: Reader features whose tables cannot be read file by file (the rows are not the files' rows).
UNSUPPORTED_READER_FEATURES = ("deletionVectors", "columnMapping")


def _deltalake() -> ModuleType:
    try:
        import deltalake
    except ImportError:
        raise ConfigError(
            "The delta table format needs the deltalake package: pip install 'gmm-dask[delta]'."
        ) from None
    return deltalake


def storage_options(url: str, fsspec_options: dict[str, Any] | None) -> dict[str, str]:
    """delta-rs (object_store) options for the fsspec ``storage_options`` of a config.

    Only non-secret settings are translated (``endpoint_url``, ``client_kwargs.region_name``,
    ``anon``); credentials are read from the environment by both libraries
    (``AWS_ACCESS_KEY_ID``, ``AWS_SECRET_ACCESS_KEY``, ``AWS_SESSION_TOKEN``, ``AWS_PROFILE``...).
    """
    so = dict(fsspec_options or {})
    out: dict[str, str] = {}
    if url.startswith(("s3://", "s3a://")):
        endpoint = so.get("endpoint_url") or (so.get("client_kwargs") or {}).get("endpoint_url")
        if endpoint:
            out["AWS_ENDPOINT_URL"] = str(endpoint)
            if str(endpoint).startswith("http://"):
                out["AWS_ALLOW_HTTP"] = "true"
        region = (so.get("client_kwargs") or {}).get("region_name")
        if region:
            out["AWS_REGION"] = str(region)
        if so.get("anon"):
            out["AWS_SKIP_SIGNATURE"] = "true"
    return out


def is_delta_table(fs: AbstractFileSystem, inner: str) -> bool:
    """Whether ``inner`` (a path in ``fs``) holds a Delta log."""
    return bool(fs.exists(f"{inner.rstrip('/')}/_delta_log"))


def open_table(uri: str, fsspec_options: dict[str, Any] | None, version: int | None = None) -> DeltaTable:
    _deltalake()
    from deltalake import DeltaTable

    return DeltaTable(uri, version=version, storage_options=storage_options(uri, fsspec_options))


def check_readable(table: DeltaTable, where: str) -> None:
    """DataError if the table uses features whose data files cannot be read one by one."""
    features = set(getattr(table.protocol(), "reader_features", None) or ())
    bad = [f for f in UNSUPPORTED_READER_FEATURES if f in features]
    if bad:
        raise DataError(
            f"Delta table {where!r} uses {', '.join(bad)}: its Parquet files do not hold the table's "
            "rows as they are, and gmm-dask reads files piece by piece. Rewrite the table without "
            "them (e.g. REORG TABLE ... APPLY (PURGE), or a copy with deltalake.write_deltalake)."
        )


def partition_values(table: DeltaTable, key: str) -> list[str]:
    """The distinct values of partition column ``key`` in the table's current version."""
    if key not in table.metadata().partition_columns:
        raise DataError(
            f"Delta table {table.table_uri!r} is not partitioned by {key!r} (partition columns: "
            f"{table.metadata().partition_columns}); set input.partition_key to its date column."
        )
    return sorted({p[key] for p in table.partitions() if p.get(key) is not None})


def partition_file_uris(table: DeltaTable, key: str, value: str) -> list[str]:
    """The data files of one partition in the table's current version (absolute paths or URLs)."""
    return sorted(table.file_uris(file_pruning_predicate=[(key, "=", value)]))


def _arrow_for_delta(schema: pa.Schema) -> pa.Schema:
    """The files' schema as Delta can store it (no metadata; unsigned → signed is refused)."""
    for f in schema:
        if pa.types.is_unsigned_integer(f.type):
            raise DataError(
                f"Column {f.name!r} is {f.type}: Delta tables have no unsigned integer types. Cast "
                "the id upstream (e.g. to int64 or string), or use output.format: parquet."
            )
    return schema.remove_metadata()


@dataclass(frozen=True)
class _Replacement:
    """One partition's new files, ready to commit in place of its current ones."""

    table_uri: str
    options: dict[str, str]  # delta-rs storage options
    key: str
    value: str
    actions: list[AddAction]
    schema: pa.Schema  # the files' columns, then the partition column
    properties: CommitProperties
    run: str | None  # the writer's ``gmm_dask.run`` tag: finds a retried commit that got through
    read_version: int | None


def commit_partition(
    fs: AbstractFileSystem,
    table_inner: str,
    table_uri: str,
    key: str,
    value: str,
    files: Sequence[str],
    fsspec_options: dict[str, Any] | None,
    commit_metadata: dict[str, str] | None = None,
    read_version: int | None = None,
) -> int:
    """Replace partition ``key=value`` of the table at ``table_uri`` with ``files`` (paths in
    ``fs`` under ``table_inner``), in one commit; creates the table on first use. Returns the
    table version committed.

    ``read_version`` is the table version when the writer started (None: there was no table).
    A commit by another writer since then that replaced the same partition raises
    :class:`ConcurrentCommitError`: of two writers of one partition that overlap in time, the
    first to commit wins and the other fails. Commits to other partitions do not conflict (a
    commit that races one is checked again and retried). The commit itself is Delta's: a
    conditional PUT of the next log entry, so two commits never both take a version."""
    _deltalake()
    from deltalake.exceptions import CommitFailedError
    from deltalake.transaction import CommitProperties

    actions, schema, meta_kv = _add_actions(fs, table_inner, key, value, files)
    if schema is None:  # an empty partition: keep the table's schema, drop the partition's files
        if not is_delta_table(fs, table_inner):
            raise DataError(f"Nothing to commit to the new Delta table {table_uri!r}: no files were written.")
        table_schema = pa.schema(open_table(table_uri, fsspec_options).schema().to_arrow())
        schema = pa.schema([f for f in table_schema if f.name != key])
    props = CommitProperties(
        custom_metadata={**meta_kv, **(commit_metadata or {}), "gmm_dask.partition": f"{key}={value}"}
    )
    new = _Replacement(
        table_uri,
        storage_options(table_uri, fsspec_options),
        key,
        value,
        actions,
        schema.append(pa.field(key, pa.string())),
        props,
        (commit_metadata or {}).get("gmm_dask.run"),
        read_version,
    )
    try:
        if (
            read_version is None
            and not is_delta_table(fs, table_inner)
            and _create_table(fs, table_inner, new)
        ):
            return 0
        return _replace_partition(new)
    except CommitFailedError as err:
        raise ConcurrentCommitError(str(err).splitlines()[0]) from None


def _add_actions(
    fs: AbstractFileSystem, table_inner: str, key: str, value: str, files: Sequence[str]
) -> tuple[list[AddAction], pa.Schema | None, dict[str, str]]:
    """(Delta add actions, the files' common schema without metadata or None if there are no
    files, the first file's ``gmm_dask.*`` metadata) for staged ``files`` of partition ``key=value``."""
    from deltalake.transaction import AddAction

    def describe(path: str) -> tuple[pq.FileMetaData, int]:
        with fs.open(path, "rb") as f:
            meta = pq.ParquetFile(f).metadata
        return meta, fs.size(path)

    with ThreadPoolExecutor(max_workers=max(1, min(16, len(files)))) as pool:
        described = list(pool.map(describe, files))
    schema = None
    now = int(time.time() * 1000)
    actions = []
    meta_kv: dict[str, str] = {}
    for path, (meta, size) in zip(files, described, strict=True):
        s = meta.schema.to_arrow_schema()
        if schema is None:
            schema = _arrow_for_delta(s)
            meta_kv = {
                k.decode(): v.decode() for k, v in (s.metadata or {}).items() if k.startswith(b"gmm_dask.")
            }
        elif not s.remove_metadata().equals(schema):
            raise DataError(f"Staged file {path!r} has schema {s} but the others have {schema}.")
        rel = path[len(table_inner.rstrip("/")) + 1 :]
        actions.append(
            AddAction(rel, int(size), {key: value}, now, True, json.dumps({"numRecords": meta.num_rows}))
        )
    return actions, schema, meta_kv


def _create_table(fs: AbstractFileSystem, table_inner: str, new: _Replacement) -> bool:
    """Create the table with the partition as its first version; False where another writer
    created the table first (then the partition is committed to theirs)."""
    from deltalake import Schema
    from deltalake.transaction import create_table_with_add_actions

    try:
        create_table_with_add_actions(
            new.table_uri,
            Schema.from_arrow(new.schema),
            new.actions,
            mode="error",
            partition_by=[new.key],
            storage_options=new.options,
            commit_properties=new.properties,
        )
        return True
    except Exception as err:  # another writer created the table first
        if not is_delta_table(fs, table_inner):
            raise
        logger.info("Delta table %s was created concurrently (%s)", new.table_uri, err)
        return False


def _replace_partition(new: _Replacement) -> int:
    """Commit ``new`` over the partition's current files, unless a commit since the writer's
    ``read_version`` replaced the same partition; a race with a commit to another partition is
    checked again and retried (50 tries). Returns the version committed."""
    from deltalake import DeltaTable
    from deltalake.exceptions import CommitFailedError

    since = -1 if new.read_version is None else new.read_version
    for _ in range(50):
        latest = DeltaTable(new.table_uri, storage_options=new.options)
        newer = latest.version() - since
        if newer > 0:
            clash = [h for h in latest.history(limit=newer) if _touches(h, new.key, new.value)]
            mine = [h for h in clash if new.run and h.get("gmm_dask.run") == new.run]
            if mine:  # a retried commit whose first try got through
                return int(mine[0].get("version", latest.version()))
            if clash:
                raise ConcurrentCommitError(
                    f"version {clash[0].get('version')} ({clash[0].get('operation')}) replaced "
                    f"{new.key}={new.value} after this writer started from version {new.read_version}"
                )
        try:
            latest.create_write_transaction(
                [*new.actions],  # the parameter is list[AddAction | RemoveAction]: invariant
                "overwrite",
                new.schema,
                partition_by=[new.key],
                partition_filters=[(new.key, "=", new.value)],
                commit_properties=new.properties,
            )
            return DeltaTable(new.table_uri, storage_options=new.options).version()
        except CommitFailedError:  # another commit got in first: check it again, then retry
            logger.info("Delta commit to %s raced another; checking and retrying", new.table_uri)
    raise ConcurrentCommitError(f"{new.table_uri}: 50 commit attempts lost a race to other writers")


#: Operations that may change any partition's rows when they carry no gmm-dask partition tag.
_DATA_OPERATIONS = (
    "WRITE",
    "DELETE",
    "MERGE",
    "UPDATE",
    "RESTORE",
    "CREATE OR REPLACE TABLE",
    "STREAMING UPDATE",
)


def _touches(commit: dict[str, Any], key: str, value: str) -> bool:
    """Whether a commit (a ``history()`` entry) may have changed partition ``key=value``: ours
    say which partition they replaced; another engine's data change counts as touching it."""
    tag = commit.get("gmm_dask.partition")
    if tag is not None:
        return tag == f"{key}={value}"
    return commit.get("operation") in _DATA_OPERATIONS


def current_version(
    fs: AbstractFileSystem, table_inner: str, table_uri: str, fsspec_options: dict[str, Any] | None
) -> int | None:
    """The table's latest version, or None where there is no Delta table yet."""
    if not is_delta_table(fs, table_inner):
        return None
    return open_table(table_uri, fsspec_options).version()


def vacuum(
    uri: str, fsspec_options: dict[str, Any] | None, retention_hours: int = 168, dry_run: bool = True
) -> list[str]:
    """Delete the files no version within ``retention_hours`` references (old partitions'
    files, files of killed writers); returns them. After it, older versions are no longer
    readable."""
    table = open_table(uri, fsspec_options)
    return table.vacuum(
        retention_hours=retention_hours, dry_run=dry_run, enforce_retention_duration=False, full=True
    )
