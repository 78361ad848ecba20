"""The table formats on a local disk (no server): Delta outputs, format checks, config keys."""

from __future__ import annotations

import pandas as pd
import pytest
import yaml

from gmm_dask.app import jobs
from gmm_dask.app.config import load_config
from gmm_dask.app.params import ScoreParams, TrainParams
from gmm_dask.demo import DemoSpec, write_demo_dataset
from gmm_dask.errors import ConfigError, DataError
from gmm_dask.storage import io

from .pipeline_helpers import make_config

SPEC = DemoSpec(n_users=1500, n_snapshots=2, seed=9, block_users=1500)


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    root = tmp_path_factory.mktemp("data")
    write_demo_dataset(root, SPEC)
    return root


def test_delta_outputs_replace_a_partition_in_one_commit_and_keep_the_previous_version(data, tmp_path):
    from deltalake import DeltaTable

    cfg = make_config(tmp_path, data, output={"root": str(tmp_path / "out"), "format": "delta"})
    d = SPEC.dates[0]
    jobs.train(TrainParams(config=str(cfg), snapshot=d))
    table = str(tmp_path / "out" / "memberships")
    first = DeltaTable(table)
    assert first.to_pyarrow_table().num_rows == SPEC.n_users
    jobs.train(TrainParams(config=str(cfg), snapshot=d, model={"n_components": 3}, publish=True))
    now = DeltaTable(table)
    assert now.version() == first.version() + 1
    assert set(now.to_pyarrow_table().column("model_version").to_pylist()) == {"v0002"}
    before = DeltaTable(table, version=first.version()).to_pyarrow_table()
    assert set(before.column("model_version").to_pylist()) == {"v0001"}  # time travel
    assert before.num_rows == SPEC.n_users
    assert io.partition_metadata(str(tmp_path / "out"), "memberships", d)["gmm_dask.model_version"] == "v0002"
    assert io.partition_dates(str(tmp_path / "out"), "segments") == [d]
    assert now.history(1)[0]["gmm_dask.model_version"] == "v0002"
    # the replaced files stay until vacuumed; then the old version is gone
    removed = io.delta_vacuum(table, None, retention_hours=0, dry_run=False)
    assert removed
    assert DeltaTable(table).to_pyarrow_table().num_rows == SPEC.n_users


def test_a_table_in_the_other_format_is_refused(data, tmp_path):
    d = SPEC.dates[0]
    parquet = make_config(tmp_path, data)
    jobs.train(TrainParams(config=str(parquet), snapshot=d))
    as_delta = make_config(tmp_path, data, output={"root": str(tmp_path / "out"), "format": "delta"})
    with pytest.raises(
        DataError, match=r"output.format is delta but '.*out/segments' holds a Parquet-layout"
    ):
        jobs.score(ScoreParams(config=str(as_delta), snapshot=d))


def test_format_keys_are_validated_with_the_key_named(data, tmp_path):
    cfg = make_config(tmp_path, data)
    doc = yaml.safe_load(cfg.read_text())
    doc["output"]["format"] = "iceberg"
    cfg.write_text(yaml.safe_dump(doc))
    with pytest.raises(ConfigError, match=r"output.format: Input should be 'parquet' or 'delta'"):
        load_config(cfg)
    doc["output"]["format"] = "delta"
    doc["input"]["format"] = "delta"
    cfg.write_text(yaml.safe_dump(doc))
    with pytest.raises(
        DataError, match=r"is not a Delta table \(no _delta_log/ under it\) but input.format is delta"
    ):
        jobs.train(TrainParams(config=str(cfg), snapshot=SPEC.dates[0]))


def test_vacuum_command_deletes_replaced_files_and_keeps_the_current_tables(data, tmp_path, capsys):
    """`gmm-dask vacuum` on Delta outputs: a dry run lists and keeps; a run deletes the replaced
    partitions' files (the old version stops being readable) and the current tables read the
    same; while a run holds a date's lock, a short retention is refused (exit 75)."""
    from deltalake import DeltaTable

    from gmm_dask_cli import main

    cfg = make_config(tmp_path, data, output={"root": str(tmp_path / "out"), "format": "delta"})
    d = SPEC.dates[0]
    jobs.train(TrainParams(config=str(cfg), snapshot=d))
    jobs.train(TrainParams(config=str(cfg), snapshot=d, publish=True, force=True))  # replaces the date
    table = str(tmp_path / "out" / "memberships")
    files = sorted(p for p in (tmp_path / "out").rglob("*.parquet"))
    current = DeltaTable(table).to_pandas().sort_values("user_id", ignore_index=True)

    assert main(["vacuum", "--config", str(cfg), "--retention-hours", "0", "--dry-run"]) == 0
    out = capsys.readouterr().out
    assert "memberships: would delete" in out
    assert "segments: would delete" in out
    assert sorted(p for p in (tmp_path / "out").rglob("*.parquet")) == files
    DeltaTable(table, version=0).to_pyarrow_table()  # the old version is still readable

    lock = tmp_path / "out" / "_locks" / f"dt={d}.lock"
    lock.parent.mkdir(exist_ok=True)
    lock.write_text('{"pid": 1, "host": "elsewhere", "run": "a running backfill"}')
    assert main(["vacuum", "--config", str(cfg), "--retention-hours", "0"]) == 75
    assert "not committed yet" in capsys.readouterr().err
    lock.unlink()

    assert main(["vacuum", "--config", str(cfg), "--retention-hours", "0"]) == 0
    out = capsys.readouterr().out
    left = sorted(p for p in (tmp_path / "out").rglob("*.parquet"))
    assert 0 < len(left) < len(files)
    assert f"deleted {len(files) - len(left)} file(s)" in out
    pd.testing.assert_frame_equal(
        DeltaTable(table).to_pandas().sort_values("user_id", ignore_index=True), current
    )
    with pytest.raises(Exception, match=r"(?i)not found|no such file|does not exist"):
        DeltaTable(table, version=0).to_pyarrow_table()


def test_vacuum_of_the_parquet_layout_exits_2_naming_the_key(data, tmp_path, capsys):
    from gmm_dask_cli import main

    cfg = make_config(tmp_path, data)
    assert main(["vacuum", "--config", str(cfg)]) == 2
    assert "output.format is 'parquet'" in capsys.readouterr().err
