"""What a run shows in the Prefect UI: markdown summaries, tables and a link to the HTML report."""

from __future__ import annotations

from pathlib import Path

from prefect.artifacts import create_link_artifact, create_markdown_artifact, create_table_artifact

from gmm_dask.report import bic_markdown, markdown_summary


def _key(text: str) -> str:
    return "".join(c if c.isalnum() else "-" for c in text.lower()).strip("-")[:100]


def publish_run(res, kind: str = "segment") -> None:
    """Markdown summary of a segmentation run, and a link to its HTML report."""
    create_markdown_artifact(
        markdown_summary(res), key=_key(f"{kind}-summary"), description=f"{kind} {res.snapshot}"
    )
    if res.report_path:
        link = res.report_path if "://" in res.report_path else Path(res.report_path).as_uri()
        create_link_artifact(link, link_text=f"HTML report for {res.snapshot}", key=_key(f"{kind}-report"))


def publish_selection(out) -> None:
    table = out.table.drop(columns=["model_version"])
    create_table_artifact(
        table.round(4).to_dict("records"),
        key="select-k-table",
        description=f"{out.criterion.upper()} by K and covariance type, snapshot {out.run.snapshot}",
    )
    create_markdown_artifact(
        bic_markdown(out.table, out.selected), key="select-k-bic", description="model selection"
    )
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
