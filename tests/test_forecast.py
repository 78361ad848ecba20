"""The Markov forecast of segment shares and memberships, and its backtest against persistence."""

from __future__ import annotations

import datetime as dt
import itertools
import re

import numpy as np
import pandas as pd
import pytest

from gmm_dask.segmentation.forecast import (
    backtest,
    choose_forecast,
    expected_brier,
    forecast_method,
    forecast_next,
)
from gmm_dask.segmentation.markov import (
    fit_transition_matrix,
    forecast_shares,
    forecast_users,
    select_half_life,
    step_weights,
    transition_matrix_on,
)

T_TRUE = np.array(
    [
        [0.90, 0.06, 0.03, 0.01],
        [0.05, 0.85, 0.05, 0.05],
        [0.02, 0.08, 0.80, 0.10],
        [0.00, 0.10, 0.10, 0.80],
    ]
)
IDS = [3, 5, 8, 13]  # stable ids need not be 0..K-1


def _dates(n: int) -> list[str]:
    d0 = dt.date(2026, 1, 1)
    return [(d0 + dt.timedelta(days=i)).isoformat() for i in range(n)]


def _table(counts: np.ndarray, ids, a: str, b: str) -> pd.DataFrame:
    i, j = np.meshgrid(np.arange(len(ids)), np.arange(len(ids)), indexing="ij")
    return pd.DataFrame(
        {
            "from_date": a,
            "to_date": b,
            "segment_from": np.asarray(ids)[i.ravel()],
            "segment_to": np.asarray(ids)[j.ravel()],
            "n_users": np.rint(counts.ravel()).astype(np.int64),
            "gamma_mass": counts.ravel().astype(np.float64),
        }
    )


def _sampled_chain(T, start, n_users, n_steps, seed, ids=IDS):
    """Users moving by the chain T (hard, so n_users == gamma_mass): transitions and shares."""
    rng = np.random.default_rng(seed)
    K = len(ids)
    state = rng.choice(K, size=n_users, p=start)
    dates = _dates(n_steps + 1)
    shares = {dates[0]: pd.Series(np.bincount(state, minlength=K) / n_users, index=ids)}
    tables = []
    cum = np.cumsum(T, axis=1)
    for a, b in itertools.pairwise(dates):
        nxt = np.minimum((rng.random(n_users)[:, None] > cum[state]).sum(axis=1), K - 1)
        counts = np.zeros((K, K))
        np.add.at(counts, (state, nxt), 1)
        tables.append(_table(counts, ids, a, b))
        state = nxt
        shares[b] = pd.Series(np.bincount(state, minlength=K) / n_users, index=ids)
    return pd.concat(tables, ignore_index=True), shares


def _expected_chain(Ts, start, n_users, ids=IDS):
    """The chain's expected counts, step by step (no sampling noise): one matrix per step."""
    dates = _dates(len(Ts) + 1)
    s = np.asarray(start, dtype=np.float64)
    shares = {dates[0]: pd.Series(s, index=ids)}
    tables = []
    for T, a, b in zip(Ts, dates, dates[1:], strict=False):
        tables.append(_table(n_users * s[:, None] * T, ids, a, b))
        s = s @ T
        shares[b] = pd.Series(s, index=ids)
    return pd.concat(tables, ignore_index=True), shares


# --- the estimate ---------------------------------------------------------------------------------


def test_the_estimated_matrix_recovers_a_known_chain():
    tr, _ = _sampled_chain(T_TRUE, [0.4, 0.3, 0.2, 0.1], n_users=20_000, n_steps=6, seed=1)
    T = fit_transition_matrix(tr, half_life=None, prior_users=0.0)
    assert list(T.index) == list(T.columns) == IDS
    np.testing.assert_allclose(T.sum(axis=1), 1.0, rtol=0, atol=1e-12)
    # every entry within 5 binomial standard errors of the truth, given its row's pooled users
    row_users = tr.groupby("segment_from").n_users.sum().reindex(IDS).to_numpy()
    se = np.sqrt(T_TRUE * (1 - T_TRUE) / row_users[:, None])
    assert (np.abs(T.to_numpy() - T_TRUE) <= 5 * se + 1e-12).all(), np.abs(T.to_numpy() - T_TRUE) / (
        se + 1e-12
    )
    hard = fit_transition_matrix(tr, counts="n_users", half_life=None, prior_users=0.0)
    np.testing.assert_allclose(hard, T)  # one-hot memberships: soft and hard counts agree


def test_recency_weights_halve_per_half_life_and_follow_a_chain_that_changed():
    w = step_weights(["2026-01-03", "2026-01-02", "2026-01-04", "2026-01-03"], half_life=1.0)
    np.testing.assert_allclose(w.to_numpy(), [0.25, 0.5, 1.0])
    assert list(w.index) == ["2026-01-02", "2026-01-03", "2026-01-04"]
    # two steps, the older counts A, the latest B: half-life 1 pools 0.5 A + B
    A, B = np.array([[8.0, 2.0], [4.0, 6.0]]), np.array([[1.0, 9.0], [0.0, 10.0]])
    tr = pd.concat([_table(A, [0, 1], "d0", "d1"), _table(B, [0, 1], "d1", "d2")])
    C = 0.5 * A + B
    np.testing.assert_allclose(
        fit_transition_matrix(tr, half_life=1.0, prior_users=0.0), C / C.sum(1, keepdims=True)
    )
    # a chain that changed three steps ago: a short memory follows the new regime
    T2 = np.array([[0.6, 0.4, 0.0, 0.0], [0.0, 0.6, 0.4, 0.0], [0.0, 0.0, 0.6, 0.4], [0.4, 0.0, 0.0, 0.6]])
    tr, _ = _expected_chain([T_TRUE] * 8 + [T2] * 3, [0.25] * 4, n_users=10_000)
    pooled = fit_transition_matrix(tr, half_life=None, prior_users=0.0).to_numpy()
    recent = fit_transition_matrix(tr, half_life=1.0, prior_users=0.0).to_numpy()
    assert np.abs(recent - T2).max() < 0.5 * np.abs(pooled - T2).max()
    assert np.abs(recent - T2).max() < 0.1


def test_the_prior_makes_rows_with_little_data_behave_like_persistence():
    counts = np.array([[5000.0, 5000.0, 0.0], [0.0, 0.0, 2.0], [0.0, 0.0, 0.0]])
    T = fit_transition_matrix(_table(counts, [0, 1, 2], "d0", "d1"), prior_users=10.0)
    np.testing.assert_allclose(T.loc[0], [5010 / 10010, 5000 / 10010, 0.0])  # barely moved
    np.testing.assert_allclose(T.loc[1], [0.0, 10 / 12, 2 / 12])  # two users: mostly stays
    np.testing.assert_allclose(T.loc[2], [0.0, 0.0, 1.0])  # no users: persistence


def test_auto_half_life_is_short_after_a_change_and_longest_when_nothing_moves():
    T2 = np.array([[0.5, 0.5, 0.0, 0.0], [0.0, 0.5, 0.5, 0.0], [0.0, 0.0, 0.5, 0.5], [0.5, 0.0, 0.0, 0.5]])
    tr, _ = _expected_chain([T_TRUE] * 8 + [T2] * 4, [0.25] * 4, n_users=10_000)
    h, table = select_half_life(tr, prior_users=0.0)
    assert h == 0.5, table
    assert table.share_tv.min() < table.share_tv.max()
    still, _ = _expected_chain([np.eye(4)] * 6, [0.4, 0.3, 0.2, 0.1], n_users=10_000)
    h, table = select_half_life(still)
    assert h is None, table  # every half-life forecasts perfectly: the longest memory is kept
    assert (table.share_tv < 1e-12).all()
    one_step, _ = _expected_chain([T_TRUE], [0.25] * 4, n_users=100)
    h, table = select_half_life(one_step)
    assert h is None  # nothing to validate, and with one step every half-life fits the same
    assert table.empty
    assert fit_transition_matrix(tr).attrs["half_life"] == 0.5


# --- forecasting ---------------------------------------------------------------------------------


def test_shares_forecast_is_shares_times_T_and_users_rows_sum_to_one():
    tr, shares = _sampled_chain(T_TRUE, [0.4, 0.3, 0.2, 0.1], n_users=5_000, n_steps=3, seed=2)
    T = fit_transition_matrix(tr)
    s = shares[max(shares)]
    f = forecast_shares(s, T)
    np.testing.assert_allclose(f.to_numpy(), s.to_numpy() @ T.loc[IDS, IDS].to_numpy(), rtol=1e-12)
    assert list(f.index) == IDS
    assert f.sum() == pytest.approx(1.0, abs=1e-12)
    gamma = np.random.default_rng(3).dirichlet(np.ones(4) * 0.3, size=500)
    order = [13, 3, 8, 5]  # any column order
    p = forecast_users(gamma, order, T)
    assert p.shape == (500, 4)
    assert p.dtype == np.float64
    np.testing.assert_allclose(p.sum(axis=1), 1.0, atol=1e-12)
    np.testing.assert_allclose(p, gamma @ T.loc[order, order].to_numpy(), rtol=1e-12)
    with pytest.raises(ValueError, match=re.escape("gamma must have shape (n, 4)")):
        forecast_users(gamma[:, :3], order, T)


def test_retired_segments_get_nothing_and_births_persist():
    T = pd.DataFrame(
        [[0.7, 0.2, 0.1], [0.1, 0.6, 0.3], [0.5, 0.25, 0.25]],
        index=[3, 5, 9],
        columns=[3, 5, 9],
    )
    # 9 retired, 12 born; the current order is the caller's
    M = transition_matrix_on(T, [5, 3, 12])
    np.testing.assert_allclose(
        M, [[0.6 / 0.7, 0.1 / 0.7, 0.0], [0.2 / 0.9, 0.7 / 0.9, 0.0], [0.0, 0.0, 1.0]], rtol=1e-12
    )
    s = pd.Series([0.5, 0.3, 0.2], index=[5, 3, 12])
    f = forecast_shares(s, T)
    assert list(f.index) == [5, 3, 12]  # nothing forecast for the retired id
    assert f.sum() == pytest.approx(1.0, abs=1e-12)
    assert f.loc[12] == pytest.approx(0.2, abs=1e-15)  # the birth keeps its share
    # a row whose whole mass went to retired ids persists
    only_retired = pd.DataFrame([[0.0, 1.0], [0.0, 1.0]], index=[1, 2], columns=[1, 2])
    np.testing.assert_allclose(transition_matrix_on(only_retired, [1]), [[1.0]])
    # a segment born in the latest step has no outgoing history: persistence
    tr = _table(np.array([[90.0, 10.0], [0.0, 0.0]]), [4, 7], "d0", "d1")
    np.testing.assert_allclose(fit_transition_matrix(tr).loc[7], [0.0, 1.0])


def test_forecast_next_reports_the_forecast_or_why_there_is_none():
    tr, shares = _sampled_chain(T_TRUE, [0.4, 0.3, 0.2, 0.1], n_users=5_000, n_steps=3, seed=4)
    last = shares[max(shares)]
    fc = forecast_next(last * 5_000, tr, names={3: "a", 5: "b", 8: "c", 13: "d"})  # sizes normalised
    assert fc.reason is None
    assert fc.n_steps == 3
    assert list(fc.shares.columns) == ["segment", "name", "now", "forecast", "change", "method"]
    assert fc.method == "markov"
    assert (fc.shares.method == "markov").all()
    assert fc.method_reason is None  # not yet judged by a backtest
    np.testing.assert_allclose(fc.shares.now, last.to_numpy())
    np.testing.assert_allclose(
        fc.shares.forecast, forecast_shares(last, fit_transition_matrix(tr)).to_numpy()
    )
    none = forecast_next(last, tr.iloc[:0])
    assert none.reason == "no transitions yet: a forecast needs at least two snapshots"
    assert none.shares.empty
    assert choose_forecast(none, None) is none  # nothing to choose between
    with pytest.raises(ValueError, match="a forecast needs at least two snapshots"):
        fit_transition_matrix(tr.iloc[:0])


def test_bad_input_is_refused_with_the_column_and_the_fix():
    tr, _ = _sampled_chain(T_TRUE, [0.25] * 4, n_users=100, n_steps=1, seed=0)
    with pytest.raises(ValueError, match=re.escape("lacks column(s) ['gamma_mass']")):
        fit_transition_matrix(tr.drop(columns="gamma_mass"))
    bad = tr.assign(gamma_mass=tr.gamma_mass.where(tr.index != 2, -1.0))
    with pytest.raises(ValueError, match=re.escape("'gamma_mass' must be finite and >= 0; got -1.0 for")):
        fit_transition_matrix(bad)
    with pytest.raises(ValueError, match="counts must be one of"):
        fit_transition_matrix(tr, counts="users")
    with pytest.raises(ValueError, match="half_life must be a positive number"):
        fit_transition_matrix(tr, half_life=0)
    with pytest.raises(ValueError, match="segment ids must be unique"):
        forecast_shares(pd.Series([0.5, 0.5], index=[1, 1]), fit_transition_matrix(tr))


# --- scoring and the backtest ---------------------------------------------------------------------


def test_expected_brier_is_the_count_weighted_brier_of_each_rows_forecast():
    step = pd.DataFrame(
        {"segment_from": [0, 0, 1, 1], "segment_to": [0, 1, 1, 2], "count": [8.0, 2.0, 10.0, 0.0]}
    )
    M = np.array([[0.8, 0.2], [0.0, 1.0]])
    # (8·Brier([.8,.2], e0) + 2·Brier([.8,.2], e1) + 10·0) / 20 = (8·0.08 + 2·1.28) / 20
    assert expected_brier(step, [0, 1], M) == pytest.approx(0.16, abs=1e-12)
    assert expected_brier(step, [0, 1], None) == pytest.approx(2 * 2 / 20, abs=1e-12)
    born = step.assign(segment_to=[0, 1, 2, 2], count=[8.0, 2.0, 0.0, 10.0])
    # 10 users went to segment 2, born at the later date: forecast probability 0 → 1 + Σq² = 2
    assert expected_brier(born, [0, 1], M) == pytest.approx((8 * 0.08 + 2 * 1.28 + 10 * 2.0) / 20)


def test_backtest_on_a_steady_drift_beats_persistence():
    # 5 % of segment 3 move to 5 each step on top of symmetric churn: the shares keep drifting
    churn = 0.02
    T = np.full((4, 4), churn) + np.eye(4) * (1 - 4 * churn)
    T[0, 0] -= 0.05
    T[0, 1] += 0.05
    tr, shares = _sampled_chain(T, [0.55, 0.15, 0.15, 0.15], n_users=20_000, n_steps=10, seed=5)
    bt = backtest(shares, tr, holdout=3)
    assert bt.reason is None
    assert sorted(bt.half_lives) == sorted(shares)[-3:]
    means = bt.mean_scores()
    for score in ("share_mae", "share_tv"):
        assert means.loc["markov", score] < 0.5 * means.loc["persistence", score], (score, means)
    assert means.loc["markov", "user_brier"] < means.loc["persistence", "user_brier"], means
    summary = bt.summary()
    assert summary["held_out"] == sorted(shares)[-3:]
    assert summary["improvement"]["share_mae"] > 0.5
    assert set(bt.scores.columns) >= {"held_out", "method", "share_mae", "share_tv", "user_brier"}
    assert set(bt.shares.columns) == {"held_out", "from_date", "segment", "actual", "markov", "persistence"}
    # the chain earned its place: the published forecast is the Markov one, and says why
    fc = choose_forecast(forecast_next(shares[max(shares)], tr), bt)
    assert fc.method == "markov"
    assert fc.method_reason.startswith("markov: the Markov forecast's backtest share MAE ")
    assert f"beat persistence's {100 * means.loc['persistence', 'share_mae']:.3g} pp" in fc.method_reason
    assert f"on 3 held-out snapshot(s) ({', '.join(sorted(shares)[-3:])})" in fc.method_reason
    np.testing.assert_allclose(fc.shares.forecast, forecast_next(shares[max(shares)], tr).shares.forecast)
    assert not np.allclose(fc.shares.forecast, fc.shares.now)
    # the model for a held-out date never saw the step into it: dropping that step changes
    # nothing but the user Brier score, which is computed on it
    d = sorted(shares)[-1]
    blind = backtest(shares, tr[tr.to_date != d], holdout=1)
    full = backtest(shares, tr, holdout=1)
    pd.testing.assert_frame_equal(blind.shares, full.shares)
    assert blind.scores.user_brier.isna().all()
    assert full.scores.user_brier.notna().all()


def test_backtest_on_a_chain_where_nothing_changes_scores_both_methods_equal():
    tr, shares = _expected_chain([np.eye(4)] * 6, [0.4, 0.3, 0.2, 0.1], n_users=10_000)
    bt = backtest(shares, tr, holdout=3)
    wide = bt.scores.pivot(index="held_out", columns="method")
    for score in ("share_mae", "share_tv", "user_brier"):
        np.testing.assert_allclose(wide[(score, "markov")], wide[(score, "persistence")], atol=1e-15)
    assert (bt.improvement[["share_mae", "share_tv", "user_brier"]] == 0.0).all().all()
    method, why = forecast_method(bt)  # a tie is not better: persistence is published
    assert method == "persistence"
    assert why.startswith("persistence: the Markov forecast's backtest share MAE 0 pp was no better than")


def steady_market() -> tuple[pd.DataFrame, dict[str, pd.Series], list[str]]:
    """(transitions, shares by date, dates): stable shares while the transitions say users move,
    in a new random direction at every step — the chain forecasts a drift that does not happen."""
    rng = np.random.default_rng(11)
    pi = np.array([0.4, 0.3, 0.2, 0.1])
    dates = _dates(9)
    shares, tables = {}, []
    for d in dates:
        s = pi + rng.normal(0.0, 0.002, size=4)
        shares[d] = pd.Series(s / s.sum(), index=IDS)
    for a, b in itertools.pairwise(dates):
        noise = rng.dirichlet(np.ones(4), size=4)  # rows: where the movers of each segment go
        T = 0.9 * np.eye(4) + 0.1 * noise
        tables.append(_table(10_000 * shares[a].to_numpy()[:, None] * T, IDS, a, b))
    return pd.concat(tables, ignore_index=True), shares, dates


def test_where_the_chain_forecasts_worse_than_persistence_the_published_forecast_is_persistence():
    """Stable shares (a steady market: each date's shares are the same composition up to small
    measurement noise) while the transitions say users move, in a different random direction at
    every step (noisy co-membership): the chain forecasts a drift that does not happen, and its
    backtest says so. The published share forecast is then the current shares."""
    tr, shares, dates = steady_market()
    bt = backtest(shares, tr, holdout=3)
    means = bt.mean_scores()["share_mae"]
    assert means["markov"] > means["persistence"], means  # the premise: the chain is worse here
    markov = forecast_next(shares[dates[-1]], tr)
    fc = choose_forecast(markov, bt)
    assert fc.method == "persistence"
    assert (fc.shares.method == "persistence").all()
    np.testing.assert_array_equal(fc.shares.forecast, fc.shares.now)
    np.testing.assert_allclose(fc.shares.now, shares[dates[-1]].to_numpy(), rtol=1e-12)
    assert (fc.shares.change == 0.0).all()
    assert not np.allclose(markov.shares.forecast, markov.shares.now)  # the chain would have moved them
    pd.testing.assert_frame_equal(fc.matrix, markov.matrix)  # the per-user forecast keeps the chain
    assert fc.method_reason == (
        f"persistence: the Markov forecast's backtest share MAE {100 * means['markov']:.3g} pp was worse "
        f"than persistence's {100 * means['persistence']:.3g} pp on 3 held-out snapshot(s) "
        f"({', '.join(dates[-3:])})"
    )
    # without a backtest that scored something, the chain has not earned its place either
    for untested in (None, backtest({dates[0]: shares[dates[0]]}, tr.iloc[:0])):
        method, why = forecast_method(untested)
        assert method == "persistence"
        assert why.startswith("persistence: the Markov forecast has no backtest to earn its place (")


def test_in_equilibrium_shares_tie_and_the_user_forecast_still_wins():
    """At the stationary distribution the shares do not move (persistence is exact) but users do:
    the Markov row forecast scores the Brier of the true chain, Σ_i π_i (1 − Σ_j T_ij²), better
    than predicting that everyone stays, 2 Σ_i π_i (1 − T_ii)."""
    w, v = np.linalg.eig(T_TRUE.T)
    pi = np.real(v[:, np.argmin(np.abs(w - 1))])
    pi /= pi.sum()
    tr, shares = _expected_chain([T_TRUE] * 5, pi, n_users=10_000)
    bt = backtest(shares, tr, holdout=2, prior_users=0.0)
    means = bt.mean_scores()
    assert means.loc["markov", "share_mae"] == pytest.approx(0.0, abs=1e-12)
    assert means.loc["persistence", "share_mae"] == pytest.approx(0.0, abs=1e-12)
    assert means.loc["markov", "user_brier"] == pytest.approx(pi @ (1 - (T_TRUE**2).sum(axis=1)), rel=1e-12)
    assert means.loc["persistence", "user_brier"] == pytest.approx(2 * pi @ (1 - np.diag(T_TRUE)), rel=1e-12)
    assert bt.summary()["improvement"]["user_brier"] > 0


def test_backtest_without_enough_snapshots_says_why():
    one = {"2026-01-01": pd.Series([0.5, 0.5], index=[0, 1])}
    empty = pd.DataFrame(
        columns=["from_date", "to_date", "segment_from", "segment_to", "n_users", "gamma_mass"]
    )
    bt = backtest(one, empty)
    assert bt.reason.startswith("nothing to backtest: 1 snapshot(s)")
    assert bt.scores.empty
    assert bt.shares.empty
    summary = bt.summary()
    assert summary["reason"] == bt.reason
    assert "improvement" not in summary
    tr, shares = _sampled_chain(T_TRUE, [0.25] * 4, n_users=1000, n_steps=3, seed=6)
    bt = backtest(shares, tr, holdout=10)  # 4 snapshots: only the last two can be scored
    assert sorted(bt.skipped) == sorted(shares)[:2]
    assert (
        bt.skipped[sorted(shares)[1]] == f"no transitions ending on or before {sorted(shares)[0]} to fit on"
    )
    assert sorted(bt.scores.held_out.unique()) == sorted(shares)[2:]


def test_a_segment_in_the_shares_but_never_in_the_transitions_persists():
    tr, shares = _sampled_chain(T_TRUE, [0.25] * 4, n_users=4000, n_steps=4, seed=7)
    last = max(shares)
    with_new = pd.concat([shares[last] * 0.9, pd.Series([0.1], index=[99])])
    f = forecast_shares(with_new, fit_transition_matrix(tr))
    assert f.loc[99] == pytest.approx(0.1, abs=1e-15)
    assert f.sum() == pytest.approx(1.0, abs=1e-12)


# --- the demo's drifting scenario, segmented by the library -------------------------------------


def test_on_the_drifting_demo_the_forecast_beats_persistence(tmp_path):
    """The drifting demo, segmented by a mixture fitted on its first snapshot and scoring every
    later one (so segment ids are aligned by construction); the transitions are built from those
    memberships exactly as the transitions table defines them, never from the generator's truth.
    The last three snapshots are held out."""
    from gmm_dask.demo import FEATURES, DemoSpec, write_demo_dataset
    from gmm_dask.mixture.estimator import GaussianMixture

    spec = DemoSpec.drifting(n_users=12_000, block_users=6_000)
    write_demo_dataset(tmp_path, spec)
    snaps = {
        d: pd.read_parquet(tmp_path / "snapshots" / f"dt={d}").set_index("user_id")[list(FEATURES)]
        for d in spec.dates
    }
    X0 = np.log1p(snaps[spec.dates[0]].to_numpy(np.float64))
    mean, scale = X0.mean(axis=0), X0.std(axis=0)
    # counts are mostly exact zeros (ghosts are all-zero rows): a variance floor keeps a
    # component from collapsing on a point
    gm = GaussianMixture(5, reg_covar=1e-2, random_state=0).fit((X0 - mean) / scale)
    gamma = {
        d: pd.DataFrame(gm.predict_proba((np.log1p(x.to_numpy(np.float64)) - mean) / scale), index=x.index)
        for d, x in snaps.items()
    }
    ids = np.arange(5)
    tables = []
    for a, b in itertools.pairwise(spec.dates):
        both = gamma[a].index.intersection(gamma[b].index)
        ga, gb = gamma[a].loc[both].to_numpy(), gamma[b].loc[both].to_numpy()
        hard = np.zeros((5, 5))
        np.add.at(hard, (ga.argmax(axis=1), gb.argmax(axis=1)), 1)
        t = _table(ga.T @ gb, ids, a, b).assign(n_users=hard.ravel().astype(np.int64))
        tables.append(t)
    transitions = pd.concat(tables, ignore_index=True)
    np.testing.assert_allclose(transitions.groupby("to_date").gamma_mass.sum(), spec.n_users)
    shares = {d: pd.Series(g.to_numpy().mean(axis=0), index=ids) for d, g in gamma.items()}

    bt = backtest(shares, transitions, holdout=3)
    imp = bt.summary()["improvement"]
    means = bt.mean_scores()
    msg = (
        f"improvement over persistence: share MAE {imp['share_mae']:.1%}, user Brier "
        f"{imp['user_brier']:.1%} (half-lives {bt.half_lives}); mean scores\n{means}"
    )
    assert imp["share_mae"] > 0, msg
    assert imp["user_brier"] > 0, msg
    assert (bt.improvement.set_index("held_out")[["share_mae", "user_brier"]] > 0).all().all(), msg
    assert forecast_method(bt)[0] == "markov", msg
    hard = backtest(shares, transitions, holdout=3, counts="n_users").summary()["improvement"]
    assert hard["user_brier"] > 0, hard
