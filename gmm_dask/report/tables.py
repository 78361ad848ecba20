"""The HTML page's building blocks: escaped tables of the run's numbers, figures, notes, cards."""

from __future__ import annotations

import html
from collections.abc import Iterable, Sequence
from typing import Any

from gmm_dask.report.charts import Chart
from gmm_dask.report.data import (
    ReportData,
    band_total,
    blended_pairs,
    feature_groups,
    flagged_components,
    has_rows,
    pruned_components,
    pruned_text,
)
from gmm_dask.report.terms import FORECAST_SHARE, SHARE, WEIGHT, forecast_basis_term, legend
from gmm_dask.report.text import (
    DASH,
    fmt_compact,
    fmt_gamma_pair,
    fmt_int,
    fmt_num,
    fmt_pct,
    fmt_plain,
    is_finite,
)


def _cell(v: Any, cls: str = "") -> str:
    c = f' class="{cls}"' if cls else ""
    return f"<td{c}>{html.escape(str(v))}</td>"


def html_table(
    headers: Sequence[str],
    rows: Iterable[Sequence[Any]],
    *,
    numeric: Iterable[int] = (),
    caption: str = "",
    row_class: Sequence[str] | None = None,
    name_column: bool = False,
) -> str:
    """An HTML table; every value is escaped; columns listed in ``numeric`` are right-aligned.
    No ``headers``: no header row (a table of label, value rows). ``name_column``: the first
    column holds segment names, which wrap (they can be long)."""
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
    thead = f"<thead><tr>{head}</tr></thead>" if headers else ""
    tcls = ' class="names"' if name_column else ""
    return f'<div class="table-wrap"><table{tcls}>{cap}{thead}<tbody>{"".join(body)}</tbody></table></div>'


def figure_html(ch: Chart) -> str:
    """A chart as a figure with its caption."""
    return (
        f'<figure class="chart" data-chart="{ch.id}">{ch.svg}<figcaption>{ch.caption}</figcaption></figure>'
    )


def note(text: str) -> str:
    """A muted paragraph: what a section shows in place of a chart or table it does not have."""
    return f'<p class="note">{html.escape(text)}</p>'


def _previous_shares(d: ReportData) -> dict[int, float]:
    if not has_rows(d.previous_segments):
        return {}
    return {
        int(s): float(sh)
        for s, sh in zip(d.previous_segments["segment"], d.previous_segments["share"], strict=True)
    }


def _summary_table(d: ReportData) -> str:
    """One row per segment: weight, users, share (and the previous share), entropy."""
    prev = _previous_shares(d)
    headers = ["segment", "id", WEIGHT, "users", SHARE]
    if prev:
        headers += [f"previous {SHARE}", f"Δ {SHARE} (pp)"]
    headers += ["mean entropy (bits)", "high entropy (% of its users)"]
    rows = []
    for _, r in d.segments.iterrows():
        s = int(r["segment"])
        row = [r["name"], s, fmt_num(r.get("weight"), ".3f"), fmt_int(r.get("size")), fmt_pct(r.get("share"))]
        if prev:
            p = prev.get(s)
            row += [
                fmt_pct(p) if p is not None else "new",
                fmt_num(100 * (float(r["share"]) - p), "+.1f").replace("-", "−") if p is not None else DASH,
            ]
        row += [fmt_num(r.get("mean_entropy_bits"), ".3f"), fmt_pct(r.get("high_entropy_share"))]
        rows.append(row)
    return html_table(headers, rows, numeric=range(1, len(headers)), caption="Segments", name_column=True)


def _profile_tables(d: ReportData) -> str:
    """The feature means in original units, segments down, features across in groups
    (:func:`~gmm_dask.report.data.feature_groups`): a table per group."""
    groups = feature_groups(d)
    out = []
    for g, group in enumerate(groups):
        cap = "Mean of each feature, in its original units"
        if len(groups) > 1:
            cap += f" ({g + 1} of {len(groups)})"
        rows = [[r["name"]] + [fmt_compact(r.get(col)) for _, col in group] for _, r in d.segments.iterrows()]
        out.append(
            html_table(
                ["segment"] + [f for f, _ in group],
                rows,
                numeric=range(1, len(group) + 1),
                caption=cap,
                name_column=True,
            )
        )
    return "".join(out)


def legend_html(d: ReportData) -> str:
    """The quantities' definitions (:func:`gmm_dask.report.terms.legend`) as a definition list."""
    items = "".join(f"<dt>{html.escape(t)}</dt><dd>{html.escape(v)}</dd>" for t, v in legend(d))
    return f'<dl class="legend">{items}</dl>'


def segments_table(d: ReportData) -> str:
    """The segments (weight, users, share, entropy), the quantities' legend, the feature means,
    then the degenerate components."""
    out = _summary_table(d) + legend_html(d) + _profile_tables(d)
    flagged = flagged_components(d)
    if flagged:
        items = "".join(f"<li><b>{html.escape(n)}</b>: {html.escape(why)}</li>" for n, why in flagged)
        out += f'<div class="flags"><p>Degenerate components</p><ul>{items}</ul></div>'
    return out


def pairs_table(d: ReportData) -> str:
    """The pairs of segments most users blend."""
    pairs = blended_pairs(d)
    if pairs is None:
        return note("No user carries a high membership on two segments at once.")
    thr = pairs["threshold"].iloc[0] if "threshold" in pairs.columns else None
    rows = [
        [f"{r.name_a} + {r.name_b}", fmt_int(r.n_users), fmt_gamma_pair(r.mean_gamma_a, r.mean_gamma_b)]
        for r in pairs.itertuples(index=False)
    ]
    cap = (
        "Most blended pairs: users with γ ≥ "
        + (fmt_num(thr, "g") if is_finite(thr) else "the threshold")
        + " on both segments"
    )
    return html_table(["pair", "users", "mean γ (first / second)"], rows, numeric=[1, 2], caption=cap)


def bands_table(d: ReportData) -> str:
    """Users per entropy band."""
    total = band_total(d)
    lo, mid = d.bands.get("low_max", 0.25), d.bands.get("moderate_max", 0.6)
    ranges = {
        "low": f"< {fmt_num(lo, 'g')}",
        "moderate": f"{fmt_num(lo, 'g')} – {fmt_num(mid, 'g')}",
        "high": f"≥ {fmt_num(mid, 'g')}",
    }
    rows = [
        [b, ranges.get(b, ""), fmt_int(n), fmt_pct(n / total) if total and is_finite(n) else DASH]
        for b, n in d.band_count.items()
    ]
    return html_table(["band", "normalised entropy", "users", "% of users"], rows, numeric=[2, 3])


def fit_rows(d: ReportData) -> list[list[str]]:
    """(label, value) rows: rows read and written, then the fit's numbers, pruning and alignment."""
    f = d.fit or {}
    c = d.counts or {}
    rows = [
        ["rows read", fmt_int(c.get("rows_read"))],
        ["rows written", fmt_int(c.get("rows_written"))],
        ["rows dropped (missing values)", fmt_int(c.get("rows_dropped"))],
        ["rows imputed", fmt_int(c.get("rows_imputed"))],
    ]
    if "n_iter" in f:
        rows.append(["EM iterations", fmt_int(f.get("n_iter"))])
    if "converged" in f:
        rows.append(["converged", "yes" if f.get("converged") else "no"])
    for key, label, fmt in (
        ("log_likelihood", "mean log-likelihood", ".5f"),
        ("bic", "BIC", ",.1f"),
        ("aic", "AIC", ",.1f"),
    ):
        if key in f:
            rows.append([label, fmt_num(f.get(key), fmt)])
    if f.get("family"):  # set for the behaviour family: its covariances are the summaries'
        rows.append(["family", f"{f['family']} (components summarised as full-covariance Gaussians)"])
    elif f.get("covariance_type"):
        rows.append(["covariance type", str(f["covariance_type"])])
    if f.get("reseeded_components"):
        rows.append(["re-seeded during the fit (iteration, component)", str(f["reseeded_components"])])
    gone = pruned_components(f)
    if gone:
        rows.append(["pruned and refitted without", pruned_text(gone)])
    align = f.get("alignment")
    if isinstance(align, dict) and align:
        for k, v in align.items():
            if v not in (None, [], {}, ""):
                rows.append([f"alignment: {k}", fmt_plain(v)])
    return rows


def phases_table(d: ReportData) -> str:
    """Seconds per phase, with a total row, and how they relate to the run time; '' without phases."""
    if not d.phases:
        return ""
    total = sum(v for v in d.phases.values() if is_finite(v))
    rows = [[k, fmt_num(v, ".2f"), fmt_pct(v / total) if total else DASH] for k, v in d.phases.items()]
    rows.append(["the phases in all", fmt_num(total, ".2f"), "100.0%" if total else DASH])
    out = html_table(
        ["phase", "seconds", "% of the phases"],
        rows,
        numeric=[1, 2],
        caption="Time by phase",
        row_class=[""] * (len(rows) - 1) + ["total"],
    )
    if d.seconds is not None and is_finite(d.seconds):
        before = " A profile made while planning ran before it." if total > d.seconds else ""
        out += note(
            f"Run time {fmt_num(d.seconds, '.1f')} s, as the command line prints it: the job from the "
            "Dask cluster's start to its last commit, so it also counts starting the cluster and, when "
            f"publishing, taking the date's lock and moving the model's latest alias.{before}"
        )
    return out


def bic_candidates_table(d: ReportData) -> str:
    """Every model-selection candidate, the chosen one highlighted; '' without candidates."""
    tab = d.bic_table
    if not has_rows(tab):
        return ""
    cols = [
        c
        for c in (
            "family",
            "n_components",
            "covariance_type",
            "n_parameters",
            "bic",
            "aic",
            "log_likelihood",
            "n_iter",
            "converged",
        )
        if c in tab.columns
    ]
    labels = {
        "family": "family",
        "n_parameters": "parameters",
        "n_components": "K",
        "covariance_type": "covariance",
        "bic": "BIC",
        "aic": "AIC",
        "log_likelihood": "log-likelihood",
        "n_iter": "iterations",
        "converged": "converged",
    }
    fmts = {"bic": ",.1f", "aic": ",.1f", "log_likelihood": ".5f"}
    srt = tab.sort_values([c for c in ("family", "covariance_type", "n_components") if c in tab.columns])
    rows, classes = [], []
    for _, r in srt.iterrows():
        row = []
        for c in cols:
            v = r[c]
            if c in fmts:
                row.append(fmt_num(v, fmts[c]))
            elif c == "converged":
                row.append("yes" if bool(v) else "no")
            else:
                row.append(str(v))
        rows.append(row)
        classes.append("selected" if "selected" in tab.columns and bool(r["selected"]) else "")
    numeric = [i for i, c in enumerate(cols) if c not in ("family", "covariance_type", "converged")]
    return html_table(
        [labels[c] for c in cols],
        rows,
        numeric=numeric,
        caption="Candidates (chosen row highlighted)",
        row_class=classes,
    )


def scores_table(d: ReportData) -> str:
    """The backtest's errors per held-out snapshot and method; '' without a backtest."""
    sc = d.backtest_scores
    if not has_rows(sc):
        return ""
    cols = [c for c in ("held_out", "method", "share_mae", "share_tv", "user_brier") if c in sc.columns]
    labels = {
        "held_out": "held out",
        "method": "method",
        "share_mae": "MAE (pp)",
        "share_tv": "total variation (pp)",
        "user_brier": "user Brier score",
    }
    rows = []
    for _, r in sc.sort_values([c for c in ("held_out", "method") if c in cols]).iterrows():
        row = []
        for c in cols:
            v = r[c]
            if c in ("share_mae", "share_tv"):
                row.append(fmt_num(100 * float(v), ".2f") if is_finite(v) else DASH)
            elif c == "user_brier":
                row.append(fmt_num(v, ".4f"))
            else:
                row.append(str(v)[:10] if c == "held_out" else str(v))
        rows.append(row)
    return html_table(
        [labels[c] for c in cols],
        rows,
        numeric=[i for i, c in enumerate(cols) if c not in ("held_out", "method")],
        caption=f"Backtest: the {FORECAST_SHARE}'s errors against the actual {forecast_basis_term(d)} on "
        "held-out snapshots, in percentage points (lower is better)",
    )


def forecast_table(d: ReportData) -> str:
    """The forecast's basis now (membership share or share), the forecast share and their change
    per segment; '' without a forecast."""
    fc = d.forecast
    if not has_rows(fc):
        return ""
    rows = [
        [
            r.name,
            fmt_pct(r.share_now),
            fmt_pct(r.share_forecast),
            fmt_num(100 * (float(r.share_forecast) - float(r.share_now)), "+.1f").replace("-", "−")
            if is_finite(r.share_now) and is_finite(r.share_forecast)
            else DASH,
        ]
        for r in fc.itertuples(index=False)
    ]
    return html_table(
        [
            "segment",
            f"{forecast_basis_term(d)} {d.snapshot}",
            f"{FORECAST_SHARE}, next snapshot",
            "change (pp)",
        ],
        rows,
        numeric=[1, 2, 3],
        caption="Forecast for the next snapshot",
    )


def _audience_path(r: Any) -> str:
    path = r.get("path")
    if isinstance(path, str) and path:
        return path
    return "no file: no users" if r.get("n_users") == 0 else DASH


def audiences_table(d: ReportData) -> str:
    """The audiences written, each with its own CSV files; '' without audiences."""
    au = d.audiences
    if not has_rows(au):
        return ""
    rows = [
        [r.get("audience", ""), r.get("definition", ""), fmt_int(r.get("n_users")), _audience_path(r)]
        for _, r in au.iterrows()
    ]
    return html_table(["audience", "definition", "users", "CSV files"], rows, numeric=[2])


def tables_table(d: ReportData) -> str:
    """The tables written and their paths."""
    if not d.tables:
        return note("No table was written.")
    return html_table(["table", "path"], [[k, v] for k, v in d.tables.items()], caption="Tables written")


def cards(d: ReportData) -> str:
    """The header's key numbers: users, segments, entropy, EM and run time."""
    c, f = d.counts or {}, d.fit or {}
    total = band_total(d)
    items = [
        ("users segmented", fmt_int(c.get("rows_written"))),
        ("segments", str(len(d.segments))),
        ("clear archetypes (low entropy)", fmt_pct(d.band_count.get("low", 0) / total) if total else DASH),
        ("high entropy", fmt_pct(d.band_count.get("high", 0) / total) if total else DASH),
    ]
    if "n_iter" in f:
        conv = "converged" if f.get("converged") else "not converged"
        items.append(("EM", f"{fmt_int(f.get('n_iter'))} iterations, {conv}"))
    if d.seconds is not None and is_finite(d.seconds):  # the job's total, as the command line prints it
        items.append(("run time", f"{fmt_num(d.seconds, '.1f')} s"))
    return (
        '<dl class="cards">'
        + "".join(f"<div><dt>{html.escape(k)}</dt><dd>{html.escape(v)}</dd></div>" for k, v in items)
        + "</dl>"
    )
