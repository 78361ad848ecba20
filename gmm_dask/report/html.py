"""The run's report as one self-contained HTML page: inline SVG charts and CSS, no script, no
external resource, so it opens offline, from a file, in any browser.

The charts are drawn with matplotlib on the server side and inlined as SVG (text kept as text, so
the page is searchable and small; the users' scatter is rasterised inside its SVG).
"""

from __future__ import annotations

import html

from gmm_dask.report.charts_forecast import chart_forecast
from gmm_dask.report.charts_model import chart_bic, chart_family_tree, chart_projection, no_bic_curve
from gmm_dask.report.charts_segments import chart_entropy, chart_profile, chart_sizes, chart_transitions
from gmm_dask.report.data import TITLES, ReportData, has_rows, publish_state
from gmm_dask.report.tables import (
    audiences_table,
    bands_table,
    bic_candidates_table,
    cards,
    figure_html,
    fit_rows,
    forecast_table,
    html_table,
    note,
    pairs_table,
    phases_table,
    scores_table,
    segments_table,
    tables_table,
)
from gmm_dask.report.terms import forecast_method_text
from gmm_dask.report.text import DASH

#: A page section: (id, heading, body HTML).
_Section = tuple[str, str, str]

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
table.names td:first-child{white-space:normal;min-width:12em;max-width:26em}
dl.legend{display:grid;grid-template-columns:max-content 1fr;gap:2px 12px;font-size:13.5px;margin:0 0 16px;max-width:100ch}
dl.legend dt{font-weight:600}dl.legend dd{margin:0;color:var(--muted)}
tbody tr:nth-child(even){background:#fafbfc}
tr.selected td{background:#fff4cc;font-weight:600}
tr.total td{font-weight:600;border-top:2px solid var(--line)}
.note{color:var(--muted);font-style:italic}
.flags{background:#fff8e6;border:1px solid #f0d9a0;border-radius:8px;padding:8px 14px;font-size:13.5px;margin:0 0 12px}
.flags p{margin:0 0 4px;font-weight:600}.flags ul{margin:0;padding-left:20px}
footer{color:var(--muted);font-size:12px;text-align:center;padding:0 0 24px}
"""


def _segment_sections(d: ReportData) -> list[_Section]:
    """Segments, their profiles, the membership entropy and, with a previous snapshot, transitions."""
    sections: list[_Section] = []
    sizes = chart_sizes(d)
    sections.append(("segments", "Segments", figure_html(sizes) + segments_table(d)))

    profile = chart_profile(d)
    sections.append(
        (
            "profiles",
            "Segment profiles",
            figure_html(profile) if profile else note("No features to profile."),
        )
    )

    entropy = chart_entropy(d)
    sections.append(("entropy", "Membership entropy", figure_html(entropy) + bands_table(d) + pairs_table(d)))

    trans = chart_transitions(d)
    if trans:
        sections.append(("transitions", "Transitions", figure_html(trans)))
    return sections


def _model_sections(d: ReportData) -> list[_Section]:
    """Forecast and model selection (where the run has them), the users in 2-D, the family tree."""
    sections: list[_Section] = []
    fc = chart_forecast(d)
    if fc:
        method = forecast_method_text(d)
        body = (
            figure_html(fc)
            + scores_table(d)
            + forecast_table(d)
            + (f"<p>{html.escape(method)}</p>" if method else "")
        )
        sections.append(("forecast", "Forecast", body))

    bic = chart_bic(d)
    sections.append(
        (
            "model-selection",
            "Model selection",
            figure_html(bic) + bic_candidates_table(d) if bic else note(no_bic_curve(d)),
        )
    )

    proj = chart_projection(d)
    sections.append(
        (
            "projection",
            "Users in 2-D",
            figure_html(proj)
            if proj
            else note("No sample of users was kept for this run, so there is no projection."),
        )
    )

    tree = chart_family_tree(d)
    sections.append(
        (
            "family-tree",
            "Family tree",
            figure_html(tree) if tree else note("One component: there is no family tree to draw."),
        )
    )
    return sections


def _run_sections(d: ReportData) -> list[_Section]:
    """The audiences written (if any), and the run: rows, fit, time by phase, tables written."""
    sections: list[_Section] = []
    if has_rows(d.audiences):
        sections.append(("audiences", "Audiences", audiences_table(d)))

    run_body = (
        html_table([], fit_rows(d), numeric=[1], caption="Rows and fit") + phases_table(d) + tables_table(d)
    )
    sections.append(("run", "Run", run_body))
    return sections


def _status(d: ReportData) -> str:
    """The header's badge — published (tables and ``latest``), tables published, candidate — then
    what became of ``latest`` and why the model before was kept (:func:`publish_state`)."""
    if not d.published:
        return '<span class="badge cand">candidate (not published)</span>'
    state, tail = publish_state(d)
    out = f'<span class="badge pub">{html.escape(state)}</span>'
    if tail:
        out += f" · <code>latest</code> {html.escape(tail)}"
    if d.kept:
        out += f" · {html.escape(d.kept)}"
    return out


def html_report(data: ReportData) -> str:
    """The run's report: one self-contained HTML page (inline SVG charts and CSS, no script, no network)."""
    d = data
    title = f"{TITLES.get(d.kind, d.kind.title())} of snapshot {d.snapshot}"
    meta = f"model {html.escape(d.model_version)} · run {html.escape(d.run_id or DASH)} · {_status(d)}"
    sections = _segment_sections(d) + _model_sections(d) + _run_sections(d)
    nav = "".join(f'<a href="#{sid}">{html.escape(h)}</a>' for sid, h, _ in sections)
    body = "".join(f'<section id="{sid}"><h2>{html.escape(h)}</h2>{b}</section>' for sid, h, b in sections)
    from gmm_dask._version import package_version

    return (
        '<!doctype html>\n<html lang="en"><head><meta charset="utf-8">'
        '<meta name="viewport" content="width=device-width, initial-scale=1">'
        f"<title>{html.escape(title)} · model {html.escape(d.model_version)}</title><style>{_CSS}</style></head><body>"
        f"<header><h1>{html.escape(title)}</h1><p class=meta>{meta}</p>{cards(d)}</header>"
        f"<nav>{nav}</nav><main>{body}</main>"
        f"<footer>gmm-dask {html.escape(package_version())}</footer></body></html>\n"
    )
