"""Around the EM core: a warm start's parameters in today's model space, the degenerate components
of a fit — too small, or atoms (a variance at the resolution floor) — and what the fit does
about them (log, raise, or prune and refit from the kept components), and the passes it made."""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np

from gmm_dask.errors import FitError
from gmm_dask.mixture.options import CovarianceType
from gmm_dask.segmentation.features import FeaturePlan
from gmm_dask.segmentation.model import SegmentationModel

if TYPE_CHECKING:
    import dask.array as da

    from gmm_dask.app.config import DegenerateConfig
    from gmm_dask.mixture.em import FitResult
    from gmm_dask.mixture.gaussian import MixtureParams

#: the fit's warnings keep the logger they always had
logger = logging.getLogger("gmm_dask.app.pipeline")


@dataclass
class Degenerate:
    """Degenerate components of a fit: too small, or atoms (a variance at the resolution floor)."""

    small: dict[int, float]  # component -> its smallest share (soft weight or hard size)
    atoms: dict[int, list[int]]  # component -> features where its variance sits at the floor
    atom_values: dict[int, list[float]]  # the raw values the atoms sit on

    def reason(self, k: int, features: list[str], min_share: float) -> str | None:
        parts = []
        if k in self.small:
            parts.append(f"small: {self.small[k]:.2%} of rows < min_share {min_share:.2%}")
        if k in self.atoms:
            at = ", ".join(
                f"{features[j]}={v:g}" for j, v in zip(self.atoms[k], self.atom_values[k], strict=True)
            )
            parts.append(f"atom at {at} (variance at the resolution floor)")
        return "; ".join(parts) or None

    def to_prune(self, policy: DegenerateConfig) -> list[int]:
        """The components ``policy`` prunes."""
        return sorted(
            (set(self.small) if policy.small == "prune" else set())
            | (set(self.atoms) if policy.atoms == "prune" else set())
        )

    def as_metadata(self, names: list[str], features: list[str], min_share: float) -> dict:
        return {
            "min_share": min_share,
            "components": {
                names[k]: self.reason(k, features, min_share) for k in sorted({*self.small, *self.atoms})
            },
        }


def hard_weight(
    X: da.Array, w: da.Array | None, params: MixtureParams, covariance_type: CovarianceType
) -> np.ndarray:
    """Σ w over the rows (n, D) ``X`` each component would win when the tables are written (one pass)."""
    from gmm_dask.mixture.em import estep
    from gmm_dask.mixture.runner import ChunkedData, make_runner

    runner = make_runner(ChunkedData(X, w), persist=False)
    try:
        counts = estep(runner, params, covariance_type, hard_counts=True).hard_nk
    finally:
        runner.close()
    assert counts is not None  # asked for with hard_counts=True
    return counts


def degenerate_components(
    res: FitResult,
    hard_weight: np.ndarray,
    plan: FeaturePlan,
    covariance_type: CovarianceType,
    reg_covar: float,
    min_share: float,
) -> Degenerate:
    """Components of a fit holding less than ``min_share`` of the rows (by soft weight, or by
    ``hard_weight``, the rows they win), and components whose variance sits at the resolution
    floor in some feature."""
    from gmm_dask.mixture.suffstats import variance_at_floor

    p = res.params
    assert res.soft_weight is not None  # fit_mixture always sums them
    share = np.minimum(res.soft_weight, hard_weight) / res.weight
    small = {int(i): float(share[i]) for i in np.flatnonzero(share < min_share)}
    atoms: dict[int, list[int]] = {}
    values: dict[int, list[float]] = {}
    step = plan.resolution  # set where the plan has a floor
    if plan.has_floor and step is not None:
        assert p.covariances is not None  # a fit's parameters carry their covariances
        at = variance_at_floor(
            p.covariances, covariance_type, reg_covar, plan.variance_floor(p.means), p.weights
        )
        raw = plan.to_original_units(p.means)
        for i in np.flatnonzero(at.any(axis=1)):
            js = [int(j) for j in np.flatnonzero(at[i])]
            atoms[int(i)] = js
            # the step the component sits on (fitted values are spread over [x, x + Δ))
            values[int(i)] = [
                float(np.round(np.round((raw[i, j] - step[j] / 2) / step[j]) * step[j], 6)) for j in js
            ]
    return Degenerate(small, atoms, values)


def enforce(
    found: Degenerate, policy: DegenerateConfig, names: list[str], date: str, features: list[str]
) -> None:
    """Log what was found; raise where the policy says error."""
    for kind, comps in (("small", found.small), ("atoms", found.atoms)):
        for i in comps:
            why = found.reason(i, features, policy.min_share)
            action = getattr(policy, kind)
            if action == "error":
                raise FitError(
                    f"Snapshot {date}: component {names[i]!r} is degenerate ({why}) and "
                    f"model.degenerate.{kind} is 'error'. Use fewer components (model.n_components), "
                    f"or set model.degenerate.{kind} to 'prune' or 'warn'."
                )
            logger.warning("Snapshot %s: component %r is degenerate: %s (%s)", date, names[i], why, action)


def subset(params: MixtureParams, keep: list[int], covariance_type: CovarianceType) -> MixtureParams:
    """Parameters of the kept components, weights renormalised (a warm start for the refit)."""
    from gmm_dask.mixture.gaussian import MixtureParams

    w = params.weights[keep] / params.weights[keep].sum()
    tied = covariance_type == "tied"
    cov = params.covariances
    return MixtureParams(
        w,
        params.means[keep],
        cov if tied or cov is None else cov[keep],
        params.precisions_cholesky if tied else params.precisions_cholesky[keep],
    )


def pass_counts(fits: list[FitResult]) -> dict:
    """Passes over the data the fit(s) made, and their time (refits after pruning included)."""
    init = sum(f.init_passes for f in fits)
    em = sum(f.em_passes for f in fits)
    em_s = sum(f.em_seconds for f in fits)
    return {
        "init": init,
        "init_seconds": round(sum(f.init_seconds for f in fits), 3),
        "em": em,
        "em_seconds": round(em_s, 3),
        "seconds_per_em_pass": round(em_s / em, 4) if em else None,
    }


def warm_params(
    warm: SegmentationModel | None, plan: FeaturePlan, k: int, covariance_type: CovarianceType
) -> MixtureParams | None:
    """``warm``'s parameters expressed in ``plan``'s model space, or None when they cannot start
    this fit (other K, covariance type, features or transforms)."""
    from gmm_dask.mixture.gaussian import MixtureParams, compute_precision_cholesky

    if (
        warm is None
        or warm.n_components != k
        or warm.covariance_type != covariance_type
        or [(f.name, f.transform) for f in warm.plan.features]
        != [(f.name, f.transform) for f in plan.features]
    ):
        return None
    if np.array_equal(warm.plan.mean, plan.mean) and np.array_equal(warm.plan.scale, plan.scale):
        return MixtureParams(warm.weights, warm.means, warm.covariances, warm.precisions_cholesky)
    ratio = warm.plan.scale / plan.scale  # z_new = z_old · ratio + shift
    means = warm.means * ratio + (warm.plan.mean - plan.mean) / plan.scale
    c = warm.covariances
    if covariance_type == "full":
        cov = c * np.outer(ratio, ratio)[None]
    elif covariance_type == "tied":
        cov = c * np.outer(ratio, ratio)
    elif covariance_type == "diag":
        cov = c * ratio[None] ** 2
    else:  # spherical: exact only for one common ratio
        if not np.allclose(ratio, ratio[0]):
            return None
        cov = c * ratio[0] ** 2
    return MixtureParams(warm.weights, means, cov, compute_precision_cholesky(cov, covariance_type))
