"""A run says "published" only where its tables and ``latest`` moved: re-running the daily job for
an older date publishes that date's tables but leaves ``latest`` on the later snapshot's model,
and the summary, the report and the command line say so."""

from __future__ import annotations

import re

import pytest

from gmm_dask.app import jobs
from gmm_dask.app.jobs.results import Latest
from gmm_dask.app.params import SegmentParams, TrainParams
from gmm_dask.demo import DemoSpec
from gmm_dask.report.html import html_report
from gmm_dask.report.markdown import markdown_summary
from gmm_dask.storage.registry import ModelRegistry
from gmm_dask_cli import main

from .pipeline_helpers import demo_data, make_config

SPEC = DemoSpec(n_users=4000, n_snapshots=2, seed=5, block_users=2000, row_group_rows=1000)
OLD, NEW = SPEC.dates
# refit_min_gain 0: the daily job refits every date (the old date gets a model of its own)
MODEL = {"n_components": 4, "n_init": 1, "random_state": 0, "tol": 1e-4, "refit_min_gain": 0}


@pytest.fixture(scope="module")
def data_root(tmp_path_factory):
    return demo_data(tmp_path_factory.mktemp("demo"), SPEC)


def _latest(tmp_path) -> str:
    return ModelRegistry(str(tmp_path / "out" / "registry")).resolve("latest")


def test_rerunning_an_older_date_says_latest_stayed_on_the_later_model(tmp_path, data_root):
    path = str(make_config(tmp_path, data_root, model=MODEL))
    new = jobs.train(TrainParams(config=path, snapshot=NEW))
    old = jobs.segment(SegmentParams(config=path, snapshot=OLD), report=False)
    assert old.trained
    assert old.model_version != new.model_version
    assert _latest(tmp_path) == new.model_version  # the premise: latest never goes back in time
    assert old.latest == Latest(new.model_version, NEW, moved=False)
    assert old.summary()["latest"] == {"version": new.model_version, "snapshot": NEW, "moved": False}

    md = markdown_summary(old.report)
    assert (
        f"Model **{old.model_version}**, tables published for {OLD}; `latest` stays "
        f"{new.model_version} (the model of a later snapshot, {NEW})." in md
    )
    assert ", published" not in md
    assert "`latest` →" not in md
    page = html_report(old.report)
    meta = re.search(r"<p class=meta>(.*?)</p>", page, flags=re.S).group(1)
    assert '<span class="badge pub">tables published for' in meta
    assert f"<code>latest</code> stays {new.model_version} (the model of a later snapshot, {NEW})" in meta
    assert ">published<" not in meta


def test_a_fit_of_the_newest_date_says_published_and_latest_moved(tmp_path, data_root):
    path = str(make_config(tmp_path, data_root, model=MODEL))
    first = jobs.train(TrainParams(config=path, snapshot=OLD))
    assert first.latest == Latest(first.model_version, OLD, moved=True)
    second = jobs.segment(SegmentParams(config=path, snapshot=NEW), report=False)
    assert second.trained
    assert _latest(tmp_path) == second.model_version
    assert second.latest == Latest(second.model_version, NEW, moved=True)
    md = markdown_summary(second.report)
    assert f"Model **{second.model_version}**, published; `latest` → {second.model_version}." in md
    assert "tables published for" not in md
    meta = re.search(r"<p class=meta>(.*?)</p>", html_report(second.report), flags=re.S).group(1)
    assert '<span class="badge pub">published</span>' in meta
    assert f"<code>latest</code> → {second.model_version}" in meta


def test_a_candidate_says_neither(tmp_path, data_root):
    path = str(make_config(tmp_path, data_root, model=MODEL))
    cand = jobs.train(TrainParams(config=path, snapshot=NEW, publish=False))
    assert cand.latest is None
    assert "latest" not in cand.summary()
    md = markdown_summary(cand.report)
    assert f"Model **{cand.model_version}**, a candidate (not published; run {cand.run_id})." in md
    assert "`latest`" not in md


def test_the_cli_says_what_became_of_latest(tmp_path, data_root, capsys):
    path = str(make_config(tmp_path, data_root, model=MODEL))
    assert main(["train", "--config", path, "--snapshot", NEW]) == 0
    out = capsys.readouterr().out
    assert "Model v0001, published; `latest` → v0001." in out
    assert main(["segment", "--config", path, "--snapshot", OLD]) == 0
    out = capsys.readouterr().out
    assert (
        f"Model v0002, tables published for {OLD}; `latest` stays v0001 (the model of a later "
        f"snapshot, {NEW})." in out
    )
    assert "`latest` →" not in out
    assert ", published" not in out
    assert _latest(tmp_path) == "v0001"
