"""Parquet in and out: snapshot discovery, pieces with exact row counts, atomic partition commits.

Reading (:mod:`.snapshots`)
    A snapshot is one Hive partition ``<input.path>/<key>=YYYY-MM-DD/``. Its files' footers are
    read on the client (metadata only) to check columns and types and to cut the data into
    *pieces* — runs of row groups of one file with known row counts. Each piece is read with
    pyarrow inside a Dask task, selecting only the configured columns, so data larger than
    memory stream through the workers.

Writing (:mod:`.writers`)
    A table partition ``<root>/<table>/dt=YYYY-MM-DD/`` is first written in full to
    ``<root>/_staging/<table>/<run>/`` (outside the table, so no reader ever globs it) and then
    committed in one step: on Linux local filesystems an atomic directory exchange
    (``renameat2(RENAME_EXCHANGE)``), elsewhere on local disks two renames with recovery of the
    old partition if the process dies between them. Object stores have no atomic rename: there
    the Parquet layout copies the new files in after the old ones are removed (documented in the
    README), while the ``delta`` table format (:mod:`gmm_dask.storage.delta`) replaces a partition with
    one commit to the table's log, atomic on object stores too.

Small documents (:mod:`.documents`: model files, aliases, locks, manifests, reports) are written
in one step: a rename on local disks, a single ``PUT`` on object stores. Exclusive creation (a
model version's claim, a publish lock) is ``O_EXCL`` locally and a conditional ``PUT``
(``If-None-Match: *``) on S3; :class:`ExclusiveWriteUnsupported` says so where a store offers
neither. Publishing (:mod:`.publishing`): one writer per published date, candidates promoted
later.

Storage errors (:mod:`.fs`): a connection refused, a timeout, a 5xx answer are *transient* and
retried with backoff for up to ``GMM_DASK_STORAGE_RETRY_SECONDS`` (default 60) at every I/O
edge here, data files included, then a :class:`StorageUnavailableError` naming the operation and
the URL (exit 75); a missing bucket or refused credentials are *permanent*: a ConfigError naming the URL
(exit 2), never with the credentials.
"""

from gmm_dask.storage.io.documents import create_exclusive, exists, list_names, read_text, write_text_atomic
from gmm_dask.storage.io.fs import (
    StorageLocations,
    StorageOptions,
    check_storage,
    check_store,
    filesystem,
    is_transient,
    retry_transient,
)
from gmm_dask.storage.io.publishing import (
    LOCKS_DIR,
    candidates_root,
    copy_partitions,
    delta_tables,
    delta_vacuum,
    held_publish_locks,
    publish_lock,
)
from gmm_dask.storage.io.snapshots import (
    PIECE_ROWS,
    SNAPSHOT_RE,
    Piece,
    Snapshot,
    SnapshotSource,
    list_snapshots,
    open_snapshot,
    read_piece,
    resolve_snapshot,
)
from gmm_dask.storage.io.store import TableStore
from gmm_dask.storage.io.writers import (
    EXPORT_TABLES,
    STALE_STAGING_SECONDS,
    TABLE_FORMATS,
    DeltaPartitionWriter,
    PartitionStage,
    PartitionWriter,
    StagedPartitions,
    partition_dates,
    partition_files,
    partition_metadata,
    partition_path,
    read_partition,
    read_table_file,
    write_csv_file,
    write_partition,
    write_table_file,
)

__all__ = [
    "EXPORT_TABLES",
    "LOCKS_DIR",
    "PIECE_ROWS",
    "SNAPSHOT_RE",
    "STALE_STAGING_SECONDS",
    "TABLE_FORMATS",
    "DeltaPartitionWriter",
    "PartitionStage",
    "PartitionWriter",
    "Piece",
    "Snapshot",
    "SnapshotSource",
    "StagedPartitions",
    "StorageLocations",
    "StorageOptions",
    "TableStore",
    "candidates_root",
    "check_storage",
    "check_store",
    "copy_partitions",
    "create_exclusive",
    "delta_tables",
    "delta_vacuum",
    "exists",
    "filesystem",
    "held_publish_locks",
    "is_transient",
    "list_names",
    "list_snapshots",
    "open_snapshot",
    "partition_dates",
    "partition_files",
    "partition_metadata",
    "partition_path",
    "publish_lock",
    "read_partition",
    "read_piece",
    "read_table_file",
    "read_text",
    "resolve_snapshot",
    "retry_transient",
    "write_csv_file",
    "write_partition",
    "write_table_file",
    "write_text_atomic",
]
