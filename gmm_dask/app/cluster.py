"""Connecting to Dask: an embedded LocalCluster on 127.0.0.1, an existing scheduler, or a cluster class.

Only existing engines: a local cluster, a scheduler address (optionally TLS), or any
``distributed``-compatible cluster class by dotted path (dask-kubernetes, dask-jobqueue, ...).
"""

from __future__ import annotations

import contextlib
import importlib
import logging
from collections.abc import Iterator

from gmm_dask.app.config import AddressClusterConfig, ClassClusterConfig, ClusterConfig, LocalClusterConfig
from gmm_dask.errors import ConfigError

logger = logging.getLogger(__name__)


def _import_class(path: str):
    """Import ``path`` and return it if it is a Dask cluster class; ConfigError otherwise.

    Only imports (nothing is instantiated or called), so a config cannot make the job run an
    arbitrary callable such as ``subprocess.Popen``.
    """
    from distributed.deploy.cluster import Cluster

    module, _, name = path.rpartition(".")
    if not module:
        raise ConfigError(
            f"cluster.cluster_class {path!r} must be a dotted path like 'dask_jobqueue.SLURMCluster'."
        )
    try:
        cls = getattr(importlib.import_module(module), name)
    except (ImportError, AttributeError) as err:
        raise ConfigError(
            f"cluster.cluster_class {path!r} cannot be imported ({err}); install its package."
        ) from None
    if not (isinstance(cls, type) and issubclass(cls, Cluster)):
        raise ConfigError(
            f"cluster.cluster_class {path!r} is not a Dask cluster class (a subclass of "
            "distributed.deploy.Cluster, such as distributed.LocalCluster, dask_jobqueue.SLURMCluster "
            "or dask_kubernetes.operator.KubeCluster). Name a cluster class, or use cluster.type: "
            "local or address."
        )
    return cls


def check_cluster_config(cfg: ClusterConfig | None = None) -> None:
    """Check a cluster config up front, starting nothing: a ``type: class`` config must name a
    Dask cluster class (imported, never instantiated). ``None`` means the default local cluster.

    Raises :class:`~gmm_dask.errors.ConfigError` naming the key, the value and the fix.
    """
    if cfg is None or isinstance(cfg, LocalClusterConfig | AddressClusterConfig):
        return  # fully validated by the config model (memory limit, address format)
    if isinstance(cfg, ClassClusterConfig):
        _import_class(cfg.cluster_class)
        return
    raise ConfigError(f"cluster: unknown cluster config {cfg!r}; use type local, address or class.")


@contextlib.contextmanager
def dask_client(cfg=None) -> Iterator:
    """Yield a ``distributed.Client`` set as default; starts (and stops) only what it creates.

    If a client is already active it is reused and ``cfg`` is ignored.
    """
    from distributed import Client, LocalCluster

    from gmm_dask.mixture.runner import active_client

    check_cluster_config(cfg)
    existing = active_client()
    if existing is not None:
        yield existing
        return
    cfg = cfg or LocalClusterConfig()
    cluster = None
    if isinstance(cfg, LocalClusterConfig):
        kwargs = {"protocol": "tcp"} if not cfg.processes else {}
        cluster = LocalCluster(
            n_workers=cfg.n_workers,
            threads_per_worker=cfg.threads_per_worker,
            memory_limit=cfg.memory_limit,
            host=cfg.host,
            dashboard_address=cfg.dashboard_address,
            processes=cfg.processes,
            silence_logs=logging.WARNING,
            **kwargs,
        )
        client = Client(cluster, set_as_default=True)
    elif isinstance(cfg, AddressClusterConfig):
        security = None
        if cfg.tls is not None:
            from distributed.security import Security

            security = Security(
                tls_ca_file=cfg.tls.ca_file,
                tls_client_cert=cfg.tls.cert_file,
                tls_client_key=cfg.tls.key_file,
                require_encryption=cfg.tls.require_encryption,
            )
        try:
            client = Client(cfg.address, security=security, set_as_default=True, timeout="30s")
        except OSError as err:
            raise ConfigError(
                f"cluster.address {cfg.address!r}: cannot connect to the scheduler ({err})."
            ) from None
    elif isinstance(cfg, ClassClusterConfig):
        cls = _import_class(cfg.cluster_class)
        cluster = cls(**cfg.kwargs)
        if cfg.scale:
            cluster.scale(cfg.scale)
        client = Client(cluster, set_as_default=True)
    else:  # pragma: no cover - pydantic guarantees the union
        raise ConfigError(f"unknown cluster config {cfg!r}")
    logger.info("Dask dashboard: %s", client.dashboard_link)
    try:
        yield client
    finally:
        if cluster is not None:  # ours to stop: its workers' shutdown races are noise
            with contextlib.suppress(Exception):
                client.run(_quiet_shutdown_logs)
        client.close()
        if cluster is not None:
            cluster.close()


def _quiet_shutdown_logs() -> None:
    """Runs in each worker of a cluster we started, just before we stop it: a heartbeat that
    races the scheduler's shutdown logs a connection error with a traceback (distributed's
    own race, harmless at that point) that would follow a successful run's output."""
    for name in ("distributed.worker", "distributed.core", "distributed.comm", "distributed.nanny"):
        logging.getLogger(name).setLevel(logging.CRITICAL)
