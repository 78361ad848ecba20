"""The run page and the report say which share forecast the run published — the Markov
forecast where its backtest beat persistence, else persistence — and why, with the backtest's
figures; the forecast chart's caption and legend follow that method."""

from __future__ import annotations

import html
import re
from types import SimpleNamespace

import numpy as np
import pandas as pd
import pytest

from gmm_dask.app.jobs.results import _forecast_frame
from gmm_dask.report.html import html_report
from gmm_dask.report.markdown import markdown_summary
from gmm_dask.segmentation.forecast import backtest, choose_forecast, forecast_next

from .test_forecast import _sampled_chain, steady_market
from .test_report import _charts, make_data

IDS = [0, 1, 2, 3]  # make_data's segment ids for k=4


def _drifting_chain():
    """5 % of segment 0 move to 1 each step on top of symmetric churn: the shares keep drifting,
    which the chain forecasts and persistence does not."""
    churn = 0.02
    T = np.full((4, 4), churn) + np.eye(4) * (1 - 4 * churn)
    T[0, 0] -= 0.05
    T[0, 1] += 0.05
    return _sampled_chain(T, [0.55, 0.15, 0.15, 0.15], n_users=20_000, n_steps=10, seed=5, ids=IDS)


def _steady_market():
    tr, shares, _ = steady_market()
    return tr, shares


def _report(chain):
    """make_data's report (K=4) with the chain's forecast, chosen by its backtest as a run does."""
    tr, shares = chain
    data = make_data(k=4)
    names = dict(zip(data.segments["segment"], data.segments["name"], strict=True))
    bt = backtest(shares, tr, holdout=3, names=names)
    fc = choose_forecast(forecast_next(shares[max(shares)], tr, names=names), bt)
    data.snapshot = max(shares)
    data.forecast = _forecast_frame(SimpleNamespace(forecast=fc))
    data.forecast_method_reason = fc.method_reason
    data.backtest, data.backtest_scores = bt.shares, bt.scores
    return data, fc


@pytest.fixture(scope="module")
def persistence():
    data, fc = _report(_steady_market())
    assert fc.method == "persistence"  # the premise: the chain lost its backtest
    return data, fc


@pytest.fixture(scope="module")
def markov():
    data, fc = _report(_drifting_chain())
    assert fc.method == "markov"  # the premise: the chain won its backtest
    return data, fc


def _reason(fc) -> str:
    """The chooser's reason after its 'method: ' prefix."""
    return fc.method_reason.split(": ", 1)[1]


def test_the_summary_says_persistence_was_published_and_why(persistence):
    data, fc = persistence
    md = markdown_summary(data)
    forecast = md[md.index("## Forecast for the next snapshot") :]
    assert (
        f"The forecast share is persistence (the membership share of {data.snapshot}, unchanged): "
        f"{_reason(fc)}." in forecast
    )
    assert "was worse than persistence's" in forecast
    assert "- **forecast share**: the forecast of the segment's membership share on the next snapshot: " in md
    assert "persistence (this snapshot's membership share, unchanged)" in md
    assert "**forecast share**: the Markov forecast" not in md


def test_the_summary_says_the_markov_forecast_was_published_and_why(markov):
    data, fc = markov
    md = markdown_summary(data)
    forecast = md[md.index("## Forecast for the next snapshot") :]
    assert f"The forecast share is the Markov forecast: {_reason(fc)}." in forecast
    assert "beat persistence's" in forecast
    assert "- **forecast share**: the Markov forecast of the segment's membership share" in md


def test_the_report_and_its_chart_follow_persistence(persistence):
    data, fc = persistence
    page = html_report(data)
    section = re.search(r'<section id="forecast">(.*?)</section>', page, flags=re.S).group(1)
    assert (
        html.escape(f"The forecast share is persistence (the membership share of {data.snapshot}") in section
    )
    assert html.escape(_reason(fc)) in section
    fig = _charts(page)["forecast"]
    caption = re.search(r"<figcaption>(.*?)</figcaption>", fig, flags=re.S).group(1)
    assert (
        f"the forecast share for the snapshot after {data.snapshot}: persistence (the membership share "
        "unchanged), as the Markov forecast has not beaten it in the backtest" in html.unescape(caption)
    )
    assert "forecast: persistence" in fig  # the next snapshot's marks in the legend
    assert "against the Markov forecast (the previous membership share" in html.unescape(caption)


def test_the_report_and_its_chart_follow_markov(markov):
    data, fc = markov
    page = html_report(data)
    section = re.search(r'<section id="forecast">(.*?)</section>', page, flags=re.S).group(1)
    assert html.escape(f"The forecast share is the Markov forecast: {_reason(fc)}.") in section
    caption = html.unescape(re.search(r"<figcaption>(.*?)</figcaption>", _charts(page)["forecast"]).group(1))
    assert (
        f"the forecast share for the snapshot after {data.snapshot}: the Markov forecast, which beat"
        in caption
    )
    assert "persistence (the membership share unchanged), as" not in caption
    assert "forecast: persistence" not in _charts(page)["forecast"]


@pytest.mark.parametrize("counts", ["gamma_mass", "n_users"])
def test_the_cli_prints_the_backtest_in_percentage_points_in_the_reports_words(counts, capsys):
    from gmm_dask_cli.output import print_analysis

    tr, shares = _drifting_chain()
    bt = backtest(shares, tr, holdout=3, counts=counts)
    fc = choose_forecast(forecast_next(shares[max(shares)], tr, counts=counts), bt)
    sizes = pd.DataFrame(columns=["audience_key", "n_users", "definition"])
    print_analysis(
        SimpleNamespace(fluidity=None, audiences=SimpleNamespace(sizes=sizes), forecast=fc, backtest=bt)
    )
    out = capsys.readouterr().out
    means = bt.mean_scores()
    basis = "membership share" if counts == "gamma_mass" else "share"
    held = sorted(shares)[-3:]
    assert (
        f"Backtest: errors of the forecast share against the actual {basis}, mean over 3 held-out "
        f"snapshots ({', '.join(held)}):" in out
    )
    mae = means["share_mae"]
    better = 1 - mae["markov"] / mae["persistence"]
    assert (
        f"  MAE {100 * mae['markov']:.2f} pp (Markov) vs {100 * mae['persistence']:.2f} pp (persistence), "
        f"Markov {better:.0%} better" in out
    )
    assert f"{mae['markov']:.4f}" not in out  # never the fraction the report shows in points
    brier = means["user_brier"]
    assert f"  user Brier {brier['markov']:.4f} (Markov) vs {brier['persistence']:.4f} (persistence)" in out
