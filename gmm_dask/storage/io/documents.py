"""Small documents (model files, aliases, locks, manifests, reports), written in one step.

A rename on local disks, a single ``PUT`` on object stores. Exclusive creation (a model
version's claim, a publish lock) is ``O_EXCL`` locally and a conditional ``PUT``
(``If-None-Match: *``) on S3; :class:`ExclusiveWriteUnsupported` says so where a store offers
neither.
"""

from __future__ import annotations

import contextlib
import os
import uuid
from pathlib import Path

from fsspec import AbstractFileSystem

from gmm_dask.errors import ExclusiveWriteUnsupported
from gmm_dask.storage.io.fs import StorageOptions, _is_local, _protocols, filesystem, retry_transient


def read_text(path: str, storage_options: StorageOptions | None = None) -> str:
    fs, inner = filesystem(path, storage_options)

    def read() -> str:
        with fs.open(inner, "r", encoding="utf-8") as f:
            return f.read()

    return retry_transient(read, "Reading", path)


def write_text_atomic(path: str, text: str, storage_options: StorageOptions | None = None) -> str:
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


def exists(path: str, storage_options: StorageOptions | None = None) -> bool:
    fs, inner = filesystem(path, storage_options)
    return retry_transient(lambda: fs.exists(inner), "Checking", path)


def list_names(path: str, storage_options: StorageOptions | None = None) -> list[str]:
    """Names of the entries directly under ``path`` ([] if it does not exist)."""
    fs, inner = filesystem(path, storage_options)

    def names() -> list[str]:
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


def _put_if_absent(fs: AbstractFileSystem, inner: str, data: bytes, url: str) -> bool:
    """One conditional PUT; False if the object exists (412, or 409 for a concurrent one)."""
    try:
        retry_transient(lambda: fs.pipe_file(inner, data, mode="create"), "Writing", url)
        return True
    except Exception as err:
        if _is_precondition_failed(err):
            return False
        raise


def _check_conditional_put(fs: AbstractFileSystem, inner: str, url: str) -> None:
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


def create_exclusive(path: str, text: str, storage_options: StorageOptions | None = None) -> bool:
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
