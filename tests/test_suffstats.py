"""Sufficient statistics: the merge is exact, and the M-step equals scikit-learn's."""

import numpy as np
import pytest
from sklearn.mixture._gaussian_mixture import _estimate_gaussian_parameters

from gmm_dask.mixture import gaussian
from gmm_dask.mixture.options import COVARIANCE_TYPES
from gmm_dask.mixture.suffstats import combine, combine_all, estep_stats, m_step, merge_moments, resp_stats

from .conftest import assert_rel


def _setup(ct, n=400, seed=0):
    rng = np.random.default_rng(seed)
    X = rng.normal(size=(n, 3)) * [1, 2, 3] + [0.5, -1, 2]
    w = rng.uniform(0.1, 3, size=n)
    means = rng.normal(size=(2, 3))
    cov = {
        "full": np.stack([np.eye(3), 2 * np.eye(3)]),
        "tied": np.eye(3),
        "diag": np.ones((2, 3)),
        "spherical": np.ones(2),
    }[ct]
    return X, w, np.array([0.4, 0.6]), means, gaussian.compute_precision_cholesky(cov, ct)


@pytest.mark.parametrize("ct", COVARIANCE_TYPES)
def test_stats_of_union_equal_combined_stats(ct):
    X, w, weights, means, pc = _setup(ct)
    whole = estep_stats(X, w, weights, means, pc, ct)
    a = estep_stats(X[:123], w[:123], weights, means, pc, ct)
    b = estep_stats(X[123:], w[123:], weights, means, pc, ct, row_offset=123)
    merged = combine(a, b)
    for field in ("nk", "means", "m2"):
        assert_rel(getattr(merged, field), getattr(whole, field), 1e-12, field)
    assert merged.loglik == pytest.approx(whole.loglik, rel=1e-13)
    assert merged.n_rows == whole.n_rows == len(X)
    # small blocks inside a partition merge to the same thing
    tiny = estep_stats(X, w, weights, means, pc, ct, block_rows=7)
    assert_rel(tiny.m2, whole.m2, 1e-12, "m2 with 7-row blocks")


def test_empty_partition_is_neutral():
    X, w, weights, means, pc = _setup("full")
    whole = estep_stats(X, w, weights, means, pc, "full")
    empty = estep_stats(X[:0], w[:0], weights, means, pc, "full")
    merged = combine_all([empty, whole, empty])
    assert_rel(merged.m2, whole.m2, 1e-15, "m2")
    assert_rel(merged.means, whole.means, 1e-15, "means")


@pytest.mark.parametrize("ct", COVARIANCE_TYPES)
def test_m_step_equals_sklearn(ct):
    rng = np.random.default_rng(3)
    X = rng.normal(size=(300, 4))
    resp = rng.uniform(size=(300, 3))
    resp /= resp.sum(axis=1, keepdims=True)
    stats = resp_stats(X, None, resp, "full" if ct in ("full", "tied") else "diag")
    weights, means, cov = m_step(stats, ct, 1e-6)
    sk_nk, sk_means, sk_cov = _estimate_gaussian_parameters(X, resp, 1e-6, ct)
    assert_rel(weights, sk_nk / sk_nk.sum(), 1e-13, "weights")
    assert_rel(means, sk_means, 1e-13, "means")
    assert_rel(cov, sk_cov, 1e-12, "covariances")


def test_centred_moments_survive_a_large_offset():
    """Second moments of data offset by 1e6 equal those of the centred data."""
    rng = np.random.default_rng(4)
    X = rng.normal(size=(1000, 2))
    resp = np.full((1000, 1), 1.0)
    a = resp_stats(X, None, resp, "full")
    b = combine_all(
        [
            resp_stats(X[i : i + 100] + 1e6, None, resp[i : i + 100], "full", row_offset=i)
            for i in range(0, 1000, 100)
        ]
    )
    assert_rel(b.m2, a.m2, 1e-9, "m2")


def _reference_stats(X, weights, means, prec_chol, ct):
    """Textbook E-step statistics: every difference x − μₖ formed explicitly, two-pass moments."""
    k, d = means.shape
    pcs = {
        "full": prec_chol,
        "tied": [prec_chol] * k,
        "diag": [np.diag(p) for p in np.atleast_2d(prec_chol)],
        "spherical": [p * np.eye(d) for p in np.atleast_1d(prec_chol)],
    }[ct]
    logp = np.stack(
        [
            np.log(weights[j])
            - 0.5 * d * np.log(2 * np.pi)
            + np.log(np.diag(pcs[j])).sum()
            - 0.5 * (((X - means[j]) @ pcs[j]) ** 2).sum(axis=1)
            for j in range(k)
        ],
        axis=1,
    )
    top = logp.max(axis=1, keepdims=True)
    lse = top[:, 0] + np.log(np.exp(logp - top).sum(axis=1))
    r = np.exp(logp - lse[:, None])
    nk = r.sum(axis=0)
    mu = (r.T @ X) / nk[:, None]
    m2 = np.stack([(X - mu[j]).T @ ((X - mu[j]) * r[:, j : j + 1]) for j in range(k)])
    return nk, mu, m2, lse.sum()


@pytest.mark.parametrize("ct", COVARIANCE_TYPES)
def test_tight_components_far_from_the_mixture_mean_keep_their_digits(ct):
    # clusters 1e4 apart with spread 1e-3: ρ = mᵀPm ≈ 1e14, where a shared expansion about
    # the mixture mean would lose ~14 digits of each covariance
    rng = np.random.default_rng(5)
    centres = np.array([[0.0, 0.0, 0.0], [1e4, 0.0, 5e3], [0.0, -1e4, 1e4]])
    X = np.concatenate([c + 1e-3 * rng.normal(size=(300, 3)) for c in centres])
    cov = {
        "full": np.stack([1e-6 * np.eye(3)] * 3),
        "tied": 1e-6 * np.eye(3),
        "diag": np.full((3, 3), 1e-6),
        "spherical": np.full(3, 1e-6),
    }[ct]
    pc = gaussian.compute_precision_cholesky(cov, ct)
    weights = np.full(3, 1 / 3)
    means = centres + 2e-4
    got = estep_stats(X, None, weights, means, pc, ct, block_rows=128)
    nk, mu, m2, loglik = _reference_stats(X, weights, means, pc, ct)
    assert_rel(got.nk, nk, 1e-12, "nk")
    assert_rel(got.means, mu, 1e-14, "means")
    want = m2 if got.m2.ndim == 3 else np.diagonal(m2, axis1=1, axis2=2)
    assert_rel(got.m2, want, 1e-9, "m2")
    assert got.loglik == pytest.approx(loglik, rel=1e-12)


@pytest.mark.parametrize("ct", COVARIANCE_TYPES)
def test_expansion_and_exact_centring_agree(ct, monkeypatch):
    from gmm_dask.mixture import blocks

    X, w, weights, means, pc = _setup(ct)
    monkeypatch.setattr(blocks, "EXPANSION_MAX_RHO", np.inf)
    expanded = estep_stats(X, w, weights, means, pc, ct, block_rows=50)
    monkeypatch.setattr(blocks, "EXPANSION_MAX_RHO", -1.0)
    exact = estep_stats(X, w, weights, means, pc, ct, block_rows=50)
    for field in ("nk", "means", "m2"):
        assert_rel(getattr(expanded, field), getattr(exact, field), 1e-12, field)
    assert expanded.loglik == pytest.approx(exact.loglik, rel=1e-13)


@pytest.mark.parametrize("n", [0, 3, 8, 9, 1000, 5003])
def test_worst_rows_are_the_lowest_eligible_scores_with_ties_by_index(n):
    # Collapsed components are re-seeded at these rows, so the choice must be exactly the m
    # lowest eligible scores, ties going to the lower global index, however rows are split.
    from gmm_dask.mixture.suffstats import _worst_rows

    rng = np.random.default_rng(n)
    scores = np.round(rng.normal(size=n), 1)  # many ties
    eligible = rng.random(n) > 0.2
    rows = np.arange(2 * n, dtype=float).reshape(n, 2)
    m = 8
    ws, wr, wi = _worst_rows(scores, rows, eligible, 100, m)
    order = sorted(np.flatnonzero(eligible), key=lambda i: (scores[i], i))[:m]
    np.testing.assert_array_equal(wi, np.array(order, dtype=int) + 100)
    np.testing.assert_array_equal(ws, scores[order])
    np.testing.assert_array_equal(wr, rows[order])
    # the same rows whichever way the partition is split and merged
    if n > 10:
        cut = n // 3
        a = _worst_rows(scores[:cut], rows[:cut], eligible[:cut], 100, m)
        b = _worst_rows(scores[cut:], rows[cut:], eligible[cut:], 100 + cut, m)
        merged = np.concatenate([a[2], b[2]])[
            np.lexsort((np.concatenate([a[2], b[2]]), np.concatenate([a[0], b[0]])))
        ][:m]
        np.testing.assert_array_equal(merged, wi)


def _moments(X, W):
    """Two-pass weighted statistics: W of shape (n, K) gives weights (K,), means (K, D) and full
    centred moments (K, D, D); W of shape (n,) gives a scalar weight, (D,) and (D, D)."""
    Wk = W if W.ndim == 2 else W[:, None]
    wk = Wk.sum(axis=0)
    means = (Wk.T @ X) / wk[:, None]
    m2 = np.stack([(X - m).T @ ((X - m) * Wk[:, j : j + 1]) for j, m in enumerate(means)])
    return (wk, means, m2) if W.ndim == 2 else (wk[0], means[0], m2[0])


@pytest.mark.parametrize("offset", [0.0, 1e6])
def test_merge_moments_of_two_halves_equals_the_whole(offset):
    rng = np.random.default_rng(6)
    X = rng.normal(size=(500, 4)) * [1.0, 3.0, 0.5, 2.0] + offset
    W = rng.uniform(0, 2, size=(500, 3))
    tol = 1e-12 if offset == 0 else 1e-9
    cut = 180
    whole, a, b = _moments(X, W), _moments(X[:cut], W[:cut]), _moments(X[cut:], W[cut:])
    ia, ja = np.triu_indices(4)
    diag = np.arange(4)
    layouts = {
        "full": (lambda m2: m2, None),
        "diag": (lambda m2: m2[..., diag, diag], None),
        "packed": (lambda m2: m2[..., ia, ja], (ia, ja)),
    }
    for name, (view, pairs) in layouts.items():
        w, mean, m2 = merge_moments(a[0], a[1], view(a[2]), b[0], b[1], view(b[2]), pairs)
        assert_rel(w, whole[0], 1e-14, f"{name} weights")
        assert_rel(mean, whole[1], 1e-14, f"{name} means")
        assert_rel(m2, view(whole[2]), tol, f"{name} moments")
    # one scalar weight per set (validation's fold) and one weight per column (the profile)
    wa, wb, wh = _moments(X[:cut], W[:cut, 0]), _moments(X[cut:], W[cut:, 0]), _moments(X, W[:, 0])
    w, mean, m2 = merge_moments(wa[0], wa[1], np.diag(wa[2]), wb[0], wb[1], np.diag(wb[2]))
    assert w == pytest.approx(wh[0], rel=1e-14)
    assert_rel(mean, wh[1], 1e-14, "scalar-weight means")
    assert_rel(m2, np.diag(wh[2]), tol, "scalar-weight moments")
    Wc = rng.uniform(0, 2, size=X.shape)  # a weight per value, as for columns with gaps
    cols = [_column_moments(X[rows], Wc[rows]) for rows in (slice(0, cut), slice(cut, None))]
    whole = _column_moments(X, Wc)
    w, mean, m2 = merge_moments(*cols[0], *cols[1])
    assert_rel(w, whole[0], 1e-14, "per-column weights")
    assert_rel(mean, whole[1], 1e-14, "per-column means")
    assert_rel(m2, whole[2], tol, "per-column moments")


def _column_moments(X, Wc):
    w = Wc.sum(axis=0)
    mean = (Wc * X).sum(axis=0) / w
    return w, mean, (Wc * (X - mean) ** 2).sum(axis=0)


def test_merge_moments_keeps_the_second_mean_where_the_first_set_is_empty():
    ma, mb = np.array([[7.0, -1.0], [3.0, 3.0]]), np.array([[1e6 + 0.1, 2.0], [5.0, 6.0]])
    w, mean, m2 = merge_moments(
        np.array([0.0, 0.0]), ma, np.ones((2, 2)), np.array([2.5, 0.0]), mb, np.ones((2, 2))
    )
    np.testing.assert_array_equal(w, [2.5, 0.0])
    np.testing.assert_array_equal(mean, mb)  # exactly, also where no set has weight
    np.testing.assert_array_equal(m2, 2.0)
    _, mean, m2 = merge_moments(np.array([1.0]), ma[:1], None, np.array([0.0]), mb[:1], None)
    np.testing.assert_array_equal(mean, ma[:1])
    assert m2 is None


# --- the compiled kernel against the NumPy path -------------------------------------------------


def _random_spd(rng, d):
    a = rng.normal(size=(d, d))
    return a @ a.T / d + np.diag(rng.uniform(0.5, 2.0, d))


def _random_problem(ct, n, d, k, seed, offset=0.0):
    rng = np.random.default_rng(seed)
    X = rng.normal(size=(n, d)) * rng.uniform(0.5, 3.0, d) + offset
    means = (X[rng.choice(n, k)] if n >= k else rng.normal(size=(k, d)) + offset) + 0.1
    cov = {
        "full": np.stack([_random_spd(rng, d) for _ in range(k)]),
        "tied": _random_spd(rng, d),
        "diag": rng.uniform(0.3, 3.0, (k, d)),
        "spherical": rng.uniform(0.3, 3.0, k),
    }[ct]
    weights = rng.dirichlet(np.ones(k))
    sw = rng.uniform(0.0, 3.0, n)
    sw[rng.random(n) < 0.1] = 0.0
    return X, sw, weights, means, gaussian.compute_precision_cholesky(cov, ct)


def _assert_same_stats(got, want, tol):
    assert got.n_rows == want.n_rows
    assert (got.n_bad, got.first_bad) == (want.n_bad, want.first_bad)
    assert got.weight == want.weight
    for field in ("nk", "means", "m2", "hard_nk"):
        a, b = getattr(got, field), getattr(want, field)
        if b is None:
            assert a is None, field
        elif b.size and np.any(b):
            assert_rel(a, b, tol, field)
        else:
            np.testing.assert_array_equal(a, b, err_msg=field)
    assert got.loglik == pytest.approx(want.loglik, rel=tol, abs=1e-300)
    np.testing.assert_array_equal(got.worst_index, want.worst_index)
    np.testing.assert_array_equal(got.worst_rows, want.worst_rows)
    np.testing.assert_allclose(got.worst_scores, want.worst_scores, rtol=tol)


@pytest.mark.parametrize("ct", COVARIANCE_TYPES)
@pytest.mark.parametrize(
    ("n", "d", "k", "offset", "block_rows"),
    [
        (1000, 5, 3, 0.0, None),
        (1000, 5, 3, 0.0, 7),  # many blocks, each of one short tile
        (2100, 16, 8, 0.0, 300),  # several tiles per block, a short last tile
        (517, 1, 1, 0.0, 64),  # D = 1, K = 1
        (600, 23, 13, 0.0, None),  # neither D nor K a multiple of the kernel's padding
        (300, 4, 6, 1e6, None),  # data far from the origin: centred at the mixture mean
        (3, 2, 5, 0.0, None),  # fewer rows than components
        (0, 3, 2, 0.0, None),  # an empty partition
    ],
)
@pytest.mark.parametrize("weighted", [False, True])
def test_compiled_kernel_equals_the_numpy_path(ct, n, d, k, offset, block_rows, weighted, monkeypatch):
    from gmm_dask.mixture import blocks

    X, sw, weights, means, pc = _random_problem(ct, n, d, k, seed=n + d + k, offset=offset)
    sw = sw if weighted else None
    kw = {"row_offset": 40, "block_rows": block_rows, "hard_counts": True}
    want = estep_stats(X, sw, weights, means, pc, ct, kernel="numpy", **kw)

    def no_numpy_path(*args, **kwargs):
        raise AssertionError("the NumPy path ran where the compiled kernel should have")

    monkeypatch.setattr(blocks, "blocks_numpy", no_numpy_path)
    got = estep_stats(X, sw, weights, means, pc, ct, **kw)
    _assert_same_stats(got, want, 1e-12)


@pytest.mark.parametrize("ct", COVARIANCE_TYPES)
def test_compiled_kernel_on_rows_without_a_finite_density(ct):
    # rows whose squared distance overflows, NaN rows, and a component of zero weight (log 0 =
    # −inf for every row): the compiled kernel flags and skips the same rows as the NumPy path
    X, sw, weights, means, pc = _random_problem(ct, 700, 3, 4, seed=9)
    X[[5, 300, 301]] = 1e160
    X[400, 1] = np.nan
    X[650] = -np.inf
    weights = np.array([0.5, 0.0, 0.3, 0.2])
    for w in (None, sw):
        got = estep_stats(X, w, weights, means, pc, ct, block_rows=128, hard_counts=True, row_offset=7)
        with np.errstate(all="ignore"):
            want = estep_stats(
                X, w, weights, means, pc, ct, block_rows=128, hard_counts=True, row_offset=7, kernel="numpy"
            )
        assert (got.n_bad, got.first_bad) == (5, 12)
        assert got.nk[1] == 0.0
        assert np.isfinite(got.means).all()
        assert np.isfinite(got.m2).all()
        _assert_same_stats(got, want, 1e-12)


@pytest.mark.parametrize("ct", ["full", "diag"])
def test_compiled_kernel_equals_the_textbook_e_step(ct):
    X, _, weights, means, pc = _random_problem(ct, 5000, 6, 4, seed=11, offset=50.0)
    got = estep_stats(X, None, weights, means, pc, ct)
    nk, mu, m2, loglik = _reference_stats(X, weights, means, pc, ct)
    assert_rel(got.nk, nk, 1e-12, "nk")
    assert_rel(got.means, mu, 1e-13, "means")
    want = m2 if got.m2.ndim == 3 else np.diagonal(m2, axis1=1, axis2=2)
    assert_rel(got.m2, want, 1e-11, "m2")
    assert got.loglik == pytest.approx(loglik, rel=1e-13)


def test_vectorised_exp_is_within_an_ulp_or_two_of_libm():
    from gmm_dask.mixture import _kernels

    rng = np.random.default_rng(12)
    edges = [0.0, -0.0, -1e-320, -708.0]
    libm = np.array([-708.4, -745.0, -745.9, np.nan, 1.5, np.inf])  # subnormal results, NaN, > 0
    zero = np.array([-746.5, -1e5, -np.inf])
    x = np.concatenate([-rng.uniform(0, 708, 200_000), -rng.uniform(0, 1e-3, 10_000), edges, zero, libm])
    out = np.empty_like(x)
    assert _kernels.exp_into(x, out) == len(libm)
    want = np.exp(x)
    np.testing.assert_array_equal(out[-len(libm) - len(zero) :], want[-len(libm) - len(zero) :])
    np.testing.assert_array_equal(out[-len(libm) - len(zero) - 4 : -len(libm) - len(zero) - 1], 1.0)
    fast = slice(0, -len(libm) - len(zero))
    assert np.max(np.abs(out[fast] - want[fast]) / np.spacing(want[fast])) <= 2.0


def test_kernel_warm_up_compiles_the_signature_the_e_step_uses():
    # in a fresh interpreter, so that no other test has compiled a signature already; numba's
    # JIT only (the module built ahead of time would take these calls: tests/test_aot.py)
    import os
    import subprocess
    import sys

    code = (
        "import numpy as np\n"
        "from gmm_dask.mixture import _kernels, gaussian\n"
        "from gmm_dask.mixture.suffstats import estep_stats\n"
        "assert _kernels.warm_up() >= 0.0\n"
        "assert len(_kernels.estep_tiles.signatures) == 1\n"
        "X = np.random.default_rng(0).normal(size=(50, 3))\n"
        "pc = gaussian.compute_precision_cholesky(np.stack([np.eye(3)] * 2), 'full')\n"
        "estep_stats(X, None, np.array([0.5, 0.5]), X[:2], pc, 'full', hard_counts=True)\n"
        "estep_stats(X, X[:, 0] ** 2, np.array([0.5, 0.5]), X[:2], pc, 'full')\n"
        "assert len(_kernels.estep_tiles.signatures) == 1, _kernels.estep_tiles.signatures\n"
    )
    env = {**os.environ, "GMM_DASK_KERNELS": "jit"}
    subprocess.run([sys.executable, "-c", code], check=True, timeout=300, env=env)


def test_compiled_kernel_takes_any_float_layout():
    X, sw, weights, means, pc = _random_problem("full", 900, 5, 3, seed=14)
    want = estep_stats(X, sw, weights, means, pc, "full", kernel="numpy")
    strided = np.zeros((len(X), 2 * X.shape[1]))
    strided[:, ::2] = X
    for Xv in (np.asfortranarray(X), strided[:, ::2], X.astype(np.float32)):
        ref = (
            want
            if Xv.dtype == np.float64
            else estep_stats(Xv, sw, weights, means, pc, "full", kernel="numpy")
        )
        _assert_same_stats(estep_stats(Xv, sw, weights, means, pc, "full"), ref, 1e-12)


@pytest.mark.parametrize("ct", COVARIANCE_TYPES)
def test_float32_mode_stays_close_to_float64(ct):
    # opt-in: features, products and log-densities in float32, every sum over rows in float64
    X, sw, weights, means, pc = _random_problem(ct, 4000, 7, 5, seed=15, offset=3.0)
    want = estep_stats(X, sw, weights, means, pc, ct, kernel="numpy")
    got = estep_stats(X, sw, weights, means, pc, ct, precision="float32")
    assert_rel(got.nk, want.nk, 1e-6, "nk")  # ~1e-7 measured
    assert_rel(got.means, want.means, 1e-6, "means")
    assert_rel(got.m2, want.m2, 1e-6, "m2")
    assert got.loglik == pytest.approx(want.loglik, rel=1e-7)
    assert got.loglik != want.loglik  # it did run in float32


def test_unknown_kernel_or_precision_is_refused():
    X, _, weights, means, pc = _random_problem("diag", 10, 2, 2, seed=16)
    with pytest.raises(ValueError, match="kernel must be 'auto' or 'numpy', got 'fast'"):
        estep_stats(X, None, weights, means, pc, "diag", kernel="fast")
    with pytest.raises(ValueError, match="precision must be 'float64' or 'float32', got 'float16'"):
        estep_stats(X, None, weights, means, pc, "diag", precision="float16")
