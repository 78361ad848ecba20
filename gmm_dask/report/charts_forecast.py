"""The forecast chart: segment shares on held-out snapshots (actual, Markov forecast, persistence)
and the forecast published for the next snapshot (the Markov forecast, or persistence where the
Markov forecast has not beaten it in the backtest), one panel each."""

from __future__ import annotations

import html
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

import numpy as np

from gmm_dask.report.charts import Chart, mpl_text, new_figure, percent_axis, render
from gmm_dask.report.data import ReportData, forecast_method, has_rows
from gmm_dask.report.palette import INK, PALETTE
from gmm_dask.report.terms import FORECAST_SHARE, forecast_basis_term
from gmm_dask.report.text import is_finite

if TYPE_CHECKING:
    import pandas as pd
    from matplotlib.artist import Artist
    from matplotlib.axes import Axes
    from matplotlib.figure import Figure

#: How each series of a backtest panel is marked.
_STYLES: dict[str, dict[str, Any]] = {
    "actual": {"marker": "o", "color": INK, "ms": 6.5, "mfc": INK, "label": "actual"},
    "markov": {
        "marker": "D",
        "color": PALETTE[0],
        "ms": 5.5,
        "mfc": PALETTE[0],
        "label": "Markov forecast",
    },
    "persistence": {
        "marker": "s",
        "color": "#888888",
        "ms": 6,
        "mfc": "none",
        "label": "persistence (no change)",
    },
}


def _mae_caption(scores: pd.DataFrame | None) -> str:
    """The caption's last sentence: the backtest's mean share error by method."""
    if not has_rows(scores) or "share_mae" not in scores.columns:
        return ""
    agg = scores.groupby("method")["share_mae"].mean()
    n = scores["held_out"].nunique() if "held_out" in scores.columns else len(scores)
    parts = [f"{m} {100 * v:.2f} pp" for m, v in agg.items() if is_finite(v)]
    if not parts:
        return ""
    return f" Mean absolute error of the {FORECAST_SHARE} over {n} held-out snapshot{'s' if n != 1 else ''}: {', '.join(parts)}."


def _segment_order(d: ReportData) -> tuple[dict[int, str], list[int]]:
    """Names of every segment the backtest or forecast shows, and their rows' order (the segments
    table's first, then the others as they first appear)."""
    names = d.names()
    seen: list[int] = [int(s) for s in d.segments["segment"]]
    used: set[int] = set()
    for frame in (d.backtest, d.forecast):
        if has_rows(frame):
            for s, n in zip(frame["segment"], frame["name"], strict=True):
                names.setdefault(int(s), n if isinstance(n, str) and n else f"segment {int(s)}")
                if int(s) not in seen:
                    seen.append(int(s))
    for frame in (d.backtest, d.forecast):
        if has_rows(frame):
            used |= {int(s) for s in frame["segment"]}
    return names, [s for s in seen if s in used]


def _panel_title(date: str, scores: pd.DataFrame | None) -> str:
    title = f"held out {date}"
    if has_rows(scores) and {"held_out", "method", "share_mae"} <= set(scores.columns):
        sc = scores[scores["held_out"].astype(str) == date]
        bits = [
            f"{m} {100 * v:.2f} pp"
            for m, v in zip(sc["method"], sc["share_mae"], strict=True)
            if is_finite(v)
        ]
        if bits:
            title += "\nMAE: " + "\n".join(bits)
    return title


def _backtest_panel(ax: Axes, sub: pd.DataFrame, pos: dict[int, int]) -> None:
    """One held-out snapshot: per segment, the actual share, the forecast and persistence, joined."""
    for row in sub.itertuples(index=False):
        y = pos[int(row.segment)]
        vals = [v for v in (row.actual, row.markov, row.persistence) if is_finite(v)]
        if vals:
            ax.plot([min(vals), max(vals)], [y, y], color="#cccccc", lw=2.2, zorder=1)
    for key, st in _STYLES.items():
        ok = sub[key].map(is_finite) if len(sub) else sub[key]
        ax.plot(
            sub.loc[ok, key],
            [pos[int(s)] for s in sub.loc[ok, "segment"]],
            linestyle="none",
            marker=st["marker"],
            markersize=st["ms"],
            color=st["color"],
            markerfacecolor=st["mfc"],
            label=st["label"],
            zorder=3,
        )


def _forecast_panel(ax: Axes, fc: pd.DataFrame, pos: dict[int, int], snapshot: str, label: str) -> None:
    """The next snapshot: per segment, an arrow from today's share to the forecast one (``label``)."""
    for row in fc.itertuples(index=False):
        y = pos[int(row.segment)]
        if is_finite(row.share_now) and is_finite(row.share_forecast):
            ax.annotate(
                "",
                (row.share_forecast, y),
                (row.share_now, y),
                arrowprops={"arrowstyle": "->", "color": PALETTE[0], "lw": 1.2, "shrinkA": 3, "shrinkB": 3},
            )
    ok_now = fc["share_now"].map(is_finite)
    ok_fc = fc["share_forecast"].map(is_finite)
    ax.plot(
        fc.loc[ok_now, "share_now"],
        [pos[int(s)] for s in fc.loc[ok_now, "segment"]],
        linestyle="none",
        marker="o",
        ms=6.5,
        color=INK,
        mfc="white",
        label=f"now ({snapshot})",
        zorder=3,
    )
    ax.plot(
        fc.loc[ok_fc, "share_forecast"],
        [pos[int(s)] for s in fc.loc[ok_fc, "segment"]],
        linestyle="none",
        marker="D",
        ms=5.5,
        color=PALETTE[0],
        label=label,
        zorder=3,
    )
    ax.set_title(f"next snapshot\n(forecast from {snapshot})", fontsize=9)


def _shared_legend(fig: Figure, axes: Sequence[Axes]) -> None:
    """One legend below the panels, each label once."""
    handles: list[Artist] = []
    labels: list[str] = []
    for ax in axes:
        for h, lab in zip(*ax.get_legend_handles_labels(), strict=True):
            if lab not in labels:
                handles.append(h)
                labels.append(lab)
    fig.legend(handles, labels, loc="outside lower center", ncols=min(len(labels), 5))


def _draw_forecast(d: ReportData, dates: list[str], names: dict[int, str], order: list[int]) -> Figure:
    bt, fc = d.backtest, d.forecast
    pos = {s: i for i, s in enumerate(order)}
    n_panels = len(dates) + (1 if has_rows(fc) else 0)
    fig = new_figure(min(2.2 + 2.6 * n_panels, 14.0), 1.7 + 0.34 * len(order))
    axes = fig.subplots(1, n_panels, sharey=True, squeeze=False)[0]
    held_out = [(date, bt[bt["held_out"].astype(str) == date]) for date in dates] if has_rows(bt) else []
    for ax, (date, sub) in zip(axes, held_out, strict=False):
        _backtest_panel(ax, sub, pos)
        ax.set_title(_panel_title(date, d.backtest_scores), fontsize=9)
    if has_rows(fc):
        label = "forecast: persistence" if forecast_method(d) == "persistence" else "Markov forecast"
        _forecast_panel(axes[-1], fc, pos, d.snapshot, label)
    for ax in axes:
        percent_axis(ax.xaxis)
        ax.grid(axis="x", zorder=0)
        ax.set_axisbelow(True)
        ax.set_xlabel(forecast_basis_term(d))
        ax.margins(x=0.12)
    axes[0].set_yticks(np.arange(len(order)), [mpl_text(names.get(s, s)) for s in order])
    axes[0].set_ylim(len(order) - 0.5, -0.5)
    _shared_legend(fig, axes)
    fig.suptitle(
        f"The {FORECAST_SHARE} against the actual {forecast_basis_term(d)}",
        x=0.01,
        ha="left",
        fontweight="bold",
        fontsize=11,
    )
    return fig


def _next_caption(d: ReportData, basis: str) -> str:
    """The caption's words on the next snapshot's panel: which forecast the run published."""
    head = f"the {FORECAST_SHARE} for the snapshot after {d.snapshot}"
    method = forecast_method(d)
    if method == "persistence":
        return f"{head}: persistence (the {basis} unchanged), as the Markov forecast has not beaten it in the backtest"
    if method == "markov":
        return f"{head}: the Markov forecast, which beat persistence in the backtest"
    return head


def chart_forecast(d: ReportData) -> Chart | None:
    """Backtest panels (the last three held-out snapshots) and the next snapshot's forecast;
    ``None`` without either."""
    bt, fc = d.backtest, d.forecast
    if not has_rows(bt) and not has_rows(fc):
        return None
    dates = sorted(bt["held_out"].astype(str).unique())[-3:] if has_rows(bt) else []
    names, order = _segment_order(d)
    basis = forecast_basis_term(d)
    cap = f"The segments' {basis} ({d.forecast_basis}): "
    if dates:
        cap += (
            f"for held-out snapshots, the actual {basis} against the Markov forecast (the previous "
            f"{basis} times a transition matrix fitted on the steps before them, recent steps weighted "
            f"more) and persistence (the {basis} unchanged)"
        )
    if has_rows(fc):
        cap += ("; " if dates else "") + _next_caption(d, basis)
    cap += "." + _mae_caption(d.backtest_scores)
    return Chart(
        "forecast", render("forecast", lambda: _draw_forecast(d, dates, names, order)), html.escape(cap)
    )
