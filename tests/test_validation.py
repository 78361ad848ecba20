"""Bad input gets one clear ValueError subclass that names the problem and the fix."""

import re

import dask.array as da
import numpy as np
import pandas as pd
import pytest

from gmm_dask import GaussianMixture, GMMDaskInputError, NotFittedError

X = np.random.default_rng(0).normal(size=(60, 3))


@pytest.mark.parametrize("bad", [np.nan, np.inf, -np.inf])
@pytest.mark.parametrize("as_dask", [False, True])
def test_nonfinite_values_report_count_first_row_and_column(bad, as_dask):
    Xb = X.copy()
    Xb[[17, 42], [2, 0]] = bad
    data = da.from_array(Xb, chunks=(7, -1)) if as_dask else Xb
    with pytest.raises(
        GMMDaskInputError, match=r"NaN or infinity in 2 row\(s\); the first is row 17 \(column 2\)"
    ):
        GaussianMixture(2).fit(data)


@pytest.mark.parametrize("covariance_type", ["full", "diag"])
def test_values_too_large_to_square_are_refused_before_any_em(covariance_type):
    # a constant 1e300 column has zero variance, yet its mean squared overflows: refuse it
    Xb = X.copy()
    Xb[:, 1] = 1e300
    Xb[3, 1] = 1e300
    data = da.from_array(Xb, chunks=(7, -1))
    with pytest.raises(
        GMMDaskInputError,
        match=r"60 row\(s\) with a value whose magnitude exceeds 1e\+100; the first is row 0 ",
    ):
        GaussianMixture(2, covariance_type=covariance_type).fit(data)
    Xb = X.copy()
    Xb[41, 2] = -2e100
    with pytest.raises(GMMDaskInputError, match=r"first is row 41 \(column 2\).*log-transform"):
        GaussianMixture(2).fit(Xb)


def test_nonfinite_in_dataframe_names_the_column():
    df = pd.DataFrame(X, columns=["sessions", "spend", "days"])
    df.loc[5, "spend"] = np.nan
    with pytest.raises(GMMDaskInputError, match=r"first is row 5 \(column 'spend'\).*missing: drop"):
        GaussianMixture(2).fit(df)


def test_non_numeric_columns_are_named():
    df = pd.DataFrame({"sessions": [1.0, 2, 3], "country": ["fr", "de", "it"], "spend": [1, 2, 3]})
    with pytest.raises(GMMDaskInputError, match=r"non-numeric column\(s\): 'country' \((object|str)\)"):
        GaussianMixture(1).fit(df)


def test_non_numeric_array():
    with pytest.raises(GMMDaskInputError, match="non-numeric values"):
        GaussianMixture(1).fit(np.array([["a", "b"], ["c", "d"]]))


def test_one_dimensional_input_says_how_to_reshape():
    with pytest.raises(GMMDaskInputError, match=re.escape("X.reshape(-1, 1)")):
        GaussianMixture(1).fit(np.arange(5.0))


def test_fewer_rows_than_components():
    with pytest.raises(GMMDaskInputError, match="n_components = 5, n_samples = 3"):
        GaussianMixture(5).fit(X[:3])


@pytest.mark.parametrize(
    ("param", "value", "allowed"),
    [
        ("n_components", 0, "an integer >= 1"),
        ("n_components", 2.5, "an integer >= 1"),
        ("covariance_type", "banana", "one of 'full', 'tied', 'diag', 'spherical'"),
        ("tol", -1.0, "a finite number >= 0"),
        ("reg_covar", float("nan"), "a finite number >= 0"),
        ("max_iter", -1, "an integer >= 0"),
        ("n_init", 0, "an integer >= 1"),
        (
            "init_params",
            "kmeans",
            "one of 'k-means-sample', 'k-means||', 'k-means++', 'random', 'random_from_data'",
        ),
        ("random_state", "seed", "None, an int"),
    ],
)
def test_invalid_parameters_name_value_and_allowed(param, value, allowed):
    kwargs = {"n_components": 2, param: value}
    with pytest.raises(
        GMMDaskInputError,
        match=re.escape(f"Invalid value for {param}: {value!r}. Expected {allowed}"),
    ):
        GaussianMixture(**kwargs).fit(X)


@pytest.mark.parametrize(
    ("kwargs", "msg"),
    [
        ({"weights_init": [0.5, 0.6]}, "weights summing to 1"),
        ({"weights_init": [1.0]}, "shape (2,)"),
        ({"means_init": np.zeros((2, 4))}, "shape (2, 3)"),
        ({"precisions_init": np.stack([np.eye(3), -np.eye(3)])}, "positive-definite"),
        ({"precisions_init": np.ones((2, 3)), "covariance_type": "full"}, "shape (2, 3, 3)"),
    ],
)
def test_invalid_init_arrays(kwargs, msg):
    with pytest.raises(GMMDaskInputError, match=re.escape(msg)):
        GaussianMixture(2, **kwargs).fit(X)


def test_bad_sample_weights():
    with pytest.raises(GMMDaskInputError, match="one weight per row of X"):
        GaussianMixture(2).fit(X, sample_weight=np.ones(5))
    w = np.ones(len(X))
    w[9] = -1
    with pytest.raises(GMMDaskInputError, match=r"negative or non-finite value.*row 9"):
        GaussianMixture(2).fit(X, sample_weight=w)
    with pytest.raises(GMMDaskInputError, match="sums to zero"):
        GaussianMixture(2).fit(X, sample_weight=np.zeros(len(X)))


@pytest.mark.parametrize(("bad", "msg"), [(np.nan, "NaN or infinity"), (-1e200, "magnitude exceeds 1e+100")])
def test_predict_on_bad_values_names_the_row(bad, msg):
    gm = GaussianMixture(2, random_state=0).fit(X)
    Xb = X.copy()
    Xb[13, 1] = bad
    for method in (gm.predict, gm.predict_proba, gm.score_samples):
        with pytest.raises(GMMDaskInputError, match=re.escape(msg) + r".*row 13"):
            method(Xb)


def test_feature_count_mismatch_at_predict():
    gm = GaussianMixture(2, random_state=0).fit(X)
    with pytest.raises(
        GMMDaskInputError, match="X has 2 features, but GaussianMixture is expecting 3 features as input"
    ):
        gm.predict(X[:, :2])
    with pytest.raises(GMMDaskInputError, match="X has 2 features"):
        gm.predict_proba(da.from_array(X[:, :2]))


def test_column_mismatch_at_predict_names_columns():
    df = pd.DataFrame(X, columns=["a", "b", "c"])
    gm = GaussianMixture(2, random_state=0).fit(df)
    with pytest.raises(GMMDaskInputError, match=r"missing \['c'\], unexpected \['z'\]"):
        gm.predict(df.rename(columns={"c": "z"}))


@pytest.mark.parametrize("method", ["predict", "predict_proba", "score_samples", "score", "entropy", "bic"])
def test_unfitted_model(method):
    with pytest.raises(NotFittedError, match="not fitted yet"):
        getattr(GaussianMixture(2), method)(X)


def test_errors_are_value_errors():
    """Code written against scikit-learn keeps catching ValueError."""
    assert issubclass(GMMDaskInputError, ValueError)
    assert issubclass(NotFittedError, ValueError)


def test_complex_sparse_and_featureless_inputs():
    from scipy import sparse

    with pytest.raises(GMMDaskInputError, match="Complex data not supported"):
        GaussianMixture(1).fit(X + 1j)
    with pytest.raises(GMMDaskInputError, match=re.escape("X is a sparse csr_matrix") + ".*toarray"):
        GaussianMixture(1).fit(sparse.csr_matrix(X))
    with pytest.raises(GMMDaskInputError, match=re.escape("0 feature(s) (shape=(60, 0))")):
        GaussianMixture(1).fit(X[:, :0])
    with pytest.raises(GMMDaskInputError, match=re.escape("0 feature(s) (shape=(60, 0))")):
        GaussianMixture(1).fit(da.from_array(X[:, :0]))
    gm = GaussianMixture(2, random_state=0).fit(X)
    with pytest.raises(GMMDaskInputError, match="sparse"):
        gm.predict(sparse.csr_matrix(X))
