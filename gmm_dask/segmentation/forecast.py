"""Forecasting the next snapshot's segment shares, and scoring such forecasts on the past.

The model is the Markov chain on memberships of :mod:`gmm_dask.segmentation.markov` (its
docstring describes the ``transitions`` table, the fit and how a forecast is made over the
current segments). :func:`forecast_next` fits it on every step and forecasts the next snapshot.

**Backtest** (:func:`backtest`): for each of the last ``holdout`` snapshots, T is fitted on the
transitions that end at or before the snapshot before it, and its forecast is compared with
what happened, next to naive persistence (next = now). See :class:`Backtest` for the scores.

**The forecast earns its place** (:func:`choose_forecast`): the share forecast published is the
Markov chain's only when its backtest share MAE, averaged over the held-out snapshots, is lower
than persistence's; otherwise (worse, equal, or nothing held out to judge by) it is persistence,
next share = current share. :attr:`Forecast.method` says which, :attr:`Forecast.method_reason`
why, with the backtest's figures. The rule judges the shares only: the per-user forecast (γ · T,
:attr:`Forecast.matrix`) is the Markov chain's either way, scored by the backtest's user Brier.

Everything is pure pandas/NumPy in float64: no I/O, no Dask.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, replace
from typing import NotRequired, TypedDict

import numpy as np
import pandas as pd

from gmm_dask.mixture.arrays import FloatArray
from gmm_dask.segmentation.markov import (
    DEFAULT_PRIOR_USERS,
    HalfLife,
    check_options,
    check_shares,
    check_transitions,
    fit_transition_matrix,
    normalised,
    transition_matrix_on,
)

logger = logging.getLogger(__name__)

SCORES = ("share_mae", "share_tv", "user_brier")
METHODS = ("markov", "persistence")

#: Each score of :data:`SCORES` (None where it is not a finite number).
ScoreDigest = dict[str, float | None]


class BacktestSummary(TypedDict):
    """:meth:`Backtest.summary`: JSON values for a run summary."""

    held_out: list[str]
    counts: str
    half_life: HalfLife
    half_lives: dict[str, float | None]
    prior_users: float
    skipped: dict[str, str]
    reason: str | None
    markov: NotRequired[ScoreDigest]
    persistence: NotRequired[ScoreDigest]
    improvement: NotRequired[ScoreDigest]


class _ScoreRow(TypedDict):
    held_out: str
    method: str
    n_steps: int
    share_mae: float
    share_tv: float
    user_brier: float


# --- one-call forecast of the next snapshot ------------------------------------------------------


@dataclass(frozen=True)
class Forecast:
    """The next snapshot's shares forecast from the latest one.

    Attributes
    ----------
    shares : pandas.DataFrame
        Columns ``segment``, (``name``), ``now``, ``forecast``, ``change``, ``method``; empty
        with a reason.
    matrix : pandas.DataFrame, shape (K, K)
        The fitted Markov chain over the current ids (what the per-user forecast uses).
    n_steps : int
        Steps (pairs of snapshots) it was fitted on.
    half_life : float or None
        The recency half-life used (the chosen one under "auto").
    reason : str or None
        Why there is no forecast (None when there is one).
    method : {'markov', 'persistence'}
        What made ``shares.forecast``: s · T, or the current shares (:func:`choose_forecast`).
    method_reason : str or None
        Why that method, with the backtest's figures; None until :func:`choose_forecast` decided.
    """

    shares: pd.DataFrame
    matrix: pd.DataFrame
    n_steps: int
    half_life: float | None = None
    reason: str | None = None
    method: str = "markov"
    method_reason: str | None = None


def forecast_next(
    shares_now: pd.Series,
    transitions: pd.DataFrame,
    *,
    names: Mapping[int, str] | None = None,
    counts: str = "gamma_mass",
    half_life: HalfLife = "auto",
    prior_users: float = DEFAULT_PRIOR_USERS,
) -> Forecast:
    """Fit on every step of ``transitions`` and forecast the next snapshot from ``shares_now``.

    Parameters
    ----------
    shares_now : pandas.Series of float, length K
        The latest snapshot's shares (normalised here to sum to 1), indexed by segment id.
    transitions : pandas.DataFrame
        Past steps (see the module docstring); empty gives a :class:`Forecast` with a reason.
    names : mapping of int to str, optional
        Segment names for the table.
    counts, half_life, prior_users
        As in :func:`fit_transition_matrix`.

    Returns
    -------
    Forecast
    """
    check_options(counts, half_life, prior_users)
    s = normalised(check_shares(shares_now, "shares_now"), "shares_now")
    t = check_transitions(transitions, counts)
    if t.empty:
        return Forecast(
            pd.DataFrame(columns=["segment", "now", "forecast", "change", "method"]),
            pd.DataFrame(),
            0,
            reason="no transitions yet: a forecast needs at least two snapshots",
        )
    T = fit_transition_matrix(transitions, counts=counts, half_life=half_life, prior_users=prior_users)
    M = transition_matrix_on(T, s.index)
    f = s.to_numpy() @ M
    table = pd.DataFrame({"segment": s.index.to_numpy(), "now": s.to_numpy(), "forecast": f})
    table["change"] = table["forecast"] - table["now"]
    table["method"] = "markov"
    if names is not None:
        table.insert(1, "name", table["segment"].map(names))
    matrix = pd.DataFrame(M, index=s.index.rename("segment_from"), columns=s.index.rename("segment_to"))
    return Forecast(table, matrix, T.attrs["n_steps"], T.attrs["half_life"])


# --- backtest ------------------------------------------------------------------------------------


def _improvement(markov: float, persistence: float) -> float:
    """1 − markov / persistence; 0 when both are equal, NaN when persistence is 0 and markov not."""
    if markov == persistence:
        return 0.0
    if persistence == 0 or not (np.isfinite(markov) and np.isfinite(persistence)):
        return math.nan
    return 1.0 - markov / persistence


def expected_brier(step: pd.DataFrame, ids: Sequence[int], M: FloatArray | None) -> float:
    """Mean Brier score of the per-segment forecast over one observed step.

    With c[i, j] the step's counts (``count`` column: soft co-membership or hard users), the
    forecast for a user in segment i is q_i = row i of ``M`` (e_i for persistence, ``M=None``, and
    for an i outside ``ids``), and the score is

        Σ_ij c[i, j] · Σ_k (q_i[k] − 1[k = j])² / Σ_ij c[i, j],

    i.e. with soft counts the expected Brier score when a user's segment now is drawn from
    γ_from and next from γ_to. An outcome j outside ``ids`` (a segment born at the later date)
    gets forecast probability 0. Persistence scores 2 · (1 − Σ_i c[i, i] / Σ c).

    Parameters
    ----------
    step : pandas.DataFrame
        Columns ``segment_from``, ``segment_to``, ``count`` (one step).
    ids : sequence of int, length K
        The ids the forecast is over (the earlier snapshot's).
    M : numpy.ndarray of float, shape (K, K), or None
        From :func:`transition_matrix_on`; None scores persistence.

    Returns
    -------
    float
        NaN when the step has no counts.
    """
    c = step["count"].to_numpy(dtype=np.float64)
    total = c.sum()
    if not total > 0:
        return math.nan
    i, j = step["segment_from"].to_numpy(), step["segment_to"].to_numpy()
    if M is None:
        brier = np.where(i == j, 0.0, 2.0)
    else:
        pos = pd.Index(np.asarray(ids, dtype=np.int64))
        ri, rj = pos.get_indexer(i), pos.get_indexer(j)
        known = ri >= 0
        sq = (M**2).sum(axis=1)
        q_j = np.where(known & (rj >= 0), M[np.maximum(ri, 0), np.maximum(rj, 0)], 0.0)
        brier_known = sq[np.maximum(ri, 0)] - 2.0 * q_j + 1.0
        brier = np.where(known, brier_known, np.where(i == j, 0.0, 2.0))
    return float((c * brier).sum() / total)


@dataclass(frozen=True)
class Backtest:
    """Forecast vs actual for held-out snapshots, Markov against persistence.

    For each held-out snapshot d (with p the snapshot before it), T is fitted on the
    transitions with ``to_date`` ≤ p only; the Markov forecast of d's shares is s_p · T over p's
    ids (:func:`forecast_shares`), persistence's is s_p. Shares are normalised to sum to 1 per
    date and compared over the union of p's and d's ids (a segment absent on a date has share 0,
    so a birth at d counts as error for both methods).

    Attributes
    ----------
    shares : pandas.DataFrame
        One row per (held-out date, segment): ``held_out``, ``from_date``, ``segment``,
        (``name``), ``actual``, ``markov``, ``persistence``.
    scores : pandas.DataFrame
        One row per (held-out date, method): ``held_out``, ``method`` ('markov' or
        'persistence'), ``n_steps`` (steps the model was fitted on) and

        - ``share_mae``: mean over segments of |forecast − actual|;
        - ``share_tv``: total variation ½ Σ |forecast − actual|;
        - ``user_brier``: :func:`expected_brier` on the held-out step's own transitions (p → d),
          with the same ``counts`` column the model was fitted with; NaN if that step is absent.
    improvement : pandas.DataFrame
        ``held_out`` (each date, then 'mean'), and per score 1 − markov / persistence (the
        'mean' row uses the scores' means over the held-out dates): > 0 means Markov is better.
    counts, half_life, prior_users
        The options the models were fitted with (``half_life`` as requested, e.g. "auto").
    half_lives : dict of str to (float or None)
        The half-life each held-out date's model used (under "auto", chosen on its own
        training steps only).
    skipped : dict of str to str
        Held-out candidates that could not be scored, and why.
    reason : str or None
        Why nothing was scored (None when something was).
    """

    shares: pd.DataFrame
    scores: pd.DataFrame
    improvement: pd.DataFrame
    counts: str
    half_life: HalfLife
    prior_users: float
    half_lives: dict[str, float | None] = field(default_factory=dict)
    skipped: dict[str, str] = field(default_factory=dict)
    reason: str | None = None

    def mean_scores(self) -> pd.DataFrame:
        """Scores averaged over the held-out dates: index method, columns :data:`SCORES`."""
        return self.scores.groupby("method")[list(SCORES)].mean().reindex(list(METHODS))

    def summary(self) -> BacktestSummary:
        """A JSON-ready digest for a run summary: held-out dates, mean scores, improvements."""

        def num(value: float) -> float | None:
            x = float(value)
            return x if np.isfinite(x) else None

        out: BacktestSummary = {
            "held_out": sorted(self.shares["held_out"].unique().tolist()) if len(self.shares) else [],
            "counts": self.counts,
            "half_life": self.half_life,
            "half_lives": dict(self.half_lives),
            "prior_users": self.prior_users,
            "skipped": dict(self.skipped),
            "reason": self.reason,
        }
        if self.reason is None:
            means = self.mean_scores()
            out["markov"] = {s: num(means.loc["markov", s]) for s in SCORES}
            out["persistence"] = {s: num(means.loc["persistence", s]) for s in SCORES}
            row = self.improvement.set_index("held_out").loc["mean"]
            out["improvement"] = {s: num(row[s]) for s in SCORES}
        return out


def backtest(
    shares_by_date: Mapping[str, pd.Series],
    transitions: pd.DataFrame,
    holdout: int = 2,
    *,
    names: Mapping[int, str] | None = None,
    counts: str = "gamma_mass",
    half_life: HalfLife = "auto",
    prior_users: float = DEFAULT_PRIOR_USERS,
) -> Backtest:
    """Forecast each of the last ``holdout`` snapshots from the one before; score against persistence.

    Parameters
    ----------
    shares_by_date : mapping of str to pandas.Series of float
        Each snapshot's segment shares (or sizes; normalised per date), indexed by segment id;
        keys are ISO dates.
    transitions : pandas.DataFrame
        Every consecutive step available (see the module docstring). The model for held-out
        date d only sees steps with ``to_date`` ≤ the date before d; the step into d is used
        only to score ``user_brier``.
    holdout : int, default 2
        How many of the last snapshots to hold out. A candidate with no earlier step to fit on
        (the first two snapshots) is skipped, with the reason in :attr:`Backtest.skipped`.
    names : mapping of int to str, optional
        Segment names for :attr:`Backtest.shares`.
    counts, half_life, prior_users
        As in :func:`fit_transition_matrix`.

    Returns
    -------
    Backtest
        With empty tables and a ``reason`` when no held-out snapshot could be scored.
    """
    check_options(counts, half_life, prior_users)
    if int(holdout) != holdout or holdout < 1:
        msg = f"holdout must be a positive integer (snapshots held out), got {holdout!r}"
        raise ValueError(msg)
    t = check_transitions(transitions, counts)
    shares = {
        str(d): normalised(check_shares(s, f"shares of {d}"), f"shares of {d}")
        for d, s in shares_by_date.items()
    }
    dates = sorted(shares)
    share_rows: list[pd.DataFrame] = []
    score_rows: list[_ScoreRow] = []
    skipped: dict[str, str] = {}
    half_lives: dict[str, float | None] = {}
    for k in range(max(len(dates) - int(holdout), 0), len(dates)):
        d = dates[k]
        if k == 0:
            skipped[d] = "first snapshot: nothing before it to forecast from"
            continue
        p = dates[k - 1]
        train = t[t["to_date"] <= p]
        if train.empty:
            skipped[d] = f"no transitions ending on or before {p} to fit on"
            continue
        fit_on = train.rename(columns={"count": counts})
        T = fit_transition_matrix(fit_on, counts=counts, half_life=half_life, prior_users=prior_users)
        half_lives[d] = T.attrs["half_life"]
        frame, M = _held_out_shares(T, shares[p], shares[d], p, d, names)
        share_rows.append(frame)
        step = t[(t["from_date"] == p) & (t["to_date"] == d)]
        score_rows += _scores(d, frame, M, step, shares[p].index, int(train["to_date"].nunique()))
    result = Backtest(
        *_tables(share_rows, score_rows),
        counts=counts,
        half_life=half_life,
        prior_users=prior_users,
        half_lives=half_lives,
        skipped=skipped,
        reason=None if score_rows else _nothing_to_backtest(len(dates)),
    )
    if score_rows:
        _log_improvement(result)
    return result


def _nothing_to_backtest(n_dates: int) -> str:
    return (
        f"nothing to backtest: {n_dates} snapshot(s); a held-out snapshot needs two snapshots "
        "before it (one step to fit on, one to forecast from)"
    )


def _log_improvement(result: Backtest) -> None:
    improvement = result.summary().get("improvement", {})
    logger.info(
        "forecast backtest on %d held-out snapshot(s): improvement over persistence %s",
        result.scores["held_out"].nunique(),
        {s: round(v, 4) if v is not None else None for s, v in improvement.items()},
    )


def _held_out_shares(
    T: pd.DataFrame,
    s_p: pd.Series,
    s_d: pd.Series,
    p: str,
    d: str,
    names: Mapping[int, str] | None,
) -> tuple[pd.DataFrame, FloatArray]:
    """Actual, Markov and persistence shares of held-out date ``d`` forecast from ``p``, over the
    union of both dates' ids (0 where a segment is absent), and the matrix T over ``p``'s ids."""
    M = transition_matrix_on(T, s_p.index)
    union = s_p.index.union(s_d.index)
    frame = pd.DataFrame(
        {
            "held_out": d,
            "from_date": p,
            "segment": union.to_numpy(),
            "actual": s_d.reindex(union, fill_value=0.0).to_numpy(),
            "markov": pd.Series(s_p.to_numpy() @ M, index=s_p.index)
            .reindex(union, fill_value=0.0)
            .to_numpy(),
            "persistence": s_p.reindex(union, fill_value=0.0).to_numpy(),
        }
    )
    if names is not None:
        frame.insert(3, "name", frame["segment"].map(names))
    return frame, M


def _scores(
    d: str, frame: pd.DataFrame, M: FloatArray, step: pd.DataFrame, ids: pd.Index, n_steps: int
) -> list[_ScoreRow]:
    """Both methods' scores of held-out date ``d`` (``step``: its own transitions, p → d)."""
    rows: list[_ScoreRow] = []
    for method, Mm in (("markov", M), ("persistence", None)):
        err = np.abs(frame[method].to_numpy() - frame["actual"].to_numpy())
        rows.append(
            {
                "held_out": d,
                "method": method,
                "n_steps": n_steps,
                "share_mae": float(err.mean()),
                "share_tv": float(0.5 * err.sum()),
                "user_brier": expected_brier(step, ids, Mm),
            }
        )
    return rows


def _tables(
    share_rows: list[pd.DataFrame], score_rows: list[_ScoreRow]
) -> tuple[pd.DataFrame, pd.DataFrame, pd.DataFrame]:
    """The backtest's shares, scores and improvement tables (empty, with their columns, when
    nothing was scored)."""
    if not score_rows:
        return (
            pd.DataFrame(columns=["held_out", "from_date", "segment", "actual", "markov", "persistence"]),
            pd.DataFrame(columns=["held_out", "method", "n_steps", *SCORES]),
            pd.DataFrame(columns=["held_out", *SCORES]),
        )
    scores = pd.DataFrame(score_rows)
    wide = scores.pivot(index="held_out", columns="method", values=list(SCORES))
    imp: list[dict[str, object]] = [
        {
            "held_out": d,
            **{s: _improvement(wide.loc[d, (s, "markov")], wide.loc[d, (s, "persistence")]) for s in SCORES},
        }
        for d in wide.index
    ]
    means = scores.groupby("method")[list(SCORES)].mean()
    imp.append(
        {
            "held_out": "mean",
            **{s: _improvement(means.loc["markov", s], means.loc["persistence", s]) for s in SCORES},
        }
    )
    return pd.concat(share_rows, ignore_index=True), scores, pd.DataFrame(imp)


# --- the published forecast: Markov only where it beat persistence ------------------------------

#: A Markov MAE must be lower than persistence's by more than this (float noise) to be "better".
_MAE_NOISE = 1e-12


def forecast_method(bt: Backtest | None) -> tuple[str, str]:
    """Which share forecast to publish, and why, from the backtest on held-out snapshots.

    'markov' when the Markov forecast's share MAE, averaged over the held-out snapshots, is lower
    than persistence's; 'persistence' when it is not (worse or equal) and when nothing was held
    out to judge by (``bt`` None or with a ``reason``).

    Parameters
    ----------
    bt : Backtest or None
        From :func:`backtest`.

    Returns
    -------
    method : {'markov', 'persistence'}
    reason : str
        Starts with the method, then the figures (MAE in percentage points) and the dates.
    """
    if bt is None or bt.reason is not None:
        why = "no backtest was run" if bt is None else bt.reason
        return "persistence", f"persistence: the Markov forecast has no backtest to earn its place ({why})"
    means = bt.mean_scores()["share_mae"]
    markov, persistence = float(means["markov"]), float(means["persistence"])
    dates = sorted(str(d) for d in bt.scores["held_out"].unique())
    figures = (
        f"the Markov forecast's backtest share MAE {100 * markov:.3g} pp {{verdict}} persistence's "
        f"{100 * persistence:.3g} pp on {len(dates)} held-out snapshot(s) ({', '.join(dates)})"
    )
    if markov < persistence - _MAE_NOISE:
        return "markov", "markov: " + figures.format(verdict="beat")
    verdict = "was worse than" if markov > persistence else "was no better than"
    return "persistence", "persistence: " + figures.format(verdict=verdict)


def choose_forecast(forecast: Forecast, bt: Backtest | None) -> Forecast:
    """The share forecast to publish: ``forecast`` where its backtest beat persistence, else persistence.

    Parameters
    ----------
    forecast : Forecast
        From :func:`forecast_next`; one without a forecast (a ``reason``) is returned as is.
    bt : Backtest or None
        Its backtest (:func:`backtest`, fitted with the same options); see :func:`forecast_method`.

    Returns
    -------
    Forecast
        With ``method`` and ``method_reason`` set. Under persistence ``shares.forecast`` is
        ``shares.now`` and ``change`` is 0; ``matrix`` stays the fitted chain.
    """
    if forecast.reason is not None:
        return forecast
    method, why = forecast_method(bt)
    logger.info("share forecast: %s", why)
    shares = forecast.shares
    if method == "persistence":
        shares = shares.assign(forecast=shares["now"], change=0.0, method="persistence")
    return replace(forecast, shares=shares, method=method, method_reason=why)
