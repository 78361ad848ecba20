"""Readable names for segments, generated from what distinguishes each component.

A component is described by the features on which its mean stands furthest from the population
(the mixture as a whole), in words: ``"high items created, no purchases"``. Distances are
z-scores in model space: ``(μₖ − μ̄) / σ̄`` with μ̄ = Σ πₖ μₖ and σ̄² the mixture's total variance
per feature (within- plus between-component), so a feature's units and transform do not matter.
Each term's word comes from the component's typical value in the original units (its mean mapped
back through the transform): a count or amount that rounds to zero reads "no …", otherwise
"very high" / "high" / "low" by the z-score. A component whose every count and amount is zero is
``"dormant: no activity"``.

Names are deterministic (a function of the parameters only) and unique within a model: a name
shared by several components takes more terms until they differ, then the segment id. Configured
names (``model.segment_names``) always win, and a segment keeps its name across refits with its
id (:mod:`gmm_dask.segmentation.align` carries it); only new segments get new names.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from collections.abc import Set as AbstractSet

import numpy as np

from gmm_dask.mixture.arrays import FloatArray
from gmm_dask.mixture.options import CovarianceType
from gmm_dask.segmentation.features import FeaturePlan

DORMANT = "dormant: no activity"
MIN_Z = 0.5  # a feature describes a component only if its mean is this far from the population
TERMS = 2  # terms in a name (more only to tell two components apart)
_WINDOW = re.compile(r"_(\d+)(d|w|m|h|days|weeks|months|hours)$")


def feature_label(name: str) -> str:
    """A feature's name as words: ``items_created_30d`` -> ``items created`` (the window goes)."""
    base = _WINDOW.sub("", name) or name
    return re.sub(r"[_\s]+", " ", base).strip() or name


def feature_labels(names: Sequence[str]) -> list[str]:
    """Each feature's :func:`feature_label`, kept apart where two would print the same: a label
    shared by several features keeps its window (``orders`` and ``orders_90d`` read ``orders``
    and ``orders (90d)``), and any still shared falls back to the whole name in words."""
    base = [feature_label(n) for n in names]
    labels = []
    for n, lab in zip(names, base, strict=True):
        window = _WINDOW.search(n)
        shared = base.count(lab) > 1 and window is not None
        labels.append(f"{lab} ({window.group(1)}{window.group(2)})" if shared and window else lab)
    words = [re.sub(r"[_\s]+", " ", n).strip() or n for n in names]
    labels = [w if labels.count(lab) > 1 else lab for lab, w in zip(labels, words, strict=True)]
    return [n if labels.count(lab) > 1 else lab for lab, n in zip(labels, names, strict=True)]


def component_variances(
    covariances: FloatArray, covariance_type: CovarianceType, k: int, d: int
) -> FloatArray:
    """Each component's variance per feature, shape (K, D), whatever the covariance type."""
    c = np.asarray(covariances, dtype=np.float64)
    if covariance_type == "full":
        return np.stack([np.diag(ci) for ci in c])
    if covariance_type == "tied":
        return np.broadcast_to(np.diag(c), (k, d)).copy()
    if covariance_type == "diag":
        return c.reshape(k, d)
    return np.repeat(c.reshape(k, 1), d, axis=1)


def profile_z(weights: FloatArray, means: FloatArray, variances: FloatArray) -> FloatArray:
    """z-score of each component's mean against the whole mixture, per feature: shape (K, D).

    Parameters
    ----------
    weights : ndarray of shape (K,)
    means : ndarray of shape (K, D)
        Component means in model space.
    variances : ndarray of shape (K, D)
        Per-component variances in model space (:func:`component_variances`).
    """
    w = np.asarray(weights, dtype=np.float64)
    w = w / w.sum()
    mu = w @ means
    total = w @ variances + w @ (means - mu) ** 2
    z: FloatArray = (means - mu) / np.sqrt(np.maximum(total, 1e-300))
    return z


def typical_values(plan: FeaturePlan, means: FloatArray) -> FloatArray:
    """Each component's mean mapped back to the original units (a typical user of it): (K, D).

    Scoring places a count or amount at the middle of its resolution step, so the half step is
    taken off again; values are clipped at the smallest value seen in training.
    """
    x = plan.to_original_units(means) - plan.half_step
    if plan.low is not None:
        x = np.maximum(x, plan.low)
    return x


def _is_zero(plan: FeaturePlan, j: int, value: float) -> bool:
    """True when a count or amount rounds to nothing at its resolution (never for continuous)."""
    if plan.resolution is None or not np.isfinite(plan.resolution[j]):
        return False
    return bool(abs(value) < plan.resolution[j] / 2)


def _term(plan: FeaturePlan, j: int, z: float, value: float) -> str:
    label = feature_labels(plan.names)[j]
    if _is_zero(plan, j, value) and z < 0:
        return f"no {label}"
    if z >= 1.5:
        return f"very high {label}"
    return f"high {label}" if z > 0 else f"low {label}"


def describe(plan: FeaturePlan, z: FloatArray, typical: FloatArray, n_terms: int = TERMS) -> list[str]:
    """A name per component from its z-scores (K, D) and typical values (K, D)."""
    k, d = z.shape
    discrete = [j for j in range(d) if plan.resolution is not None and np.isfinite(plan.resolution[j])]
    names = []
    for c in range(k):
        if discrete and len(discrete) == d and all(_is_zero(plan, j, typical[c, j]) for j in discrete):
            names.append(DORMANT)
            continue
        order = sorted(range(d), key=lambda j: (-abs(z[c, j]), j))
        chosen = [j for j in order if abs(z[c, j]) >= MIN_Z][:n_terms] or order[:1]
        terms = [_term(plan, j, z[c, j], typical[c, j]) for j in chosen]
        names.append(", ".join(terms) if any(abs(z[c, j]) >= MIN_Z for j in chosen) else "typical user")
    return names


def generate_names(
    plan: FeaturePlan,
    weights: FloatArray,
    means: FloatArray,
    covariances: FloatArray,
    covariance_type: CovarianceType,
    ids: list[int] | None = None,
) -> list[str]:
    """Unique readable names for the components of a fitted mixture (model space parameters).

    Parameters
    ----------
    plan : FeaturePlan
        The model's feature plan (transforms, scaling, resolutions).
    weights : ndarray of shape (K,)
    means : ndarray of shape (K, D)
    covariances : ndarray
        In the layout of ``covariance_type``.
    covariance_type : {"full", "tied", "diag", "spherical"}
    ids : list of int, optional
        Segment ids, used only to tell apart components that no description separates.

    Returns
    -------
    list of str, length K
    """
    k, d = means.shape
    ids = list(range(k)) if ids is None else list(ids)
    z = profile_z(weights, means, component_variances(covariances, covariance_type, k, d))
    typical = typical_values(plan, means)
    names = describe(plan, z, typical)
    for extra in range(TERMS + 1, d + 1):  # lengthen only the names that collide
        dup = {n for n in names if names.count(n) > 1}
        if not dup:
            break
        longer = describe(plan, z, typical, n_terms=extra)
        names = [longer[i] if n in dup else n for i, n in enumerate(names)]
    return unique(names, ids)


def unique(names: list[str], ids: list[int], taken: AbstractSet[str] = frozenset()) -> list[str]:
    """``names`` with the segment id appended to any name that repeats (or is in ``taken``)."""
    out = []
    for n, i in zip(names, ids, strict=True):
        if names.count(n) > 1 or n in taken or n in out:
            n = f"{n} #{i}"
        out.append(n)
    return out


def is_placeholder(name: str) -> bool:
    """True for the generic ``segment_<n>`` names older models carry."""
    return re.fullmatch(r"segment_\d+( \(\d+\))?", name) is not None


__all__ = [
    "DORMANT",
    "describe",
    "feature_label",
    "feature_labels",
    "generate_names",
    "is_placeholder",
    "profile_z",
]
