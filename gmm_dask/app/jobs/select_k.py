"""``select-k``: fit a grid of component counts and covariance types on data read once, pick the
best by BIC or AIC, and write its tables with the criterion table."""

from __future__ import annotations

import dataclasses
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np

from gmm_dask.app import pipeline, progress
from gmm_dask.app.params import SelectKParams, date_str
from gmm_dask.segmentation.align import align_to
from gmm_dask.segmentation.model import SegmentationModel

from .core import (
    STEPS,
    SnapshotPlan,
    Steps,
    Target,
    check_job,
    in_context,
    load_job,
    logger,
    made_ahead,
    move_latest,
    new_run_id,
    planner,
    write_manifest,
)
from .results import RunResult, report_data, run_result

if TYPE_CHECKING:
    import pandas as pd


@dataclass
class SelectKResult:
    run: RunResult
    table: pd.DataFrame  # one row per (K, covariance type)
    criterion: str

    @property
    def selected(self) -> dict:
        row = self.table[self.table.selected].iloc[0]
        return {
            "n_components": int(row.n_components),
            "covariance_type": row.covariance_type,
            "model_version": self.run.model_version,
        }

    @property
    def grid_edge(self) -> str | None:
        """A warning when the selected K is the largest K tried (or the smallest, above 1): the
        criterion may keep improving beyond the grid, so its minimum there is not a choice."""
        k = self.selected["n_components"]
        lo, hi = int(self.table.n_components.min()), int(self.table.n_components.max())
        name = self.criterion.upper()
        if lo == hi:
            return None
        if k == hi:
            return (
                f"{name} is lowest at the largest K tried ({k}): it may keep falling beyond the grid. "
                "Widen k_max; on discrete, zero-inflated features expect it to keep falling (extra "
                "components buy likelihood on exact values and zero patterns), so weigh where the "
                "curve flattens and the degenerate-component report, not its minimum alone."
            )
        if k == lo and lo > 1:
            return f"{name} is lowest at the smallest K tried ({k}): a smaller K may be better still. Lower k_min."
        return None

    def summary(self) -> dict:
        return {
            "snapshot": self.run.snapshot,
            "selected": self.selected,
            "criterion": self.criterion,
            "warning": self.grid_edge,
            "published": self.run.published,
            "run_id": self.run.run_id,
            "table": self.table.to_dict("records"),
            "report": self.run.report_path,
        }


def selection_table(models: list[SegmentationModel], criterion: str) -> pd.DataFrame:
    """One row per candidate with its criteria; ``selected`` marks the minimum of ``criterion``."""
    import pandas as pd

    table = pd.DataFrame(
        [
            {
                "n_components": m.n_components,
                "covariance_type": m.covariance_type,
                "bic": m.metadata.bic,
                "aic": m.metadata.aic,
                "log_likelihood": m.metadata.log_likelihood,
                "n_iter": m.metadata.n_iter,
                "converged": m.metadata.converged,
            }
            for m in models
        ]
    )
    best = int(table[criterion].idxmin())
    table["selected"] = [i == best for i in range(len(table))]
    return table


@planner(SelectKParams)
def plan_select_k(p: SelectKParams, steps: Steps = STEPS) -> SnapshotPlan:
    cfg = load_job(p.config)
    check_job(cfg)
    return SnapshotPlan(cfg, steps.open_snapshot(cfg, date_str(p.snapshot)))


def select_k(p: SelectKParams, *, steps: Steps = STEPS, report: bool = True) -> SelectKResult:
    """Fit K in [k_min, k_max] × covariance types on data read once, in parallel on the cluster;
    align the best to the published model, register it (alias ``selected``; ``latest`` only when
    publishing), write its tables and the criterion table (``model_selection``) — as a candidate
    unless ``publish``."""
    plan = made_ahead(p, SnapshotPlan) or plan_select_k(p, steps)
    cfg, snap = plan.cfg, plan.snapshot
    target = Target(p.publishes(), new_run_id())
    reference = steps.published_model(cfg)
    grid = [(k, ct) for ct in dict.fromkeys(p.covariance_types) for k in range(p.k_min, p.k_max + 1)]
    t0 = time.perf_counter()
    timings: dict[str, progress.Phase] = {}
    with target.lock(cfg, snap.date), pipeline.cluster(cfg):
        with progress.phase("profile", timings, rows=snap.n_rows):
            prof = steps.profile(cfg, snap)
        with progress.phase("read", timings, rows=pipeline.rows_used(cfg, prof)):
            data = steps.prepare_data(cfg, snap, prof, persist=True)  # read once, shared by every fit
            # the inputs as the tables will score them (segment sizes), also held once for every fit
            scored = (
                steps.prepare_data(cfg, snap, prof, persist=True, dequantize=False)
                if data.plan.has_floor and cfg.model.family == "gaussian"
                else None
            )

        def fit_one(k, ct):
            m = steps.fit(cfg, snap, prof, n_components=k, covariance_type=ct, data=data, score_data=scored)
            progress.current().message(
                f"fitted K={k} ({ct}): {p.criterion.upper()} {m.metadata.criterion(p.criterion):,.1f}, "
                f"{m.metadata.n_iter} iterations"
            )
            return m

        with (
            progress.phase("fit", timings, rows=data.n_rows) as ph,
            ThreadPoolExecutor(p.max_concurrency) as pool,
        ):
            models = list(pool.map(in_context(fit_one), *zip(*grid, strict=True)))
            ph.detail = f"{len(grid)} candidates"
        table = selection_table(models, p.criterion)
        best = models[int(np.flatnonzero(table.selected)[0])]
        best = dataclasses.replace(
            best, metadata=best.metadata.replace(selected_by=p.criterion, candidates=len(grid))
        )
        if reference is not None:  # ids that stay true if this winner is promoted
            best = align_to(reference, best, steps.co_membership(cfg, snap, reference, best))
        best = steps.register(cfg, best, alias="selected")
        table["model_version"] = [best.version if s else None for s in table.selected]
        with progress.phase("write", timings, rows=snap.n_rows):
            written = steps.write_tables(
                cfg,
                snap,
                best,
                extra={"model_selection": (table, {"gmm_dask.criterion": p.criterion})},
                store=target.store(cfg),
            )
        if target.publish:
            move_latest(cfg, best, steps)
    res = run_result(snap, best, True, written, t0, timings)
    res.published, res.run_id = target.publish, target.run_id
    if not target.publish:
        write_manifest(cfg, target, [res])
    res.report = report_data(cfg, res, "select-k", table)
    if report:
        res.report_path = steps.write_report(cfg, res.report)
    out = SelectKResult(res, table, p.criterion)
    if out.grid_edge:
        logger.warning("%s", out.grid_edge)
    return out
