"""What every flow shares: config loading with typed overrides, the Dask client, logging, artifacts."""

from __future__ import annotations

import contextlib
import datetime as dt
import logging
from pathlib import Path

from prefect import get_run_logger
from prefect.artifacts import create_link_artifact, create_markdown_artifact

from gmm_dask.cluster import dask_client
from gmm_dask.config import JobConfig, ModelConfig, load_config, validate_snapshot
from gmm_dask.errors import ConfigError
from gmm_dask.report import html_report, markdown_summary, write_report

#: Used when a run gives no config (the README's demo job; deployments pass their own).
DEFAULT_CONFIG = "configs/demo.yaml"


def load_job(config: str, model: ModelConfig | None = None) -> JobConfig:
    """Load the YAML config; a ``model`` parameter from the UI replaces its whole model section."""
    cfg = load_config(config)
    if model is not None:
        cfg = cfg.model_copy(update={"model": model})
    return cfg


def date_param(value: dt.date | str | None, name: str) -> str | None:
    """A date parameter as YYYY-MM-DD, checked before any work (the server does not check dates)."""
    if value is None or isinstance(value, dt.date):
        return None if value is None else value.isoformat()
    return validate_snapshot(value, name)


def em_progress():
    """An EM callback that logs every iteration through the Prefect run logger."""
    logger = get_run_logger()

    def log(info) -> None:
        logger.info(
            "EM init %d iteration %d/%d: lower bound %.8f, change %.3g (%.2f s)",
            info.init + 1,
            info.n_iter,
            info.max_iter,
            info.lower_bound,
            info.change,
            info.seconds,
        )

    return log


@contextlib.contextmanager
def cluster(cfg: JobConfig):
    """The configured Dask cluster (embedded LocalCluster by default), its dashboard link logged."""
    logging.getLogger("distributed").setLevel(logging.WARNING)  # keep run logs about our work
    with dask_client(cfg.cluster) as client:
        get_run_logger().info("Dask dashboard: %s", client.dashboard_link)
        yield client


def _key(text: str) -> str:
    return "".join(c if c.isalnum() else "-" for c in text.lower()).strip("-")[:100]


def publish(res, cfg: JobConfig, *, kind: str = "segment", bic_table=None) -> str:
    """Markdown summary artifact + HTML report (written next to the tables) linked from an artifact."""
    create_markdown_artifact(
        markdown_summary(res), key=_key(f"{kind}-summary"), description=f"{kind} {res.snapshot}"
    )
    html = html_report(res, res.sample_z, res.sample_segment, bic_table)
    root = cfg.output.root
    name = f"{kind}-{res.snapshot}-{res.model_version}.html"
    if "://" in root:
        from gmm_dask.io import filesystem

        fs, base = filesystem(root, cfg.input.storage_options)
        path = f"{base.rstrip('/')}/_reports/{name}"
        with fs.open(path, "w") as f:
            f.write(html)
        link = fs.unstrip_protocol(path)
    else:
        path = write_report(Path(root) / "_reports" / name, html)
        link = Path(path).as_uri()
    create_link_artifact(link, link_text=f"HTML report for {res.snapshot}", key=_key(f"{kind}-report"))
    res.report_path = path
    return path


def require(condition: bool, message: str) -> None:
    """Reject a bad parameter before any work starts."""
    if not condition:
        raise ConfigError(message)
