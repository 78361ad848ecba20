"""Idempotent re-runs (issue #23): a published date re-run with the same data, config and model
settings writes nothing unless ``--force``, decided before Prefect or Dask start."""

from __future__ import annotations

import hashlib
from pathlib import Path

import pyarrow.parquet as pq
import yaml

from gmm_dask.app import jobs
from gmm_dask.app.params import BackfillParams, SegmentParams, TrainParams
from gmm_dask.demo import DemoSpec
from gmm_dask_cli import main

from .pipeline_helpers import SMALL, demo_data, forbid_starts, make_config

DATES = SMALL.dates


def manifest(root: Path) -> dict[str, tuple[int, int, str]]:
    """Every file under ``root``: (size, mtime in ns, sha256)."""
    return {
        str(p.relative_to(root)): (
            p.stat().st_size,
            p.stat().st_mtime_ns,
            hashlib.sha256(p.read_bytes()).hexdigest(),
        )
        for p in sorted(root.rglob("*"))
        if p.is_file()
    }


def latest(out: Path) -> str:
    return (out / "registry" / "aliases" / "latest.json").read_text()


def test_segment_again_writes_nothing_and_force_writes(tmp_path, capsys, monkeypatch):
    data = demo_data(tmp_path / "data")
    # refit_min_gain 0: the forced run refits (by default it would keep the published model,
    # fitted on this very date, and write the same tables again)
    cfg = str(make_config(tmp_path, data, model={"n_components": 5, "random_state": 0, "refit_min_gain": 0}))
    out, d = tmp_path / "out", DATES[-1]
    first = jobs.segment(SegmentParams(config=cfg, snapshot=d))
    before, alias = manifest(out), latest(out)
    forbid_starts(monkeypatch)
    assert main(["segment", "--config", cfg, "--snapshot", d]) == 0
    assert f"Snapshot {d}: unchanged, nothing written" in capsys.readouterr().out
    assert manifest(out) == before
    assert latest(out) == alias
    res = jobs.segment(SegmentParams(config=cfg, snapshot=d))
    assert res.unchanged
    assert res.model_version == first.model_version
    assert res.summary()["unchanged"] is True
    monkeypatch.undo()
    forced = jobs.segment(SegmentParams(config=cfg, snapshot=d, force=True), report=False)
    assert not forced.unchanged
    assert forced.trained
    assert forced.model_version != first.model_version
    after = manifest(out)
    assert (
        after["segments/dt=" + d + "/part-00000.parquet"]
        != before["segments/dt=" + d + "/part-00000.parquet"]
    )
    assert latest(out) != alias


def test_a_new_model_setting_or_new_data_refits(tmp_path):
    data = demo_data(tmp_path / "data")
    path = make_config(tmp_path, data)
    cfg, d = str(path), DATES[0]
    first = jobs.train(TrainParams(config=cfg, snapshot=d))
    assert jobs.train(TrainParams(config=cfg, snapshot=d)).unchanged
    doc = yaml.safe_load(path.read_text())
    doc["model"]["tol"] = 1e-3
    path.write_text(yaml.safe_dump(doc))
    new_settings = jobs.train(TrainParams(config=cfg, snapshot=d))
    assert not new_settings.unchanged
    assert new_settings.model_version != first.model_version
    assert jobs.train(TrainParams(config=cfg, snapshot=d)).unchanged
    part = sorted((data / "snapshots" / f"dt={d}").glob("*.parquet"))[0]
    table = pq.read_table(part)
    pq.write_table(table.slice(0, table.num_rows - 1), part)  # one user less
    new_data = jobs.train(TrainParams(config=cfg, snapshot=d))
    assert not new_data.unchanged
    assert new_data.model_version != new_settings.model_version


def test_backfill_over_done_dates_and_demo_again_start_nothing(tmp_path, monkeypatch, capsys):
    spec = DemoSpec(n_users=3000, n_snapshots=2, seed=5)  # what `gmm-dask demo` generates for these
    data = demo_data(tmp_path / "data", spec)
    cfg = str(make_config(tmp_path, data))
    out = tmp_path / "out"
    old, new = spec.dates
    # the demo's first run, without Prefect: backfill the history, segment the latest day
    jobs.backfill(BackfillParams(config=cfg, start=old, end=old, mode="refit", publish=True))
    jobs.segment(SegmentParams(config=cfg, snapshot=new))
    before, alias = manifest(tmp_path), latest(out)
    forbid_starts(monkeypatch)
    argv = ["backfill", "--config", cfg, "--start", old, "--end", new, "--mode", "refit", "--publish"]
    assert main(argv) == 0
    assert "0 date(s) run, 2 skipped, 0 failed" in capsys.readouterr().out
    assert main(["demo", "--config", cfg, "--users", "3000", "--snapshots", "2", "--seed", "5"]) == 0
    printed = capsys.readouterr().out
    assert "0 date(s) run, 1 skipped, 0 failed" in printed
    assert f"Snapshot {new}: unchanged, nothing written" in printed
    assert "Running the" not in printed  # it does not announce flows it does not run
    assert manifest(tmp_path) == before
    assert latest(out) == alias
