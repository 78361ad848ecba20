"""What a run report shows, in one value: :class:`ReportData`, and the small questions both the HTML
page and the markdown summary ask of it (its features, flagged components, blended pairs)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, TypeGuard

import numpy as np
import pandas as pd

from gmm_dask.report.palette import GONE, segment_color
from gmm_dask.report.text import is_finite

#: The page's title by run kind.
TITLES = {"segment": "Segmentation", "select-k": "Model selection", "train": "Training", "score": "Scoring"}


def has_rows(df: pd.DataFrame | None) -> TypeGuard[pd.DataFrame]:
    """Whether ``df`` is a frame with at least one row."""
    return df is not None and len(df) > 0


@dataclass
class ReportData:
    """Everything a run report shows (small: aggregates and a sample, never the users' table).

    K segments, D features, m sampled users. Segment ids are stable across snapshots where the
    segments were aligned; they are not positions. Optional parts (``None``) leave their chart out.

    Attributes
    ----------
    kind : "segment" | "select-k" | "train" | "score".
    snapshot : the snapshot's date, YYYY-MM-DD.
    trained : the run fitted its model (else it scored with a registered one).
    kept : why the model before was kept instead of the snapshot's refit; None where it was not.
    latest, latest_snapshot : the version ``latest`` points at after a publishing run, and the
        snapshot that model was fitted on; None for a candidate (or where unknown).
    latest_moved : the run pointed ``latest`` at its model.
    counts : rows_read, rows_written, rows_dropped, rows_imputed.
    fit : model metadata; any of n_iter, converged, log_likelihood, bic, aic, covariance_type,
        degenerate {pruned: [...]}, reseeded_components, alignment {...}.
    phases : phase name -> seconds.
    seconds : the job's total run time (what the command line prints); None where unknown.
    segments : one row per segment: segment (id), name, weight, size, share, mean_<feature> (original
        units), degenerate (reason or NA), mean_entropy_bits, high_entropy_share.
    profile_z : (K, D), index segment ids in ``segments`` order, columns ``features``: each
        component's mean as a z-score against the population, in model space.
    profile_raw : (K, D), same shape: each component's mean in original units (the cell labels).
    entropy_hist : counts of users over equal-width bins of normalised entropy on [0, 1].
    bands : {"low_max": …, "moderate_max": …} thresholds on normalised entropy.
    band_count : {"low": n, "moderate": n, "high": n}.
    overlaps : segment_a, segment_b, name_a, name_b, threshold, n_users, mean_gamma_a, mean_gamma_b
        (mean γ NaN where n_users is 0).
    components : per component, in ``segments`` order: {"segment", "name", "weight", "mean" (D,),
        "cov" (D, D)}, model space, full covariance.
    sample_z, sample_segment : (m, D) model-space rows of a sample of users and their segment ids.
    previous_segments : segment, name, size, share of the previous snapshot.
    transitions : user counts, index = ids on the previous snapshot, columns = ids on this one.
    segment_names : id -> name for every id in transitions/previous (births and deaths included).
    bic_table : n_components, covariance_type, bic, aic, log_likelihood, n_iter, converged, selected.
    criterion : the column of ``bic_table`` that chose the model ("bic" or "aic").
    forecast : segment, name, share_now, share_forecast (the next snapshot), method ("markov" |
        "persistence": the forecast published).
    forecast_method_reason : why that method, with the backtest's figures ("persistence: the Markov
        forecast's backtest share MAE … was worse than …"); None where no method was chosen.
    backtest : held_out, segment, name, actual, markov, persistence (shares on held-out snapshots).
    backtest_scores : held_out, method ("markov" | "persistence"), share_mae, share_tv, user_brier.
    audiences : audience, definition, n_users, path (the audience's own CSV files, a glob; NA when it
        has no users, so no file).
    forecast_basis : what the forecast's shares are (mean membership γ, or hard segments).
    tables : table name -> path written.
    """

    kind: str
    snapshot: str
    model_version: str
    published: bool
    run_id: str
    counts: dict[str, int]
    fit: dict[str, Any]
    phases: dict[str, float]
    segments: pd.DataFrame
    features: list[str]
    profile_z: pd.DataFrame
    profile_raw: pd.DataFrame
    entropy_hist: np.ndarray
    bands: dict[str, float]
    band_count: dict[str, int]
    overlaps: pd.DataFrame | None
    components: list[dict[str, Any]]
    sample_z: np.ndarray | None
    sample_segment: np.ndarray | None
    previous_segments: pd.DataFrame | None = None
    previous_snapshot: str | None = None
    transitions: pd.DataFrame | None = None
    segment_names: dict[int, str] = field(default_factory=dict)
    bic_table: pd.DataFrame | None = None
    criterion: str = "bic"
    forecast: pd.DataFrame | None = None
    backtest: pd.DataFrame | None = None
    backtest_scores: pd.DataFrame | None = None
    audiences: pd.DataFrame | None = None
    forecast_basis: str = "mean membership γ"  # what the forecast's shares are
    tables: dict[str, str] = field(default_factory=dict)
    seconds: float | None = None
    trained: bool = True
    kept: str | None = None
    latest: str | None = None
    latest_snapshot: str | None = None
    latest_moved: bool = False
    forecast_method_reason: str | None = None

    def names(self) -> dict[int, str]:
        """Segment id -> name, from every source that names one (this snapshot's names win)."""
        out = {int(k): str(v) for k, v in self.segment_names.items()}
        if has_rows(self.previous_segments):
            out.update(
                {
                    int(i): str(n)
                    for i, n in zip(
                        self.previous_segments["segment"], self.previous_segments["name"], strict=True
                    )
                }
            )
        out.update(
            {int(i): str(n) for i, n in zip(self.segments["segment"], self.segments["name"], strict=True)}
        )
        return out

    def colors(self) -> dict[int, str]:
        """Segment id -> colour: this snapshot's segments by position, the others grey."""
        out = dict.fromkeys(self.names(), GONE)
        out.update({int(s): segment_color(i) for i, s in enumerate(self.segments["segment"])})
        return out


def forecast_method(d: ReportData) -> str | None:
    """The method of the published forecast ("markov" | "persistence"), from its ``method``
    column; None without a forecast or a method."""
    fc = d.forecast
    if not has_rows(fc) or "method" not in fc.columns:
        return None
    methods = fc["method"].dropna().astype(str).unique()
    return str(methods[0]) if len(methods) == 1 else None


def latest_phrase(
    latest: str | None, latest_snapshot: str | None, moved: bool, snapshot: str | None = None
) -> str:
    """What became of the ``latest`` alias, the words after its name: '→ v0010' where the run
    moved it; 'stays v0008 (the model of a later snapshot, 2026-01-07)' where it stayed on a model
    of a snapshot after ``snapshot``; 'stays v0008' otherwise; 'is not set' with no model published."""
    if latest is None:
        return "is not set"
    if moved:
        return f"→ {latest}"
    later = bool(latest_snapshot and snapshot and latest_snapshot > snapshot)
    return f"stays {latest}" + (f" (the model of a later snapshot, {latest_snapshot})" if later else "")


def publish_state(d: ReportData) -> tuple[str, str | None]:
    """What the run did with its tables and ``latest``: ('published', '→ v0010') only where both
    moved; ('tables published for <date>', 'stays v0008 (…)') where the tables did but ``latest``
    stayed (a re-run of an older date, a scoring run); ('a candidate (not published; run …)',
    None) for a candidate. The second part is None where the run did not record ``latest``."""
    if not d.published:
        return f"a candidate (not published; run {d.run_id})", None
    if d.latest_moved:
        return "published", latest_phrase(d.latest, d.latest_snapshot, True)
    tail = latest_phrase(d.latest, d.latest_snapshot, False, d.snapshot) if d.latest is not None else None
    return f"tables published for {d.snapshot}", tail


def publish_sentence(d: ReportData, strong: str = "", code: str = "`") -> str:
    """'Model v0010, published; `latest` → v0010.' (:func:`publish_state`); ``strong`` and
    ``code`` mark the version and the alias's name."""
    state, tail = publish_state(d)
    out = f"Model {strong}{d.model_version}{strong}, {state}"
    return out + (f"; {code}latest{code} {tail}." if tail else ".")


def band_total(d: ReportData) -> int:
    """Users over all entropy bands (the bands' counts that are numbers)."""
    return sum(int(v) for v in d.band_count.values() if is_finite(v))


def feature_cols(d: ReportData) -> list[tuple[str, str]]:
    """(feature, column of its mean in ``segments``) for the features the segments table has."""
    return [(f, f"mean_{f}") for f in d.features if f"mean_{f}" in d.segments.columns]


#: At most this many feature columns per table of feature means, so that it fits the page.
PROFILE_COLUMNS = 6


def feature_groups(d: ReportData) -> list[list[tuple[str, str]]]:
    """:func:`feature_cols` split evenly over as few tables as keep each to at most
    :data:`PROFILE_COLUMNS` features."""
    feats = feature_cols(d)
    n = -(-len(feats) // PROFILE_COLUMNS)
    per = -(-len(feats) // n) if n else 1
    return [feats[i : i + per] for i in range(0, len(feats), per)]


def flagged_components(d: ReportData) -> list[tuple[str, str]]:
    """(name, reason) of the components the fit flagged as degenerate."""
    if "degenerate" not in d.segments.columns:
        return []
    return [
        (str(n), str(v))
        for n, v in zip(d.segments["name"], d.segments["degenerate"], strict=True)
        if isinstance(v, str) and v
    ]


def pruned_components(fit: dict[str, Any]) -> list[dict[str, Any]] | None:
    """The components the fit pruned and refitted without (``fit["degenerate"]["pruned"]``)."""
    return (fit.get("degenerate") or {}).get("pruned") if isinstance(fit.get("degenerate"), dict) else None


def pruned_text(components: list[dict[str, Any]]) -> str:
    """'name (reason); name (reason)'."""
    return "; ".join(f"{p.get('name')} ({p.get('reason')})" for p in components)


def blended_pairs(d: ReportData, top: int = 10) -> pd.DataFrame | None:
    """The ``top`` pairs of segments most users blend (high γ on both), most users first; ``None``
    where no user blends two segments."""
    ov = d.overlaps
    if not has_rows(ov):
        return None
    ov = ov[pd.to_numeric(ov["n_users"], errors="coerce").fillna(0) > 0]
    return ov.sort_values("n_users", ascending=False).head(top) if len(ov) else None
