"""Load the compiled kernels of both mixture families into this process ahead of the first fit.

Where the ahead-of-time module is built (:mod:`gmm_dask.mixture.aot`) this costs about a
millisecond and imports no numba. Otherwise a process pays numba's import and the loading of
each kernel's machine code from numba's cache (compiling it the first time) on its first
E-step; :func:`warm_up` does it now, on a few rows, without Dask: ``client.run(warm_up)`` loads
them in every worker of a cluster before a timed fit (``benchmarks/coldstart.py``).
"""

from __future__ import annotations

import time

import numpy as np

from gmm_dask.mixture.blocks import Precision


def warm_up(precisions: tuple[Precision, ...] = ("float64",)) -> float:
    """Load (or compile) every compiled kernel the E-steps of both families call, for the
    Gaussian E-step in each of ``precisions``, on a few rows, in this thread (no Dask);
    returns the seconds it took."""
    from gmm_dask.mixture.behaviour import estep
    from gmm_dask.mixture.behaviour.family import BehaviourFamily
    from gmm_dask.mixture.behaviour.structure import infer_structure
    from gmm_dask.mixture.suffstats import estep_stats

    t0 = time.perf_counter()
    rng = np.random.default_rng(0)
    n, k = 64, 2
    counts = rng.poisson(2.0, n).astype(float)
    amounts = np.where(counts > 0, rng.lognormal(1.0, 0.5, n), 0.0)
    X = np.column_stack([counts, amounts, rng.integers(0, 2, n).astype(float), rng.normal(size=n)])
    w = np.ones(n)
    kinds, names = ["count", "amount", "binary", "continuous"], ["c", "a", "b", "x"]
    family = BehaviourFamily(infer_structure(X, kinds, names))
    resp = rng.dirichlet(np.ones(k), n)
    params = family.m_step(estep.resp_stats(family.structure, X, None, resp))
    weights, means = np.full(k, 1.0 / k), X[:k].copy()
    prec_chol = np.stack([np.eye(X.shape[1])] * k)
    for precision in precisions:
        estep_stats(X, w, weights, means, prec_chol, "full", kernel="auto", precision=precision)
    family.chunk_stats(X, w, params)
    family.log_prob(X, params)
    estep.summary_stats(family.structure, params, X, np.log1p(np.abs(X)), w)
    return time.perf_counter() - t0
