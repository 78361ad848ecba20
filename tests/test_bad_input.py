"""Hostile inputs end in one clear GMMDaskInputError that names the key, file, column or row.

Each test calls the library's up-front checks directly (no Dask cluster): ``load_config``,
``check_cluster_config``, ``check_output_location``, ``open_snapshot`` and the profile pass run
in-process over the snapshot's pieces.
"""

from __future__ import annotations

import functools
import textwrap

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from gmm_dask.app.cluster import check_cluster_config, dask_client
from gmm_dask.app.config import (
    ClassClusterConfig,
    LocalClusterConfig,
    check_output_location,
    load_config,
    parse_config,
    parse_memory_limit,
)
from gmm_dask.app.steps import profile_piece
from gmm_dask.errors import ConfigError, DataError, GMMDaskInputError
from gmm_dask.mixture.limits import MAX_ABS_VALUE
from gmm_dask.segmentation.features import check_profile, finish_profile, merge_profiles
from gmm_dask.storage.io import open_snapshot

DATE = "2026-01-07"

JOB = """\
input:
  path: data
  id_column: user_id
  features: [sessions, spend]
output:
  root: out
"""


def _job(tmp_path, text: str = JOB, name: str = "job.yaml"):
    path = tmp_path / name
    path.write_text(textwrap.dedent(text))
    return path


def _frame(n: int = 50, start: int = 0) -> pd.DataFrame:
    rng = np.random.default_rng(start)
    return pd.DataFrame(
        {
            "user_id": np.arange(start, start + n, dtype=np.int64),
            "sessions": rng.poisson(5, n).astype(np.float64),
            "spend": rng.gamma(2.0, 10.0, n),
            "w": np.ones(n),
        }
    )


def _snapshot(tmp_path, *frames: pd.DataFrame):
    """One snapshot partition with one Parquet file per frame; returns its directory."""
    part = tmp_path / "data" / f"dt={DATE}"
    part.mkdir(parents=True)
    for i, df in enumerate(frames):
        pq.write_table(pa.Table.from_pandas(df, preserve_index=False), part / f"part-{i:05d}.parquet")
    return part


def _input_cfg(tmp_path, **input_overrides):
    data = {
        "input": {
            "path": str(tmp_path / "data"),
            "id_column": "user_id",
            "features": ["sessions", "spend"],
            **input_overrides,
        },
        "output": {"root": str(tmp_path / "out")},
    }
    return parse_config(data, "job.yaml").input


def _profile_pass(cfg, *, standardize: bool = True):
    """What the pipeline does on the cluster, in-process: profile each piece, merge, check."""
    snap = open_snapshot(cfg, DATE)
    parts = [profile_piece(p, cfg, snap.storage_options) for p in snap.pieces]
    prof = finish_profile(functools.reduce(merge_profiles, parts))
    check_profile(prof, cfg, DATE, standardize=standardize)
    return prof


# --- configuration ----------------------------------------------------------------------------


def test_1_booleans_are_not_numbers_anywhere_in_the_config(tmp_path):
    path = _job(tmp_path, JOB + "model:\n  n_components: yes\n")
    with pytest.raises(ConfigError, match=r"job\.yaml: model\.n_components: .*boolean true") as e:
        load_config(path)
    assert "Traceback" not in str(e.value)
    for extra, key in (
        ("model: {tol: off}", "model.tol"),
        ("model: {random_state: no}", "model.random_state"),
        ("cluster: {type: local, n_workers: true}", "cluster.n_workers"),
        ("entropy_bands: {low_max: on}", "entropy_bands.low_max"),
    ):
        with pytest.raises(ConfigError, match=rf"job\.yaml: {key}: .*boolean"):
            load_config(_job(tmp_path, JOB + extra + "\n"))
    overlap = JOB.replace("root: out", "{root: out, overlap_threshold: true}").replace(
        "output:\n  ", "output: "
    )
    with pytest.raises(ConfigError, match=r"output\.overlap_threshold: .*boolean"):
        load_config(_job(tmp_path, overlap))
    # floats still take YAML ints, and strings YAML 1.1 leaves unparsed (1e-3)
    cfg = load_config(_job(tmp_path, JOB + "model: {tol: 0, reg_covar: 1e-3, n_components: 3}\n"))
    assert cfg.model.tol == 0.0
    assert cfg.model.reg_covar == 1e-3
    assert cfg.model.n_components == 3


def test_2_duplicated_keys_name_the_key_and_both_lines(tmp_path):
    path = _job(tmp_path, JOB + "model:\n  n_components: 3\nmodel:\n  n_components: 5\n")
    with pytest.raises(ConfigError, match=r"job\.yaml: key 'model' appears twice \(lines 7 and 9\)"):
        load_config(path)
    nested = JOB.replace("  id_column: user_id\n", "  id_column: user_id\n  id_column: uid\n")
    with pytest.raises(ConfigError, match=r"key 'input\.id_column' appears twice \(lines 3 and 4\)"):
        load_config(_job(tmp_path, nested))
    # still the safe loader, with everything yaml.safe_load accepts (anchors, merge keys)
    ok = JOB + "model: &m {n_components: 3}\nentropy_bands: {low_max: 0.2}\n"
    assert load_config(_job(tmp_path, ok)).model.n_components == 3
    merged = (
        JOB + "model:\n  <<: {n_components: 3, tol: 0.01}\n  n_components: 4\n"
    )  # override, not a duplicate
    assert load_config(_job(tmp_path, merged)).model.n_components == 4
    evil = _job(tmp_path, "input: !!python/object/apply:os.system ['echo pwned']\n")
    with pytest.raises(ConfigError, match="not valid YAML"):
        load_config(evil)


def test_3_memory_limit_is_checked_in_the_model(tmp_path):
    path = _job(tmp_path, JOB + "cluster: {type: local, memory_limit: plenty}\n")
    with pytest.raises(ConfigError, match=r"job\.yaml: cluster\.memory_limit: cannot read 'plenty'.*'4GiB'"):
        load_config(path)
    for bad in (0, -1, "0 GB", "4 gigs", 1.5e400, True):
        with pytest.raises(ValueError, match="auto"):
            parse_memory_limit(bad)
    assert parse_memory_limit("auto") == "auto"
    assert parse_memory_limit("4GiB") == 4 * 2**30
    assert parse_memory_limit("1.5 GB") == 1_500_000_000
    assert parse_memory_limit("800MB") == 800_000_000
    assert parse_memory_limit(0.5) == 0.5
    assert parse_memory_limit(1) == 1.0
    assert parse_memory_limit(4_000_000_000) == 4_000_000_000
    for ok in ("auto", "4GiB", "1.5 GB", "800MB", 0.25, 2_000_000_000):
        assert LocalClusterConfig(memory_limit=ok).memory_limit == ok


def test_4_cluster_class_must_be_a_dask_cluster_and_nothing_runs(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    target = tmp_path / "PWNED"
    path = _job(
        tmp_path,
        JOB
        + f"cluster: {{type: class, cluster_class: subprocess.Popen, kwargs: {{args: [touch, {target}]}}}}\n",
    )
    cfg = load_config(path)  # the model only knows it is a dotted path
    with pytest.raises(
        ConfigError, match=r"cluster\.cluster_class 'subprocess\.Popen' is not a Dask cluster"
    ):
        check_cluster_config(cfg.cluster)
    with (
        pytest.raises(ConfigError, match=r"cluster\.cluster_class 'subprocess\.Popen'"),
        dask_client(cfg.cluster),
    ):
        pass  # pragma: no cover
    assert not target.exists()
    assert not (tmp_path / "PWNED").exists()
    for bad in ("os.system", "gmm_dask.app.config.JobConfig", "collections.OrderedDict"):
        with pytest.raises(ConfigError, match=r"cluster\.cluster_class"):
            check_cluster_config(ClassClusterConfig(cluster_class=bad))
    with pytest.raises(ConfigError, match="cannot be imported"):
        check_cluster_config(ClassClusterConfig(cluster_class="no_such_module.Cluster"))
    with pytest.raises(ConfigError, match=r"cluster\.cluster_class: 'Popen' is not a dotted path"):
        load_config(_job(tmp_path, JOB + "cluster: {type: class, cluster_class: Popen}\n"))
    # real cluster classes (Cluster and SpecCluster subclasses) pass without being started
    for ok in ("distributed.LocalCluster", "distributed.SpecCluster", "distributed.deploy.cluster.Cluster"):
        check_cluster_config(ClassClusterConfig(cluster_class=ok))
    check_cluster_config(None)
    check_cluster_config(cfg.model_copy(update={"cluster": LocalClusterConfig()}).cluster)
    # a scheduler address needs protocol://host:port
    for bad in ("scheduler:8786", "http://scheduler:8786", "tcp://scheduler", "tcp://h:99999", "tcp://a b:1"):
        with pytest.raises(
            ConfigError, match=r"job\.yaml: cluster\.address: .*tcp://scheduler\.internal:8786"
        ):
            load_config(_job(tmp_path, JOB + f"cluster: {{type: address, address: '{bad}'}}\n"))
    for ok in ("tcp://10.0.0.5:8786", "tls://scheduler.internal:8786", "ucx://[::1]:8786"):
        assert load_config(_job(tmp_path, JOB + f"cluster: {{type: address, address: '{ok}'}}\n"))


def test_5_output_location_is_checked_up_front_without_creating_anything(tmp_path):
    (tmp_path / "out").write_text("not a directory")
    cfg = load_config(_job(tmp_path))
    with pytest.raises(ConfigError, match=r"output\.root '.*out' is a file, not a directory"):
        check_output_location(cfg)
    (tmp_path / "out").unlink()
    (tmp_path / "reg-file").write_text("x")
    cfg = load_config(_job(tmp_path, JOB + "  registry: reg-file/models\n"))
    with pytest.raises(
        ConfigError, match=r"output\.registry '.*reg-file/models' cannot be created: .*reg-file"
    ):
        check_output_location(cfg)
    cfg = load_config(_job(tmp_path, JOB.replace("root: out", "root: new/deeper/out")))
    check_output_location(cfg)
    assert not (tmp_path / "new").exists()  # creates nothing
    cfg = load_config(_job(tmp_path, JOB.replace("root: out", "root: s3://bucket/out")))
    check_output_location(cfg)  # object stores are not checked here


# --- data ---------------------------------------------------------------------------------------


def test_6_stray_non_parquet_files_in_a_snapshot_are_refused(tmp_path):
    part = _snapshot(tmp_path, _frame(50), _frame(50, start=50))
    (part / "_SUCCESS").write_text("")
    (part / ".part-00000.parquet.crc").write_text("")
    cfg = _input_cfg(tmp_path)
    assert open_snapshot(cfg, DATE).n_rows == 100  # hidden files are fine
    _frame(30, start=100).to_csv(part / "part-00002.csv", index=False)
    with pytest.raises(DataError, match=r"part-00002\.csv") as e:
        open_snapshot(cfg, DATE)
    assert "Remove them" in str(e.value)
    assert "convert them to Parquet" in str(e.value)


@pytest.mark.parametrize("column", ["spend", "w"])
def test_7_boolean_feature_and_weight_columns_are_refused(tmp_path, column):
    df = _frame()
    df[column] = df[column] > 10
    _snapshot(tmp_path, df)
    cfg = _input_cfg(tmp_path, weight_column="w")
    key = "input.weight_column" if column == "w" else "input.features"
    with pytest.raises(
        DataError, match=rf"Column '{column}' \({key}\) in Parquet file '.*part-00000\.parquet' is boolean"
    ) as e:
        open_snapshot(cfg, DATE)
    assert "0/1 integers" in str(e.value)


def test_7b_decimal_features_are_still_accepted(tmp_path):
    df = _frame()
    table = pa.Table.from_pandas(df, preserve_index=False)
    spend = pa.array([round(v, 2) for v in df["spend"]]).cast(pa.decimal128(12, 2))
    part = tmp_path / "data" / f"dt={DATE}"
    part.mkdir(parents=True)
    pq.write_table(table.set_column(2, "spend", spend), part / "part-00000.parquet")
    prof = _profile_pass(_input_cfg(tmp_path))
    assert prof.n_rows == 50


@pytest.mark.parametrize("policy", ["drop", "impute_mean", "error"])
def test_8_an_entirely_missing_feature_column_is_named(tmp_path, policy):
    a, b = _frame(40), _frame(40, start=40)
    a["spend"], b["spend"] = np.nan, None
    b["spend"] = b["spend"].astype(float)
    _snapshot(tmp_path, a, b)
    with pytest.raises(
        DataError, match=r"feature column\(s\) \['spend'\] are null, NaN or infinite in all 80 rows"
    ):
        _profile_pass(_input_cfg(tmp_path, missing=policy))


def test_8b_no_usable_rows_names_the_columns(tmp_path):
    df = _frame(4)
    df.loc[[0, 1], "spend"] = np.nan
    df.loc[[2, 3], "sessions"] = np.nan
    _snapshot(tmp_path, df)
    with pytest.raises(DataError, match=r"no usable rows .*\{'sessions': 2, 'spend': 2\}"):
        _profile_pass(_input_cfg(tmp_path, missing="drop"))


def test_9_weights_zero_everywhere_are_refused(tmp_path):
    a, b = _frame(30), _frame(30, start=30)
    a["w"], b["w"] = 0.0, 0.0
    _snapshot(tmp_path, a, b)
    with pytest.raises(
        DataError, match=r"weight column 'w' \(input\.weight_column\) is 0 in all 60 rows"
    ) as e:
        _profile_pass(_input_cfg(tmp_path, weight_column="w"))
    assert "positive weight" in str(e.value)
    # positive weights only on rows that missing: drop removes: the same error, about the usable rows
    c = _frame(10)
    c["w"] = 0.0
    c.loc[3, ["w", "spend"]] = [2.0, np.nan]
    d = tmp_path / "other"
    d.mkdir()
    _snapshot(d, c)
    with pytest.raises(DataError, match=r"is 0 in all 9 usable rows"):
        _profile_pass(_input_cfg(d, weight_column="w", missing="drop"))


def test_10_huge_unscaled_values_are_refused_in_the_profile_pass(tmp_path):
    b = _frame(40, start=40)
    b.loc[11, "spend"] = 3e150
    _snapshot(tmp_path, _frame(40), b)
    cfg = _input_cfg(tmp_path)
    with pytest.raises(DataError) as e:
        _profile_pass(cfg, standardize=False)
    msg = str(e.value)
    for needle in ("part-00001.parquet", "row 11", "column 'spend'", "3e+150", f"{MAX_ABS_VALUE:g}", "asinh"):
        assert needle in msg, (needle, msg)
    assert "model.standardize" in msg
    prof = _profile_pass(cfg, standardize=True)  # scaled first: no error here
    assert prof.n_huge == 1
    assert prof.first_huge[1:3] == (11, "spend")
    # after the transform: log1p brings 3e150 down to ~347, so it is fine unscaled
    _profile_pass(
        parse_config(
            {
                "input": {
                    "path": str(tmp_path / "data"),
                    "id_column": "user_id",
                    "features": ["sessions", {"name": "spend", "transform": "log1p"}],
                },
                "output": {"root": "o"},
            }
        ).input,
        standardize=False,
    )


def test_every_error_is_an_input_error():
    assert issubclass(ConfigError, GMMDaskInputError)
    assert issubclass(DataError, GMMDaskInputError)
