"""The EM loop: one map/reduce pass per iteration, the M-step on the merged statistics."""

from __future__ import annotations

import functools
import logging
import time
import warnings
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np

from .errors import ComponentCollapseWarning, FitError
from .gaussian import compute_precision_cholesky
from .init import MixtureParams
from .suffstats import SuffStats, collapsed_components, combine_all, estep_stats, m_step

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class IterationInfo:
    """What a progress callback receives after each EM iteration."""

    init: int
    n_iter: int
    max_iter: int
    lower_bound: float
    change: float
    seconds: float


@dataclass
class EMResult:
    params: MixtureParams
    converged: bool
    n_iter: int
    lower_bound: float
    lower_bounds: list[float] = field(default_factory=list)
    reseeded: list[tuple[int, int]] = field(default_factory=list)


def _estep_chunk(Xb, wb, idx, off, *, weights, means, prec_chol, covariance_type):
    return estep_stats(Xb, wb, weights, means, prec_chol, covariance_type, row_offset=off)


def estep(runner, params: MixtureParams, covariance_type: str) -> SuffStats:
    """One pass: the E-step fused with the sufficient statistics, merged over all partitions."""
    fn = functools.partial(
        _estep_chunk,
        weights=params.weights,
        means=params.means,
        prec_chol=params.precisions_cholesky,
        covariance_type=covariance_type,
    )
    stats = runner.map_reduce(fn, combine_all)
    if stats.n_bad:
        raise FitError(
            f"{stats.n_bad} row(s) have zero or undefined density under every component "
            f"(the first is row {stats.first_bad}): their values are too extreme for float64 "
            "arithmetic. Scale, clip or log-transform the features."
        )
    return stats


def _reseed(stats: SuffStats, weights, means, cov, covariance_type, collapsed):
    """Move collapsed components onto the worst-explained rows; pooled covariance; weight 1/K."""
    k = len(weights)
    healthy = np.setdiff1d(np.arange(k), collapsed)
    nk = stats.nk[healthy]
    frac = nk / nk.sum()
    for j, comp in enumerate(collapsed):
        means[comp] = stats.worst_rows[j % len(stats.worst_rows)]
        if covariance_type == "full":
            cov[comp] = np.tensordot(frac, cov[healthy], axes=1)
        elif covariance_type in ("diag", "spherical"):
            cov[comp] = frac @ cov[healthy]
        weights[comp] = 1.0 / k
    weights /= weights.sum()


def run_em(
    runner,
    params: MixtureParams,
    *,
    covariance_type: str,
    tol: float,
    max_iter: int,
    reg_covar: float,
    prev_lower_bound: float = -np.inf,
    init: int = 0,
    callback: Callable[[IterationInfo], None] | None = None,
) -> EMResult:
    """Iterate EM from ``params`` until the lower bound changes by less than ``tol``.

    ``lower_bound`` of iteration i is the mean log-likelihood of the parameters *entering* that
    iteration (as scikit-learn reports it); the parameters returned are those after its M-step.
    """
    lower_bound = prev_lower_bound
    lower_bounds: list[float] = []
    reseeded: list[tuple[int, int]] = []
    converged = False
    n_iter = 0
    for n_iter in range(1, max_iter + 1):
        t0 = time.perf_counter()
        prev = lower_bound
        stats = estep(runner, params, covariance_type)
        lower_bound = stats.loglik / stats.weight
        weights, means, cov = m_step(stats, covariance_type, reg_covar)
        collapsed = collapsed_components(stats)
        if collapsed.size:
            _reseed(stats, weights, means, cov, covariance_type, collapsed)
            reseeded.extend((n_iter, int(c)) for c in collapsed)
            warnings.warn(
                f"Component(s) {collapsed.tolist()} collapsed at EM iteration {n_iter} (less "
                "than a thousandth of a row's weight) and were re-seeded at the worst-explained "
                "rows. Fewer components may suit this data; see `reseeded_components_`.",
                ComponentCollapseWarning,
                stacklevel=3,
            )
        params = MixtureParams(
            weights, means, cov, compute_precision_cholesky(cov, covariance_type, reg_covar)
        )
        lower_bounds.append(lower_bound)
        change = lower_bound - prev
        seconds = time.perf_counter() - t0
        logger.info(
            "EM iteration %d/%d: lower bound %.10g, change %.3g (%.3f s)",
            n_iter,
            max_iter,
            lower_bound,
            change,
            seconds,
        )
        if callback is not None:
            callback(IterationInfo(init, n_iter, max_iter, lower_bound, change, seconds))
        if abs(change) < tol:
            converged = True
            break
    return EMResult(params, converged, n_iter, lower_bound, lower_bounds, reseeded)
