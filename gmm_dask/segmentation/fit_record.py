"""What a fitted model records of its data and its fit: the registry's ``metadata``, typed.

Read by attribute (``model.metadata.n_iter``), stored as a JSON object (:meth:`FitRecord.to_json`);
keys a later version of gmm-dask wrote are kept as they were read (``extra``), so an older
version neither drops nor rejects them.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

#: Δ log-likelihood (nats per user) above which a warm-started fit's data are called a
#: promotion-like shift. Today's fit always explains today's data at least as well as yesterday's
#: model, so Δ ≥ 0; on the demo's ordinary days Δ ≈ 0.001 (users churn, the segments stay), on
#: its promotion days 2.6–3.8 (every active user's counts and amounts jump). 0.5 sits far from
#: both: a shift a few users cannot cause, well below what a promotion does.
DRIFT_NATS = 0.5


@dataclass(frozen=True)
class FitRecord:
    """A fitted model's record (every field optional: a model built by hand has none).

    Attributes
    ----------
    snapshot : str
        The date partition the model was fitted on.
    rows_read, rows_used, rows_dropped, rows_imputed : int
        Rows of the snapshot, used by the fit, dropped for missing values, imputed.
    lower_bound : float
        Mean log-likelihood entering the last EM iteration (scikit-learn's ``lower_bound_``).
    log_likelihood, bic, aic : float
        Mean log-likelihood of the returned parameters; information criteria (lower is better).
    n_iter, converged : int, bool
        EM iterations of the kept run; whether it met ``tol``.
    seed, n_components, n_components_requested, covariance_type, config_hash
        The fit's settings (``n_components`` after pruning degenerate components).
    family : str
        ``behaviour`` for a fit of the behaviour family (its ``covariance_type`` is its
        summaries', ``full``); unset for the Gaussian family.
    feature_kinds : dict
        Feature name -> count | amount | continuous | binary.
    reseeded_components : list of [iteration, component]
    degenerate : dict
        The degenerate-component report (``components``, ``pruned``, ...).
    fit_seconds : float
    passes : dict
        Passes over the data by phase.
    warm_started_from, aligned_to : str
        Model versions the fit started from / its segment ids were aligned to.
    drift : dict
        For a fit started from the published model's parameters: ``published_log_likelihood``
        (mean log-likelihood of today's data under the published model, in today's model space
        for the Gaussian family), ``log_likelihood`` (under today's fit) and ``delta`` (their
        difference, nats per user; above :data:`DRIFT_NATS` a promotion-like shift).
    alignment : dict
        How the ids were aligned (mapping, births, deaths, splits, merges).
    retired_ids : list of int
        Segment ids no longer in use (never given again).
    selected_by, candidates : str, int
        For a model chosen by select-k: the criterion and the number of candidates.
    version, created_at, package_version : str
        Registry version, when and by which gmm-dask it was registered (set by the registry).
    extra : dict
        Keys this version of gmm-dask does not know, as read.
    """

    snapshot: str | None = None
    rows_read: int | None = None
    rows_used: int | None = None
    rows_dropped: int | None = None
    rows_imputed: int | None = None
    lower_bound: float = math.nan
    log_likelihood: float | None = None
    bic: float | None = None
    aic: float | None = None
    n_iter: int = 0
    converged: bool = True
    seed: int | None = None
    n_components: int | None = None
    n_components_requested: int | None = None
    covariance_type: str | None = None
    family: str | None = None
    config_hash: str | None = None
    feature_kinds: dict[str, str] = field(default_factory=dict)
    reseeded_components: list[list[int]] = field(default_factory=list)
    degenerate: dict[str, Any] = field(default_factory=dict)
    fit_seconds: float | None = None
    passes: dict[str, Any] = field(default_factory=dict)
    warm_started_from: str | None = None
    drift: dict[str, float] | None = None
    alignment: dict[str, Any] | None = None
    aligned_to: str | None = None
    retired_ids: list[int] = field(default_factory=list)
    selected_by: str | None = None
    candidates: int | None = None
    version: str | None = None
    created_at: str | None = None
    package_version: str | None = None
    extra: dict[str, Any] = field(default_factory=dict)

    def replace(self, **changes: Any) -> FitRecord:
        """A copy with ``changes``."""
        return dataclasses.replace(self, **changes)

    def criterion(self, name: str) -> float:
        """``bic`` or ``aic`` (NaN where the fit did not record it)."""
        value = {"bic": self.bic, "aic": self.aic}[name]
        return math.nan if value is None else float(value)

    def to_json(self) -> dict[str, Any]:
        """The record as a JSON object: the known fields that are set, then ``extra``."""
        out: dict[str, Any] = {}
        for f in dataclasses.fields(self):
            if f.name == "extra":
                continue
            value = getattr(self, f.name)
            default = f.default_factory() if f.default_factory is not dataclasses.MISSING else f.default
            unset = value is None or value == default or (isinstance(value, float) and math.isnan(value))
            if not unset or f.name in ("n_iter", "converged"):
                out[f.name] = value
        return {**out, **self.extra}

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> FitRecord:
        """The record of a stored model (unknown keys kept in ``extra``; missing ones unset)."""
        known = {f.name for f in dataclasses.fields(cls)} - {"extra"}
        values = {k: v for k, v in data.items() if k in known and v is not None}
        if "lower_bound" in values:
            values["lower_bound"] = float(values["lower_bound"])
        return cls(**values, extra={k: v for k, v in data.items() if k not in known})


def drift_record(published: float, today: float) -> dict[str, float]:
    """The ``drift`` of a fit: mean log-likelihoods of today's data under the published model
    and under today's fit (nats per user), and their difference."""
    return {"published_log_likelihood": published, "log_likelihood": today, "delta": today - published}


def promotion_like(fit: Mapping[str, Any] | None) -> str | None:
    """The run summary's line when a fit's ``drift`` (a :meth:`FitRecord.to_json` mapping)
    exceeds :data:`DRIFT_NATS`, else None."""
    drift = (fit or {}).get("drift") or {}
    delta = drift.get("delta")
    if delta is None or not delta > DRIFT_NATS:
        return None
    return f"promotion-like shift: the data moved far from yesterday's model (Δ = {delta:.2f} nats/user)"


__all__ = ["DRIFT_NATS", "FitRecord", "drift_record", "promotion_like"]
