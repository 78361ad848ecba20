"""Property-based bad input: every table ends in a valid fit or one clear error —
never NaN in an output, never a partial write, never a hang."""

from __future__ import annotations

import warnings
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import yaml
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from gmm_dask import GaussianMixture
from gmm_dask.app import jobs
from gmm_dask.app.config import load_config
from gmm_dask.app.params import TrainParams
from gmm_dask.errors import ComponentCollapseWarning, ConvergenceWarning, GMMDaskInputError

from .pipeline_helpers import gamma_matrix, read_partition

SPECIAL = [0.0, 1.0, -1.0, 3.5, 1e300, -1e300, 1e-300, np.nan, np.inf, -np.inf]
value = st.one_of(st.sampled_from(SPECIAL), st.floats(-50, 50, allow_nan=False))


@st.composite
def tables(draw):
    n = draw(st.integers(0, 24))
    cols = {f: draw(st.lists(value, min_size=n, max_size=n)) for f in ("a", "b")}
    if n and draw(st.booleans()):  # duplicated / identical rows
        src = draw(st.integers(0, n - 1))
        for f in cols:
            cols[f] = [cols[f][src]] * n if draw(st.booleans()) else cols[f]
    id_kind = draw(st.sampled_from(["int", "unicode", "with_null", "duplicate"]))
    if id_kind == "int":
        ids = list(range(n))
    else:
        ids = [f"usér-{i}-☃" for i in range(n)]
        if n and id_kind == "with_null":
            ids[draw(st.integers(0, n - 1))] = None
        if n > 1 and id_kind == "duplicate":
            ids[1] = ids[0]
    dtype = draw(st.sampled_from(["float", "int", "string"]))
    split = draw(st.integers(0, n))
    return {
        "cols": cols,
        "ids": ids,
        "dtype": dtype,
        "split": split,
        "empty_file": draw(st.booleans()),
        "missing": draw(st.sampled_from(["error", "drop", "impute_mean"])),
        "transform": draw(st.sampled_from(["none", "asinh"])),
        "k": draw(st.integers(1, 3)),
        "covariance_type": draw(st.sampled_from(["full", "diag", "spherical", "tied"])),
    }


def _write(tmp: Path, t: dict) -> Path:
    part = tmp / "data" / "dt=2026-03-01"
    part.mkdir(parents=True)
    text_ids = any(isinstance(i, str) for i in t["ids"])
    df = pd.DataFrame({"user_id": pd.array(t["ids"], dtype=object if text_ids else "Int64")})
    for f, vals in t["cols"].items():
        arr = np.asarray(vals, dtype=float)
        if t["dtype"] == "int":
            df[f] = (
                pd.array(np.where(np.isfinite(arr) & (np.abs(arr) < 1e15), arr, np.nan))
                .astype("Float64")
                .round()
                .astype("Int64")
            )
        elif t["dtype"] == "string":
            df[f] = [str(v) for v in vals]
        else:
            df[f] = arr
    table = pa.Table.from_pandas(df, preserve_index=False)
    pq.write_table(table.slice(0, t["split"]), part / "part-0.parquet")
    pq.write_table(table.slice(t["split"]), part / "part-1.parquet")
    if t["empty_file"]:
        pq.write_table(table.slice(0, 0), part / "part-2.parquet")
    cfg = {
        "input": {
            "path": str(tmp / "data"),
            "id_column": "user_id",
            "features": [{"name": f, "transform": t["transform"]} for f in ("a", "b")],
            "missing": t["missing"],
        },
        "model": {
            "n_components": t["k"],
            "covariance_type": t["covariance_type"],
            "max_iter": 30,
            "random_state": 0,
        },
        "output": {"root": str(tmp / "out")},
    }
    path = tmp / "job.yaml"
    path.write_text(yaml.safe_dump(cfg))
    return path


@pytest.mark.timeout(400)
@settings(
    max_examples=60,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(t=tables())
def test_pipeline_gives_a_valid_fit_or_a_clear_error(tmp_path_factory, dask_client, t):
    """Every example runs on the session's cluster (the job reuses the active client)."""
    tmp = tmp_path_factory.mktemp("fuzz")
    path = _write(tmp, t)
    load_config(path)  # the drawn config itself is always valid
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        warnings.simplefilter("ignore", ComponentCollapseWarning)
        try:
            res = jobs.train(TrainParams(config=str(path)))
        except GMMDaskInputError as err:
            assert str(err)
            written = [p for p in (tmp / "out").rglob("*") if p.is_file()] if (tmp / "out").exists() else []
            assert written == [], f"error {err!r} but files were written: {written}"
            return
    mem = read_partition(tmp / "out", "memberships", res.snapshot)
    g = gamma_matrix(mem)
    assert np.isfinite(g).all()
    np.testing.assert_allclose(g.sum(axis=1), 1.0, atol=1e-9)
    for col in ("entropy_bits", "entropy_norm", "log_likelihood", "max_gamma"):
        assert np.isfinite(mem.column(col).to_numpy()).all(), col
    ids = mem.column("user_id").to_pylist()
    assert len(ids) == len(set(ids)) == res.counts["rows_written"]
    seg = read_partition(tmp / "out", "segments", res.snapshot).to_pandas()
    assert np.isfinite(seg["weight"]).all()


@settings(max_examples=80, deadline=None)
@given(
    rows=st.lists(st.tuples(value, value, value), min_size=1, max_size=30),
    k=st.integers(1, 4),
    ct=st.sampled_from(["full", "tied", "diag", "spherical"]),
    chunks=st.integers(1, 7),
)
# found by CI: a constant 1e300 column has zero variance but its squared mean overflows
@example(rows=[(0.0, 1e300, 0.0), (0.0, 1e300, 1.0)], k=2, ct="full", chunks=2)
@example(rows=[(0.0, 1e300, 0.0), (0.0, 1e300, 0.0)], k=2, ct="diag", chunks=1)
def test_estimator_gives_a_valid_fit_or_a_clear_error(rows, k, ct, chunks):
    import dask.array as da

    X = np.asarray(rows, dtype=float)
    Xd = da.from_array(X, chunks=(max(1, -(-len(X) // chunks)), -1))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        warnings.simplefilter("ignore", ComponentCollapseWarning)
        try:
            gm = GaussianMixture(k, covariance_type=ct, max_iter=20, random_state=0).fit(Xd)
        except GMMDaskInputError as err:
            assert str(err)
            return
    for attr in ("weights_", "means_", "covariances_", "precisions_cholesky_"):
        assert np.isfinite(getattr(gm, attr)).all(), attr
    p = gm.predict_proba(X)
    assert np.isfinite(p).all()
    np.testing.assert_allclose(p.sum(axis=1), 1.0, atol=1e-9)
