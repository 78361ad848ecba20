"""The Bhattacharyya distance between Gaussians, written once (pure NumPy).

Two users: segment alignment (:mod:`gmm_dask.segmentation.align`) breaks ties between components
with it, and the run report's family tree clusters the components
on it. The form is the numerically stable one: Cholesky factors and their log-diagonals, no matrix
inverse and no determinant, with a growing ridge for a singular covariance.
"""

from __future__ import annotations

import math

import numpy as np
from numpy.typing import ArrayLike


def _chol_logdet(cov: ArrayLike) -> tuple[np.ndarray, float] | None:
    """Cholesky factor and log-determinant of a covariance, with a growing ridge if it is singular.

    Parameters
    ----------
    cov : array-like of shape (D, D)

    Returns
    -------
    (chol, logdet) : the lower factor, shape (D, D), and log det(cov + ridge); ``None`` when ``cov``
        has a non-finite entry or is not positive definite even with the largest ridge.
    """
    cov = np.asarray(cov, dtype=float)
    if not np.all(np.isfinite(cov)):
        return None
    scale = float(np.mean(np.abs(np.diag(cov)))) or 1.0
    for ridge in (0.0, 1e-12, 1e-9, 1e-6):
        try:
            chol = np.linalg.cholesky(cov + ridge * scale * np.eye(len(cov)))
        except np.linalg.LinAlgError:
            continue
        return chol, 2.0 * float(np.sum(np.log(np.diag(chol))))
    return None


def bhattacharyya_distance(mean_a: ArrayLike, cov_a: ArrayLike, mean_b: ArrayLike, cov_b: ArrayLike) -> float:
    """Bhattacharyya distance between 𝓝(μa, Σa) and 𝓝(μb, Σb).

    D_B = ⅛ (μa−μb)ᵀ Σ⁻¹ (μa−μb) + ½ ln(det Σ / √(det Σa det Σb)), with Σ = (Σa + Σb)/2; it is
    ``inf`` when a parameter is not finite. Symmetric, ≥ 0, and 0 only for identical Gaussians.

    Parameters
    ----------
    mean_a, mean_b : array-like of shape (D,) (a scalar is taken as D = 1)
    cov_a, cov_b : array-like of shape (D, D) (a scalar is taken as a 1 × 1 matrix)
    """
    mean_a, mean_b = np.atleast_1d(np.asarray(mean_a, float)), np.atleast_1d(np.asarray(mean_b, float))
    cov_a, cov_b = np.atleast_2d(np.asarray(cov_a, float)), np.atleast_2d(np.asarray(cov_b, float))
    fa, fb, fm = _chol_logdet(cov_a), _chol_logdet(cov_b), _chol_logdet(0.5 * (cov_a + cov_b))
    diff = mean_a - mean_b
    if fa is None or fb is None or fm is None or not np.all(np.isfinite(diff)):
        return math.inf
    y = np.linalg.solve(fm[0], diff)  # L⁻¹ (μa − μb): its squared norm is the Mahalanobis term
    return max(0.0, float(y @ y) / 8.0 + 0.5 * (fm[1] - 0.5 * (fa[1] + fb[1])))


def bhattacharyya_matrix(
    means_a: np.ndarray, covs_a: np.ndarray, means_b: np.ndarray, covs_b: np.ndarray
) -> np.ndarray:
    """Bhattacharyya distances between every Gaussian of a set A and every one of a set B.

    Parameters
    ----------
    means_a : ndarray of shape (Ka, D)
    covs_a : ndarray of shape (Ka, D, D)
    means_b : ndarray of shape (Kb, D)
    covs_b : ndarray of shape (Kb, D, D)

    Returns
    -------
    ndarray of shape (Ka, Kb): entry (i, j) is :func:`bhattacharyya_distance` of A's i-th and B's
    j-th Gaussian.
    """
    return np.array(
        [
            [
                bhattacharyya_distance(means_a[i], covs_a[i], means_b[j], covs_b[j])
                for j in range(len(means_b))
            ]
            for i in range(len(means_a))
        ]
    )


__all__ = ["bhattacharyya_distance", "bhattacharyya_matrix"]
