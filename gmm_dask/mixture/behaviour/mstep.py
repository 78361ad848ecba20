"""Merging statistics, the M-step, the prior it maximises against, and re-seeding."""

from __future__ import annotations

import numpy as np
from numpy.typing import NDArray

from gmm_dask.mixture.behaviour.estep import merge_terms, resp_stats
from gmm_dask.mixture.behaviour.structure import Structure, layout_of
from gmm_dask.mixture.behaviour.values import BehaviourParams, BehaviourStats, Prior
from gmm_dask.mixture.suffstats import merge_row_tracking

F64 = NDArray[np.float64]


def combine(a: BehaviourStats, b: BehaviourStats) -> BehaviourStats:
    """Statistics of the union of two disjoint sets of rows (exact; Chan et al. for moments)."""
    n, mean, m2 = merge_terms(a.term_n, a.term_mean, a.term_m2, b.term_n, b.term_mean, b.term_m2)
    first_bad, ws, wr, wi = merge_row_tracking(a, b)
    return BehaviourStats(
        nk=a.nk + b.nk, loglik=a.loglik + b.loglik, weight=a.weight + b.weight, n_rows=a.n_rows + b.n_rows,
        n_bad=a.n_bad + b.n_bad, first_bad=first_bad,
        worst_scores=ws, worst_rows=wr, worst_index=wi,
        hard_nk=a.hard_nk + b.hard_nk if a.hard_nk is not None and b.hard_nk is not None else None,
        table=a.table + b.table, excess=a.excess + b.excess, term_n=n, term_mean=mean, term_m2=m2,
    )  # fmt: skip


def combine_all(parts: list[BehaviourStats]) -> BehaviourStats:
    """Fold a non-empty list of statistics pairwise (a balanced tree keeps rounding small)."""
    parts = list(parts)
    if not parts:
        raise ValueError("combine_all needs at least one BehaviourStats")
    while len(parts) > 1:
        nxt = [combine(parts[i], parts[i + 1]) for i in range(0, len(parts) - 1, 2)]
        parts = nxt + ([parts[-1]] if len(parts) % 2 else [])
    return parts[0]


def _normalised_log(cells: F64, axis: int) -> F64:
    return np.asarray(np.log(cells / cells.sum(axis=axis, keepdims=True)), dtype=np.float64)


def _regression(
    n: F64, mean: F64, m2: F64, has_parent: NDArray[np.bool_], prior: Prior
) -> tuple[F64, F64, F64]:
    """(a, b, var) of v | u ~ N(a + b·u, var) by weighted least squares, with the prior's
    variance pseudo-term and floor; b = 0 without a parent (or without spread in u)."""
    a_ = prior.alpha
    suu, suv, svv = m2[..., 0], m2[..., 1], m2[..., 2]
    ok = has_parent & (suu > 1e-12 * np.maximum(n, 1.0))
    b = np.where(ok, suv / np.where(ok, suu, 1.0), 0.0)
    a = mean[..., 1] - b * mean[..., 0]
    rss = np.maximum(svv - b * suv, 0.0)
    var = np.maximum((rss + prior.var_floor * a_) / (n + a_), prior.var_floor)
    return a, b, var


def _zero_linked(cells: F64, link: F64, a_: float) -> tuple[F64, F64]:
    """Bin and link log-probabilities of a count with a zero parent, from its bin cells (B, K)
    (every row with x > 0; x = 0 only where the parent > 0) and link cells (3, K).

    With θ = (θ₀, (1 − θ₀)·φ) the likelihood separates: θ₀ from the parent > 0 rows' zeros,
    φ from every positive row, P(x = 0 | parent = 0) from the parent = 0 rows (link cells 1, 2),
    each a Dirichlet MAP of the prior α·(Σ log θ + Σ log P(· | parent = 0)).
    """
    nb = cells.shape[0]
    pos = cells[1:].sum(axis=0)
    rest = np.maximum(pos - link[2], 0.0)  # parent > 0 rows with x > 0
    theta0 = (cells[0] + a_) / (cells[0] + rest + a_ * nb)
    phi = (cells[1:] + a_) / (pos + a_ * (nb - 1))
    log_theta = np.concatenate([np.log(theta0)[None], np.log1p(-theta0) + np.log(phi)])
    return log_theta, _normalised_log(link[1:] + a_, 0)


def m_step(structure: Structure, stats: BehaviourStats, prior: Prior) -> BehaviourParams:
    """The parameters maximising Σ w log p(x) + log prior given the statistics (closed form)."""
    layout = layout_of(structure)
    a_ = prior.alpha
    k = stats.nk.shape[0]
    log_theta, log_q, zero_log_p = [], [], []
    for c, (o, nb) in enumerate(zip(layout.count_off, layout.count_nbins, strict=True)):
        cells = stats.table[o : o + nb]
        zo = int(layout.count_zoff[c])
        if zo >= 0:
            lt, lz = _zero_linked(cells, stats.table[zo : zo + 3], a_)
            log_theta.append(lt)
            zero_log_p.append(lz)
        else:
            log_theta.append(_normalised_log(cells + a_, 0))
        mean_excess = (stats.excess[c] + a_) / (cells[-1] + 2 * a_)
        log_q.append(np.log(mean_excess / (1.0 + mean_excess)))
    nb, na = len(layout.binaries), len(layout.terms) - int(np.sum(layout.term_zero_off < 0))
    ob = int(layout.binary_off[0]) if nb else 0
    oa = int(layout.term_zero_off[0]) if na else 0
    binary = stats.table[ob : ob + 2 * nb].reshape(nb, 2, k) + a_
    zeros = stats.table[oa : oa + 4 * na].reshape(na, 2, 2, k) + a_
    has_parent = (layout.term_parent >= 0)[:, None]
    ta, tb, tvar = _regression(stats.term_n, stats.term_mean, stats.term_m2, has_parent, prior)
    return BehaviourParams(
        weights=(stats.nk + a_) / (stats.nk.sum() + a_ * k),
        count_log_theta=np.concatenate(log_theta) if log_theta else np.zeros((0, k)),
        count_log_q=np.array(log_q) if log_q else np.zeros((0, k)),
        count_zero_log_p=np.array(zero_log_p) if zero_log_p else np.zeros((0, 2, k)),
        amount_log_pz=_normalised_log(zeros, 2),
        amount_a=ta[:na], amount_b=tb[:na], amount_var=tvar[:na],
        continuous_mean=ta[na:], continuous_var=tvar[na:],
        binary_log_p=_normalised_log(binary, 1),
    )  # fmt: skip


def log_prior(params: BehaviourParams, prior: Prior) -> float:
    """log of the prior (up to a constant) the M-step maximises against: Dirichlet(α + 1) on
    every categorical (count zero-link probabilities included), α·log q + 2α·log(1 − q) on each tail ratio, −α/2·log s² − α·floor/(2 s²)
    on each variance."""
    a = prior.alpha
    with np.errstate(divide="ignore"):
        lp = a * float(np.log(params.weights).sum())
    cells = params.count_log_theta.sum() + params.count_zero_log_p.sum()
    lp += a * float(cells + params.amount_log_pz.sum() + params.binary_log_p.sum())
    lq = params.count_log_q
    lp += float((a * lq + 2 * a * np.log(-np.expm1(lq))).sum())
    for var in (params.amount_var, params.continuous_var):
        lp += float((-0.5 * a * np.log(var) - 0.5 * prior.var_floor * a / var).sum())
    return lp


def n_parameters(structure: Structure, params: BehaviourParams) -> int:
    """Free parameters: K − 1 weights; per component, a count's B − 1 bin probabilities and its
    tail ratio (+ 1 for P(x = 0 | zero parent = 0)), an amount's 2 zero probabilities + (a, b, var) with a parent (1 + 2 without), a
    continuous feature's mean and variance, a binary's probability."""
    k = params.n_components
    n = k - 1
    for j, kind in enumerate(structure.kinds):
        if kind == "count":
            n += k * (len(structure.edges[j]) + (1 if structure.parent[j] >= 0 else 0))
        elif kind == "amount":
            n += k * (5 if structure.parent[j] >= 0 else 3)
        elif kind == "continuous":
            n += 2 * k
        else:
            n += k
    return n


def _scaled(stats: BehaviourStats, factor: float) -> BehaviourStats:
    """The statistics of the same rows with every weight multiplied by ``factor``."""
    return BehaviourStats(
        nk=stats.nk * factor, loglik=stats.loglik * factor, weight=stats.weight * factor,
        n_rows=stats.n_rows, n_bad=stats.n_bad, first_bad=stats.first_bad,
        worst_scores=stats.worst_scores, worst_rows=stats.worst_rows, worst_index=stats.worst_index,
        hard_nk=None, table=stats.table * factor, excess=stats.excess * factor,
        term_n=stats.term_n * factor, term_mean=stats.term_mean, term_m2=stats.term_m2 * factor,
    )  # fmt: skip


def _pooled(stats: BehaviourStats, idx: NDArray[np.intp]) -> BehaviourStats:
    """The components ``idx`` merged into one (a 1-component statistics value)."""
    n, mean, m2 = stats.term_n[:, idx[0]], stats.term_mean[:, idx[0]], stats.term_m2[:, idx[0]]
    for c in idx[1:]:
        n, mean, m2 = merge_terms(n, mean, m2, stats.term_n[:, c], stats.term_mean[:, c], stats.term_m2[:, c])
    return BehaviourStats(
        nk=stats.nk[idx].sum(keepdims=True), loglik=0.0, weight=float(stats.nk[idx].sum()), n_rows=stats.n_rows,
        n_bad=0, first_bad=-1, worst_scores=stats.worst_scores, worst_rows=stats.worst_rows,
        worst_index=stats.worst_index, hard_nk=None,
        table=stats.table[:, idx].sum(axis=1, keepdims=True), excess=stats.excess[:, idx].sum(axis=1, keepdims=True),
        term_n=n[:, None], term_mean=mean[:, None], term_m2=m2[:, None],
    )  # fmt: skip


def reseed(
    structure: Structure,
    stats: BehaviourStats,
    params: BehaviourParams,
    collapsed: NDArray[np.intp],
    prior: Prior,
) -> BehaviourParams:
    """Move each collapsed component onto a worst-explained row (in order of score).

    The new component is the M-step of that row (weight 1) plus the healthy components' pooled
    statistics scaled to weight 1: centred on the row, with support everywhere the data are.
    Its mixture weight is 1/K (then all weights are renormalised). Deterministic.
    """
    k = params.n_components
    collapsed = np.asarray(collapsed, dtype=np.intp)
    if not collapsed.size or not len(stats.worst_rows):
        return params
    healthy = np.setdiff1d(np.arange(k), collapsed)
    healthy = healthy if healthy.size else np.arange(k)
    pooled = _pooled(stats, healthy)
    background = _scaled(pooled, 1.0 / max(pooled.weight, 1e-300))
    arrays = {name: value.copy() for name, value in params.to_arrays().items()}
    for j, comp in enumerate(collapsed):
        row = stats.worst_rows[j % len(stats.worst_rows)][None, :]
        own = resp_stats(structure, row, None, np.ones((1, 1)))
        one = m_step(structure, combine(background, own), prior).to_arrays()
        for name, value in one.items():
            if name != "weights":
                arrays[name][..., comp] = value[..., 0]
        arrays["weights"][comp] = 1.0 / k
    arrays["weights"] = arrays["weights"] / arrays["weights"].sum()
    return BehaviourParams.from_arrays(arrays)
