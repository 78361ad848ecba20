"""The run in GitHub-flavoured markdown, for the Prefect UI's artifacts: :func:`markdown_summary`
(segments, entropy, blended pairs, audiences, forecast, backtest, tables) and :func:`bic_markdown`
(the model-selection candidates). Missing numbers show as '–', never 'nan'."""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import Any

import pandas as pd

from gmm_dask.report.data import (
    TITLES,
    ReportData,
    band_total,
    blended_pairs,
    feature_groups,
    flagged_components,
    has_rows,
    pruned_components,
    pruned_text,
    publish_sentence,
)
from gmm_dask.report.terms import (
    FORECAST_SHARE,
    SHARE,
    WEIGHT,
    forecast_basis_term,
    forecast_method_text,
    legend,
)
from gmm_dask.report.text import DASH, fmt_compact, fmt_gamma_pair, fmt_int, fmt_num, fmt_pct, is_finite
from gmm_dask.segmentation.fit_record import promotion_like


def _md_escape(v: Any) -> str:
    return str(v).replace("|", "\\|").replace("\n", " ")


def _md_table(headers: Sequence[str], rows: Iterable[Sequence[Any]], right: Iterable[int] = ()) -> list[str]:
    r = set(right)
    out = ["| " + " | ".join(_md_escape(h) for h in headers) + " |"]
    out.append("|" + "|".join("---:" if i in r else "---" for i in range(len(headers))) + "|")
    out += ["| " + " | ".join(_md_escape(v) for v in row) + " |" for row in rows]
    return out


def _md_header(d: ReportData) -> list[str]:
    """Title, model and state, the rows read and written, the EM's numbers."""
    lines = [f"# {TITLES.get(d.kind, d.kind.title())} of snapshot {d.snapshot}", ""]
    lines.append(publish_sentence(d, strong="**"))
    if d.kept:
        lines.append(f"{d.kept[0].upper()}{d.kept[1:]}.")
    c = d.counts or {}
    lines.append(
        f"Rows read {fmt_int(c.get('rows_read'))}; written {fmt_int(c.get('rows_written'))}; "
        f"dropped {fmt_int(c.get('rows_dropped'))}; imputed {fmt_int(c.get('rows_imputed'))}."
    )
    f = d.fit or {}
    if f:
        conv = ("yes" if f.get("converged") else "no") if "converged" in f else DASH
        lines.append(
            f"EM: {fmt_int(f.get('n_iter'))} iterations, converged: {conv}, mean log-likelihood "
            f"{fmt_num(f.get('log_likelihood'), '.6f')}, BIC {fmt_num(f.get('bic'), ',.1f')}, AIC {fmt_num(f.get('aic'), ',.1f')}."
        )
    if d.seconds is not None and is_finite(d.seconds):
        lines.append(f"Run time {fmt_num(d.seconds, '.1f')} s.")
    shift = promotion_like(f)
    if shift is not None:
        lines.append(f"**Warning: {shift}.**")
    return lines


def _md_segments(d: ReportData) -> list[str]:
    """The segments table and the legend of its quantities (:func:`md_legend`), the feature
    means (a table per group of features), then the degenerate, re-seeded and pruned components."""
    lines = ["", "## Segments", ""]
    headers = [
        "segment",
        "id",
        WEIGHT,
        "users",
        SHARE,
        "mean entropy (bits)",
        "high entropy (% of its users)",
    ]
    rows = [
        [
            r["name"],
            int(r["segment"]),
            fmt_num(r.get("weight"), ".3f"),
            fmt_int(r.get("size")),
            fmt_pct(r.get("share")),
            fmt_num(r.get("mean_entropy_bits"), ".3f"),
            fmt_pct(r.get("high_entropy_share")),
        ]
        for _, r in d.segments.iterrows()
    ]
    lines += _md_table(headers, rows, right=range(1, len(headers)))
    lines += ["", *md_legend(d)]
    groups = feature_groups(d)
    for g, group in enumerate(groups):
        part = f" ({g + 1} of {len(groups)})" if len(groups) > 1 else ""
        lines += ["", f"### Mean of each feature, in its original units{part}", ""]
        lines += _md_table(
            ["segment"] + [f for f, _ in group],
            [[r["name"]] + [fmt_compact(r.get(c)) for _, c in group] for _, r in d.segments.iterrows()],
            right=range(1, len(group) + 1),
        )
    flagged = flagged_components(d)
    if flagged:
        lines += ["", "## Degenerate components", ""] + [f"- **{n}**: {v}" for n, v in flagged]
    f = d.fit or {}
    if f.get("reseeded_components"):
        lines += ["", f"Re-seeded during the fit (iteration, component): {f['reseeded_components']}"]
    gone = pruned_components(f)
    if gone:
        lines += ["", "Pruned and refitted without: " + pruned_text(gone)]
    return lines


def _md_entropy(d: ReportData) -> list[str]:
    """Users per entropy band, the bands' thresholds, and the most blended pairs."""
    lines = ["", "## Entropy bands", ""]
    total = band_total(d)
    lines += _md_table(
        ["band", "users", "% of users"],
        [
            [b, fmt_int(n), fmt_pct(n / total) if total and is_finite(n) else DASH]
            for b, n in d.band_count.items()
        ],
        right=[1, 2],
    )
    lo, mid = d.bands.get("low_max"), d.bands.get("moderate_max")
    if is_finite(lo) and is_finite(mid):
        lines += ["", f"Normalised entropy: low < {lo:g} ≤ moderate < {mid:g} ≤ high."]
    pairs = blended_pairs(d, top=5)
    if pairs is not None:
        lines += ["", "## Most blended pairs", ""]
        lines += _md_table(
            ["pair", "users", "mean γ"],
            [
                [
                    f"{r.name_a} + {r.name_b}",
                    fmt_int(r.n_users),
                    fmt_gamma_pair(r.mean_gamma_a, r.mean_gamma_b),
                ]
                for r in pairs.itertuples(index=False)
            ],
            right=[1, 2],
        )
    return lines


def _md_audiences_forecast(d: ReportData) -> list[str]:
    """The audiences written and the forecast for the next snapshot, where the run has them."""
    lines: list[str] = []
    if has_rows(d.audiences):
        lines += ["", "## Audiences", ""]
        lines += _md_table(
            ["audience", "definition", "users"],
            [
                [r.get("audience", ""), r.get("definition", ""), fmt_int(r.get("n_users"))]
                for _, r in d.audiences.iterrows()
            ],
            right=[2],
        )
    if has_rows(d.forecast):
        lines += ["", "## Forecast for the next snapshot", ""]
        lines += _md_table(
            ["segment", f"{forecast_basis_term(d)} {d.snapshot}", f"{FORECAST_SHARE}, next snapshot"],
            [
                [r.name, fmt_pct(r.share_now), fmt_pct(r.share_forecast)]
                for r in d.forecast.itertuples(index=False)
            ],
            right=[1, 2],
        )
        method = forecast_method_text(d)
        if method:
            lines += ["", method]
    return lines


def md_legend(d: ReportData) -> list[str]:
    """The quantities' definitions (:func:`gmm_dask.report.terms.legend`): one line each."""
    return [f"- **{term}**: {text}" for term, text in legend(d)]


def _md_backtest(d: ReportData, sc: pd.DataFrame) -> list[str]:
    """The backtest's errors by method, averaged over the held-out snapshots, in percentage points."""
    lines = ["", "## Backtest", ""]
    if {"method", "share_mae"} <= set(sc.columns):
        agg = sc.groupby("method").agg(
            **{k: (k, "mean") for k in ("share_mae", "share_tv", "user_brier") if k in sc.columns}
        )
        hdr = ["method"] + [
            {
                "share_mae": "MAE (pp)",
                "share_tv": "total variation (pp)",
                "user_brier": "user Brier",
            }[k]
            for k in agg.columns
        ]
        rows = [
            [m]
            + [
                fmt_num(100 * v, ".2f")
                if k in ("share_mae", "share_tv") and is_finite(v)
                else fmt_num(v, ".4f")
                for k, v in r.items()
            ]
            for m, r in agg.iterrows()
        ]
        n = sc["held_out"].nunique() if "held_out" in sc.columns else len(sc)
        lines += [
            f"Errors of the {FORECAST_SHARE} against the actual {forecast_basis_term(d)}, in percentage "
            f"points, mean over {n} held-out snapshot{'s' if n != 1 else ''}.",
            "",
        ]
        lines += _md_table(hdr, rows, right=range(1, len(hdr)))
    return lines


def markdown_summary(data: ReportData) -> str:
    """The run in GitHub-flavoured markdown: segments, entropy bands, blended pairs, audiences,
    forecast and backtest, the tables written. Missing numbers show as '–', never 'nan'."""
    d = data
    lines = _md_header(d) + _md_segments(d) + _md_entropy(d) + _md_audiences_forecast(d)
    if has_rows(d.backtest_scores):
        lines += _md_backtest(d, d.backtest_scores)
    if d.tables:
        lines += ["", "## Tables", ""] + [f"- `{k}`: `{v}`" for k, v in d.tables.items()]
    return "\n".join(lines) + "\n"


def bic_markdown(table: pd.DataFrame, chosen: dict[str, Any]) -> str:
    """The model-selection candidates as a markdown table; the chosen row is marked with an arrow."""
    lines = [
        "| family | K | covariance | BIC | AIC | log-likelihood | iterations | converged |",
        "|---|---|---|---|---|---|---|---|",
    ]
    if "family" not in table.columns:
        table = table.assign(family="gaussian")
    key = (chosen.get("family", "gaussian"), chosen["n_components"], chosen["covariance_type"])
    for r in table.sort_values(["family", "covariance_type", "n_components"]).itertuples(index=False):
        mark = " **←**" if (r.family, r.n_components, r.covariance_type) == key else ""
        lines.append(
            f"| {r.family} | {r.n_components} | {r.covariance_type} | {fmt_num(r.bic, ',.1f')}{mark} | "
            f"{fmt_num(r.aic, ',.1f')} | {fmt_num(r.log_likelihood, '.5f')} | {r.n_iter} | {r.converged} |"
        )
    return "\n".join(lines)
