"""Generated segment names: readable, deterministic, unique, and true to what the segment is."""

from __future__ import annotations

import re

import numpy as np
import pandas as pd
import pytest

from gmm_dask.app import jobs
from gmm_dask.app.config import FeatureSpec
from gmm_dask.app.params import TrainParams
from gmm_dask.demo import FEATURES, DemoSpec, block_snapshots, read_truth, write_demo_dataset
from gmm_dask.segmentation.features import FeaturePlan
from gmm_dask.segmentation.naming import DORMANT, feature_label, generate_names

from .pipeline_helpers import make_config

TERM = re.compile(r"^(very high|high|low|no) (.+)$")


def _plan(d, resolution=None, transform="none"):
    return FeaturePlan(
        tuple(FeatureSpec(name=f"f{i}_30d", transform=transform) for i in range(d)),
        "error",
        np.zeros(d),
        np.ones(d),
        np.zeros(d),
        kinds=("count",) * d if resolution is not None else (),
        resolution=None if resolution is None else np.full(d, resolution),
        low=None if resolution is None else np.zeros(d),
    )


def test_feature_labels_drop_the_window_and_underscores():
    assert feature_label("items_created_30d") == "items created"
    assert feature_label("minutes_per_session") == "minutes per session"
    assert feature_label("spend_90d") == "spend"
    assert feature_label("x") == "x"


def test_names_say_where_a_component_stands_out_and_are_unique_and_deterministic():
    plan = _plan(3)
    means = np.array([[3.0, 0.0, 0.0], [0.0, -2.0, 0.1], [0.0, 0.0, 0.0], [0.0, 0.0, 0.05]])
    cov = np.stack([np.eye(3) * 0.1] * 4)
    w = np.full(4, 0.25)
    names = generate_names(plan, w, means, cov, "full", ids=[4, 5, 6, 7])
    assert names == generate_names(plan, w, means, cov, "full", ids=[4, 5, 6, 7])
    assert names[0].startswith("very high f0")
    assert names[1].startswith("low f1")
    assert len(set(names)) == 4, names
    # the two near-average components cannot be told apart by a description: the id does it
    assert any(n.endswith("#6") or n.endswith("#7") for n in names[2:]), names


def test_a_component_with_no_activity_in_any_count_is_dormant():
    plan = _plan(2, resolution=1.0, transform="log1p")
    # model space = log1p(x + 0.5): the first component's typical user has 0 of both counts
    means = np.log1p(np.array([[0.5, 0.5], [10.5, 3.5]]))
    cov = np.stack([np.eye(2) * 0.05] * 2)
    names = generate_names(plan, np.array([0.5, 0.5]), means, cov, "full")
    assert names[0] == DORMANT
    assert names[1].startswith("high"), names


def _generator_profiles() -> tuple[pd.DataFrame, pd.Series]:
    """z-scores (log1p space) of each pure archetype's features against the population, and which
    archetypes show no activity at all, from the generator's own archetype definitions."""
    spec = DemoSpec(n_users=20_000, n_snapshots=1, seed=5, hybrid_share=0, drift_share=0, block_users=20_000)
    feats, truth = next(block_snapshots(spec, 0))
    raw = np.column_stack([feats.column(f).to_numpy().astype(float) for f in FEATURES])
    df = pd.DataFrame(np.log1p(raw), columns=list(FEATURES))
    arch = truth.column("archetype").to_numpy(zero_copy_only=False)
    z = (df.groupby(arch).mean() - df.mean()) / df.std()
    idle = pd.DataFrame(raw, columns=list(FEATURES)).groupby(arch).median().eq(0).all(axis=1)
    return z, idle


@pytest.fixture(scope="module")
def demo_fit(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("naming")
    spec = DemoSpec(n_users=8000, n_snapshots=1, seed=21, block_users=4000)
    write_demo_dataset(tmp / "data", spec)
    model = {"family": "gaussian", "n_components": 5, "random_state": 0, "n_init": 2}  # Gaussian names
    cfg = make_config(tmp, tmp / "data", model=model)
    res = jobs.train(TrainParams(config=str(cfg), publish=True))
    m = pd.read_parquet(res.tables["memberships"], columns=["user_id", "segment", "segment_name"])
    return res, m.merge(read_truth(tmp / "data", spec.dates[0]), on="user_id")


def test_on_the_demo_each_name_leads_with_a_feature_that_defines_its_archetype(demo_fit):
    res, joined = demo_fit
    z, idle = _generator_profiles()
    names = list(res.segments["name"])
    assert all(n and not n.startswith("segment_") for n in names), names
    assert len(set(names)) == len(names)
    by_label = {feature_label(f): f for f in FEATURES}
    majority = joined.groupby("segment_name")["archetype"].agg(lambda s: s.value_counts().index[0])
    assert majority.nunique() == len(majority), f"two segments share an archetype: {majority.to_dict()}"
    for name, archetype in majority.items():
        if idle[archetype]:
            assert name == DORMANT, (name, archetype)
            continue
        lead = TERM.match(name.split(", ")[0].split(" #")[0])
        assert lead, name
        word, label = lead.groups()
        feature = by_label[label]
        top = z.loc[archetype].abs().sort_values(ascending=False).index[:3]
        sign = np.sign(z.loc[archetype, feature])
        why = f"{name!r} is mostly {archetype}, defined by {z.loc[archetype, top].round(2).to_dict()}"
        assert feature in top, why
        assert (sign > 0) == (word in ("high", "very high")), why


def test_configured_names_win(tmp_path):
    spec = DemoSpec(n_users=3000, n_snapshots=1, seed=4, block_users=3000)
    write_demo_dataset(tmp_path / "data", spec)
    given = ["a", "b", "c"]
    cfg = make_config(
        tmp_path, tmp_path / "data", model={"n_components": 3, "random_state": 0, "segment_names": given}
    )
    res = jobs.train(TrainParams(config=str(cfg), publish=True))
    assert sorted(res.segments["name"]) == given
