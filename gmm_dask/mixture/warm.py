"""Load the compiled kernels of both mixture families into this process ahead of the first fit.

A process pays for numba's import and for loading each kernel's machine code from the cache
(compiling it the first time) on its first E-step. :func:`warm_up` does it now, on a few rows,
without Dask: ``client.run(warm_up)`` loads them in every worker of a cluster before a timed fit
(``benchmarks/coldstart.py``).
"""

from __future__ import annotations

import time

import numpy as np


def warm_up() -> float:
    """Load (or compile) every compiled kernel now, on a few rows, in this thread (no Dask);
    returns the seconds it took."""
    from gmm_dask.mixture import _kernels
    from gmm_dask.mixture.behaviour import estep
    from gmm_dask.mixture.behaviour.family import BehaviourFamily
    from gmm_dask.mixture.behaviour.structure import infer_structure

    t0 = time.perf_counter()
    _kernels.warm_up()
    rng = np.random.default_rng(0)
    n, k = 64, 2
    counts = rng.poisson(2.0, n).astype(float)
    amounts = np.where(counts > 0, rng.lognormal(1.0, 0.5, n), 0.0)
    X = np.column_stack([counts, amounts, rng.integers(0, 2, n).astype(float), rng.normal(size=n)])
    kinds, names = ["count", "amount", "binary", "continuous"], ["c", "a", "b", "x"]
    family = BehaviourFamily(infer_structure(X, kinds, names))
    resp = rng.dirichlet(np.ones(k), n)
    params = family.m_step(estep.resp_stats(family.structure, X, None, resp))
    family.log_prob(X, params)
    return time.perf_counter() - t0
