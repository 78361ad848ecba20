"""Behaviour models named in the family's terms, labels that stay apart, and the drift signal.

Names of a behaviour model say how many of a segment's users have any of a feature and how much
when they do; they are unique, each led by a feature where the segment stands apart, never
"typical user". A warm-started fit records how far today's data moved from the published model
and, past 0.5 nats per user, warns of a promotion-like shift (on the demo's promotion day, not on
a quiet one).
"""

from __future__ import annotations

import io
import logging
import re
from types import SimpleNamespace

import numpy as np
import pandas as pd
import pytest

from gmm_dask.app import jobs
from gmm_dask.app.config import FeatureSpec
from gmm_dask.app.params import SegmentParams, TrainParams
from gmm_dask.demo import FEATURE_KINDS, FEATURES, DemoSpec
from gmm_dask.mixture.behaviour.estimator import BehaviourMixture
from gmm_dask.report.markdown import _md_header
from gmm_dask.segmentation.behaviour_names import behaviour_names, family_figures
from gmm_dask.segmentation.features import FeaturePlan
from gmm_dask.segmentation.fit_record import DRIFT_NATS
from gmm_dask.segmentation.naming import (
    component_variances,
    feature_labels,
    generate_names,
    profile_z,
)
from gmm_dask.storage.registry import load_model
from gmm_dask_cli.output import print_result

from .pipeline_helpers import demo_data, make_config

# the promotion on the third day: day 2 is a quiet day after a quiet day, day 3 the promotion
SPEC = DemoSpec(
    n_users=8000,
    n_snapshots=3,
    seed=5,
    promotion_start=2,
    promotion_days=1,
    block_users=4000,
    row_group_rows=2000,
)
DATES = SPEC.dates
# refit_min_gain 0: every day refits, so each records its drift (a kept day records none)
BEHAVIOUR = {"family": "behaviour", "n_components": 5, "n_init": 2, "random_state": 0, "refit_min_gain": 0}
TERM = re.compile(r"^(very high|high|low|no) (.+?)(?: \((.+)\))?$")
SHIFT = "promotion-like shift: the data moved far from yesterday's model"


@pytest.fixture(scope="module")
def chain(tmp_path_factory):
    """Train on day 1, then the segment job on the quiet day 2 and the promotion day 3."""
    tmp = tmp_path_factory.mktemp("family_names")
    root = demo_data(tmp / "demo", SPEC)
    features = [{"name": f, "kind": FEATURE_KINDS[f]} for f in FEATURES]
    path = make_config(tmp, root, model=BEHAVIOUR, input={"features": features})
    logger = logging.getLogger("gmm_dask.app.pipeline")
    runs, warnings = [jobs.train(TrainParams(config=str(path), snapshot=DATES[0]))], []
    for date in DATES[1:]:
        records: list[logging.LogRecord] = []
        handler = logging.Handler(logging.WARNING)
        handler.emit = records.append  # type: ignore[method-assign]  # a capturing handler
        logger.addHandler(handler)
        try:
            runs.append(jobs.segment(SegmentParams(config=str(path), snapshot=date), report=False))
        finally:
            logger.removeHandler(handler)
        warnings.append([r.getMessage() for r in records])
    models = [load_model(str(tmp / "out" / "registry"), r.model_version) for r in runs]
    return runs, models, warnings


def _leading_feature(name: str, labels: list[str]) -> int:
    m = TERM.match(re.split(r", (?![^()]*\))", name)[0])  # commas inside a term's figures stay
    assert m is not None, name
    return labels.index(m.group(2))


def test_behaviour_names_are_unique_worded_in_the_family_and_led_by_what_stands_apart(chain):
    _, models, _ = chain
    model = models[0]
    names = model.segment_names
    assert len(set(names)) == len(names), names
    assert not any("typical user" in n or "#" in n for n in names), names
    assert any("%" in n for n in names), names  # the family's share of users with any
    part = model.behaviour
    share, typical = family_figures(part.structure, part.params)
    w = part.params.weights
    k, d = model.means.shape
    z = profile_z(model.weights, model.means, component_variances(model.covariances, "full", k, d))
    labels = feature_labels(model.plan.names)
    for c, name in enumerate(names):
        j = _leading_feature(name, labels)
        assert abs(z[c, j]) == pytest.approx(np.abs(z[c]).max()), (name, z[c])
        others = np.arange(k) != c  # the rest of the population
        rest_share = w[others] @ share[others, j] / w[others].sum()
        moved = abs(share[c, j] - rest_share) >= 0.15
        if share[c, j] > 0.02:  # a level the segment has, against the others' typical level
            rest = np.exp(w[others] @ np.log(np.maximum(typical[others, j], 1e-9)) / w[others].sum())
            moved |= abs(np.log(max(typical[c, j], 1e-9) / rest)) >= np.log(1.5)
        assert moved, (name, share[:, j], typical[:, j])


def test_names_are_deterministic_and_travel_with_ids(chain):
    _, models, _ = chain
    part = models[0].behaviour
    m = models[0]
    again = behaviour_names(part.structure, part.params, m.weights, m.means, m.covariances)
    assert again == m.segment_names
    assert models[1].segment_names == models[0].segment_names  # aligned ids keep their names


def test_colliding_labels_stay_apart_in_both_families():
    assert feature_labels(["orders", "orders_90d", "spend_30d"]) == ["orders", "orders (90d)", "spend"]
    assert feature_labels(["orders_30d", "orders_90d"]) == ["orders (30d)", "orders (90d)"]
    plan = FeaturePlan(
        (FeatureSpec(name="orders"), FeatureSpec(name="orders_90d")),
        "error",
        np.zeros(2),
        np.ones(2),
        np.zeros(2),
    )
    cov = np.stack([np.eye(2) * 0.1] * 2)
    gauss = generate_names(plan, np.full(2, 0.5), np.array([[2.0, 0.0], [0.0, 2.0]]), cov, "full")
    assert gauss == ["high orders, low orders (90d)", "low orders, high orders (90d)"], gauss
    rng = np.random.default_rng(0)
    n = 3000
    light = pd.DataFrame({"orders": rng.poisson(4, n), "orders_90d": rng.poisson(1, n)})
    heavy = pd.DataFrame({"orders": np.zeros(n, dtype=int), "orders_90d": rng.poisson(12, n)})
    X = pd.concat([light, heavy], ignore_index=True).astype(float)
    bm = BehaviourMixture(n_components=2, random_state=0, kinds=["count", "count"]).fit(X)
    gamma = bm.predict_proba(X)
    Z = np.log1p(X.to_numpy())
    Z = (Z - Z.mean(axis=0)) / Z.std(axis=0)
    nk = gamma.sum(axis=0)
    means = gamma.T @ Z / nk[:, None]
    covs = np.stack([((Z - means[c]) * gamma[:, [c]]).T @ (Z - means[c]) / nk[c] for c in range(2)])
    names = behaviour_names(bm.structure_, bm.params_, nk / nk.sum(), means, covs)
    assert len(set(names)) == 2
    assert any("orders (90d) (" in n for n in names), names
    assert any(re.search(r"\borders \(\d+ %|\borders \(~|no orders\b", n) for n in names), names


def test_the_promotion_day_warns_and_a_quiet_day_does_not(chain):
    runs, models, warnings = chain
    assert models[0].metadata.drift is None  # a cold start has nothing to compare with
    quiet, promo = models[1].metadata.drift, models[2].metadata.drift
    assert quiet is not None
    assert promo is not None
    assert 0 <= quiet["delta"] < 0.1, quiet
    assert promo["delta"] > DRIFT_NATS, promo
    assert promo["delta"] == pytest.approx(promo["log_likelihood"] - promo["published_log_likelihood"])
    assert promo["log_likelihood"] == pytest.approx(models[2].metadata.log_likelihood)
    assert not any(SHIFT in m for m in warnings[0]), warnings[0]
    assert any(SHIFT in m for m in warnings[1]), warnings[1]
    out = io.StringIO()
    print_result(runs[2], out)
    assert f"{SHIFT} (Δ = {promo['delta']:.2f} nats/user)" in out.getvalue()
    quiet_out = io.StringIO()
    print_result(runs[1], quiet_out)
    assert SHIFT not in quiet_out.getvalue()
    header = SimpleNamespace(
        kind="segment",
        snapshot=DATES[2],
        published=True,
        model_version="v",
        run_id="r",
        counts={},
        fit=runs[2].fit,
        seconds=runs[2].seconds,
        latest=None,
        latest_snapshot=None,
        latest_moved=False,
        kept=None,
    )
    assert any(SHIFT in line for line in _md_header(header))  # type: ignore[arg-type]  # a stand-in
