"""The Gaussian family's log-likelihood read on the behaviour family's scale, so that select-k can
compare the two families on one criterion over the same rows.

The Gaussian family is fitted to model inputs z = (T(x + u) − m)/s: each feature's transform T
(:data:`~gmm_dask.segmentation.specs.TRANSFORMS`), the standardisation (m, s) and, for counts,
amounts and binaries, a dequantisation offset u, uniform on the feature's resolution step [0, Δ)
(:func:`~gmm_dask.segmentation.features.fit_arrays`). Its log-likelihood is a density of z. The
behaviour family's (:mod:`gmm_dask.mixture.behaviour`) is a probability mass for counts,
binaries and zero amounts, and a density in original units for positive amounts and continuous
features. Per feature and row, the Gaussian's log-density of z becomes

- a density in original units y = x + u: plus log |dz/dy| = −log s − log |dT⁻¹/dt| at t = T(y);
- the probability mass of the value's step [x, x + Δ): plus log Δ as well, for counts, binaries
  and zero amounts (the mass of a step is Δ times the step's average density in original units).

The change depends on the row, not on the model, so every Gaussian candidate of a grid gets the
same sum Σ w·adj over the data. On dequantised inputs (what the fit scores) log Δ + log p(y) at a
uniform point of the step is, on average, a lower bound on the log of the step's mass (Jensen:
E log ≤ log E), tight where the density is smooth over the step; on inputs placed at the step's
middle (what scoring sees) it is the midpoint rule. Neither can exceed the mass without bound
as a spike on one value would: the fit's variance floor keeps each component at least a step wide.
"""

from __future__ import annotations

import numpy as np

from gmm_dask.mixture.arrays import FloatArray
from gmm_dask.segmentation.features import FeaturePlan, apply_transforms

#: Kinds whose values the behaviour family scores as probability masses (amounts: zeros only).
MASS_KINDS = ("count", "binary")


def _log_inverse_slope(t: FloatArray, transform: str) -> FloatArray:
    """log |dT⁻¹/dt| at transformed values ``t`` (n,): 0, t, log 2t, log cosh t."""
    if transform == "none":
        return np.zeros_like(t)
    if transform == "log1p":  # y = eᵗ − 1
        return t.copy()
    if transform == "sqrt":  # y = t²
        with np.errstate(divide="ignore"):
            out: FloatArray = np.log(2.0 * t)
        return out
    if transform == "asinh":  # y = sinh t; log cosh t without overflow
        a = np.abs(t)
        cosh: FloatArray = a + np.log1p(np.exp(-2.0 * a)) - np.log(2.0)
        return cosh
    raise ValueError(f"unknown transform {transform!r}")


def behaviour_scale(plan: FeaturePlan, Z: FloatArray) -> FloatArray:
    """What to add to a Gaussian mixture's log-density of each row of model inputs ``Z`` to read
    it in the behaviour family's units (see the module's doc).

    Parameters
    ----------
    plan : FeaturePlan
        The plan that made ``Z`` (transforms, standardisation, kinds and resolutions).
    Z : ndarray of shape (n, D)
        Model inputs, dequantised (the fit's) or at the middle of their step (scoring's).

    Returns
    -------
    ndarray of shape (n,)
        Σ over features of −log s − log |dT⁻¹/dt|, plus log Δ for counts and binaries and for
        amounts whose value is zero (the point lies in the first step, below Δ).
    """
    Z = np.asarray(Z, dtype=np.float64)
    T = Z * plan.scale + plan.mean
    adj = np.full(Z.shape[0], -float(np.log(plan.scale).sum()))
    kinds = plan.kinds or ("",) * len(plan.features)
    steps = np.full(len(plan.features), np.nan) if plan.resolution is None else plan.resolution
    first_step_end = apply_transforms(steps[None, :], plan.features)[0]  # T(Δ): zero amounts lie below
    for j, (f, kind) in enumerate(zip(plan.features, kinds, strict=True)):
        adj -= _log_inverse_slope(T[:, j], f.transform)
        step = float(steps[j])
        if not np.isfinite(step):  # not dequantised: a density in original units
            continue
        if kind in MASS_KINDS:
            adj += np.log(step)
        elif kind == "amount":
            adj += np.where(T[:, j] < first_step_end[j], np.log(step), 0.0)
    return adj


__all__ = ["MASS_KINDS", "behaviour_scale"]
