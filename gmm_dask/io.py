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
    the new files are copied in after the old ones are removed (documented in the README).
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
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import fsspec
import pyarrow as pa
import pyarrow.parquet as pq

from . import _faults
from .config import SNAPSHOT_RE, InputConfig
from .errors import DataError

logger = logging.getLogger(__name__)

#: Target rows per piece (one Dask task / one output file).
PIECE_ROWS = 262_144
STALE_STAGING_SECONDS = 6 * 3600


def filesystem(path: str, storage_options: dict | None = None):
    """(fsspec filesystem, path inside it) for a local path or URL."""
    fs, inner = fsspec.core.url_to_fs(path, **(storage_options or {}))
    return fs, inner


def _is_local(fs) -> bool:
    return "file" in (fs.protocol if isinstance(fs.protocol, tuple) else (fs.protocol,))


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


def list_snapshots(cfg: InputConfig) -> list[str]:
    """Dates of the snapshots present under ``cfg.path`` (sorted)."""
    fs, root = filesystem(cfg.path, cfg.storage_options)
    if not fs.exists(root):
        raise DataError(
            f"Input path {cfg.path!r} (input.path) does not exist. Check the path, or create the "
            "demo data with `gmm-dask demo`."
        )
    prefix = f"{cfg.partition_key}="
    dates = []
    for entry in fs.ls(root, detail=True):
        name = entry["name"].rstrip("/").rsplit("/", 1)[-1]
        if (
            entry["type"] == "directory"
            and name.startswith(prefix)
            and SNAPSHOT_RE.match(name[len(prefix) :])
        ):
            dates.append(name[len(prefix) :])
    return sorted(dates)


def resolve_snapshot(cfg: InputConfig, date: str | None) -> str:
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
    with _open(fs, path) as f:
        try:
            return pq.ParquetFile(f).metadata
        except Exception as err:
            raise _read_error(path, err, "Reading the footer of") from None


def _check_schema(path: str, schema: pa.Schema, cfg: InputConfig) -> None:
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


def open_snapshot(cfg: InputConfig, date: str, piece_rows: int = PIECE_ROWS) -> Snapshot:
    """Check every file of one snapshot (footers only) and cut it into pieces."""
    fs, root = filesystem(cfg.path, cfg.storage_options)
    part = f"{root.rstrip('/')}/{cfg.partition_key}={date}"
    if not fs.exists(part):
        resolve_snapshot(cfg, date)  # raises the helpful "not found" error
    visible = sorted(
        f
        for f in fs.find(part)
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
    with _open(fs, inner) as f:
        try:
            table = pq.ParquetFile(f).read_row_groups(list(piece.row_groups), columns=list(columns))
        except Exception as err:
            raise _read_error(piece.path, err, "Reading") from None
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
        self._recover()
        self.fs.makedirs(self.staged, exist_ok=True)
        self.fs.makedirs(f"{base}/{table}", exist_ok=True)

    def file(self, name: str) -> str:
        """Path to write a staged file to (local path or URL inside the staging area)."""
        return f"{self.staged}/{name}"

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
        else:
            if self.fs.exists(self.target):
                self.fs.rm(self.target, recursive=True)
            self.fs.mv(self.staged, self.target, recursive=True)
        self.abort()
        logger.info("Committed %s", self.target)
        return self.target

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
            with contextlib.suppress(FileNotFoundError):
                self.fs.rm(run_dir, recursive=True)


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
    partitions after a clean exit.
    """

    def __init__(self, root: str, tables: Sequence[str], date: str, storage_options: dict | None = None):
        self.root, self.tables, self.date = root, list(tables), date
        self.storage_options = storage_options
        self.writers: dict[str, PartitionWriter] = {}
        self.paths: dict[str, str] = {}

    def __enter__(self) -> StagedPartitions:
        try:
            for t in self.tables:
                self.writers[t] = PartitionWriter(
                    self.root, t, self.date, storage_options=self.storage_options
                )
        except BaseException:
            self._abort()
            raise
        return self

    def file(self, table: str, name: str) -> str:
        return self.writers[table].file(name)

    def directory(self, table: str) -> str:
        """The staged partition directory of ``table`` (files written under it are committed)."""
        return self.writers[table].staged

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
    root: str, table: str, date: str, data: pa.Table, storage_options: dict | None = None
) -> str:
    """Write one table's partition of ``date`` as a single file, committed atomically."""
    with StagedPartitions(root, [table], date, storage_options) as st:
        st.write(table, data)
    return st.paths[table]


def partition_path(root: str, table: str, date: str, partition_key: str = "dt") -> str:
    return f"{root.rstrip('/')}/{table}/{partition_key}={date}"


def _partition_files(root: str, table: str, date: str, storage_options: dict | None):
    fs, base = filesystem(root, storage_options)
    path = partition_path(base, table, date)
    if not fs.exists(path):
        return fs, path, None
    return fs, path, sorted(f for f in fs.find(path) if f.endswith(".parquet"))


def partition_files(root: str, table: str, date: str, storage_options: dict | None = None) -> list[str]:
    """The Parquet files of a committed partition, as paths or URLs ([] if there is none)."""
    fs, _, files = _partition_files(root, table, date, storage_options)
    if not files:
        return []
    return [f if _is_local(fs) else fs.unstrip_protocol(f) for f in files]


def partition_dates(root: str, table: str, storage_options: dict | None = None) -> list[str]:
    """The dates that have a committed partition of ``table`` under ``root``, in order."""
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
    return ds.dataset(files, format="parquet", filesystem=fs).to_table(
        columns=list(columns) if columns is not None else None
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
    with fs.open(inner, "r", encoding="utf-8") as f:
        return f.read()


def write_text_atomic(path: str, text: str, storage_options: dict | None = None) -> str:
    """Write a small text file via a temporary name and a rename; returns where it is (an
    absolute path for local files, the URL otherwise)."""
    fs, inner = filesystem(path, storage_options)
    parent = inner.rsplit("/", 1)[0]
    fs.makedirs(parent, exist_ok=True)
    tmp = f"{parent}/.{inner.rsplit('/', 1)[-1]}.{uuid.uuid4().hex}.tmp"
    with fs.open(tmp, "w", encoding="utf-8") as f:
        f.write(text)
    fs.mv(tmp, inner)
    return str(Path(inner).resolve()) if _is_local(fs) else fs.unstrip_protocol(inner)


def exists(path: str, storage_options: dict | None = None) -> bool:
    fs, inner = filesystem(path, storage_options)
    return fs.exists(inner)


def list_names(path: str, storage_options: dict | None = None) -> list[str]:
    """Names of the entries directly under ``path`` ([] if it does not exist)."""
    fs, inner = filesystem(path, storage_options)
    if not fs.exists(inner):
        return []
    return [e.rstrip("/").rsplit("/", 1)[-1] for e in fs.ls(inner, detail=False)]


def make_dir_exclusive(path: str, storage_options: dict | None = None) -> None:
    """Create a directory; FileExistsError if it exists (exclusive on local disks)."""
    fs, inner = filesystem(path, storage_options)
    parent = inner.rsplit("/", 1)[0]
    fs.makedirs(parent, exist_ok=True)
    fs.mkdir(inner, create_parents=False)
    if not fs.exists(inner):  # object stores: mkdir is a no-op
        fs.makedirs(inner, exist_ok=True)


# --- publishing: one writer per published date; candidates promoted later ----------------------


class PublishConflictError(Exception):
    """Another run is publishing the same snapshot date right now."""


@contextlib.contextmanager
def publish_lock(root: str, date: str, storage_options: dict | None = None, *, owner: str = ""):
    """Hold ``<root>/_locks/dt=<date>.lock`` while this run writes the published partitions of
    ``date``. Created exclusively (``O_EXCL`` on local disks); a lock left by a process that no
    longer exists on this host is taken over; a live one raises :class:`PublishConflictError`,
    so two runs never interleave their writes of one date."""
    import json
    import socket

    fs, base = filesystem(root, storage_options)
    path = f"{base.rstrip('/')}/_locks/dt={date}.lock"
    fs.makedirs(path.rsplit("/", 1)[0], exist_ok=True)
    me = {
        "pid": os.getpid(),
        "host": socket.gethostname(),
        "since": time.strftime("%Y-%m-%dT%H:%M:%S"),
        "run": owner,
    }
    for _ in range(2):
        try:
            if _is_local(fs):
                fd = os.open(path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
                with os.fdopen(fd, "w") as f:
                    json.dump(me, f)
            else:  # no exclusive create on this store: best effort (see the README)
                if fs.exists(path):
                    raise FileExistsError(path)
                with fs.open(path, "w") as f:
                    json.dump(me, f)
            break
        except FileExistsError:
            try:
                with fs.open(path, "r") as f:
                    held = json.load(f)
            except (OSError, ValueError):
                held = {}
            if held.get("host") == me["host"] and held.get("pid") and not _alive(int(held["pid"])):
                with contextlib.suppress(FileNotFoundError):
                    fs.rm(path)
                logger.warning(
                    "Took over the publish lock of %s left by dead process %s", date, held.get("pid")
                )
                continue
            raise PublishConflictError(
                f"Snapshot {date} is being published by another run (pid {held.get('pid')} on "
                f"{held.get('host')}, run {held.get('run') or '?'}, since {held.get('since')}); this run "
                f"wrote nothing for {date}. Retry when that run has finished (lock: {path})."
            ) from None
    else:  # the takeover lost a race: someone else holds it now
        raise PublishConflictError(
            f"Snapshot {date} is being published by another run (lock {path}); this run wrote nothing."
        )
    try:
        yield
    finally:
        with contextlib.suppress(FileNotFoundError):
            fs.rm(path)


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
    src_root: str, dst_root: str, tables: Sequence[str], date: str, storage_options=None
) -> dict:
    """Copy one date's partitions of ``tables`` from ``src_root`` into ``dst_root``, committing
    them together (each atomically): how a candidate is promoted."""
    fs, src = filesystem(src_root, storage_options)
    for t in tables:
        if not fs.exists(partition_path(src, t, date)) or not fs.find(partition_path(src, t, date)):
            raise DataError(
                f"Candidate partition {partition_path(src_root, t, date)!r} is missing or empty; nothing was "
                "published. Re-run the candidate."
            )
    with StagedPartitions(dst_root, tables, date, storage_options) as st:
        for t in tables:
            part = partition_path(src, t, date)
            for f in sorted(fs.find(part)):
                name = f[len(part) :].lstrip("/")
                fs_dst, dst = filesystem(st.file(t, name), storage_options)
                if _is_local(fs) and _is_local(fs_dst):
                    shutil.copyfile(f, dst)
                else:
                    with fs.open(f, "rb") as a, fs_dst.open(dst, "wb") as b:
                        shutil.copyfileobj(a, b)
    return st.paths
