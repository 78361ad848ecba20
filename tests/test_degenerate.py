"""What the degenerate-component report says: atoms printed as users read them, warnings that
name segments as the published tables do."""

from __future__ import annotations

import logging
import math
import re

from gmm_dask.app import jobs
from gmm_dask.app.fitting import Degenerate, atom_value
from gmm_dask.app.params import TrainParams
from gmm_dask.demo import DemoSpec, write_demo_dataset

from .pipeline_helpers import make_config, read_partition

FEATURES = ["sessions_30d", "purchases_90d"]


def test_an_atom_at_zero_reads_zero_not_minus_zero():
    # a component whose mean sits just under half a step above 0 rounds onto the grid from below
    assert math.copysign(1.0, atom_value(0.4, 1.0)) == 1.0
    assert atom_value(0.4, 1.0) == 0.0
    assert atom_value(2.6, 1.0) == 2.0
    why = Degenerate({}, {0: [1]}, {0: [-0.0]}).reason(0, FEATURES, 0.01)
    assert why == "atom at purchases_90d=0 (variance at the resolution floor)"


def test_degenerate_warnings_name_segments_as_the_published_tables_do(tmp_path, caplog):
    # the second date is a promotion day: its fit names components differently, and its alignment
    # to the first date's published model renumbers and renames them (on this data 'no active
    # days, low sessions' becomes a published name): a warning names the segment its table shows
    spec = DemoSpec(
        n_users=1500, n_snapshots=2, seed=5, block_users=1500, promotion_start=1, promotion_days=1
    )
    write_demo_dataset(tmp_path / "data", spec)
    model = {
        "family": "gaussian",
        "n_components": 8,
        "random_state": 0,
        "max_iter": 60,
        "degenerate": {"min_share": 0.05, "small": "warn", "atoms": "warn"},
    }
    cfg = str(make_config(tmp_path, tmp_path / "data", model=model))
    jobs.train(TrainParams(config=cfg, snapshot=spec.dates[0]))
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="gmm_dask"):
        res = jobs.train(TrainParams(config=cfg, snapshot=spec.dates[1]))
    warned = [r.getMessage() for r in caplog.records if "is degenerate" in r.getMessage()]
    assert warned  # this data has small components and atoms at K = 8
    seg = read_partition(tmp_path / "out", "segments", res.snapshot).to_pandas()
    named = {re.search(r"'(.+)' is degenerate", w).group(1) for w in warned}
    assert named <= set(seg["name"]), (named - set(seg["name"]), list(seg["name"]))
    assert seg["degenerate"].notna().sum() == len(warned)
    for row in seg[seg["degenerate"].notna()].itertuples():
        line = f"Snapshot {res.snapshot}: segment {row.segment} {row.name!r} is degenerate: {row.degenerate}"
        assert line in warned, (line, warned)
