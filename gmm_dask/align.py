"""Keep component ids stable across refits: match new components to old ones.

The cost of pairing old component i with new component j is the Bhattacharyya distance
between the two Gaussians; the assignment minimising the total cost (Hungarian algorithm)
reorders the new model so that segment 3 means the same archetype on every date.
"""

from __future__ import annotations

import dataclasses

import numpy as np
from scipy.optimize import linear_sum_assignment

from .model import SegmentationModel


def bhattacharyya(mu1, cov1, mu2, cov2) -> float:
    """Bhattacharyya distance between N(mu1, cov1) and N(mu2, cov2)."""
    cov = (cov1 + cov2) / 2
    diff = mu1 - mu2
    _, logdet = np.linalg.slogdet(cov)
    _, l1 = np.linalg.slogdet(cov1)
    _, l2 = np.linalg.slogdet(cov2)
    return float(diff @ np.linalg.solve(cov, diff) / 8 + 0.5 * (logdet - 0.5 * (l1 + l2)))


def alignment(old: SegmentationModel, new: SegmentationModel) -> np.ndarray:
    """perm such that new component perm[i] plays the role of old component i."""
    if old.means.shape != new.means.shape:
        raise ValueError("alignment needs models with the same number of components and features")
    c_old, c_new = old.full_covariances(), new.full_covariances()
    k = len(old.weights)
    cost = np.array(
        [[bhattacharyya(old.means[i], c_old[i], new.means[j], c_new[j]) for j in range(k)] for i in range(k)]
    )
    _, cols = linear_sum_assignment(cost)
    return cols


def align_to(old: SegmentationModel, new: SegmentationModel) -> SegmentationModel:
    """``new`` with its components reordered to match ``old`` (and old's segment names)."""
    perm = alignment(old, new)
    tied = new.covariance_type == "tied"
    meta = dict(new.metadata)
    meta["aligned_to"] = old.version
    meta["alignment_permutation"] = perm.tolist()
    return dataclasses.replace(
        new,
        weights=new.weights[perm],
        means=new.means[perm],
        covariances=new.covariances if tied else new.covariances[perm],
        precisions_cholesky=new.precisions_cholesky if tied else new.precisions_cholesky[perm],
        segment_names=list(old.segment_names),
        metadata=meta,
    )
