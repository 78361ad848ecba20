"""The behaviour mixture family (gmm_dask.mixture.behaviour): exactness, EM, checks, recovery."""

from __future__ import annotations

import json

import numpy as np
import pytest
from sklearn.metrics import adjusted_rand_score

from gmm_dask.demo import ARCHETYPE_NAMES, FEATURE_KINDS, FEATURES, DemoSpec, block_snapshots, true_posterior
from gmm_dask.mixture.behaviour import (
    BehaviourFamily,
    BehaviourParams,
    Structure,
    check_values,
    fit_structure_and_init,
    gaussian_log1p_as_mass,
    infer_structure,
)
from gmm_dask.mixture.behaviour.estep import LOG_2PI, censoring
from gmm_dask.mixture.behaviour.init import initialize_from_sample
from gmm_dask.mixture.behaviour.structure import layout_of

KINDS = ["count", "count", "count", "amount", "amount", "continuous", "binary", "count"]
NAMES = ["sessions", "active_days", "purchases", "spend", "tip", "rating", "has_app", "views"]


def mixed_rows(n: int, seed: int = 0) -> np.ndarray:
    """Every kind: a capped count (active_days ≤ sessions), an amount with a parent (spend ←
    purchases) and one without, a continuous feature far from 0, a binary, a count with a zero
    parent (views = 0 when sessions = 0, bar 0.5 % of those rows); heavy tails."""
    rng = np.random.default_rng(seed)
    z = rng.integers(0, 3, n)
    sessions = rng.poisson(rng.gamma(2.0, [1.0, 6.0, 30.0][0] + 8.0 * z))
    active = np.minimum(rng.binomial(30, 0.3 + 0.2 * z), sessions)
    purchases = np.where(rng.random(n) < 0.6 - 0.2 * z, 0, 1 + rng.poisson(1.0 + z))
    spend = np.round(purchases * np.exp(rng.normal(3 + 0.5 * z, 0.5)), 2)
    tip = np.where(rng.random(n) < 0.5, 0.0, np.round(np.exp(rng.normal(1.0, 1.0, n)), 2))
    rating = 1e6 + rng.normal(z, 1.0)
    app = (rng.random(n) < 0.2 + 0.3 * z).astype(float)
    views = rng.poisson(rng.gamma(2.0, 2.0 + 20.0 * z)) * ((sessions > 0) | (rng.random(n) < 0.005))
    return np.column_stack([sessions, active, purchases, spend, tip, rating, app, views]).astype(float)


@pytest.fixture(scope="module")
def setup():
    X = mixed_rows(6000)
    st = infer_structure(X, KINDS, NAMES)
    fam = BehaviourFamily(st)
    rng = np.random.default_rng(1)
    p = fam.m_step(fam.resp_stats(X, None, rng.dirichlet(np.ones(4), len(X))))
    for _ in range(3):  # parameters with censoring in use
        p = fam.m_step(fam.chunk_stats(X, None, p))
    return X, st, fam, p


def flat(s) -> np.ndarray:
    parts = [s.nk, [s.loglik, s.weight], s.table, s.excess, s.term_n, s.term_mean, s.term_m2]
    return np.concatenate([np.ravel(np.asarray(a, dtype=float)) for a in parts])


def rel_err(a: np.ndarray, b: np.ndarray) -> float:
    return float(np.max(np.abs(a - b) / np.maximum(np.abs(a), 1.0)))


def test_structure_found_links(setup):
    _, st, _, _ = setup
    assert st.cap[NAMES.index("active_days")] == NAMES.index("sessions")
    assert st.parent[NAMES.index("spend")] == NAMES.index("purchases")
    assert st.parent[NAMES.index("tip")] == -1
    assert st.parent[NAMES.index("views")] == NAMES.index("sessions")
    assert st.parent[NAMES.index("active_days")] == -1  # capped, so no zero parent
    assert [st.parent[NAMES.index(f)] for f in ("sessions", "purchases")] == [-1, -1]


def test_zero_parent_links_are_configurable_and_checked(setup):
    X = setup[0]
    none = infer_structure(X, KINDS, NAMES, parents={"spend": "purchases"})
    assert none.parent[NAMES.index("views")] == -1
    given = infer_structure(X, KINDS, NAMES, parents={"purchases": "sessions"}, caps=None)
    assert given.parent[NAMES.index("purchases")] == NAMES.index("sessions")
    with pytest.raises(ValueError, match="must not form a cycle"):
        infer_structure(X, KINDS, NAMES, parents={"sessions": "active_days"})
    with pytest.raises(ValueError, match="cannot be both capped"):
        infer_structure(
            X, KINDS, NAMES, parents={"active_days": "purchases"}, caps={"active_days": "sessions"}
        )
    # an explicit zero parent keeps the count uncapped under caps='auto'
    assert (
        infer_structure(X, KINDS, NAMES, parents={"active_days": "sessions"}).cap[NAMES.index("active_days")]
        == -1
    )


def test_partition_invariance(setup):
    X, _, fam, p = setup
    whole = fam.chunk_stats(X, None, p)
    rng = np.random.default_rng(2)
    for trial in range(4):
        cuts = np.sort(rng.choice(np.arange(1, len(X)), rng.integers(1, 9), replace=False))
        pieces = np.split(np.arange(len(X)), cuts)
        stats = [fam.chunk_stats(X[q], None, p, row_offset=int(q[0])) for q in pieces]
        merged = fam.combine_all(stats if trial % 2 else stats[::-1])
        assert rel_err(flat(whole), flat(merged)) < 1e-10
        assert np.array_equal(np.sort(merged.worst_index), np.sort(whole.worst_index))


def test_sample_weights_are_duplicated_rows(setup):
    X, _, fam, p = setup
    w = np.random.default_rng(3).integers(0, 4, len(X)).astype(float)
    rep = np.repeat(np.arange(len(X)), w.astype(int))
    assert rel_err(flat(fam.chunk_stats(X, w, p)), flat(fam.chunk_stats(X[rep], None, p))) < 1e-10
    pw, pd = p, p
    for _ in range(4):
        pw = fam.m_step(fam.chunk_stats(X, w, pw))
        pd = fam.m_step(fam.chunk_stats(X[rep], None, pd))
    for name, a in pw.to_arrays().items():
        np.testing.assert_allclose(a, pd.to_arrays()[name], rtol=1e-9, atol=1e-9, err_msg=name)


def test_em_is_monotone_from_a_random_start(setup):
    X, _, fam, _ = setup
    resp = np.random.default_rng(4).dirichlet(np.ones(5), len(X))
    p = fam.m_step(fam.resp_stats(X, None, resp))
    parts = np.array_split(np.arange(len(X)), 3)
    objective = []
    for _ in range(80):
        s = fam.combine_all([fam.chunk_stats(X[q], None, p) for q in parts])
        objective.append(s.loglik + fam.log_prior(p))
        p = fam.m_step(s)
    drops = -np.diff(objective) / np.abs(objective[1:])
    assert drops.max() <= 1e-9


def reference_log_prob(st: Structure, X: np.ndarray, p: BehaviourParams) -> np.ndarray:
    """Plain NumPy, feature by feature, from the parameters' definitions."""
    lay = layout_of(st)
    out = np.log(p.weights)[None, :].repeat(len(X), axis=0)
    counts = [j for j, k in enumerate(st.kinds) if k == "count"]
    for c, j in enumerate(counts):
        e = np.asarray(st.edges[j], dtype=float)
        o, nb = int(lay.count_off[c]), len(e)
        lt, lq = p.count_log_theta[o : o + nb], p.count_log_q[c]
        x = X[:, j]
        b = np.searchsorted(e, x, side="right") - 1
        width = np.append(np.diff(e), 1.0)[b]
        lp = lt[b] - np.log(width)[:, None]
        tail = b == nb - 1
        lp[tail] = lt[-1] + np.log1p(-np.exp(lq)) + (x[tail] - e[-1])[:, None] * lq
        if st.parent[j] >= 0:  # zero parent: P(x = 0 | parent 0) alone, else the positive part
            z = [i for i in counts if st.parent[i] >= 0].index(j)
            pz = X[:, st.parent[j]] == 0
            lp[pz & (x == 0)] = p.count_zero_log_p[z, 0]
            lp[pz & (x > 0)] += p.count_zero_log_p[z, 1] - np.log1p(-np.exp(lt[0]))
        if st.cap[j] >= 0:
            cens = x >= X[:, st.cap[j]]
            logs, _, _ = censoring(st.edges[j], lt, lq)
            low = cens & (x < e[-1])
            lp[low] = logs[x[low].astype(int)]
            high = cens & ~low
            lp[high] = lt[-1] + (x[high] - e[-1])[:, None] * lq
        out += lp
    for a, j in enumerate([j for j, k in enumerate(st.kinds) if k == "amount"]):
        x, par = X[:, j], st.parent[j]
        s = (X[:, par] <= 0).astype(int) if par >= 0 else np.zeros(len(X), int)
        out += p.amount_log_pz[a][s, (x == 0).astype(int)]
        pos = x > 0
        u = np.where(s == 0, np.log(np.where(s == 0, X[:, par] if par >= 0 else 1.0, 1.0)), 0.0)
        v = np.log(np.where(pos, x, 1.0))
        res = v[:, None] - p.amount_a[a] - p.amount_b[a] * u[:, None]
        dens = -0.5 * (res**2 / p.amount_var[a] + np.log(p.amount_var[a]) + LOG_2PI) - v[:, None]
        out += np.where(pos[:, None], dens, 0.0)
    for g, j in enumerate([j for j, k in enumerate(st.kinds) if k == "continuous"]):
        res = X[:, j][:, None] - p.continuous_mean[g]
        out += -0.5 * (res**2 / p.continuous_var[g] + np.log(p.continuous_var[g]) + LOG_2PI)
    for b, j in enumerate([j for j, k in enumerate(st.kinds) if k == "binary"]):
        out += p.binary_log_p[b][X[:, j].astype(int)]
    return out


def test_kernel_matches_numpy_reference(setup):
    X, st, fam, p = setup
    ref = reference_log_prob(st, X, p)
    np.testing.assert_allclose(fam.log_prob(X, p), ref, rtol=1e-12, atol=1e-12 * np.abs(ref).max())
    # responsibilities → statistics: nk, loglik and the binary cells by direct sums
    lse = np.logaddexp.reduce(ref, axis=1)
    r = np.exp(ref - lse[:, None])
    s = fam.chunk_stats(X, None, p, hard_counts=True)
    np.testing.assert_allclose(s.loglik, lse.sum(), rtol=1e-12)
    np.testing.assert_allclose(s.nk, r.sum(axis=0), rtol=1e-12)
    np.testing.assert_allclose(s.hard_nk, np.bincount(ref.argmax(1), minlength=p.n_components))
    o = int(layout_of(st).binary_off[0])
    app = X[:, NAMES.index("has_app")].astype(int)
    np.testing.assert_allclose(s.table[o : o + 2], [r[app == 0].sum(0), r[app == 1].sum(0)], rtol=1e-12)
    zo = int(
        layout_of(st).count_zoff[[j for j, k in enumerate(KINDS) if k == "count"].index(NAMES.index("views"))]
    )
    pz, views = X[:, NAMES.index("sessions")] == 0, X[:, NAMES.index("views")]
    cells = [r[~pz | (views == 0)].sum(0), r[pz & (views == 0)].sum(0), r[pz & (views > 0)].sum(0)]
    assert (pz & (views > 0)).any()
    np.testing.assert_allclose(s.table[zo : zo + 3], cells, rtol=1e-12)
    cont = X[:, NAMES.index("rating")]
    mean = (r * cont[:, None]).sum(0) / r.sum(0)
    np.testing.assert_allclose(s.term_mean[-1, :, 1], mean, rtol=1e-13)
    m2 = (r * (cont[:, None] - mean) ** 2).sum(0)
    np.testing.assert_allclose(s.term_m2[-1, :, 2], m2, rtol=1e-9)


def test_structure_and_params_round_trip(setup, tmp_path):
    _, st, _, p = setup
    assert Structure.from_json(json.loads(json.dumps(st.to_json()))) == st
    np.savez(tmp_path / "p.npz", **p.to_arrays())
    with np.load(tmp_path / "p.npz") as z:
        back = BehaviourParams.from_arrays(dict(z))
    for name, a in p.to_arrays().items():
        np.testing.assert_array_equal(back.to_arrays()[name], a)


def test_check_values_names_feature_and_row(setup):
    X, st, _, _ = setup
    assert check_values(X, st) is None
    bad = X.copy()
    bad[17, NAMES.index("purchases")] = 2.5
    bad[40, NAMES.index("spend")] = -1.0
    assert check_values(bad, st, row_offset=100) == (
        "feature 'purchases' (a count) has a non-integer value 2.5 at row 117: counts must be whole numbers ≥ 0"
    )
    bad = X.copy()
    bad[3, NAMES.index("has_app")] = 2.0
    assert check_values(bad, st) == (
        "feature 'has_app' (a binary) has an invalid value 2 at row 3: binary features must be 0 or 1"
    )


def test_invalid_rows_are_counted_not_fitted(setup):
    X, _, fam, p = setup
    bad = X.copy()
    bad[[5, 9], 0] = np.nan
    s, ok = fam.chunk_stats(bad, None, p, row_offset=10), fam.chunk_stats(np.delete(X, [5, 9], 0), None, p)
    assert (s.n_bad, s.first_bad) == (2, 15)
    at_weight = p.n_components + 1  # Σw counts every row, as in SuffStats
    assert rel_err(np.delete(flat(ok), at_weight), np.delete(flat(s), at_weight)) < 1e-10


def test_reseed_moves_collapsed_component_to_worst_row(setup):
    X, _, fam, p = setup
    s = fam.chunk_stats(X, None, p)
    q = fam.reseed(s, p, np.array([2]))
    assert q.n_components == p.n_components
    np.testing.assert_allclose(q.weights.sum(), 1.0)
    worst = s.worst_rows[0][None, :]
    assert fam.log_prob(worst, q).argmax() == 2
    assert np.array_equal(fam.reseed(s, p, np.array([2])).to_arrays()["amount_a"], q.amount_a)


def demo_day0(n_users: int = 20_000):
    spec = DemoSpec(n_users=n_users, seed=7)
    feats, truth = next(block_snapshots(spec, 0))
    X = np.column_stack([feats.column(c).to_numpy().astype(float) for c in FEATURES])
    labels = np.array([ARCHETYPE_NAMES.index(a) for a in truth.column("archetype").to_pylist()])
    stable = truth.column("kind").to_numpy(zero_copy_only=False) == "stable"
    return spec, X, labels, stable


def em(
    fam: BehaviourFamily, X: np.ndarray, p: BehaviourParams, n_iter: int, parts: int = 4
) -> BehaviourParams:
    pieces = np.array_split(np.arange(len(X)), parts)
    previous = -np.inf
    for _ in range(n_iter):
        s = fam.combine_all([fam.chunk_stats(X[q], None, p) for q in pieces])
        p = fam.m_step(s)
        if s.loglik - previous < 1e-8 * abs(s.loglik):
            break
        previous = s.loglik
    return p


def test_recovers_demo_archetypes():
    import dask.array as da

    from gmm_dask.mixture.runner import ChunkedData, GraphRunner

    spec, X, labels, stable = demo_day0()
    runner = GraphRunner(ChunkedData(da.from_array(X, chunks=(5000, X.shape[1])), None))
    fam, p = fit_structure_and_init(
        runner, [FEATURE_KINDS[f] for f in FEATURES], FEATURES, 5, seed=0, n_init=2
    )
    assert runner.passes == 1
    p = em(fam, X, p, 300)
    ari = adjusted_rand_score(labels[stable], fam.log_prob(X[stable], p).argmax(1))
    bayes = adjusted_rand_score(labels[stable], true_posterior(X[stable], spec).argmax(1))
    assert ari >= 0.85
    assert ari >= bayes - 0.05


ARCH = np.array(
    [  # sessions, page views, P(no purchase), purchases − 1, P(app), rating
        [3.0, 10.0, 0.90, 0.3, 0.2, 3.0],
        [12.0, 50.0, 0.30, 1.0, 0.6, 4.0],
        [25.0, 250.0, 0.70, 0.5, 0.8, 2.5],
        [8.0, 30.0, 0.05, 4.0, 0.7, 4.5],
    ]
)


def second_generator(n: int = 16_000, seed: int = 11) -> tuple[np.ndarray, np.ndarray]:
    """Negative-binomial counts sharing a per-user activity factor (within-archetype
    dependence the family does not model), a purchase hurdle, a binary and a continuous
    feature (a different shape from the demo's). Page views are 0 whenever sessions are 0 (a
    count→count zero link, as in warehouse data: no page views without a session)."""
    rng = np.random.default_rng(seed)
    z = rng.choice(len(ARCH), n, p=[0.35, 0.25, 0.2, 0.2])
    P = ARCH[z]
    act = rng.gamma(8.0, 1 / 8.0, n)

    def nb(mean: np.ndarray, r: float) -> np.ndarray:
        return rng.poisson(rng.gamma(r, mean / r))

    sessions = nb(act * P[:, 0], 4.0)
    views = nb(act * P[:, 1], 4.0) * (sessions > 0)
    purchases = np.where(rng.random(n) < P[:, 2], 0, 1 + nb(act * P[:, 3], 3.0))
    app = (rng.random(n) < P[:, 4]).astype(float)
    rating = P[:, 5] + 0.7 * rng.standard_normal(n)
    return np.column_stack([sessions, views, purchases, app, rating]).astype(float), z


KINDS2 = ["count", "count", "count", "binary", "continuous"]


def supervised(fam: BehaviourFamily, X: np.ndarray, labels: np.ndarray, k: int) -> BehaviourParams:
    """The family fitted to the true labels (EM over censored values only)."""
    resp = np.eye(k)[labels]
    p = fam.m_step(fam.resp_stats(X, None, resp))
    for _ in range(20):
        p = fam.m_step(fam.resp_stats(X, None, resp, p))
    return p


def test_second_generator_close_to_supervised_ceilings():
    from sklearn.ensemble import HistGradientBoostingClassifier
    from sklearn.model_selection import cross_val_predict

    X, z = second_generator()
    st = infer_structure(X, KINDS2, ["sessions", "views", "purchases", "app", "rating"])
    assert st.parent[1] == 0  # page views' zeros follow sessions'
    fam = BehaviourFamily(st)
    p = em(fam, X, initialize_from_sample(st, X[:5000], 4, seed=1, n_init=2), 300)
    ari = adjusted_rand_score(z, fam.log_prob(X, p).argmax(1))
    ceiling = adjusted_rand_score(z, fam.log_prob(X, supervised(fam, X, z, 4)).argmax(1))
    assert ari >= 0.9 * ceiling
    hgb = cross_val_predict(HistGradientBoostingClassifier(random_state=0), X, z, cv=3)
    assert ari >= 0.85 * adjusted_rand_score(z, hgb)


def test_gaussian_as_mass_adds_bin_width_and_jacobian():
    X = np.array([[0.0, 0.0, 1.5], [3.0, 9.0, -2.0]])
    out = gaussian_log1p_as_mass(
        np.zeros(2), X, ["count", "amount", "continuous"], scale=np.array([2.0, 1.0, 1.0])
    )
    expected = np.log(np.log((X[:, 0] + 2) / (X[:, 0] + 1))) - np.log1p(X[:, 1]) - np.log(2.0)
    np.testing.assert_allclose(out, expected)


def test_vectorised_log_is_within_two_ulp_of_numpy():
    from gmm_dask.mixture.behaviour import _kernel

    rng = np.random.default_rng(5)
    edges = [
        5e-324,
        1e-310,
        2.2250738585072014e-308,
        1.0,
        np.nextafter(1.0, 2.0),
        np.nextafter(1.0, 0.0),
        1.7e308,
    ]
    x = np.concatenate(
        [
            np.exp(rng.uniform(-740, 709, 200_000)),  # every binade, subnormals included
            1.0 + rng.uniform(-1e-6, 1e-6, 10_000),  # near log 1 = 0
            np.arange(1.0, 10_001.0),  # counts (a parent's log)
            np.round(np.exp(rng.normal(3, 2, 10_000)), 2) + 0.01,  # amounts
            edges,
        ]
    )
    got = x.copy()
    _kernel._log_inplace(got, len(got))
    want = np.log(x)
    assert np.max(np.abs(got - want) / np.spacing(np.abs(want) + np.spacing(1.0))) <= 2.0
    assert got[-4] == 0.0


def _summary_problem(n: int, seed: int):
    from gmm_dask.mixture.behaviour import estep

    rng = np.random.default_rng(seed)
    c = rng.poisson(np.where(rng.random(n) < 0.4, 0.3, 4.0)).astype(float)
    X = np.column_stack(
        [
            c,
            np.where(c > 0, rng.lognormal(1, 0.5, n), 0.0),
            rng.integers(0, 2, n).astype(float),
            rng.normal(size=n),
        ]
    )
    family = BehaviourFamily(infer_structure(X, ["count", "amount", "binary", "continuous"], list("cabx")))
    params = family.m_step(estep.resp_stats(family.structure, X, None, rng.dirichlet(np.ones(4), n)))
    Z = np.column_stack([np.log1p(X[:, :3]), X[:, 3] + 1e4])  # one model input far from 0
    return family, params, X, Z, np.where(rng.random(n) < 0.1, 0.0, rng.random(n))


@pytest.mark.parametrize("weighted", [False, True])
def test_the_compiled_summary_is_the_gamma_weighted_moments_of_the_model_inputs(weighted):
    """The components' Gaussian summary (names, profiles) from the kernel, over 3 merge blocks,
    equals the reference: γ from log p(x) by log-sum-exp, then exactly centred moments."""
    from gmm_dask.mixture.behaviour import estep
    from gmm_dask.mixture.gaussian import log_responsibilities
    from gmm_dask.mixture.suffstats import resp_stats

    family, params, X, Z, w = _summary_problem(40_000, 5)
    w = w if weighted else None
    got = estep.summary_stats(family.structure, params, X, Z, w)
    _, log_resp = log_responsibilities(family.log_prob(X, params))
    want = resp_stats(Z, w, np.exp(log_resp), "full")
    np.testing.assert_allclose(got.nk, want.nk, rtol=1e-12)
    np.testing.assert_allclose(got.means, want.means, rtol=1e-13)
    np.testing.assert_allclose(got.m2, want.m2, rtol=1e-11, atol=1e-11 * np.abs(want.m2).max())
    assert got.weight == want.weight
    assert got.n_rows == 40_000
    assert got.n_bad == 0


def test_the_summary_of_rows_without_a_finite_density_counts_them_and_adds_nothing():
    from gmm_dask.errors import DataError
    from gmm_dask.mixture.behaviour import estep
    from gmm_dask.segmentation.behaviour import BehaviourPart, summary_stats

    family, params, X, Z, _ = _summary_problem(3000, 6)
    X[17, 0] = -1.0  # a count cannot be negative
    got = estep.summary_stats(family.structure, params, X, Z, None)
    keep = np.arange(3000) != 17
    want = estep.summary_stats(family.structure, params, X[keep], Z[keep], None)
    assert (got.n_bad, got.first_bad) == (1, 17)
    np.testing.assert_allclose(got.nk, want.nk, rtol=1e-12)
    np.testing.assert_allclose(got.means, want.means, rtol=1e-12)
    with pytest.raises(DataError, match="retrain with another kind"):
        summary_stats(X, Z, None, BehaviourPart(family.structure, params))
