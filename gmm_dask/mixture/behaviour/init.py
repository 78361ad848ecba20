"""Initialisation: over-cluster, then merge, on a sample drawn in one pass.

Per start: k-means++/Lloyd with 2K clusters on [zero indicators, standardised log1p] of the
sample; EM of the family with 2K components on the sample; greedy pairwise merging down to K
(each candidate pair: merged responsibilities → M-step → a few EM iterations, best penalised
likelihood wins); EM on the sample to convergence. The best start by penalised sample
likelihood is returned. Plain K-cluster k-means starts land in a worse optimum on behavioural
data (proto21: 0 of 30 starts found the archetypes, over-cluster-then-merge 4 of 4).
"""

from __future__ import annotations

import functools
from collections.abc import Sequence

import numpy as np
from numpy.typing import NDArray

from gmm_dask.errors import DataError
from gmm_dask.mixture.behaviour.estep import chunk_stats, resp_stats
from gmm_dask.mixture.behaviour.mstep import log_prior, m_step
from gmm_dask.mixture.behaviour.structure import (
    Links,
    Structure,
    check_values,
    infer_structure,
    invalid_message,
    invalid_rows,
)
from gmm_dask.mixture.behaviour.values import DEFAULT_PRIOR, BehaviourParams, Prior
from gmm_dask.mixture.gaussian import logsumexp_rows
from gmm_dask.mixture.init import row_uniforms
from gmm_dask.mixture.runner import Runner

F64 = NDArray[np.float64]
#: Rows drawn for the structure (bins, parents, caps) and, of them, for the initialisation.
STRUCTURE_SAMPLE = 20_000
INIT_SAMPLE = 5_000
OVER = 2  # over-clustering factor
_STREAM_SAMPLE = 21
_Sample = tuple[F64, F64, NDArray[np.int64]]  # keys, rows, global indices


def _top(keys: F64, rows: F64, index: NDArray[np.int64], m: int) -> _Sample:
    order = np.lexsort((index, -keys))[:m]
    return keys[order], rows[order], index[order]


def _sample_chunk(X: F64, w: F64 | None, part: int, offset: int, *, seed: int, m: int) -> _Sample:
    """A weighted sample without replacement (Efraimidis–Spirakis keys log(u)/w, largest
    kept): the same rows whatever the partitioning."""
    u = row_uniforms(seed, _STREAM_SAMPLE, offset, X.shape[0])[:, 0]
    with np.errstate(divide="ignore"):
        keys = np.log(u) if w is None else np.where(w > 0, np.log(u) / np.where(w > 0, w, 1.0), -np.inf)
    keep = np.isfinite(keys)
    index = np.arange(offset, offset + X.shape[0], dtype=np.int64)
    return _top(keys[keep], np.asarray(X, dtype=np.float64)[keep], index[keep], m)


def _merge_samples(parts: list[_Sample], m: int) -> _Sample:
    keys = np.concatenate([p[0] for p in parts])
    rows = np.concatenate([p[1] for p in parts])
    return _top(keys, rows, np.concatenate([p[2] for p in parts]), m)


def draw_sample(runner: Runner, m: int, seed: int) -> tuple[F64, NDArray[np.int64]]:
    """Up to m rows drawn in one pass (in random order), and their global indices."""
    _, rows, index = runner.map_reduce(
        functools.partial(_sample_chunk, seed=seed, m=m), functools.partial(_merge_samples, m=m)
    )
    return np.asarray(rows, dtype=np.float64), np.asarray(index, dtype=np.int64)


def seed_features(structure: Structure, X: F64) -> F64:
    """k-means space: per count/amount its zero indicator and log1p, else the value; standardised."""
    cols: list[F64] = []
    for j, kind in enumerate(structure.kinds):
        x = X[:, j]
        if kind in ("count", "amount"):
            cols += [(x > 0).astype(np.float64), np.log1p(x)]
        else:
            cols.append(x)
    Z = np.column_stack(cols)
    sd = Z.std(axis=0)
    return np.asarray((Z - Z.mean(axis=0)) / np.where(sd > 0, sd, 1.0), dtype=np.float64)


def kmeans_labels(Z: F64, k: int, rng: np.random.Generator, n_iter: int = 20) -> NDArray[np.intp]:
    """k-means++ seeding then Lloyd iterations; the labels."""
    n = Z.shape[0]
    centres = [Z[rng.integers(n)]]
    d2 = ((Z - centres[0]) ** 2).sum(axis=1)
    for _ in range(1, k):
        total = d2.sum()
        i = rng.choice(n, p=d2 / total) if total > 0 else rng.integers(n)
        centres.append(Z[i])
        d2 = np.minimum(d2, ((Z - centres[-1]) ** 2).sum(axis=1))
    C = np.array(centres)
    labels = np.zeros(n, dtype=np.intp)
    for _ in range(n_iter):
        labels = ((Z[:, None, :] - C[None]) ** 2).sum(axis=-1).argmin(axis=1)
        for c in range(k):
            if (labels == c).any():
                C[c] = Z[labels == c].mean(axis=0)
    return labels


def sample_em(
    structure: Structure, X: F64, params: BehaviourParams, prior: Prior, max_iter: int, tol: float
) -> tuple[BehaviourParams, float]:
    """EM on an in-memory sample; the parameters and the penalised mean log-likelihood."""
    objective = -np.inf
    for _ in range(max_iter):
        stats = chunk_stats(structure, X, None, params)
        previous, objective = objective, (stats.loglik + log_prior(params, prior)) / stats.weight
        params = m_step(structure, stats, prior)
        if abs(objective - previous) < tol * abs(objective):
            break
    return params, objective


def _resp_params(structure: Structure, X: F64, resp: F64, prior: Prior) -> BehaviourParams:
    return m_step(structure, resp_stats(structure, X, None, resp), prior)


def merge_down(
    structure: Structure, X: F64, params: BehaviourParams, k: int, prior: Prior, probe_iter: int = 3
) -> BehaviourParams:
    """Greedy pairwise merging down to k components (see the module docstring)."""
    while params.n_components > k:
        resp = np.exp(_log_resp(structure, X, params))
        kk = params.n_components
        best: tuple[float, BehaviourParams] | None = None
        for a in range(kk):
            for b in range(a + 1, kk):
                keep = [c for c in range(kk) if c not in (a, b)]
                merged = np.column_stack([resp[:, keep], resp[:, a] + resp[:, b]])
                p, obj = sample_em(
                    structure, X, _resp_params(structure, X, merged, prior), prior, probe_iter, 0.0
                )
                if best is None or obj > best[0]:
                    best = (obj, p)
        assert best is not None
        params = sample_em(structure, X, best[1], prior, 20, 1e-7)[0]
    return params


def _log_resp(structure: Structure, X: F64, params: BehaviourParams) -> F64:
    from gmm_dask.mixture.behaviour.estep import log_prob

    L = log_prob(structure, X, params)
    return np.asarray(L - logsumexp_rows(L)[:, None], dtype=np.float64)


def initialize_from_sample(
    structure: Structure,
    X: F64,
    n_components: int,
    seed: int,
    *,
    n_init: int = 4,
    prior: Prior = DEFAULT_PRIOR,
) -> BehaviourParams:
    """Over-cluster-then-merge starts on the sample ``X``; the best by penalised likelihood."""
    msg = check_values(X, structure)
    if msg is not None:
        raise DataError(msg)
    rng = np.random.default_rng(seed)
    Z = seed_features(structure, X)
    over = min(OVER * n_components, X.shape[0])
    best: tuple[float, BehaviourParams] | None = None
    for _ in range(max(1, n_init)):
        labels = kmeans_labels(Z, over, rng)
        p0 = _resp_params(structure, X, np.eye(over)[labels], prior)
        p1 = sample_em(structure, X, p0, prior, 100, 1e-6)[0]
        p2 = merge_down(structure, X, p1, n_components, prior)
        p3, obj = sample_em(structure, X, p2, prior, 300, 1e-7)
        if best is None or obj > best[0]:
            best = (obj, p3)
    assert best is not None
    return best[1]


def initialize(
    structure: Structure,
    runner: Runner,
    n_components: int,
    seed: int,
    *,
    n_init: int = 4,
    prior: Prior = DEFAULT_PRIOR,
) -> BehaviourParams:
    """One pass to draw :data:`INIT_SAMPLE` rows, then :func:`initialize_from_sample`."""
    X, _ = draw_sample(runner, INIT_SAMPLE, seed)
    return initialize_from_sample(structure, X, n_components, seed, n_init=n_init, prior=prior)


def structure_and_init(
    runner: Runner,
    kinds: Sequence[str],
    names: Sequence[str],
    n_components: int,
    seed: int,
    *,
    n_init: int = 4,
    prior: Prior = DEFAULT_PRIOR,
    parents: Links = "auto",
    caps: Links = "auto",
) -> tuple[Structure, BehaviourParams]:
    """One pass: a :data:`STRUCTURE_SAMPLE`-row sample → structure (``parents`` and ``caps`` as
    :func:`infer_structure` takes them) → initial parameters (on its first :data:`INIT_SAMPLE`
    rows, a random subset)."""
    X, index = draw_sample(runner, STRUCTURE_SAMPLE, seed)
    bad = np.flatnonzero(invalid_rows(X, kinds))
    if bad.size:
        i = bad[np.argmin(index[bad])]
        raise DataError(str(invalid_message(X[i : i + 1], kinds, names, row_offset=int(index[i]))))
    structure = infer_structure(X, kinds, names, parents=parents, caps=caps)
    params = initialize_from_sample(
        structure, X[:INIT_SAMPLE], n_components, seed, n_init=n_init, prior=prior
    )
    return structure, params
