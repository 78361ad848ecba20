"""The warehouse job: CLI end to end, table invariants, exact re-scoring, atomic and idempotent writes."""

from __future__ import annotations

from pathlib import Path

import duckdb
import numpy as np
import pandas as pd
import pyarrow.parquet as pq
import pytest

from gmm_dask.app import jobs, pipeline
from gmm_dask.app.config import load_config
from gmm_dask.app.params import ScoreParams, TrainParams
from gmm_dask.demo import read_truth
from gmm_dask_cli import main

from .pipeline_helpers import (
    SMALL,
    demo_data,
    gamma_matrix,
    kill_at_fault,
    make_config,
    read_partition,
    tree_digest,
)

DATES = SMALL.dates


@pytest.fixture(scope="module")
def data_root(tmp_path_factory):
    return demo_data(tmp_path_factory.mktemp("demo"))


@pytest.fixture(scope="module")
def trained(tmp_path_factory, data_root):
    """One training run on the last snapshot (threaded scheduler), shared by the invariant tests."""
    tmp = tmp_path_factory.mktemp("trained")
    path = make_config(tmp, data_root)
    res = jobs.train(TrainParams(config=str(path), snapshot=DATES[-1]))
    return load_config(path), res, str(path)


def test_cli_train_then_score_end_to_end(tmp_path, data_root, capsys):
    cfg_path = make_config(tmp_path, data_root)
    assert main(["train", "--config", str(cfg_path), "--snapshot", DATES[0]]) == 0
    out = capsys.readouterr().out
    assert "model v0001 trained and registered" in out
    assert "Segments (feature means in original units)" in out
    assert main(["score", "--config", str(cfg_path), "--snapshot", DATES[1], "--model-version", "v0001"]) == 0
    root = tmp_path / "out"
    for date in DATES[:2]:
        mem = read_partition(root, "memberships", date)
        truth = read_truth(data_root, date)
        ids = mem.column("user_id").to_numpy()
        assert len(ids) == len(np.unique(ids)) == len(truth)
        assert set(ids) == set(truth["user_id"])
        assert (
            mem.schema.field("user_id").type
            == pq.read_schema(next((data_root / "snapshots" / f"dt={date}").glob("*.parquet")))
            .field("user_id")
            .type
        )
    assert sorted(p.name for p in (root / "registry" / "versions").iterdir()) == ["v0001"]


def test_written_table_invariants(trained):
    cfg, res, _ = trained
    root = Path(cfg.output.root)
    mem = read_partition(root, "memberships", res.snapshot)
    g = gamma_matrix(mem)
    k = cfg.model.n_components
    assert g.shape == (mem.num_rows, k)
    np.testing.assert_allclose(g.sum(axis=1), 1.0, atol=1e-9)
    np.testing.assert_array_equal(mem.column("segment").to_numpy(), g.argmax(axis=1))
    np.testing.assert_allclose(mem.column("max_gamma").to_numpy(), g.max(axis=1))
    with np.errstate(divide="ignore", invalid="ignore"):
        ent = -np.where(g > 0, g * np.log2(g), 0.0).sum(axis=1)
    np.testing.assert_allclose(mem.column("entropy_bits").to_numpy(), ent, atol=1e-12)
    norm = mem.column("entropy_norm").to_numpy()
    np.testing.assert_allclose(norm, ent / np.log2(k), atol=1e-12)
    bands = mem.column("entropy_band").to_numpy(zero_copy_only=False)
    b = cfg.entropy_bands
    expected = np.where(norm < b.low_max, "low", np.where(norm < b.moderate_max, "moderate", "high"))
    np.testing.assert_array_equal(bands, expected)
    assert set(mem.column("model_version").to_pylist()) == {res.model_version}
    meta = mem.schema.metadata
    assert meta[b"gmm_dask.model_version"] == res.model_version.encode()
    assert meta[b"gmm_dask.schema_version"] == b"1"
    seg = read_partition(root, "segments", res.snapshot).to_pandas()
    assert seg["size"].sum() == mem.num_rows
    np.testing.assert_allclose(seg["weight"].sum(), 1.0, atol=1e-12)
    assert np.bincount(mem.column("segment").to_numpy(), minlength=k).tolist() == seg["size"].tolist()
    ov = read_partition(root, "overlaps", res.snapshot).to_pandas()
    assert len(ov) == k * (k - 1) // 2
    # an overlap count is recomputable from γ
    a, bb = int(ov.iloc[0].segment_a), int(ov.iloc[0].segment_b)
    assert ov.iloc[0].n_users == int(((g[:, a] >= 0.25) & (g[:, bb] >= 0.25)).sum())


def test_scoring_the_saved_model_reproduces_the_fit_exactly(trained, tmp_path):
    cfg, res, path = trained
    root = Path(cfg.output.root)
    fit_gamma = read_partition(root, "memberships", res.snapshot)
    again = jobs.score(ScoreParams(config=path, snapshot=res.snapshot, model_version=res.model_version))
    assert again.model_version == res.model_version
    rescored = read_partition(root, "memberships", res.snapshot)
    assert rescored.column("user_id").equals(fit_gamma.column("user_id"))
    np.testing.assert_array_equal(gamma_matrix(rescored), gamma_matrix(fit_gamma))


def test_memberships_on_the_realistic_demo_are_clear_for_archetypes_and_softer_for_hybrids(
    trained, data_root
):
    """On counts and amounts with mostly exact zeros, single-archetype users get clear
    memberships and hybrids measurably softer ones; the hard segments follow the archetypes far
    above chance. (The calibration figures against every target of issue #9 are measured by
    ``python -m benchmarks.calibration``; the ones a Gaussian mixture cannot reach on this data
    are explained in benchmarks/CALIBRATION.md.)"""
    from scipy.stats import mannwhitneyu
    from sklearn.metrics import adjusted_rand_score

    cfg, res, _ = trained
    mem = read_partition(Path(cfg.output.root), "memberships", res.snapshot).to_pandas()
    merged = read_truth(data_root, res.snapshot).merge(mem, on="user_id")
    stable = merged[merged.kind == "stable"]
    hybrid = merged[merged.kind == "hybrid"]
    assert (stable.entropy_band == "low").mean() >= 0.9
    # hybrids are softer: on average and across the distribution (one-sided rank test); the
    # snapshot also holds drifters part-way between two archetypes, which widen the components
    assert hybrid.entropy_bits.mean() > 1.5 * stable.entropy_bits.mean()
    assert mannwhitneyu(hybrid.entropy_bits, stable.entropy_bits, alternative="greater").pvalue < 1e-6
    assert adjusted_rand_score(stable.archetype, stable.segment) > 0.4


@pytest.fixture(scope="module")
def trained_gaussian(tmp_path_factory, data_root):
    """The same training run with the Gaussian family (the calibration of issue #9 is its)."""
    tmp = tmp_path_factory.mktemp("trained_gaussian")
    path = make_config(tmp, data_root, model={"family": "gaussian", "n_components": 5, "random_state": 0})
    res = jobs.train(TrainParams(config=str(path), snapshot=DATES[-1]))
    return load_config(path), res, str(path)


def test_calibration_against_the_generators_truth_and_the_ceilings_that_bound_it(trained_gaussian, data_root):
    """Issue #9's calibration figures against the generator's ground truth (at 30,000 users they
    are in benchmarks/CALIBRATION.md). Single-archetype users are clear. The targets a Gaussian
    mixture misses are out of its reach for reasons checked here: Gaussian components fitted to
    the true archetypes (supervised, on the job's own model inputs) classify them below ARI 0.9
    while the generator's own posterior is above it, and that archetype mixture — calibrated —
    has a lower likelihood than the fit, so maximum likelihood does not choose it. What the fit
    does reach is held as a floor."""
    from benchmarks.calibration import evaluate
    from gmm_dask import load_model

    cfg, res, _ = trained_gaussian
    mem = read_partition(Path(cfg.output.root), "memberships", res.snapshot).to_pandas()
    model = load_model(cfg.output.registry_path, res.model_version)
    f = evaluate(model, mem, data_root, res.snapshot, SMALL)
    assert f["pure_low_band"] >= 0.9
    assert f["archetype_gaussians_ari_pure"] < 0.9 <= f["bayes_ari_pure"]
    assert f["archetype_gaussians_ece"] <= 0.05
    assert f["fit_mean_loglik"] > f["archetype_gaussians_mean_loglik"] + 0.1
    assert f["true_posterior_hybrid_max_below_0_86"] < 0.7
    assert f["ari_pure"] >= 0.4
    assert f["ece_vs_true_posterior"] <= 0.25
    # the reliability diagram covers every single-archetype user
    assert sum(d["n"] for d in f["diagram"]) == f["pure_users"]


def test_rerun_replaces_partition_with_exactly_one_copy(trained):
    cfg, res, path = trained
    root = Path(cfg.output.root)
    for _ in range(2):
        jobs.score(ScoreParams(config=path, snapshot=res.snapshot, model_version=res.model_version))
    mem = read_partition(root, "memberships", res.snapshot)
    ids = mem.column("user_id").to_numpy()
    assert len(ids) == len(np.unique(ids)) == SMALL.n_users
    assert not any((root / "_staging" / "memberships").glob("*/*"))


def test_tables_read_back_with_pandas_and_duckdb(trained):
    cfg, res, _ = trained
    root = Path(cfg.output.root)
    df = pd.read_parquet(root / "memberships")
    assert len(df) == SMALL.n_users
    assert str(df["dt"].iloc[0]) == res.snapshot
    con = duckdb.connect()
    rows = con.execute(
        f"SELECT dt, entropy_band, count(*) FROM read_parquet('{root}/memberships/*/*.parquet', hive_partitioning=true) "
        "GROUP BY ALL ORDER BY ALL"
    ).fetchall()
    assert sum(r[2] for r in rows) == SMALL.n_users
    top = con.execute(
        f"SELECT name, size FROM read_parquet('{root}/segments/*/*.parquet', hive_partitioning=true) ORDER BY size DESC"
    ).fetchall()
    assert len(top) == cfg.model.n_components


@pytest.mark.slow
def test_killing_the_writer_mid_write_leaves_previous_partition_intact(tmp_path, data_root):
    cfg_path = make_config(tmp_path, data_root)
    assert main(["train", "--config", str(cfg_path), "--snapshot", DATES[0]]) == 0
    root = tmp_path / "out"
    before = {t: tree_digest(root / t / f"dt={DATES[0]}") for t in ("memberships", "segments", "overlaps")}

    def staged() -> None:
        assert list((root / "_staging" / "memberships").rglob("*.parquet")), (
            "the new partition is fully staged"
        )

    kill_at_fault(["score", "--config", str(cfg_path), "--snapshot", DATES[0]], "before_commit", staged)
    after = {t: tree_digest(root / t / f"dt={DATES[0]}") for t in ("memberships", "segments", "overlaps")}
    assert after == before
    # readers of the table see only the committed partition
    assert len(pd.read_parquet(root / "memberships")) == SMALL.n_users
    assert main(["score", "--config", str(cfg_path), "--snapshot", DATES[0]]) == 0
    ids = read_partition(root, "memberships", DATES[0]).column("user_id").to_numpy()
    assert len(ids) == len(np.unique(ids)) == SMALL.n_users


def test_streaming_fit_rereads_parquet_every_pass_and_equals_the_persisted_fit(
    trained, tmp_path, monkeypatch
):
    """model.persist: false re-reads the snapshot in every pass (counted) and gives the same
    model as reading it once and holding it."""
    cfg, res, _ = trained
    reads = []
    original = pipeline.fit_piece_arrays

    def counting(piece, *args, **kwargs):
        if args[3] is not None:  # a read of the fit's (dequantised) inputs, not the size check's
            reads.append(piece.index)
        return original(piece, *args, **kwargs)

    monkeypatch.setattr(pipeline, "fit_piece_arrays", counting)
    models = {}
    for persist in (True, False):
        c = cfg.model_copy(update={"model": cfg.model.model_copy(update={"persist": persist})})
        snap = pipeline.open_job_snapshot(c, res.snapshot)
        prof = pipeline.profile_snapshot(c, snap)
        reads.clear()
        models[persist] = pipeline.fit_model(c, snap, prof)  # Dask's threaded scheduler, no cluster
        n_pieces, n_iter = len(snap.pieces), models[persist].metadata.n_iter
        if persist:
            assert sorted(reads) == list(range(n_pieces)), "a persisted fit reads each piece once"
        else:
            # every EM iteration, the initialisation passes and the final pass re-read every piece
            assert len(reads) >= (n_iter + 1) * n_pieces, (len(reads), n_iter, n_pieces)
    np.testing.assert_allclose(models[False].means, models[True].means, rtol=1e-10, atol=1e-12)
    np.testing.assert_allclose(models[False].weights, models[True].weights, rtol=1e-10)


def test_public_scoring_api_applies_the_stored_transforms_and_matches_the_tables(trained, data_root):
    """load_model + model.score(raw DataFrame) gives exactly the memberships the job wrote; raw
    columns are found by name, never by position, and a mismatch is refused."""
    from gmm_dask import load_model
    from gmm_dask.errors import DataError

    cfg, res, _ = trained
    model = load_model(cfg.output.registry_path, res.model_version)
    raw = pd.read_parquet(data_root / "snapshots" / f"dt={res.snapshot}")
    shuffled = raw[["user_id", *reversed(model.feature_names)]].sample(frac=1.0, random_state=0)
    scored = model.score(shuffled).set_index("user_id").sort_index()
    mem = (
        read_partition(Path(cfg.output.root), "memberships", res.snapshot)
        .to_pandas()
        .set_index("user_id")
        .sort_index()
    )
    assert scored.index.equals(mem.index)
    np.testing.assert_array_equal(scored["segment"].to_numpy(), mem["segment"].to_numpy())
    np.testing.assert_allclose(np.stack(scored["gamma"]), np.stack(mem["gamma"]), rtol=0, atol=1e-12)
    assert (scored["entropy_band"] == mem["entropy_band"]).all()
    with pytest.raises(DataError, match=r"no column\(s\) \['spend_90d'\]"):
        model.score(raw.rename(columns={"spend_90d": "spend"}))
    with pytest.raises(DataError, match="pandas DataFrame"):
        model.score(raw[model.feature_names].to_numpy())


def test_a_backfill_with_nothing_to_do_starts_no_cluster(trained, monkeypatch):
    """Dates already written with the model are skipped, and with nothing left no Dask cluster
    is started."""
    from gmm_dask.app.params import BackfillParams

    _, res, path = trained

    def no_cluster(cfg):
        raise AssertionError("a cluster was started")

    monkeypatch.setattr(pipeline, "cluster", no_cluster)
    out = jobs.backfill(BackfillParams(config=path, start=res.snapshot, end=res.snapshot, publish=True))
    assert [r["skipped"] for r in out.dates] == [True]
