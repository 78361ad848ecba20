"""The behaviour family inside a segmentation model: its stored part, its scoring on raw features,
and the moment-matched Gaussian summary that describes each component in model space.

A behaviour model scores users with the family's own likelihood on their *raw* features (after
the missing-value policy); everything that describes components — names, the segments table,
alignment's distance, the report — reads the summary: for each component, the γ-weighted mean
and full covariance of the plan's transformed and standardised features.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np

from gmm_dask.errors import DataError, RegistryError
from gmm_dask.mixture.arrays import FloatArray, IntArray
from gmm_dask.mixture.gaussian import MixtureParams, compute_precision_cholesky
from gmm_dask.mixture.suffstats import SuffStats, m_step
from gmm_dask.segmentation.features import FeaturePlan, Profile
from gmm_dask.segmentation.specs import InputColumns

if TYPE_CHECKING:  # the family's package loads numba and Dask: imported where a model is used
    from gmm_dask.mixture.behaviour import BehaviourFamily, BehaviourParams, Structure

#: The value ``FitRecord.family`` and a stored model's ``family`` take for this family.
FAMILY = "behaviour"


@dataclass(frozen=True)
class BehaviourPart:
    """The behaviour family's structure and parameters of a fitted model (K components in the
    model's component order)."""

    structure: Structure
    params: BehaviourParams

    @property
    def family(self) -> BehaviourFamily:
        from gmm_dask.mixture.behaviour import BehaviourFamily

        return BehaviourFamily(self.structure)

    def weighted_log_prob(self, X_raw: FloatArray) -> FloatArray:
        """log πₖ + log pₖ(x) of raw features (n, D): shape (n, K); raises :class:`DataError`
        on a value its feature's kind cannot take."""
        from gmm_dask.mixture.behaviour import check_values

        X = np.ascontiguousarray(X_raw, dtype=np.float64)
        problem = check_values(X, self.structure)
        if problem is not None:
            raise DataError(
                f"{problem}. The model's behaviour family scores raw values of its features' kinds; "
                "fix the value upstream or retrain with another kind."
            )
        return self.family.log_prob(X, self.params)

    def take(self, order: Sequence[int] | IntArray) -> BehaviourPart:
        """The components ``order`` (in that order)."""
        return BehaviourPart(self.structure, self.params.take(np.asarray(order, dtype=np.intp)))

    def starts(self, plan: FeaturePlan, n_components: int) -> bool:
        """Whether these parameters can start a fit of ``n_components`` on ``plan``'s features
        (same names and kinds, same K)."""
        return (
            self.params.n_components == n_components
            and self.structure.names == tuple(plan.names)
            and self.structure.kinds == tuple(plan.kinds)
        )

    def to_payload(self) -> dict[str, Any]:
        """Plain JSON values: the structure, and each parameter array as its shape and its values
        (floats, whose repr round-trips float64 exactly)."""
        return {
            "structure": self.structure.to_json(),
            "params": {
                name: {"shape": list(a.shape), "values": a.ravel().tolist()}
                for name, a in self.params.to_arrays().items()
            },
        }

    @classmethod
    def from_payload(cls, payload: Mapping[str, Any], where: str, n_components: int) -> BehaviourPart:
        """Validate a stored part (never executes anything)."""
        from gmm_dask.mixture.behaviour import BehaviourParams, Structure

        try:
            structure = Structure.from_json(payload["structure"])
            arrays = {
                name: np.asarray(v["values"], dtype=np.float64).reshape([int(s) for s in v["shape"]])
                for name, v in dict(payload["params"]).items()
            }
            params = BehaviourParams.from_arrays(arrays)
        except (KeyError, TypeError, ValueError) as err:
            raise RegistryError(f"{where}: invalid behaviour part ({err}).") from None
        bad = [name for name, a in arrays.items() if not np.all(np.isfinite(a))]
        if bad or params.n_components != n_components:
            raise RegistryError(
                f"{where}: behaviour parameters must be finite with K={n_components} components "
                f"(non-finite: {bad}, K={params.n_components})."
            )
        return cls(structure, params)


def stored_part(
    payload: Mapping[str, Any], where: str, n_components: int, names: Sequence[str]
) -> BehaviourPart | None:
    """The behaviour part of a stored model's payload (None for a Gaussian model), validated."""
    family = payload.get("family", "gaussian")
    if family not in ("gaussian", FAMILY) or (family == FAMILY) != ("behaviour" in payload):
        raise RegistryError(f"{where}: family {family!r} is not 'gaussian', or 'behaviour' with its part.")
    if family != FAMILY:
        return None
    part = BehaviourPart.from_payload(payload["behaviour"], where, n_components)
    if part.structure.names != tuple(names):
        raise RegistryError(
            f"{where}: the behaviour structure's features {list(part.structure.names)} are not the "
            f"model's {list(names)}."
        )
    return part


def check_kinds(prof: Profile, cfg: InputColumns, kinds: Sequence[str], date: str) -> None:
    """Refuse, from the profile, a declared kind the values cannot take (an inferred kind always
    fits its values)."""
    for j, (f, kind) in enumerate(zip(cfg.features, kinds, strict=True)):
        low, high, whole = float(prof.col_min[j]), float(prof.col_max[j]), bool(prof.col_integral[j])
        rule = {
            "count": (whole and low >= 0, "whole numbers ≥ 0"),
            "amount": (low >= 0, "values ≥ 0"),
            "binary": (whole and low >= 0 and high <= 1, "only 0 and 1"),
        }.get(kind, (True, ""))
        if not rule[0]:
            raise DataError(
                f"Snapshot {date}: feature {f.name!r} is declared kind: {kind}, which needs "
                f"{rule[1]}, but its values range from {low:g} to {high:g}"
                f"{'' if whole else ' and include fractions'}. Fix the kind in input.features (or leave "
                "it empty to infer it), or fix the values upstream."
            )


def summary_stats(X_raw: FloatArray, Z: FloatArray, w: FloatArray | None, part: BehaviourPart) -> SuffStats:
    """γ from the behaviour family on raw rows (n, D), and the γ-weighted moments of the same
    rows' model inputs ``Z`` (n, D): one partition's share of the Gaussian summary (mergeable
    with :func:`gmm_dask.mixture.suffstats.combine_all`)."""
    from gmm_dask.mixture.behaviour.estep import summary_stats as stats_of

    stats = stats_of(part.structure, part.params, X_raw, Z, w)
    if stats.n_bad:  # a value its feature's kind cannot take: the scoring's clear error
        part.weighted_log_prob(X_raw)
    return stats


def summary_params(stats: SuffStats, reg_covar: float) -> MixtureParams:
    """The moment-matched Gaussian of each component: full covariances (``reg_covar`` on the
    diagonal) in precision-Cholesky form."""
    weights, means, cov = m_step(stats, "full", reg_covar)
    return MixtureParams(weights, means, cov, compute_precision_cholesky(cov, "full"))


__all__ = ["FAMILY", "BehaviourPart", "check_kinds", "stored_part", "summary_params", "summary_stats"]
