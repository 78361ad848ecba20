"""Real behavioural data: counts and amounts, mostly exact zeros; the resolution floor,
dequantisation, degenerate components and their policy; the realistic demo generator."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import yaml

from gmm_dask import GaussianMixture
from gmm_dask.app import jobs
from gmm_dask.app.params import TrainParams
from gmm_dask.demo import FEATURES, DemoSpec, read_truth, write_demo_dataset
from gmm_dask.mixture.suffstats import m_step, merge_moments, variance_at_floor
from gmm_dask_cli import main

from .pipeline_helpers import read_partition

# --- the demo generator -------------------------------------------------------------------------


@pytest.fixture(scope="module")
def demo(tmp_path_factory):
    spec = DemoSpec(n_users=8000, n_snapshots=3, seed=21, block_users=3000)
    root = tmp_path_factory.mktemp("demo9")
    write_demo_dataset(root, spec)
    return root, spec


def test_demo_is_counts_and_amounts_mostly_zero_with_ground_truth_beside_it(demo):
    root, spec = demo
    d = spec.dates[0]
    snap = pd.read_parquet(root / "snapshots" / f"dt={d}")
    truth = read_truth(root, d)
    assert list(snap.columns) == ["user_id", *FEATURES]
    for f in ("sessions_30d", "active_days_30d", "items_created_30d", "purchases_90d"):
        assert pd.api.types.is_integer_dtype(snap[f].dtype), f
    zero = (snap[list(FEATURES)] == 0).mean()
    assert 0.5 <= zero["purchases_90d"] <= 0.85
    assert zero["items_created_30d"] >= 0.5
    assert ((snap.spend_90d == 0) == (snap.purchases_90d == 0)).all()
    ghosts = snap[truth.archetype == "Ghosts"]
    assert (ghosts[list(FEATURES)] == 0).all(axis=1).mean() > 0.5  # ghosts: no activity at all
    spend = snap.spend_90d[snap.spend_90d > 0]
    assert spend.max() > 10 * spend.median()  # heavy tail
    assert set(truth.columns) >= {
        "user_id",
        "archetype",
        "kind",
        "archetype_a",
        "archetype_b",
        "share_a",
        "changed",
    }
    hybrids = truth[truth.kind == "hybrid"]
    assert hybrids.share_a.between(0.3, 0.7).all()
    assert (hybrids.archetype_a != hybrids.archetype_b).all()
    # the job never reads the truth: it lives outside the snapshots
    assert not any((root / "snapshots").rglob("*truth*"))


def test_demo_is_deterministic_and_keeps_unchanged_users_identical(demo, tmp_path):
    root, spec = demo
    write_demo_dataset(tmp_path, spec)
    for d in spec.dates:
        a = pd.read_parquet(root / "snapshots" / f"dt={d}")
        b = pd.read_parquet(tmp_path / "snapshots" / f"dt={d}")
        pd.testing.assert_frame_equal(a, b)
    d0, d1 = spec.dates[:2]
    x0 = pd.read_parquet(root / "snapshots" / f"dt={d0}").set_index("user_id")
    x1 = pd.read_parquet(root / "snapshots" / f"dt={d1}").set_index("user_id")
    changed = read_truth(root, d1).set_index("user_id").changed
    same = (x0 == x1).all(axis=1)
    assert (same == ~changed).all()
    assert 0.15 < changed.mean() < 0.6
    # a drifter's window moves on every day its blend moves (each drifter starts on its own day)
    t0, t1 = read_truth(root, d0).set_index("user_id"), read_truth(root, d1).set_index("user_id")
    moving = t1.index[(t1.kind == "drifter") & (t1.share_a != t0.share_a)]
    assert len(moving) > 20
    assert changed.loc[moving].mean() >= 0.99  # a redraw can repeat a ghost's all-zero features


# --- the engine: per-feature regularisation and the variance floor ------------------------------


def test_a_reg_covar_vector_of_equal_values_equals_the_scalar():
    rng = np.random.default_rng(0)
    X = np.vstack([rng.normal(size=(300, 3)), rng.normal(5, 1, size=(300, 3))])
    a = GaussianMixture(2, reg_covar=1e-2, random_state=0).fit(X)
    b = GaussianMixture(2, reg_covar=np.full(3, 1e-2), random_state=0).fit(X)
    np.testing.assert_array_equal(a.covariances_, b.covariances_)
    c = GaussianMixture(2, covariance_type="diag", reg_covar=np.array([0.0, 0.5, 2.0]), random_state=0).fit(X)
    d = GaussianMixture(2, covariance_type="diag", reg_covar=0.0, random_state=0).fit(X)
    # same responsibilities at the start; the vector is added per feature in every M-step
    assert (c.covariances_[:, 2] > d.covariances_[:, 2] + 1.5).all()
    with pytest.raises(ValueError, match="reg_covar"):
        GaussianMixture(2, reg_covar=np.array([1.0, -1.0, 0.0])).fit(X)
    with pytest.raises(ValueError, match=r"shape \(3,\)"):
        GaussianMixture(2, reg_covar=np.ones(2)).fit(X)


@pytest.mark.parametrize("ct", ["full", "tied", "diag", "spherical"])
def test_m_step_raises_variances_to_the_floor_and_says_which(ct):
    from gmm_dask.mixture.suffstats import SuffStats

    rng = np.random.default_rng(1)
    k, d = 3, 2
    X = rng.normal(size=(40, d)) * np.array([1.0, 1e-4])  # feature 1 nearly constant
    nk = np.full(k, 40.0)
    means = np.tile(X.mean(axis=0), (k, 1))
    m2 = np.stack([(X - means[0]).T @ (X - means[0])] * k)
    stats = SuffStats(
        nk, means, m2 if ct in ("full", "tied") else np.stack([np.diag(m) for m in m2]), 0.0, 120.0, 120, 0, -1,
        np.zeros(0), np.zeros((0, d)), np.zeros(0, int),
    )  # fmt: skip
    floor = np.full((k, d), 0.01)
    _, _, cov = m_step(stats, ct, 1e-6, lambda m: floor)
    at = variance_at_floor(cov, ct, 1e-6, floor)
    if ct in ("full", "diag"):
        var = np.diagonal(cov, axis1=1, axis2=2) if ct == "full" else cov
        np.testing.assert_allclose(var[:, 1], 0.01 + 1e-6)
        assert at[:, 1].all()
        assert not at[:, 0].any()
    else:
        assert np.all(cov >= 0.01) if ct == "spherical" else np.diag(cov)[1] >= 0.01
    _ = merge_moments


# --- the pipeline on data with 80 % exact zeros ----------------------------------------------


def _zeros_job(tmp: Path, n=6000, seed=0, **model) -> Path:
    rng = np.random.default_rng(seed)
    active = rng.random(n) < 0.2
    df = pd.DataFrame(
        {
            "user_id": np.arange(n),
            "purchases": np.where(active, 1 + rng.poisson(3, n), 0),
            "spend": np.where(active, np.round(rng.lognormal(3, 0.6, n), 2), 0.0),
            "sessions": np.where(rng.random(n) < 0.2, 0, rng.poisson(np.exp(rng.normal(2, 0.5, n)))),
        }
    )
    part = tmp / "data" / "dt=2026-03-01"
    part.mkdir(parents=True)
    df.to_parquet(part / "part-0.parquet", index=False)
    cfg = {
        "input": {
            "path": str(tmp / "data"),
            "id_column": "user_id",
            "features": [{"name": f, "transform": "log1p"} for f in ("purchases", "spend", "sessions")],
        },
        # the Gaussian family's floors and atoms are what these tests are about
        "model": {
            "family": "gaussian",
            "n_components": 4,
            "random_state": 0,
            "max_iter": 200,
            "tol": 1e-4,
            **model,
        },
        "output": {"root": str(tmp / "out")},
        "cluster": {"type": "local", "n_workers": 1, "processes": False},
    }
    path = tmp / "job.yaml"
    path.write_text(yaml.safe_dump(cfg))
    return path


def test_on_80_percent_zeros_no_unreported_atoms_and_no_segment_below_min_share(tmp_path):
    from gmm_dask import load_model

    path = _zeros_job(
        tmp_path, n_components=7, degenerate={"min_share": 0.05, "small": "prune", "atoms": "warn"}
    )
    res = jobs.train(TrainParams(config=str(path)))
    model = load_model(str(tmp_path / "out" / "registry"), res.model_version)
    assert model.plan.kinds == ("count", "amount", "count")  # inferred
    # every component at the floor in some feature is reported as an atom, and only those
    at = variance_at_floor(model.covariances, "full", 1e-6, model.plan.variance_floor(model.means))
    reported = model.metadata.degenerate["components"]
    for i, name in enumerate(model.segment_names):
        assert bool(at[i].any()) == ("atom" in (reported.get(name) or "")), (name, at[i], reported)
    seg = read_partition(tmp_path / "out", "segments", res.snapshot).to_pandas()
    assert (seg["size"] >= 0.05 * seg["size"].sum()).all()
    assert model.n_components < 7  # the tiny components were pruned and the model refitted
    assert model.metadata.degenerate["pruned"]
    for name, why in reported.items():
        assert seg.set_index("name").loc[name, "degenerate"] == why
    # the floor keeps memberships soft: not everyone is certain
    mem = read_partition(tmp_path / "out", "memberships", res.snapshot).to_pandas()
    assert (mem.entropy_band != "low").mean() > 0.01


def test_degenerate_policy_error_names_the_component_and_the_key(tmp_path, capsys):
    path = _zeros_job(tmp_path, n_components=7, degenerate={"min_share": 0.05, "small": "error"})
    assert main(["train", "--config", str(path)]) == 2
    err = capsys.readouterr().err
    assert "model.degenerate.small is 'error'" in err
    assert "small:" in err
    assert not (tmp_path / "out" / "memberships").exists()


@pytest.mark.parametrize(
    ("feature", "model", "needle"),
    [
        ({"resolution": -1}, {}, "input.features.0.resolution"),
        ({"kind": "money"}, {}, "input.features.0.kind"),
        ({}, {"degenerate": {"min_share": 0}}, "model.degenerate.min_share"),
        ({}, {"degenerate": {"min_share": 1.5}}, "model.degenerate.min_share"),
        ({}, {"degenerate": {"small": "ignore"}}, "model.degenerate.small"),
    ],
)
def test_bad_values_of_the_new_keys_exit_2_naming_the_key(tmp_path, capsys, feature, model, needle):
    path = _zeros_job(tmp_path)
    cfg = yaml.safe_load(path.read_text())
    cfg["input"]["features"][0].update(feature)
    cfg["model"].update(model)
    path.write_text(yaml.safe_dump(cfg))
    assert main(["train", "--config", str(path)]) == 2
    assert needle in capsys.readouterr().err
    assert not (tmp_path / "out").exists()


def test_scoring_places_counts_mid_step_the_same_in_the_job_and_the_public_api(tmp_path):
    from gmm_dask import load_model

    path = _zeros_job(tmp_path)
    res = jobs.train(TrainParams(config=str(path)))
    model = load_model(str(tmp_path / "out" / "registry"), res.model_version)
    raw = pd.read_parquet(tmp_path / "data" / "dt=2026-03-01")
    mem = read_partition(tmp_path / "out", "memberships", res.snapshot).to_pandas()
    scored = model.score(raw)
    np.testing.assert_allclose(np.stack(scored.gamma), np.stack(mem.gamma), atol=1e-12)
