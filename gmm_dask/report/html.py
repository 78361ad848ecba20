"""Run reports: a self-contained HTML page with charts, and a markdown summary for the Prefect UI.

The charts are drawn with matplotlib on the server side and inlined as SVG (text kept as text, so
the page is searchable and small; the users' scatter is rasterised inside its SVG). The page has no
script and no external resource: it opens offline, from a file, in any browser.

Everything the page shows comes in one :class:`ReportData`; the module never reads tables or models.
The math it adds is small and pure: :func:`gaussian_distance_matrix` (Bhattacharyya or Hellinger
distance between Gaussians) and :func:`family_tree` (Ward linkage of the components).
"""

from __future__ import annotations

import html
import io
import math
import re
import threading
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pandas as pd

PALETTE = (
    "#4e79a7",
    "#f28e2b",
    "#e15759",
    "#76b7b2",
    "#59a14f",
    "#edc948",
    "#b07aa1",
    "#ff9da7",
    "#9c755f",
    "#bab0ac",
)
# Segments 11-20: Tableau 20's paired shades, so K ≤ 20 segments never share a colour.
_PALETTE_MORE = (
    "#a0cbe8",
    "#ffbe7d",
    "#8cd17d",
    "#b6992d",
    "#f1ce63",
    "#499894",
    "#86bcb6",
    "#d37295",
    "#fabfd2",
    "#d4a6c8",
)
_GONE = "#9a9a9a"  # a segment of the previous snapshot only
_INK = "#222222"
_MUTED = "#666666"
_BAND_COLORS = {"low": "#4e79a7", "moderate": "#f28e2b", "high": "#e15759"}
_DASH = "–"  # shown for a missing or undefined number (never 'nan')

_TITLES = {"segment": "Segmentation", "select-k": "Model selection", "train": "Training", "score": "Scoring"}


def _color(i: int) -> str:
    """Colour of the i-th segment (position in the segments table)."""
    allc = PALETTE + _PALETTE_MORE
    return allc[i % len(allc)]


@dataclass
class ReportData:
    """Everything a run report shows (small: aggregates and a sample, never the users' table).

    K segments, D features, m sampled users. Segment ids are stable across snapshots where the
    segments were aligned; they are not positions. Optional parts (``None``) leave their chart out.

    Attributes
    ----------
    kind : "segment" | "select-k" | "train" | "score".
    snapshot : the snapshot's date, YYYY-MM-DD.
    counts : rows_read, rows_written, rows_dropped, rows_imputed.
    fit : model metadata; any of n_iter, converged, log_likelihood, bic, aic, covariance_type,
        degenerate {pruned: [...]}, reseeded_components, alignment {...}.
    phases : phase name -> seconds.
    segments : one row per segment: segment (id), name, weight, size, share, mean_<feature> (original
        units), degenerate (reason or NA), mean_entropy_bits, high_entropy_share.
    profile_z : (K, D), index segment ids in ``segments`` order, columns ``features``: each
        component's mean as a z-score against the population, in model space.
    profile_raw : (K, D), same shape: each component's mean in original units (the cell labels).
    entropy_hist : counts of users over equal-width bins of normalised entropy on [0, 1].
    bands : {"low_max": …, "moderate_max": …} thresholds on normalised entropy.
    band_count : {"low": n, "moderate": n, "high": n}.
    overlaps : segment_a, segment_b, name_a, name_b, threshold, n_users, mean_gamma_a, mean_gamma_b
        (mean γ NaN where n_users is 0).
    components : per component, in ``segments`` order: {"segment", "name", "weight", "mean" (D,),
        "cov" (D, D)}, model space, full covariance.
    sample_z, sample_segment : (m, D) model-space rows of a sample of users and their segment ids.
    previous_segments : segment, name, size, share of the previous snapshot.
    transitions : user counts, index = ids on the previous snapshot, columns = ids on this one.
    segment_names : id -> name for every id in transitions/previous (births and deaths included).
    bic_table : n_components, covariance_type, bic, aic, log_likelihood, n_iter, converged, selected.
    criterion : the column of ``bic_table`` that chose the model ("bic" or "aic").
    forecast : segment, name, share_now, share_forecast (the next snapshot).
    backtest : held_out, segment, name, actual, markov, persistence (shares on held-out snapshots).
    backtest_scores : held_out, method ("markov" | "persistence"), share_mae, share_tv, user_brier.
    audiences : audience, definition, n_users, path.
    forecast_basis : what the forecast's shares are (mean membership γ, or hard segments).
    tables : table name -> path written.
    """

    kind: str
    snapshot: str
    model_version: str
    published: bool
    run_id: str
    counts: dict[str, int]
    fit: dict
    phases: dict[str, float]
    segments: pd.DataFrame
    features: list[str]
    profile_z: pd.DataFrame
    profile_raw: pd.DataFrame
    entropy_hist: np.ndarray
    bands: dict[str, float]
    band_count: dict[str, int]
    overlaps: pd.DataFrame | None
    components: list[dict]
    sample_z: np.ndarray | None
    sample_segment: np.ndarray | None
    previous_segments: pd.DataFrame | None = None
    previous_snapshot: str | None = None
    transitions: pd.DataFrame | None = None
    segment_names: dict[int, str] = field(default_factory=dict)
    bic_table: pd.DataFrame | None = None
    criterion: str = "bic"
    forecast: pd.DataFrame | None = None
    backtest: pd.DataFrame | None = None
    backtest_scores: pd.DataFrame | None = None
    audiences: pd.DataFrame | None = None
    forecast_basis: str = "mean membership γ"  # what the forecast's shares are
    tables: dict[str, str] = field(default_factory=dict)

    def names(self) -> dict[int, str]:
        """Segment id -> name, from every source that names one (this snapshot's names win)."""
        out = {int(k): str(v) for k, v in self.segment_names.items()}
        if _has_rows(self.previous_segments):
            out.update(
                {
                    int(i): str(n)
                    for i, n in zip(
                        self.previous_segments["segment"], self.previous_segments["name"], strict=True
                    )
                }
            )
        out.update(
            {int(i): str(n) for i, n in zip(self.segments["segment"], self.segments["name"], strict=True)}
        )
        return out

    def colors(self) -> dict[int, str]:
        """Segment id -> colour: this snapshot's segments by position, the others grey."""
        out = dict.fromkeys(self.names(), _GONE)
        out.update({int(s): _color(i) for i, s in enumerate(self.segments["segment"])})
        return out


# --- numbers as text (never 'nan') ----------------------------------------------------------------


def _finite(v: Any) -> bool:
    try:
        return v is not None and v is not pd.NA and math.isfinite(float(v))
    except (TypeError, ValueError):
        return False


def _int(v: Any) -> str:
    return f"{round(float(v)):,}" if _finite(v) else _DASH


def _pct(v: Any, digits: int = 1) -> str:
    """0.2471 -> '24.7%'; a share too small to show -> '<0.1%' (not '0.0%')."""
    if not _finite(v):
        return _DASH
    p, least = 100 * float(v), 10.0**-digits
    if 0 < p < least / 2:
        return f"<{least:.{digits}f}%"
    return f"{p:.{digits}f}%"


def _count(v: Any) -> str:
    """A count in little room: 8,421 or 12.3k."""
    return _int(v) if _finite(v) and abs(float(v)) < 10_000 else _compact(v)


def _num(v: Any, fmt: str = ",.2f") -> str:
    return format(float(v), fmt) if _finite(v) else _DASH


def _signed_pct(v: float) -> str:
    return f"{100 * v:+.1f}%".replace("-", "−")


def _compact(v: Any) -> str:
    """1234 -> '1.2k', 0.3512 -> '0.35', 12.34 -> '12.3', 0.0042 -> '0.0042', 3e-9 -> '≈0';
    a missing value -> '–'."""
    if not _finite(v):
        return _DASH
    v = float(v)
    a = abs(v)
    for scale, suffix in ((1e9, "B"), (1e6, "M"), (1e3, "k")):
        if a >= scale:
            s = f"{v / scale:.1f}" if a < 100 * scale else f"{v / scale:.0f}"
            return s.removesuffix(".0") + suffix
    if a == 0:
        return "0"
    if a >= 100:
        return f"{v:.0f}"
    if a >= 10:
        return f"{v:.1f}"
    if a >= 0.01:
        return f"{v:.2f}"
    return f"{v:.2g}" if a >= 1e-3 else "≈0"  # a mean at an atom of zeros is 1e-18, not news


def _has_rows(df: pd.DataFrame | None) -> bool:
    return df is not None and len(df) > 0


def _mpl_text(s: Any) -> str:
    """Text for matplotlib: a '$' would start mathtext."""
    return str(s).replace("$", r"\$")


# --- distances between Gaussians and the components' family tree ----------------------------------


def _chol_logdet(cov: np.ndarray) -> tuple[np.ndarray, float] | None:
    """Cholesky factor and log-determinant of a covariance, with a growing ridge if it is singular."""
    cov = np.asarray(cov, dtype=float)
    if not np.all(np.isfinite(cov)):
        return None
    scale = float(np.mean(np.abs(np.diag(cov)))) or 1.0
    for ridge in (0.0, 1e-12, 1e-9, 1e-6):
        try:
            chol = np.linalg.cholesky(cov + ridge * scale * np.eye(len(cov)))
        except np.linalg.LinAlgError:
            continue
        return chol, 2.0 * float(np.sum(np.log(np.diag(chol))))
    return None


def bhattacharyya_distance(mean_a, cov_a, mean_b, cov_b) -> float:
    """Bhattacharyya distance between 𝓝(μa, Σa) and 𝓝(μb, Σb).

    D_B = ⅛ (μa−μb)ᵀ Σ⁻¹ (μa−μb) + ½ ln(det Σ / √(det Σa det Σb)), with Σ = (Σa + Σb)/2; it is
    ``inf`` when a parameter is not finite. Symmetric, ≥ 0, and 0 only for identical Gaussians.
    """
    mean_a, mean_b = np.atleast_1d(np.asarray(mean_a, float)), np.atleast_1d(np.asarray(mean_b, float))
    cov_a, cov_b = np.atleast_2d(np.asarray(cov_a, float)), np.atleast_2d(np.asarray(cov_b, float))
    fa, fb, fm = _chol_logdet(cov_a), _chol_logdet(cov_b), _chol_logdet(0.5 * (cov_a + cov_b))
    diff = mean_a - mean_b
    if fa is None or fb is None or fm is None or not np.all(np.isfinite(diff)):
        return math.inf
    y = np.linalg.solve(fm[0], diff)  # L⁻¹ (μa − μb): its squared norm is the Mahalanobis term
    return max(0.0, float(y @ y) / 8.0 + 0.5 * (fm[1] - 0.5 * (fa[1] + fb[1])))


def gaussian_distance_matrix(components: Sequence[dict], metric: str = "bhattacharyya") -> np.ndarray:
    """Distances between the components' Gaussians, shape (K, K): symmetric, zero diagonal.

    ``metric="bhattacharyya"`` (the default, the family tree's): the Bhattacharyya distance D_B
    (:func:`bhattacharyya_distance`): 0 for identical Gaussians, growing without bound as they
    separate; for two equal covariances √(8 D_B) is the Mahalanobis distance between the means.
    ``inf`` where a component's parameters are not finite.

    ``metric="hellinger"``: H = √(1 − exp(−D_B)) in [0, 1], a true metric (the L² distance between
    √p and √q, scaled), 1 where a parameter is not finite. It saturates at 1 as soon as two
    Gaussians barely overlap, which in more than a few dimensions is almost every pair (the
    covariance term of D_B grows with D): fine to say "these two overlap", useless for a tree.

    ``components``: dicts with ``"mean"`` (D,) and ``"cov"`` (D, D), in one feature space.
    """
    if metric not in ("bhattacharyya", "hellinger"):
        msg = f"metric must be 'bhattacharyya' or 'hellinger'; got {metric!r}."
        raise ValueError(msg)
    k = len(components)
    out = np.zeros((k, k))
    for a in range(k):
        for b in range(a + 1, k):
            db = bhattacharyya_distance(
                components[a]["mean"], components[a]["cov"], components[b]["mean"], components[b]["cov"]
            )
            if metric == "hellinger":
                db = 1.0 if not math.isfinite(db) else math.sqrt(-math.expm1(-db))
            out[a, b] = out[b, a] = db
    return out


def _classical_mds(dist: np.ndarray) -> np.ndarray:
    """Points (K, r) whose Euclidean distances best match ``dist`` (Torgerson's classical MDS);
    the negative part of the spectrum (what no Euclidean space can hold) is dropped."""
    k = len(dist)
    j = np.eye(k) - 1.0 / k
    b = -0.5 * j @ (dist**2) @ j
    vals, vecs = np.linalg.eigh(0.5 * (b + b.T))
    keep = vals > 1e-12 * max(float(np.max(np.abs(vals))), 1e-300)
    if not keep.any():
        return np.zeros((k, 1))
    return vecs[:, keep] * np.sqrt(vals[keep])


def family_tree(components: Sequence[dict]) -> np.ndarray:
    """The components' family tree: Ward linkage of their Gaussians (a scipy linkage matrix).

    Distance: √D_B, the square root of the Bhattacharyya distance (for equal covariances, the
    Mahalanobis distance between the means over √8). Ward's update is exact only for Euclidean
    distances, and √D_B is Euclidean only when the covariances are equal, so the components are
    first placed in a Euclidean space by classical MDS on √D_B (dropping the spectrum's negative
    part, which comes from the covariances' differences), and Ward linkage runs on those points.
    A pair's first merge height is then (close to) its √D_B. The Hellinger distance, Euclidean by
    construction, was not used: it saturates at 1 for almost every pair in more than a few
    dimensions, which flattens the tree. A component with non-finite parameters is placed at twice
    the largest finite distance from every other.

    Returns the (K − 1, 4) matrix of :func:`scipy.cluster.hierarchy.linkage`; K must be ≥ 2.
    """
    from scipy.cluster.hierarchy import linkage

    if len(components) < 2:
        msg = f"A family tree needs at least 2 components; got {len(components)}."
        raise ValueError(msg)
    dist = np.sqrt(gaussian_distance_matrix(components))
    finite = np.isfinite(dist)
    if not finite.all():
        top = float(dist[finite].max()) if finite.any() else 0.0
        dist = np.where(finite, dist, 2.0 * top if top > 0 else 1.0)
        np.fill_diagonal(dist, 0.0)
    return linkage(_classical_mds(dist), method="ward", metric="euclidean")


# --- charts: matplotlib figures rendered to inline SVG ---------------------------------------------

_RC = {
    "svg.fonttype": "none",  # text stays text: searchable, small, crisp
    "svg.hashsalt": "gmm-dask",  # deterministic ids: the same data give the same page
    "font.family": "DejaVu Sans",  # what matplotlib measures text with (it ships the font)
    "font.size": 9,
    "axes.titlesize": 11,
    "axes.titleweight": "bold",
    "axes.titlelocation": "left",
    "axes.titlepad": 10,
    "axes.labelsize": 9,
    "axes.labelcolor": _INK,
    "axes.edgecolor": "#888888",
    "axes.spines.top": False,
    "axes.spines.right": False,
    "xtick.labelsize": 8,
    "ytick.labelsize": 8,
    "xtick.color": "#444444",
    "ytick.color": "#444444",
    "legend.fontsize": 8,
    "legend.frameon": False,
    "grid.color": "#e6e6e6",
    "grid.linewidth": 0.8,
    "figure.facecolor": "white",
    "savefig.facecolor": "white",
}
# rcParams are process-global: charts are built and saved under one lock.
_LOCK = threading.Lock()
_SVG_FONTS = "'DejaVu Sans', 'Bitstream Vera Sans', Verdana, sans-serif"
_ID = re.compile(r'\bid="([^"]+)"')
_REF = re.compile(r'(url\(#|href="#)([^")]+)')


@dataclass
class Chart:
    """One rendered chart: an id (``data-chart``), its inline SVG and a caption (HTML)."""

    id: str
    svg: str
    caption: str


def _figure(width: float, height: float):
    from matplotlib.backends.backend_svg import FigureCanvasSVG
    from matplotlib.figure import Figure

    fig = Figure(figsize=(width, height), layout="constrained")
    FigureCanvasSVG(fig)
    fig.get_layout_engine().set(h_pad=0.06, w_pad=0.08)
    return fig


def _render(chart_id: str, draw: Callable[[], Any]) -> str:
    """Build a figure with ``draw()`` under the report's style and return it as inline SVG."""
    import matplotlib as mpl

    buf = io.StringIO()
    with _LOCK, mpl.rc_context(_RC):
        fig = draw()
        try:
            fig.savefig(buf, format="svg", dpi=144, metadata={"Date": None})
        finally:
            fig.clear()
    return _inline_svg(buf.getvalue(), f"c-{chart_id}")


def _inline_svg(svg: str, prefix: str) -> str:
    """A standalone SVG document made fit to sit inside HTML: no prolog, doctype, comments or
    metadata, ids prefixed (several charts share one page), and scaling with the page."""
    svg = svg[svg.index("<svg") :]
    svg = re.sub(r"<!--.*?-->", "", svg, flags=re.S)
    svg = re.sub(r"<metadata>.*?</metadata>", "", svg, flags=re.S)
    ids = set(_ID.findall(svg))
    svg = _ID.sub(lambda m: f'id="{prefix}-{m[1]}"', svg)
    svg = _REF.sub(lambda m: f"{m[1]}{prefix}-{m[2]}" if m[2] in ids else m[0], svg)
    # the text was laid out with DejaVu Sans; where a browser lacks it, a font as wide (not serif)
    svg = svg.replace("font-family: 'DejaVu Sans'", f"font-family: {_SVG_FONTS}")
    return svg.replace("<svg ", '<svg role="img" ', 1).strip()


def _thousands(ax_axis) -> None:
    from matplotlib.ticker import FuncFormatter

    ax_axis.set_major_formatter(FuncFormatter(lambda v, _: f"{v:,.0f}"))


def _percent(ax_axis, digits: int | None = None) -> None:
    """Shares as percentages: fixed decimals, or as few as each tick needs ('12.5%', '15%')."""
    from matplotlib.ticker import FuncFormatter, MaxNLocator, PercentFormatter

    if digits is not None:
        ax_axis.set_major_formatter(PercentFormatter(1.0, decimals=digits))
        return
    ax_axis.set_major_locator(MaxNLocator(nbins=5, steps=[1, 2, 2.5, 5, 10]))
    ax_axis.set_major_formatter(FuncFormatter(lambda v, _: f"{round(100 * v, 6):g}%"))


def _chart_sizes(d: ReportData) -> Chart:
    names, colors = d.names(), d.colors()
    seg = d.segments
    now = {
        int(s): (int(n), float(sh))
        for s, n, sh in zip(seg["segment"], seg["size"], seg["share"], strict=True)
    }
    prev: dict[int, tuple[int, float]] = {}
    if _has_rows(d.previous_segments):
        ps = d.previous_segments
        prev = {
            int(s): (int(n), float(sh))
            for s, n, sh in zip(ps["segment"], ps["size"], ps["share"], strict=True)
        }
    order = sorted(now, key=lambda s: -now[s][0]) + sorted(
        (s for s in prev if s not in now), key=lambda s: -prev[s][0]
    )
    has_prev = bool(prev)
    total_now = sum(v[0] for v in now.values())

    def draw():
        n = len(order)
        fig = _figure(8.6, 1.15 + 0.34 * n)
        ax = fig.add_subplot()
        y = np.arange(n)
        top = max([now.get(s, (0, 0))[0] for s in order] + [prev.get(s, (0, 0))[0] for s in order] + [1])
        for i, s in enumerate(order):
            if has_prev and s in prev:
                ax.barh(
                    i, prev[s][0], height=0.78, color="#e4e4e4", edgecolor="#b5b5b5", linewidth=0.6, zorder=1
                )
            if s in now:
                ax.barh(i, now[s][0], height=0.46, color=colors[s], zorder=2)
                size, share = now[s]
                label = f"{size:,}  ({_pct(share)})"
            else:
                label = ""
            end = max(now.get(s, (0, 0))[0], prev.get(s, (0, 0))[0] if has_prev else 0)
            ax.annotate(
                label,
                (end, i),
                xytext=(4, 0),
                textcoords="offset points",
                va="center",
                fontsize=8,
                color=_INK,
            )
            if has_prev:
                if s not in prev:
                    change, tone = "new", "#2f7d32"
                elif s not in now:
                    change, tone = f"vanished (was {prev[s][0]:,})", "#b23b3b"
                elif prev[s][0] == 0:
                    change, tone = "new", "#2f7d32"
                else:
                    rel = now[s][0] / prev[s][0] - 1
                    change, tone = _signed_pct(rel), _INK
                ax.text(
                    1.02, i, change, transform=ax.get_yaxis_transform(), va="center", fontsize=8, color=tone
                )
        if has_prev:
            ax.text(
                1.02,
                1.0,
                f"change vs {d.previous_snapshot or 'previous'}",
                transform=ax.transAxes,
                va="bottom",
                fontsize=8,
                color=_MUTED,
                fontweight="bold",
            )
        ax.set_yticks(y, [_mpl_text(names.get(s, s)) for s in order])
        ax.set_ylim(n - 0.5, -0.5)
        ax.set_xlim(0, top * 1.28)
        _thousands(ax.xaxis)
        ax.grid(axis="x", zorder=0)
        ax.set_axisbelow(True)
        ax.set_xlabel("users (hard assignment: the segment of highest γ)")
        ax.set_title(f"Segment sizes, {d.snapshot}  ({total_now:,} users)")
        if has_prev:
            from matplotlib.patches import Patch

            fig.legend(
                handles=[
                    Patch(color=_MUTED, label=f"{d.snapshot}"),
                    Patch(
                        facecolor="#e4e4e4", edgecolor="#b5b5b5", label=f"{d.previous_snapshot or 'previous'}"
                    ),
                ],
                loc="outside lower center",
                ncols=2,
            )
        return fig

    cap = "Users per segment, with their share of all users."
    if has_prev:
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
    return Chart("sizes", _render("sizes", draw), html.escape(cap))


def _chart_profile(d: ReportData) -> Chart | None:
    if not d.features or not _has_rows(d.segments):
        return None
    names = d.names()
    ids = [int(s) for s in d.segments["segment"]]
    z = d.profile_z.reindex(index=ids, columns=d.features).to_numpy(float).T  # (D, K)
    raw = d.profile_raw.reindex(index=ids, columns=d.features).to_numpy(float).T
    finite = np.isfinite(z)
    zmax = float(np.max(np.abs(z[finite]))) if finite.any() else 1.0
    vlim = min(max(zmax, 0.5), 3.0)
    n_feat, k = z.shape

    def draw():
        import matplotlib as mpl
        from matplotlib.colors import Normalize

        cell_w = 0.78 if k <= 10 else 0.6
        fig = _figure(min(2.6 + cell_w * k + 1.1, 15.0), 1.5 + 0.36 * n_feat + 0.25 * min(k, 1))
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
                    _compact(raw[r, c]),
                    ha="center",
                    va="center",
                    fontsize=fs,
                    color="white" if light else _INK,
                    in_layout=False,  # inside its cell: no need to measure it for the layout
                )
        ax.set_xticks(
            np.arange(k), [_mpl_text(names[s]) for s in ids], rotation=30, ha="right", rotation_mode="anchor"
        )
        ax.set_yticks(np.arange(n_feat), [_mpl_text(f) for f in d.features])
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
    return Chart("profile", _render("profile", draw), html.escape(cap))


def _chart_entropy(d: ReportData) -> Chart:
    counts = np.nan_to_num(np.asarray(d.entropy_hist, dtype=float), nan=0.0)
    nb = max(len(counts), 1)
    edges = np.linspace(0.0, 1.0, nb + 1)
    lo, mid = float(d.bands.get("low_max", 0.25)), float(d.bands.get("moderate_max", 0.6))
    total = sum(int(v) for v in d.band_count.values() if _finite(v))

    def draw():
        from matplotlib.ticker import LogLocator, NullFormatter

        fig = _figure(8.6, 3.6)
        ax = fig.add_subplot()
        centres = 0.5 * (edges[:-1] + edges[1:])
        nz = counts > 0
        band_of = np.where(centres < lo, "low", np.where(centres < mid, "moderate", "high"))
        if nz.any():
            ax.bar(
                centres[nz],
                counts[nz],
                width=np.diff(edges)[nz] * 0.92,
                color=[_BAND_COLORS[b] for b in band_of[nz]],
                zorder=2,
            )
            top = float(counts.max())
        else:
            top = 1.0
        ax.set_yscale("log")
        ax.set_ylim(0.4, top * 12)
        ax.yaxis.set_major_locator(LogLocator(base=10))
        ax.yaxis.set_major_formatter(lambda v, _: _count(v) if v >= 1 else "")
        ax.yaxis.set_minor_formatter(NullFormatter())
        ax.set_xlim(0, 1)
        ax.grid(axis="y", zorder=0)
        ax.set_axisbelow(True)
        for x in (lo, mid):
            ax.axvline(x, color=_INK, linestyle="--", linewidth=1, zorder=3)
        ranges = {"low": f"< {lo:g}", "moderate": f"{lo:g} – {mid:g}", "high": f"≥ {mid:g}"}
        for band, a, b in (("low", 0.0, lo), ("moderate", lo, mid), ("high", mid, 1.0)):
            n = d.band_count.get(band)
            share = f" ({_pct(n / total)})" if total and _finite(n) else ""
            ax.text(
                (a + b) / 2,
                0.97,
                f"{band} ({ranges[band]})\n{_int(n)} user{'' if n == 1 else 's'}{share}",
                transform=ax.get_xaxis_transform(),
                ha="center",
                va="top",
                fontsize=8,
                color=_BAND_COLORS[band],
                fontweight="bold",
            )
        ax.set_xlabel(
            "normalised entropy of the membership vector γ  (H(γ) / log₂ K: 0 = one segment, 1 = all equal)"
        )
        ax.set_ylabel("users (log scale)")
        ax.set_title("Membership entropy")
        if not nz.any():
            ax.text(0.5, 0.4, "no users", transform=ax.transAxes, ha="center", color=_MUTED)
        return fig

    cap = (
        f"Users by the entropy of their memberships, in {nb} equal bins; the count axis is logarithmic, so "
        f"small bands stay visible. Dashed lines: the band thresholds (low below {lo:g}, moderate below "
        f"{mid:g}, high above). Low: a clear archetype; moderate: a hybrid; high: a fluid identity or an anomaly."
    )
    return Chart("entropy", _render("entropy", draw), html.escape(cap))


def _chart_transitions(d: ReportData) -> Chart | None:
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

    def draw():
        import matplotlib as mpl
        from matplotlib.colors import Normalize

        fig = _figure(min(3.2 + 0.75 * c + 1.0, 15.0), 1.6 + 0.42 * r)
        ax = fig.add_subplot()
        cmap = mpl.colormaps["Blues"].with_extremes(bad="#f3f3f3")
        im = ax.imshow(np.ma.masked_invalid(share), cmap=cmap, norm=Normalize(0, 1), aspect="auto")
        fs = 7.5 if c <= 8 else 6.5 if c <= 14 else 5.5
        for i in range(r):
            for j in range(c):
                n = counts[i, j]
                if n <= 0:
                    ax.text(
                        j, i, "·", ha="center", va="center", fontsize=fs, color="#aaaaaa", in_layout=False
                    )
                    continue
                dark = share[i, j] > 0.55
                ax.text(
                    j,
                    i,
                    _pct(share[i, j], 0) if c > 12 else f"{_pct(share[i, j], 0)}\n{_count(n)}",
                    ha="center",
                    va="center",
                    fontsize=fs,
                    color="white" if dark else _INK,
                    linespacing=1.1,
                    in_layout=False,
                )
        ax.set_xticks(
            np.arange(c),
            [_mpl_text(names.get(s, s)) for s in cols],
            rotation=30,
            ha="right",
            rotation_mode="anchor",
        )
        ax.set_yticks(
            np.arange(r),
            [f"{_mpl_text(names.get(s, s))} ({_int(n)})" for s, n in zip(rows, tot, strict=True)],
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
        cb.set_label("share of the row's users")
        _percent(cb.ax.yaxis, 0)
        cb.outline.set_visible(False)
        return fig

    cap = (
        f"Where the users of each segment of {d.previous_snapshot or 'the previous snapshot'} are on {d.snapshot}"
        " (users present on both dates; row labels give their number). Each cell: the share of the row's users"
        + ("." if c > 12 else " and their number.")
    )
    return Chart("transitions", _render("transitions", draw), html.escape(cap))


def _chart_bic(d: ReportData) -> Chart | None:
    tab = d.bic_table
    if not _has_rows(tab):
        return None
    crit = d.criterion if d.criterion in tab.columns else "bic"
    tab = tab[np.isfinite(pd.to_numeric(tab[crit], errors="coerce").astype(float))]
    if not len(tab):
        return None
    label = crit.upper()

    def draw():
        from matplotlib.ticker import MaxNLocator

        fig = _figure(8.6, 3.8)
        ax = fig.add_subplot()
        for i, (ct, grp) in enumerate(tab.groupby("covariance_type", sort=True)):
            grp = grp.sort_values("n_components")
            ax.plot(
                grp["n_components"],
                grp[crit],
                marker="o",
                markersize=4,
                color=_color(i),
                label=_mpl_text(ct),
                lw=1.6,
            )
        if "selected" in tab.columns:
            sel = tab[tab["selected"].fillna(False).astype(bool)]
            for row in sel.itertuples(index=False):
                x, yv = row.n_components, getattr(row, crit)
                ax.plot(
                    x, yv, marker="o", markersize=13, markerfacecolor="none", markeredgecolor=_INK, mew=1.6
                )
                ax.annotate(
                    f"selected: K={x}, {row.covariance_type}\n{label} {yv:,.0f}",
                    (x, yv),
                    xytext=(14, -16),
                    textcoords="offset points",
                    va="top",
                    fontsize=8,
                    color=_INK,
                    arrowprops={"arrowstyle": "-", "color": _MUTED, "lw": 0.8},
                )
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.margins(x=0.06, y=0.16)
        _thousands(ax.yaxis)
        ax.grid(zorder=0)
        ax.set_axisbelow(True)
        ax.set_xlabel("number of components K")
        ax.set_ylabel(f"{label} (lower is better)")
        ax.set_title(f"Model selection: {label} by K and covariance type")
        ax.legend(title="covariance", loc="upper right", title_fontsize=8)
        return fig

    cap = (
        f"{label} of each candidate fit (one line per covariance type); the circled point is the model chosen. "
        + ("BIC" if crit == "bic" else "AIC")
        + " trades the log-likelihood against the number of parameters; lower is better."
    )
    return Chart("bic", _render("bic", draw), html.escape(cap))


def _pca(z: np.ndarray, means: np.ndarray | None) -> tuple[np.ndarray, np.ndarray | None, np.ndarray]:
    centre = z.mean(axis=0)
    _, s, vt = np.linalg.svd(z - centre, full_matrices=False)
    var = s**2
    frac = var / var.sum() if var.sum() > 0 else np.zeros_like(var)
    pts = (z - centre) @ vt[:2].T
    mp = None if means is None else (means - centre) @ vt[:2].T
    return pts, mp, frac


def _chart_projection(d: ReportData) -> Chart | None:
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
    names, colors = d.names(), d.colors()
    comp_ids = [int(c["segment"]) for c in d.components]
    means = None
    if d.components:
        means = np.array([np.atleast_1d(np.asarray(c["mean"], float)) for c in d.components])
        if means.shape[1] != z.shape[1]:
            means = None
    present = [s for s in [int(x) for x in d.segments["segment"]] if (seg == s).any()]
    present += sorted(set(np.unique(seg).tolist()) - set(present))
    raster = len(z) > 1500
    m, dim = z.shape

    def draw_2d():
        pts, mp, frac = _pca(z, means)
        fig = _figure(8.6, 5.6)
        ax = fig.add_subplot()
        for s in present:
            sel = seg == s
            ax.scatter(
                pts[sel, 0],
                pts[sel, 1],
                s=5,
                alpha=0.45,
                color=colors.get(s, _GONE),
                linewidths=0,
                label=f"{_mpl_text(names.get(s, s))} ({int(sel.sum()):,})"
                if len(comp_ids) <= 10
                else f"{s}: {_mpl_text(names.get(s, s))} ({int(sel.sum()):,})",
                rasterized=raster,
            )
        if mp is not None:
            import matplotlib.patheffects as pe

            halo = [pe.withStroke(linewidth=3, foreground="white")]
            short = len(comp_ids) > 10  # long names would pile up: the id, and the legend names it
            for (x, y), s in zip(mp, comp_ids, strict=True):
                if not (np.isfinite(x) and np.isfinite(y)):
                    continue
                ax.plot(x, y, marker="X", markersize=9, color=colors.get(s, _GONE), mec=_INK, mew=0.9)
                ax.annotate(
                    str(s) if short else _mpl_text(names.get(s, s)),
                    (x, y),
                    xytext=(6, 5),
                    textcoords="offset points",
                    fontsize=8,
                    fontweight="bold",
                    color=_INK,
                    path_effects=halo,
                )
        ax.set_xlabel(f"PC1 ({_pct(frac[0])} of variance)")
        ax.set_ylabel(f"PC2 ({_pct(frac[1])} of variance)" if len(frac) > 1 else "PC2")
        ax.grid(zorder=0)
        ax.set_axisbelow(True)
        ax.set_title("Users in 2-D: PCA of a sample, coloured by segment")
        leg = ax.legend(
            title="segment (sampled users)",
            loc="upper left",
            bbox_to_anchor=(1.01, 1.0),
            markerscale=2.5,
            title_fontsize=8,
            alignment="left",
        )
        for h in leg.legend_handles:
            h.set_alpha(1.0)
        return fig

    def draw_1d():
        fig = _figure(8.6, 1.3 + 0.34 * len(present))
        ax = fig.add_subplot()
        rng = np.random.default_rng(0)
        for i, s in enumerate(present):
            sel = seg == s
            ax.scatter(
                z[sel, 0],
                i + rng.uniform(-0.28, 0.28, int(sel.sum())),
                s=5,
                alpha=0.45,
                color=colors.get(s, _GONE),
                linewidths=0,
                rasterized=raster,
            )
            if means is not None and s in comp_ids:
                mu = means[comp_ids.index(s), 0]
                if np.isfinite(mu):
                    ax.plot([mu, mu], [i - 0.38, i + 0.38], color=_INK, lw=2)
        ax.set_yticks(np.arange(len(present)), [_mpl_text(names.get(s, s)) for s in present])
        ax.set_ylim(len(present) - 0.5, -0.5)
        ax.grid(axis="x", zorder=0)
        ax.set_axisbelow(True)
        ax.set_xlabel(
            f"{_mpl_text(d.features[0]) if d.features else 'feature'} (model space: transformed, standardised)"
        )
        ax.set_title("Users in 2-D: one feature, one strip per segment")
        return fig

    if dim >= 2:
        cap = (
            f"A sample of {m:,} users projected on the first two principal components of the model's inputs "
            "(transformed, standardised features), coloured by their segment; ✕: each component's mean, projected."
        )
        return Chart("projection", _render("projection", draw_2d), html.escape(cap))
    cap = (
        f"The model has one feature, so there is nothing to project: a sample of {m:,} users along it, one strip "
        "per segment (vertical jitter only); black tick: the component's mean."
    )
    return Chart("projection", _render("projection", draw_1d), html.escape(cap))


def _chart_family_tree(d: ReportData) -> Chart | None:
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

    def draw():
        fig = _figure(8.6, 1.2 + 0.36 * k)
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
                    color=_MUTED,
                )
        pos = 5 + 10 * np.arange(k)
        ax.scatter(np.zeros(k), pos, s=46, marker="s", color=[colors.get(s, _GONE) for s in leaves], zorder=3)
        weights = {int(c["segment"]): c.get("weight") for c in d.components}
        ax.set_yticks(
            pos,
            [f"{_mpl_text(labels[ids.index(s)])} ({_pct(weights.get(s))})" for s in leaves],
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
        "join early are the most alike: candidates to merge. Labels: segment (mixture weight)."
    )
    return Chart("family-tree", _render("family-tree", draw), html.escape(cap))


def _mae_caption(scores: pd.DataFrame | None) -> str:
    if not _has_rows(scores) or "share_mae" not in scores.columns:
        return ""
    agg = scores.groupby("method")["share_mae"].mean()
    n = scores["held_out"].nunique() if "held_out" in scores.columns else len(scores)
    parts = [f"{m} {100 * v:.2f} pp" for m, v in agg.items() if _finite(v)]
    if not parts:
        return ""
    return f" Mean absolute error of the shares over {n} held-out snapshot{'s' if n != 1 else ''}: {', '.join(parts)}."


def _chart_forecast(d: ReportData) -> Chart | None:
    bt, fc = d.backtest, d.forecast
    if not _has_rows(bt) and not _has_rows(fc):
        return None
    names = d.names()
    dates = sorted(bt["held_out"].astype(str).unique())[-3:] if _has_rows(bt) else []
    seen: list[int] = [int(s) for s in d.segments["segment"]]
    for frame in (bt, fc):
        if _has_rows(frame):
            for s, n in zip(frame["segment"], frame["name"], strict=True):
                names.setdefault(int(s), n if isinstance(n, str) and n else f"segment {int(s)}")
                if int(s) not in seen:
                    seen.append(int(s))
    used = set()
    for frame in (bt, fc):
        if _has_rows(frame):
            used |= {int(s) for s in frame["segment"]}
    order = [s for s in seen if s in used]
    pos = {s: i for i, s in enumerate(order)}
    scores = d.backtest_scores
    styles = {
        "actual": {"marker": "o", "color": _INK, "ms": 6.5, "mfc": _INK, "label": "actual"},
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

    def draw():
        n_panels = len(dates) + (1 if _has_rows(fc) else 0)
        fig = _figure(min(2.2 + 2.6 * n_panels, 14.0), 1.7 + 0.34 * len(order))
        axes = fig.subplots(1, n_panels, sharey=True, squeeze=False)[0]
        for ax, date in zip(axes, dates, strict=False):
            sub = bt[bt["held_out"].astype(str) == date]
            for row in sub.itertuples(index=False):
                y = pos[int(row.segment)]
                vals = [v for v in (row.actual, row.markov, row.persistence) if _finite(v)]
                if vals:
                    ax.plot([min(vals), max(vals)], [y, y], color="#cccccc", lw=2.2, zorder=1)
            for key, st in styles.items():
                ok = sub[key].map(_finite) if len(sub) else sub[key]
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
            title = f"held out {date}"
            if _has_rows(scores) and {"held_out", "method", "share_mae"} <= set(scores.columns):
                sc = scores[scores["held_out"].astype(str) == date]
                bits = [
                    f"{m} {100 * v:.2f} pp"
                    for m, v in zip(sc["method"], sc["share_mae"], strict=True)
                    if _finite(v)
                ]
                if bits:
                    title += "\nMAE: " + "\n".join(bits)
            ax.set_title(title, fontsize=9)
        if _has_rows(fc):
            ax = axes[-1]
            for row in fc.itertuples(index=False):
                y = pos[int(row.segment)]
                if _finite(row.share_now) and _finite(row.share_forecast):
                    ax.annotate(
                        "",
                        (row.share_forecast, y),
                        (row.share_now, y),
                        arrowprops={
                            "arrowstyle": "->",
                            "color": PALETTE[0],
                            "lw": 1.2,
                            "shrinkA": 3,
                            "shrinkB": 3,
                        },
                    )
            ok_now = fc["share_now"].map(_finite)
            ok_fc = fc["share_forecast"].map(_finite)
            ax.plot(
                fc.loc[ok_now, "share_now"],
                [pos[int(s)] for s in fc.loc[ok_now, "segment"]],
                linestyle="none",
                marker="o",
                ms=6.5,
                color=_INK,
                mfc="white",
                label=f"now ({d.snapshot})",
                zorder=3,
            )
            ax.plot(
                fc.loc[ok_fc, "share_forecast"],
                [pos[int(s)] for s in fc.loc[ok_fc, "segment"]],
                linestyle="none",
                marker="D",
                ms=5.5,
                color=PALETTE[0],
                label="Markov forecast",
                zorder=3,
            )
            ax.set_title(f"next snapshot\n(forecast from {d.snapshot})", fontsize=9)
        for ax in axes:
            _percent(ax.xaxis)
            ax.grid(axis="x", zorder=0)
            ax.set_axisbelow(True)
            ax.set_xlabel("share of users")
            ax.margins(x=0.12)
        axes[0].set_yticks(np.arange(len(order)), [_mpl_text(names.get(s, s)) for s in order])
        axes[0].set_ylim(len(order) - 0.5, -0.5)
        handles, labels = [], []
        for ax in axes:
            for h, lab in zip(*ax.get_legend_handles_labels(), strict=True):
                if lab not in labels:
                    handles.append(h)
                    labels.append(lab)
        fig.legend(handles, labels, loc="outside lower center", ncols=min(len(labels), 5))
        fig.suptitle(
            "Forecast of segment shares against actuals", x=0.01, ha="left", fontweight="bold", fontsize=11
        )
        return fig

    cap = f"Segment shares ({d.forecast_basis}): "
    if dates:
        cap += (
            "for held-out snapshots, the actual share against the Markov forecast (the previous shares times "
            "a transition matrix fitted on the steps before them, recent steps weighted more) and "
            "persistence (shares unchanged)"
        )
    if _has_rows(fc):
        cap += ("; " if dates else "") + f"the forecast for the snapshot after {d.snapshot}"
    cap += "." + _mae_caption(scores)
    return Chart("forecast", _render("forecast", draw), html.escape(cap))


# --- HTML ------------------------------------------------------------------------------------------


def _cell(v: Any, cls: str = "") -> str:
    c = f' class="{cls}"' if cls else ""
    return f"<td{c}>{html.escape(str(v))}</td>"


def _table(
    headers: Sequence[str],
    rows: Iterable[Sequence[Any]],
    *,
    numeric: Iterable[int] = (),
    caption: str = "",
    row_class: Sequence[str] | None = None,
) -> str:
    """An HTML table; every value is escaped; columns listed in ``numeric`` are right-aligned."""
    num = set(numeric)
    head = "".join(
        f'<th{" class=num" if i in num else ""} scope="col">{html.escape(h).replace("_", "_<wbr>")}</th>'
        for i, h in enumerate(headers)
    )
    body = []
    for r, row in enumerate(rows):
        cls = f' class="{row_class[r]}"' if row_class and row_class[r] else ""
        body.append(
            f"<tr{cls}>" + "".join(_cell(v, "num" if i in num else "") for i, v in enumerate(row)) + "</tr>"
        )
    cap = f"<caption>{html.escape(caption)}</caption>" if caption else ""
    return f'<div class="table-wrap"><table>{cap}<thead><tr>{head}</tr></thead><tbody>{"".join(body)}</tbody></table></div>'


def _figure_html(ch: Chart) -> str:
    return (
        f'<figure class="chart" data-chart="{ch.id}">{ch.svg}<figcaption>{ch.caption}</figcaption></figure>'
    )


def _note(text: str) -> str:
    return f'<p class="note">{html.escape(text)}</p>'


def _feature_cols(d: ReportData) -> list[tuple[str, str]]:
    return [(f, f"mean_{f}") for f in d.features if f"mean_{f}" in d.segments.columns]


def _segments_table(d: ReportData) -> str:
    seg = d.segments
    feats = _feature_cols(d)
    prev = {}
    if _has_rows(d.previous_segments):
        prev = {
            int(s): float(sh)
            for s, sh in zip(d.previous_segments["segment"], d.previous_segments["share"], strict=True)
        }
    headers = ["segment", "id", "weight π", "users", "share"]
    if prev:
        headers += ["previous share", "Δ share (pp)"]
    headers += ["mean entropy (bits)", "high-entropy share"] + [f for f, _ in feats]
    rows = []
    for _, r in seg.iterrows():
        s = int(r["segment"])
        row = [r["name"], s, _num(r.get("weight"), ".3f"), _int(r.get("size")), _pct(r.get("share"))]
        if prev:
            p = prev.get(s)
            row += [
                _pct(p) if p is not None else "new",
                _num(100 * (float(r["share"]) - p), "+.1f").replace("-", "−") if p is not None else _DASH,
            ]
        row += [_num(r.get("mean_entropy_bits"), ".3f"), _pct(r.get("high_entropy_share"))]
        row += [_compact(r.get(col)) for _, col in feats]
        rows.append(row)
    cap = "Segments" + (": mean of each feature in its original units" if feats else "")
    out = _table(headers, rows, numeric=range(1, len(headers)), caption=cap)
    flagged = _flagged(d)
    if flagged:
        items = "".join(f"<li><b>{html.escape(n)}</b>: {html.escape(why)}</li>" for n, why in flagged)
        out += f'<div class="flags"><p>Degenerate components</p><ul>{items}</ul></div>'
    return out


def _flagged(d: ReportData) -> list[tuple[str, str]]:
    """(name, reason) of the components the fit flagged as degenerate."""
    if "degenerate" not in d.segments.columns:
        return []
    return [
        (str(n), str(v))
        for n, v in zip(d.segments["name"], d.segments["degenerate"], strict=True)
        if isinstance(v, str) and v
    ]


def _pairs(d: ReportData, top: int = 10) -> pd.DataFrame | None:
    ov = d.overlaps
    if not _has_rows(ov):
        return None
    ov = ov[pd.to_numeric(ov["n_users"], errors="coerce").fillna(0) > 0]
    return ov.sort_values("n_users", ascending=False).head(top) if len(ov) else None


def _gamma_pair(a: Any, b: Any) -> str:
    return f"{_num(a, '.2f')} / {_num(b, '.2f')}"


def _pairs_table(d: ReportData) -> str:
    pairs = _pairs(d)
    if pairs is None:
        return _note("No user carries a high membership on two segments at once.")
    thr = pairs["threshold"].iloc[0] if "threshold" in pairs.columns else None
    rows = [
        [f"{r.name_a} + {r.name_b}", _int(r.n_users), _gamma_pair(r.mean_gamma_a, r.mean_gamma_b)]
        for r in pairs.itertuples(index=False)
    ]
    cap = (
        "Most blended pairs: users with γ ≥ "
        + (_num(thr, "g") if _finite(thr) else "the threshold")
        + " on both segments"
    )
    return _table(["pair", "users", "mean γ (first / second)"], rows, numeric=[1, 2], caption=cap)


def _bands_table(d: ReportData) -> str:
    total = sum(int(v) for v in d.band_count.values() if _finite(v))
    lo, mid = d.bands.get("low_max", 0.25), d.bands.get("moderate_max", 0.6)
    ranges = {
        "low": f"< {_num(lo, 'g')}",
        "moderate": f"{_num(lo, 'g')} – {_num(mid, 'g')}",
        "high": f"≥ {_num(mid, 'g')}",
    }
    rows = [
        [b, ranges.get(b, ""), _int(n), _pct(n / total) if total and _finite(n) else _DASH]
        for b, n in d.band_count.items()
    ]
    return _table(["band", "normalised entropy", "users", "share"], rows, numeric=[2, 3])


def _fit_rows(d: ReportData) -> list[list[str]]:
    f = d.fit or {}
    c = d.counts or {}
    rows = [
        ["rows read", _int(c.get("rows_read"))],
        ["rows written", _int(c.get("rows_written"))],
        ["rows dropped (missing values)", _int(c.get("rows_dropped"))],
        ["rows imputed", _int(c.get("rows_imputed"))],
    ]
    if "n_iter" in f:
        rows.append(["EM iterations", _int(f.get("n_iter"))])
    if "converged" in f:
        rows.append(["converged", "yes" if f.get("converged") else "no"])
    for key, label, fmt in (
        ("log_likelihood", "mean log-likelihood", ".5f"),
        ("bic", "BIC", ",.1f"),
        ("aic", "AIC", ",.1f"),
    ):
        if key in f:
            rows.append([label, _num(f.get(key), fmt)])
    if f.get("covariance_type"):
        rows.append(["covariance type", str(f["covariance_type"])])
    if f.get("reseeded_components"):
        rows.append(["re-seeded during the fit (iteration, component)", str(f["reseeded_components"])])
    pruned = (f.get("degenerate") or {}).get("pruned") if isinstance(f.get("degenerate"), dict) else None
    if pruned:
        rows.append(
            ["pruned and refitted without", "; ".join(f"{p.get('name')} ({p.get('reason')})" for p in pruned)]
        )
    align = f.get("alignment")
    if isinstance(align, dict) and align:
        for k, v in align.items():
            if v not in (None, [], {}, ""):
                rows.append([f"alignment: {k}", _plain(v)])
    return rows


def _plain(v: Any) -> str:
    """A small value (number, list, dict) as one line of text, with no 'nan'."""
    if isinstance(v, float):
        return _num(v, "g")
    if isinstance(v, dict):
        return ", ".join(f"{k}: {_plain(x)}" for k, x in v.items())
    if isinstance(v, list | tuple):
        return ", ".join(_plain(x) for x in v)
    return str(v)


def _phases_table(d: ReportData) -> str:
    if not d.phases:
        return ""
    total = sum(v for v in d.phases.values() if _finite(v))
    rows = [[k, _num(v, ".2f"), _pct(v / total) if total else _DASH] for k, v in d.phases.items()]
    rows.append(["total", _num(total, ".2f"), "100.0%" if total else _DASH])
    return _table(
        ["phase", "seconds", "share"],
        rows,
        numeric=[1, 2],
        caption="Time by phase",
        row_class=[""] * (len(rows) - 1) + ["total"],
    )


def _bic_table_html(d: ReportData) -> str:
    tab = d.bic_table
    if not _has_rows(tab):
        return ""
    cols = [
        c
        for c in ("n_components", "covariance_type", "bic", "aic", "log_likelihood", "n_iter", "converged")
        if c in tab.columns
    ]
    labels = {
        "n_components": "K",
        "covariance_type": "covariance",
        "bic": "BIC",
        "aic": "AIC",
        "log_likelihood": "log-likelihood",
        "n_iter": "iterations",
        "converged": "converged",
    }
    fmts = {"bic": ",.1f", "aic": ",.1f", "log_likelihood": ".5f"}
    srt = tab.sort_values(["covariance_type", "n_components"])
    rows, classes = [], []
    for _, r in srt.iterrows():
        row = []
        for c in cols:
            v = r[c]
            if c in fmts:
                row.append(_num(v, fmts[c]))
            elif c == "converged":
                row.append("yes" if bool(v) else "no")
            else:
                row.append(str(v))
        rows.append(row)
        classes.append("selected" if "selected" in tab.columns and bool(r["selected"]) else "")
    numeric = [i for i, c in enumerate(cols) if c not in ("covariance_type", "converged")]
    return _table(
        [labels[c] for c in cols],
        rows,
        numeric=numeric,
        caption="Candidates (chosen row highlighted)",
        row_class=classes,
    )


def _scores_table(d: ReportData) -> str:
    sc = d.backtest_scores
    if not _has_rows(sc):
        return ""
    cols = [c for c in ("held_out", "method", "share_mae", "share_tv", "user_brier") if c in sc.columns]
    labels = {
        "held_out": "held out",
        "method": "method",
        "share_mae": "MAE of shares (pp)",
        "share_tv": "total variation",
        "user_brier": "user Brier score",
    }
    rows = []
    for _, r in sc.sort_values([c for c in ("held_out", "method") if c in cols]).iterrows():
        row = []
        for c in cols:
            v = r[c]
            if c == "share_mae":
                row.append(_num(100 * float(v), ".2f") if _finite(v) else _DASH)
            elif c in ("share_tv", "user_brier"):
                row.append(_num(v, ".4f"))
            else:
                row.append(str(v)[:10] if c == "held_out" else str(v))
        rows.append(row)
    return _table(
        [labels[c] for c in cols],
        rows,
        numeric=[i for i, c in enumerate(cols) if c not in ("held_out", "method")],
        caption="Backtest: forecast errors on held-out snapshots (lower is better)",
    )


def _forecast_table(d: ReportData) -> str:
    fc = d.forecast
    if not _has_rows(fc):
        return ""
    rows = [
        [
            r.name,
            _pct(r.share_now),
            _pct(r.share_forecast),
            _num(100 * (float(r.share_forecast) - float(r.share_now)), "+.1f").replace("-", "−")
            if _finite(r.share_now) and _finite(r.share_forecast)
            else _DASH,
        ]
        for r in fc.itertuples(index=False)
    ]
    return _table(
        ["segment", f"share {d.snapshot}", "forecast, next snapshot", "change (pp)"],
        rows,
        numeric=[1, 2, 3],
        caption="Forecast for the next snapshot",
    )


def _audiences_table(d: ReportData) -> str:
    au = d.audiences
    if not _has_rows(au):
        return ""
    rows = [
        [r.get("audience", ""), r.get("definition", ""), _int(r.get("n_users")), r.get("path", "")]
        for _, r in au.iterrows()
    ]
    return _table(["audience", "definition", "users", "path"], rows, numeric=[2])


def _tables_table(d: ReportData) -> str:
    if not d.tables:
        return _note("No table was written.")
    return _table(["table", "path"], [[k, v] for k, v in d.tables.items()], caption="Tables written")


def _cards(d: ReportData) -> str:
    c, f = d.counts or {}, d.fit or {}
    total = sum(int(v) for v in d.band_count.values() if _finite(v))
    items = [
        ("users segmented", _int(c.get("rows_written"))),
        ("segments", str(len(d.segments))),
        ("clear archetypes (low entropy)", _pct(d.band_count.get("low", 0) / total) if total else _DASH),
        ("high entropy", _pct(d.band_count.get("high", 0) / total) if total else _DASH),
    ]
    if "n_iter" in f:
        conv = "converged" if f.get("converged") else "not converged"
        items.append(("EM", f"{_int(f.get('n_iter'))} iterations, {conv}"))
    if d.phases:
        items.append(("run time", f"{_num(sum(v for v in d.phases.values() if _finite(v)), '.1f')} s"))
    return (
        '<dl class="cards">'
        + "".join(f"<div><dt>{html.escape(k)}</dt><dd>{html.escape(v)}</dd></div>" for k, v in items)
        + "</dl>"
    )


_CSS = """
:root{--ink:#1f2328;--muted:#5b636b;--line:#d8dde3;--bg:#f6f7f9;--accent:#4e79a7}
*{box-sizing:border-box}
body{margin:0;font:15px/1.5 system-ui,-apple-system,"Segoe UI",Roboto,"Helvetica Neue",Arial,sans-serif;color:var(--ink);background:var(--bg)}
header{background:#fff;border-bottom:1px solid var(--line);padding:22px 32px 14px}
header h1{margin:0 0 2px;font-size:24px}
.meta{margin:0;color:var(--muted);font-size:14px}
.badge{display:inline-block;padding:1px 8px;border-radius:10px;font-size:12px;font-weight:600;vertical-align:2px}
.badge.pub{background:#e3f1e4;color:#1e6b25}.badge.cand{background:#fff1d6;color:#8a5a00}
.cards{display:flex;flex-wrap:wrap;gap:10px;margin:14px 0 0;padding:0}
.cards div{background:var(--bg);border:1px solid var(--line);border-radius:8px;padding:8px 14px;min-width:150px}
.cards dt{font-size:12px;color:var(--muted)}.cards dd{margin:0;font-size:18px;font-weight:600;font-variant-numeric:tabular-nums}
nav{position:sticky;top:0;z-index:2;background:#fff;border-bottom:1px solid var(--line);padding:8px 32px;font-size:14px}
nav a{color:var(--accent);text-decoration:none;margin-right:18px;white-space:nowrap}nav a:hover{text-decoration:underline}
main{max-width:1180px;margin:0 auto;padding:8px 24px 40px}
section{background:#fff;border:1px solid var(--line);border-radius:10px;padding:18px 24px;margin:20px 0}
h2{margin:0 0 10px;font-size:19px}
figure.chart{margin:6px 0 18px}
figure.chart svg{display:block;max-width:100%;height:auto}
section{scroll-margin-top:48px}
figcaption{color:var(--muted);font-size:13.5px;max-width:80ch;margin-top:4px}
.table-wrap{overflow-x:auto;margin:8px 0 16px}
table{border-collapse:collapse;font-size:13.5px;font-variant-numeric:tabular-nums}
caption{text-align:left;font-weight:600;padding:0 0 6px;color:var(--ink)}
th,td{padding:5px 10px;border-bottom:1px solid var(--line);text-align:left;vertical-align:top}
th{background:#f0f2f5;font-weight:600;vertical-align:bottom}
td.num,th.num{text-align:right}
td:first-child{white-space:nowrap}
tbody tr:nth-child(even){background:#fafbfc}
tr.selected td{background:#fff4cc;font-weight:600}
tr.total td{font-weight:600;border-top:2px solid var(--line)}
.note{color:var(--muted);font-style:italic}
.flags{background:#fff8e6;border:1px solid #f0d9a0;border-radius:8px;padding:8px 14px;font-size:13.5px;margin:0 0 12px}
.flags p{margin:0 0 4px;font-weight:600}.flags ul{margin:0;padding-left:20px}
footer{color:var(--muted);font-size:12px;text-align:center;padding:0 0 24px}
"""


def html_report(data: ReportData) -> str:
    """The run's report: one self-contained HTML page (inline SVG charts and CSS, no script, no network)."""
    d = data
    title = f"{_TITLES.get(d.kind, d.kind.title())} of snapshot {d.snapshot}"
    status = (
        '<span class="badge pub">published</span>'
        if d.published
        else '<span class="badge cand">candidate (not published)</span>'
    )
    meta = f"model {html.escape(d.model_version)} · run {html.escape(d.run_id or _DASH)} · {status}"

    sections: list[tuple[str, str, str]] = []  # (id, heading, body)

    sizes = _chart_sizes(d)
    sections.append(("segments", "Segments", _figure_html(sizes) + _segments_table(d)))

    profile = _chart_profile(d)
    sections.append(
        (
            "profiles",
            "Segment profiles",
            _figure_html(profile) if profile else _note("No features to profile."),
        )
    )

    entropy = _chart_entropy(d)
    sections.append(
        ("entropy", "Membership entropy", _figure_html(entropy) + _bands_table(d) + _pairs_table(d))
    )

    trans = _chart_transitions(d)
    if trans:
        sections.append(("transitions", "Transitions", _figure_html(trans)))

    fc = _chart_forecast(d)
    if fc:
        sections.append(("forecast", "Forecast", _figure_html(fc) + _scores_table(d) + _forecast_table(d)))

    bic = _chart_bic(d)
    if bic:
        sections.append(("model-selection", "Model selection", _figure_html(bic) + _bic_table_html(d)))

    proj = _chart_projection(d)
    sections.append(
        (
            "projection",
            "Users in 2-D",
            _figure_html(proj)
            if proj
            else _note("No sample of users was kept for this run, so there is no projection."),
        )
    )

    tree = _chart_family_tree(d)
    sections.append(
        (
            "family-tree",
            "Family tree",
            _figure_html(tree) if tree else _note("One component: there is no family tree to draw."),
        )
    )

    if _has_rows(d.audiences):
        sections.append(("audiences", "Audiences", _audiences_table(d)))

    run_body = (
        _table(["", ""], _fit_rows(d), numeric=[1], caption="Rows and fit")
        + _phases_table(d)
        + _tables_table(d)
    )
    sections.append(("run", "Run", run_body))

    nav = "".join(f'<a href="#{sid}">{html.escape(h)}</a>' for sid, h, _ in sections)
    body = "".join(f'<section id="{sid}"><h2>{html.escape(h)}</h2>{b}</section>' for sid, h, b in sections)
    from gmm_dask._version import package_version

    return (
        '<!doctype html>\n<html lang="en"><head><meta charset="utf-8">'
        '<meta name="viewport" content="width=device-width, initial-scale=1">'
        f"<title>{html.escape(title)} · model {html.escape(d.model_version)}</title><style>{_CSS}</style></head><body>"
        f"<header><h1>{html.escape(title)}</h1><p class=meta>{meta}</p>{_cards(d)}</header>"
        f"<nav>{nav}</nav><main>{body}</main>"
        f"<footer>gmm-dask {html.escape(package_version())}</footer></body></html>\n"
    )


# --- markdown (the Prefect UI's artifact) -----------------------------------------------------------


def _md_escape(v: Any) -> str:
    return str(v).replace("|", "\\|").replace("\n", " ")


def _md_table(headers: Sequence[str], rows: Iterable[Sequence[Any]], right: Iterable[int] = ()) -> list[str]:
    r = set(right)
    out = ["| " + " | ".join(_md_escape(h) for h in headers) + " |"]
    out.append("|" + "|".join("---:" if i in r else "---" for i in range(len(headers))) + "|")
    out += ["| " + " | ".join(_md_escape(v) for v in row) + " |" for row in rows]
    return out


def markdown_summary(data: ReportData) -> str:
    """The run in GitHub-flavoured markdown: segments, entropy bands, blended pairs, audiences,
    forecast and backtest, the tables written. Missing numbers show as '–', never 'nan'."""
    d = data
    lines = [f"# {_TITLES.get(d.kind, d.kind.title())} of snapshot {d.snapshot}", ""]
    state = "published" if d.published else f"a candidate (not published; run {d.run_id})"
    lines.append(f"Model **{d.model_version}**, {state}.")
    c = d.counts or {}
    lines.append(
        f"Rows read {_int(c.get('rows_read'))}; written {_int(c.get('rows_written'))}; "
        f"dropped {_int(c.get('rows_dropped'))}; imputed {_int(c.get('rows_imputed'))}."
    )
    f = d.fit or {}
    if f:
        conv = {True: "yes", False: "no"}.get(bool(f.get("converged")) if "converged" in f else None, _DASH)
        lines.append(
            f"EM: {_int(f.get('n_iter'))} iterations, converged: {conv}, mean log-likelihood "
            f"{_num(f.get('log_likelihood'), '.6f')}, BIC {_num(f.get('bic'), ',.1f')}, AIC {_num(f.get('aic'), ',.1f')}."
        )
    lines += ["", "## Segments", ""]
    feats = _feature_cols(d)
    headers = ["segment", "id", "weight", "users", "share", "mean entropy (bits)", "high-entropy share"] + [
        f for f, _ in feats
    ]
    rows = []
    for _, r in d.segments.iterrows():
        rows.append(
            [
                r["name"],
                int(r["segment"]),
                _num(r.get("weight"), ".3f"),
                _int(r.get("size")),
                _pct(r.get("share")),
                _num(r.get("mean_entropy_bits"), ".3f"),
                _pct(r.get("high_entropy_share")),
            ]
            + [_compact(r.get(col)) for _, col in feats]
        )
    lines += _md_table(headers, rows, right=range(1, len(headers)))
    flagged = _flagged(d)
    if flagged:
        lines += ["", "## Degenerate components", ""] + [f"- **{n}**: {v}" for n, v in flagged]
    if f.get("reseeded_components"):
        lines += ["", f"Re-seeded during the fit (iteration, component): {f['reseeded_components']}"]
    pruned = (f.get("degenerate") or {}).get("pruned") if isinstance(f.get("degenerate"), dict) else None
    if pruned:
        lines += [
            "",
            "Pruned and refitted without: "
            + "; ".join(f"{p.get('name')} ({p.get('reason')})" for p in pruned),
        ]

    lines += ["", "## Entropy bands", ""]
    total = sum(int(v) for v in d.band_count.values() if _finite(v))
    lines += _md_table(
        ["band", "users", "share"],
        [[b, _int(n), _pct(n / total) if total and _finite(n) else _DASH] for b, n in d.band_count.items()],
        right=[1, 2],
    )
    lo, mid = d.bands.get("low_max"), d.bands.get("moderate_max")
    if _finite(lo) and _finite(mid):
        lines += ["", f"Normalised entropy: low < {lo:g} ≤ moderate < {mid:g} ≤ high."]
    pairs = _pairs(d, top=5)
    if pairs is not None:
        lines += ["", "## Most blended pairs", ""]
        lines += _md_table(
            ["pair", "users", "mean γ"],
            [
                [f"{r.name_a} + {r.name_b}", _int(r.n_users), _gamma_pair(r.mean_gamma_a, r.mean_gamma_b)]
                for r in pairs.itertuples(index=False)
            ],
            right=[1, 2],
        )
    if _has_rows(d.audiences):
        lines += ["", "## Audiences", ""]
        lines += _md_table(
            ["audience", "definition", "users"],
            [
                [r.get("audience", ""), r.get("definition", ""), _int(r.get("n_users"))]
                for _, r in d.audiences.iterrows()
            ],
            right=[2],
        )
    if _has_rows(d.forecast):
        lines += ["", "## Forecast for the next snapshot", ""]
        lines += _md_table(
            ["segment", f"share {d.snapshot}", "forecast"],
            [[r.name, _pct(r.share_now), _pct(r.share_forecast)] for r in d.forecast.itertuples(index=False)],
            right=[1, 2],
        )
    if _has_rows(d.backtest_scores):
        sc = d.backtest_scores
        lines += ["", "## Backtest", ""]
        if {"method", "share_mae"} <= set(sc.columns):
            agg = sc.groupby("method").agg(
                **{k: (k, "mean") for k in ("share_mae", "share_tv", "user_brier") if k in sc.columns}
            )
            hdr = ["method"] + [
                {
                    "share_mae": "MAE of shares (pp)",
                    "share_tv": "total variation",
                    "user_brier": "user Brier",
                }[k]
                for k in agg.columns
            ]
            rows = [
                [m]
                + [
                    _num(100 * v, ".2f") if k == "share_mae" and _finite(v) else _num(v, ".4f")
                    for k, v in r.items()
                ]
                for m, r in agg.iterrows()
            ]
            n = sc["held_out"].nunique() if "held_out" in sc.columns else len(sc)
            lines += [f"Mean over {n} held-out snapshot{'s' if n != 1 else ''}.", ""]
            lines += _md_table(hdr, rows, right=range(1, len(hdr)))
    if d.tables:
        lines += ["", "## Tables", ""] + [f"- `{k}`: `{v}`" for k, v in d.tables.items()]
    return "\n".join(lines) + "\n"


def bic_markdown(table: pd.DataFrame, chosen: dict) -> str:
    """The model-selection candidates as a markdown table; the chosen row is marked with an arrow."""
    lines = [
        "| K | covariance | BIC | AIC | log-likelihood | iterations | converged |",
        "|---|---|---|---|---|---|---|",
    ]
    for r in table.sort_values(["covariance_type", "n_components"]).itertuples(index=False):
        mark = (
            " **←**"
            if (r.n_components, r.covariance_type) == (chosen["n_components"], chosen["covariance_type"])
            else ""
        )
        lines.append(
            f"| {r.n_components} | {r.covariance_type} | {_num(r.bic, ',.1f')}{mark} | {_num(r.aic, ',.1f')} | "
            f"{_num(r.log_likelihood, '.5f')} | {r.n_iter} | {r.converged} |"
        )
    return "\n".join(lines)


__all__ = [
    "PALETTE",
    "ReportData",
    "bhattacharyya_distance",
    "bic_markdown",
    "family_tree",
    "gaussian_distance_matrix",
    "html_report",
    "markdown_summary",
]
