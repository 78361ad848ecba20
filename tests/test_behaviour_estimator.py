"""The behaviour family on the engine's one EM loop, and its scikit-learn-style estimator."""

from __future__ import annotations

import dask.array as da
import numpy as np
import pytest
from sklearn.metrics import adjusted_rand_score

from gmm_dask.demo import ARCHETYPE_NAMES, FEATURE_KINDS, FEATURES, DemoSpec, block_snapshots, true_posterior
from gmm_dask.errors import GMMDaskInputError
from gmm_dask.mixture.behaviour import fit_structure_and_init
from gmm_dask.mixture.behaviour.estimator import BehaviourMixture
from gmm_dask.mixture.em import fit_family
from gmm_dask.mixture.runner import ChunkedData, GraphRunner


@pytest.fixture(scope="module")
def demo():
    spec = DemoSpec(n_users=12_000, seed=7)
    feats, truth = next(block_snapshots(spec, 0))
    X = np.column_stack([feats.column(c).to_numpy().astype(float) for c in FEATURES])
    labels = np.array([ARCHETYPE_NAMES.index(a) for a in truth.column("archetype").to_pylist()])
    kind = truth.column("kind").to_numpy(zero_copy_only=False)
    return spec, X, labels, kind


@pytest.fixture(scope="module")
def fitted(demo):
    _, X, _, _ = demo
    return BehaviourMixture(5, random_state=0, n_init=2).fit(X)


def test_estimator_finds_the_archetypes_and_keeps_hybrids_soft(demo, fitted):
    spec, X, labels, kind = demo
    stable = kind == "stable"
    ari = adjusted_rand_score(labels[stable], fitted.predict(X)[stable])
    bayes = adjusted_rand_score(labels[stable], true_posterior(X[stable], spec).argmax(1))
    assert ari >= 0.85
    assert ari >= bayes - 0.05
    soft = fitted.entropy(X) / np.log2(5) >= 0.25  # the moderate and high bands
    assert soft[kind == "hybrid"].mean() >= 2 * soft[stable].mean()


def test_kinds_are_inferred_from_the_values(fitted):
    assert fitted.kinds_ == [FEATURE_KINDS[f] for f in FEATURES]


def test_em_on_the_engine_loop_never_decreases_its_objective(fitted):
    lb = np.asarray(fitted.lower_bounds_)
    assert len(lb) >= 3
    assert np.all(np.diff(lb) >= -1e-9 * np.abs(lb[1:]))
    assert fitted.converged_


def test_partitions_do_not_change_the_fit_or_the_memberships(demo, fitted):
    _, X, _, _ = demo
    chunked = BehaviourMixture(5, random_state=0, n_init=2).fit(da.from_array(X, chunks=(2_777, -1)))
    np.testing.assert_allclose(chunked.predict_proba(X), fitted.predict_proba(X), rtol=0, atol=1e-10)
    lazy = fitted.predict_proba(da.from_array(X, chunks=(5_000, -1)))
    assert isinstance(lazy, da.Array)
    np.testing.assert_allclose(lazy.compute(), fitted.predict_proba(X), rtol=0, atol=1e-12)


def test_a_weight_of_two_is_a_duplicated_row_through_the_whole_fit(demo):
    _, X, _, _ = demo
    X = X[:4_000]
    w = np.where(np.arange(len(X)) % 3 == 0, 2.0, 1.0)
    dup = np.repeat(X, w.astype(int), axis=0)
    kinds = [FEATURE_KINDS[f] for f in FEATURES]
    runner = GraphRunner(ChunkedData(da.from_array(X, chunks=(1_000, -1)), None))
    fam, start = fit_structure_and_init(runner, kinds, FEATURES, 4, seed=3, n_init=1)

    def fit(data: np.ndarray, weights: np.ndarray | None):
        w_arr = None if weights is None else da.from_array(weights, chunks=1_000)
        r = GraphRunner(ChunkedData(da.from_array(data, chunks=(1_000, -1)), w_arr))
        return fit_family(r, fam, lambda i: start, 1, tol=0.0, max_iter=15).params

    a, b = fit(X, w), fit(dup, None)
    for name, arr in a.to_arrays().items():
        np.testing.assert_allclose(arr, b.to_arrays()[name], rtol=1e-9, atol=1e-10, err_msg=name)


def test_a_bad_value_is_named_before_any_fit(demo):
    _, X, _, _ = demo
    bad = X[:500].copy()
    bad[123, FEATURES.index("purchases_90d")] = 2.5
    with pytest.raises(GMMDaskInputError, match=r"purchases_90d.*row 123"):
        BehaviourMixture(3, kinds=[FEATURE_KINDS[f] for f in FEATURES]).fit(_frame(bad))
    with pytest.raises(GMMDaskInputError, match=r"kinds must name one of"):
        BehaviourMixture(3, kinds=["count"]).fit(X[:100])


def _frame(X: np.ndarray):
    import pandas as pd

    return pd.DataFrame(X, columns=list(FEATURES))


def test_information_criteria_prefer_the_true_number_of_archetypes(demo):
    _, X, _, _ = demo
    bic = {k: BehaviourMixture(k, random_state=0, n_init=2).fit(X).bic_fit() for k in (3, 5)}
    assert bic[5] < bic[3]
