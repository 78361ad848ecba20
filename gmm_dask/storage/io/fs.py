"""Filesystems and URLs, and storage errors: transient ones retried, permanent ones a ConfigError.

Storage errors: a connection refused, a timeout, a 5xx answer are *transient* and retried
with backoff for up to ``GMM_DASK_STORAGE_RETRY_SECONDS`` (default 60) by
:func:`retry_transient`, which wraps every I/O edge of :mod:`gmm_dask.storage.io`, then a
:class:`StorageUnavailableError` naming the operation and the URL (exit 75); a missing bucket or refused credentials are *permanent*: a ConfigError naming the URL (exit 2),
never with the credentials.
"""

from __future__ import annotations

import errno
import logging
import os
import time
from collections.abc import Callable
from typing import Any, Protocol, TypeAlias, TypeVar

import fsspec
from fsspec import AbstractFileSystem

from gmm_dask.errors import ConfigError, StorageUnavailableError
from gmm_dask.storage import _faults, delta

logger = logging.getLogger("gmm_dask.storage.io")  # the name its log lines have always carried

#: fsspec ``storage_options`` (``endpoint_url``, ``client_kwargs``, ``anon``...), as in the config.
StorageOptions: TypeAlias = dict[str, Any]
T = TypeVar("T")


class InputLocation(Protocol):
    """Where a job reads (the job's ``input`` config satisfies it)."""

    @property
    def path(self) -> str: ...
    @property
    def format(self) -> str: ...
    @property
    def storage_options(self) -> StorageOptions: ...


class OutputLocation(Protocol):
    """Where a job writes (the job's ``output`` config satisfies it)."""

    @property
    def root(self) -> str: ...
    @property
    def format(self) -> str: ...
    @property
    def registry_path(self) -> str: ...


class StorageLocations(Protocol):
    """The places a job's storage is checked at (the job's config satisfies it)."""

    @property
    def input(self) -> InputLocation: ...
    @property
    def output(self) -> OutputLocation: ...


def filesystem(path: str, storage_options: StorageOptions | None = None) -> tuple[AbstractFileSystem, str]:
    """(fsspec filesystem, path inside it) for a local path or URL.

    On S3 the listings cache is off unless asked for: other processes write the same prefixes
    (registry versions, locks, partitions) and a stale listing would hide them."""
    so = dict(storage_options or {})
    if path.startswith(("s3://", "s3a://")):
        so.setdefault("use_listings_cache", False)
    fs, inner = fsspec.core.url_to_fs(path, **so)
    return fs, inner


def _is_local(fs: AbstractFileSystem) -> bool:
    return "file" in (fs.protocol if isinstance(fs.protocol, tuple) else (fs.protocol,))


def _protocols(fs: AbstractFileSystem) -> tuple[str, ...]:
    return fs.protocol if isinstance(fs.protocol, tuple) else (fs.protocol,)


def _url(fs: AbstractFileSystem, inner: str) -> str:
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
    """Whether a storage error may go away by itself (network, timeouts, 5xx): worth a retry.
    A :class:`StorageUnavailableError` is not: the retries behind it are spent."""
    if isinstance(err, StorageUnavailableError):
        return False
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


def _retried(err: BaseException, url: str) -> bool:
    """A transient error on a remote store (or an injected outage, see :mod:`gmm_dask.storage._faults`)."""
    return is_transient(err) and (str(url).startswith(_REMOTE) or isinstance(err, _faults.InjectedOutage))


def _first_line(err: BaseException) -> str:
    return str(err).splitlines()[0][:200] if str(err) else ""


def retry_transient(fn: Callable[[], T], what: str, url: str, seconds: float | None = None) -> T:
    """``fn()``, retried with backoff while it fails with a transient storage error, for up to
    ``seconds`` (default ``GMM_DASK_STORAGE_RETRY_SECONDS``, 60) from the first try, counting
    the time fsspec/s3fs spends in its own retries: an outage shorter than that is bridged.
    Then :class:`StorageUnavailableError` naming ``what`` and ``url``. Other errors, and any
    error on a local or custom filesystem, pass at once."""
    budget = _retry_seconds() if seconds is None else seconds
    start = time.monotonic()
    delay = 0.5
    while True:
        try:
            return fn()
        except Exception as err:
            if not _retried(err, url):
                raise
            elapsed = time.monotonic() - start
            if elapsed >= budget:
                raise StorageUnavailableError(
                    f"{what} {url!r} failed: the store did not answer for {elapsed:.0f} s "
                    f"({type(err).__name__}: {_first_line(err)}); gave up after "
                    f"GMM_DASK_STORAGE_RETRY_SECONDS={budget:g}. Check the endpoint and the network, "
                    "then rerun."
                ) from err
            wait = min(delay, budget - elapsed)
            logger.warning(
                "%s %s: transient storage error (%s: %s); retrying in %.1f s",
                what,
                url,
                type(err).__name__,
                _first_line(err),
                wait,
            )
            time.sleep(wait)
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


def check_store(url: str, storage_options: StorageOptions | None, key: str) -> None:
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
    except StorageUnavailableError as err:
        cause = err.__cause__ or err
        raise StorageUnavailableError(
            f"{key} {url!r}: the store did not answer ({type(cause).__name__}) for "
            f"{_retry_seconds():.0f} s (GMM_DASK_STORAGE_RETRY_SECONDS). Check the endpoint and "
            "the network, then retry."
        ) from None
    except Exception as err:
        raise ConfigError(
            f"{key} {url!r}: the store refused the request ({_error_code(err)}). Check {key} and "
            "storage_options (e.g. endpoint_url). " + creds + "."
        ) from None


def check_storage(cfg: StorageLocations) -> None:
    """:func:`check_store` for a job's input, output root and registry (URLs only), and the
    table formats' packages."""
    so = cfg.input.storage_options
    if "delta" in (cfg.input.format, cfg.output.format):
        delta._deltalake()  # ConfigError with the install command when missing
    seen: set[tuple[str, str]] = set()
    for key, url in (
        ("input.path", cfg.input.path),
        ("output.root", cfg.output.root),
        ("output.registry", cfg.output.registry_path),
    ):
        bucket = url.split("://", 1)[-1].split("/", 1)[0] if "://" in url else None
        if bucket is not None and (url.split("://")[0], bucket) not in seen:
            seen.add((url.split("://")[0], bucket))
            check_store(url, so, key)
