"""Putting a Gaussian fitted on log1p features on the behaviour family's likelihood scale."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
from numpy.typing import NDArray

F64 = NDArray[np.float64]


def gaussian_log1p_as_mass(
    log_density: F64,
    X: F64,
    kinds: Sequence[str],
    *,
    scale: F64 | None = None,
) -> F64:
    """A Gaussian mixture's log-density on z = (log1p(x) − m)/s turned into the behaviour
    family's units: probability masses for counts and binaries, densities in original units
    for amounts and continuous features.

    Parameters
    ----------
    log_density : ndarray of shape (n,) or (n, K)
        log p(z) of each row (or log πₖ pₖ(z) per component), z the features the Gaussian saw:
        log1p(x) for counts and amounts, x itself for continuous features and binaries.
    X : ndarray of shape (n, D)
        The rows in original units.
    kinds : sequence of str
        Each feature's kind (:data:`KINDS`).
    scale : ndarray of shape (D,), optional
        The standardisation s the Gaussian was fitted with (z = (t − m)/s); 1 if None.

    Returns
    -------
    ndarray, the shape of ``log_density``
        log_density − Σ log s + Σ_counts log(log((x + 2)/(x + 1))) − Σ_amounts log(1 + x).

    Notes
    -----
    A count x covers [x, x + 1) on the original scale, i.e. [log1p(x), log1p(x + 1)) after
    log1p, so its mass is approximately the density times that width, log((x + 2)/(x + 1))
    (midpoint rule; exact for the bin's average density). An amount's density in original units
    carries the Jacobian d log1p(x)/dx = 1/(1 + x). A binary is read as a unit-width bin of x.
    Without this a Gaussian gets unbounded "likelihood" from spikes at small integers (a
    near-zero variance on the many zeros), and its log-likelihood or BIC cannot be compared with
    the behaviour family's.
    """
    X = np.asarray(X, dtype=np.float64)
    adj = np.zeros(X.shape[0])
    for j, kind in enumerate(kinds):
        if kind == "count":
            adj += np.log(np.log((X[:, j] + 2.0) / (X[:, j] + 1.0)))
        elif kind == "amount":
            adj -= np.log1p(X[:, j])
    if scale is not None:
        adj -= float(np.log(np.asarray(scale, dtype=np.float64)).sum())
    out = np.asarray(log_density, dtype=np.float64)
    return out + (adj[:, None] if out.ndim == 2 else adj)
