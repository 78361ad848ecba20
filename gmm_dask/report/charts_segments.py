"""Charts of the segments themselves: their sizes (against the previous snapshot), their profiles,
the users' membership entropy, and the transitions between snapshots."""

from __future__ import annotations

import html
from typing import TYPE_CHECKING

import numpy as np

from gmm_dask.report.charts import Chart, mpl_text, new_figure, percent_axis, render, thousands_axis
from gmm_dask.report.data import ReportData, band_total, has_rows
from gmm_dask.report.palette import BAND_COLORS, INK, MUTED
from gmm_dask.report.text import fmt_compact, fmt_count, fmt_int, fmt_pct, fmt_signed_pct, is_finite

if TYPE_CHECKING:
    import pandas as pd
    from matplotlib.axes import Axes
    from matplotlib.figure import Figure
    from matplotlib.text import Annotation

#: segment id -> (users, share)
_Sizes = dict[int, tuple[int, float]]


def _sizes_by_id(frame: pd.DataFrame) -> _Sizes:
    return {
        int(s): (int(n), float(sh))
        for s, n, sh in zip(frame["segment"], frame["size"], frame["share"], strict=True)
    }


def _size_change(s: int, now: _Sizes, prev: _Sizes) -> tuple[str, str]:
    """How segment ``s``'s size changed since the previous snapshot, and the text's colour."""
    if s not in prev:
        return "new", "#2f7d32"
    if s not in now:
        return f"vanished (was {prev[s][0]:,})", "#b23b3b"
    if prev[s][0] == 0:
        return "new", "#2f7d32"
    rel = now[s][0] / prev[s][0] - 1
    return fmt_signed_pct(rel), INK


def _size_row(ax: Axes, i: int, s: int, now: _Sizes, prev: _Sizes, color: str, has_prev: bool) -> Annotation:
    """Row ``i`` of the sizes chart: the bars of segment ``s``, their label (returned) and its change."""
    if has_prev and s in prev:
        ax.barh(i, prev[s][0], height=0.78, color="#e4e4e4", edgecolor="#b5b5b5", linewidth=0.6, zorder=1)
    if s in now:
        ax.barh(i, now[s][0], height=0.46, color=color, zorder=2)
        size, share = now[s]
        label = f"{size:,}  ({fmt_pct(share)})"
    else:
        label = ""
    end = max(now.get(s, (0, 0))[0], prev.get(s, (0, 0))[0] if has_prev else 0)
    note = ax.annotate(
        label, (end, i), xytext=(4, 0), textcoords="offset points", va="center", fontsize=8, color=INK
    )
    if has_prev:
        change, tone = _size_change(s, now, prev)
        ax.text(1.02, i, change, transform=ax.get_yaxis_transform(), va="center", fontsize=8, color=tone)
    return note


def _fit_labels(fig: Figure, ax: Axes, labels: list[Annotation]) -> None:
    """Widen the x axis (from 0) until every bar's label ends inside the plot, clear of the change
    column beside it: each label's width is measured on the laid-out figure (twice: the layout
    moves when the tick labels do)."""
    for _ in range(2):
        fig.draw_without_rendering()
        box = ax.get_window_extent()
        x1 = ax.get_xlim()[1]
        need = x1
        for t in labels:
            if not t.get_text():
                continue
            end = float(t.xy[0])
            ext = t.get_window_extent()
            room = box.width - 6 - (ext.x1 - ax.transData.transform((end, 0))[0])  # px left for the bar
            if room > 0:
                need = max(need, end * box.width / room)
        if need <= x1 * 1.001:
            return
        ax.set_xlim(0, need)


def _draw_sizes(d: ReportData, order: list[int], now: _Sizes, prev: _Sizes) -> Figure:
    names, colors = d.names(), d.colors()
    has_prev = bool(prev)
    before = d.previous_snapshot or "previous"
    n = len(order)
    fig = new_figure(8.6, 1.15 + 0.34 * n)
    ax = fig.add_subplot()
    y = np.arange(n)
    top = max([now.get(s, (0, 0))[0] for s in order] + [prev.get(s, (0, 0))[0] for s in order] + [1])
    labels = [_size_row(ax, i, s, now, prev, colors[s], has_prev) for i, s in enumerate(order)]
    if has_prev:
        ax.text(
            1.02,
            1.0,
            f"change vs {before}",
            transform=ax.transAxes,
            va="bottom",
            fontsize=8,
            color=MUTED,
            fontweight="bold",
        )
    ax.set_yticks(y, [mpl_text(names.get(s, s)) for s in order])
    ax.set_ylim(n - 0.5, -0.5)
    ax.set_xlim(0, top * 1.28)
    thousands_axis(ax.xaxis)
    ax.grid(axis="x", zorder=0)
    ax.set_axisbelow(True)
    ax.set_xlabel("users (hard assignment: the segment of highest γ)")
    total_now = sum(v[0] for v in now.values())
    ax.set_title(f"Segment sizes, {d.snapshot}  ({total_now:,} users)")
    if has_prev:
        from matplotlib.patches import Patch

        fig.legend(
            handles=[
                Patch(color=MUTED, label=f"{d.snapshot}"),
                Patch(facecolor="#e4e4e4", edgecolor="#b5b5b5", label=f"{before}"),
            ],
            loc="outside lower center",
            ncols=2,
        )
    _fit_labels(fig, ax, labels)
    return fig


def chart_sizes(d: ReportData) -> Chart:
    """Users per segment, largest first, against the previous snapshot's where there is one."""
    names = d.names()
    now = _sizes_by_id(d.segments)
    prev = _sizes_by_id(d.previous_segments) if has_rows(d.previous_segments) else {}
    order = sorted(now, key=lambda s: -now[s][0]) + sorted(
        (s for s in prev if s not in now), key=lambda s: -prev[s][0]
    )
    cap = "Users per segment, with their share of all users."
    if prev:
        born = [names[s] for s in order if s not in prev]
        dead = [names[s] for s in order if s not in now]
        cap += (
            f" Grey bars: the previous snapshot ({d.previous_snapshot or 'previous'}); on the right, the change in"
            " size."
        )
        if born:
            cap += f" New segments: {', '.join(born)}."
        if dead:
            cap += f" Vanished: {', '.join(dead)}."
    return Chart("sizes", render("sizes", lambda: _draw_sizes(d, order, now, prev)), html.escape(cap))


def chart_profile(d: ReportData) -> Chart | None:
    """Segments × features heatmap of the means' z-scores, labelled in original units; ``None``
    without features or segments."""
    if not d.features or not has_rows(d.segments):
        return None
    names = d.names()
    ids = [int(s) for s in d.segments["segment"]]
    z = d.profile_z.reindex(index=ids, columns=d.features).to_numpy(float).T  # (D, K)
    raw = d.profile_raw.reindex(index=ids, columns=d.features).to_numpy(float).T
    finite = np.isfinite(z)
    zmax = float(np.max(np.abs(z[finite]))) if finite.any() else 1.0
    vlim = min(max(zmax, 0.5), 3.0)
    n_feat, k = z.shape

    def draw() -> Figure:
        import matplotlib as mpl
        from matplotlib.colors import Normalize

        cell_w = 0.78 if k <= 10 else 0.6
        fig = new_figure(min(2.6 + cell_w * k + 1.1, 15.0), 1.5 + 0.36 * n_feat + 0.25 * min(k, 1))
        ax = fig.add_subplot()
        cmap = mpl.colormaps["RdBu_r"].with_extremes(bad="#eeeeee")
        im = ax.imshow(np.ma.masked_invalid(z), cmap=cmap, norm=Normalize(-vlim, vlim), aspect="auto")
        fs = 8 if k <= 8 else 7 if k <= 14 else 6
        for r in range(n_feat):
            for c in range(k):
                light = finite[r, c] and abs(z[r, c]) > 0.62 * vlim
                ax.text(
                    c,
                    r,
                    fmt_compact(raw[r, c]),
                    ha="center",
                    va="center",
                    fontsize=fs,
                    color="white" if light else INK,
                    in_layout=False,  # inside its cell: no need to measure it for the layout
                )
        ax.set_xticks(
            np.arange(k), [mpl_text(names[s]) for s in ids], rotation=30, ha="right", rotation_mode="anchor"
        )
        ax.set_yticks(np.arange(n_feat), [mpl_text(f) for f in d.features])
        ax.tick_params(length=0)
        for sp in ax.spines.values():
            sp.set_visible(False)
        ax.set_xticks(np.arange(k + 1) - 0.5, minor=True)
        ax.set_yticks(np.arange(n_feat + 1) - 0.5, minor=True)
        ax.grid(which="minor", color="white", linewidth=1.5)
        ax.tick_params(which="minor", length=0)
        ax.set_xlabel("segment")
        ax.set_ylabel("feature")
        ax.set_title("Segment profiles: each segment's mean, coloured by its z-score")
        extend = "both" if zmax > vlim else "neither"
        cb = fig.colorbar(im, ax=ax, shrink=0.9 if n_feat > 4 else 1.0, extend=extend, aspect=25)
        cb.set_label("z-score vs population")
        cb.outline.set_visible(False)
        return fig

    cap = (
        "Rows: features; columns: segments. Colour: how far the segment's mean lies from the population's, "
        "in standard deviations of the model's (transformed) inputs; red above, blue below"
        + (f", clipped at ±{vlim:g}" if zmax > vlim else "")
        + ". The number in each cell is the segment's mean in the feature's original units."
    )
    if (~finite).any() or np.isnan(raw).any():
        cap += " Grey cells / '–': no mean (the segment has no users or its mean is undefined)."
    return Chart("profile", render("profile", draw), html.escape(cap))


def chart_entropy(d: ReportData) -> Chart:
    """Users by normalised membership entropy (log counts), coloured by band, thresholds dashed."""
    counts = np.nan_to_num(np.asarray(d.entropy_hist, dtype=float), nan=0.0)
    nb = max(len(counts), 1)
    edges = np.linspace(0.0, 1.0, nb + 1)
    lo, mid = float(d.bands.get("low_max", 0.25)), float(d.bands.get("moderate_max", 0.6))
    total = band_total(d)

    def draw() -> Figure:
        from matplotlib.ticker import LogLocator, NullFormatter

        fig = new_figure(8.6, 3.6)
        ax = fig.add_subplot()
        centres = 0.5 * (edges[:-1] + edges[1:])
        nz = counts > 0
        band_of = np.where(centres < lo, "low", np.where(centres < mid, "moderate", "high"))
        if nz.any():
            ax.bar(
                centres[nz],
                counts[nz],
                width=np.diff(edges)[nz] * 0.92,
                color=[BAND_COLORS[b] for b in band_of[nz]],
                zorder=2,
            )
            top = float(counts.max())
        else:
            top = 1.0
        ax.set_yscale("log")
        ax.set_ylim(0.4, top * 12)
        ax.yaxis.set_major_locator(LogLocator(base=10))
        ax.yaxis.set_major_formatter(lambda v, _: fmt_count(v) if v >= 1 else "")
        ax.yaxis.set_minor_formatter(NullFormatter())
        ax.set_xlim(0, 1)
        ax.grid(axis="y", zorder=0)
        ax.set_axisbelow(True)
        for x in (lo, mid):
            ax.axvline(x, color=INK, linestyle="--", linewidth=1, zorder=3)
        ranges = {"low": f"< {lo:g}", "moderate": f"{lo:g} – {mid:g}", "high": f"≥ {mid:g}"}
        for band, a, b in (("low", 0.0, lo), ("moderate", lo, mid), ("high", mid, 1.0)):
            n = d.band_count.get(band)
            share = f" ({fmt_pct(n / total)})" if total and n is not None and is_finite(n) else ""
            ax.text(
                (a + b) / 2,
                0.97,
                f"{band} ({ranges[band]})\n{fmt_int(n)} user{'' if n == 1 else 's'}{share}",
                transform=ax.get_xaxis_transform(),
                ha="center",
                va="top",
                fontsize=8,
                color=BAND_COLORS[band],
                fontweight="bold",
            )
        ax.set_xlabel(
            "normalised entropy of the membership vector γ  (H(γ) / log₂ K: 0 = one segment, 1 = all equal)"
        )
        ax.set_ylabel("users (log scale)")
        ax.set_title("Membership entropy")
        if not nz.any():
            ax.text(0.5, 0.4, "no users", transform=ax.transAxes, ha="center", color=MUTED)
        return fig

    cap = (
        f"Users by the entropy of their memberships, in {nb} equal bins; the count axis is logarithmic, so "
        f"small bands stay visible. Dashed lines: the band thresholds (low below {lo:g}, moderate below "
        f"{mid:g}, high above). Low: a clear archetype; moderate: a hybrid; high: a fluid identity or an anomaly."
    )
    return Chart("entropy", render("entropy", draw), html.escape(cap))


def _transition_cells(ax: Axes, counts: np.ndarray, share: np.ndarray) -> None:
    """Each cell's label: the share of the row's users (and their number, where there is room);
    '·' where nobody moved."""
    r, c = counts.shape
    fs = 7.5 if c <= 8 else 6.5 if c <= 14 else 5.5
    for i in range(r):
        for j in range(c):
            n = counts[i, j]
            if n <= 0:
                ax.text(j, i, "·", ha="center", va="center", fontsize=fs, color="#aaaaaa", in_layout=False)
                continue
            dark = share[i, j] > 0.55
            ax.text(
                j,
                i,
                fmt_pct(share[i, j], 0) if c > 12 else f"{fmt_pct(share[i, j], 0)}\n{fmt_count(n)}",
                ha="center",
                va="center",
                fontsize=fs,
                color="white" if dark else INK,
                linespacing=1.1,
                in_layout=False,
            )


def chart_transitions(d: ReportData) -> Chart | None:
    """Where each previous segment's users are now (row shares); ``None`` without transitions."""
    t = d.transitions
    if t is None or t.size == 0:
        return None
    names = d.names()
    counts = t.to_numpy(float)
    counts = np.nan_to_num(counts, nan=0.0)
    rows = [int(i) for i in t.index]
    cols = [int(c) for c in t.columns]
    tot = counts.sum(axis=1)
    with np.errstate(invalid="ignore", divide="ignore"):
        share = np.where(tot[:, None] > 0, counts / tot[:, None], np.nan)
    r, c = counts.shape

    def draw() -> Figure:
        import matplotlib as mpl
        from matplotlib.colors import Normalize

        fig = new_figure(min(3.2 + 0.75 * c + 1.0, 15.0), 1.6 + 0.42 * r)
        ax = fig.add_subplot()
        cmap = mpl.colormaps["Blues"].with_extremes(bad="#f3f3f3")
        im = ax.imshow(np.ma.masked_invalid(share), cmap=cmap, norm=Normalize(0, 1), aspect="auto")
        _transition_cells(ax, counts, share)
        ax.set_xticks(
            np.arange(c),
            [mpl_text(names.get(s, s)) for s in cols],
            rotation=30,
            ha="right",
            rotation_mode="anchor",
        )
        ax.set_yticks(
            np.arange(r),
            [f"{mpl_text(names.get(s, s))} ({fmt_int(n)})" for s, n in zip(rows, tot, strict=True)],
        )
        ax.tick_params(length=0)
        for sp in ax.spines.values():
            sp.set_visible(False)
        ax.set_xticks(np.arange(c + 1) - 0.5, minor=True)
        ax.set_yticks(np.arange(r + 1) - 0.5, minor=True)
        ax.grid(which="minor", color="white", linewidth=1.5)
        ax.tick_params(which="minor", length=0)
        ax.set_ylabel(f"from {d.previous_snapshot or 'previous snapshot'}  (users)")
        ax.set_xlabel(f"to {d.snapshot}")
        ax.set_title("Transitions between snapshots")
        cb = fig.colorbar(im, ax=ax, shrink=0.9, aspect=25)
        cb.set_label("% of the row's users")
        percent_axis(cb.ax.yaxis, 0)
        cb.outline.set_visible(False)
        return fig

    cap = (
        f"Where the users of each segment of {d.previous_snapshot or 'the previous snapshot'} are on {d.snapshot}"
        " (users present on both dates; row labels give their number). Each cell: % of the row's users"
        + ("." if c > 12 else " and their number.")
    )
    return Chart("transitions", render("transitions", draw), html.escape(cap))
