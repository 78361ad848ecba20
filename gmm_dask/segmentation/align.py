"""One segment identity across runs: match a new model's components to the published model's.

Components are matched on what they share — the *co-membership mass* of the two models over the
same users, M[i, j] = Σᵤ wᵤ γ_old[u, i] γ_new[u, j] (both models score the new snapshot) — by the
assignment maximising the total shared mass (Hungarian algorithm), with the Bhattacharyya
distance between the Gaussians as a tie-break. A small or degenerate component shares little
mass with anything, so it can never capture a large one.

A matched pair must share at least half of the smaller component's mass; otherwise the new
component is a *birth* (it gets a new id, never used before) and the old one a *death* (its id
is retired for good). A birth that takes most of its mass from one old component is reported as
a split of it; a death whose mass went mostly to one new component as a merge into it. Names
travel with ids; a birth gets ``segment_<id>``.
"""

from __future__ import annotations

import dataclasses

import numpy as np

from gmm_dask.mixture.arrays import FloatArray
from gmm_dask.segmentation.distance import bhattacharyya_matrix
from gmm_dask.segmentation.model import SegmentationModel
from gmm_dask.segmentation.naming import is_placeholder

#: A matched pair must share at least this fraction of the smaller component's mass.
MATCH_FRACTION = 0.5


def _distances(old: SegmentationModel, new: SegmentationModel) -> np.ndarray:
    """Bhattacharyya distances in raw-feature-aligned model space (both models' means and
    covariances mapped through their own scalers to the transformed space)."""

    def to_t(m: SegmentationModel) -> tuple[FloatArray, FloatArray]:
        s = m.plan.scale
        return m.means * s + m.plan.mean, m.full_covariances() * np.outer(s, s)

    mo, co = to_t(old)
    mn, cn = to_t(new)
    return bhattacharyya_matrix(mo, co, mn, cn)


@dataclasses.dataclass
class Alignment:
    """How a new model's components map onto the published model's segment ids."""

    ids: list[int]  # id of each new component, in the new model's order
    matched: dict[int, int]  # new component -> old component
    births: list[int]  # new components with fresh ids
    deaths: list[int]  # old segment ids retired
    splits: dict[int, int]  # born id -> id it split from
    merges: dict[int, int]  # retired id -> id it merged into
    shared: np.ndarray  # (K_old, K_new) co-membership mass

    def summary(self, old: SegmentationModel) -> dict[str, object]:
        return {
            "aligned_to": old.version,
            "mapping": {str(self.ids[j]): old.ids[i] for j, i in self.matched.items()},
            "births": [self.ids[j] for j in self.births],
            "deaths": self.deaths,
            "splits": {str(k): v for k, v in self.splits.items()},
            "merges": {str(k): v for k, v in self.merges.items()},
        }


def match(old: SegmentationModel, new: SegmentationModel, shared: np.ndarray) -> Alignment:
    """Match components from their co-membership mass ``shared`` (K_old, K_new)."""
    mass_old, mass_new = shared.sum(axis=1), shared.sum(axis=0)
    total = max(shared.sum(), 1e-300)
    dist = _distances(old, new)
    # maximise shared mass; the distance only breaks ties (its scale is below any real mass gap)
    cost = -shared / total + 1e-9 * dist / max(dist.max(), 1e-300)
    from scipy.optimize import linear_sum_assignment  # ~1 s to import: only when aligning

    rows, cols = linear_sum_assignment(cost)
    matched = {
        int(j): int(i)
        for i, j in zip(rows, cols, strict=True)
        if shared[i, j] >= MATCH_FRACTION * min(mass_old[i], mass_new[j]) and shared[i, j] > 0
    }
    next_id = max([*old.ids, *old.metadata.retired_ids, -1]) + 1
    ids, births = [], []
    for j in range(new.n_components):
        if j in matched:
            ids.append(old.ids[matched[j]])
        else:
            ids.append(next_id)
            births.append(j)
            next_id += 1
    deaths = [old.ids[i] for i in range(old.n_components) if i not in matched.values()]
    splits = {}
    for j in births:
        i = int(np.argmax(shared[:, j]))
        if shared[i, j] >= MATCH_FRACTION * mass_new[j]:
            splits[ids[j]] = old.ids[i]
    merges = {}
    for i in (old.ids.index(d) for d in deaths):
        j = int(np.argmax(shared[i]))
        if shared[i, j] >= MATCH_FRACTION * mass_old[i]:
            merges[old.ids[i]] = ids[j]
    return Alignment(ids, matched, births, deaths, splits, merges, shared)


def apply(old: SegmentationModel, new: SegmentationModel, al: Alignment) -> SegmentationModel:
    """``new`` with its components in id order, carrying the ids and names of ``old``."""
    order = np.argsort(al.ids, kind="stable")
    ids = [al.ids[j] for j in order]
    old_names = dict(zip(old.ids, old.segment_names, strict=True))
    carried = {old_names[old.ids[al.matched[j]]] for j in order if j in al.matched}
    names = []
    for j in order:  # a segment keeps its name with its id; a new one keeps the name it was fitted with
        name = old_names[old.ids[al.matched[j]]] if j in al.matched else new.segment_names[j]
        if j not in al.matched and (name in carried or is_placeholder(name)):
            name = f"{name} #{al.ids[j]}" if not is_placeholder(name) else f"segment_{al.ids[j]}"
        names.append(name if name not in names else f"{name} #{al.ids[j]}")
    tied = new.covariance_type == "tied"
    degenerate = new.metadata.degenerate
    if degenerate.get("components"):
        rename = dict(
            zip(new.segment_names, [names[list(order).index(j)] for j in range(len(order))], strict=True)
        )
        degenerate = {
            **degenerate,
            "components": {rename.get(k, k): v for k, v in degenerate["components"].items()},
        }
    meta = new.metadata.replace(
        alignment=al.summary(old),
        aligned_to=old.version,
        retired_ids=sorted({*old.metadata.retired_ids, *al.deaths}),
        degenerate=degenerate,
    )
    return dataclasses.replace(
        new,
        weights=new.weights[order],
        means=new.means[order],
        covariances=new.covariances if tied else new.covariances[order],
        precisions_cholesky=new.precisions_cholesky if tied else new.precisions_cholesky[order],
        segment_names=names,
        segment_ids=ids,
        metadata=meta,
        behaviour=None if new.behaviour is None else new.behaviour.take(order),
    )


def align_to(old: SegmentationModel, new: SegmentationModel, shared: np.ndarray) -> SegmentationModel:
    """``new`` aligned to ``old`` given their co-membership mass over the same users."""
    return apply(old, new, match(old, new, shared))
