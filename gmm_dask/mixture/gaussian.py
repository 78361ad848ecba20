"""Pure NumPy Gaussian densities for one partition of rows.

Everything here is float64 and works in the precision-Cholesky parameterisation used by
scikit-learn: for each component a triangular matrix ``P`` with ``P @ P.T == inv(Σ)``, so that

    log N(x | μ, Σ) = -½ (D log 2π + ‖(x − μ) P‖²) + Σ log diag(P)

needs no inverse and no determinant. Shapes by ``covariance_type`` (K components, D features):

============  ================  ====================
type          covariances       precisions_cholesky
============  ================  ====================
full          (K, D, D)         (K, D, D)
tied          (D, D)            (D, D)
diag          (K, D)            (K, D)
spherical     (K,)              (K,)
============  ================  ====================
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from gmm_dask.errors import FitError
from gmm_dask.mixture.arrays import FloatArray
from gmm_dask.mixture.options import CovarianceType

LOG_2PI = float(np.log(2.0 * np.pi))

_SINGULAR_MSG = (
    "Fitting the mixture model failed because some components have ill-defined empirical "
    "covariance (for instance caused by singleton or collapsed samples{where}). Try to "
    "decrease the number of components, increase reg_covar (now {reg}), or scale the input "
    "data (the pipeline's `standardize: true` does this)."
)


@dataclass(frozen=True)
class MixtureParams:
    """Parameters of a Gaussian mixture.

    Attributes
    ----------
    weights : ndarray of shape (K,)
    means : ndarray of shape (K, D)
    covariances : ndarray or None
        Shape by ``covariance_type`` (see the module docstring); None when the parameters were
        given as precisions (they are then derived from ``precisions_cholesky`` on demand).
    precisions_cholesky : ndarray
        Shape by ``covariance_type``.
    """

    weights: FloatArray
    means: FloatArray
    covariances: FloatArray | None
    precisions_cholesky: FloatArray


def n_parameters(n_components: int, n_features: int, covariance_type: CovarianceType) -> int:
    """Number of free parameters of a mixture (for BIC and AIC).

    K − 1 weights, K·D means, and the covariances: K·D(D+1)/2 (full), D(D+1)/2 (tied),
    K·D (diag) or K (spherical).
    """
    k, d = n_components, n_features
    cov = {
        "full": k * d * (d + 1) // 2,
        "tied": d * (d + 1) // 2,
        "diag": k * d,
        "spherical": k,
    }[covariance_type]
    return cov + k * d + k - 1


def singular_covariance_error(
    component: int | None = None, reg_covar: float | FloatArray | None = None
) -> FitError:
    """Build the one error raised when a covariance is not positive definite."""
    where = "" if component is None else f"; component {component}"
    if reg_covar is None:
        reg = "unknown"
    elif np.ndim(reg_covar):
        reg = "[" + ", ".join(f"{r:g}" for r in np.ravel(reg_covar)) + "] per feature"
    else:
        reg = f"{float(reg_covar):g}"
    return FitError(_SINGULAR_MSG.format(where=where, reg=reg))


def compute_precision_cholesky(
    covariances: FloatArray, covariance_type: CovarianceType, reg_covar: float | FloatArray | None = None
) -> FloatArray:
    """Cholesky factors of the precision matrices from the covariances.

    Parameters
    ----------
    covariances : ndarray
        Shape by ``covariance_type`` (see module docstring).
    covariance_type : {'full', 'tied', 'diag', 'spherical'}
    reg_covar : float, optional
        Only used in the error message.

    Returns
    -------
    precisions_cholesky : ndarray of the same shape, upper triangular for full/tied.

    Raises
    ------
    FitError
        If a covariance is not positive definite.
    """
    covariances = np.asarray(covariances, dtype=np.float64)
    if covariance_type in ("full", "tied"):
        from scipy import linalg

        stack = covariances if covariance_type == "full" else covariances[None]
        d = stack.shape[-1]
        eye = np.eye(d)
        out = np.empty_like(stack)
        for k, cov in enumerate(stack):
            try:
                cov_chol = linalg.cholesky(cov, lower=True, check_finite=True)
            except (linalg.LinAlgError, ValueError):
                raise singular_covariance_error(k if covariance_type == "full" else None, reg_covar) from None
            out[k] = linalg.solve_triangular(cov_chol, eye, lower=True).T
        return out if covariance_type == "full" else out[0]
    if np.any(~np.isfinite(covariances)) or np.any(covariances <= 0.0):
        bad = np.flatnonzero(
            ~(np.isfinite(covariances) & (covariances > 0)).reshape(len(covariances), -1).all(1)
        )
        raise singular_covariance_error(int(bad[0]) if bad.size else None, reg_covar)
    return 1.0 / np.sqrt(covariances)


def precision_cholesky_from_precisions(precisions: FloatArray, covariance_type: CovarianceType) -> FloatArray:
    """Upper-triangular ``U`` with ``U @ U.T == precision`` (scikit-learn's convention).

    Uses the exchange-matrix trick: ``J Λ J = L Lᵀ`` gives ``U = J L J``.
    """
    precisions = np.asarray(precisions, dtype=np.float64)
    if covariance_type in ("full", "tied"):
        from scipy import linalg

        stack = precisions if covariance_type == "full" else precisions[None]
        out = np.empty_like(stack)
        for k, prec in enumerate(stack):
            try:
                low = linalg.cholesky(prec[::-1, ::-1], lower=True)
            except linalg.LinAlgError:
                raise FitError(
                    f"precisions_init{'' if covariance_type == 'tied' else f'[{k}]'} is not "
                    "positive definite; pass symmetric positive-definite precision matrices."
                ) from None
            out[k] = low[::-1, ::-1]
        return out if covariance_type == "full" else out[0]
    return np.sqrt(precisions)


def precisions_from_cholesky(prec_chol: FloatArray, covariance_type: CovarianceType) -> FloatArray:
    """Precision matrices ``P @ P.T`` (or squares for diag/spherical)."""
    if covariance_type == "full":
        return prec_chol @ prec_chol.transpose(0, 2, 1)
    if covariance_type == "tied":
        return prec_chol @ prec_chol.T
    return prec_chol**2


def covariances_from_cholesky(prec_chol: FloatArray, covariance_type: CovarianceType) -> FloatArray:
    """Covariances from precision Cholesky factors (used when a fit starts from precisions)."""
    if covariance_type in ("full", "tied"):
        from scipy import linalg

        stack = prec_chol if covariance_type == "full" else prec_chol[None]
        d = stack.shape[-1]
        inv = np.stack([linalg.solve_triangular(p, np.eye(d), lower=False) for p in stack])
        cov: FloatArray = inv.transpose(0, 2, 1) @ inv  # (P Pᵀ)⁻¹ = P⁻ᵀ P⁻¹
        return cov if covariance_type == "full" else cov[0]
    return 1.0 / prec_chol**2


def log_det_cholesky(prec_chol: FloatArray, covariance_type: CovarianceType, n_features: int) -> FloatArray:
    """log det of each precision Cholesky factor: shape (K,) (a scalar for tied)."""
    out: FloatArray
    if covariance_type == "full":
        out = np.log(np.diagonal(prec_chol, axis1=1, axis2=2)).sum(axis=1)
    elif covariance_type == "tied":
        out = np.log(np.diag(prec_chol)).sum()
    elif covariance_type == "diag":
        out = np.log(prec_chol).sum(axis=1)
    else:
        out = n_features * np.log(prec_chol)
    return out


def squared_mahalanobis(
    Xc: FloatArray, means_c: FloatArray, prec_chol: FloatArray, covariance_type: CovarianceType
) -> FloatArray:
    """‖(x − μₖ) Pₖ‖² for every row and component.

    ``Xc`` and ``means_c`` must be expressed around the same shift (any point near the data):
    the difference is then formed without cancellation even for data offset by 1e6.

    Parameters
    ----------
    Xc : ndarray of shape (n, D)
    means_c : ndarray of shape (K, D)
    prec_chol : ndarray, precision Cholesky factors for ``covariance_type``

    Returns
    -------
    ndarray of shape (n, K)
    """
    n, d = Xc.shape
    k = means_c.shape[0]
    if covariance_type == "full":
        # One GEMM for all components: (n, D) @ (D, K·D), then per-component sums of squares.
        w = prec_chol.transpose(1, 0, 2).reshape(d, k * d)
        b = np.einsum("kd,kdj->kj", means_c, prec_chol).reshape(k * d)
        y = Xc @ w
        y -= b
        np.square(y, out=y)
        full: FloatArray = y.reshape(n, k, d).sum(axis=2)
        return full
    if covariance_type == "tied":
        y = (Xc @ prec_chol)[:, None, :] - (means_c @ prec_chol)[None, :, :]
        np.square(y, out=y)
        tied: FloatArray = y.sum(axis=2)
        return tied
    if covariance_type == "diag":
        y = (Xc[:, None, :] - means_c[None, :, :]) * prec_chol[None, :, :]
    else:
        y = (Xc[:, None, :] - means_c[None, :, :]) * prec_chol[None, :, None]
    np.square(y, out=y)
    out: FloatArray = y.sum(axis=2)
    return out


def estimate_weighted_log_prob(
    X: FloatArray,
    weights: FloatArray,
    means: FloatArray,
    prec_chol: FloatArray,
    covariance_type: CovarianceType,
    shift: FloatArray | None = None,
) -> FloatArray:
    """log πₖ + log N(x | μₖ, Σₖ) for every row: shape (n, K).

    ``shift`` (D,) is subtracted from both X and the means before differences are formed;
    by default the weighted mean of the component means.
    """
    if shift is None:
        shift = weights @ means
    Xc = X - shift
    d = X.shape[1]
    maha = squared_mahalanobis(Xc, means - shift, prec_chol, covariance_type)
    log_det = log_det_cholesky(prec_chol, covariance_type, d)
    out: FloatArray = -0.5 * (d * LOG_2PI + maha)
    out += log_det
    with np.errstate(divide="ignore"):
        out += np.log(weights)
    return out


def logsumexp_rows(a: FloatArray) -> FloatArray:
    """Row-wise log Σ exp, stable; a row of all −inf gives −inf (no warning)."""
    amax: FloatArray = a.max(axis=1)
    finite = np.isfinite(amax)
    safe = np.where(finite, amax, 0.0)
    with np.errstate(divide="ignore", under="ignore"):
        s = np.log(np.exp(a - safe[:, None]).sum(axis=1))
    return np.where(finite, s + safe, amax)


def log_responsibilities(weighted_log_prob: FloatArray) -> tuple[FloatArray, FloatArray]:
    """Normalise: returns (log p(x) of shape (n,), log γ of shape (n, K))."""
    log_prob_norm = logsumexp_rows(weighted_log_prob)
    with np.errstate(invalid="ignore"):
        log_resp = weighted_log_prob - log_prob_norm[:, None]
    return log_prob_norm, log_resp


def entropy_bits(log_resp: FloatArray, resp: FloatArray | None = None) -> FloatArray:
    """−Σₖ γₖ log₂ γₖ from log γ (and γ = exp(log γ) if already computed), with 0·log 0 = 0:
    shape (n,)."""
    resp = np.exp(log_resp) if resp is None else resp
    terms = resp * np.where(resp > 0.0, log_resp, 0.0)
    bits: FloatArray = -terms.sum(axis=1) / np.log(2.0)
    return np.maximum(bits, 0.0)
