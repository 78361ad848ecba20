"""Seeded initialisation of mixture parameters, computed with passes over partitioned data.

Every method only asks the runner for map/reduce passes, so it works the same on one NumPy
array, Dask's threaded scheduler and a distributed cluster. Per-row random numbers come from a
counter-based generator keyed by (seed, stream) and the row's global index, so the result does
not depend on how the rows are split into partitions.

Methods
-------
``k-means-sample`` (the default)
    k-means on a sample drawn in one pass, at most 6 passes in all: one pass sums the weights,
    one draws a Poisson sample of about ``max(50,000, 200·K)`` rows (row i kept with probability
    pᵢ = min(1, m·wᵢ/Σw) and weighted wᵢ/pᵢ, so the sample's weighted sums estimate the full
    data's without bias and a weight-0 row is never drawn), then in memory the best of 3 greedy
    k-means++ seedings each refined by Lloyd, and at most 4 Lloyd passes on the full data (fewer
    once the centres stop moving). Responsibilities are the final hard assignment.
``k-means||``
    Scalable k-means++ (Bahmani et al. 2012): a weighted random first centre, ``rounds`` passes
    each sampling ~``oversampling × K`` candidates with probability ∝ w·d², candidates weighted by
    the rows nearest to them, a weighted k-means++ and Lloyd on the candidates, then Lloyd
    passes on the full data. Responsibilities are the final hard assignment.
``k-means++``
    Exact D²-sampling, one pass per centre, then Lloyd passes.
``random``
    Uniform random responsibilities, normalised per row (as scikit-learn).
``random_from_data``
    K distinct rows (weighted sampling without replacement) as means, covariances ``reg_covar``.
"""

from __future__ import annotations

import functools
import logging
from typing import TypeVar

import numpy as np

from gmm_dask.mixture.arrays import FloatArray, Int64Array
from gmm_dask.mixture.gaussian import MixtureParams, compute_precision_cholesky
from gmm_dask.mixture.kmeans import hard_stats, nearest_center, sample_kmeans
from gmm_dask.mixture.options import CovarianceType, InitMethod, MomentKind
from gmm_dask.mixture.runner import Runner
from gmm_dask.mixture.suffstats import (
    SuffStats,
    VarianceFloor,
    combine_all,
    m_step,
    moment_kind,
    resp_stats,
)

logger = logging.getLogger(__name__)

R = TypeVar("R", float, FloatArray)

#: What a sampling pass keeps: keys, global row indices and the rows, shapes (m,), (m,), (m, D).
TopKeys = tuple[FloatArray, Int64Array, FloatArray]
#: Sampled rows: global row indices and the rows, shapes (m,) and (m, D).
SampledRows = tuple[Int64Array, FloatArray]
#: A weighted sample: global row indices, the rows and their weights, shapes (m,), (m, D), (m,).
WeightedRows = tuple[Int64Array, FloatArray, FloatArray]

_STREAM_FIRST, _STREAM_PARALLEL, _STREAM_PP, _STREAM_RANDOM, _STREAM_FROM_DATA, _STREAM_SAMPLE = range(1, 7)

#: k-means-sample: rows drawn (at least, and per component), local seedings, full-data Lloyd passes.
SAMPLE_ROWS = 50_000
SAMPLE_ROWS_PER_COMPONENT = 200
SAMPLE_RESTARTS = 3
SAMPLE_LLOYD_PASSES = 4


def row_uniforms(seed: int, stream: int, row_offset: int, n: int, k: int = 1) -> FloatArray:
    """Uniform [0, 1) numbers for rows ``row_offset … row_offset + n``, ``k`` per row.

    Row i always gets the same numbers for a given (seed, stream), whatever the partitioning.
    """
    bg = np.random.Philox(key=[seed % (1 << 64), stream])
    q, r = divmod(row_offset * k, 4)
    bg.advance(q)
    gen = np.random.Generator(bg)
    if r:
        gen.random(r)
    return gen.random(n * k).reshape(n, k)


def params_from_stats(
    stats: SuffStats,
    covariance_type: CovarianceType,
    reg_covar: float | FloatArray,
    floor: VarianceFloor | None = None,
) -> MixtureParams:
    """M-step on initial responsibilities, then precision Cholesky factors."""
    weights, means, cov = m_step(stats, covariance_type, reg_covar, floor)
    return MixtureParams(weights, means, cov, compute_precision_cholesky(cov, covariance_type, reg_covar))


# --- per-partition kernels (module level so they pickle by reference) ------------------------


def _unit(wb: FloatArray | None, n: int) -> FloatArray:
    return np.ones(n) if wb is None else wb


def _top_keys_chunk(
    Xb: FloatArray,
    wb: FloatArray | None,
    idx: int,
    off: int,
    *,
    seed: int,
    stream: int,
    centers: FloatArray | None,
    m: int,
) -> TopKeys:
    """Efraimidis–Spirakis keys log(u)/mass for rows; keep the m largest (mass ∝ w·d², or w)."""
    n = len(Xb)
    mass = _unit(wb, n).astype(np.float64, copy=True)
    if centers is not None:
        shift = centers.mean(axis=0)
        _, d2 = nearest_center(Xb - shift, centers - shift)
        mass *= d2
    u = row_uniforms(seed, stream, off, n)[:, 0]
    with np.errstate(divide="ignore"):
        keys = np.where(mass > 0, np.log(np.maximum(u, 1e-300)) / np.where(mass > 0, mass, 1.0), -np.inf)
    sel = np.flatnonzero(np.isfinite(keys))
    if sel.size > m:
        sel = sel[np.argpartition(-keys[sel], m - 1)[:m]]
    return keys[sel], off + sel, Xb[sel]


def _merge_top_keys(parts: list[TopKeys], m: int) -> TopKeys:
    keys = np.concatenate([p[0] for p in parts])
    index = np.concatenate([p[1] for p in parts])
    rows = np.concatenate([p[2] for p in parts])
    order = np.lexsort((index, -keys))[:m]
    return keys[order], index[order], rows[order]


def _trial_phi_chunk(
    Xb: FloatArray, wb: FloatArray | None, idx: int, off: int, *, centers: FloatArray, trials: FloatArray
) -> FloatArray:
    """Potential Σ w·min d² if each trial row were added to ``centers``: shape (n_trials,)."""
    shift = centers.mean(axis=0)
    Xc = Xb - shift
    _, d2 = nearest_center(Xc, centers - shift)
    tc = trials - shift
    dt = np.maximum((Xc * Xc).sum(axis=1)[:, None] - 2.0 * (Xc @ tc.T) + (tc * tc).sum(axis=1)[None, :], 0.0)
    phis: FloatArray = _unit(wb, len(Xb)) @ np.minimum(d2[:, None], dt)
    return phis


def _phi_chunk(Xb: FloatArray, wb: FloatArray | None, idx: int, off: int, *, centers: FloatArray) -> float:
    shift = centers.mean(axis=0)
    _, d2 = nearest_center(Xb - shift, centers - shift)
    return float((_unit(wb, len(Xb)) * d2).sum())


def _oversample_chunk(
    Xb: FloatArray,
    wb: FloatArray | None,
    idx: int,
    off: int,
    *,
    centers: FloatArray,
    seed: int,
    stream: int,
    ell: float,
    phi: float,
) -> SampledRows:
    shift = centers.mean(axis=0)
    _, d2 = nearest_center(Xb - shift, centers - shift)
    p = ell * _unit(wb, len(Xb)) * d2 / phi
    u = row_uniforms(seed, stream, off, len(Xb))[:, 0]
    sel = np.flatnonzero(u < p)
    return off + sel, Xb[sel]


def _merge_rows(parts: list[SampledRows]) -> SampledRows:
    index = np.concatenate([p[0] for p in parts])
    rows = np.concatenate([p[1] for p in parts])
    order = np.argsort(index, kind="stable")
    return index[order], rows[order]


def _weight_chunk(Xb: FloatArray, wb: FloatArray | None, idx: int, off: int) -> float:
    return float(len(Xb)) if wb is None else float(wb.sum())


def _poisson_chunk(
    Xb: FloatArray, wb: FloatArray | None, idx: int, off: int, *, seed: int, rate: float
) -> WeightedRows:
    """Rows kept with probability p = min(1, rate·w) (a per-row uniform, so the same rows whatever
    the partitioning), each with weight w/p."""
    w = _unit(wb, len(Xb))
    p = np.minimum(1.0, rate * w)
    sel = np.flatnonzero(row_uniforms(seed, _STREAM_SAMPLE, off, len(Xb))[:, 0] < p)
    return off + sel, Xb[sel], w[sel] / p[sel]


def _merge_weighted_rows(parts: list[WeightedRows]) -> WeightedRows:
    index = np.concatenate([p[0] for p in parts])
    order = np.argsort(index, kind="stable")
    return (
        index[order],
        np.concatenate([p[1] for p in parts])[order],
        np.concatenate([p[2] for p in parts])[order],
    )


def _hard_chunk(
    Xb: FloatArray,
    wb: FloatArray | None,
    idx: int,
    off: int,
    *,
    centers: FloatArray,
    moments: MomentKind | None,
) -> SuffStats:
    return hard_stats(Xb, wb, centers, moments, row_offset=off)


def _random_chunk(
    Xb: FloatArray, wb: FloatArray | None, idx: int, off: int, *, seed: int, k: int, moments: MomentKind
) -> SuffStats:
    resp = row_uniforms(seed, _STREAM_RANDOM, off, len(Xb), k)
    resp /= resp.sum(axis=1, keepdims=True)
    return resp_stats(Xb, wb, resp, moments, row_offset=off)


# --- driver-side pieces ------------------------------------------------------------------


def _add(parts: list[R]) -> R:
    """Σ of a pass's numbers or arrays, added left to right from 0 (as Python's ``sum``)."""
    total = 0.0 + parts[0]
    for p in parts[1:]:
        total = total + p
    return total


def _sample_rows(runner: Runner, seed: int, stream: int, centers: FloatArray | None, m: int) -> SampledRows:
    """m distinct rows sampled without replacement, probability ∝ w (or w·d² to ``centers``)."""
    fn = functools.partial(_top_keys_chunk, seed=seed, stream=stream, centers=centers, m=m)
    _, index, rows = runner.map_reduce(fn, functools.partial(_merge_top_keys, m=m))
    return index, rows


def _weighted_kmeanspp(
    points: FloatArray, weights: FloatArray, k: int, rng: np.random.Generator
) -> FloatArray:
    """Weighted k-means++ on a small in-memory candidate set."""
    n = len(points)
    chosen = [int(rng.choice(n, p=weights / weights.sum()))]
    d2 = ((points - points[chosen[0]]) ** 2).sum(axis=1)
    for _ in range(1, k):
        mass = weights * d2
        total = mass.sum()
        if total <= 0:  # fewer distinct candidates than components: take the next unused ones
            rest = [i for i in range(n) if i not in chosen]
            chosen.append(rest[0] if rest else chosen[-1])
        else:
            chosen.append(int(rng.choice(n, p=mass / total)))
        d2 = np.minimum(d2, ((points - points[chosen[-1]]) ** 2).sum(axis=1))
    return points[chosen].copy()


def _local_lloyd(
    points: FloatArray, weights: FloatArray, centers: FloatArray, n_iter: int = 25
) -> FloatArray:
    for _ in range(n_iter):
        shift = centers.mean(axis=0)
        labels, _ = nearest_center(points - shift, centers - shift)
        new = centers.copy()
        for j in range(len(centers)):
            mask = labels == j
            if weights[mask].sum() > 0:
                new[j] = np.average(points[mask], axis=0, weights=weights[mask])
        if np.allclose(new, centers, rtol=0, atol=1e-12):
            break
        centers = new
    return centers


def lloyd(
    runner: Runner, centers: FloatArray, *, moments: MomentKind, tol: float, max_iter: int = 30
) -> SuffStats:
    """Distributed Lloyd iterations; returns the hard statistics at the final centres.

    Stops when the total squared centre shift is below ``tol``. Empty clusters are moved to the
    rows farthest from every centre (deterministic).
    """
    stats: SuffStats | None = None
    for it in range(1, max_iter + 1):
        stats = runner.map_reduce(
            functools.partial(_hard_chunk, centers=centers, moments=moments), combine_all
        )
        new = stats.means.copy()
        empty = np.flatnonzero(stats.nk <= 0)
        for j, comp in enumerate(empty):
            new[comp] = stats.worst_rows[j % len(stats.worst_rows)]
        shift = float(((new - centers) ** 2).sum())
        logger.debug("Lloyd iteration %d: inertia %.6g, centre shift %.3g", it, -stats.loglik, shift)
        centers = new
        if shift <= tol and not empty.size:
            break
    if stats is None:
        raise ValueError(f"lloyd needs max_iter >= 1, got {max_iter}")
    return stats


def initialize(
    runner: Runner,
    method: InitMethod,
    n_components: int,
    covariance_type: CovarianceType,
    reg_covar: float | FloatArray,
    seed: int,
    *,
    data_variance: float,
    oversampling: float = 2.0,
    rounds: int = 5,
    floor: VarianceFloor | None = None,
) -> MixtureParams:
    """Initial parameters by ``method`` (one of :data:`~gmm_dask.mixture.options.INIT_METHODS`); ``reg_covar`` and the
    variance ``floor`` as in :func:`~gmm_dask.mixture.suffstats.m_step`."""
    k = n_components
    moments = moment_kind(covariance_type)
    lloyd_tol = 1e-4 * max(data_variance, np.finfo(np.float64).tiny)
    if method == "random":
        stats = runner.map_reduce(
            functools.partial(_random_chunk, seed=seed, k=k, moments=moments), combine_all
        )
        return params_from_stats(stats, covariance_type, reg_covar, floor)
    if method == "random_from_data":
        _, rows = _sample_rows(runner, seed, _STREAM_FROM_DATA, None, k)
        d = rows.shape[1]
        weights = np.full(k, 1.0 / k)
        if len(rows) < k:
            rows = np.concatenate([rows, np.repeat(rows[-1:], k - len(rows), axis=0)])
        var = np.broadcast_to(np.asarray(reg_covar, dtype=float), (k, d)) + (
            floor(rows) if floor is not None else 0.0
        )
        cov = {
            "full": np.stack([np.diag(v) for v in var]),
            "tied": np.diag(var.mean(axis=0)),
            "diag": var.copy(),
            "spherical": var.mean(axis=1),
        }[covariance_type]
        return MixtureParams(weights, rows, cov, compute_precision_cholesky(cov, covariance_type, reg_covar))
    if method == "k-means-sample":
        centers = _sample_centers(runner, k, seed, lloyd_tol)
        stats = lloyd(runner, centers, moments=moments, tol=lloyd_tol, max_iter=SAMPLE_LLOYD_PASSES)
        return params_from_stats(stats, covariance_type, reg_covar, floor)
    if method == "k-means++":
        centers = _greedy_kmeanspp(runner, k, seed)
    elif method == "k-means||":
        centers = _kmeans_parallel(runner, k, seed, oversampling, rounds)
    else:  # validated by the caller
        raise ValueError(f"unknown init method {method!r}")
    stats = lloyd(runner, centers, moments=moments, tol=lloyd_tol)
    return params_from_stats(stats, covariance_type, reg_covar, floor)


def _greedy_kmeanspp(runner: Runner, k: int, seed: int) -> FloatArray:
    """Greedy k-means++ (as scikit-learn): 2 + ⌊log K⌋ D²-sampled trials per centre, keep the one
    that lowers the potential most. Two passes per centre."""
    n_trials = 2 + int(np.log(k))
    _, centers = _sample_rows(runner, seed, _STREAM_FIRST, None, 1)
    for j in range(1, k):
        _, trials = _sample_rows(runner, seed, _STREAM_PP * 1000 + j, centers, n_trials)
        if not len(trials):  # every row already sits on a centre
            centers = np.concatenate([centers, centers[-1:]])
            continue
        phis = runner.map_reduce(functools.partial(_trial_phi_chunk, centers=centers, trials=trials), _add)
        centers = np.concatenate([centers, trials[int(np.argmin(phis))][None]])
    return centers


def _kmeans_parallel(runner: Runner, k: int, seed: int, oversampling: float, rounds: int) -> FloatArray:
    _, centers = _sample_rows(runner, seed, _STREAM_FIRST, None, 1)
    ell = oversampling * k
    for r in range(rounds):
        phi = runner.map_reduce(functools.partial(_phi_chunk, centers=centers), _add)
        if phi <= 0:
            break
        fn = functools.partial(
            _oversample_chunk,
            centers=centers,
            seed=seed,
            stream=_STREAM_PARALLEL * 1000 + r,
            ell=ell,
            phi=phi,
        )
        _, rows = runner.map_reduce(fn, _merge_rows)
        centers = np.concatenate([centers, rows])
    if len(centers) < k:  # tiny data: top up with D²-sampled rows
        _, extra = _sample_rows(runner, seed, _STREAM_PP * 1000, centers, k - len(centers))
        centers = np.concatenate([centers, extra])
    counts = runner.map_reduce(functools.partial(_hard_chunk, centers=centers, moments=None), combine_all).nk
    rng = np.random.default_rng([seed % (1 << 63), _STREAM_PARALLEL])
    weights = counts + 1e-12
    chosen = _weighted_kmeanspp(centers, weights, k, rng)
    return _local_lloyd(centers, weights, chosen)


def poisson_sample(runner: Runner, m: int, seed: int) -> WeightedRows:
    """About ``m`` rows drawn in two passes (the weight sum, then the draw): row i is kept with
    probability pᵢ = min(1, m·wᵢ/Σw) and weighted wᵢ/pᵢ, so the sample's weighted sums estimate
    the data's without bias. Returns global indices (ascending), rows and weights."""
    total = runner.map_reduce(_weight_chunk, _add)
    if not total > 0:
        raise ValueError(f"k-means-sample needs rows of positive weight, got a total weight of {total}")
    fn = functools.partial(_poisson_chunk, seed=seed, rate=m / total)
    index, rows, weights = runner.map_reduce(fn, _merge_weighted_rows)
    logger.debug("k-means-sample: %d rows drawn (of weight %.6g)", len(index), total)
    return index, rows, weights


def _sample_centers(runner: Runner, k: int, seed: int, tol: float) -> FloatArray:
    """k-means-sample's centres (see the module docstring)."""
    _, rows, weights = poisson_sample(runner, max(SAMPLE_ROWS, SAMPLE_ROWS_PER_COMPONENT * k), seed)
    if not len(rows):  # Σp ≥ min(m, rows of positive weight): empty with probability ≤ e⁻ᵐ
        raise ValueError(f"k-means-sample drew no row (seed {seed}); use another random_state")
    rng = np.random.default_rng([seed % (1 << 63), _STREAM_SAMPLE])
    return sample_kmeans(rows, weights, k, rng, tol=tol, restarts=SAMPLE_RESTARTS)
