"""What a fitted model records of its data and its fit: the registry's ``metadata``, typed.

Read by attribute (``model.metadata.n_iter``), stored as a JSON object (:meth:`FitRecord.to_json`);
keys a later version of gmm-dask wrote are kept as they were read (``extra``), so an older
version neither drops nor rejects them.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass, field
from typing import Any


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


__all__ = ["FitRecord"]
