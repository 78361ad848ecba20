"""The warehouse fit of the behaviour family (``model.family: behaviour``).

EM runs on the snapshot's *raw* features after the missing-value policy (no transform, no
scaling, no dequantisation): the structure (bins, links) and the first parameters come from one
sampling pass (:func:`~gmm_dask.mixture.behaviour.fit_structure_and_init`), or the published
model's behaviour part starts it when its features, kinds and K match. One more pass then
summarises each component as a Gaussian in the plan's model space (transformed, standardised;
γ from the behaviour family), so names, the segments table, alignment and the report describe
behaviour components exactly as they describe Gaussian ones. Components that are too small are
found (and pruned) as for the Gaussian family; the Gaussian-only atom check (a variance at the
resolution floor) does not apply: a count's histogram is meant to put mass on exact values.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import TYPE_CHECKING

import numpy as np

from gmm_dask.app.config import JobConfig
from gmm_dask.app.fitting import Degenerate, Fitted, small_components, to_keep
from gmm_dask.app.steps import summary_piece, tree_reduce
from gmm_dask.mixture.gaussian import MixtureParams
from gmm_dask.segmentation.behaviour import BehaviourPart, summary_params
from gmm_dask.segmentation.features import FeaturePlan
from gmm_dask.segmentation.model import SegmentationModel
from gmm_dask.storage.io import Snapshot

if TYPE_CHECKING:
    import dask.array as da

    from gmm_dask.mixture.behaviour import BehaviourFamily, BehaviourParams
    from gmm_dask.mixture.em import FitResult, IterationInfo
    from gmm_dask.mixture.runner import Runner


#: Fewest initialisations of the behaviour family: each is EM on the one-pass sample (5,000 rows),
#: not a pass over the data, so ``model.n_init`` below this buys robustness for seconds (on the
#: demo one or two starts can settle in a basin that merges two archetypes).
MIN_SAMPLE_STARTS = 4


def summarise(cfg: JobConfig, snap: Snapshot, plan: FeaturePlan, part: BehaviourPart) -> MixtureParams:
    """One pass over the snapshot: each behaviour component's moment-matched Gaussian in model
    space (full covariances, ``model.reg_covar`` on the diagonal)."""
    import dask

    from gmm_dask.mixture.suffstats import combine_all

    parts = [
        dask.delayed(summary_piece, pure=False)(p, cfg.input, plan, part, snap.storage_options)
        for p in snap.pieces
    ]
    stats = dask.compute(tree_reduce(parts, lambda a, b: combine_all([a, b])))[0]
    return summary_params(stats, cfg.model.reg_covar)


def _start(
    cfg: JobConfig, runner: Runner, plan: FeaturePlan, k: int, warm_start: SegmentationModel | None
) -> tuple[BehaviourFamily, BehaviourParams, bool]:
    """The family and first parameters: the published model's when they fit this plan and K
    (then True), else a structure and an initialisation from one sampling pass."""
    from gmm_dask.mixture.behaviour import fit_structure_and_init
    from gmm_dask.mixture.em import seed_from

    warm = warm_start.behaviour if warm_start is not None else None
    if warm is not None and warm.starts(plan, k):
        return warm.family, warm.params, True
    m = cfg.model
    starts = max(m.n_init, MIN_SAMPLE_STARTS)
    family, params = fit_structure_and_init(
        runner, list(plan.kinds), plan.names, k, seed_from(m.random_state), starts
    )
    return family, params, False


def fit_behaviour(
    cfg: JobConfig,
    snap: Snapshot,
    plan: FeaturePlan,
    X: da.Array,
    w: da.Array | None,
    k: int,
    warm_start: SegmentationModel | None,
    callback: Callable[[IterationInfo], None] | None,
) -> tuple[Fitted, BehaviourPart, MixtureParams]:
    """EM of ``k`` behaviour components on raw features ``X`` (n, D); while the degenerate
    policy prunes small components, EM again from those kept. Returns the fit, its behaviour
    part and the components' Gaussian summary."""
    from gmm_dask.mixture.em import fit_family
    from gmm_dask.mixture.runner import ChunkedData, make_runner
    from gmm_dask.segmentation.behaviour_names import behaviour_names

    m = cfg.model
    configured = m.segment_names is not None and len(m.segment_names) == k
    names = list(m.segment_names or []) if configured else [f"segment_{i}" for i in range(k)]
    runner = make_runner(ChunkedData(X, w), persist=m.persist)
    t0, p0 = time.perf_counter(), runner.passes
    summary_passes, summary_seconds = 0, 0.0
    try:
        family, init, warm = _start(cfg, runner, plan, k, warm_start)
        setup = (runner.passes - p0, time.perf_counter() - t0)  # the sampling pass (cold starts)

        def fit(start: BehaviourParams) -> FitResult[BehaviourParams]:
            return fit_family(
                runner, family, lambda i: start, 1, tol=m.tol, max_iter=m.max_iter, callback=callback
            )

        res = fit(init)
        fits: list[FitResult] = [res]
        published = None  # the first E-step's objective less the prior: the published model's fit
        if warm and res.lower_bounds:
            published = res.lower_bounds[0] - family.log_prior(init) / res.weight
        pruned: list[dict] = []
        while True:
            part = BehaviourPart(family.structure, res.params)
            t1 = time.perf_counter()
            summary = summarise(cfg, snap, plan, part)
            summary_passes, summary_seconds = summary_passes + 1, summary_seconds + time.perf_counter() - t1
            if not configured:  # named in the family's terms (configured names win)
                assert summary.covariances is not None  # a summary has its covariances
                names = behaviour_names(
                    family.structure, res.params, summary.weights, summary.means, summary.covariances
                )
            assert res.hard_weight is not None  # fit_family always counts them
            found = Degenerate(small_components(res, res.hard_weight, m.degenerate.min_share), {}, {})
            keep = to_keep(found, m.degenerate, names, snap.date, plan.names, pruned)
            if keep is None:
                break
            names = [names[i] for i in keep]
            res = fit(res.params.take(np.asarray(keep, dtype=np.intp)))
            fits.append(res)
    finally:
        runner.close()
    other = {"init": setup, "summary": (summary_passes, summary_seconds)}
    return Fitted(res, fits, names, found, pruned, published, other), part, summary
