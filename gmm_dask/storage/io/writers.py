"""Writing table partitions: stage every file, then commit the partition in one step.

A table partition ``<root>/<table>/dt=YYYY-MM-DD/`` is first written in full to
``<root>/_staging/<table>/<run>/`` (outside the table, so no reader ever globs it) and then
committed in one step: on Linux local filesystems an atomic directory exchange
(``renameat2(RENAME_EXCHANGE)``), elsewhere on local disks two renames with recovery of the
old partition if the process dies between them. Object stores have no atomic rename: there
the Parquet layout copies the new files in after the old ones are removed (documented in the
README), while the ``delta`` table format (:mod:`gmm_dask.storage.delta`) replaces a partition with
one commit to the table's log, atomic on object stores too.

Committed partitions are read back here too (:func:`read_partition`, :func:`partition_files`),
from either layout.
"""

from __future__ import annotations

import contextlib
import ctypes
import ctypes.util
import logging
import os
import shutil
import time
import uuid
from collections.abc import Callable, Sequence
from pathlib import Path
from types import TracebackType
from typing import Any, Protocol

import pyarrow as pa
import pyarrow.parquet as pq
from fsspec import AbstractFileSystem

from gmm_dask.errors import ConcurrentCommitError, ConfigError, DataError, PublishConflictError
from gmm_dask.storage import _faults, delta
from gmm_dask.storage.io import records
from gmm_dask.storage.io.documents import list_names
from gmm_dask.storage.io.fs import StorageOptions, _is_local, _url, filesystem, retry_transient

logger = logging.getLogger("gmm_dask.storage.io")  # the name its log lines have always carried

STALE_STAGING_SECONDS = 6 * 3600

#: Table formats of the outputs (``output.format``) and inputs (``input.format``).
TABLE_FORMATS = ("parquet", "delta")
#: Partitions that are exports, not tables (CSV files): always the directory layout.
EXPORT_TABLES = frozenset({"audiences_csv"})


_RENAME_EXCHANGE = 2
_AT_FDCWD = -100


def _renameat2() -> Callable[[int, bytes, int, bytes, int], int] | None:
    libc_name = ctypes.util.find_library("c")
    if not libc_name:
        return None
    libc = ctypes.CDLL(libc_name, use_errno=True)
    fn = getattr(libc, "renameat2", None)
    if fn is None:
        return None
    fn.argtypes = [ctypes.c_int, ctypes.c_char_p, ctypes.c_int, ctypes.c_char_p, ctypes.c_uint]
    fn.restype = ctypes.c_int
    return fn


_RENAMEAT2 = _renameat2()


def _exchange(a: str, b: str) -> bool:
    """Atomically swap two directories (Linux); False if unsupported here."""
    if _RENAMEAT2 is None:
        return False
    rc = _RENAMEAT2(_AT_FDCWD, os.fsencode(a), _AT_FDCWD, os.fsencode(b), _RENAME_EXCHANGE)
    if rc == 0:
        return True
    err = ctypes.get_errno()
    if err in (22, 38, 95):  # EINVAL, ENOSYS, EOPNOTSUPP: filesystem cannot exchange
        return False
    raise OSError(err, os.strerror(err), f"{a} <-> {b}")


class PartitionStage(Protocol):
    """One table's partition being written: files staged under :attr:`directory`, then one
    :meth:`commit` (returns where the committed partition is) or :meth:`abort` (removes what
    this run staged). :class:`StagedPartitions` drives one per table."""

    @property
    def run(self) -> str: ...  # this run's id, in the staged files' paths
    @property
    def directory(self) -> str: ...
    def file(self, name: str) -> str: ...
    def commit(self) -> str: ...
    def abort(self) -> None: ...


class _StagedFiles:
    """Where a partition writer's files go before its commit (both writers stage the same way)."""

    fs: AbstractFileSystem
    staged: str  # the staged partition directory, inside the writer's filesystem

    def file(self, name: str) -> str:
        """Path to write a staged file to (local path or URL inside the staging area)."""
        return _url(self.fs, f"{self.staged}/{name}")

    @property
    def directory(self) -> str:
        """The staged partition directory (local path or URL): files written under it are committed."""
        return _url(self.fs, self.staged)


class PartitionWriter(_StagedFiles):
    """Stage the files of one table partition, then commit them atomically.

    >>> w = PartitionWriter(root, "memberships", "2026-01-31")    # doctest: +SKIP
    >>> pq.write_table(t, w.file("part-00000.parquet"))           # doctest: +SKIP
    >>> w.commit()                                                # doctest: +SKIP
    """

    def __init__(
        self,
        root: str,
        table: str,
        date: str,
        *,
        partition_key: str = "dt",
        storage_options: StorageOptions | None = None,
    ) -> None:
        self.fs, self.root = filesystem(root, storage_options)
        self.local = _is_local(self.fs)
        self.table = table
        self.part_name = f"{partition_key}={date}"
        self.run = f"{time.strftime('%Y%m%dT%H%M%S')}-{uuid.uuid4().hex[:8]}"
        base = self.root.rstrip("/")
        self.target = f"{base}/{table}/{self.part_name}"
        self.staging_root = f"{base}/_staging/{table}"
        self.staged = f"{self.staging_root}/{self.run}/{self.part_name}"
        self.trash = f"{base}/_staging/_trash/{table}/{self.run}/{self.part_name}"
        if table not in EXPORT_TABLES and retry_transient(
            lambda: _is_delta(self.fs, f"{base}/{table}"), "Checking", _url(self.fs, base)
        ):
            raise DataError(
                f"output.format is parquet but {_url(self.fs, base)}/{table} is a Delta table "
                "(it has a _delta_log/). Set output.format: delta, or point output.root elsewhere."
            )
        self._recover()

        def makedirs() -> None:
            self.fs.makedirs(self.staged, exist_ok=True)
            self.fs.makedirs(f"{base}/{table}", exist_ok=True)

        retry_transient(makedirs, "Staging", self.directory)

    def _recover(self) -> None:
        """Restore a partition left in the trash by a process that died mid-commit; drop stale staging."""
        if not self.local:
            return
        trash_table = Path(self.trash).parents[1]
        if trash_table.exists():
            for run_dir in sorted(trash_table.iterdir()):
                old = run_dir / self.part_name
                if old.exists() and not Path(self.target).exists():
                    os.rename(old, self.target)
                    logger.warning("Restored %s from an interrupted commit", self.target)
        staging = Path(self.staging_root)
        if staging.exists():
            now = time.time()
            for run_dir in staging.iterdir():
                with contextlib.suppress(OSError):
                    if now - run_dir.stat().st_mtime > STALE_STAGING_SECONDS:
                        shutil.rmtree(run_dir, ignore_errors=True)

    def commit(self) -> str:
        """Make the staged partition the visible one, in one step; returns the target path."""
        if self.local:
            self._commit_local()
        else:  # not atomic: readers may see the partition empty meanwhile (use format: delta)
            url = _url(self.fs, self.target)

            def replace() -> None:
                if self.fs.exists(self.target):
                    self.fs.rm(self.target, recursive=True)
                if self.fs.exists(self.staged):
                    self.fs.copy(self.staged, self.target, recursive=True)

            retry_transient(replace, "Committing", url)
        self.abort()
        logger.info("Committed %s", self.target)
        return _url(self.fs, self.target)

    def _commit_local(self) -> None:
        staged, target = self.staged, self.target
        if not os.path.exists(target):
            os.rename(staged, target)
            return
        if _exchange(staged, target):
            shutil.rmtree(staged)  # now holds the previous partition
            return
        os.makedirs(os.path.dirname(self.trash), exist_ok=True)
        os.rename(target, self.trash)
        os.rename(staged, target)
        shutil.rmtree(self.trash, ignore_errors=True)

    def abort(self) -> None:
        """Remove this run's staging area (called on failure and after a commit)."""
        run_dir = f"{self.staging_root}/{self.run}"
        if self.local:
            shutil.rmtree(run_dir, ignore_errors=True)
            shutil.rmtree(Path(self.trash).parent, ignore_errors=True)
        else:
            with contextlib.suppress(Exception):  # best effort: stale staging is harmless
                self.fs.rm(run_dir, recursive=True)


class DeltaPartitionWriter(_StagedFiles):
    """Write one partition of a Delta table: the files go straight into the table directory,
    under ``<table>/<key>=<date>/run-<id>/`` (invisible to every reader until committed), and
    :meth:`commit` replaces the partition with them in one Delta commit (see :mod:`gmm_dask.storage.delta`).
    Files of a run that never commits are removed by :meth:`abort`, or later by ``vacuum``."""

    def __init__(
        self,
        root: str,
        table: str,
        date: str,
        *,
        partition_key: str = "dt",
        storage_options: StorageOptions | None = None,
    ) -> None:
        self.fs, base = filesystem(root, storage_options)
        self.storage_options = storage_options
        self.table, self.key, self.date = table, partition_key, date
        self.run = f"{time.strftime('%Y%m%dT%H%M%S')}-{uuid.uuid4().hex[:8]}"
        self.table_dir = f"{base.rstrip('/')}/{table}"
        self.table_uri = _url(self.fs, self.table_dir)
        self.staged = f"{self.table_dir}/{partition_key}={date}/run-{self.run}"
        self.partition = f"{self.table_dir}/{partition_key}={date}"
        self.committed = False
        self.version: int | None = None  # the table version this writer committed

        def check() -> None:
            if (
                self.fs.exists(self.table_dir)
                and not delta.is_delta_table(self.fs, self.table_dir)
                and self.fs.find(self.table_dir)
            ):
                raise DataError(
                    f"output.format is delta but {self.table_uri!r} holds a Parquet-layout table "
                    "(no _delta_log/). Point output.root at a new location, or keep "
                    "output.format: parquet there."
                )

        retry_transient(check, "Checking", self.table_uri)
        # the version this write starts from: a conflicting commit after it makes ours fail
        self.read_version = retry_transient(
            lambda: delta.current_version(self.fs, self.table_dir, self.table_uri, storage_options),
            "Opening",
            self.table_uri,
        )
        if self.local:
            os.makedirs(self.staged, exist_ok=True)

    @property
    def local(self) -> bool:
        return _is_local(self.fs)

    def commit(self) -> str:
        def files() -> list[str]:
            found = self.fs.find(self.staged) if self.fs.exists(self.staged) else []
            other = [f for f in found if not f.endswith(".parquet")]
            if other:
                raise DataError(
                    f"Delta table {self.table_uri!r} takes Parquet files only; staged {other[:3]}."
                )
            return sorted(found)

        staged = retry_transient(files, "Listing", self.table_uri)
        try:
            version = retry_transient(
                lambda: delta.commit_partition(
                    self.fs,
                    self.table_dir,
                    self.table_uri,
                    self.key,
                    self.date,
                    staged,
                    self.storage_options,
                    {"gmm_dask.run": self.run},
                    self.read_version,
                ),
                "Committing",
                self.table_uri,
            )
        except ConcurrentCommitError as err:
            raise PublishConflictError(
                f"{self.table} {self.key}={self.date}: another run replaced this partition at the same "
                f"time and its commit won ({err}); this run's partition was not committed, the other "
                f"one stands whole in {self.table_uri!r}. Re-run if this run's result should replace it."
            ) from None
        self.committed, self.version = True, version
        logger.info("Committed %s %s=%s as Delta version %s", self.table_uri, self.key, self.date, version)
        return f"{self.table_uri}/{self.key}={self.date}"

    def abort(self) -> None:
        """Remove this run's files if they were never committed (a committed run's files are
        the table's now)."""
        if self.committed:
            return
        with contextlib.suppress(Exception):
            if self.local:
                shutil.rmtree(self.staged, ignore_errors=True)
            elif self.fs.exists(self.staged):
                self.fs.rm(self.staged, recursive=True)


def _parquet_options(schema: pa.Schema) -> dict[str, Any]:
    """Snappy; dictionary encoding for the columns where it pays (strings, small integers,
    booleans — trying it on float columns costs more than the whole rest of the write);
    statistics on the flat columns (what engines prune on)."""
    flat = [f for f in schema if not pa.types.is_nested(f.type)]
    small = (pa.types.is_string, pa.types.is_large_string, pa.types.is_dictionary, pa.types.is_boolean)
    return {
        "compression": "snappy",
        "use_dictionary": [
            f.name
            for f in flat
            if any(t(f.type) for t in small) or f.type in (pa.int8(), pa.int16(), pa.int32())
        ],
        "write_statistics": [f.name for f in flat],
    }


def write_table_file(table: pa.Table, path: str, storage_options: StorageOptions | None = None) -> None:
    """Write one Parquet file (see :func:`_parquet_options`) to a local path or URL; a whole
    rewrite on each retry of a transient error (:func:`retry_transient`)."""
    options = _parquet_options(table.schema)

    def write() -> None:
        _faults.outage("write_file", path)
        if "://" in path:
            fs, inner = filesystem(path, storage_options)
            with fs.open(inner, "wb") as f:
                pq.write_table(table, f, **options)
        else:
            pq.write_table(table, path, **options)

    retry_transient(write, "Writing", path)


def read_table_file(
    path: str, columns: Sequence[str], storage_options: StorageOptions | None = None
) -> pa.Table:
    """The ``columns`` of one Parquet file (a local path or URL), e.g. a memberships file."""
    fs, inner = filesystem(path, storage_options)

    def read() -> pa.Table:
        with fs.open(inner, "rb") as f:
            return pq.read_table(f, columns=list(columns))

    return retry_transient(read, "Reading", path)


def write_csv_file(table: pa.Table, path: str, storage_options: StorageOptions | None = None) -> None:
    """One CSV file with a header (list columns are not allowed), retried as a whole."""
    import pyarrow.csv as pacsv

    fs, inner = filesystem(path, storage_options)

    def write() -> None:
        _faults.outage("write_file", path)
        with fs.open(inner, "wb") as f:
            pacsv.write_csv(table, f)

    retry_transient(write, "Writing", path)


class StagedPartitions:
    """The one way a table partition is written: stage every table's partition of one date, then
    commit them together, or abort them all if anything fails (a context manager).

    >>> with StagedPartitions(root, ["segments", "overlaps"], "2026-01-31") as st:  # doctest: +SKIP
    ...     st.write("segments", table)                         # one file
    ...     path = st.file("overlaps", "part-00000.parquet")   # or a path to write to (e.g. from workers)
    >>> st.paths                                               # doctest: +SKIP
    {'segments': '.../segments/dt=2026-01-31', 'overlaps': ...}

    Tables are committed in the order given, each in one step; ``paths`` holds the committed
    partitions after a clean exit. ``table_format`` is ``parquet`` (Hive directories, staged
    outside the tables) or ``delta`` (one Delta commit per table; exports such as CSV files keep
    the directory layout).
    """

    def __init__(
        self,
        root: str,
        tables: Sequence[str],
        date: str,
        storage_options: StorageOptions | None = None,
        table_format: str = "parquet",
    ):
        if table_format not in TABLE_FORMATS:
            raise ConfigError(f"Unknown table format {table_format!r}; use one of {TABLE_FORMATS}.")
        self.root, self.tables, self.date = root, list(tables), date
        self.storage_options = storage_options
        self.table_format = table_format
        self.writers: dict[str, PartitionStage] = {}
        self.paths: dict[str, str] = {}

    def _writer(self, table: str) -> PartitionStage:
        if self.table_format == "delta" and table not in EXPORT_TABLES:
            return DeltaPartitionWriter(self.root, table, self.date, storage_options=self.storage_options)
        return PartitionWriter(self.root, table, self.date, storage_options=self.storage_options)

    def __enter__(self) -> StagedPartitions:
        try:
            for t in self.tables:
                self.writers[t] = self._writer(t)
        except BaseException:
            self._abort()
            raise
        return self

    def file(self, table: str, name: str) -> str:
        return self.writers[table].file(name)

    def directory(self, table: str) -> str:
        """The staged partition directory of ``table`` (files written under it are committed)."""
        return self.writers[table].directory

    def write(self, table: str, data: pa.Table, name: str = "part-00000.parquet") -> None:
        write_table_file(data, self.file(table, name), self.storage_options)

    def _abort(self) -> None:
        for w in self.writers.values():
            w.abort()

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        if exc_type is not None:
            self._abort()
            return
        try:
            _faults.point("before_commit")
            publication = records.active(self.root, self.date, self.storage_options)
            for t in self.tables:
                w = self.writers[t]
                self.paths[t] = publication.commit(t, w) if publication is not None else w.commit()
        except BaseException:
            self._abort()
            raise


def write_partition(
    root: str,
    table: str,
    date: str,
    data: pa.Table,
    storage_options: StorageOptions | None = None,
    table_format: str = "parquet",
) -> str:
    """Write one table's partition of ``date`` as a single file, committed atomically."""
    with StagedPartitions(root, [table], date, storage_options, table_format) as st:
        st.write(table, data)
    return st.paths[table]


def partition_path(root: str, table: str, date: str, partition_key: str = "dt") -> str:
    return f"{root.rstrip('/')}/{table}/{partition_key}={date}"


def _is_delta(fs: AbstractFileSystem, table_dir: str) -> bool:
    return delta.is_delta_table(fs, table_dir)


def _partition_files(
    root: str, table: str, date: str, storage_options: StorageOptions | None
) -> tuple[AbstractFileSystem, str, list[str] | None]:
    """(fs, partition path, its Parquet files as paths in fs, or None if there is no partition).

    A Delta table (``<root>/<table>/_delta_log``) gives the files of its current version; the
    Parquet layout gives the files under the partition directory. While another run's publication
    of ``date`` is pending, the partition as it was before that run (:mod:`.records`)."""
    fs, base = filesystem(root, storage_options)
    path = partition_path(base, table, date)
    table_dir = f"{base.rstrip('/')}/{table}"

    def find() -> tuple[AbstractFileSystem, str, list[str] | None]:
        view = records.pending_view(fs, base, table, date, storage_options)
        if view is not None and view.absent:
            return fs, path, None
        where = view.directory if view is not None and view.directory else path
        if table not in EXPORT_TABLES and _is_delta(fs, table_dir):
            version = view.version if view is not None else None
            t = delta.open_table(_url(fs, table_dir), storage_options, version)
            files = [fs._strip_protocol(u) for u in delta.partition_file_uris(t, "dt", date)]
            return fs, where, files or None
        if not fs.exists(where):
            return fs, where, None
        return fs, where, sorted(f for f in fs.find(where) if f.endswith(".parquet"))

    return retry_transient(find, "Listing", _url(fs, table_dir))


def partition_files(
    root: str, table: str, date: str, storage_options: StorageOptions | None = None
) -> list[str]:
    """The Parquet files of a committed partition, as paths or URLs ([] if there is none)."""
    fs, _, files = _partition_files(root, table, date, storage_options)
    if not files:
        return []
    return [_url(fs, f) for f in files]


def partition_dates(root: str, table: str, storage_options: StorageOptions | None = None) -> list[str]:
    """The dates that have a committed partition of ``table`` under ``root``, in order."""
    fs, base = filesystem(root, storage_options)
    table_dir = f"{base.rstrip('/')}/{table}"
    url = _url(fs, table_dir)
    if table not in EXPORT_TABLES and retry_transient(lambda: _is_delta(fs, table_dir), "Listing", url):
        t = retry_transient(lambda: delta.open_table(url, storage_options), "Opening", url)
        found = set(delta.partition_values(t, "dt"))
    else:
        names = list_names(f"{root.rstrip('/')}/{table}", storage_options)
        found = {n.split("=", 1)[1] for n in names if n.startswith("dt=")}
    for date in records.pending_dates(fs, base):  # read as before another run's publication
        view = records.pending_view(fs, base, table, date, storage_options)
        if view is None:
            continue
        if view.absent:
            found.discard(date)
        elif view.directory is not None or date in delta.partition_values(
            delta.open_table(url, storage_options, view.version), "dt"
        ):
            found.add(date)
        else:
            found.discard(date)
    return sorted(found)


def read_partition(
    root: str,
    table: str,
    date: str,
    columns: Sequence[str] | None = None,
    storage_options: StorageOptions | None = None,
) -> pa.Table:
    """A committed table partition (e.g. the memberships of one snapshot); DataError if absent."""
    import pyarrow.dataset as ds

    fs, _, files = _partition_files(root, table, date, storage_options)
    if not files:
        raise DataError(
            f"No {table} for snapshot {date} under {root!r}: run segment/score for that date first."
        )
    return retry_transient(
        lambda: ds.dataset(files, format="parquet", filesystem=fs).to_table(
            columns=list(columns) if columns is not None else None
        ),
        "Reading",
        str(root),
    )


def partition_metadata(
    root: str, table: str, date: str, storage_options: StorageOptions | None = None
) -> dict[str, str] | None:
    """The gmm-dask key-value metadata of a committed partition (None if there is none)."""
    fs, _, files = _partition_files(root, table, date, storage_options)
    if not files:
        return None

    def read() -> dict[bytes, bytes]:
        with fs.open(files[0], "rb") as f:
            return pq.read_schema(f).metadata or {}

    meta = retry_transient(read, "Reading", _url(fs, files[0]))
    return {k.decode(): v.decode() for k, v in meta.items() if k.startswith(b"gmm_dask.")}
