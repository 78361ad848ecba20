"""k-means-sample: a bounded number of passes, the same centres whatever the partitioning, the
sample's weights respected, and the name accepted wherever an initialisation is chosen."""

from __future__ import annotations

import textwrap

import dask.array as da
import numpy as np
import pytest

from gmm_dask.app.config import load_config
from gmm_dask.errors import ConfigError
from gmm_dask.mixture import init
from gmm_dask.mixture.em import fit_mixture
from gmm_dask.mixture.options import DEFAULT_INIT_METHOD, INIT_METHODS
from gmm_dask.mixture.runner import make_runner
from gmm_dask.mixture.validation import to_chunked, validate_values

from .conftest import assert_rel, blobs
from .test_mixture import _uneven_chunks


def _init(X, chunks, k, w=None, seed=0):
    """(initial params, passes it took) of k-means-sample on X split into ``chunks``."""
    Xd = da.from_array(X, chunks=(chunks, -1))
    wd = None if w is None else da.from_array(w, chunks=(chunks,))
    runner = make_runner(to_chunked(Xd, wd))
    try:
        report = validate_values(runner, None)
        p0 = runner.passes
        params = init.initialize(
            runner, "k-means-sample", k, "full", 1e-6, seed, data_variance=report.mean_variance
        )
        return params, runner.passes - p0
    finally:
        runner.close()


@pytest.fixture
def small_sample(monkeypatch):
    """A sample of ~400 rows, so the data below are larger than it (a real draw, not all rows)."""
    monkeypatch.setattr(init, "SAMPLE_ROWS", 400)
    monkeypatch.setattr(init, "SAMPLE_ROWS_PER_COMPONENT", 10)


def test_at_most_six_passes_on_many_partitions_where_k_means_parallel_needs_more(small_sample):
    X = blobs(6000, k=6, d=5, sep=1.0, seed=3)[0]  # overlapping: Lloyd on the data keeps moving
    chunks = _uneven_chunks(len(X), 9, seed=1)
    _, passes = _init(X, chunks, 6)
    assert passes <= 6
    runner = make_runner(to_chunked(da.from_array(X, chunks=(chunks, -1))))
    try:
        report = validate_values(runner, None)
        kw = {"covariance_type": "full", "tol": 1e-3, "reg_covar": 1e-6, "max_iter": 5, "n_init": 1}
        core = {"n_components": 6, "seed": 0, "data_variance": report.mean_variance, **kw}
        new = fit_mixture(runner, init_params="k-means-sample", **core)
        old = fit_mixture(runner, init_params="k-means||", **core)
    finally:
        runner.close()
    assert new.init_passes <= 6 < old.init_passes  # as a job's fit record counts them


def test_same_centres_whatever_the_partitioning(small_sample):
    X = blobs(5000, k=4, d=3, sep=3.0, seed=5)[0]
    w = np.random.default_rng(2).uniform(0.2, 3.0, len(X))
    one, _ = _init(X, (len(X),), 4, w)
    many, _ = _init(X, _uneven_chunks(len(X), 13, seed=4), 4, w)
    assert_rel(many.means, one.means, 1e-10, "initial means")
    assert_rel(many.covariances, one.covariances, 1e-10, "initial covariances")


def test_weight_zero_rows_get_no_centre(small_sample):
    means = np.array([[0.0, 0.0], [20.0, 0.0], [0.0, 20.0]])
    labels = np.random.default_rng(7).integers(0, 3, 6000)
    X = means[labels] + np.random.default_rng(8).normal(size=(6000, 2))
    w = np.where(labels == 2, 0.0, 1.0)
    params, _ = _init(X, _uneven_chunks(len(X), 7), 2, w)
    # the two centres sit on the two clusters of positive weight, none on the weightless one
    dist = np.linalg.norm(params.means[:, None, :] - means[None, :, :], axis=2)
    assert dist[:, :2].min(axis=0).max() < 0.5
    assert dist[:, 2].min() > 10.0


def test_the_sample_weighs_rows_like_duplicates():
    """300 rows weighted 10 are drawn like 3,000 rows: they hold ~3/4 of the sample's weight
    (not 300/1,300), the weight-0 rows none, and the weights add up to the data's."""
    rng = np.random.default_rng(0)
    X = rng.normal(size=(2000, 2))
    w = np.concatenate([np.ones(1000), np.full(300, 10.0), np.zeros(700)])
    Xd, wd = da.from_array(X, chunks=(300, -1)), da.from_array(w, chunks=(300,))
    runner = make_runner(to_chunked(Xd, wd))
    try:
        index, rows, weights = init.poisson_sample(runner, 1000, seed=4)
    finally:
        runner.close()
    np.testing.assert_array_equal(rows, X[index])
    assert not np.any(index >= 1300)  # weight 0: never drawn
    heavy = (index >= 1000) & (index < 1300)
    # p = min(1, 1000·w/4000): every heavy row (weight 10 each), a light one with p 1/4 (weight 4)
    assert heavy.sum() == 300
    np.testing.assert_array_equal(weights[heavy], 10.0)
    np.testing.assert_array_equal(weights[~heavy], 4.0)
    assert weights[heavy].sum() / weights.sum() == pytest.approx(0.75, abs=0.04)  # sd ≈ 0.008


def test_the_name_is_accepted_by_the_config_and_listed_when_wrong(tmp_path):
    job = textwrap.dedent("""\
        input: {path: data, id_column: user_id, features: [a, b]}
        output: {root: out}
        model: {init_params: k-means-sample}
        """)
    (tmp_path / "ok.yaml").write_text(job)
    assert load_config(tmp_path / "ok.yaml").model.init_params == "k-means-sample"
    (tmp_path / "bad.yaml").write_text(job.replace("k-means-sample", "kmeans-sample"))
    with pytest.raises(ConfigError, match=r"model\.init_params") as e:
        load_config(tmp_path / "bad.yaml")
    assert "k-means-sample" in str(e.value)
    assert "k-means-sample" in INIT_METHODS
    assert DEFAULT_INIT_METHOD in INIT_METHODS
