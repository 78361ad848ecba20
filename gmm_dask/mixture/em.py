"""The EM core: one map/reduce pass per iteration, the M-step on the merged statistics.

The loop (:func:`run_em`, :func:`fit_family`) is written once, for any component *family*
(:class:`Family`): the family says how one pass reduces the data to its statistics and how
parameters follow from them; the loop iterates, re-seeds collapsed components, tracks the
objective and keeps the best of several starts. :class:`GaussianFamily` is today's Gaussian
mixture; :mod:`gmm_dask.mixture.behaviour` adds counts, zeros and amounts.

:func:`fit_mixture` is the Gaussian fit on a runner (initialisations, EM runs, the best kept, its
log-likelihood): both the scikit-learn-style facade (:class:`gmm_dask.GaussianMixture`) and the
warehouse pipeline call it once their inputs are validated.
"""

from __future__ import annotations

import contextlib
import functools
import logging
import os
import sys
import time
import warnings
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from types import FrameType
from typing import Generic, Protocol, TypeVar

import numpy as np

from gmm_dask.errors import ComponentCollapseWarning, FitError
from gmm_dask.mixture.arrays import FloatArray, IntArray
from gmm_dask.mixture.gaussian import (
    MixtureParams,
    compute_precision_cholesky,
    precision_cholesky_from_precisions,
)
from gmm_dask.mixture.init import initialize
from gmm_dask.mixture.options import CovarianceType, InitMethod
from gmm_dask.mixture.runner import Runner
from gmm_dask.mixture.suffstats import (
    SuffStats,
    VarianceFloor,
    collapsed_components,
    combine_all,
    estep_stats,
    m_step,
)

#: What seeds a fit: None, an int, or a NumPy ``Generator`` / ``RandomState``.
RandomState = int | np.random.Generator | np.random.RandomState | None

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


class PassStats(Protocol):
    """What the loop reads of one pass's merged statistics (every family's have these)."""

    @property
    def loglik(self) -> float: ...  # Σ w log p(x)
    @property
    def weight(self) -> float: ...  # Σ w
    @property
    def n_rows(self) -> int: ...
    @property
    def nk(self) -> FloatArray: ...  # (K,) Σ w γₖ
    @property
    def hard_nk(self) -> FloatArray | None: ...  # (K,) Σ w over rows whose best component is k


P = TypeVar("P")
S = TypeVar("S", bound=PassStats)


class Family(Protocol[P, S]):
    """A family of mixture components, as the EM loop uses it.

    ``estep`` is one pass over the runner's partitions: each reduces its rows to statistics ``S``
    under parameters ``P`` and the results are merged exactly (raising :class:`FitError` on rows
    no component can explain); ``update`` is the M-step on merged statistics, collapsed components
    re-seeded (returned, to be reported); ``objective`` is the per-row quantity EM never decreases
    (the mean log-likelihood, plus a prior's log density where the family has one).
    """

    def estep(self, runner: Runner, params: P, *, hard_counts: bool = False) -> S: ...
    def update(self, stats: S) -> tuple[P, IntArray]: ...
    def objective(self, stats: S, params: P) -> float: ...


@dataclass
class EMResult(Generic[P]):
    """One EM run: the parameters after its last M-step, and its lower bounds."""

    params: P
    converged: bool
    n_iter: int
    lower_bound: float
    lower_bounds: list[float] = field(default_factory=list)
    reseeded: list[tuple[int, int]] = field(default_factory=list)


def _estep_chunk(
    Xb: FloatArray,
    wb: FloatArray | None,
    idx: int,
    off: int,
    *,
    weights: FloatArray,
    means: FloatArray,
    prec_chol: FloatArray,
    covariance_type: CovarianceType,
    hard_counts: bool = False,
) -> SuffStats:
    return estep_stats(
        Xb, wb, weights, means, prec_chol, covariance_type, row_offset=off, hard_counts=hard_counts
    )


def estep(
    runner: Runner, params: MixtureParams, covariance_type: CovarianceType, *, hard_counts: bool = False
) -> SuffStats:
    """One pass: the E-step fused with the sufficient statistics, merged over all partitions."""
    fn = functools.partial(
        _estep_chunk,
        weights=params.weights,
        means=params.means,
        prec_chol=params.precisions_cholesky,
        covariance_type=covariance_type,
        hard_counts=hard_counts,
    )
    stats = runner.map_reduce(fn, combine_all)
    if stats.n_bad:
        raise FitError(
            f"{stats.n_bad} row(s) have zero or undefined density under every component "
            f"(the first is row {stats.first_bad}): their values are too extreme for float64 "
            "arithmetic. Scale, clip or log-transform the features."
        )
    return stats


def _reseed(
    stats: SuffStats,
    weights: FloatArray,
    means: FloatArray,
    cov: FloatArray,
    covariance_type: CovarianceType,
    collapsed: IntArray,
) -> None:
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


@dataclass(frozen=True)
class GaussianFamily:
    """Gaussian components (scikit-learn's ``GaussianMixture``): full, tied, diag or spherical
    covariances in precision-Cholesky form, ``reg_covar`` (and an optional per-component variance
    floor) added after the statistics are merged."""

    covariance_type: CovarianceType
    reg_covar: float | FloatArray
    covariance_floor: VarianceFloor | None = None

    def estep(self, runner: Runner, params: MixtureParams, *, hard_counts: bool = False) -> SuffStats:
        return estep(runner, params, self.covariance_type, hard_counts=hard_counts)

    def update(self, stats: SuffStats) -> tuple[MixtureParams, IntArray]:
        ct = self.covariance_type
        weights, means, cov = m_step(stats, ct, self.reg_covar, self.covariance_floor)
        collapsed = collapsed_components(stats)
        if collapsed.size:
            _reseed(stats, weights, means, cov, ct, collapsed)
        return MixtureParams(
            weights, means, cov, compute_precision_cholesky(cov, ct, self.reg_covar)
        ), collapsed

    def objective(self, stats: SuffStats, params: MixtureParams) -> float:
        return stats.loglik / stats.weight


def _caller_level() -> int:
    """The ``stacklevel`` of the first frame outside the engine (the user's call to ``fit``), as
    seen from the function that calls this one."""
    here = os.path.dirname(os.path.abspath(__file__))
    frame: FrameType | None = sys._getframe(2)
    level = 2
    while frame is not None and os.path.dirname(os.path.abspath(frame.f_code.co_filename)) == here:
        frame, level = frame.f_back, level + 1
    return level


def run_em(
    runner: Runner,
    family: Family[P, S],
    params: P,
    *,
    tol: float,
    max_iter: int,
    prev_lower_bound: float = -np.inf,
    init: int = 0,
    callback: Callable[[IterationInfo], None] | None = None,
) -> EMResult[P]:
    """Iterate EM from ``params`` until the lower bound changes by less than ``tol``.

    ``lower_bound`` of iteration i is the family's objective (the mean log-likelihood) of the
    parameters *entering* that iteration (as scikit-learn reports it); the parameters returned
    are those after its M-step.
    """
    lower_bound = prev_lower_bound
    lower_bounds: list[float] = []
    reseeded: list[tuple[int, int]] = []
    converged = False
    n_iter = 0
    for n_iter in range(1, max_iter + 1):
        t0 = time.perf_counter()
        prev = lower_bound
        stats = family.estep(runner, params)
        lower_bound = family.objective(stats, params)
        params, collapsed = family.update(stats)
        if collapsed.size:
            reseeded.extend((n_iter, int(c)) for c in collapsed)
            warnings.warn(
                f"Component(s) {collapsed.tolist()} collapsed at EM iteration {n_iter} (less "
                "than a thousandth of a row's weight) and were re-seeded at the worst-explained "
                "rows. Fewer components may suit this data; see `reseeded_components_`.",
                ComponentCollapseWarning,
                stacklevel=_caller_level(),
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


@dataclass
class FitResult(Generic[P]):
    """What :func:`fit_family` (and :func:`fit_mixture`) returns: the best run, and its parameters' fit to the data.

    Attributes
    ----------
    params : MixtureParams (or the family's parameters)
        Parameters after the best run's last M-step.
    converged : bool
    n_iter : int
    lower_bound : float
        Mean (weighted) log-likelihood of the parameters entering the best run's last iteration.
    lower_bounds : list of float
        The best run's lower bound at every iteration.
    reseeded : list of (iteration, component)
        Components that collapsed and were re-seeded during the best run.
    final_loglik : float
        Σ w·log p(x) of ``params`` on the data (one pass after the runs).
    weight : float
        Σ w (the number of rows without weights).
    n_rows : int
    soft_weight : ndarray of shape (K,)
        Σ w·γₖ of ``params`` on the data.
    hard_weight : ndarray of shape (K,)
        Σ w over the rows whose most probable component is k.
    """

    params: P
    converged: bool
    n_iter: int
    lower_bound: float
    lower_bounds: list[float]
    reseeded: list[tuple[int, int]]
    final_loglik: float
    weight: float
    n_rows: int
    soft_weight: FloatArray | None = None
    hard_weight: FloatArray | None = None
    init_passes: int = 0  # passes over the data spent initialising (all runs)
    init_seconds: float = 0.0
    em_passes: int = 0  # E-step passes (all runs), the final log-likelihood pass included
    em_seconds: float = 0.0


def seed_from(random_state: RandomState) -> int:
    """The base seed (an int in [0, 2⁶³)) of a ``random_state``: None, an int, or a NumPy
    ``Generator`` / ``RandomState`` (one number is drawn from those)."""
    if isinstance(random_state, np.random.Generator):
        return int(random_state.integers(0, 2**63 - 1))
    if isinstance(random_state, np.random.RandomState):
        return int(random_state.randint(0, 2**31 - 1))
    return int(np.random.SeedSequence(random_state).generate_state(1, np.uint64)[0] >> 1)


def initial_params(
    runner: Runner,
    *,
    n_components: int,
    covariance_type: CovarianceType,
    reg_covar: float | FloatArray,
    init_params: InitMethod,
    seed: int,
    data_variance: float,
    weights_init: FloatArray | None = None,
    means_init: FloatArray | None = None,
    precisions_init: FloatArray | None = None,
    covariance_floor: VarianceFloor | None = None,
) -> MixtureParams:
    """Parameters one EM run starts from: ``init_params``' initialisation, with any of the
    given (already validated) ``weights_init`` / ``means_init`` / ``precisions_init`` in place
    of what it found. All three given: no pass over the data."""
    ct = covariance_type
    if weights_init is not None and means_init is not None and precisions_init is not None:
        pc = precision_cholesky_from_precisions(precisions_init, ct)
        return MixtureParams(weights_init, means_init, None, pc)
    params = initialize(
        runner,
        init_params,
        n_components,
        ct,
        reg_covar,
        seed,
        data_variance=data_variance,
        floor=covariance_floor,
    )
    weights = params.weights if weights_init is None else weights_init
    means = params.means if means_init is None else means_init
    if precisions_init is None:
        return MixtureParams(weights, means, params.covariances, params.precisions_cholesky)
    return MixtureParams(weights, means, None, precision_cholesky_from_precisions(precisions_init, ct))


def fit_mixture(
    runner: Runner,
    *,
    n_components: int,
    covariance_type: CovarianceType,
    tol: float,
    reg_covar: float | FloatArray,
    max_iter: int,
    n_init: int,
    init_params: InitMethod,
    seed: int,
    data_variance: float,
    init: MixtureParams | None = None,
    weights_init: FloatArray | None = None,
    means_init: FloatArray | None = None,
    precisions_init: FloatArray | None = None,
    prev_lower_bound: float = -np.inf,
    callback: Callable[[IterationInfo], None] | None = None,
    covariance_floor: VarianceFloor | None = None,
) -> FitResult[MixtureParams]:
    """Fit a Gaussian mixture by EM on the data a runner holds; keep the best of ``n_init`` runs.

    Values are not validated here: the caller has checked the parameters, the data (finite,
    within range, non-negative weights, at least ``n_components`` rows) and the ``*_init``
    arrays (shapes, positive definiteness).

    Parameters
    ----------
    runner : GraphRunner or DistributedRunner
    n_components, covariance_type, tol, reg_covar, max_iter, init_params
        As :class:`gmm_dask.GaussianMixture`. ``max_iter=0`` returns the initial parameters.
    n_init : int
        Initialisations; the run with the highest final lower bound is kept.
    seed : int
        Base seed (see :func:`seed_from`); run i initialises with the i-th number of its
        ``SeedSequence``.
    data_variance : float
        Mean per-feature (weighted) variance of the data: scales k-means' stopping tolerance.
    init : MixtureParams, optional
        Start from these parameters (a warm start): one run, no initialisation, their
        ``precisions_cholesky`` used as they are. ``n_init``, ``init_params`` and the
        ``*_init`` arrays are then ignored.
    weights_init, means_init, precisions_init : ndarray, optional
        Validated float64 arrays replacing the initialisation's weights, means or precisions.
    prev_lower_bound : float, default=-inf
        Lower bound before the first iteration (a warm start's previous ``lower_bound_``): the
        first iteration's change is measured from it.
    callback : callable, optional
        Called with an :class:`IterationInfo` after every EM iteration.
    covariance_floor : callable, optional
        ``floor(means)`` → (K, D) smallest variances (see :func:`~gmm_dask.mixture.suffstats.m_step`),
        applied in every M-step, the initialisation's included.

    Returns
    -------
    FitResult
    """
    n_runs = 1 if init is not None else n_init
    seeds = np.random.SeedSequence(seed).generate_state(n_runs, np.uint64) >> np.uint64(1)
    family = GaussianFamily(covariance_type, reg_covar, covariance_floor)

    def start(i: int) -> MixtureParams:
        if init is not None:
            return init
        return initial_params(
            runner, n_components=n_components, covariance_type=covariance_type, reg_covar=reg_covar,
            init_params=init_params, seed=int(seeds[i]), data_variance=data_variance,
            weights_init=weights_init, means_init=means_init, precisions_init=precisions_init,
            covariance_floor=covariance_floor,
        )  # fmt: skip

    return fit_family(
        runner, family, start, n_runs, tol=tol, max_iter=max_iter,
        prev_lower_bound=prev_lower_bound, callback=callback,
    )  # fmt: skip


def fit_family(
    runner: Runner,
    family: Family[P, S],
    start: Callable[[int], P],
    n_runs: int,
    *,
    tol: float,
    max_iter: int,
    prev_lower_bound: float = -np.inf,
    callback: Callable[[IterationInfo], None] | None = None,
) -> FitResult[P]:
    """EM for any family: run i starts from ``start(i)`` (its passes count as initialisation) and
    iterates until the objective changes by less than ``tol`` (``max_iter=0``: the start as it
    is); the run with the highest final objective is kept, and one more pass measures its
    log-likelihood, soft and hard component weights."""

    def iterate(params: P, i: int) -> EMResult[P]:
        if max_iter == 0:
            return EMResult(params, False, 0, -np.inf)
        return run_em(
            runner, family, params, tol=tol, max_iter=max_iter,
            prev_lower_bound=prev_lower_bound, init=i, callback=callback,
        )  # fmt: skip

    init_cost, em_cost = _Cost(), _Cost()
    best = _best_run(runner, n_runs, start, iterate, init_cost, em_cost)
    # One more pass: the log-likelihood of the parameters actually returned (for BIC/AIC
    # without re-reading the data later).
    with _metered(runner, em_cost):
        final = family.estep(runner, best.params, hard_counts=True)
    return _fit_result(best, final, init_cost, em_cost)


def _fit_result(best: EMResult[P], final: PassStats, init_cost: _Cost, em_cost: _Cost) -> FitResult[P]:
    return FitResult(
        params=best.params,
        converged=best.converged,
        n_iter=best.n_iter,
        lower_bound=best.lower_bound,
        lower_bounds=best.lower_bounds,
        reseeded=best.reseeded,
        final_loglik=final.loglik,
        weight=final.weight,
        n_rows=final.n_rows,
        soft_weight=final.nk,
        hard_weight=final.hard_nk,
        init_passes=init_cost.passes,
        init_seconds=init_cost.seconds,
        em_passes=em_cost.passes,
        em_seconds=em_cost.seconds,
    )


def _best_run(
    runner: Runner,
    n_runs: int,
    start: Callable[[int], P],
    iterate: Callable[[P, int], EMResult[P]],
    init_cost: _Cost,
    em_cost: _Cost,
) -> EMResult[P]:
    """Run i starts from ``start(i)`` and runs ``iterate``; the run with the highest final lower
    bound (the first of equals) is kept."""
    best: EMResult[P] | None = None
    for i in range(n_runs):
        with _metered(runner, init_cost):
            params = start(i)
        with _metered(runner, em_cost):
            result = iterate(params, i)
        logger.info(
            "Initialisation %d/%d: lower bound %.10g after %d iterations (converged: %s)",
            i + 1,
            n_runs,
            result.lower_bound,
            result.n_iter,
            result.converged,
        )
        if best is None or result.lower_bound > best.lower_bound:
            best = result
    if best is None:
        raise ValueError(f"an EM fit needs at least one run, got n_runs={n_runs}")
    return best


@dataclass
class _Cost:
    """Passes over the data and seconds spent, summed over the phases :func:`_metered` times."""

    passes: int = 0
    seconds: float = 0.0


@contextlib.contextmanager
def _metered(runner: Runner, cost: _Cost) -> Iterator[None]:
    """Add the passes and seconds of the ``with`` block to ``cost``."""
    t0, p0 = time.perf_counter(), runner.passes
    yield
    cost.passes += runner.passes - p0
    cost.seconds += time.perf_counter() - t0
