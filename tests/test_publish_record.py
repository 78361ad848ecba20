"""One model per date for every reader: a run killed between two of a date's table commits
leaves each reader the previous publication whole, and the next run of the date repairs it."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from gmm_dask.storage.io import TableStore
from gmm_dask_cli import main

from .pipeline_helpers import SMALL, demo_data, kill_at_fault, make_config

DATE = SMALL.dates[-1]
TABLES = ("segments", "overlaps", "memberships")  # in the order a run commits them
VERSION_KEY = "gmm_dask.model_version"


@pytest.fixture(scope="module")
def data_root(tmp_path_factory):
    return demo_data(tmp_path_factory.mktemp("demo"))


def versions(store: TableStore) -> dict[str, set[str]]:
    """Each table's model versions for DATE, as gmm-dask's readers see them (every row's)."""
    return {
        t: set(store.read(t, DATE, ["model_version"]).column("model_version").to_pylist()) for t in TABLES
    }


def kill_at(cfg: Path, point: str) -> None:
    """Re-train DATE (a new model version) and kill -9 the run once it reaches ``point``."""
    kill_at_fault(["train", "--force", "--config", str(cfg), "--snapshot", DATE], point)


def delta_versions_from_record(root: Path) -> dict[str, set[str]]:
    """What a reader outside gmm-dask sees following the README: each table at the Delta version
    the date's record names."""
    from deltalake import DeltaTable

    record = json.loads((root / "_published" / f"dt={DATE}.json").read_text())
    out = {}
    for t in TABLES:
        dt = DeltaTable(str(root / t), version=record["tables"][t]["version"])
        rows = dt.to_pyarrow_table(filters=[("dt", "=", DATE)], columns=["model_version"])
        out[t] = set(rows.column("model_version").to_pylist())
    return out


@pytest.mark.slow
@pytest.mark.parametrize("table_format", ["parquet", "delta"])
def test_a_run_killed_at_any_commit_boundary_leaves_the_date_whole_and_the_next_run_repairs_it(
    data_root, tmp_path, table_format
):
    cfg = make_config(tmp_path, data_root, output={"root": str(tmp_path / "out"), "format": table_format})
    root = tmp_path / "out"
    store = TableStore(str(root), format=table_format)
    assert main(["train", "--config", str(cfg), "--snapshot", DATE]) == 0
    first = versions(store)
    assert len(set.union(*first.values())) == 1  # one model across the date's tables
    record = json.loads((root / "_published" / f"dt={DATE}.json").read_text())
    assert sorted(record["tables"]) == sorted(TABLES)
    assert {record["model_version"]} == set.union(*first.values())

    for point in [f"committed_{t}" for t in TABLES]:
        before = versions(store)
        kill_at(cfg, point)
        assert (root / "_published" / f"dt={DATE}.pending.json").exists()  # torn on disk...
        assert versions(store) == before, point  # ...but read whole, as it was
        assert store.pending(DATE)
        assert store.dates("memberships")[-1] == DATE
        if table_format == "delta":
            assert delta_versions_from_record(root) == before, point
            # a vacuum could delete the versions readers now read: refused (any retention)
            assert main(["vacuum", "--config", str(cfg), "--retention-hours", "24"]) == 75
            assert delta_versions_from_record(root) == before
        lock = root / "_locks" / f"dt={DATE}.lock"
        assert lock.exists()  # the dead run's lock: taken over by the next run on this host

        # the next run of the date puts the previous tables back, then publishes whole
        assert main(["train", "--force", "--config", str(cfg), "--snapshot", DATE]) == 0
        after = versions(store)
        assert len(set.union(*after.values())) == 1, (point, after)
        assert set.union(*after.values()) != set.union(*before.values())  # the new model
        assert not store.pending(DATE)
        assert not (root / "_published" / f"dt={DATE}.pending.json").exists()
        assert not list((root / "_published").glob("_superseded/*/*")), "superseded partitions left behind"
        record = json.loads((root / "_published" / f"dt={DATE}.json").read_text())
        assert {record["model_version"]} == set.union(*after.values())
        if table_format == "delta":
            assert delta_versions_from_record(root) == after
        ids = store.read("memberships", DATE, ["user_id"]).column("user_id").to_numpy()
        assert len(ids) == len(set(ids.tolist())) == SMALL.n_users  # no row lost or duplicated
