"""Prefect flows under one session-scoped test harness (a temporary local Prefect API)."""

from __future__ import annotations

import itertools
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pytest

from gmm_dask.app.params import ModelOverride
from gmm_dask.demo import DemoSpec, read_truth, write_demo_dataset
from gmm_dask.errors import GMMDaskInputError

from .pipeline_helpers import make_config, read_partition

SPEC = DemoSpec(n_users=4000, n_snapshots=5, seed=3, block_users=2000, row_group_rows=1000, drift_share=0.1)
DATES = SPEC.dates


pytestmark = pytest.mark.usefixtures("prefect_harness")
REPO = Path(__file__).resolve().parents[1]


def _cli(*argv: str):
    """The real command line, in a subprocess talking to the session's Prefect API."""
    import os
    import subprocess
    import sys

    from prefect.settings import PREFECT_API_URL

    env = {**os.environ, "PREFECT_API_URL": PREFECT_API_URL.value()}
    return subprocess.run(
        [sys.executable, "-m", "gmm_dask_cli", *argv],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )


@pytest.fixture(scope="module")
def data_root(tmp_path_factory):
    root = tmp_path_factory.mktemp("flowdata")
    write_demo_dataset(root, SPEC)
    return root


def _cfg(tmp: Path, data_root: Path, **kw) -> str:
    return str(make_config(tmp, data_root, **kw))


def test_segment_flow_writes_tables_and_report(tmp_path, data_root, monkeypatch):
    import flows.artifacts
    from flows import segment

    summaries: dict[str, str] = {}
    publish = flows.artifacts.create_markdown_artifact
    monkeypatch.setattr(
        flows.artifacts,
        "create_markdown_artifact",
        lambda md, key, **kw: (summaries.setdefault(key, md), publish(md, key=key, **kw))[1],
    )
    res = segment(config=_cfg(tmp_path, data_root))
    assert res.snapshot == DATES[-1]
    assert res.model_version == "v0001"
    mem = read_partition(tmp_path / "out", "memberships", DATES[-1])
    assert mem.num_rows == SPEC.n_users
    report = Path(res.report_path)
    assert report.is_file()
    text = report.read_text()
    assert "<svg" in text
    assert "Segment sizes" in text
    assert "Users in 2-D" in text
    _check_summary_and_report(res, summaries["segment-summary"], text)
    # pinned model: score instead of fit
    res2 = segment(config=_cfg(tmp_path, data_root), snapshot=DATES[0], model_version="v0001")
    assert not res2.trained
    assert res2.model_version == "v0001"
    assert sorted(p.name for p in (tmp_path / "out" / "registry" / "versions").iterdir()) == ["v0001"]


def _check_summary_and_report(res, md: str, page: str) -> None:
    """A fitted run's summary artifact and report: one word per quantity, defined in the legend;
    the run time the command line prints; each audience's own CSV files; why there is no BIC curve."""
    import html

    from flows.artifacts import segments_columns

    from .test_report import (
        assert_one_word_per_quantity,
        html_headers,
        html_legend_terms,
        md_headers,
        md_legend_terms,
    )

    defined = md_legend_terms(md)
    assert sorted(defined) == ["share", "weight"]  # the first snapshot published: no forecast yet
    assert_one_word_per_quantity(md_headers(md), defined)
    table = list(segments_columns(res.segments).columns)  # the segments table artifact's headers
    assert table == [
        "segment",
        "name",
        "weight",
        "users",
        "share (%)",
        "mean entropy (bits)",
        "high entropy (% of its users)",
    ]
    assert_one_word_per_quantity(table, defined)
    assert sorted(html_legend_terms(page)) == ["share", "weight"]
    assert_one_word_per_quantity(html_headers(page), html_legend_terms(page))
    assert f"<dt>run time</dt><dd>{res.seconds:.1f} s</dd>" in page  # as print_result says it
    assert "Single K fitted (K=5): there is no BIC curve" in page
    sizes = res.analysis.audiences.sizes
    assert (sizes["n_users"] > 0).sum() >= 2
    for key, n in zip(sizes["audience_key"], sizes["n_users"], strict=True):
        pattern = f"{res.tables['audiences_csv']}/{key}-part-*.csv"
        files = sorted(Path(res.tables["audiences_csv"]).glob(f"{key}-part-*.csv"))
        if n:
            assert f"<td>{html.escape(pattern)}</td>" in page, key
            assert sum(len(pd.read_csv(f)) for f in files) == n, key  # its own users, no one else's
        else:
            assert files == [], key


def test_model_parameter_override_patches_the_config(tmp_path, data_root):
    """A form's model override changes only the fields it gives; the rest stay the config's."""
    from flows import train

    cfg = _cfg(
        tmp_path, data_root, model={"n_components": 5, "random_state": 17, "tol": 1e-4, "max_iter": 200}
    )
    res = train(
        config=cfg,
        snapshot=DATES[1],
        model=ModelOverride(n_components=3, covariance_type="diag", family="gaussian"),
    )
    assert len(res.segments) == 3
    assert res.fit["covariance_type"] == "diag"
    assert res.fit["seed"] == 17  # not reset to the class default


@pytest.mark.parametrize("mode", ["score", "refit"])
def test_backfill_writes_one_partition_per_date_and_skips_done(tmp_path, data_root, mode):
    from flows import backfill, train

    # refit_min_gain 0: a refit backfill fits every date (the default keeps a model that still
    # explains the data: tests/test_refit_policy.py)
    cfg = _cfg(tmp_path, data_root, model={"n_components": 5, "random_state": 0, "refit_min_gain": 0})
    if mode == "score":
        train(config=cfg, snapshot=DATES[0])
    out = backfill(start=DATES[0], end=DATES[-1], mode=mode, config=cfg, max_concurrency=2, publish=True)
    assert [r["snapshot"] for r in out] == DATES
    root = tmp_path / "out"
    for d in DATES:
        parts = list((root / "memberships").glob(f"dt={d}"))
        assert len(parts) == 1
        ids = read_partition(root, "memberships", d).column("user_id").to_numpy()
        assert len(ids) == len(np.unique(ids)) == SPEC.n_users
    mtimes = {p: p.stat().st_mtime_ns for p in (root / "memberships").rglob("*.parquet")}
    again = backfill(start=DATES[0], end=DATES[-1], mode=mode, config=cfg, publish=True)
    assert all(r["skipped"] for r in again)
    assert {p: p.stat().st_mtime_ns for p in (root / "memberships").rglob("*.parquet")} == mtimes
    if mode == "refit":
        versions = {r["model_version"] for r in out}
        assert len(versions) == len(DATES)  # one model per date
        # a user whose features did not change keeps its segment id from one date to the next
        # (10 % drifters here: when they tip a boundary, some unchanged neighbours move with it;
        # the ≥ 99 % acceptance on the demo with a promotion is tests/test_identity.py)
        for a, b in itertools.pairwise(DATES):
            truth = read_truth(data_root, b)
            unchanged = set(truth.user_id[~truth.changed])
            sa = read_partition(root, "memberships", a).to_pandas().set_index("user_id").segment
            sb = read_partition(root, "memberships", b).to_pandas().set_index("user_id").segment
            ids = sorted(unchanged)
            same = (sa.loc[ids].to_numpy() == sb.loc[ids].to_numpy()).mean()
            assert same >= 0.85, (a, b, same)
        forced = backfill(start=DATES[-2], end=DATES[-1], mode=mode, config=cfg, force=True, publish=True)
        assert not any(r["skipped"] for r in forced)


def test_select_k_fits_the_grid_and_selects_the_minimum(tmp_path_factory):
    """Every (family, K, covariance type) is fitted once and the minimum of the criterion is selected,
    registered and written. (Whether BIC recovers the generator's number of archetypes on the
    zero-inflated demo is measured by benchmarks/calibration.py, not asserted here.)"""
    from flows import select_k

    root = tmp_path_factory.mktemp("selk")
    spec = DemoSpec(n_users=4000, n_snapshots=1, seed=5, hybrid_share=0.0, drift_share=0.0, n_archetypes=4)
    write_demo_dataset(root, spec)
    tmp = tmp_path_factory.mktemp("selk-out")
    out = select_k(k_min=2, k_max=5, covariance_types=["full", "diag"], config=_cfg(tmp, root))
    assert out["published"] is False  # select-k writes a candidate
    cand = tmp / "out" / "_candidates" / out["run_id"]
    table = pd.read_parquet(cand / "model_selection")
    # by default both families: the behaviour family takes no covariance type
    assert sorted(zip(table.family, table.n_components, table.covariance_type, strict=True)) == sorted(
        [("gaussian", k, ct) for k in range(2, 6) for ct in ("full", "diag")]
        + [("behaviour", k, "—") for k in range(2, 6)]
    )
    best = table.loc[table.bic.idxmin()]
    assert table.selected.sum() == 1
    assert bool(table.loc[table.bic.idxmin(), "selected"])
    assert (
        out["selected"]["family"],
        out["selected"]["n_components"],
        out["selected"]["covariance_type"],
    ) == (
        best.family,
        best.n_components,
        best.covariance_type,
    )
    segs = pd.read_parquet(cand / "segments")
    assert len(segs) == best.n_components
    assert not (tmp / "out" / "segments").exists()
    # a minimum at the edge of the grid is not a choice: the run says so
    if best.n_components == 5:
        assert "lowest at the largest K tried (5)" in out["warning"]
    elif best.n_components == 2:
        assert "lowest at the smallest K tried (2)" in out["warning"]
    else:
        assert out["warning"] is None


def test_fluidity_ranks_drifting_users_above_stable_ones(tmp_path, data_root):
    from flows import backfill, fluidity, train

    cfg = _cfg(tmp_path, data_root)
    train(config=cfg, snapshot=DATES[0])
    backfill(start=DATES[0], end=DATES[-1], mode="score", config=cfg, publish=True)
    out = fluidity(from_date=DATES[0], to_date=DATES[-1], top_n=200, config=cfg)
    table = pd.read_parquet(out["path"])
    # the users whose true blend moved between the two dates (drifters on their way; each
    # drifter starts on its own day, so some have not moved yet)
    t0 = read_truth(data_root, DATES[0])[["user_id", "kind", "share_a"]]
    t1 = read_truth(data_root, DATES[-1])[["user_id", "share_a"]]
    truth = t0.merge(t1, on="user_id", suffixes=("", "_to"))
    truth["moved"] = (truth.share_a - truth.share_a_to).abs() >= 0.5
    merged = table.merge(truth, on="user_id")
    assert len(merged) == SPEC.n_users
    assert merged.moved.sum() >= 50, "the demo should have drifters that moved between these dates"
    drift = merged[merged.moved].tv_distance
    stable = merged[merged.kind == "stable"].tv_distance
    assert drift.median() > 5 * stable.median() + 0.05
    base = merged.moved.mean()
    top = merged.sort_values("tv_distance", ascending=False).head(200)
    assert top.moved.mean() > 3 * base  # the top movers are enriched in users whose behaviour moved


@pytest.mark.parametrize(
    ("flow_name", "kwargs", "needle"),
    [
        ("segment", {"snapshot": "2030-01-01"}, "Snapshot 2030-01-01 not found under"),
        ("backfill", {"start": DATES[3], "end": DATES[1]}, f"end ({DATES[1]}) is before start ({DATES[3]})"),
        ("select_k", {"k_min": 5, "k_max": 3}, "k_min (5) must be <= k_max (3)"),
        ("segment", {"model_version": "v0099"}, "Model version 'v0099' does not exist"),
        (
            "backfill",
            {"start": "2031-01-01", "end": "2031-02-01"},
            "no snapshots between 2031-01-01 and 2031-02-01",
        ),
    ],
)
def test_bad_parameters_fail_before_any_compute(tmp_path, data_root, flow_name, kwargs, needle):
    import flows

    with pytest.raises(GMMDaskInputError, match=needle.replace("(", r"\(").replace(")", r"\)")):
        getattr(flows, flow_name)(config=_cfg(tmp_path, data_root), **kwargs)
    assert not (tmp_path / "out" / "memberships").exists()


def test_bad_date_parameter_is_rejected_by_validation(tmp_path, data_root):
    from prefect.exceptions import ParameterTypeError

    import flows

    with pytest.raises(ParameterTypeError, match="snapshot"):
        flows.segment(config=_cfg(tmp_path, data_root), snapshot="2026-02-30")


@pytest.mark.parametrize("mode", ["score"])  # refit mode's per-date failures: tests/test_identity.py
def test_backfill_finishes_good_dates_and_exits_2_naming_each_bad_one(tmp_path, data_root, mode):
    """A date with bad input does not stop the others: they are written whole, and the run
    ends with exit 2 and a list naming each bad date and why."""
    import shutil

    import pyarrow.parquet as pq

    data = tmp_path / "data"
    shutil.copytree(data_root, data)
    bad = DATES[2]
    part = next((data / "snapshots" / f"dt={bad}").glob("*.parquet"))
    t = pq.read_table(part)
    ids = t.column("user_id").to_numpy().copy()
    ids[5] = ids[4]
    pq.write_table(t.set_column(0, "user_id", pa.array(ids)), part)
    cfg = _cfg(tmp_path, data)
    if mode == "score":
        assert _cli("train", "--config", cfg, "--snapshot", DATES[0]).returncode == 0
    out = _cli(
        "backfill",
        "--config",
        cfg,
        "--start",
        DATES[0],
        "--end",
        DATES[-1],
        "--mode",
        mode,
        "--force",
        "--publish",
    )
    assert out.returncode == 2, out.stderr
    assert f"{bad}: Snapshot {bad}: 1 duplicate value(s) in id column 'user_id'" in out.stderr
    assert "Traceback" not in out.stderr, out.stderr
    assert f"{len(DATES) - 1} date(s) run, 0 skipped, 1 failed" in out.stdout
    root = tmp_path / "out"
    for d in DATES:
        if d == bad:
            assert not (root / "memberships" / f"dt={d}").exists()
        else:
            assert read_partition(root, "memberships", d).num_rows == SPEC.n_users


def test_io_steps_retry_storage_errors_but_never_bad_input_or_a_lost_race():
    """A flaky store is retried; bad input and a date another run published first are not (a
    retry after a lost race would overwrite the winner)."""
    from prefect.states import Failed

    from flows.tasks import _retry_unless_bad_input
    from gmm_dask.errors import DataError, PublishConflictError

    def retried(exc):
        return _retry_unless_bad_input(None, None, Failed(data=exc))

    assert retried(OSError("connection reset"))
    assert not retried(DataError("bad column"))
    assert not retried(PublishConflictError("2026-01-01 was published by run abc"))


@pytest.mark.parametrize(
    ("selected_k", "k_range", "expected"),
    [
        (5, (2, 5), "lowest at the largest K tried (5)"),
        (3, (2, 5), None),
        (2, (2, 5), "lowest at the smallest K tried (2)"),
        (1, (1, 4), None),  # nothing below K = 1
        (3, (3, 3), None),  # a single K is no grid
    ],
)
def test_select_k_says_when_the_minimum_sits_at_the_edge_of_the_grid(selected_k, k_range, expected):
    from types import SimpleNamespace

    from gmm_dask.app.jobs import SelectKResult

    ks = range(k_range[0], k_range[1] + 1)
    table = pd.DataFrame(
        {"n_components": list(ks), "covariance_type": "full", "selected": [k == selected_k for k in ks]}
    )
    warning = SelectKResult(SimpleNamespace(model_version="v0001"), table, "bic").grid_edge
    if expected is None:
        assert warning is None
    else:
        assert expected in warning
        assert warning.startswith("BIC")


def _run_logs(flow_run_id) -> list:
    """The flow run's log entries as stored by the Prefect API (after flushing the handler)."""
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import LogFilter, LogFilterFlowRunId
    from prefect.logging.handlers import APILogHandler

    APILogHandler().flush()
    with get_client(sync_client=True) as client:
        return client.read_logs(LogFilter(flow_run_id=LogFilterFlowRunId(any_=[flow_run_id])))


def test_an_input_error_is_the_state_message_and_one_error_line_without_traceback(tmp_path, data_root):
    import flows

    state = flows.segment(config=_cfg(tmp_path, data_root), snapshot="2030-01-01", return_state=True)
    assert state.is_failed()
    assert "Snapshot 2030-01-01 not found under" in state.message
    with pytest.raises(GMMDaskInputError):  # callers (the CLI: exit 2) still get the error
        state.result()
    logs = _run_logs(state.state_details.flow_run_id)
    errors = [entry.message for entry in logs if entry.level >= 40]
    assert len(errors) == 1, errors
    assert "Snapshot 2030-01-01 not found under" in errors[0]
    assert not any("Traceback" in entry.message for entry in logs)


def test_library_warnings_of_a_run_are_in_its_logs(tmp_path, data_root):
    import flows

    cfg = _cfg(
        tmp_path, data_root, model={"family": "gaussian", "n_components": 4, "max_iter": 2, "tol": 1e-12}
    )
    state = flows.train(config=cfg, snapshot=DATES[0], return_state=True)
    assert state.is_completed()
    warnings = [entry.message for entry in _run_logs(state.state_details.flow_run_id) if entry.level == 30]
    assert any("EM did not converge in 2 iterations" in w for w in warnings), warnings
