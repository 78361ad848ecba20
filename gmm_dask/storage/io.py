"""Parquet in and out: snapshot discovery, pieces with exact row counts, atomic partition commits.

Reading
    A snapshot is one Hive partition ``<input.path>/<key>=YYYY-MM-DD/``. Its files' footers are
    read on the client (metadata only) to check columns and types and to cut the data into
    *pieces* — runs of row groups of one file with known row counts. Each piece is read with
    pyarrow inside a Dask task, selecting only the configured columns, so data larger than
    memory stream through the workers.

Writing
    A table partition ``<root>/<table>/dt=YYYY-MM-DD/`` is first written in full to
    ``<root>/_staging/<table>/<run>/`` (outside the table, so no reader ever globs it) and then
    committed in one step: on Linux local filesystems an atomic directory exchange
    (``renameat2(RENAME_EXCHANGE)``), elsewhere on local disks two renames with recovery of the
    old partition if the process dies between them. Object stores have no atomic rename: there
    the Parquet layout copies the new files in after the old ones are removed (documented in the
    README), while the ``delta`` table format (:mod:`gmm_dask.storage.delta`) replaces a partition with
    one commit to the table's log, atomic on object stores too.

Small documents (model files, aliases, locks, manifests, reports) are written in one step: a
rename on local disks, a single ``PUT`` on object stores. Exclusive creation (a model version's
claim, a publish lock) is ``O_EXCL`` locally and a conditional ``PUT`` (``If-None-Match: *``)
on S3; :class:`ExclusiveWriteUnsupported` says so where a store offers neither.

Storage errors: a connection refused, a timeout, a 5xx answer are *transient* and retried
with backoff for up to ``GMM_DASK_STORAGE_RETRY_SECONDS`` (default 60) at the I/O edges here;
a missing bucket or refused credentials are *permanent*: a ConfigError naming the URL (exit 2),
never with the credentials.
"""

from __future__ import annotations

import contextlib
import ctypes
import ctypes.util
import errno
import json
import logging
import os
import re
import shutil
import time
import uuid
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

import fsspec
import pyarrow as pa
import pyarrow.parquet as pq

from gmm_dask.errors import (
    ConcurrentCommitError,
    ConfigError,
    DataError,
    ExclusiveWriteUnsupported,
    PublishConflictError,
)
from gmm_dask.storage import _faults

logger = logging.getLogger(__name__)

#: Target rows per piece (one Dask task / one output file).
SNAPSHOT_RE = re.compile(r"^\d{4}-\d{2}-\d{2}$")


class SnapshotSource(Protocol):
    """Where the date-partitioned snapshots are and which columns they must have (the job's
    ``input`` config satisfies it)."""

    @property
    def path(self) -> str: ...
    @property
    def format(self) -> str: ...
    @property
    def partition_key(self) -> str: ...
    @property
    def storage_options(self) -> dict[str, Any]: ...
    @property
    def id_column(self) -> str: ...
    @property
    def weight_column(self) -> str | None: ...
    @property
    def feature_names(self) -> list[str]: ...


PIECE_ROWS = 262_144
STALE_STAGING_SECONDS = 6 * 3600


#: Table formats of the outputs (``output.format``) and inputs (``input.format``).
TABLE_FORMATS = ("parquet", "delta")
#: Partitions that are exports, not tables (CSV files): always the directory layout.
EXPORT_TABLES = frozenset({"audiences_csv"})


def filesystem(path: str, storage_options: dict | None = None):
    """(fsspec filesystem, path inside it) for a local path or URL.

    On S3 the listings cache is off unless asked for: other processes write the same prefixes
    (registry versions, locks, partitions) and a stale listing would hide them."""
    so = dict(storage_options or {})
    if path.startswith(("s3://", "s3a://")):
        so.setdefault("use_listings_cache", False)
    fs, inner = fsspec.core.url_to_fs(path, **so)
    return fs, inner


def _is_local(fs) -> bool:
    return "file" in (fs.protocol if isinstance(fs.protocol, tuple) else (fs.protocol,))


def _protocols(fs) -> tuple[str, ...]:
    return fs.protocol if isinstance(fs.protocol, tuple) else (fs.protocol,)


def _url(fs, inner: str) -> str:
    """``inner`` as fsspec and pyarrow open it again: a local path, or a URL with its protocol."""
    return inner if _is_local(fs) else fs.unstrip_protocol(inner)


# --- storage errors: transient (retried) or permanent (exit 2, naming the URL) -----------------

_TRANSIENT_TYPES = {
    "EndpointConnectionError",
    "ConnectionClosedError",
    "ConnectTimeoutError",
    "ReadTimeoutError",
    "ServerDisconnectedError",
    "ClientOSError",
    "ClientConnectorError",
}
_TRANSIENT_ERRNOS = {
    errno.ECONNREFUSED,
    errno.ECONNRESET,
    errno.ECONNABORTED,
    errno.ETIMEDOUT,
    errno.EHOSTUNREACH,
    errno.EREMOTEIO,  # s3fs: a 5xx answer
    errno.EBUSY,
}


def is_transient(err: BaseException) -> bool:
    """Whether a storage error may go away by itself (network, timeouts, 5xx): worth a retry."""
    if isinstance(err, FileNotFoundError | PermissionError | FileExistsError | IsADirectoryError):
        return False
    if isinstance(err, ConnectionError | TimeoutError):
        return True
    if any(c.__name__ in _TRANSIENT_TYPES for c in type(err).__mro__):
        return True
    if isinstance(err, OSError) and err.errno in _TRANSIENT_ERRNOS:
        return True
    cause = err.__cause__ or err.__context__
    return cause is not None and cause is not err and is_transient(cause)


def _retry_seconds() -> float:
    return float(os.environ.get("GMM_DASK_STORAGE_RETRY_SECONDS", "60"))


#: Remote stores whose transient errors are retried here (local disks fail for good).
_REMOTE = ("s3://", "s3a://", "gs://", "gcs://", "abfs://", "abfss://", "az://", "adl://")


def retry_transient(fn, what: str, url: str, seconds: float | None = None):
    """``fn()``, retried with backoff while it fails with a transient storage error, for up to
    ``seconds`` (default ``GMM_DASK_STORAGE_RETRY_SECONDS``, 60); other errors, and any error
    on a local or custom filesystem, pass at once."""
    if not str(url).startswith(_REMOTE):
        return fn()
    deadline = time.monotonic() + (_retry_seconds() if seconds is None else seconds)
    delay = 0.5
    while True:
        try:
            return fn()
        except Exception as err:
            if not is_transient(err) or time.monotonic() + delay > deadline:
                raise
            logger.warning(
                "%s %s: transient storage error (%s: %s); retrying in %.1f s",
                what,
                url,
                type(err).__name__,
                str(err).splitlines()[0][:200] if str(err) else "",
                delay,
            )
            time.sleep(delay)
            delay = min(delay * 2, 8.0)


def _error_code(err: BaseException) -> str:
    """The store's error code (e.g. ``NoSuchBucket``, ``InvalidAccessKeyId``), never its text."""
    for e in (err, err.__cause__, err.__context__):
        response = getattr(e, "response", None)
        if isinstance(response, dict):
            code = (response.get("Error") or {}).get("Code")
            if code:
                return str(code)
    return type(err).__name__


def check_store(url: str, storage_options: dict | None, key: str) -> None:
    """Before any work: a URL's bucket exists and the credentials are accepted.

    Transient failures are retried (:func:`retry_transient`); a missing bucket or refused
    credentials raise :class:`ConfigError` naming ``key`` and the URL (exit 2). The message
    holds the store's error code, never credentials. Local paths are checked elsewhere
    (:func:`gmm_dask.app.config.check_output_location`); other protocols are not checked."""
    if not url.startswith(_REMOTE):
        return
    fs, inner = filesystem(url, storage_options)
    bucket = inner.split("/", 1)[0]
    creds = (
        "Check the credentials in the environment (AWS_ACCESS_KEY_ID / AWS_SECRET_ACCESS_KEY, "
        "AWS_PROFILE or the instance role) and the bucket's policy"
        if url.startswith(("s3://", "s3a://"))
        else "Check the credentials in the environment and the bucket's permissions"
    )
    try:
        retry_transient(lambda: fs.info(bucket), "Checking", url)
        retry_transient(lambda: fs.exists(inner), "Checking", url)
    except FileNotFoundError as err:
        raise ConfigError(
            f"{key} {url!r}: bucket {bucket!r} does not exist ({_error_code(err)}). Create it, or fix {key}."
        ) from None
    except PermissionError as err:
        raise ConfigError(
            f"{key} {url!r}: access denied ({_error_code(err)}). {creds}; credentials are never printed."
        ) from None
    except Exception as err:
        if is_transient(err):
            raise OSError(
                f"{key} {url!r}: the store did not answer ({type(err).__name__}) for "
                f"{_retry_seconds():.0f} s (GMM_DASK_STORAGE_RETRY_SECONDS). Check the endpoint and "
                "the network, then retry."
            ) from None
        raise ConfigError(
            f"{key} {url!r}: the store refused the request ({_error_code(err)}). Check {key} and "
            "storage_options (e.g. endpoint_url). " + creds + "."
        ) from None


def check_storage(cfg) -> None:
    """:func:`check_store` for a job's input, output root and registry (URLs only), and the
    table formats' packages."""
    so = cfg.input.storage_options
    if "delta" in (cfg.input.format, cfg.output.format):
        from gmm_dask.storage import delta

        delta._deltalake()  # ConfigError with the install command when missing
    seen = set()
    for key, url in (
        ("input.path", cfg.input.path),
        ("output.root", cfg.output.root),
        ("output.registry", cfg.output.registry_path),
    ):
        bucket = url.split("://", 1)[-1].split("/", 1)[0] if "://" in url else None
        if bucket is not None and (url.split("://")[0], bucket) not in seen:
            seen.add((url.split("://")[0], bucket))
            check_store(url, so, key)


# --- reading ------------------------------------------------------------------------------


@dataclass(frozen=True)
class Piece:
    """Consecutive row groups of one Parquet file: one read task."""

    index: int
    path: str
    row_groups: tuple[int, ...]
    n_rows: int


@dataclass(frozen=True)
class Snapshot:
    """One date partition of the input dataset, checked and cut into pieces."""

    date: str
    path: str
    pieces: tuple[Piece, ...]
    id_type: pa.DataType
    storage_options: dict

    @property
    def n_rows(self) -> int:
        return sum(p.n_rows for p in self.pieces)


def _input_delta_table(cfg: SnapshotSource):
    """The input Delta table (its current version), checked readable file by file."""
    from gmm_dask.storage import delta

    fs, root = filesystem(cfg.path, cfg.storage_options)
    if not retry_transient(lambda: delta.is_delta_table(fs, root), "Listing", cfg.path):
        raise DataError(
            f"Input path {cfg.path!r} is not a Delta table (no _delta_log/ under it) but input.format "
            "is delta. Point input.path at the table's root, or set input.format: parquet for "
            "Hive-partitioned Parquet directories."
        )
    table = retry_transient(
        lambda: delta.open_table(_url(fs, root), cfg.storage_options), "Opening", cfg.path
    )
    delta.check_readable(table, cfg.path)
    return table


def list_snapshots(cfg: SnapshotSource) -> list[str]:
    """Dates of the snapshots present under ``cfg.path`` (sorted)."""
    if cfg.format == "delta":
        from gmm_dask.storage import delta

        values = delta.partition_values(_input_delta_table(cfg), cfg.partition_key)
        return sorted(v for v in values if SNAPSHOT_RE.match(v))
    fs, root = filesystem(cfg.path, cfg.storage_options)
    if not retry_transient(lambda: fs.exists(root), "Listing", cfg.path):
        raise DataError(
            f"Input path {cfg.path!r} (input.path) does not exist. Check the path, or create the "
            "demo data with `gmm-dask demo`."
        )
    prefix = f"{cfg.partition_key}="
    dates = []
    for entry in retry_transient(lambda: fs.ls(root, detail=True), "Listing", cfg.path):
        name = entry["name"].rstrip("/").rsplit("/", 1)[-1]
        if (
            entry["type"] == "directory"
            and name.startswith(prefix)
            and SNAPSHOT_RE.match(name[len(prefix) :])
        ):
            dates.append(name[len(prefix) :])
    return sorted(dates)


def resolve_snapshot(cfg: SnapshotSource, date: str | None) -> str:
    """The requested snapshot if it exists, or the latest one when ``date`` is None."""
    dates = list_snapshots(cfg)
    if not dates:
        raise DataError(
            f"No snapshots under {cfg.path!r}: expected directories named "
            f"{cfg.partition_key}=YYYY-MM-DD (input.partition_key is {cfg.partition_key!r})."
        )
    if date is None:
        return dates[-1]
    if date not in dates:
        shown = ", ".join(dates[-5:])
        raise DataError(
            f"Snapshot {date} not found under {cfg.path!r} ({len(dates)} available, latest: {shown})."
        )
    return date


_CORRUPT_HINTS = ("thrift", "magic", "footer", "corrupt", "invalid", "parquet", "deserializ", "out of bounds")


def _read_error(path: str, err: Exception, what: str) -> Exception:
    """Classify a failure: damaged data → DataError (exit 2, no retry); storage → OSError (retryable)."""
    if isinstance(err, OSError) and not any(h in str(err).lower() for h in _CORRUPT_HINTS):
        return OSError(f"{what} Parquet file {path!r} failed: {err}")
    return DataError(
        f"Parquet file {path!r} is unreadable or corrupt ({type(err).__name__}: {err}). "
        "Re-export it or remove it from the snapshot."
    )


def _open(fs, path: str):
    try:
        return fs.open(path, "rb")
    except OSError as err:  # missing file, permissions, network: storage trouble, retryable
        raise OSError(f"Opening Parquet file {path!r} failed: {err}") from err


def _footer(fs, path: str):
    def read():
        with _open(fs, path) as f:
            try:
                return pq.ParquetFile(f).metadata
            except Exception as err:
                raise _read_error(path, err, "Reading the footer of") from None

    return retry_transient(read, "Reading the footer of", _url(fs, path))


def _check_schema(path: str, schema: pa.Schema, cfg: SnapshotSource) -> None:
    names = schema.names
    wanted = [cfg.id_column, *cfg.feature_names] + ([cfg.weight_column] if cfg.weight_column else [])
    missing = [c for c in wanted if c not in names]
    if missing:
        raise DataError(
            f"Parquet file {path!r} has no column(s) {missing} (it has {names}). Fix "
            "input.features / input.id_column / input.weight_column in the config."
        )
    for col in [*cfg.feature_names] + ([cfg.weight_column] if cfg.weight_column else []):
        t = schema.field(col).type
        key = "input.weight_column" if col == cfg.weight_column else "input.features"
        if pa.types.is_boolean(t):
            raise DataError(
                f"Column {col!r} ({key}) in Parquet file {path!r} is boolean; features and weights "
                f"must be numbers. Cast it to 0/1 integers upstream (e.g. CAST({col} AS INT)), or "
                f"remove it from {key}."
            )
        if pa.types.is_null(t):
            raise DataError(
                f"Column {col!r} ({key}) in Parquet file {path!r} has no values at all (type null). "
                f"Check the export upstream, or remove it from {key}."
            )
        if not (pa.types.is_integer(t) or pa.types.is_floating(t) or pa.types.is_decimal(t)):
            raise DataError(
                f"Column {col!r} ({key}) in Parquet file {path!r} has type {t}; features and weights "
                f"must be numeric. Encode it as numbers upstream, or remove it from {key}."
            )


def _delta_snapshot_files(cfg: SnapshotSource, date: str) -> tuple[str, list[str]]:
    """(where, files) of one date partition of the input Delta table's current version."""
    from gmm_dask.storage import delta

    fs, _ = filesystem(cfg.path, cfg.storage_options)
    table = _input_delta_table(cfg)
    if date not in delta.partition_values(table, cfg.partition_key):
        resolve_snapshot(cfg, date)  # raises the helpful "not found" error
    uris = delta.partition_file_uris(table, cfg.partition_key, date)
    files = [fs._strip_protocol(u) for u in uris]
    return f"{cfg.path.rstrip('/')} ({cfg.partition_key}={date}, Delta version {table.version()})", files


def open_snapshot(cfg: SnapshotSource, date: str, piece_rows: int = PIECE_ROWS) -> Snapshot:
    """Check every file of one snapshot (footers only) and cut it into pieces."""
    fs, root = filesystem(cfg.path, cfg.storage_options)
    if cfg.format == "delta":
        part, files = _delta_snapshot_files(cfg, date)
    else:
        part = f"{root.rstrip('/')}/{cfg.partition_key}={date}"
        if not retry_transient(lambda: fs.exists(part), "Listing", cfg.path):
            resolve_snapshot(cfg, date)  # raises the helpful "not found" error
        visible = sorted(
            f
            for f in retry_transient(lambda: fs.find(part), "Listing", cfg.path)
            if not any(seg.startswith((".", "_")) for seg in f[len(part) :].split("/") if seg)
        )  # hidden: _SUCCESS, _metadata, .crc files, _temporary/ ...
        files = [f for f in visible if f.endswith(".parquet")]
        stray = [f for f in visible if not f.endswith(".parquet")]
        if stray:
            more = f" and {len(stray) - 5} more" if len(stray) > 5 else ""
            shown = ", ".join(repr(f) for f in stray[:5]) + more
            raise DataError(
                f"Snapshot {date} at {part!r} holds {len(stray)} file(s) that are not Parquet (*.parquet): "
                f"{shown}. Their rows would be silently skipped. Remove them from the snapshot, or "
                "convert them to Parquet."
            )
    if not files:
        raise DataError(f"Snapshot {date} at {part!r} has no Parquet files.")
    with ThreadPoolExecutor(max_workers=min(16, len(files))) as pool:
        footers = list(pool.map(lambda p: _footer(fs, p), files))
    id_type = None
    pieces: list[Piece] = []
    for path, meta in zip(files, footers, strict=True):
        schema = meta.schema.to_arrow_schema()
        _check_schema(path, schema, cfg)
        t = schema.field(cfg.id_column).type
        if id_type is None:
            id_type = t
        elif t != id_type:
            raise DataError(
                f"Column {cfg.id_column!r} is {t} in {path!r} but {id_type} in other files of snapshot {date}."
            )
        group: list[int] = []
        rows = 0
        for rg in range(meta.num_row_groups):
            n = meta.row_group(rg).num_rows
            if group and rows + n > piece_rows:
                pieces.append(Piece(len(pieces), path, tuple(group), rows))
                group, rows = [], 0
            group.append(rg)
            rows += n
        if rows:
            pieces.append(Piece(len(pieces), path, tuple(group), rows))
    if not _is_local(fs):  # keep the protocol so tasks can reopen the files
        pieces = [Piece(p.index, fs.unstrip_protocol(p.path), p.row_groups, p.n_rows) for p in pieces]
    if not pieces:
        raise DataError(f"Snapshot {date} at {part!r} is empty (its Parquet files hold no rows).")
    return Snapshot(date, part, tuple(pieces), id_type, dict(cfg.storage_options))


def read_piece(piece: Piece, columns: Sequence[str], storage_options: dict | None = None) -> pa.Table:
    """Read one piece's columns with pyarrow (runs inside a Dask task)."""
    fs, inner = filesystem(piece.path, storage_options)

    def read():
        with _open(fs, inner) as f:
            try:
                return pq.ParquetFile(f).read_row_groups(list(piece.row_groups), columns=list(columns))
            except Exception as err:
                raise _read_error(piece.path, err, "Reading") from None

    table = retry_transient(read, "Reading", piece.path)
    if table.num_rows != piece.n_rows:
        raise DataError(
            f"Parquet file {piece.path!r} changed while the job ran ({table.num_rows} rows read, "
            f"{piece.n_rows} expected). Do not rewrite a snapshot while it is being processed."
        )
    return table


# --- writing ------------------------------------------------------------------------------


_RENAME_EXCHANGE = 2
_AT_FDCWD = -100


def _renameat2():
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


class PartitionWriter:
    """Stage the files of one table partition, then commit them atomically.

    >>> w = PartitionWriter(root, "memberships", "2026-01-31")    # doctest: +SKIP
    >>> pq.write_table(t, w.file("part-00000.parquet"))           # doctest: +SKIP
    >>> w.commit()                                                # doctest: +SKIP
    """

    def __init__(self, root: str, table: str, date: str, *, partition_key: str = "dt", storage_options=None):
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
        self.fs.makedirs(self.staged, exist_ok=True)
        self.fs.makedirs(f"{base}/{table}", exist_ok=True)

    def file(self, name: str) -> str:
        """Path to write a staged file to (local path or URL inside the staging area)."""
        return _url(self.fs, f"{self.staged}/{name}")

    @property
    def directory(self) -> str:
        """The staged partition directory (local path or URL): files written under it are committed."""
        return _url(self.fs, self.staged)

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

            def replace():
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


class DeltaPartitionWriter:
    """Write one partition of a Delta table: the files go straight into the table directory,
    under ``<table>/<key>=<date>/run-<id>/`` (invisible to every reader until committed), and
    :meth:`commit` replaces the partition with them in one Delta commit (see :mod:`gmm_dask.storage.delta`).
    Files of a run that never commits are removed by :meth:`abort`, or later by ``vacuum``."""

    def __init__(self, root: str, table: str, date: str, *, partition_key: str = "dt", storage_options=None):
        from gmm_dask.storage import delta

        self.fs, base = filesystem(root, storage_options)
        self.storage_options = storage_options
        self.table, self.key, self.date = table, partition_key, date
        self.run = f"{time.strftime('%Y%m%dT%H%M%S')}-{uuid.uuid4().hex[:8]}"
        self.table_dir = f"{base.rstrip('/')}/{table}"
        self.table_uri = _url(self.fs, self.table_dir)
        self.staged = f"{self.table_dir}/{partition_key}={date}/run-{self.run}"
        self.partition = f"{self.table_dir}/{partition_key}={date}"
        self.committed = False

        def check():
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

    def file(self, name: str) -> str:
        return _url(self.fs, f"{self.staged}/{name}")

    @property
    def directory(self) -> str:
        return _url(self.fs, self.staged)

    def commit(self) -> str:
        from gmm_dask.storage import delta

        def files():
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
        self.committed = True
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


def _parquet_options(schema: pa.Schema) -> dict:
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


def write_table_file(table: pa.Table, path: str, storage_options: dict | None = None) -> None:
    """Write one Parquet file (see :func:`_parquet_options`) to a local path or URL."""
    options = _parquet_options(table.schema)
    if "://" in path:
        fs, inner = filesystem(path, storage_options)
        with fs.open(inner, "wb") as f:
            pq.write_table(table, f, **options)
    else:
        pq.write_table(table, path, **options)


def write_csv_file(table: pa.Table, path: str, storage_options: dict | None = None) -> None:
    """One CSV file with a header (list columns are not allowed)."""
    import pyarrow.csv as pacsv

    fs, inner = filesystem(path, storage_options)
    with fs.open(inner, "wb") as f:
        pacsv.write_csv(table, f)


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
        storage_options: dict | None = None,
        table_format: str = "parquet",
    ):
        if table_format not in TABLE_FORMATS:
            raise ConfigError(f"Unknown table format {table_format!r}; use one of {TABLE_FORMATS}.")
        self.root, self.tables, self.date = root, list(tables), date
        self.storage_options = storage_options
        self.table_format = table_format
        self.writers: dict[str, PartitionWriter | DeltaPartitionWriter] = {}
        self.paths: dict[str, str] = {}

    def _writer(self, table: str):
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

    def __exit__(self, exc_type, exc, tb) -> None:
        if exc_type is not None:
            self._abort()
            return
        try:
            _faults.point("before_commit")
            for t in self.tables:
                self.paths[t] = self.writers[t].commit()
        except BaseException:
            self._abort()
            raise


def write_partition(
    root: str,
    table: str,
    date: str,
    data: pa.Table,
    storage_options: dict | None = None,
    table_format: str = "parquet",
) -> str:
    """Write one table's partition of ``date`` as a single file, committed atomically."""
    with StagedPartitions(root, [table], date, storage_options, table_format) as st:
        st.write(table, data)
    return st.paths[table]


def partition_path(root: str, table: str, date: str, partition_key: str = "dt") -> str:
    return f"{root.rstrip('/')}/{table}/{partition_key}={date}"


def _is_delta(fs, table_dir: str) -> bool:
    from gmm_dask.storage import delta

    return delta.is_delta_table(fs, table_dir)


def _partition_files(root: str, table: str, date: str, storage_options: dict | None):
    """(fs, partition path, its Parquet files as paths in fs, or None if there is no partition).

    A Delta table (``<root>/<table>/_delta_log``) gives the files of its current version; the
    Parquet layout gives the files under the partition directory."""
    fs, base = filesystem(root, storage_options)
    path = partition_path(base, table, date)
    table_dir = f"{base.rstrip('/')}/{table}"

    def find():
        if table not in EXPORT_TABLES and _is_delta(fs, table_dir):
            from gmm_dask.storage import delta

            t = delta.open_table(_url(fs, table_dir), storage_options)
            files = [fs._strip_protocol(u) for u in delta.partition_file_uris(t, "dt", date)]
            return fs, path, files or None
        if not fs.exists(path):
            return fs, path, None
        return fs, path, sorted(f for f in fs.find(path) if f.endswith(".parquet"))

    return retry_transient(find, "Listing", _url(fs, table_dir))


def partition_files(root: str, table: str, date: str, storage_options: dict | None = None) -> list[str]:
    """The Parquet files of a committed partition, as paths or URLs ([] if there is none)."""
    fs, _, files = _partition_files(root, table, date, storage_options)
    if not files:
        return []
    return [_url(fs, f) for f in files]


def partition_dates(root: str, table: str, storage_options: dict | None = None) -> list[str]:
    """The dates that have a committed partition of ``table`` under ``root``, in order."""
    fs, base = filesystem(root, storage_options)
    table_dir = f"{base.rstrip('/')}/{table}"
    if table not in EXPORT_TABLES and retry_transient(
        lambda: _is_delta(fs, table_dir), "Listing", _url(fs, table_dir)
    ):
        from gmm_dask.storage import delta

        t = delta.open_table(_url(fs, table_dir), storage_options)
        return delta.partition_values(t, "dt")
    return sorted(
        n.split("=", 1)[1]
        for n in list_names(f"{root.rstrip('/')}/{table}", storage_options)
        if n.startswith("dt=")
    )


def read_partition(
    root: str,
    table: str,
    date: str,
    columns: Sequence[str] | None = None,
    storage_options: dict | None = None,
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
    root: str, table: str, date: str, storage_options: dict | None = None
) -> dict[str, str] | None:
    """The gmm-dask key-value metadata of a committed partition (None if there is none)."""
    fs, _, files = _partition_files(root, table, date, storage_options)
    if not files:
        return None
    with fs.open(files[0], "rb") as f:
        meta = pq.read_schema(f).metadata or {}
    return {k.decode(): v.decode() for k, v in meta.items() if k.startswith(b"gmm_dask.")}


# --- small documents (model registry, reports) ------------------------------------------------


def read_text(path: str, storage_options: dict | None = None) -> str:
    fs, inner = filesystem(path, storage_options)

    def read():
        with fs.open(inner, "r", encoding="utf-8") as f:
            return f.read()

    return retry_transient(read, "Reading", path)


def write_text_atomic(path: str, text: str, storage_options: dict | None = None) -> str:
    """Write a small text file in one step; returns where it is (an absolute path for local
    files, the URL otherwise). Local disks: a temporary name and a rename. Object stores: a
    single ``PUT`` (atomic there: readers get the old or the new object, whole)."""
    fs, inner = filesystem(path, storage_options)
    if not _is_local(fs):
        retry_transient(lambda: fs.pipe_file(inner, text.encode("utf-8")), "Writing", path)
        return fs.unstrip_protocol(inner)
    parent = inner.rsplit("/", 1)[0]
    fs.makedirs(parent, exist_ok=True)
    tmp = f"{parent}/.{inner.rsplit('/', 1)[-1]}.{uuid.uuid4().hex}.tmp"
    with fs.open(tmp, "w", encoding="utf-8") as f:
        f.write(text)
    fs.mv(tmp, inner)
    return str(Path(inner).resolve())


def exists(path: str, storage_options: dict | None = None) -> bool:
    fs, inner = filesystem(path, storage_options)
    return retry_transient(lambda: fs.exists(inner), "Checking", path)


def list_names(path: str, storage_options: dict | None = None) -> list[str]:
    """Names of the entries directly under ``path`` ([] if it does not exist)."""
    fs, inner = filesystem(path, storage_options)

    def names():
        if not fs.exists(inner):
            return []
        return [e.rstrip("/").rsplit("/", 1)[-1] for e in fs.ls(inner, detail=False)]

    return retry_transient(names, "Listing", path)


#: Stores whose conditional PUT (``If-None-Match: *``) gmm-dask uses, checked once per bucket.
_CONDITIONAL_PUT = ("s3", "s3a")
_CONDITIONAL_CHECKED: dict[tuple[str, str], bool] = {}


def _is_precondition_failed(err: BaseException) -> bool:
    if isinstance(err, FileExistsError):
        return True
    for e in (err, err.__cause__, err.__context__):
        response = getattr(e, "response", None)
        if isinstance(response, dict):
            meta = response.get("ResponseMetadata") or {}
            code = (response.get("Error") or {}).get("Code")
            if code in ("PreconditionFailed", "ConditionalRequestConflict") or meta.get("HTTPStatusCode") in (
                409,
                412,
            ):
                return True
    return False


def _put_if_absent(fs, inner: str, data: bytes, url: str) -> bool:
    """One conditional PUT; False if the object exists (412, or 409 for a concurrent one)."""
    try:
        retry_transient(lambda: fs.pipe_file(inner, data, mode="create"), "Writing", url)
        return True
    except Exception as err:
        if _is_precondition_failed(err):
            return False
        raise


def _check_conditional_put(fs, inner: str, url: str) -> None:
    """Once per bucket: a second conditional PUT of the same key must be refused. A store that
    ignores ``If-None-Match`` would let two writers both 'create' one key."""
    bucket = inner.split("/", 1)[0]
    key = (_protocols(fs)[0], bucket)
    if key in _CONDITIONAL_CHECKED:
        return
    parts = inner.split("/")
    # beside the registry's versions/ or the locks' folder, never inside a version's own folder
    where = "/".join(parts[:-2] if len(parts) > 3 else parts[:-1])
    probe = f"{where}/.gmm-dask-conditional-put-{uuid.uuid4().hex}"
    try:
        first = _put_if_absent(fs, probe, b"1", url)
        second = _put_if_absent(fs, probe, b"2", url)
    except TypeError:  # this filesystem has no mode="create"
        first, second = True, True
    finally:
        with contextlib.suppress(Exception):
            fs.rm(probe)
    if not (first and not second):
        raise ExclusiveWriteUnsupported(
            f"The store at {url!r} ignores conditional writes (If-None-Match: *): two runs could both "
            "create the same model version or lock. gmm-dask refuses to write the registry or publish "
            "there; use a store with conditional writes (AWS S3, MinIO, Cloudflare R2, SeaweedFS) or "
            "a local/shared-filesystem path for output.registry."
        )
    _CONDITIONAL_CHECKED[key] = True


def create_exclusive(path: str, text: str, storage_options: dict | None = None) -> bool:
    """Create a small file only if it does not exist yet, atomically; False if it exists.

    Local disks: ``O_EXCL`` on a temporary name's hard link, so the file appears whole. S3:
    a conditional ``PUT`` (``If-None-Match: *``; checked once per bucket that the store honours
    it). Other stores: :class:`ExclusiveWriteUnsupported`."""
    fs, inner = filesystem(path, storage_options)
    data = text.encode("utf-8")
    if _is_local(fs):
        parent = inner.rsplit("/", 1)[0]
        os.makedirs(parent, exist_ok=True)
        tmp = f"{parent}/.{inner.rsplit('/', 1)[-1]}.{uuid.uuid4().hex}.tmp"
        with open(tmp, "wb") as f:
            f.write(data)
        try:
            os.link(tmp, inner)  # fails if inner exists: exclusive, and never a partial file
            return True
        except FileExistsError:
            return False
        except OSError:  # a filesystem without hard links: O_EXCL on the file itself
            try:
                fd = os.open(inner, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
            except FileExistsError:
                return False
            with os.fdopen(fd, "wb") as f:
                f.write(data)
            return True
        finally:
            os.unlink(tmp)
    if not any(p in _CONDITIONAL_PUT for p in _protocols(fs)):
        raise ExclusiveWriteUnsupported(
            f"{path!r}: gmm-dask has no exclusive create for {_protocols(fs)[0]}:// stores (no "
            "conditional write it can rely on), so two runs could claim the same model version or "
            "lock. Put output.registry on S3 (conditional writes) or a local/shared-filesystem path."
        )
    _check_conditional_put(fs, inner, path)
    return _put_if_absent(fs, inner, data, path)


# --- publishing: one writer per published date; candidates promoted later ----------------------


#: The publish locks' folder under ``output.root``: ``dt=<date>.lock`` while a run writes that date.
LOCKS_DIR = "_locks"


def held_publish_locks(root: str, storage_options: dict | None = None) -> list[str]:
    """The publish locks held now under ``root`` (their file names, sorted): the dates some run
    is writing, or a dead run left locked."""
    return sorted(
        n for n in list_names(f"{root.rstrip('/')}/{LOCKS_DIR}", storage_options) if n.endswith(".lock")
    )


def delta_tables(root: str, storage_options: dict | None = None) -> list[str]:
    """The names of the Delta tables directly under ``root`` (sorted)."""
    fs, base = filesystem(root, storage_options)
    base = base.rstrip("/")
    return [
        n
        for n in sorted(list_names(root, storage_options))
        if not n.startswith("_")
        and n not in EXPORT_TABLES
        and retry_transient(lambda n=n: _is_delta(fs, f"{base}/{n}"), "Listing", root)
    ]


@contextlib.contextmanager
def publish_lock(root: str, date: str, storage_options: dict | None = None, *, owner: str = ""):
    """Hold ``<root>/_locks/dt=<date>.lock`` while this run writes the published partitions of
    ``date``. Created exclusively (``O_EXCL`` on local disks); a lock left by a process that no
    longer exists on this host is taken over; a live one raises :class:`PublishConflictError`,
    so two runs never interleave their writes of one date. On S3 the lock is a conditional
    ``PUT``, exclusive too."""
    import socket

    fs, base = filesystem(root, storage_options)
    path = f"{base.rstrip('/')}/{LOCKS_DIR}/dt={date}.lock"
    url = _url(fs, path)
    me = {
        "pid": os.getpid(),
        "host": socket.gethostname(),
        "since": time.strftime("%Y-%m-%dT%H:%M:%S"),
        "run": owner,
    }
    for _ in range(2):
        try:
            created = create_exclusive(url, json.dumps(me), storage_options)
        except ExclusiveWriteUnsupported:  # best effort there: check, then write (see the README)
            logger.warning("No exclusive create on %s: the publish lock is best effort", url)
            created = not exists(url, storage_options)
            if created:
                write_text_atomic(url, json.dumps(me), storage_options)
        if created:
            break
        try:
            held = json.loads(read_text(url, storage_options))
        except (OSError, ValueError):
            held = {}
        if held.get("host") == me["host"] and held.get("pid") and not _alive(int(held["pid"])):
            with contextlib.suppress(FileNotFoundError):
                fs.rm(path)
            logger.warning("Took over the publish lock of %s left by dead process %s", date, held.get("pid"))
            continue
        raise PublishConflictError(
            f"Snapshot {date} is being published by another run (pid {held.get('pid')} on "
            f"{held.get('host')}, run {held.get('run') or '?'}, since {held.get('since')}); this run "
            f"wrote nothing for {date}. Retry when that run has finished (lock: {url})."
        )
    else:  # the takeover lost a race: someone else holds it now
        raise PublishConflictError(
            f"Snapshot {date} is being published by another run (lock {url}); this run wrote nothing."
        )
    try:
        yield
    finally:
        with contextlib.suppress(FileNotFoundError):
            retry_transient(lambda: fs.rm(path), "Releasing", url)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def candidates_root(root: str, run_id: str) -> str:
    """Where a run that does not publish writes its tables: ``<root>/_candidates/<run_id>``."""
    return f"{root.rstrip('/')}/_candidates/{run_id}"


def copy_partitions(
    src_root: str,
    dst_root: str,
    tables: Sequence[str],
    date: str,
    storage_options=None,
    table_format: str = "parquet",
) -> dict:
    """Copy one date's partitions of ``tables`` from ``src_root`` into ``dst_root``, committing
    them together (each atomically): how a candidate is promoted."""
    fs, src = filesystem(src_root, storage_options)
    sources: dict[str, list[tuple[str, str]]] = {}
    for t in tables:
        part = partition_path(src, t, date)
        if t in EXPORT_TABLES or not _is_delta(fs, f"{src.rstrip('/')}/{t}"):
            found = sorted(fs.find(part)) if fs.exists(part) else []
            sources[t] = [(f, f[len(part) :].lstrip("/")) for f in found]
        else:
            _, _, files = _partition_files(src_root, t, date, storage_options)
            sources[t] = [(f, f"part-{i:05d}.parquet") for i, f in enumerate(files or [])]
        if not sources[t]:
            raise DataError(
                f"Candidate partition {partition_path(src_root, t, date)!r} is missing or empty; nothing was "
                "published. Re-run the candidate."
            )
    with StagedPartitions(dst_root, tables, date, storage_options, table_format) as st:
        for t in tables:
            for f, name in sources[t]:
                fs_dst, dst = filesystem(st.file(t, name), storage_options)
                if _is_local(fs) and _is_local(fs_dst):
                    os.makedirs(os.path.dirname(dst), exist_ok=True)
                    shutil.copyfile(f, dst)
                else:
                    with fs.open(f, "rb") as a, fs_dst.open(dst, "wb") as b:
                        shutil.copyfileobj(a, b)
    return st.paths


def delta_vacuum(
    table_url: str, storage_options: dict | None = None, retention_hours: int = 168, dry_run: bool = True
) -> list[str]:
    """Delete the files of a Delta output table that no version within ``retention_hours``
    references (replaced partitions, files of killed writers); returns them. Versions older
    than the retention are no longer readable afterwards."""
    from gmm_dask.storage import delta

    return delta.vacuum(table_url, storage_options, retention_hours, dry_run)
