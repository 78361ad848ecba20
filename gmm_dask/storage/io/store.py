"""A place that holds date-partitioned tables: its root, filesystem options and table format.

The outputs of a job (published, or a run's candidates) are one :class:`TableStore`; every read
and write of a table goes through it, so the storage options and the format are given once,
where the store is made, instead of at each call.
"""

from __future__ import annotations

from collections.abc import Sequence
from contextlib import AbstractContextManager
from dataclasses import dataclass, field

import pyarrow as pa

from gmm_dask.storage.io import records
from gmm_dask.storage.io.documents import exists, list_names, read_text, write_text_atomic
from gmm_dask.storage.io.fs import StorageOptions, filesystem
from gmm_dask.storage.io.publishing import (
    LOCKS_DIR,
    candidates_root,
    copy_partitions,
    delta_tables,
    delta_vacuum,
    held_publish_locks,
    publish_lock,
)
from gmm_dask.storage.io.writers import (
    StagedPartitions,
    partition_dates,
    partition_files,
    partition_metadata,
    read_partition,
)


@dataclass(frozen=True)
class TableStore:
    """Tables partitioned by snapshot date under ``root`` (a local path or an fsspec URL).

    Parameters
    ----------
    root : str
        The store's root: ``<root>/<table>/dt=<date>/``.
    storage_options : dict
        fsspec options (no credentials) for every file under ``root``.
    format : {"parquet", "delta"}
        How partitions are committed (see :class:`~gmm_dask.storage.io.StagedPartitions`).
    """

    root: str
    storage_options: StorageOptions = field(default_factory=dict)
    format: str = "parquet"

    def path(self, *parts: str) -> str:
        """``<root>/<parts...>``."""
        return "/".join([self.root.rstrip("/"), *parts])

    def candidates(self, run_id: str) -> TableStore:
        """The store a run that does not publish writes to: ``<root>/_candidates/<run_id>``."""
        return TableStore(candidates_root(self.root, run_id), self.storage_options, self.format)

    # --- tables ---------------------------------------------------------------------------------

    def read(self, table: str, date: str, columns: Sequence[str] | None = None) -> pa.Table:
        """A committed partition; DataError if absent."""
        return read_partition(self.root, table, date, columns, self.storage_options)

    def files(self, table: str, date: str) -> list[str]:
        """The data files of a committed partition (empty if absent)."""
        return partition_files(self.root, table, date, self.storage_options)

    def dates(self, table: str) -> list[str]:
        """Dates with a committed partition of ``table``, sorted."""
        return partition_dates(self.root, table, self.storage_options)

    def metadata(self, table: str, date: str) -> dict[str, str] | None:
        """The gmm-dask key-value metadata of a committed partition (None if there is none)."""
        return partition_metadata(self.root, table, date, self.storage_options)

    def stage(self, tables: Sequence[str], date: str) -> StagedPartitions:
        """Stage ``tables``' partitions of ``date``, committed together on a clean exit."""
        return StagedPartitions(self.root, tables, date, self.storage_options, self.format)

    def copy_from(self, source: TableStore, tables: Sequence[str], date: str) -> dict[str, str]:
        """Copy one date's partitions of ``tables`` from ``source``, committed together."""
        return copy_partitions(source.root, self.root, tables, date, self.storage_options, self.format)

    # --- publishing -----------------------------------------------------------------------------

    def pending(self, date: str) -> bool:
        """Whether another run's publication of ``date`` is pending (in progress, or killed
        half-way: readers read the date as before it; its next publishing run puts it back)."""
        return records.is_torn(self.root, date, self.storage_options)

    def pending_dates(self) -> list[str]:
        """Dates whose publication by some run is pending (see :meth:`pending`), sorted."""
        fs, base = filesystem(self.root, self.storage_options)
        return [d for d in records.pending_dates(fs, base) if self.pending(d)]

    def lock(self, date: str, *, owner: str = "", wait_seconds: float = 0.0) -> AbstractContextManager[None]:
        """Hold the publish lock of ``date``, waiting up to ``wait_seconds`` for a run holding it
        (see :func:`~gmm_dask.storage.io.publish_lock`)."""
        return publish_lock(self.root, date, self.storage_options, owner=owner, wait_seconds=wait_seconds)

    def held_locks(self) -> list[str]:
        """Dates whose publish lock is held now."""
        return held_publish_locks(self.root, self.storage_options)

    @property
    def locks_dir(self) -> str:
        return self.path(LOCKS_DIR)

    def delta_tables(self) -> list[str]:
        """Names of the Delta tables under ``root``."""
        return delta_tables(self.root, self.storage_options)

    def vacuum(self, table: str, retention_hours: int, dry_run: bool) -> list[str]:
        """Delete (or list, with ``dry_run``) the unreferenced files of a Delta table."""
        return delta_vacuum(self.path(table), self.storage_options, retention_hours, dry_run)

    # --- small documents ------------------------------------------------------------------------

    def exists(self, *parts: str) -> bool:
        return exists(self.path(*parts), self.storage_options)

    def read_text(self, *parts: str) -> str:
        return read_text(self.path(*parts), self.storage_options)

    def write_text(self, text: str, *parts: str) -> str:
        """Write a small document atomically; returns its path."""
        return write_text_atomic(self.path(*parts), text, self.storage_options)

    def list_names(self, *parts: str) -> list[str]:
        return list_names(self.path(*parts), self.storage_options)
