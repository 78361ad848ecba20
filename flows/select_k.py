"""Model selection: fit a grid of component counts and covariance types in parallel, pick by BIC/AIC."""

from __future__ import annotations

import dataclasses
import datetime as dt
import time
from typing import Literal

import pandas as pd
import pyarrow as pa
from prefect import flow, get_run_logger
from prefect.artifacts import create_markdown_artifact, create_table_artifact
from pydantic import Field

from gmm_dask import pipeline
from gmm_dask.io import PartitionWriter, write_table_file
from gmm_dask.registry import ModelRegistry
from gmm_dask.report import bic_markdown
from gmm_dask.tables import table_metadata

from . import tasks
from .common import DEFAULT_CONFIG, cluster, date_param, load_job, publish, require
from .segment import _resolve

CovarianceType = Literal["full", "tied", "diag", "spherical"]


@flow(
    name="select-k",
    description="Fit K in [k_min, k_max] × covariance types in parallel; pick the best by BIC.",
)
def select_k(
    k_min: int = Field(2, ge=1, le=64),
    k_max: int = Field(8, ge=1, le=64),
    covariance_types: list[CovarianceType] = Field(default_factory=lambda: ["full"], min_length=1),
    criterion: Literal["bic", "aic"] = "bic",
    snapshot: dt.date | None = None,
    max_concurrency: int = Field(4, ge=1, le=64),
    config: str = DEFAULT_CONFIG,
) -> dict:
    """The best model is registered (alias ``selected``, and ``latest``), its tables written, and
    the criterion table stored under ``<root>/model_selection/dt=<snapshot>``."""
    logger = get_run_logger()
    require(k_min <= k_max, f"k_min ({k_min}) must be <= k_max ({k_max})")
    cfg = load_job(config)
    snapshot = _resolve(cfg, date_param(snapshot, "snapshot"))
    grid = [(k, ct) for ct in dict.fromkeys(covariance_types) for k in range(k_min, k_max + 1)]
    t0 = time.perf_counter()
    with cluster(cfg):
        snap = tasks.open_snapshot(cfg, snapshot)
        prof = tasks.profile_snapshot(cfg, snap)
        data = tasks.fit_data(cfg, snap, prof, persist=True)  # read once, shared by every candidate
        models = []
        for i in range(0, len(grid), max_concurrency):
            futures = [
                tasks.fit_model.submit(cfg, snap, prof, n_components=k, covariance_type=ct, data=data)
                for k, ct in grid[i : i + max_concurrency]
            ]
            models += [f.result() for f in futures]
        rows = [
            {
                "n_components": m.n_components,
                "covariance_type": m.covariance_type,
                "bic": m.metadata["bic"],
                "aic": m.metadata["aic"],
                "log_likelihood": m.metadata["log_likelihood"],
                "n_iter": m.metadata["n_iter"],
                "converged": m.metadata["converged"],
            }
            for m in models
        ]
        table = pd.DataFrame(rows)
        best_i = int(table[criterion].idxmin())
        best = models[best_i]
        best = dataclasses.replace(
            best, metadata=best.metadata | {"selected_by": criterion, "candidates": len(grid)}
        )
        best = tasks.register_model(cfg, best, alias="selected")
        ModelRegistry(cfg.output.registry_path, cfg.input.storage_options).set_alias("latest", best.version)
        paths, agg = tasks.write_outputs(cfg, snap, best)
        table["selected"] = [i == best_i for i in range(len(table))]
        table["model_version"] = [best.version if i == best_i else None for i in range(len(table))]
        w = PartitionWriter(
            cfg.output.root, "model_selection", snapshot, storage_options=cfg.input.storage_options
        )
        try:
            t = pa.Table.from_pandas(table, preserve_index=False)
            t = t.replace_schema_metadata(
                table_metadata("model_selection", best.version, {"gmm_dask.criterion": criterion})
            )
            write_table_file(t, w.file("part-00000.parquet"), cfg.input.storage_options)
            paths["model_selection"] = w.commit()
        except BaseException:
            w.abort()
            raise
    res = pipeline.run_result(
        snap, best, True, paths, agg, dict(best.metadata), t0, cfg.output.overlap_threshold
    )
    chosen = {"n_components": best.n_components, "covariance_type": best.covariance_type}
    create_table_artifact(
        table.drop(columns=["model_version"]).round(4).to_dict("records"),
        key="select-k-table",
        description=f"{criterion.upper()} by K and covariance type, snapshot {snapshot}",
    )
    create_markdown_artifact(bic_markdown(table, chosen), key="select-k-bic", description="model selection")
    publish(res, cfg, kind="select-k", bic_table=table)
    logger.info(
        "Selected K=%d (%s) by %s: model %s", best.n_components, best.covariance_type, criterion, best.version
    )
    return {
        "snapshot": snapshot,
        "selected": chosen | {"model_version": best.version},
        "criterion": criterion,
        "table": table.to_dict("records"),
        "report": res.report_path,
    }
