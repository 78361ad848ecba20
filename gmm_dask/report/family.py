"""The components' family tree: distances between their Gaussians and a Ward linkage of them.

The distance itself is the domain's (:func:`gmm_dask.segmentation.distance.bhattacharyya_distance`);
this module turns it into a matrix, a Euclidean embedding (classical MDS) and a linkage.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import numpy as np

from gmm_dask.segmentation.distance import bhattacharyya_distance


def gaussian_distance_matrix(
    components: Sequence[dict[str, Any]], metric: str = "bhattacharyya"
) -> np.ndarray:
    """Distances between the components' Gaussians, shape (K, K): symmetric, zero diagonal.

    ``metric="bhattacharyya"`` (the default, the family tree's): the Bhattacharyya distance D_B
    (:func:`~gmm_dask.segmentation.distance.bhattacharyya_distance`): 0 for identical Gaussians,
    growing without bound as they separate; for two equal covariances √(8 D_B) is the Mahalanobis
    distance between the means. ``inf`` where a component's parameters are not finite.

    ``metric="hellinger"``: H = √(1 − exp(−D_B)) in [0, 1], a true metric (the L² distance between
    √p and √q, scaled), 1 where a parameter is not finite. It saturates at 1 as soon as two
    Gaussians barely overlap, which in more than a few dimensions is almost every pair (the
    covariance term of D_B grows with D): fine to say "these two overlap", useless for a tree.

    ``components``: dicts with ``"mean"`` (D,) and ``"cov"`` (D, D), in one feature space.
    """
    if metric not in ("bhattacharyya", "hellinger"):
        msg = f"metric must be 'bhattacharyya' or 'hellinger'; got {metric!r}."
        raise ValueError(msg)
    k = len(components)
    out = np.zeros((k, k))
    for a in range(k):
        for b in range(a + 1, k):
            db = bhattacharyya_distance(
                components[a]["mean"], components[a]["cov"], components[b]["mean"], components[b]["cov"]
            )
            if metric == "hellinger":
                db = 1.0 if not math.isfinite(db) else math.sqrt(-math.expm1(-db))
            out[a, b] = out[b, a] = db
    return out


def _classical_mds(dist: np.ndarray) -> np.ndarray:
    """Points (K, r) whose Euclidean distances best match ``dist`` (Torgerson's classical MDS);
    the negative part of the spectrum (what no Euclidean space can hold) is dropped."""
    k = len(dist)
    j = np.eye(k) - 1.0 / k
    b = -0.5 * j @ (dist**2) @ j
    vals, vecs = np.linalg.eigh(0.5 * (b + b.T))
    keep = vals > 1e-12 * max(float(np.max(np.abs(vals))), 1e-300)
    if not keep.any():
        return np.zeros((k, 1))
    return vecs[:, keep] * np.sqrt(vals[keep])


def family_tree(components: Sequence[dict[str, Any]]) -> np.ndarray:
    """The components' family tree: Ward linkage of their Gaussians (a scipy linkage matrix).

    Distance: √D_B, the square root of the Bhattacharyya distance (for equal covariances, the
    Mahalanobis distance between the means over √8). Ward's update is exact only for Euclidean
    distances, and √D_B is Euclidean only when the covariances are equal, so the components are
    first placed in a Euclidean space by classical MDS on √D_B (dropping the spectrum's negative
    part, which comes from the covariances' differences), and Ward linkage runs on those points.
    A pair's first merge height is then (close to) its √D_B. The Hellinger distance, Euclidean by
    construction, was not used: it saturates at 1 for almost every pair in more than a few
    dimensions, which flattens the tree. A component with non-finite parameters is placed at twice
    the largest finite distance from every other.

    Returns the (K − 1, 4) matrix of :func:`scipy.cluster.hierarchy.linkage`; K must be ≥ 2.
    """
    from scipy.cluster.hierarchy import linkage

    if len(components) < 2:
        msg = f"A family tree needs at least 2 components; got {len(components)}."
        raise ValueError(msg)
    dist = np.sqrt(gaussian_distance_matrix(components))
    finite = np.isfinite(dist)
    if not finite.all():
        top = float(dist[finite].max()) if finite.any() else 0.0
        dist = np.where(finite, dist, 2.0 * top if top > 0 else 1.0)
        np.fill_diagonal(dist, 0.0)
    return np.asarray(linkage(_classical_mds(dist), method="ward", metric="euclidean"))
