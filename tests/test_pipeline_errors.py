"""Bad input to the warehouse job: one clear message naming the file/column/key, exit 2, nothing written."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import yaml

from gmm_dask.app import pipeline
from gmm_dask.app.steps import profile_piece
from gmm_dask_cli import main

from .pipeline_helpers import forbid_starts

DATE = "2026-02-01"


def _frame(n=400, seed=0):
    rng = np.random.default_rng(seed)
    return pd.DataFrame(
        {
            "user_id": np.arange(n, dtype=np.int64),
            "sessions": rng.lognormal(1, 0.5, n),
            "spend": rng.lognormal(3, 1, n),
        }
    )


def _write(
    tmp: Path, df: pd.DataFrame | None = None, *, date=DATE, raw: bytes | None = None, **cfg_over
) -> Path:
    part = tmp / "data" / f"dt={date}"
    part.mkdir(parents=True, exist_ok=True)
    if raw is not None:
        (part / "part-0.parquet").write_bytes(raw)
    elif df is not None:
        df.to_parquet(part / "part-0.parquet", index=False)
    cfg = {
        "input": {"path": str(tmp / "data"), "id_column": "user_id", "features": ["sessions", "spend"]},
        "model": {"n_components": 2, "max_iter": 20},
        "output": {"root": str(tmp / "out")},
        "cluster": {"type": "local", "n_workers": 1, "processes": False},
    }
    for section, values in cfg_over.items():
        cfg[section] = {**cfg.get(section, {}), **values}
    path = tmp / "job.yaml"
    path.write_text(yaml.safe_dump(cfg))
    return path


def _written(tmp: Path) -> list[str]:
    out = tmp / "out"
    if not out.exists():
        return []
    return sorted(str(p.relative_to(out)) for p in out.rglob("*") if p.is_file())


def _fails(capsys, argv, *needles):
    assert main(argv) == 2
    err = capsys.readouterr().err
    for needle in needles:
        assert needle in err, f"{needle!r} not in {err!r}"
    return err


def test_missing_column(tmp_path, capsys):
    cfg = _write(tmp_path, _frame().drop(columns=["spend"]))
    _fails(
        capsys,
        ["train", "--config", str(cfg)],
        "has no column(s) ['spend']",
        "part-0.parquet",
        "input.features",
    )
    assert _written(tmp_path) == []


def test_non_numeric_column(tmp_path, capsys):
    df = _frame()
    df["spend"] = df["spend"].astype(str)
    cfg = _write(tmp_path, df)
    _fails(capsys, ["train", "--config", str(cfg)], "Column 'spend'", "part-0.parquet", "must be numeric")
    assert _written(tmp_path) == []


@pytest.mark.parametrize("bad", [np.nan, np.inf, None])
def test_missing_values_under_policy_error(tmp_path, capsys, bad):
    df = _frame()
    df["sessions"] = df["sessions"].astype(object)
    df.loc[[7, 9], "sessions"] = bad
    df["sessions"] = df["sessions"].astype(float)
    cfg = _write(tmp_path, df)
    _fails(
        capsys,
        ["train", "--config", str(cfg)],
        "2 row(s) have null, NaN or infinite features",
        "row 7",
        "column 'sessions'",
        "input.missing",
    )
    assert _written(tmp_path) == []


@pytest.mark.parametrize("command", [["train"], ["segment"], ["select-k", "--k-min", "2", "--k-max", "3"]])
def test_a_nan_in_a_small_snapshot_exits_2_before_a_cluster_or_prefect_starts(
    tmp_path, capsys, monkeypatch, command
):
    """A small snapshot is profiled while planning: its bad row is named (file, column, row)
    with neither a Dask client nor Prefect started."""
    df = _frame(3000)
    df.loc[1234, "sessions"] = np.nan
    cfg = _write(tmp_path, df)
    forbid_starts(monkeypatch)
    _fails(
        capsys,
        [*command, "--config", str(cfg)],
        "part-0.parquet",
        "row 1234",
        "column 'sessions'",
        "input.missing",
    )
    assert _written(tmp_path) == []


def test_a_small_snapshot_is_profiled_once_for_the_plan_and_the_run(tmp_path, capsys, monkeypatch):
    cfg = _write(tmp_path, _frame(3000))
    pieces: list[int] = []

    def counting(piece, *args, **kwargs):
        pieces.append(piece.index)
        return profile_piece(piece, *args, **kwargs)

    monkeypatch.setattr(pipeline, "profile_piece", counting)  # the cluster is in-process (threads)
    assert main(["train", "--config", str(cfg)]) == 0
    assert pieces == [0]  # one piece, profiled once
    assert "profile: 3,000 rows in" in capsys.readouterr().err


def test_missing_values_drop_and_impute_report_counts(tmp_path, capsys):
    df = _frame()
    df.loc[[3, 5, 8], "spend"] = np.nan
    cfg = _write(tmp_path, df, input={"missing": "drop"})
    assert main(["train", "--config", str(cfg)]) == 0
    assert "400 users" not in capsys.readouterr().out
    mem = pd.read_parquet(tmp_path / "out" / "memberships")
    assert len(mem) == 397
    assert not set(mem.user_id) & {3, 5, 8}
    cfg = _write(tmp_path, df, input={"missing": "impute_mean"})
    assert main(["train", "--config", str(cfg)]) == 0
    assert "400 users written (0 dropped, 3 imputed)" in capsys.readouterr().out
    assert len(pd.read_parquet(tmp_path / "out" / "memberships")) == 400


def test_unscaled_values_too_large_name_file_row_and_column(tmp_path, capsys):
    df = _frame()
    df.loc[11, "spend"] = 3e150
    cfg = _write(tmp_path, df, model={"standardize": False})
    _fails(
        capsys,
        ["train", "--config", str(cfg)],
        "part-0.parquet",
        "row 11",
        "column 'spend'",
        "exceeds 1e+100",
        "asinh",
    )
    assert _written(tmp_path) == []


def test_duplicate_user_ids(tmp_path, capsys):
    df = _frame()
    df.loc[10, "user_id"] = 3
    cfg = _write(tmp_path, df)
    _fails(capsys, ["train", "--config", str(cfg)], "duplicate value(s) in id column 'user_id'", "[3]")
    assert _written(tmp_path) == []


def test_duplicate_ids_across_files(tmp_path, capsys):
    cfg = _write(tmp_path, _frame())
    _frame(seed=1).iloc[:5].to_parquet(tmp_path / "data" / f"dt={DATE}" / "part-1.parquet", index=False)
    _fails(capsys, ["train", "--config", str(cfg)], "5 duplicate value(s)")
    assert _written(tmp_path) == []


def test_empty_snapshot_directory_and_zero_rows(tmp_path, capsys):
    cfg = _write(tmp_path, None)
    _fails(capsys, ["train", "--config", str(cfg)], f"Snapshot {DATE}", "has no Parquet files")
    _frame().iloc[:0].to_parquet(tmp_path / "data" / f"dt={DATE}" / "part-0.parquet", index=False)
    _fails(capsys, ["train", "--config", str(cfg)], "is empty")
    assert _written(tmp_path) == []


def test_missing_snapshot_and_bad_date(tmp_path, capsys):
    cfg = _write(tmp_path, _frame())
    _fails(
        capsys,
        ["train", "--config", str(cfg), "--snapshot", "2030-01-01"],
        "Snapshot 2030-01-01 not found",
        DATE,
    )
    _fails(
        capsys,
        ["train", "--config", str(cfg), "--snapshot", "2030-02-30"],
        "--snapshot",
        "day value is outside",
    )
    _fails(capsys, ["train", "--config", str(cfg), "--snapshot", "yesterday"], "--snapshot", "valid date")
    assert _written(tmp_path) == []


def test_missing_input_path(tmp_path, capsys):
    cfg = _write(tmp_path, None, input={"path": str(tmp_path / "nowhere")})
    _fails(capsys, ["train", "--config", str(cfg)], "nowhere", "does not exist", "input.path")


def test_corrupt_parquet_file(tmp_path, capsys):
    cfg = _write(tmp_path, raw=b"PAR1 this is not parquet at all PAR1")
    _fails(capsys, ["train", "--config", str(cfg)], "part-0.parquet", "unreadable or corrupt")
    assert _written(tmp_path) == []


def test_unknown_config_key_and_bad_values(tmp_path, capsys):
    cfg = _write(tmp_path, _frame(), model={"n_componets": 3})
    _fails(capsys, ["train", "--config", str(cfg)], "job.yaml: unknown key 'model.n_componets'")
    cfg = _write(tmp_path, _frame(), model={"n_componets": None, "covariance_type": "round"})
    data = yaml.safe_load(cfg.read_text())
    del data["model"]["n_componets"]
    cfg.write_text(yaml.safe_dump(data))
    _fails(
        capsys,
        ["train", "--config", str(cfg)],
        "model.covariance_type",
        "'full', 'tied', 'diag' or 'spherical'",
    )
    _fails(capsys, ["train", "--config", str(tmp_path / "nope.yaml")], "does not exist")
    assert _written(tmp_path) == []


def test_unknown_and_tampered_model_versions(tmp_path, capsys):
    cfg = _write(tmp_path, _frame())
    _fails(capsys, ["score", "--config", str(cfg), "--snapshot", DATE], "Model alias 'latest' does not exist")
    assert main(["train", "--config", str(cfg)]) == 0
    capsys.readouterr()
    before = _written(tmp_path)
    _fails(
        capsys,
        ["score", "--config", str(cfg), "--snapshot", DATE, "--model-version", "v0042"],
        "Model version 'v0042' does not exist",
        "v0001",
    )
    model_file = tmp_path / "out" / "registry" / "versions" / "v0001" / "model.json"
    doc = json.loads(model_file.read_text())
    doc["payload"]["weights"][0] += 0.01
    doc["payload"]["weights"][1] -= 0.01
    model_file.write_text(json.dumps(doc))
    digest_before = {p: (tmp_path / "out" / p).read_bytes() for p in before if "memberships" in p}
    _fails(capsys, ["score", "--config", str(cfg), "--snapshot", DATE], "v0001", "failed its checksum")
    assert {p: (tmp_path / "out" / p).read_bytes() for p in before if "memberships" in p} == digest_before
    model_file.write_text("{not json")
    _fails(capsys, ["score", "--config", str(cfg), "--snapshot", DATE], "not valid JSON")


@pytest.mark.parametrize("id_kind", ["int", "str"])
def test_duplicate_ids_are_found_bucket_by_bucket_and_named_with_their_files(
    tmp_path, capsys, monkeypatch, id_kind
):
    """Ids are never gathered into one task: each hash bucket is checked on its own (here 50
    rows per bucket, so ~16 buckets), and the error still names an example id and its files."""
    from gmm_dask.app import pipeline

    monkeypatch.setattr(pipeline, "ID_BUCKET_ROWS", 50)
    df = _frame()
    if id_kind == "str":
        df["user_id"] = [f"u{i:05d}" for i in range(len(df))]
    cfg = _write(tmp_path, df)
    other = _frame(seed=2).iloc[390:]
    if id_kind == "str":
        other["user_id"] = [f"u{i:05d}" for i in range(390, 400)]
    other.iloc[3:].to_parquet(tmp_path / "data" / f"dt={DATE}" / "part-1.parquet", index=False)
    err = _fails(capsys, ["train", "--config", str(cfg)], "7 duplicate value(s) in id column 'user_id'")
    assert "part-0.parquet row" in err
    assert "part-1.parquet row" in err
    assert _written(tmp_path) == []
    # without the duplicates the same many-bucket check passes
    (tmp_path / "data" / f"dt={DATE}" / "part-1.parquet").unlink()
    assert main(["train", "--config", str(cfg)]) == 0
