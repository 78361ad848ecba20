"""Charts of the model: model selection (BIC/AIC by K), the users projected in 2-D, and the
components' family tree."""

from __future__ import annotations

import html
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np
import pandas as pd

from gmm_dask.report.charts import Chart, mpl_text, new_figure, render, thousands_axis
from gmm_dask.report.data import ReportData, has_rows
from gmm_dask.report.family import family_tree
from gmm_dask.report.palette import GONE, INK, MUTED, segment_color
from gmm_dask.report.text import fmt_pct

if TYPE_CHECKING:
    from matplotlib.axes import Axes
    from matplotlib.figure import Figure


def _candidate_line(tab: pd.DataFrame) -> list[str]:
    """Each candidate's line in the chart: its covariance type (Gaussian family) or its family."""
    families = tab["family"] if "family" in tab.columns else ["gaussian"] * len(tab)
    return [
        f"gaussian {ct}" if fam == "gaussian" else str(fam)
        for fam, ct in zip(families, tab["covariance_type"], strict=True)
    ]


def chart_bic(d: ReportData) -> Chart | None:
    """The selection criterion by K, one line per covariance type, the chosen model circled; ``None``
    without candidates with a finite criterion."""
    tab = d.bic_table
    if not has_rows(tab):
        return None
    crit = d.criterion if d.criterion in tab.columns else "bic"
    tab = tab[np.isfinite(pd.to_numeric(tab[crit], errors="coerce").astype(float))]
    if not len(tab):
        return None
    tab = tab.assign(line=_candidate_line(tab))
    label = crit.upper()

    def draw() -> Figure:
        from matplotlib.ticker import MaxNLocator

        fig = new_figure(8.6, 3.8)
        ax = fig.add_subplot()
        for i, (ct, grp) in enumerate(tab.groupby("line", sort=True)):
            grp = grp.sort_values("n_components")
            ax.plot(
                grp["n_components"],
                grp[crit],
                marker="o",
                markersize=4,
                color=segment_color(i),
                label=mpl_text(ct),
                lw=1.6,
            )
        if "selected" in tab.columns:
            sel = tab[tab["selected"].fillna(False).astype(bool)]
            for row in sel.itertuples(index=False):
                x, yv = row.n_components, getattr(row, crit)
                ax.plot(
                    x, yv, marker="o", markersize=13, markerfacecolor="none", markeredgecolor=INK, mew=1.6
                )
                ax.annotate(
                    f"selected: K={x}, {row.line}\n{label} {yv:,.0f}",
                    (x, yv),
                    xytext=(14, -16),
                    textcoords="offset points",
                    va="top",
                    fontsize=8,
                    color=INK,
                    arrowprops={"arrowstyle": "-", "color": MUTED, "lw": 0.8},
                )
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.margins(x=0.06, y=0.16)
        thousands_axis(ax.yaxis)
        ax.grid(zorder=0)
        ax.set_axisbelow(True)
        ax.set_xlabel("number of components K")
        ax.set_ylabel(f"{label} (lower is better)")
        ax.set_title(f"Model selection: {label} by K, family and covariance type")
        ax.legend(title="candidates", loc="upper right", title_fontsize=8)
        return fig

    cap = (
        f"{label} of each candidate fit (one line per family and covariance type, on one likelihood "
        "scale); the circled point is the model chosen. "
        + ("BIC" if crit == "bic" else "AIC")
        + " trades the log-likelihood against the number of parameters; lower is better."
    )
    return Chart("bic", render("bic", draw), html.escape(cap))


def no_bic_curve(d: ReportData) -> str:
    """One line: why the report has no BIC curve (:func:`chart_bic` gave ``None``)."""
    label = (d.criterion if has_rows(d.bic_table) and d.criterion in d.bic_table.columns else "bic").upper()
    if has_rows(d.bic_table):
        return f"No candidate of the model selection has a finite {label}: there is no curve to draw."
    return (
        f"Single K fitted (K={len(d.segments)}): there is no {label} curve. Run select-k "
        "(gmm-dask select-k, or the select-k deployment) for the curve over a range of K."
    )


def _pca(z: np.ndarray, means: np.ndarray | None) -> tuple[np.ndarray, np.ndarray | None, np.ndarray]:
    """Rows ``z`` (m, D) and ``means`` (K, D) on the first two principal components of ``z``, and
    each component's fraction of the variance."""
    centre = z.mean(axis=0)
    _, s, vt = np.linalg.svd(z - centre, full_matrices=False)
    var = s**2
    frac = var / var.sum() if var.sum() > 0 else np.zeros_like(var)
    pts = (z - centre) @ vt[:2].T
    mp = None if means is None else (means - centre) @ vt[:2].T
    return pts, mp, frac


@dataclass
class _Sample:
    """The sampled users a projection draws: rows ``z`` (m, D) in model space and their segment ids
    ``seg`` (m,); the components' means (K, D) where they are in the same space."""

    z: np.ndarray
    seg: np.ndarray
    means: np.ndarray | None
    comp_ids: list[int]
    present: list[int]  # segments with sampled users, in the segments table's order first
    names: dict[int, str]
    colors: dict[int, str]

    @property
    def raster(self) -> bool:
        return len(self.z) > 1500

    @property
    def by_id(self) -> bool:
        """Whether the means are labelled by id (and the legend says which id is which name): more
        than 10 segments, or a name too long for a label inside the plot."""
        return len(self.comp_ids) > 10 or any(len(str(self.names.get(s, s))) > 24 for s in self.comp_ids)


def _sample(d: ReportData) -> _Sample | None:
    """The report's sample of users, finite rows only, at most 20,000; ``None`` for fewer than 2."""
    if d.sample_z is None or d.sample_segment is None:
        return None
    z = np.asarray(d.sample_z, dtype=float)
    if z.ndim == 1:
        z = z[:, None]
    seg = np.asarray(d.sample_segment).astype(int)
    ok = np.all(np.isfinite(z), axis=1)
    z, seg = z[ok], seg[ok]
    if len(z) < 2 or z.shape[1] == 0:
        return None
    if len(z) > 20_000:  # plenty for a picture; the page stays small
        keep = np.sort(np.random.default_rng(0).choice(len(z), 20_000, replace=False))
        z, seg = z[keep], seg[keep]
    comp_ids = [int(c["segment"]) for c in d.components]
    means = None
    if d.components:
        means = np.array([np.atleast_1d(np.asarray(c["mean"], float)) for c in d.components])
        if means.shape[1] != z.shape[1]:
            means = None
    present = [s for s in [int(x) for x in d.segments["segment"]] if (seg == s).any()]
    present += sorted(set(np.unique(seg).tolist()) - set(present))
    return _Sample(z, seg, means, comp_ids, present, d.names(), d.colors())


#: Where a mean's label may go, as unit steps (x, y) from the mean: the eight compass points.
_LABEL_STEPS = ((1, 1), (1, -1), (-1, 1), (-1, -1), (1, 0), (-1, 0), (0, 1), (0, -1))


def _label_rect(spot: np.ndarray, step: tuple[int, int], size: np.ndarray) -> np.ndarray:
    """The box (x0, x1, y0, y1) of a label of ``size`` (w, h) anchored at ``spot``, on the side
    of it that ``step`` points to (the label's text runs away from its mark)."""
    (x, y), (w, h) = spot, size
    sx, sy = np.sign(step[0]), np.sign(step[1])
    left = x - (w if sx < 0 else w / 2 if sx == 0 else 0.0)
    bottom = y - (h if sy < 0 else h / 2 if sy == 0 else 0.0)
    return np.array([left, left + w, bottom, bottom + h])


def label_offsets(
    pts: np.ndarray,
    marks: np.ndarray,
    sizes: np.ndarray,
    reach: tuple[float, float],
    box: tuple[float, float, float, float],
) -> list[tuple[int, int]]:
    """Where to put each mark's label: for each mark (K, 2) with a label of ``sizes`` (K, 2: width
    and height, data units), the compass step (x, y) of :data:`_LABEL_STEPS` — the label anchored
    ``reach`` (x, y) away from the mark on that side — that covers the fewest points of ``pts``
    (m, 2). A label that leaves ``box`` (x0, x1, y0, y1: the axes), covers a mark, or overlaps a
    label placed before it is crowded; where every step is, the steps twice as far are tried (and
    come back doubled). Deterministic: ties go to the first step."""
    full = len(pts) + 1  # the cost of a place no label should take
    finite = np.all(np.isfinite(marks), axis=1)
    placed: list[np.ndarray] = []

    def cost(r: np.ndarray) -> int:
        under = (pts[:, 0] >= r[0]) & (pts[:, 0] <= r[1]) & (pts[:, 1] >= r[2]) & (pts[:, 1] <= r[3])
        outside = r[0] < box[0] or r[1] > box[1] or r[2] < box[2] or r[3] > box[3]
        on_mark = any(r[0] <= m[0] <= r[1] and r[2] <= m[1] <= r[3] for m in marks[finite])
        clash = any(r[0] < q[1] and q[0] < r[1] and r[2] < q[3] and q[2] < r[3] for q in placed)
        return int(under.sum()) + full * (outside + on_mark + clash)

    out = []
    for m, size, ok in zip(marks, sizes, finite, strict=True):
        best, best_cost, best_rect = _LABEL_STEPS[0], np.inf, None
        for ring in (1, 2) if ok else ():
            for dx, dy in _LABEL_STEPS:
                step = (ring * dx, ring * dy)
                r = _label_rect(m + np.array([step[0] * reach[0], step[1] * reach[1]]), step, size)
                c = cost(r)
                if c < best_cost:
                    best, best_cost, best_rect = step, c, r
            if best_cost < full:
                break
        if best_rect is not None:
            placed.append(best_rect)
        out.append(best)
    return out


def _mark_means(ax: Axes, p: _Sample, mp: np.ndarray, pts: np.ndarray, axes_pt: tuple[float, float]) -> None:
    """Each component's projected mean: a cross, labelled with its name (its id: :attr:`_Sample.by_id`)
    in a white box, set off towards the emptiest side (:func:`label_offsets`) with a leader line."""
    texts = [str(s) if p.by_id else mpl_text(p.names.get(s, s)) for s in p.comp_ids]
    x0, x1 = ax.get_xlim()
    y0, y1 = ax.get_ylim()
    w_pt, h_pt = axes_pt  # about: the layout is not done yet
    # an 8 pt bold label with its box: ~5.2 pt a character, 14 pt high
    sizes = np.array([[(len(t) * 5.2 + 6) / w_pt * (x1 - x0), 14 / h_pt * (y1 - y0)] for t in texts])
    reach = (0.05 * (x1 - x0), 0.06 * (y1 - y0))
    steps = label_offsets(pts, mp, sizes, reach, (x0, x1, y0, y1))
    for (x, y), s, text, (dx, dy) in zip(mp, p.comp_ids, texts, steps, strict=True):
        if not (np.isfinite(x) and np.isfinite(y)):
            continue
        ax.plot(
            x,
            y,
            marker="X",
            markersize=9,
            color=p.colors.get(s, GONE),
            mec=INK,
            mew=0.9,
            zorder=4,
            gid=f"mean-{s}",
        )
        label = ax.annotate(
            text,
            (x, y),
            xytext=(x + dx * reach[0], y + dy * reach[1]),
            ha=("right", "center", "left")[int(np.sign(dx)) + 1],
            va=("top", "center", "bottom")[int(np.sign(dy)) + 1],
            fontsize=8,
            fontweight="bold",
            color=INK,
            bbox={"boxstyle": "round,pad=0.25", "fc": "white", "ec": MUTED, "lw": 0.6, "alpha": 0.9},
            arrowprops={"arrowstyle": "-", "color": INK, "lw": 0.7, "shrinkA": 0, "shrinkB": 5},
            zorder=5,
        )
        label.set_in_layout(False)  # placed inside the axes: the layout need not make room for it
        box = label.get_bbox_patch()
        if box is not None:
            box.set_gid(f"mean-label-{s}")


def _draw_2d(p: _Sample) -> Figure:
    """The users on the first two principal components, coloured by segment, means marked."""
    pts, mp, frac = _pca(p.z, p.means)
    # long names: the legend goes under the plot, which keeps the figure's width
    below = any(len(str(p.names.get(s, s))) > 40 for s in p.present) and len(p.present) <= 10
    height = 5.6 + (0.2 * len(p.present) + 0.3 if below else 0.0)
    fig = new_figure(8.6, height)
    ax = fig.add_subplot()
    for s in p.present:
        sel = p.seg == s
        ax.scatter(
            pts[sel, 0],
            pts[sel, 1],
            s=5,
            alpha=0.45,
            color=p.colors.get(s, GONE),
            linewidths=0,
            label=f"{s}: {mpl_text(p.names.get(s, s))} ({int(sel.sum()):,})"
            if p.by_id
            else f"{mpl_text(p.names.get(s, s))} ({int(sel.sum()):,})",
            rasterized=p.raster,
        )
    if mp is not None:
        # the axes' size in points, about (a legend beside it takes a third of the width)
        _mark_means(ax, p, mp, pts, ((0.88 if below else 0.6) * 8.6 * 72, 0.75 * 5.6 * 72))
    ax.set_xlabel(f"PC1 ({fmt_pct(frac[0])} of variance)")
    ax.set_ylabel(f"PC2 ({fmt_pct(frac[1])} of variance)" if len(frac) > 1 else "PC2")
    ax.grid(zorder=0)
    ax.set_axisbelow(True)
    ax.set_title("Users in 2-D: PCA of a sample, coloured by segment")
    leg = ax.legend(
        title="segment (sampled users)",
        loc="upper left",
        bbox_to_anchor=(0.0, -0.12) if below else (1.01, 1.0),
        markerscale=2.5,
        title_fontsize=8,
        alignment="left",
    )
    for h in leg.legend_handles:
        if h is not None:
            h.set_alpha(1.0)
    return fig


def _draw_1d(p: _Sample, feature: str) -> Figure:
    """One feature: the users along it, one jittered strip per segment, the means as ticks."""
    fig = new_figure(8.6, 1.3 + 0.34 * len(p.present))
    ax = fig.add_subplot()
    rng = np.random.default_rng(0)
    for i, s in enumerate(p.present):
        sel = p.seg == s
        ax.scatter(
            p.z[sel, 0],
            i + rng.uniform(-0.28, 0.28, int(sel.sum())),
            s=5,
            alpha=0.45,
            color=p.colors.get(s, GONE),
            linewidths=0,
            rasterized=p.raster,
        )
        if p.means is not None and s in p.comp_ids:
            mu = p.means[p.comp_ids.index(s), 0]
            if np.isfinite(mu):
                ax.plot([mu, mu], [i - 0.38, i + 0.38], color=INK, lw=2)
    ax.set_yticks(np.arange(len(p.present)), [mpl_text(p.names.get(s, s)) for s in p.present])
    ax.set_ylim(len(p.present) - 0.5, -0.5)
    ax.grid(axis="x", zorder=0)
    ax.set_axisbelow(True)
    ax.set_xlabel(f"{feature} (model space: transformed, standardised)")
    ax.set_title("Users in 2-D: one feature, one strip per segment")
    return fig


def chart_projection(d: ReportData) -> Chart | None:
    """A sample of users in 2-D (PCA), or along the one feature; ``None`` without a sample."""
    p = _sample(d)
    if p is None:
        return None
    m, dim = p.z.shape
    if dim >= 2:
        cap = (
            f"A sample of {m:,} users projected on the first two principal components of the model's inputs "
            "(transformed, standardised features), coloured by their segment; ✕: each component's mean, projected."
        )
        return Chart("projection", render("projection", lambda: _draw_2d(p)), html.escape(cap))
    feature = mpl_text(d.features[0]) if d.features else "feature"
    cap = (
        f"The model has one feature, so there is nothing to project: a sample of {m:,} users along it, one strip "
        "per segment (vertical jitter only); black tick: the component's mean."
    )
    return Chart("projection", render("projection", lambda: _draw_1d(p, feature)), html.escape(cap))


def chart_family_tree(d: ReportData) -> Chart | None:
    """The components' dendrogram (:func:`~gmm_dask.report.family.family_tree`); ``None`` for K < 2."""
    if len(d.components) < 2:
        return None
    from scipy.cluster.hierarchy import dendrogram

    names, colors = d.names(), d.colors()
    ids = [int(c["segment"]) for c in d.components]
    labels = [str(c.get("name", names.get(i, i))) for c, i in zip(d.components, ids, strict=True)]
    link = family_tree(d.components)
    dn = dendrogram(link, no_plot=True, labels=list(range(len(ids))))
    leaves = [ids[i] for i in dn["ivl"]]
    k = len(ids)

    def draw() -> Figure:
        fig = new_figure(8.6, 1.2 + 0.36 * k)
        ax = fig.add_subplot()
        for xs, ys in zip(dn["dcoord"], dn["icoord"], strict=True):
            ax.plot(xs, ys, color="#555555", lw=1.3, solid_capstyle="butt")
        if k <= 14:
            for xs, ys in zip(dn["dcoord"], dn["icoord"], strict=True):
                ax.annotate(
                    f"{xs[1]:.2f}",
                    (xs[1], (ys[1] + ys[2]) / 2),
                    xytext=(-3, 0),
                    textcoords="offset points",
                    ha="right",
                    va="center",
                    fontsize=7,
                    color=MUTED,
                )
        pos = 5 + 10 * np.arange(k)
        ax.scatter(np.zeros(k), pos, s=46, marker="s", color=[colors.get(s, GONE) for s in leaves], zorder=3)
        weights = {int(c["segment"]): c.get("weight") for c in d.components}
        ax.set_yticks(
            pos,
            [f"{mpl_text(labels[ids.index(s)])} ({fmt_pct(weights.get(s))})" for s in leaves],
        )
        ax.set_ylim(pos[-1] + 6, pos[0] - 6)
        top = float(np.max(link[:, 2])) if len(link) else 1.0
        ax.set_xlim(-0.02 * top, top * 1.12 if top > 0 else 1.0)
        ax.tick_params(axis="y", length=0)
        ax.spines["left"].set_visible(False)
        ax.grid(axis="x", zorder=0)
        ax.set_axisbelow(True)
        ax.set_xlabel("Ward merge height  (√ Bhattacharyya distance between the components' Gaussians)")
        ax.set_title("Family tree of the components")
        return fig

    cap = (
        "Hierarchical clustering of the fitted Gaussians (model space). Distance: the square root of the "
        "Bhattacharyya distance between two components (0 = identical; with equal covariances, the Mahalanobis "
        "distance between the means over √8), made Euclidean by classical MDS; linkage: Ward. Segments that "
        "join early are the most alike: candidates to merge. Labels: segment (weight)."
    )
    return Chart("family-tree", render("family-tree", draw), html.escape(cap))
