"""``select-k``: fit a grid of families, component counts and covariance types on data read once,
pick the best by BIC or AIC on one likelihood scale, and write its tables with the criterion table.

The Gaussian family's log-likelihood is a density of transformed, standardised, dequantised
inputs; the behaviour family's a probability mass for counts, binaries and zero amounts and a
density in original units for the rest. The table reads both in the behaviour family's units:
a Gaussian candidate's log-likelihood plus Σ w·adj over the rows
(:func:`~gmm_dask.segmentation.comparable.behaviour_scale`, the same sum for every Gaussian
candidate), and BIC/AIC from that. Each model's own record keeps its native log-likelihood."""

from __future__ import annotations

import dataclasses
import math
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np

from gmm_dask.app import pipeline, progress
from gmm_dask.app.config import JobConfig
from gmm_dask.app.params import SelectKParams, date_str
from gmm_dask.errors import FitError
from gmm_dask.mixture.gaussian import n_parameters
from gmm_dask.segmentation.align import align_to
from gmm_dask.segmentation.features import Profile
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
    profile,
    profile_ahead,
    write_manifest,
)
from .results import RunResult, report_data, run_result

if TYPE_CHECKING:
    import pandas as pd

    from gmm_dask.storage.io import Snapshot


@dataclass
class SelectKResult:
    run: RunResult
    table: pd.DataFrame  # one row per (family, K, covariance type)
    criterion: str

    @property
    def selected(self) -> dict:
        row = self.table[self.table.selected].iloc[0]
        return {
            "family": row.get("family", "gaussian"),
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
            **({"latest": self.run.latest.summary()} if self.run.latest is not None else {}),
        }


#: The covariance_type of a behaviour-family candidate: the family takes none.
NO_COVARIANCE = "—"


def candidate_parameters(m: SegmentationModel) -> int:
    """Free parameters of a fitted candidate of either family."""
    if m.behaviour is not None:
        return int(m.behaviour.family.n_parameters(m.behaviour.params))
    return n_parameters(m.n_components, len(m.plan.names), m.covariance_type)


def selection_table(
    models: list[SegmentationModel], criterion: str, weight: float, gaussian_offset: float
) -> pd.DataFrame:
    """One row per candidate with its criteria on the behaviour family's likelihood scale;
    ``selected`` marks the minimum of ``criterion``.

    ``weight`` is Σw over the rows every candidate was fitted on, ``gaussian_offset`` Σ w·adj
    over them (:func:`~gmm_dask.app.pipeline.behaviour_scale_sum`), added to each Gaussian
    candidate's total log-likelihood. ``log_likelihood`` is per unit weight, as in the models'
    records; ``native_log_likelihood`` is the record's own (each family's units).
    """
    import pandas as pd

    rows = []
    for m in models:
        family = m.metadata.family or "gaussian"
        native = m.metadata.log_likelihood
        total = (math.nan if native is None else native * weight) + (
            gaussian_offset if family == "gaussian" else 0.0
        )
        k = candidate_parameters(m)
        rows.append(
            {
                "family": family,
                "n_components": m.n_components,
                "covariance_type": m.covariance_type if family == "gaussian" else NO_COVARIANCE,
                "n_parameters": k,
                "bic": -2 * total + k * math.log(weight),
                "aic": -2 * total + 2 * k,
                "log_likelihood": total / weight,
                "native_log_likelihood": native,
                "n_iter": m.metadata.n_iter,
                "converged": m.metadata.converged,
            }
        )
    table = pd.DataFrame(rows)
    finite = np.isfinite(table[criterion].to_numpy(dtype=float))
    if not finite.any():
        raise FitError(
            f"No select-k candidate has a finite {criterion.upper()} on the common likelihood scale "
            "(a feature with transform 'sqrt' has exact zeros of a continuous kind?). Use transform "
            "'log1p' or 'asinh' for it."
        )
    best = int(table[criterion].where(finite).idxmin())
    table["selected"] = [i == best for i in range(len(table))]
    return table


@planner(SelectKParams)
def plan_select_k(p: SelectKParams, steps: Steps = STEPS) -> SnapshotPlan:
    cfg = load_job(p.config)
    check_job(cfg)
    cfgs = p.family_configs(cfg)  # a family the input cannot use is refused before anything starts
    snap = steps.open_snapshot(cfg, date_str(p.snapshot))
    # under the behaviour family the profile also checks each feature's kind
    return SnapshotPlan(cfg, snap, profiled=profile_ahead(cfgs.get("behaviour", cfg), snap))


@dataclass
class _Read:
    """The snapshot read once for every candidate: each family's inputs, the Gaussian's inputs as
    the tables score them (segment sizes), Σw and the Gaussian candidates' offset to the common
    likelihood scale."""

    data: dict[str, pipeline.FitData]
    scored: pipeline.FitData | None
    weight: float
    gaussian_offset: float


def _read(cfgs: dict[str, JobConfig], snap: Snapshot, prof: Profile, steps: Steps) -> _Read:
    data = {fam: steps.prepare_data(c, snap, prof, persist=True) for fam, c in cfgs.items()}
    gauss = data.get("gaussian")
    scored = (
        steps.prepare_data(cfgs["gaussian"], snap, prof, persist=True, dequantize=False)
        if gauss is not None and gauss.plan.has_floor
        else None
    )
    offset = pipeline.behaviour_scale_sum(gauss) if gauss is not None else 0.0
    return _Read(data, scored, pipeline.total_weight(next(iter(data.values()))), offset)


def select_k(p: SelectKParams, *, steps: Steps = STEPS, report: bool = True) -> SelectKResult:
    """Fit every family × K in [k_min, k_max] × covariance type (the Gaussian family's; the
    behaviour family takes none) on data read once, in parallel on the cluster; align the best by
    the criterion on one likelihood scale to the published model, register it (alias
    ``selected``; ``latest`` only when publishing), write its tables and the criterion table
    (``model_selection``) — as a candidate unless ``publish``."""
    plan = made_ahead(p, SnapshotPlan) or plan_select_k(p, steps)
    cfg, snap = plan.cfg, plan.snapshot
    cfgs = p.family_configs(cfg)
    target = Target(p.publishes(), new_run_id())
    reference = steps.published_model(cfg)
    cts: dict[str, list] = {"gaussian": list(dict.fromkeys(p.covariance_types)), "behaviour": [None]}
    grid = [(f, k, ct) for f in cfgs for ct in cts[f] for k in range(p.k_min, p.k_max + 1)]
    t0 = time.perf_counter()
    timings: dict[str, progress.Phase] = {}
    with target.lock(cfg, snap.date), pipeline.cluster(cfg):
        # under the behaviour family the profile also checks each feature's kind
        prof = profile(cfgs.get("behaviour", cfg), snap, plan.profiled, timings, steps)
        with progress.phase("read", timings, rows=pipeline.rows_used(cfg, prof)):
            read = _read(cfgs, snap, prof, steps)  # read once, shared by every fit

        def fit_one(family, k, ct):
            m = steps.fit(
                cfgs[family], snap, prof, n_components=k, covariance_type=ct, data=read.data[family],
                score_data=read.scored if family == "gaussian" else None,
            )  # fmt: skip
            progress.current().message(
                f"fitted {family} K={k}{f' ({ct})' if ct else ''}: {m.metadata.n_iter} iterations"
            )
            return m

        with (
            progress.phase("fit", timings, rows=next(iter(read.data.values())).n_rows) as ph,
            ThreadPoolExecutor(p.max_concurrency) as pool,
        ):
            models = list(pool.map(in_context(fit_one), *zip(*grid, strict=True)))
            ph.detail = f"{len(grid)} candidates"
        table = selection_table(models, p.criterion, read.weight, read.gaussian_offset)
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
        latest = move_latest(cfg, best, steps) if target.publish else None
    res = run_result(snap, best, True, written, t0, timings)
    res.published, res.run_id, res.latest = target.publish, target.run_id, latest
    if not target.publish:
        write_manifest(cfg, target, [res])
    res.report = report_data(cfg, res, "select-k", table)
    if report:
        res.report_path = steps.write_report(cfg, res.report)
    out = SelectKResult(res, table, p.criterion)
    if out.grid_edge:
        logger.warning("%s", out.grid_edge)
    return out
