"""Charts: matplotlib figures rendered to inline SVG, under one style and one lock.

Text stays text (searchable, small, crisp) and ids are deterministic and prefixed per chart, so
the same data give the same page and several charts share it. The charts themselves live in
``charts_segments`` (sizes, profiles, entropy, transitions), ``charts_model`` (model selection,
projection, family tree) and ``charts_forecast``.
"""

from __future__ import annotations

import io
import re
import threading
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from gmm_dask.report.palette import INK

if TYPE_CHECKING:  # matplotlib is imported only when a chart is drawn
    from matplotlib.axis import Axis
    from matplotlib.figure import Figure
    from matplotlib.typing import RcKeyType

_RC: dict[RcKeyType, Any] = {
    "svg.fonttype": "none",  # text stays text: searchable, small, crisp
    "svg.hashsalt": "gmm-dask",  # deterministic ids: the same data give the same page
    "font.family": "DejaVu Sans",  # what matplotlib measures text with (it ships the font)
    "font.size": 9,
    "axes.titlesize": 11,
    "axes.titleweight": "bold",
    "axes.titlelocation": "left",
    "axes.titlepad": 10,
    "axes.labelsize": 9,
    "axes.labelcolor": INK,
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


def new_figure(width: float, height: float) -> Figure:
    """A figure of ``width`` × ``height`` inches with a constrained layout and an SVG canvas."""
    from matplotlib.backends.backend_svg import FigureCanvasSVG
    from matplotlib.figure import Figure
    from matplotlib.layout_engine import ConstrainedLayoutEngine

    fig = Figure(figsize=(width, height), layout=ConstrainedLayoutEngine(h_pad=0.06, w_pad=0.08))
    FigureCanvasSVG(fig)
    return fig


def render(chart_id: str, draw: Callable[[], Figure]) -> str:
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


def thousands_axis(axis: Axis) -> None:
    """Tick labels with thousands separators: 12,000."""
    from matplotlib.ticker import FuncFormatter

    axis.set_major_formatter(FuncFormatter(lambda v, _: f"{v:,.0f}"))


def percent_axis(axis: Axis, digits: int | None = None) -> None:
    """Shares as percentages: fixed decimals, or as few as each tick needs ('12.5%', '15%')."""
    from matplotlib.ticker import FuncFormatter, MaxNLocator, PercentFormatter

    if digits is not None:
        axis.set_major_formatter(PercentFormatter(1.0, decimals=digits))
        return
    axis.set_major_locator(MaxNLocator(nbins=5, steps=[1, 2, 2.5, 5, 10]))
    axis.set_major_formatter(FuncFormatter(lambda v, _: f"{round(100 * v, 6):g}%"))


def mpl_text(s: Any) -> str:
    """Text for matplotlib: a '$' would start mathtext."""
    return str(s).replace("$", r"\$")
