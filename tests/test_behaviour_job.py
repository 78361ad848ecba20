"""The warehouse job with ``model.family: behaviour``: it fits the demo's archetypes, scores the
memberships with the family, stores and reloads the model exactly, and warm-starts the next day
keeping segment ids; a combination the family cannot run exits 2 naming the key."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from sklearn.metrics import adjusted_rand_score

from gmm_dask.app import jobs
from gmm_dask.app.params import SegmentParams, TrainParams
from gmm_dask.demo import FEATURE_KINDS, FEATURES, DemoSpec, read_truth
from gmm_dask.storage.registry import load_model
from gmm_dask_cli import main

from .pipeline_helpers import demo_data, gamma_matrix, make_config, read_partition

SPEC = DemoSpec(n_users=10_000, n_snapshots=2, seed=5, block_users=5000, row_group_rows=2500)
DATES = SPEC.dates
# refit_min_gain 0: the second day refits (warm-started) instead of keeping the first day's model
BEHAVIOUR = {
    "family": "behaviour",
    "n_components": 5,
    "n_init": 4,
    "random_state": 0,
    "tol": 1e-6,
    "refit_min_gain": 0,
}
FEATURE_SPECS = [{"name": f, "kind": FEATURE_KINDS[f]} for f in FEATURES]  # no transforms


@pytest.fixture(scope="module")
def data_root(tmp_path_factory):
    return demo_data(tmp_path_factory.mktemp("demo"), SPEC)


@pytest.fixture(scope="module")
def chain(tmp_path_factory, data_root):
    """Train on day 1, then the daily segment job on day 2 (warm-started from day 1)."""
    tmp = tmp_path_factory.mktemp("behaviour")
    path = make_config(tmp, data_root, model=BEHAVIOUR, input={"features": FEATURE_SPECS})
    first = jobs.train(TrainParams(config=str(path), snapshot=DATES[0]))
    second = jobs.segment(SegmentParams(config=str(path), snapshot=DATES[1]), report=False)
    return tmp / "out", first, second


def _memberships(root, date) -> pd.DataFrame:
    mem = read_partition(root, "memberships", date)
    df = mem.select(["user_id", "segment"]).to_pandas()
    df["gamma"] = list(gamma_matrix(mem))
    return df


def test_segments_are_the_archetypes(chain, data_root):
    root, first, _ = chain
    mem = _memberships(root, DATES[0]).merge(read_truth(data_root, DATES[0]), on="user_id")
    stable = mem[mem["kind"] == "stable"]
    ari = adjusted_rand_score(stable["archetype"], stable["segment"])
    assert ari >= 0.85, ari
    model = load_model(str(root / "registry"), first.model_version)
    assert model.behaviour is not None
    assert model.metadata.family == "behaviour"
    assert np.isfinite(model.metadata.bic)


def test_registered_model_round_trips_and_scores_like_the_tables(chain, data_root):
    root, first, _ = chain
    model = load_model(str(root / "registry"), first.model_version)
    again = load_model(str(root / "registry"), first.model_version)
    for name, a in model.behaviour.params.to_arrays().items():
        np.testing.assert_array_equal(a, again.behaviour.params.to_arrays()[name], err_msg=name)
    assert model.behaviour.structure == again.behaviour.structure
    snap = pd.read_parquet(data_root / "snapshots" / f"dt={DATES[0]}")
    scored = model.score(snap)
    mem = _memberships(root, DATES[0]).set_index("user_id").loc[scored["user_id"]]
    np.testing.assert_array_equal(np.stack(scored["gamma"]), np.stack(mem["gamma"]))
    np.testing.assert_array_equal(scored["segment"].to_numpy(), mem["segment"].to_numpy())


def test_next_day_warm_starts_and_keeps_segment_ids(chain, data_root):
    root, first, second = chain
    model = load_model(str(root / "registry"), second.model_version)
    assert model.metadata.warm_started_from == first.model_version
    truth = read_truth(data_root, DATES[1])
    unchanged = truth.loc[~truth["changed"], "user_id"]
    a = _memberships(root, DATES[0]).set_index("user_id").loc[unchanged, "segment"]
    b = _memberships(root, DATES[1]).set_index("user_id").loc[unchanged, "segment"]
    assert (a.to_numpy() == b.to_numpy()).mean() >= 0.95


def test_impute_mean_with_behaviour_exits_2_naming_the_keys(tmp_path, data_root, capsys):
    path = make_config(
        tmp_path, data_root, model=BEHAVIOUR, input={"features": FEATURE_SPECS, "missing": "impute_mean"}
    )
    assert main(["train", "--config", str(path), "--snapshot", DATES[0]]) == 2
    err = capsys.readouterr().err
    assert "model.family: behaviour" in err
    assert "input.missing" in err
    assert not (tmp_path / "out").exists()


def test_a_declared_kind_the_values_cannot_take_is_refused_before_the_fit(tmp_path, data_root):
    from gmm_dask.app import pipeline
    from gmm_dask.app.config import load_config
    from gmm_dask.errors import DataError

    specs = [{**f, "kind": "binary"} if f["name"] == "sessions_30d" else f for f in FEATURE_SPECS]
    cfg = load_config(make_config(tmp_path, data_root, model=BEHAVIOUR, input={"features": specs}))
    snap = pipeline.open_job_snapshot(cfg, DATES[0])
    with pytest.raises(
        DataError, match="feature 'sessions_30d' is declared kind: binary, which needs only 0 and 1"
    ):
        pipeline.profile_snapshot(cfg, snap)
