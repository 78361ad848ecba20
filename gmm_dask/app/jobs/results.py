"""What a train/score/segment run did (:class:`RunResult`), and what its report shows."""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import numpy as np

from gmm_dask.app import progress
from gmm_dask.app.config import JobConfig
from gmm_dask.app.pipeline import Written
from gmm_dask.segmentation.model import BANDS, SegmentationModel
from gmm_dask.storage.io import Snapshot

if TYPE_CHECKING:
    import pandas as pd

    from gmm_dask.app.analysis import Analysis
    from gmm_dask.report.data import ReportData


@dataclass(frozen=True)
class Latest:
    """Where the ``latest`` alias points after a publishing run (:func:`~.core.move_latest`)."""

    version: str | None  # None: no model is published
    snapshot: str | None  # the snapshot that model was fitted on
    moved: bool  # this run pointed it at its own model

    def summary(self) -> dict:
        return {"version": self.version, "snapshot": self.snapshot, "moved": self.moved}


@dataclass
class RunResult:
    """What a train/score/segment run did (small; printed by the CLI, published by the flows)."""

    snapshot: str
    model_version: str
    trained: bool
    tables: dict[str, str]
    segments: pd.DataFrame
    overlaps: pd.DataFrame
    counts: dict[str, int]
    model: SegmentationModel = field(repr=False)
    fit: dict = field(default_factory=dict)
    entropy_hist: list[float] = field(default_factory=list)
    band_count: dict[str, int] = field(default_factory=dict)
    seconds: float = 0.0
    timings: dict[str, progress.Phase] = field(default_factory=dict)
    sample_z: np.ndarray | None = None
    sample_segment: np.ndarray | None = None
    report_path: str | None = None
    published: bool = True
    run_id: str = ""
    analysis: Analysis | None = field(default=None, repr=False)
    report: ReportData | None = field(default=None, repr=False)  # what the report and UI show
    unchanged: bool = False  # the published tables were written for the same inputs: nothing written
    kept: str | None = None  # why the model before was kept instead of today's refit (scored with it)
    latest: Latest | None = None  # where ``latest`` points after a publishing run; None for a candidate

    def summary(self) -> dict:
        """JSON-friendly digest (what flows return)."""
        return {
            "snapshot": self.snapshot,
            "model_version": self.model_version,
            "trained": self.trained,
            "tables": self.tables,
            "counts": self.counts,
            "bands": self.band_count,
            "report": self.report_path,
            "published": self.published,
            "run_id": self.run_id,
            "seconds": self.seconds,
            "phases": {k: round(v.seconds, 3) for k, v in self.timings.items()},
            "segments": self.segments[["segment", "name", "weight", "size"]].to_dict("records"),
            **({"analysis": self.analysis.summary()} if self.analysis is not None else {}),
            **({"unchanged": True} if self.unchanged else {}),
            **({"kept": self.kept} if self.kept else {}),
            **({"latest": self.latest.summary()} if self.latest is not None else {}),
        }


def run_result(
    snap: Snapshot,
    model: SegmentationModel,
    trained: bool,
    written: Written,
    t0: float,
    timings: dict[str, progress.Phase],
) -> RunResult:
    agg = written.agg
    return RunResult(
        snapshot=snap.date,
        model_version=model.version or "unregistered",
        trained=trained,
        tables=written.tables,
        segments=written.segments,
        overlaps=written.overlaps,
        counts={
            "rows_read": int(agg.n_read),
            "rows_written": int(agg.n_written),
            "rows_dropped": int(agg.n_dropped),
            "rows_imputed": int(agg.n_imputed),
        },
        fit=model.metadata.to_json(),
        entropy_hist=agg.entropy_hist.tolist(),
        band_count={b: int(c) for b, c in zip(BANDS, agg.band_count, strict=True)},
        seconds=round(time.perf_counter() - t0, 3),
        timings=timings,
        sample_z=agg.sample_z,
        sample_segment=agg.sample_segment,
        model=model,
    )


def report_data(
    cfg: JobConfig, res: RunResult, kind: str, bic_table: pd.DataFrame | None = None
) -> ReportData:
    """What the report and the UI's markdown show of a run (:class:`gmm_dask.report.data.ReportData`)."""
    import pandas as pd

    from gmm_dask.report.data import ReportData
    from gmm_dask.segmentation.naming import component_variances, profile_z, typical_values

    model, seg = res.model, res.segments
    feats = model.feature_names
    k, d = model.means.shape
    variances = component_variances(model.covariances, model.covariance_type, k, d)
    z = profile_z(model.weights, model.means, variances)
    raw = (
        seg[[f"mean_{f}" for f in feats]].to_numpy() if len(seg) else typical_values(model.plan, model.means)
    )
    ids = pd.Index(model.ids, name="segment")
    covs = model.full_covariances()
    a = res.analysis
    fl = a.fluidity if a is not None else None
    names = dict(zip(model.ids, model.segment_names, strict=True))
    if a is not None and a.previous_segments is not None:
        names = {
            **dict(zip(a.previous_segments["segment"], a.previous_segments["name"], strict=True)),
            **names,
        }
    seg_ids = np.asarray(model.ids)
    sample_seg = seg_ids[res.sample_segment] if res.sample_segment is not None and len(seg_ids) else None
    return ReportData(
        kind=kind,
        snapshot=res.snapshot,
        model_version=res.model_version,
        published=res.published,
        run_id=res.run_id,
        trained=res.trained,
        kept=res.kept,
        latest=res.latest.version if res.latest is not None else None,
        latest_snapshot=res.latest.snapshot if res.latest is not None else None,
        latest_moved=res.latest is not None and res.latest.moved,
        counts=res.counts,
        fit=res.fit,
        phases={n: ph.seconds for n, ph in res.timings.items()},
        segments=seg,
        features=list(feats),
        profile_z=pd.DataFrame(z, index=ids, columns=feats),
        profile_raw=pd.DataFrame(raw, index=ids, columns=feats),
        entropy_hist=np.asarray(res.entropy_hist, dtype=float),
        bands={"low_max": cfg.entropy_bands.low_max, "moderate_max": cfg.entropy_bands.moderate_max},
        band_count=res.band_count,
        overlaps=res.overlaps,
        components=[
            {"segment": int(i), "name": n, "weight": float(w), "mean": m, "cov": c}
            for i, n, w, m, c in zip(
                model.ids, model.segment_names, model.weights, model.means, covs, strict=True
            )
        ],
        sample_z=res.sample_z,
        sample_segment=sample_seg,
        previous_segments=a.previous_segments if a is not None else None,
        previous_snapshot=a.previous if a is not None else None,
        transitions=fl.transitions if fl is not None else None,
        segment_names=names,
        bic_table=bic_table,
        criterion=(res.fit or {}).get("selected_by", "bic"),
        forecast=_forecast_frame(a),
        forecast_method_reason=a.forecast.method_reason if a is not None and a.forecast is not None else None,
        backtest=a.backtest.shares
        if a is not None and a.backtest is not None and a.backtest.reason is None
        else None,
        backtest_scores=_backtest_scores(a),
        audiences=_audience_files(a),
        forecast_basis="mean membership γ" if cfg.forecast.counts == "gamma_mass" else "hard segments",
        tables=res.tables,
        seconds=res.seconds,
    )


def _audience_files(a: Analysis | None) -> pd.DataFrame | None:
    """The audiences' sizes, each with its own CSV files: ``<audiences_csv>/<key>-part-*.csv`` (one
    file per memberships file that has its users; none for an audience without users)."""
    if a is None:
        return None
    sizes = a.audiences.sizes
    folder = a.tables.get("audiences_csv")
    paths = [
        f"{folder.rstrip('/')}/{key}-part-*.csv" if folder and n > 0 else None
        for key, n in zip(sizes["audience_key"], sizes["n_users"], strict=True)
    ]
    return sizes.assign(path=paths)


def _forecast_frame(a: Analysis | None) -> pd.DataFrame | None:
    if a is None or a.forecast is None or a.forecast.reason is not None:
        return None
    f = a.forecast.shares.rename(columns={"now": "share_now", "forecast": "share_forecast"})
    return f[[c for c in ("segment", "name", "share_now", "share_forecast", "method") if c in f]]


def _backtest_scores(a: Analysis | None) -> pd.DataFrame | None:
    if a is None or a.backtest is None or a.backtest.reason is not None:
        return None
    return a.backtest.scores
