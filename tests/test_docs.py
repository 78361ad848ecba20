"""The README's reference tables, checked against the code they describe: every flow with every
parameter of its form, every deployment that is served or declared in prefect.yaml."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
import yaml

import flows
from flows.serve import deployments
from gmm_dask.app.params import ServeParams

from .pipeline_helpers import flow_schema

REPO = Path(__file__).resolve().parents[1]


def _section_tables(heading: str) -> dict[str, list[list[str]]]:
    """The tables under the README's ``## heading``, by their first header cell: rows of cells."""
    text = (REPO / "README.md").read_text()
    body = text.split(f"\n## {heading}\n", 1)[1].split("\n## ", 1)[0]
    tables: dict[str, list[list[str]]] = {}
    for block in re.findall(r"(?:^\|.*\n)+", body, flags=re.M):
        rows = [[c.strip() for c in line.strip().strip("|").split("|")] for line in block.splitlines()]
        tables[rows[0][0]] = rows[2:]  # after the header and its --- line
    return tables


TABLES = _section_tables("Orchestration with Prefect")


def _row(table: str, first: str) -> list[str]:
    rows = [r for r in TABLES[table] if r[0] == first]
    assert len(rows) == 1, f"README's {table} table has no single row {first}"
    return rows[0]


@pytest.mark.parametrize("attr", flows.__all__)
def test_the_flow_table_lists_every_flow_with_exactly_its_parameters(attr):
    name = getattr(flows, attr).name
    schema, _ = flow_schema(attr)
    listed = re.findall(r"`([a-z_]+)`", _row("flow", f"`{name}`")[1])
    assert listed == list(schema["properties"]), (name, listed)


def test_the_flow_table_has_no_flow_the_code_lacks():
    assert {r[0] for r in TABLES["flow"]} == {f"`{getattr(flows, a).name}`" for a in flows.__all__}


def test_the_deployment_table_lists_every_served_deployment_as_served():
    served = deployments(ServeParams(config="configs/demo.yaml"))
    for d in served:
        row = _row("deployment", f"`{d.flow_name}/{d.name}`")
        assert row[1] == f"`{d.flow_name}`", row
        assert (row[2] == "—") == (not d.schedules), row
        assert row[3] == (str(d.concurrency_limit) if d.concurrency_limit else "—"), row
    assert len(TABLES["deployment"]) == len(served)


def test_prefect_yaml_declares_the_deployments_of_the_table():
    declared = yaml.safe_load((REPO / "prefect.yaml").read_text())["deployments"]
    names = set()
    for d in declared:
        attr = d["entrypoint"].split(":")[1]
        names.add(f"`{getattr(flows, attr).name}/{d['name']}`")
    assert names == {r[0] for r in TABLES["deployment"]}


def test_prefect_yaml_deployments_have_the_served_ones_concurrency_limits():
    served = {d.name: d.concurrency_limit for d in deployments(ServeParams(config="configs/demo.yaml"))}
    declared = yaml.safe_load((REPO / "prefect.yaml").read_text())["deployments"]
    limits = {d["name"]: (d.get("concurrency_limit") or {}).get("limit") for d in declared}
    assert limits == served
    assert all(
        d["concurrency_limit"]["collision_strategy"] == "ENQUEUE"
        for d in declared
        if d.get("concurrency_limit")
    )
