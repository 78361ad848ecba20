"""Publishing: one writer per published date (a lock), candidates promoted later, Delta vacuum."""

from __future__ import annotations

import contextlib
import json
import logging
import os
import shutil
import time
from collections.abc import Iterator, Sequence
from functools import partial

from fsspec import AbstractFileSystem

from gmm_dask.errors import DataError, ExclusiveWriteUnsupported, PublishConflictError
from gmm_dask.storage import delta
from gmm_dask.storage.io.documents import create_exclusive, exists, list_names, read_text, write_text_atomic
from gmm_dask.storage.io.fs import (
    StorageOptions,
    _first_line,
    _is_local,
    _url,
    filesystem,
    retry_transient,
)
from gmm_dask.storage.io.publication import Publication
from gmm_dask.storage.io.writers import (
    EXPORT_TABLES,
    StagedPartitions,
    _is_delta,
    _partition_files,
    partition_path,
)

logger = logging.getLogger("gmm_dask.storage.io")  # the name its log lines have always carried


#: The publish locks' folder under ``output.root``: ``dt=<date>.lock`` while a run writes that date.
LOCKS_DIR = "_locks"


def held_publish_locks(root: str, storage_options: StorageOptions | None = None) -> list[str]:
    """The publish locks held now under ``root`` (their file names, sorted): the dates some run
    is writing, or a dead run left locked."""
    return sorted(
        n for n in list_names(f"{root.rstrip('/')}/{LOCKS_DIR}", storage_options) if n.endswith(".lock")
    )


def delta_tables(root: str, storage_options: StorageOptions | None = None) -> list[str]:
    """The names of the Delta tables directly under ``root`` (sorted)."""
    fs, base = filesystem(root, storage_options)
    base = base.rstrip("/")
    return [
        n
        for n in sorted(list_names(root, storage_options))
        if not n.startswith("_")
        and n not in EXPORT_TABLES
        and retry_transient(partial(_is_delta, fs, f"{base}/{n}"), "Listing", root)
    ]


@contextlib.contextmanager
def publish_lock(
    root: str,
    date: str,
    storage_options: StorageOptions | None = None,
    *,
    owner: str = "",
    wait_seconds: float = 0.0,
) -> Iterator[None]:
    """Hold ``<root>/_locks/dt=<date>.lock`` while this run writes the published partitions of
    ``date``. Created exclusively (``O_EXCL`` on local disks); a lock left by a process that no
    longer exists on this host is taken over; a live one raises :class:`PublishConflictError`,
    so two runs never interleave their writes of one date. On S3 the lock is a conditional
    ``PUT``, exclusive too. A run that finds the lock held waits for it up to ``wait_seconds``
    (polling) before it gives up. The tables committed under the lock are one :class:`Publication`:
    visible together when the lock is released cleanly, put back as they were otherwise."""
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
    deadline = time.monotonic() + max(0.0, wait_seconds)
    pause, takeovers, held = 1.0, 0, {}
    while not _take(url, me, storage_options):
        held = _holder(url, storage_options)
        if (
            held.get("host") == me["host"]
            and held.get("pid")
            and not _alive(int(held["pid"]))
            and takeovers < 2
        ):
            _release(fs, path, url)
            logger.warning("Took over the publish lock of %s left by dead process %s", date, held.get("pid"))
            takeovers += 1
            continue
        left = deadline - time.monotonic()
        if left <= 0:
            waited = f" after waiting {wait_seconds:g} s" if wait_seconds > 0 else ""
            raise PublishConflictError(
                f"Snapshot {date} is being published by another run ({describe_holder(held)}); this "
                f"run wrote nothing for {date}{waited}. Retry when that run has finished, or let runs "
                f"wait longer for the lock (output.lock_wait_seconds) (lock: {url})."
            )
        if pause == 1.0:
            logger.info(
                "Snapshot %s is being published by another run (%s): waiting up to %g s for it",
                date,
                describe_holder(held),
                wait_seconds,
            )
        time.sleep(min(pause, left))
        pause = min(pause * 1.5, 10.0)
    publication = Publication(root, date, owner, storage_options)
    try:
        publication.begin()
        yield
        publication.finish()
    except BaseException:
        publication.abandon()
        try:
            _release(fs, path, url)
        except Exception as err:  # the error that got us here is the one to report
            logger.warning(
                "Could not release the publish lock %s (%s); remove it once the store answers "
                "(a run on this host takes it over by itself)",
                url,
                _first_line(err),
            )
        raise
    finally:
        publication.close()
    _release(fs, path, url)


def _take(url: str, me: dict[str, object], storage_options: StorageOptions | None) -> bool:
    """Create the lock file; False where it exists."""
    try:
        return create_exclusive(url, json.dumps(me), storage_options)
    except ExclusiveWriteUnsupported:  # best effort there: check, then write (see the README)
        logger.warning("No exclusive create on %s: the publish lock is best effort", url)
        if exists(url, storage_options):
            return False
        write_text_atomic(url, json.dumps(me), storage_options)
        return True


def _holder(url: str, storage_options: StorageOptions | None) -> dict[str, str]:
    """What a held lock says of its run ({} if it cannot be read: it was just released)."""
    try:
        doc = json.loads(read_text(url, storage_options))
    except (OSError, ValueError):
        return {}
    return {k: str(v) for k, v in doc.items()} if isinstance(doc, dict) else {}


def describe_holder(held: dict[str, str]) -> str:
    """The run holding a lock, as people identify it: its label first (a Prefect flow run's
    name, id and URL, where the run is one), then the process."""
    if not held:
        return "its lock was released meanwhile"
    return f"{held.get('run') or 'run ?'}; pid {held.get('pid')} on {held.get('host')}, since {held.get('since')}"


def _release(fs: AbstractFileSystem, path: str, url: str) -> None:
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
    storage_options: StorageOptions | None = None,
    table_format: str = "parquet",
) -> dict[str, str]:
    """Copy one date's partitions of ``tables`` from ``src_root`` into ``dst_root``, committing
    them together (each atomically): how a candidate is promoted."""
    fs, src = filesystem(src_root, storage_options)
    sources: dict[str, list[tuple[str, str]]] = {}
    for t in tables:
        part = partition_path(src, t, date)
        if t in EXPORT_TABLES or not retry_transient(
            partial(_is_delta, fs, f"{src.rstrip('/')}/{t}"), "Listing", src_root
        ):
            found = retry_transient(partial(_find, fs, part), "Listing", partition_path(src_root, t, date))
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
                    retry_transient(partial(_copy, fs, f, fs_dst, dst), "Writing", st.file(t, name))
    return st.paths


def _find(fs: AbstractFileSystem, path: str) -> list[str]:
    return sorted(fs.find(path)) if fs.exists(path) else []


def _copy(fs: AbstractFileSystem, src: str, fs_dst: AbstractFileSystem, dst: str) -> None:
    with fs.open(src, "rb") as a, fs_dst.open(dst, "wb") as b:
        shutil.copyfileobj(a, b)


def delta_vacuum(
    table_url: str,
    storage_options: StorageOptions | None = None,
    retention_hours: int = 168,
    dry_run: bool = True,
) -> list[str]:
    """Delete the files of a Delta output table that no version within ``retention_hours``
    references (replaced partitions, files of killed writers); returns them. Versions older
    than the retention are no longer readable afterwards."""
    return retry_transient(
        lambda: delta.vacuum(table_url, storage_options, retention_hours, dry_run), "Vacuuming", table_url
    )
