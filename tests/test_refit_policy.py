"""The daily job keeps the published model while it still explains the data
(``model.refit_min_gain``) and refits when the data moved: unchanged users keep their segment
on quiet days, a shift gets a new model."""

from __future__ import annotations

import shutil

import numpy as np
import pandas as pd
import pytest

from gmm_dask.app import jobs
from gmm_dask.app.params import SegmentParams, TrainParams
from gmm_dask.demo import DemoSpec, read_truth
from gmm_dask.storage.registry import ModelRegistry
from gmm_dask_cli import main

from .pipeline_helpers import demo_data, make_config, read_partition

SPEC = DemoSpec(n_users=6000, n_snapshots=2, seed=11, block_users=3000, row_group_rows=1500)
DATES = SPEC.dates
MODEL = {"n_components": 5, "n_init": 2, "random_state": 0, "tol": 1e-5}  # family: auto


@pytest.fixture(scope="module")
def data_root(tmp_path_factory):
    return demo_data(tmp_path_factory.mktemp("demo"), SPEC)


def _segments(root, date) -> pd.Series:
    t = read_partition(root, "memberships", date).select(["user_id", "segment", "model_version"])
    return t.to_pandas().set_index("user_id")


def test_a_quiet_day_is_scored_with_the_published_model(tmp_path, data_root):
    path = make_config(tmp_path, data_root, model=MODEL)
    first = jobs.train(TrainParams(config=str(path), snapshot=DATES[0]))
    second = jobs.segment(SegmentParams(config=str(path), snapshot=DATES[1]), report=False)
    assert first.model.metadata.family == "behaviour"  # auto on counts and amounts
    assert not second.trained
    assert second.model_version == first.model_version
    assert second.kept is not None
    assert "model.refit_min_gain" in second.kept
    reg = ModelRegistry(str(tmp_path / "out" / "registry"))
    assert reg.versions() == [first.model_version]  # nothing registered for the kept day
    assert reg.resolve("latest") == first.model_version
    mem = _segments(tmp_path / "out", DATES[1])
    assert set(mem["model_version"]) == {first.model_version}
    truth = read_truth(data_root, DATES[1])
    unchanged = truth.loc[~truth["changed"], "user_id"]
    a = _segments(tmp_path / "out", DATES[0]).loc[unchanged, "segment"].to_numpy()
    b = mem.loc[unchanged, "segment"].to_numpy()
    assert (a == b).all()  # same model, same rows: the same segment for every unchanged user


def test_the_cli_says_why_it_kept_the_model(tmp_path, data_root, capsys):
    path = make_config(tmp_path, data_root, model=MODEL)
    assert main(["train", "--config", str(path), "--snapshot", DATES[0]]) == 0
    assert main(["segment", "--config", str(path), "--snapshot", DATES[1]]) == 0
    out = capsys.readouterr().out
    assert "scored with model v0001" in out
    assert "Refit not needed: kept model v0001" in out
    # scored with the kept model: its tables are published, `latest` did not move (it is that model)
    assert f"Model v0001, tables published for {DATES[1]}; `latest` stays v0001." in out
    assert ", published;" not in out.split(f"Snapshot {DATES[1]}")[1]


def test_zero_gain_refits_every_date(tmp_path, data_root):
    path = make_config(tmp_path, data_root, model={**MODEL, "refit_min_gain": 0})
    first = jobs.train(TrainParams(config=str(path), snapshot=DATES[0]))
    second = jobs.segment(SegmentParams(config=str(path), snapshot=DATES[1]), report=False)
    assert second.trained
    assert second.kept is None
    assert second.model_version != first.model_version
    assert second.model.metadata.warm_started_from == first.model_version


def test_a_shifted_snapshot_is_refitted(tmp_path, data_root):
    """Every user buys and spends three times as much: the published model no longer explains
    the data, so the daily job fits a new one (and says the shift was promotion-like)."""
    shifted = tmp_path / "shifted"
    shutil.copytree(data_root / "snapshots" / f"dt={DATES[0]}", shifted / "snapshots" / f"dt={DATES[0]}")
    day2 = pd.read_parquet(data_root / "snapshots" / f"dt={DATES[1]}")
    for col in ("purchases_90d", "spend_90d"):
        day2[col] = day2[col] * 3
    (shifted / "snapshots" / f"dt={DATES[1]}").mkdir(parents=True)
    day2.to_parquet(shifted / "snapshots" / f"dt={DATES[1]}" / "part-0.parquet", index=False)
    path = make_config(tmp_path, shifted, model=MODEL)
    first = jobs.train(TrainParams(config=str(path), snapshot=DATES[0]))
    second = jobs.segment(SegmentParams(config=str(path), snapshot=DATES[1]), report=False)
    assert second.trained
    assert second.kept is None
    assert second.model_version != first.model_version
    drift = second.model.metadata.drift
    assert drift is not None
    assert drift["delta"] > 0.05
    assert np.isfinite(second.model.metadata.log_likelihood)
