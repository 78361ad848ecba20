"""What a run shows in the Prefect UI: markdown summaries, tables and a link to the HTML report."""

from __future__ import annotations

from pathlib import Path

from prefect.artifacts import create_link_artifact, create_markdown_artifact, create_table_artifact

from gmm_dask.report.images import charts_markdown
from gmm_dask.report.markdown import bic_markdown, markdown_summary
from gmm_dask.report.terms import SHARE, WEIGHT


def _key(text: str) -> str:
    return "".join(c if c.isalnum() else "-" for c in text.lower()).strip("-")[:100]


def _records(df, digits: int = 4) -> list[dict]:
    """A DataFrame as table-artifact rows (no NaN: the UI shows an empty cell)."""
    out = df.round(digits).astype(object)
    return out.where(out.notna(), None).to_dict("records")


def publish_run(res, kind: str = "segment") -> None:
    """What a UI user needs without leaving the UI: the summary (segments, bands, audiences,
    forecast) as markdown, the segments and audiences as tables, and where the report lives."""
    data = res.report
    md = markdown_summary(data) if data is not None else f"# {kind} {res.snapshot}"
    if getattr(res, "unchanged", False):
        md += (
            f"\n\nUnchanged, nothing written: the published tables (model `{res.model_version}`) were "
            "written for the same data, config and model settings (`force` writes them again)."
        )
    if data is not None:
        md = _with_charts(md, charts_markdown(data)[0])
    if res.report_path:
        link = report_link(res.report_path)
        md += (
            f"\n\n## Report\n\nThe full report with every chart is next to the tables: [{res.report_path}]({link}) "
            "(one self-contained HTML file). " + _where(link)
        )
        create_link_artifact(
            link,
            link_text=res.report_path,  # the UI's V2 drops hrefs but http(s): the text says where
            key=_key(f"{kind}-report"),
            description=f"{kind} report {res.snapshot} (HTML). " + _where(link),
        )
    create_markdown_artifact(md, key=_key(f"{kind}-summary"), description=f"{kind} {res.snapshot}")
    create_table_artifact(
        _records(segments_columns(res.segments), 3),
        key=_key(f"{kind}-segments"),
        description=f"segments of {res.snapshot} ({WEIGHT} and {SHARE} as the summary's legend defines them)",
    )
    if res.analysis is not None:
        publish_audience_sizes(res.analysis, kind)


#: The segments table artifact's columns: the ``segments`` table's column -> its header, in the
#: words of the summary's legend (:func:`gmm_dask.report.terms.legend`); fractions as percentages.
_SEGMENT_COLUMNS = {
    "segment": "segment",
    "name": "name",
    "weight": WEIGHT,
    "size": "users",
    "share": f"{SHARE} (%)",
    "mean_entropy_bits": "mean entropy (bits)",
    "high_entropy_share": "high entropy (% of its users)",
}
_PERCENT = ("share", "high_entropy_share")


def segments_columns(segments):
    """The segments as the UI's table shows them: :data:`_SEGMENT_COLUMNS`, renamed."""
    cols = [c for c in _SEGMENT_COLUMNS if c in segments]
    out = segments[cols].copy()
    for c in _PERCENT:
        if c in out:
            out[c] = 100 * out[c]
    return out.rename(columns=_SEGMENT_COLUMNS)


def _with_charts(md: str, charts: str) -> str:
    """The key charts after the summary's header, before its first section."""
    if not charts:
        return md
    head, sep, rest = md.partition("\n## ")
    return f"{head}\n\n## Charts\n\n{charts}\n{sep}{rest}" if sep else f"{md}\n\n## Charts\n\n{charts}"


def report_link(path: str) -> str:
    """Where a browser finds the report: the store's URL as written, or a local file's ``file://`` URI."""
    return path if "://" in path else Path(path).resolve().as_uri()


def _where(link: str) -> str:
    if link.startswith(("http://", "https://")):
        return "Open it in the browser."
    if link.startswith("file:"):
        return (
            "A file on the machine that ran the flow: browsers do not follow `file://` links from a web "
            "page, so copy the link into the address bar there (or copy the file anywhere)."
        )
    return "It lives in the object store: open or download it with the store's console or tools."


def publish_audience_sizes(analysis, kind: str) -> None:
    create_table_artifact(
        _records(analysis.audiences.sizes),
        key=_key(f"{kind}-audiences"),
        description=f"audiences of {analysis.snapshot} (files: {analysis.tables.get('audiences_csv', '')})",
    )


def publish_audience(res) -> None:
    """The audience flow's result in the UI."""
    a = res.analysis
    lines = [f"# Audiences of {res.snapshot} (model {res.model_version})", ""]
    lines += ["| audience | users | definition |", "|---|---:|---|"]
    lines += [
        f"| {r.audience_key} | {r.n_users:,} | {r.definition} |"
        for r in a.audiences.sizes.itertuples(index=False)
    ]
    lines += ["", "## Files", ""] + [f"- `{k}`: `{v}`" for k, v in res.tables.items()]
    if not res.published:
        lines += ["", f"Candidate run `{res.run_id}`: `gmm-dask promote --run-id {res.run_id}` publishes it."]
    create_markdown_artifact(
        "\n".join(lines), key="audience-summary", description=f"audiences {res.snapshot}"
    )
    publish_audience_sizes(a, "audience")


def publish_selection(out) -> None:
    table = out.table.drop(columns=["model_version"])
    create_table_artifact(
        table.round(4).to_dict("records"),
        key="select-k-table",
        description=f"{out.criterion.upper()} by K and covariance type, snapshot {out.run.snapshot}",
    )
    text = bic_markdown(out.table, out.selected)
    if out.grid_edge:
        text += f"\n\n**Note:** {out.grid_edge}"
    create_markdown_artifact(text, key="select-k-bic", description="model selection")
    publish_run(out.run, "select-k")


def _matrix_markdown(df) -> str:
    head = "| from \\ to | " + " | ".join(str(c) for c in df.columns) + " |"
    sep = "|---|" + "---|" * len(df.columns)
    rows = [
        f"| {i} | " + " | ".join(f"{v:,}" for v in row) + " |"
        for i, row in zip(df.index, df.to_numpy(), strict=True)
    ]
    return "\n".join([head, sep, *rows])


def publish_fluidity(res) -> None:
    a, b = res.from_date, res.to_date
    create_markdown_artifact(
        f"# Segment fluidity {a} → {b}\n\n"
        + "\n".join(f"- {k.replace('_', ' ')}: {v:,.4g}" for k, v in res.summary.items())
        + f"\n- users only in {a}: {res.n_only_from:,}; only in {b}: {res.n_only_to:,}"
        + f"\n\n## Transitions (rows: segment on {a}, columns: on {b})\n\n"
        + _matrix_markdown(res.transitions),
        key="fluidity-summary",
        description=f"fluidity {a} to {b}",
    )
    create_table_artifact(
        res.top_movers.round(4).to_dict("records"),
        key="fluidity-top-movers",
        description=f"users whose membership moved most, {a} → {b}",
    )
