"""The pure density functions against independent references (scipy, direct formulas)."""

import numpy as np
import pytest
from scipy import stats

from gmm_dask.errors import FitError
from gmm_dask.mixture import gaussian
from gmm_dask.mixture.options import COVARIANCE_TYPES


def _random_params(ct, k=3, d=4, seed=0):
    rng = np.random.default_rng(seed)
    means = rng.normal(size=(k, d))
    a = rng.normal(size=(k, d, d))
    full = a @ a.transpose(0, 2, 1) + d * np.eye(d)
    cov = {
        "full": full,
        "tied": full[0],
        "diag": rng.uniform(0.5, 2, size=(k, d)),
        "spherical": rng.uniform(0.5, 2, size=k),
    }[ct]
    return means, cov


def _dense_cov(cov, ct, k, d):
    if ct == "full":
        return cov
    if ct == "tied":
        return np.broadcast_to(cov, (k, d, d))
    if ct == "diag":
        return np.stack([np.diag(c) for c in cov])
    return np.stack([np.eye(d) * c for c in cov])


@pytest.mark.parametrize("ct", COVARIANCE_TYPES)
def test_log_prob_matches_scipy(ct):
    k, d = 3, 4
    means, cov = _random_params(ct, k, d)
    X = np.random.default_rng(1).normal(size=(50, d)) * 2
    weights = np.array([0.2, 0.3, 0.5])
    pc = gaussian.compute_precision_cholesky(cov, ct)
    got = gaussian.estimate_weighted_log_prob(X, weights, means, pc, ct)
    dense = _dense_cov(cov, ct, k, d)
    want = np.stack(
        [np.log(weights[j]) + stats.multivariate_normal(means[j], dense[j]).logpdf(X) for j in range(k)],
        axis=1,
    )
    np.testing.assert_allclose(got, want, rtol=1e-12)


@pytest.mark.parametrize("ct", COVARIANCE_TYPES)
def test_log_prob_is_offset_invariant(ct):
    """Data and means moved by 1e6 give the same densities (differences formed around a shift)."""
    means, cov = _random_params(ct)
    X = np.random.default_rng(2).normal(size=(30, 4))
    w = np.full(3, 1 / 3)
    pc = gaussian.compute_precision_cholesky(cov, ct)
    a = gaussian.estimate_weighted_log_prob(X, w, means, pc, ct)
    b = gaussian.estimate_weighted_log_prob(X + 1e6, w, means + 1e6, pc, ct)
    np.testing.assert_allclose(a, b, rtol=1e-9)


@pytest.mark.parametrize("ct", COVARIANCE_TYPES)
def test_precision_round_trip(ct):
    _means, cov = _random_params(ct)
    pc = gaussian.compute_precision_cholesky(cov, ct)
    prec = gaussian.precisions_from_cholesky(pc, ct)
    pc2 = gaussian.precision_cholesky_from_precisions(prec, ct)
    np.testing.assert_allclose(gaussian.precisions_from_cholesky(pc2, ct), prec, rtol=1e-10)
    np.testing.assert_allclose(gaussian.covariances_from_cholesky(pc, ct), cov, rtol=1e-10)


def test_singular_covariance_is_one_clear_error():
    cov = np.zeros((2, 3, 3))
    cov[0] = np.eye(3)
    with pytest.raises(FitError, match=r"component 1.*increase reg_covar \(now 1e-06\).*scale the input"):
        gaussian.compute_precision_cholesky(cov, "full", reg_covar=1e-6)


def test_entropy_from_log_resp_handles_zero_probabilities():
    with np.errstate(divide="ignore"):
        log_resp = np.log(np.array([[1.0, 0.0, 0.0], [0.5, 0.5, 0.0], [1 / 3, 1 / 3, 1 / 3]]))
    np.testing.assert_allclose(gaussian.entropy_bits(log_resp), [0.0, 1.0, np.log2(3)], atol=1e-15)


def test_logsumexp_extremes():
    a = np.array([[-1e4, -1e4 - 1.0], [-np.inf, -np.inf], [0.0, -np.inf]])
    got = gaussian.logsumexp_rows(a)
    np.testing.assert_allclose(got[0], -1e4 + np.log1p(np.exp(-1.0)), rtol=1e-15)
    assert got[1] == -np.inf
    assert got[2] == 0.0


@pytest.mark.parametrize("ct", COVARIANCE_TYPES)
@pytest.mark.parametrize(("k", "d"), [(1, 1), (3, 4), (8, 16)])
def test_n_parameters_equals_sklearn(ct, k, d):
    from sklearn.mixture import GaussianMixture as SkGaussianMixture

    sk = SkGaussianMixture(k, covariance_type=ct)
    sk.means_ = np.zeros((k, d))
    n = gaussian.n_parameters(k, d, ct)
    assert isinstance(n, int)
    assert n == sk._n_parameters()
