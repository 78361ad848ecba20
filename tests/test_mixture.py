"""GaussianMixture end to end: agreement with scikit-learn, invariances, recovery, schedulers."""

from __future__ import annotations

import warnings

import dask.array as da
import dask.dataframe as dd
import numpy as np
import pandas as pd
import pytest
from sklearn.datasets import load_breast_cancer, load_iris, load_wine
from sklearn.metrics import adjusted_rand_score
from sklearn.mixture import GaussianMixture as SkGaussianMixture
from sklearn.preprocessing import StandardScaler

from gmm_dask import ComponentCollapseWarning, ConvergenceWarning, GaussianMixture
from gmm_dask.mixture.options import COVARIANCE_TYPES, DEFAULT_INIT_METHOD, INIT_METHODS

from .conftest import assert_rel, blobs

pytestmark = [
    pytest.mark.filterwarnings("ignore::gmm_dask.ConvergenceWarning"),
    pytest.mark.filterwarnings("ignore::sklearn.exceptions.ConvergenceWarning"),
]


def _uneven_chunks(n, n_chunks, seed=0):
    rng = np.random.default_rng(seed)
    cuts = np.sort(rng.choice(np.arange(1, n), size=n_chunks - 1, replace=False))
    return tuple(int(c) for c in np.diff(np.concatenate([[0], cuts, [n]])))


def _datasets():
    out = {}
    for loader in (load_iris, load_wine, load_breast_cancer):
        out[loader.__name__[5:]] = StandardScaler().fit_transform(loader().data)
    out["blobs"] = blobs(2000, k=3, d=5, sep=3.0, seed=7)[0]
    return out


DATASETS = _datasets()


def _sklearn_init(X, k, ct, seed=0):
    """An identical starting point for both libraries: a short scikit-learn k-means fit."""
    sk0 = SkGaussianMixture(k, covariance_type=ct, random_state=seed, max_iter=2).fit(X)
    return {
        "weights_init": sk0.weights_,
        "means_init": sk0.means_,
        "precisions_init": sk0.precisions_,
    }


@pytest.mark.parametrize("ct", COVARIANCE_TYPES)
@pytest.mark.parametrize("name", list(DATASETS))
def test_agrees_with_sklearn_given_same_init(name, ct):
    X = DATASETS[name]
    k = 3
    init = _sklearn_init(X, k, ct)
    sk = SkGaussianMixture(k, covariance_type=ct, tol=0, max_iter=25, **init).fit(X)
    Xd = da.from_array(X, chunks=(_uneven_chunks(len(X), 11), -1))
    ours = GaussianMixture(k, covariance_type=ct, tol=0, max_iter=25, **init).fit(Xd)
    assert ours.n_iter_ == sk.n_iter_ == 25
    for attr in ("weights_", "means_", "covariances_", "precisions_", "precisions_cholesky_"):
        assert_rel(getattr(ours, attr), getattr(sk, attr), 1e-8, attr)
    assert ours.lower_bound_ == pytest.approx(sk.lower_bound_, rel=1e-8)
    assert_rel(ours.predict_proba(X), sk.predict_proba(X), 1e-8, "predict_proba")
    assert_rel(ours.score_samples(X), sk.score_samples(X), 1e-8, "score_samples")
    assert ours.bic(X) == pytest.approx(sk.bic(X), rel=1e-8)
    assert ours.aic(X) == pytest.approx(sk.aic(X), rel=1e-8)
    np.testing.assert_array_equal(ours.predict(X), sk.predict(X))


@pytest.mark.parametrize("ct", COVARIANCE_TYPES)
def test_one_chunk_equals_37_uneven_chunks(ct):
    X = DATASETS["blobs"]
    init = _sklearn_init(X, 3, ct)
    one = GaussianMixture(3, covariance_type=ct, tol=0, max_iter=15, **init).fit(
        da.from_array(X, chunks=(len(X), -1))
    )
    many = GaussianMixture(3, covariance_type=ct, tol=0, max_iter=15, **init).fit(
        da.from_array(X, chunks=(_uneven_chunks(len(X), 37, seed=3), -1))
    )
    for attr in ("weights_", "means_", "covariances_"):
        assert_rel(getattr(many, attr), getattr(one, attr), 1e-9, attr)
    assert many.lower_bound_ == pytest.approx(one.lower_bound_, rel=1e-9)


@pytest.mark.parametrize("ct", COVARIANCE_TYPES)
def test_weight_two_equals_duplicated_row(ct):
    X = DATASETS["wine"]
    init = _sklearn_init(X, 3, ct)
    dup_rows = [0, 5, 17, 100]
    w = np.ones(len(X))
    w[dup_rows] = 2.0
    weighted = GaussianMixture(3, covariance_type=ct, tol=0, max_iter=10, **init).fit(X, sample_weight=w)
    duplicated = GaussianMixture(3, covariance_type=ct, tol=0, max_iter=10, **init).fit(
        np.concatenate([X, X[dup_rows]])
    )
    for attr in ("weights_", "means_", "covariances_"):
        assert_rel(getattr(weighted, attr), getattr(duplicated, attr), 1e-10, attr)
    assert weighted.lower_bound_ == pytest.approx(duplicated.lower_bound_, rel=1e-12)


@pytest.mark.parametrize("ct", COVARIANCE_TYPES)
def test_log_likelihood_never_decreases(ct):
    X = blobs(1500, k=5, d=4, sep=2.0, seed=11)[0]  # overlapping: many iterations
    gm = GaussianMixture(5, covariance_type=ct, tol=0, max_iter=60, init_params="random", random_state=0)
    gm.fit(da.from_array(X, chunks=(_uneven_chunks(len(X), 9), -1)))
    lb = np.asarray(gm.lower_bounds_)
    assert len(lb) == 60
    assert np.all(np.diff(lb) >= -1e-12 * np.abs(lb[1:])), np.diff(lb).min()
    assert lb[-1] > lb[0]


@pytest.mark.parametrize("init", INIT_METHODS)
def test_recovers_known_mixture_from_each_init(init):
    X, labels, means = blobs(4000, k=4, d=3, sep=8.0, seed=0)
    gm = GaussianMixture(4, init_params=init, random_state=1, tol=1e-6, max_iter=500)
    gm.fit(da.from_array(X, chunks=(700, -1)))
    assert adjusted_rand_score(labels, gm.predict(X)) >= 0.95
    # each true mean is matched by a fitted one
    dist = np.linalg.norm(means[:, None, :] - gm.means_[None, :, :], axis=2)
    assert dist.min(axis=1).max() < 0.2
    true_weights = np.bincount(labels) / len(labels)
    np.testing.assert_allclose(np.sort(gm.weights_), np.sort(true_weights), atol=0.01)


def test_init_does_not_depend_on_partitioning():
    X = blobs(3000, seed=5)[0]
    a = GaussianMixture(4, random_state=3, max_iter=0).fit(da.from_array(X, chunks=(3000, -1)))
    b = GaussianMixture(4, random_state=3, max_iter=0).fit(
        da.from_array(X, chunks=(_uneven_chunks(3000, 13), -1))
    )
    assert_rel(a.means_, b.means_, 1e-10, "initial means")


def test_offset_by_1e6_fits_like_centred_data():
    X = blobs(3000, k=3, d=4, sep=6.0, seed=2)[0]
    centred = GaussianMixture(3, random_state=0).fit(X)
    shifted = GaussianMixture(3, random_state=0).fit(da.from_array(X + 1e6, chunks=(400, -1)))
    assert_rel(shifted.covariances_, centred.covariances_, 1e-8, "covariances")
    assert_rel(shifted.means_ - 1e6, centred.means_, 1e-8, "means")
    assert shifted.lower_bound_ == pytest.approx(centred.lower_bound_, rel=1e-10)
    np.testing.assert_allclose(shifted.predict_proba(X + 1e6), centred.predict_proba(X), atol=1e-8)


def test_same_result_on_threads_and_local_cluster(dask_cluster):
    from distributed import Client

    from gmm_dask.mixture.runner import DistributedRunner, make_runner
    from gmm_dask.mixture.validation import to_chunked

    X = blobs(3000, seed=9)[0]
    Xd = da.from_array(X, chunks=(_uneven_chunks(3000, 10), -1))
    w = np.random.default_rng(0).uniform(0.5, 2.0, 3000)
    with Client(dask_cluster) as client:
        assert isinstance(make_runner(to_chunked(X)), DistributedRunner)
        dist = GaussianMixture(4, random_state=4, tol=0, max_iter=20).fit(Xd, sample_weight=w)
        assert len(client.scheduler_info()["workers"]) == 2
    threads = GaussianMixture(4, random_state=4, tol=0, max_iter=20).fit(Xd, sample_weight=w)
    for attr in ("weights_", "means_", "covariances_"):
        assert_rel(getattr(dist, attr), getattr(threads, attr), 1e-12, attr)
    assert dist.lower_bound_ == pytest.approx(threads.lower_bound_, rel=1e-13)


def test_dask_input_gives_lazy_output_with_same_chunks():
    X = blobs(1000, seed=1)[0]
    gm = GaussianMixture(4, random_state=0).fit(X)
    Xd = da.from_array(X, chunks=(_uneven_chunks(1000, 6), -1))
    proba = gm.predict_proba(Xd)
    assert isinstance(proba, da.Array)
    assert proba.chunks == (Xd.chunks[0], (4,))
    for method in ("predict", "score_samples", "entropy"):
        out = getattr(gm, method)(Xd)
        assert isinstance(out, da.Array)
        assert out.chunks == (Xd.chunks[0],)
        np.testing.assert_allclose(out.compute(), getattr(gm, method)(X))
    np.testing.assert_allclose(proba.compute(), gm.predict_proba(X))
    assert isinstance(gm.predict_proba(X), np.ndarray)


def test_entropy_is_minus_sum_gamma_log2_gamma():
    X = blobs(800, k=3, sep=2.0, seed=3)[0]
    gm = GaussianMixture(3, random_state=0).fit(X)
    g = gm.predict_proba(X)
    with np.errstate(divide="ignore", invalid="ignore"):
        want = -np.nansum(np.where(g > 0, g * np.log2(g), 0.0), axis=1)
    np.testing.assert_allclose(gm.entropy(X), want, atol=1e-12)
    assert np.all(gm.entropy(X) <= np.log2(3) + 1e-12)


def test_dataframe_inputs_record_feature_names():
    X = blobs(900, k=3, d=3, seed=4)[0]
    pdf = pd.DataFrame(X, columns=["sessions", "spend", "days"])
    gm = GaussianMixture(3, random_state=0).fit(pdf)
    assert list(gm.feature_names_in_) == ["sessions", "spend", "days"]
    ddf = dd.from_pandas(pdf, npartitions=4)
    gm2 = GaussianMixture(3, random_state=0).fit(ddf)
    assert_rel(gm2.means_, gm.means_, 1e-10, "means from dask dataframe")
    # columns in another order are matched by name
    np.testing.assert_allclose(gm.predict_proba(pdf[["days", "sessions", "spend"]]), gm.predict_proba(pdf))


def test_collapsed_component_is_reseeded_not_nan():
    X = blobs(600, k=2, d=2, sep=6.0, seed=8)[0]
    means_init = np.array([X[:300].mean(0), X[300:].mean(0), [1e4, 1e4]])  # third is far away
    gm = GaussianMixture(3, means_init=means_init, max_iter=30, random_state=0)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        gm.fit(X)
    collapse = [w for w in caught if issubclass(w.category, ComponentCollapseWarning)]
    msgs = [str(w.message) for w in collapse]
    assert msgs
    assert "Component(s) [2] collapsed at EM iteration 1" in msgs[0]
    assert collapse[0].filename == __file__  # the warning points at the user's call to fit
    assert gm.reseeded_components_[0] == (1, 2)
    for attr in ("weights_", "means_", "covariances_"):
        assert np.all(np.isfinite(getattr(gm, attr)))
    assert np.all(np.isfinite(gm.predict_proba(X)))


def test_warm_start_continues_and_n_init_keeps_best():
    X = blobs(1500, k=4, sep=3.0, seed=12)[0]
    gm = GaussianMixture(4, random_state=0, max_iter=3, warm_start=True, tol=0)
    gm.fit(X)
    first = list(gm.lower_bounds_)
    gm.fit(X)
    assert gm.lower_bounds_[0] >= first[-1] - 1e-12
    cold = GaussianMixture(4, random_state=0, max_iter=6, tol=0).fit(X)
    assert gm.lower_bound_ == pytest.approx(cold.lower_bound_, rel=1e-10)
    runs = [
        GaussianMixture(4, init_params="random_from_data", random_state=s, max_iter=50).fit(X)
        for s in range(3)
    ]
    multi = GaussianMixture(4, init_params="random_from_data", random_state=0, n_init=3, max_iter=50).fit(X)
    assert multi.lower_bound_ >= max(r.lower_bound_ for r in runs) - 0.05


def test_callback_reports_every_iteration():
    X = blobs(500, seed=2)[0]
    seen = []
    gm = GaussianMixture(4, random_state=0, tol=0, max_iter=7, callback=seen.append).fit(X)
    assert [i.n_iter for i in seen] == list(range(1, 8))
    assert [i.lower_bound for i in seen] == gm.lower_bounds_


def test_convergence_warning_when_max_iter_reached():
    X = blobs(300, seed=2)[0]
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        GaussianMixture(4, random_state=0, tol=0, max_iter=2).fit(X)
    assert any(
        issubclass(w.category, ConvergenceWarning) and "did not converge" in str(w.message) for w in caught
    )


def test_streaming_fit_equals_persisted_fit():
    X = blobs(2000, seed=6)[0]
    Xd = da.from_array(X, chunks=(300, -1))
    a = GaussianMixture(4, random_state=0, tol=0, max_iter=10).fit(Xd)
    b = GaussianMixture(4, random_state=0, tol=0, max_iter=10, persist=False).fit(Xd)
    assert_rel(b.means_, a.means_, 1e-13, "means")


@pytest.mark.parametrize("ct", ["full", "diag"])
def test_fit_mixture_on_a_runner_gives_the_facades_fit(ct):
    import math

    from gmm_dask.mixture.em import fit_mixture, seed_from
    from gmm_dask.mixture.gaussian import n_parameters
    from gmm_dask.mixture.runner import make_runner
    from gmm_dask.mixture.validation import to_chunked, validate_values

    X = blobs(1200, k=3, d=3, sep=4.0, seed=6)[0]
    w = np.random.default_rng(1).uniform(0.5, 2.0, len(X))
    kw = {"covariance_type": ct, "tol": 1e-4, "reg_covar": 1e-6, "max_iter": 30, "n_init": 2}
    gm = GaussianMixture(3, random_state=5, warm_start=True, **kw).fit(X, sample_weight=w)
    runner = make_runner(to_chunked(X, w))
    try:
        report = validate_values(runner, None)
        core = {
            "n_components": 3,
            "init_params": DEFAULT_INIT_METHOD,
            "data_variance": report.mean_variance,
            **kw,
        }
        res = fit_mixture(runner, seed=seed_from(5), **core)
        for attr, got in [
            ("weights_", res.params.weights),
            ("means_", res.params.means),
            ("covariances_", res.params.covariances),
            ("precisions_cholesky_", res.params.precisions_cholesky),
        ]:
            np.testing.assert_array_equal(got, getattr(gm, attr), err_msg=attr)
        assert (res.converged, res.n_iter, res.lower_bound) == (gm.converged_, gm.n_iter_, gm.lower_bound_)
        assert res.lower_bounds == gm.lower_bounds_
        assert res.reseeded == gm.reseeded_components_
        assert res.final_loglik / res.weight == gm.final_log_likelihood_
        assert res.n_rows == len(X)
        assert res.weight == pytest.approx(w.sum(), rel=1e-13)
        p = n_parameters(3, 3, ct)
        assert -2 * res.final_loglik + p * math.log(res.weight) == pytest.approx(gm.bic_fit(), rel=1e-12)
        assert -2 * res.final_loglik + 2 * p == pytest.approx(gm.aic_fit(), rel=1e-12)
        # a warm start from the result: one run from exactly these parameters, as a second fit
        warm = fit_mixture(runner, seed=0, init=res.params, prev_lower_bound=res.lower_bound, **core)
    finally:
        runner.close()
    gm.fit(X, sample_weight=w)
    np.testing.assert_array_equal(warm.params.means, gm.means_)
    np.testing.assert_array_equal(warm.params.covariances, gm.covariances_)
    assert warm.lower_bounds == gm.lower_bounds_
