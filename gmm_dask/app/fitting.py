"""Around the EM core: a warm start's parameters in today's model space, the degenerate components
of a fit — too small, or atoms (a variance at the resolution floor) — and what the fit does
about them (log, raise, or prune and refit from the kept components), and the passes it made."""

from __future__ import annotations

import logging
import math
import time
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import numpy as np

from gmm_dask.errors import FitError
from gmm_dask.mixture.options import CovarianceType
from gmm_dask.segmentation.features import FeaturePlan, Profile
from gmm_dask.segmentation.fit_record import FitRecord, drift_record
from gmm_dask.segmentation.model import SegmentationModel

if TYPE_CHECKING:
    import dask.array as da

    from gmm_dask.app.config import DegenerateConfig, JobConfig
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
                f"{features[j]}={v + 0.0:g}" for j, v in zip(self.atoms[k], self.atom_values[k], strict=True)
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


def small_components(res: FitResult, hard_weight: np.ndarray, min_share: float) -> dict[int, float]:
    """Components holding less than ``min_share`` of the rows, by soft weight or by
    ``hard_weight`` (the rows they win): component -> its smaller share."""
    assert res.soft_weight is not None  # fit_family always sums them
    share = np.minimum(res.soft_weight, hard_weight) / res.weight
    return {int(i): float(share[i]) for i in np.flatnonzero(share < min_share)}


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
    small = small_components(res, hard_weight, min_share)
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
            values[int(i)] = [atom_value(float(raw[i, j]), float(step[j])) for j in js]
    return Degenerate(small, atoms, values)


def atom_value(mean: float, step: float) -> float:
    """The value on the resolution grid a component at the floor sits on, from its fitted
    ``mean`` in original units (fitted values are spread over [x, x + ``step``)); never -0, which
    would print as ``purchases_90d=-0``."""
    return float(np.round(np.round((mean - step / 2) / step) * step, 6)) + 0.0


def enforce(
    found: Degenerate, policy: DegenerateConfig, names: list[str], date: str, features: list[str]
) -> None:
    """Raise where the policy says error. The components a model keeps are logged once it has
    the names its tables show (:func:`warn_degenerate`), the pruned ones as they are pruned."""
    for kind, comps in (("small", found.small), ("atoms", found.atoms)):
        for i in comps:
            if getattr(policy, kind) == "error":
                why = found.reason(i, features, policy.min_share)
                raise FitError(
                    f"Snapshot {date}: component {names[i]!r} is degenerate ({why}) and "
                    f"model.degenerate.{kind} is 'error'. Use fewer components (model.n_components), "
                    f"or set model.degenerate.{kind} to 'prune' or 'warn'."
                )


def to_keep(
    found: Degenerate,
    policy: DegenerateConfig,
    names: list[str],
    date: str,
    features: list[str],
    pruned: list[dict],
) -> list[int] | None:
    """Enforce ``policy`` on the components ``found``: the components to refit with (the pruned
    ones appended to ``pruned``, with their reasons), or None when nothing is to be pruned (or
    everything would be)."""
    enforce(found, policy, names, date, features)
    drop = found.to_prune(policy)
    if not drop or len(drop) >= len(names):
        return None
    keep = [i for i in range(len(names)) if i not in drop]
    gone = [{"name": names[i], "reason": found.reason(i, features, policy.min_share)} for i in drop]
    pruned += gone
    logger.warning(
        "Snapshot %s: pruning degenerate %s and refitting with %d components",
        date,
        "; ".join(f"{g['name']!r} ({g['reason']})" for g in gone),
        len(keep),
    )
    return keep


def warn_degenerate(model: SegmentationModel) -> None:
    """Log each degenerate component ``model`` keeps under the segment id and name its tables
    show: after alignment to the published model, which may renumber and rename them (a warning
    from the fit itself would name a segment no table has)."""
    reasons = model.metadata.degenerate.get("components") or {}
    for segment, name in zip(model.ids, model.segment_names, strict=True):
        if reasons.get(name):
            logger.warning(
                "Snapshot %s: segment %d %r is degenerate: %s",
                model.metadata.snapshot,
                segment,
                name,
                reasons[name],
            )


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


def pass_counts(fits: list[FitResult], other: dict[str, tuple[int, float]] | None = None) -> dict:
    """Passes over the data the fit(s) made, and their time (refits after pruning included);
    ``other`` adds passes made outside EM: ``init`` (a sampling pass that initialises) counts
    with the initialisation, anything else under its own name (e.g. ``summary``)."""
    other = dict(other or {})
    init_extra = other.pop("init", (0, 0.0))
    init = sum(f.init_passes for f in fits) + init_extra[0]
    em = sum(f.em_passes for f in fits)
    em_s = sum(f.em_seconds for f in fits)
    out = {
        "init": init,
        "init_seconds": round(sum(f.init_seconds for f in fits) + init_extra[1], 3),
        "em": em,
        "em_seconds": round(em_s, 3),
        "seconds_per_em_pass": round(em_s / em, 4) if em else None,
    }
    for name, (n, s) in other.items():
        out[name], out[f"{name}_seconds"] = n, round(s, 3)
    return out


def warm_params(
    warm: SegmentationModel | None, plan: FeaturePlan, k: int, covariance_type: CovarianceType
) -> MixtureParams | None:
    """``warm``'s parameters expressed in ``plan``'s model space, or None when they cannot start
    this fit (other K, covariance type, features or transforms)."""
    from gmm_dask.mixture.gaussian import MixtureParams, compute_precision_cholesky

    if (
        warm is None
        or warm.behaviour is not None  # a behaviour model's Gaussian is a summary, not a fit
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


@dataclass
class Fitted:
    """The last fit, every fit made (refits after pruning included), the components' names, the
    degenerate components of the last fit and the pruned ones; for a fit started from the
    published model, the mean log-likelihood of the data under that model (its first pass)."""

    res: FitResult
    fits: list[FitResult]
    names: list[str]
    found: Degenerate
    pruned: list[dict]
    published_loglik: float | None = None  # today's data under the published model (warm starts)
    # passes outside EM (the behaviour family's sampling pass, its summary passes): name -> (passes, s)
    other_passes: dict[str, tuple[int, float]] = field(default_factory=dict)


def fit_record(
    cfg: JobConfig,
    snapshot: str,
    prof: Profile,
    n_rows: int,
    plan: FeaturePlan,
    fitted: Fitted,
    covariance_type: CovarianceType,
    requested: int,
    t0: float,
    warm_start: SegmentationModel | None,
    n_params: int,
    family: str | None = None,
) -> FitRecord:
    """What a fitted model records of its data (``n_rows`` used) and its fit (``requested``
    components, started at ``t0``, ``n_params`` free parameters)."""
    m, res = cfg.model, fitted.res
    degenerate = fitted.found.as_metadata(fitted.names, plan.names, m.degenerate.min_share)
    return FitRecord(
        snapshot=snapshot,
        rows_read=prof.n_rows,
        rows_used=n_rows,
        rows_dropped=prof.n_rows - n_rows,
        rows_imputed=prof.rows_with_missing if cfg.input.missing == "impute_mean" else 0,
        lower_bound=res.lower_bound,
        log_likelihood=res.final_loglik / res.weight,
        bic=-2 * res.final_loglik + n_params * math.log(res.weight),
        aic=-2 * res.final_loglik + 2 * n_params,
        n_iter=res.n_iter,
        converged=bool(res.converged),
        seed=m.random_state,
        n_components=len(fitted.names),
        n_components_requested=requested,
        covariance_type=covariance_type,
        family=family,
        config_hash=cfg.config_hash(),
        feature_kinds=dict(zip(plan.names, plan.kinds, strict=True)),
        reseeded_components=[list(r) for r in res.reseeded],
        degenerate=degenerate | {"pruned": fitted.pruned},
        fit_seconds=round(time.perf_counter() - t0, 3),
        passes=pass_counts(fitted.fits, fitted.other_passes),
        warm_started_from=warm_start.version if warm_start is not None else None,
        drift=None
        if fitted.published_loglik is None
        else drift_record(fitted.published_loglik, res.final_loglik / res.weight),
    )
