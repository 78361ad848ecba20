"""Segment fluidity between two snapshots: which users' identities moved, and where to."""

from __future__ import annotations

import datetime as dt

from prefect import flow, get_run_logger
from prefect.artifacts import create_markdown_artifact, create_table_artifact
from pydantic import Field

from . import tasks
from .common import DEFAULT_CONFIG, date_param, load_job, require


def _matrix_markdown(df) -> str:
    head = "| from \\ to | " + " | ".join(str(c) for c in df.columns) + " |"
    sep = "|---|" + "---|" * len(df.columns)
    rows = [
        f"| {i} | " + " | ".join(f"{v:,}" for v in row) + " |"
        for i, row in zip(df.index, df.to_numpy(), strict=True)
    ]
    return "\n".join([head, sep, *rows])


@flow(
    name="fluidity", description="Per-user membership shift between two snapshots, transitions, top movers."
)
def fluidity(
    from_date: dt.date,
    to_date: dt.date,
    top_n: int = Field(100, ge=1, le=100_000),
    config: str = DEFAULT_CONFIG,
) -> dict:
    """Writes ``<root>/fluidity/dt=<to_date>`` and publishes the transition matrix and top movers."""
    logger = get_run_logger()
    cfg = load_job(config)
    a, b = date_param(from_date, "from_date"), date_param(to_date, "to_date")
    require(a != b, "from_date and to_date are the same day; pick two different snapshots")
    res = tasks.compute_fluidity(
        cfg.output.root, a, b, cfg.input.id_column, top_n=top_n, storage_options=cfg.input.storage_options
    )
    create_markdown_artifact(
        f"# Segment fluidity {a} → {b}\n\n"
        + "\n".join(f"- {k.replace('_', ' ')}: {v:,.4g}" for k, v in res.summary.items())
        + f"\n- users only in {a}: {res.n_only_from:,}; only in {b}: {res.n_only_to:,}"
        + "\n\n## Transitions (rows: segment on "
        + a
        + ", columns: on "
        + b
        + ")\n\n"
        + _matrix_markdown(res.transitions),
        key="fluidity-summary",
        description=f"fluidity {a} to {b}",
    )
    create_table_artifact(
        res.top_movers.round(4).to_dict("records"),
        key="fluidity-top-movers",
        description=f"users whose membership moved most, {a} → {b}",
    )
    logger.info("Fluidity %s → %s: %d users compared, written to %s", a, b, res.n_users, res.path)
    return {"from_date": a, "to_date": b, "path": res.path, **res.summary}
