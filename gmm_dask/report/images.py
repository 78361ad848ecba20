"""The report's key charts as markdown images, for places that show markdown but not HTML pages
(the Prefect UI's markdown artifacts): each chart's SVG in a ``data:image/svg+xml;base64`` URI.

The Prefect UI (both its V1 and V2 front ends, Prefect 3.9) draws such images; a data URI needs no
server to fetch it from, so the charts show wherever the run's artifacts do.
"""

from __future__ import annotations

import base64
import html
import re
from collections.abc import Callable

from gmm_dask.report.charts import Chart
from gmm_dask.report.charts_forecast import chart_forecast
from gmm_dask.report.charts_model import chart_bic
from gmm_dask.report.charts_segments import chart_entropy, chart_profile, chart_sizes
from gmm_dask.report.data import ReportData

#: The charts worth a look without opening the report, most telling first, with their headings.
KEY_CHARTS: tuple[tuple[str, str, Callable[[ReportData], Chart | None]], ...] = (
    ("sizes", "Segment sizes", chart_sizes),
    ("profile", "Segment profiles", chart_profile),
    ("bic", "Model selection", chart_bic),
    ("forecast", "Forecast", chart_forecast),
    ("entropy", "Membership entropy", chart_entropy),
)
_TAG = re.compile(r"<[^>]+>")


def svg_data_uri(svg: str) -> str:
    """An SVG document as a ``data:image/svg+xml;base64,…`` URI (an ``<img>`` source)."""
    return "data:image/svg+xml;base64," + base64.b64encode(svg.encode("utf-8")).decode("ascii")


def _plain(caption_html: str) -> str:
    """A chart's caption (HTML) as one line of plain text."""
    return " ".join(html.unescape(_TAG.sub("", caption_html)).split())


def charts_markdown(d: ReportData, max_charts: int = 3, max_bytes: int = 300_000) -> tuple[str, list[str]]:
    """The run's key charts as markdown: a heading, the image and its caption per chart.

    Parameters
    ----------
    d : the run's report data.
    max_charts : at most this many charts, the first of :data:`KEY_CHARTS` the run has.
    max_bytes : at most this many bytes of image data in all (a chart that would pass it is left
        out, and the next one tried).

    Returns
    -------
    (markdown, ids) : the markdown ("" when no chart fits) and the ids of the charts it shows.
    """
    parts: list[str] = []
    ids: list[str] = []
    used = 0
    for chart_id, heading, make in KEY_CHARTS:
        if len(ids) == max_charts:
            break
        chart = make(d)
        if chart is None:
            continue
        uri = svg_data_uri(chart.svg)
        if used + len(uri) > max_bytes:
            continue
        used += len(uri)
        ids.append(chart_id)
        parts += [f"### {heading}", "", f"![{heading}]({uri})", "", _plain(chart.caption), ""]
    return "\n".join(parts).rstrip(), ids
