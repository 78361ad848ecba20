"""One segment identity across runs: alignment that follows the users, births and deaths,
publishing on purpose (candidates, promote) and one writer per published date."""

from __future__ import annotations

import itertools
import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from gmm_dask.app import jobs
from gmm_dask.app.config import FeatureSpec
from gmm_dask.app.params import BackfillParams, PromoteParams, SegmentParams, SelectKParams, TrainParams
from gmm_dask.demo import DemoSpec, read_truth, write_demo_dataset
from gmm_dask.mixture.gaussian import compute_precision_cholesky
from gmm_dask.segmentation.align import match
from gmm_dask.segmentation.features import FeaturePlan
from gmm_dask.segmentation.fit_record import FitRecord
from gmm_dask.segmentation.model import SegmentationModel

from .pipeline_helpers import make_config, read_partition, tree_digest

REPO = Path(__file__).resolve().parents[1]
# a promotion: most users' activity jumps on day 3 and 4, then returns
SPEC = DemoSpec(n_users=5000, n_snapshots=6, seed=17, block_users=2500, promotion_start=3, promotion_days=2)


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    root = tmp_path_factory.mktemp("identity")
    write_demo_dataset(root, SPEC)
    return root


def _model(means, weights, scale=1.0):
    k, d = means.shape
    cov = np.stack([np.eye(d) * scale**2] * k)
    plan = FeaturePlan(
        tuple(FeatureSpec(name=f"f{i}") for i in range(d)), "error", np.zeros(d), np.ones(d), np.zeros(d)
    )
    return SegmentationModel(
        plan, "full", weights, means, cov, compute_precision_cholesky(cov, "full"),
        [f"n{i}" for i in range(k)], "user_id", version="v0001",
    )  # fmt: skip


def test_a_tiny_collapsed_component_can_never_capture_the_broad_one():
    """The case seen on real data: the broad old segment (75 % of users) next to a re-seeded
    one-customer component whose Gaussian is near-singular. By distance alone the tiny one wins
    the broad id; by shared users the broad one keeps it and the tiny one is a birth."""
    old = _model(np.array([[0.0, 0.0], [5.0, 5.0]]), np.array([0.75, 0.25]))
    tiny = _model(np.array([[0.0, 0.01], [5.0, 5.0], [0.5, 0.5]]), np.array([0.0001, 0.2499, 0.75]))
    tiny = SegmentationModel(
        tiny.plan, "full", tiny.weights, tiny.means,
        np.stack([np.eye(2) * 1e-6, np.eye(2), np.eye(2) * 4.0]),
        compute_precision_cholesky(np.stack([np.eye(2) * 1e-6, np.eye(2), np.eye(2) * 4.0]), "full"),
        ["a", "b", "c"], "user_id",
    )  # fmt: skip
    # users shared: the broad old segment's 7,500 users are (almost all) in new component 2
    shared = np.array([[1.0, 2.0, 7497.0], [0.0, 2500.0, 0.0]])
    al = match(old, tiny, shared)
    assert al.ids[2] == 0  # the broad component keeps segment 0
    assert al.ids[1] == 1
    assert al.births == [0]
    assert al.ids[0] == 2  # a fresh id, never one in use
    assert al.deaths == []


def test_deaths_retire_ids_and_births_never_reuse_them():
    old = _model(np.array([[0.0], [5.0], [10.0]]), np.array([0.4, 0.3, 0.3]))
    old = SegmentationModel(
        **{**old.__dict__, "segment_ids": [0, 1, 4], "metadata": FitRecord(retired_ids=[2, 3])}
    )
    new = _model(np.array([[0.0], [5.0], [20.0]]), np.array([0.5, 0.3, 0.2]))
    shared = np.array([[400.0, 0.0, 0.0], [0.0, 300.0, 0.0], [100.0, 0.0, 0.0]])  # old 4 merged into new 0
    al = match(old, new, shared)
    assert al.ids[:2] == [0, 1]
    assert al.deaths == [4]
    assert al.merges == {4: 0}
    assert al.ids[2] == 5  # not 2, 3 or 4: retired ids are never reused


def _unchanged_keep_ids(root: Path, data: Path, dates, out_root: Path) -> dict:
    shares = {}
    for a, b in itertools.pairwise(dates):
        truth = read_truth(data, b)
        ids = sorted(truth.user_id[~truth.changed])
        sa = read_partition(out_root, "memberships", a).to_pandas().set_index("user_id").segment
        sb = read_partition(out_root, "memberships", b).to_pandas().set_index("user_id").segment
        shares[(a, b)] = float((sa.loc[ids].to_numpy() == sb.loc[ids].to_numpy()).mean())
    return shares


def test_refit_backfill_through_a_promotion_keeps_ids_for_unchanged_users(tmp_path, data):
    cfg = str(make_config(tmp_path, data))
    res = jobs.backfill(
        BackfillParams(config=cfg, start=SPEC.dates[0], end=SPEC.dates[-1], mode="refit", publish=True)
    )
    assert not res.failed
    shares = _unchanged_keep_ids(tmp_path / "out", data, SPEC.dates, tmp_path / "out")
    print(shares)
    assert min(shares.values()) >= 0.99, shares  # every consecutive pair, the promotion's included


def test_consecutive_daily_segment_runs_keep_ids_and_record_the_alignment(tmp_path, data):
    cfg = str(make_config(tmp_path, data, model={"n_components": 5, "random_state": 0, "refit_min_gain": 0}))
    first = jobs.segment(SegmentParams(config=cfg, snapshot=SPEC.dates[0]), report=False)
    second = jobs.segment(SegmentParams(config=cfg, snapshot=SPEC.dates[1]), report=False)
    shares = _unchanged_keep_ids(tmp_path / "out", data, SPEC.dates[:2], tmp_path / "out")
    assert min(shares.values()) >= 0.99, shares
    meta = second.model.metadata
    assert meta.aligned_to == first.model_version
    assert set(meta.alignment or {}) >= {"mapping", "births", "deaths", "splits", "merges"}
    # names travel with ids
    n1 = dict(zip(first.segments.segment, first.segments.name, strict=True))
    n2 = dict(zip(second.segments.segment, second.segments.name, strict=True))
    assert all(n2[i] == n1[i] for i in set(n1) & set(n2))


def test_select_k_and_override_runs_leave_the_published_state_byte_identical_and_promote_publishes(
    tmp_path, data
):
    cfg = str(make_config(tmp_path, data))
    d = SPEC.dates[-1]
    jobs.train(TrainParams(config=cfg, snapshot=d))
    out = tmp_path / "out"
    published = {t: tree_digest(out / t / f"dt={d}") for t in ("memberships", "segments", "overlaps")}
    alias = (out / "registry" / "aliases" / "latest.json").read_bytes()
    sel = jobs.select_k(SelectKParams(config=cfg, k_min=3, k_max=5, snapshot=d), report=False)
    over = jobs.train(
        TrainParams.model_validate({"config": cfg, "snapshot": d, "model": {"n_components": 4}})
    )
    assert not sel.run.published
    assert not over.published
    assert {t: tree_digest(out / t / f"dt={d}") for t in published} == published
    assert (out / "registry" / "aliases" / "latest.json").read_bytes() == alias
    cand = out / "_candidates" / over.run_id
    assert read_partition(cand, "memberships", d).num_rows == SPEC.n_users
    promoted = jobs.promote(PromoteParams(config=cfg, run_id=over.run_id))
    assert promoted.latest is not None
    assert promoted.latest.moved
    assert promoted.latest.version == over.model_version
    assert tree_digest(out / "memberships" / f"dt={d}") == tree_digest(cand / "memberships" / f"dt={d}")
    assert set(read_partition(out, "memberships", d).column("model_version").to_pylist()) == {
        over.model_version
    }
    assert f'"{over.model_version}"' in (out / "registry" / "aliases" / "latest.json").read_text()
    assert not any((out / "_staging").rglob("*.parquet"))


@pytest.mark.slow
def test_two_runs_publishing_the_same_date_at_once_exactly_one_publishes(tmp_path, data):
    cfg = str(make_config(tmp_path, data))
    d = SPEC.dates[0]
    env = {**os.environ, "GMM_DASK_FAULT": "before_commit:8"}
    first = subprocess.Popen(
        [sys.executable, "-m", "gmm_dask_cli", "train", "--config", cfg, "--snapshot", d],
        cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
    )  # fmt: skip
    try:
        deadline = time.time() + 120
        for line in first.stdout:  # the first run holds the date's lock, mid-commit
            if "GMM_DASK_FAULT reached before_commit" in line:
                break
            assert time.time() < deadline
        second = subprocess.run(
            [sys.executable, "-m", "gmm_dask_cli", "train", "--config", cfg, "--snapshot", d],
            cwd=REPO, capture_output=True, text=True, timeout=120,
        )  # fmt: skip
        assert second.returncode == 75, second.stderr
        assert f"Snapshot {d} is being published by another run" in second.stderr
        assert first.wait(timeout=120) == 0
    finally:
        if first.poll() is None:
            first.kill()
        first.stdout.close()
    mem = read_partition(tmp_path / "out", "memberships", d)
    assert mem.num_rows == SPEC.n_users
    assert len(set(mem.column("model_version").to_pylist())) == 1  # whole, and from one model
    assert not (tmp_path / "out" / "_locks" / f"dt={d}.lock").exists()


def test_latest_never_goes_back_and_a_new_feature_set_starts_a_new_segmentation(tmp_path, data):
    import json

    import yaml

    cfg = make_config(tmp_path, data)
    late = jobs.train(TrainParams(config=str(cfg), snapshot=SPEC.dates[2]))
    early = jobs.train(TrainParams(config=str(cfg), snapshot=SPEC.dates[0]))  # a re-run of an old date
    latest = json.loads((tmp_path / "out" / "registry" / "aliases" / "latest.json").read_text())["version"]
    assert latest == late.model_version != early.model_version
    # the config drops a feature: the published model cannot be continued or aligned to, and the
    # next publishing run starts a new segmentation instead of failing
    doc = yaml.safe_load(cfg.read_text())
    doc["input"]["features"] = doc["input"]["features"][:-1]
    cfg.write_text(yaml.safe_dump(doc))
    new = jobs.segment(SegmentParams(config=str(cfg), snapshot=SPEC.dates[3]), report=False)
    assert new.model.metadata.aligned_to is None
    assert new.model.feature_names == [f["name"] for f in doc["input"]["features"]]


def test_a_refit_backfill_with_a_bad_date_writes_the_others_and_names_it(tmp_path, data):
    import shutil

    import pyarrow as pa
    import pyarrow.parquet as pq

    from gmm_dask.errors import BackfillError

    root = tmp_path / "data"
    shutil.copytree(data, root)
    bad = SPEC.dates[2]
    part = next((root / "snapshots" / f"dt={bad}").glob("*.parquet"))
    t = pq.read_table(part)
    ids = t.column("user_id").to_numpy().copy()
    ids[5] = ids[4]
    pq.write_table(t.set_column(0, "user_id", pa.array(ids)), part)
    cfg = str(make_config(tmp_path, root))
    with pytest.raises(BackfillError, match=f"{bad}: Snapshot {bad}: 1 duplicate value") as err:
        jobs.backfill(
            BackfillParams(config=cfg, start=SPEC.dates[0], end=SPEC.dates[3], mode="refit", publish=True)
        )
    assert list(err.value.result.failed) == [bad]
    for d in SPEC.dates[:4]:
        exists = (tmp_path / "out" / "memberships" / f"dt={d}").exists()
        assert exists == (d != bad)
