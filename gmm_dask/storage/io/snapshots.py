"""Reading the input: snapshot discovery, pieces with exact row counts.

A snapshot is one Hive partition ``<input.path>/<key>=YYYY-MM-DD/`` (or one partition of an
input Delta table). Its files' footers are read on the client (metadata only) to check columns
and types and to cut the data into *pieces* — runs of row groups of one file with known row
counts. Each piece is read with pyarrow inside a Dask task, selecting only the configured
columns, so data larger than memory stream through the workers.
"""

from __future__ import annotations

import hashlib
import json
import re
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import IO, TYPE_CHECKING, Protocol

import pyarrow as pa
import pyarrow.parquet as pq
from fsspec import AbstractFileSystem

from gmm_dask.errors import DataError
from gmm_dask.storage import delta
from gmm_dask.storage.io.fs import InputLocation, StorageOptions, _is_local, _url, filesystem, retry_transient

if TYPE_CHECKING:  # deltalake is optional
    from deltalake import DeltaTable

SNAPSHOT_RE = re.compile(r"^\d{4}-\d{2}-\d{2}$")
#: Target rows per piece (one Dask task / one output file).
PIECE_ROWS = 262_144


class SnapshotSource(InputLocation, Protocol):
    """Where the date-partitioned snapshots are (``path``, ``format``, ``storage_options``) and
    which columns they must have (the job's ``input`` config satisfies it)."""

    @property
    def partition_key(self) -> str: ...
    @property
    def id_column(self) -> str: ...
    @property
    def weight_column(self) -> str | None: ...
    @property
    def feature_names(self) -> list[str]: ...


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
    storage_options: StorageOptions
    #: a digest of every file's name (under the partition) and footer: row counts, sizes and
    #: column statistics; equal digests mean the same data, short of a rewrite that keeps them all
    fingerprint: str = ""

    @property
    def n_rows(self) -> int:
        return sum(p.n_rows for p in self.pieces)


def _input_delta_table(cfg: SnapshotSource) -> DeltaTable:
    """The input Delta table (its current version), checked readable file by file."""
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


def _open(fs: AbstractFileSystem, path: str) -> IO[bytes]:
    try:
        return fs.open(path, "rb")
    except OSError as err:  # missing file, permissions, network: storage trouble, retryable
        raise OSError(f"Opening Parquet file {path!r} failed: {err}") from err


def _footer(fs: AbstractFileSystem, path: str) -> pq.FileMetaData:
    def read() -> pq.FileMetaData:
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
    id_type: pa.DataType | None = None
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
    fp = _fingerprint(part, files, footers)
    return Snapshot(date, part, tuple(pieces), id_type, dict(cfg.storage_options), fp)


def _fingerprint(part: str, files: Sequence[str], footers: Sequence[pq.FileMetaData]) -> str:
    """The digest of the snapshot's files: each name relative to the partition, with its footer
    (row groups, their sizes and offsets, every column chunk's statistics)."""
    prefix = part.rstrip("/") + "/"
    digest = hashlib.sha256()
    for path, meta in zip(files, footers, strict=True):
        name = path[len(prefix) :] if path.startswith(prefix) else path.rsplit("/", 1)[-1]
        doc = json.dumps([name, meta.to_dict()], sort_keys=True, default=str)
        digest.update(doc.encode())
    return digest.hexdigest()[:32]


def read_piece(
    piece: Piece, columns: Sequence[str], storage_options: StorageOptions | None = None
) -> pa.Table:
    """Read one piece's columns with pyarrow (runs inside a Dask task)."""
    fs, inner = filesystem(piece.path, storage_options)

    def read() -> pa.Table:
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
