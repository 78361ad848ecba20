"""The behaviour family as one picklable value the EM loop, estimator and pipeline can hold.

It is a :class:`gmm_dask.mixture.em.Family`: :meth:`BehaviourFamily.estep` is one pass of the
compiled kernel over the runner's partitions, merged exactly; :meth:`BehaviourFamily.update` the
closed-form M-step with collapsed components re-seeded; the objective is the penalised mean
log-likelihood (log-likelihood + log prior), the quantity EM never decreases.
"""

from __future__ import annotations

import functools
from collections.abc import Sequence
from dataclasses import dataclass
from typing import ClassVar

import numpy as np
from numpy.typing import NDArray

from gmm_dask.errors import FitError
from gmm_dask.mixture.behaviour import estep, init, mstep
from gmm_dask.mixture.behaviour.structure import Links, Structure
from gmm_dask.mixture.behaviour.values import DEFAULT_PRIOR, BehaviourParams, BehaviourStats, Prior
from gmm_dask.mixture.runner import Runner
from gmm_dask.mixture.suffstats import collapsed_components

F64 = NDArray[np.float64]


@dataclass(frozen=True)
class BehaviourFamily:
    """Mixtures of behaviour components for a fixed :class:`Structure` (see the package)."""

    structure: Structure
    prior: Prior = DEFAULT_PRIOR
    name: ClassVar[str] = "behaviour"

    def chunk_stats(
        self,
        X: F64,
        w: F64 | None,
        params: BehaviourParams,
        *,
        row_offset: int = 0,
        hard_counts: bool = False,
    ) -> BehaviourStats:
        """E-step statistics of one partition (one pass of the compiled kernel)."""
        return estep.chunk_stats(self.structure, X, w, params, row_offset=row_offset, hard_counts=hard_counts)

    def resp_stats(
        self, X: F64, w: F64 | None, resp: F64, params: BehaviourParams | None = None, *, row_offset: int = 0
    ) -> BehaviourStats:
        """Statistics for given responsibilities (see :func:`.estep.resp_stats`)."""
        return estep.resp_stats(self.structure, X, w, resp, params, row_offset=row_offset)

    def combine_all(self, parts: list[BehaviourStats]) -> BehaviourStats:
        return mstep.combine_all(parts)

    def m_step(self, stats: BehaviourStats) -> BehaviourParams:
        return mstep.m_step(self.structure, stats, self.prior)

    def log_prior(self, params: BehaviourParams) -> float:
        return mstep.log_prior(params, self.prior)

    def log_prob(self, X: F64, params: BehaviourParams) -> F64:
        """(n, K): log πₖ + log pₖ(x)."""
        return estep.log_prob(self.structure, X, params)

    def n_parameters(self, params: BehaviourParams) -> int:
        return mstep.n_parameters(self.structure, params)

    def reseed(
        self, stats: BehaviourStats, params: BehaviourParams, collapsed: NDArray[np.intp]
    ) -> BehaviourParams:
        return mstep.reseed(self.structure, stats, params, collapsed, self.prior)

    # --- the EM loop's protocol (gmm_dask.mixture.em.Family) ---------------------------------

    def estep(self, runner: Runner, params: BehaviourParams, *, hard_counts: bool = False) -> BehaviourStats:
        """One pass: every partition's statistics under ``params``, merged."""
        fn = functools.partial(_chunk, family=self, params=params, hard_counts=hard_counts)
        stats: BehaviourStats = runner.map_reduce(fn, self.combine_all)
        if stats.n_bad:
            raise FitError(
                f"{stats.n_bad} row(s) have zero probability under every component (the first is row "
                f"{stats.first_bad}): check the features' kinds (counts must be non-negative whole "
                "numbers, amounts non-negative, binaries 0/1)."
            )
        return stats

    def update(self, stats: BehaviourStats) -> tuple[BehaviourParams, NDArray[np.intp]]:
        """The M-step; components left with (almost) no weight are re-seeded."""
        params = self.m_step(stats)
        collapsed = collapsed_components(stats)
        if collapsed.size:
            params = self.reseed(stats, params, collapsed)
        return params, collapsed

    def objective(self, stats: BehaviourStats, params: BehaviourParams) -> float:
        """Mean penalised log-likelihood of the parameters that gave ``stats``."""
        return (stats.loglik + self.log_prior(params)) / stats.weight

    def initialize(self, runner: Runner, n_components: int, seed: int, *, n_init: int = 4) -> BehaviourParams:
        """Over-cluster-then-merge on a sample drawn in one pass over ``runner``."""
        return init.initialize(self.structure, runner, n_components, seed, n_init=n_init, prior=self.prior)


def _chunk(
    X: F64,
    w: F64 | None,
    index: int,
    offset: int,
    *,
    family: BehaviourFamily,
    params: BehaviourParams,
    hard_counts: bool,
) -> BehaviourStats:
    return family.chunk_stats(X, w, params, row_offset=offset, hard_counts=hard_counts)


def fit_structure_and_init(
    runner: Runner,
    kinds: Sequence[str],
    names: Sequence[str],
    n_components: int,
    seed: int,
    n_init: int = 4,
    *,
    parents: Links = "auto",
    caps: Links = "auto",
) -> tuple[BehaviourFamily, BehaviourParams]:
    """One pass over ``runner``: a sample → :func:`infer_structure` → initial parameters."""
    structure, params = init.structure_and_init(
        runner, kinds, names, n_components, seed, n_init=n_init, parents=parents, caps=caps
    )
    return BehaviourFamily(structure), params
