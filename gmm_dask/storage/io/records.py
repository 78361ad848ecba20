"""Publish records: which version of each table makes up a published date.

A publishing run commits a date's tables one after another (each atomically). So that no reader
ever joins one model's memberships to another model's segments, the run first writes a
*pending* record, ``<root>/_published/dt=<date>.pending.json``, and extends it before each
table's commit with where that table's previous partition stays readable:

* a Delta table: the table version the run started from (the date's partition as it was);
* the Parquet layout (and CSV exports): whether the date had a partition, which the run moves to
  ``<root>/_published/_superseded/<run>/<table>/dt=<date>/`` before putting its own in place.

When every table is committed the run writes the *record*, ``<root>/_published/dt=<date>.json``
(the run, each table's Delta version or files, the model version), in one atomic write — the
date's commit point — then drops the pending record and the superseded partitions.

While a pending record of another run exists, gmm-dask's readers (:func:`pending_view`) read each
table it names as it was before that run touched it, so a date is read whole, from one model,
even after a run was killed between two tables; the next publishing run of the date restores the
previous partitions (:mod:`gmm_dask.storage.io.publication`). Other readers of Delta tables read
the date at the versions its record names (README, "Reading the outputs").
"""

from __future__ import annotations

import json
import threading
from dataclasses import dataclass
from typing import Any, Protocol

from fsspec import AbstractFileSystem

from gmm_dask.storage.io.fs import StorageOptions, _url, filesystem, retry_transient

#: The records' folder under an output root.
RECORDS_DIR = "_published"
PENDING_SUFFIX = ".pending.json"


class Committer(Protocol):
    """A publication in progress (:class:`~gmm_dask.storage.io.publication.Publication`): the
    date's tables are committed through it."""

    def commit(self, table: str, writer: Any) -> str: ...


#: Publications in progress in this process, by (root URL, date). Their own reads see what they
#: committed (they hold the date's publish lock: nobody else writes it).
_ACTIVE: dict[tuple[str, str], Committer] = {}
_ACTIVE_LOCK = threading.Lock()


def root_key(root: str, storage_options: StorageOptions | None) -> str:
    fs, base = filesystem(root, storage_options)
    return _url(fs, base.rstrip("/"))


def set_active(
    root: str, date: str, publication: Committer | None, storage_options: StorageOptions | None
) -> None:
    """Register (or with None, drop) this process's publication of ``date`` under ``root``."""
    key = (root_key(root, storage_options), date)
    with _ACTIVE_LOCK:
        if publication is None:
            _ACTIVE.pop(key, None)
        else:
            _ACTIVE[key] = publication


def active(root: str, date: str, storage_options: StorageOptions | None) -> Committer | None:
    """This process's publication of ``date`` under ``root``, if one is in progress."""
    with _ACTIVE_LOCK:
        return _ACTIVE.get((root_key(root, storage_options), date))


def record_path(base: str, date: str) -> str:
    return f"{base.rstrip('/')}/{RECORDS_DIR}/dt={date}.json"


def pending_path(base: str, date: str) -> str:
    return f"{base.rstrip('/')}/{RECORDS_DIR}/dt={date}{PENDING_SUFFIX}"


def superseded_dir(base: str, run: str, table: str, date: str) -> str:
    """Where a publishing run keeps a table's previous partition until its record is written."""
    return f"{base.rstrip('/')}/{RECORDS_DIR}/_superseded/{run}/{table}/dt={date}"


def read_json(fs: AbstractFileSystem, path: str) -> dict[str, Any] | None:
    """A record (None if absent)."""

    def read() -> dict[str, Any] | None:
        try:
            with fs.open(path, "rb") as f:
                doc: dict[str, Any] = json.loads(f.read().decode())
                return doc
        except FileNotFoundError:
            return None

    return retry_transient(read, "Reading", _url(fs, path))


def pending(fs: AbstractFileSystem, base: str, date: str) -> dict[str, Any] | None:
    """The pending record of ``date`` that still governs reads: None when there is none, or when
    the date's record shows that run finished (it died only while cleaning up)."""
    doc = read_json(fs, pending_path(base, date))
    if doc is None:
        return None
    done = read_json(fs, record_path(base, date))
    if done is not None and done.get("run") == doc.get("run"):
        return None
    return doc


@dataclass(frozen=True)
class View:
    """Where a reader finds a table's partition of a date while another run's publication of that
    date is pending: ``absent`` (the date had none), a Delta ``version``, or a Parquet ``directory``
    (the superseded partition). Neither set: the partition as it is now."""

    absent: bool = False
    version: int | None = None
    directory: str | None = None


def pending_view(
    fs: AbstractFileSystem, base: str, table: str, date: str, storage_options: StorageOptions | None
) -> View | None:
    """How to read ``table``'s partition of ``date`` whole (see :class:`View`); None: as it is now
    (no pending publication of another run names the table)."""
    if active(_url(fs, base), date, storage_options) is not None:
        return None
    doc = pending(fs, base, date)
    entry = (doc or {}).get("tables", {}).get(table)
    if doc is None or entry is None:
        return None
    if entry.get("format") == "delta":
        version = entry.get("version")
        return View(absent=True) if version is None else View(version=int(version))
    sup = superseded_dir(base, str(doc["run"]), table, date)
    if retry_transient(lambda: fs.exists(sup), "Listing", _url(fs, sup)):
        return View(directory=sup)
    return None if entry.get("had_partition") else View(absent=True)


def pending_dates(fs: AbstractFileSystem, base: str) -> list[str]:
    """Dates with a pending record under ``base``."""
    folder = f"{base.rstrip('/')}/{RECORDS_DIR}"

    def names() -> list[str]:
        try:
            return [p.rstrip("/").rsplit("/", 1)[-1] for p in fs.ls(folder, detail=False)]
        except FileNotFoundError:
            return []

    found = retry_transient(names, "Listing", _url(fs, folder))
    return sorted(n[3 : -len(PENDING_SUFFIX)] for n in found if n.endswith(PENDING_SUFFIX))


def is_torn(root: str, date: str, storage_options: StorageOptions | None) -> bool:
    """Whether another run's publication of ``date`` is pending (it is in progress, or it died
    half-way: then the next publishing run of the date puts the previous tables back)."""
    fs, base = filesystem(root, storage_options)
    if active(root, date, storage_options) is not None:
        return False
    return pending(fs, base.rstrip("/"), date) is not None
