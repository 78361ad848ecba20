"""One publishing run's commits of one date, made visible together (see :mod:`.records`).

:class:`Publication` is held with the date's publish lock (:func:`~.publishing.publish_lock`):
every :class:`~.writers.StagedPartitions` of that date in this process commits through it. It
extends the pending record before each table's commit, writes the date's record once all are
committed, and — when the run fails, or a previous run of the date died half-way — puts back
the partitions the date had before (:func:`restore`).
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import shutil
import time
import uuid
from typing import Any

from fsspec import AbstractFileSystem

from gmm_dask.storage import _faults, delta
from gmm_dask.storage.io import records
from gmm_dask.storage.io.documents import write_text_atomic
from gmm_dask.storage.io.fs import StorageOptions, _first_line, _is_local, _url, filesystem, retry_transient
from gmm_dask.storage.io.writers import (
    DeltaPartitionWriter,
    PartitionStage,
    PartitionWriter,
    _exchange,
    partition_metadata,
    partition_path,
)

logger = logging.getLogger("gmm_dask.storage.io")


class Publication:
    """The commits of ``date``'s tables under ``root`` by one run (``owner``, for the record)."""

    def __init__(self, root: str, date: str, owner: str, storage_options: StorageOptions | None) -> None:
        self.root, self.date, self.owner = root, date, owner
        self.storage_options = storage_options
        self.fs, base = filesystem(root, storage_options)
        self.base = base.rstrip("/")
        self.run = f"{time.strftime('%Y%m%dT%H%M%S')}-{uuid.uuid4().hex[:8]}"
        self.pending: dict[str, Any] | None = None  # written before the first commit
        self.committed: dict[str, dict[str, Any]] = {}

    def begin(self) -> None:
        """Put back what a dead run of this date left half-published, then take the date's
        commits in this process (the caller holds the publish lock)."""
        left = records.read_json(self.fs, records.pending_path(self.base, self.date))
        if left is not None:
            done = records.read_json(self.fs, records.record_path(self.base, self.date))
            if done is None or done.get("run") != left.get("run"):
                restore(self.fs, self.base, self.date, left, self.storage_options)
                logger.warning(
                    "Snapshot %s: a run (%s, since %s) died while publishing it; put back the "
                    "tables it had replaced (%s)",
                    self.date,
                    left.get("owner") or left.get("run"),
                    left.get("since"),
                    ", ".join(sorted(left.get("tables", {}))),
                )
            _cleanup(self.fs, self.base, self.date, str(left.get("run")))
        records.set_active(self.root, self.date, self, self.storage_options)

    def commit(self, table: str, writer: PartitionStage) -> str:
        """Commit ``writer``'s partition of ``table``, its previous one kept readable until the
        record is written."""
        if self.pending is None:
            self.pending = {
                "date": self.date,
                "run": self.run,
                "owner": self.owner,
                "since": time.strftime("%Y-%m-%dT%H:%M:%S"),
                "tables": {},
            }
        if isinstance(writer, DeltaPartitionWriter):
            self._extend(table, {"format": "delta", "version": writer.read_version})
            path = writer.commit()
            entry: dict[str, Any] = {"format": "delta", "version": writer.version}
        else:
            assert isinstance(writer, PartitionWriter)
            had = retry_transient(
                lambda: self.fs.exists(writer.target), "Listing", _url(self.fs, writer.target)
            )
            self._extend(table, {"format": "parquet", "had_partition": had})
            if had:
                sup = records.superseded_dir(self.base, self.run, table, self.date)
                _move(self.fs, writer.target, sup)
            path = writer.commit()
            found = retry_transient(lambda: self.fs.find(writer.target), "Listing", path)
            entry = {"format": "parquet", "files": sorted(f[len(writer.target) + 1 :] for f in found)}
        from gmm_dask.segmentation.tables import MODEL_VERSION_KEY  # pandas: not to open a store

        meta = partition_metadata(self.root, table, self.date, self.storage_options) or {}
        if meta.get(MODEL_VERSION_KEY):
            entry["model_version"] = meta[MODEL_VERSION_KEY]
        self.committed[table] = entry
        _faults.point(f"committed_{table}")
        return path

    def _extend(self, table: str, entry: dict[str, Any]) -> None:
        assert self.pending is not None
        self.pending["tables"][table] = entry
        url = _url(self.fs, records.pending_path(self.base, self.date))
        write_text_atomic(url, json.dumps(self.pending, indent=1, sort_keys=True), self.storage_options)

    def finish(self) -> None:
        """Write the date's record (the commit point), then drop the pending record and the
        superseded partitions."""
        if self.pending is None:
            return
        path = records.record_path(self.base, self.date)
        previous = records.read_json(self.fs, path) or {}
        tables = {**previous.get("tables", {}), **self.committed}
        models = sorted({e["model_version"] for e in self.committed.values() if "model_version" in e})
        doc = {
            "date": self.date,
            "run": self.run,
            "owner": self.owner,
            "published_at": time.strftime("%Y-%m-%dT%H:%M:%S"),
            "model_version": models[0] if len(models) == 1 else None,
            "tables": tables,
        }
        write_text_atomic(
            _url(self.fs, path), json.dumps(doc, indent=1, sort_keys=True), self.storage_options
        )
        logger.info("Published snapshot %s: %s", self.date, ", ".join(sorted(self.committed)))
        _cleanup(self.fs, self.base, self.date, self.run)

    def abandon(self) -> None:
        """The run failed: put back the partitions it had replaced (best effort: if the store
        does not answer, readers keep reading them and the next run of the date puts them back)."""
        if self.pending is None:
            return
        try:
            restore(self.fs, self.base, self.date, self.pending, self.storage_options)
            _cleanup(self.fs, self.base, self.date, self.run)
        except Exception as err:  # the error that got us here is the one to report
            logger.warning(
                "Snapshot %s: could not put back the tables this run had replaced (%s); readers "
                "still read them as they were, and the next run of %s puts them back",
                self.date,
                _first_line(err),
                self.date,
            )

    def close(self) -> None:
        records.set_active(self.root, self.date, None, self.storage_options)


def restore(
    fs: AbstractFileSystem, base: str, date: str, doc: dict[str, Any], storage_options: StorageOptions | None
) -> None:
    """Put back every table a pending publication ``doc`` names as it was before that run."""
    for table, entry in sorted(doc.get("tables", {}).items()):
        if entry.get("format") == "delta":
            _restore_delta(fs, base, table, date, entry.get("version"), storage_options)
        else:
            sup = records.superseded_dir(base, str(doc["run"]), table, date)
            _restore_directory(fs, partition_path(base, table, date), sup, bool(entry.get("had_partition")))


def _restore_delta(
    fs: AbstractFileSystem,
    base: str,
    table: str,
    date: str,
    version: int | None,
    storage_options: StorageOptions | None,
) -> None:
    table_dir = f"{base}/{table}"
    uri = _url(fs, table_dir)

    def put_back() -> None:
        if not delta.is_delta_table(fs, table_dir):
            return
        now = delta.open_table(uri, storage_options)
        before = (
            []
            if version is None
            else delta.partition_file_uris(delta.open_table(uri, storage_options, version), "dt", date)
        )
        if sorted(delta.partition_file_uris(now, "dt", date)) == sorted(before):
            return
        files = [fs._strip_protocol(u) for u in before]
        delta.commit_partition(
            fs, table_dir, uri, "dt", date, files, storage_options, {"gmm_dask.run": "restore"}, now.version()
        )

    retry_transient(put_back, "Restoring", uri)


def _restore_directory(fs: AbstractFileSystem, target: str, superseded: str, had: bool) -> None:
    url = _url(fs, target)

    def put_back() -> None:
        if fs.exists(superseded):
            if _is_local(fs) and os.path.exists(target) and _exchange(superseded, target):
                shutil.rmtree(superseded)
                return
            if fs.exists(target):
                fs.rm(target, recursive=True)
            _move(fs, superseded, target)
        elif not had and fs.exists(target):
            fs.rm(target, recursive=True)

    retry_transient(put_back, "Restoring", url)


def _move(fs: AbstractFileSystem, src: str, dst: str) -> None:
    """Move a partition directory: a rename on local disks, a copy then delete on object stores."""
    if _is_local(fs):
        os.makedirs(os.path.dirname(dst), exist_ok=True)
        os.rename(src, dst)
        return

    def copy() -> None:
        fs.copy(src, dst, recursive=True)
        fs.rm(src, recursive=True)

    retry_transient(copy, "Moving", _url(fs, src))


def _cleanup(fs: AbstractFileSystem, base: str, date: str, run: str) -> None:
    """Drop a finished (or put back) publication's pending record and superseded partitions."""
    folder = f"{base}/{records.RECORDS_DIR}/_superseded/{run}"
    with contextlib.suppress(FileNotFoundError):
        retry_transient(lambda: fs.rm(records.pending_path(base, date)), "Removing", _url(fs, base))
    with contextlib.suppress(FileNotFoundError):
        if retry_transient(lambda: fs.exists(folder), "Listing", _url(fs, folder)):
            retry_transient(lambda: fs.rm(folder, recursive=True), "Removing", _url(fs, folder))
