"""Model registry and configuration: exact round trips, refusals, safe loading."""

from __future__ import annotations

import json
import re
from pathlib import Path

import numpy as np
import pytest
import yaml

from gmm_dask.app.config import FeatureSpec, load_config, parse_config
from gmm_dask.errors import ConfigError, RegistryError
from gmm_dask.mixture.gaussian import compute_precision_cholesky
from gmm_dask.segmentation.features import FeaturePlan
from gmm_dask.segmentation.fit_record import FitRecord
from gmm_dask.segmentation.model import SegmentationModel
from gmm_dask.storage.registry import ModelRegistry

PACKAGE = Path(__file__).resolve().parents[1] / "gmm_dask"


def _model(ct="full", k=3, d=2, seed=0):
    rng = np.random.default_rng(seed)
    a = rng.normal(size=(k, d, d))
    full = a @ a.transpose(0, 2, 1) + np.eye(d)
    cov = {
        "full": full,
        "tied": full[0],
        "diag": rng.uniform(0.5, 2, (k, d)),
        "spherical": rng.uniform(0.5, 2, k),
    }[ct]
    w = rng.uniform(size=k)
    plan = FeaturePlan(
        (FeatureSpec(name="a", transform="log1p"), FeatureSpec(name="b")),
        "drop",
        rng.normal(size=d),
        rng.uniform(1, 2, d),
        np.zeros(d),
    )
    return SegmentationModel(
        plan,
        ct,
        w / w.sum(),
        rng.normal(size=(k, d)),
        cov,
        compute_precision_cholesky(cov, ct),
        [f"s{i}" for i in range(k)],
        "user_id",
        None,
        FitRecord(snapshot="2026-01-01"),
    )


@pytest.mark.parametrize("ct", ["full", "tied", "diag", "spherical"])
def test_round_trip_is_bit_exact(tmp_path, ct):
    reg = ModelRegistry(str(tmp_path / "reg"))
    m = _model(ct)
    v = reg.register(m).version
    loaded = reg.load(v)
    for attr in ("weights", "means", "covariances", "precisions_cholesky"):
        np.testing.assert_array_equal(getattr(loaded, attr), getattr(m, attr))
    np.testing.assert_array_equal(loaded.plan.scale, m.plan.scale)
    X = np.random.default_rng(1).normal(size=(50, 2))
    np.testing.assert_array_equal(loaded.mixture().predict_proba(X), m.mixture().predict_proba(X))


def test_versions_are_immutable_and_alias_moves(tmp_path):
    reg = ModelRegistry(str(tmp_path / "reg"))
    v1 = reg.register(_model(seed=1)).version
    v2 = reg.register(_model(seed=2)).version
    assert (v1, v2) == ("v0001", "v0002")
    assert reg.resolve(None) == "v0002"
    reg.set_alias("production", v1)
    assert reg.resolve("production") == "v0001"
    assert reg.load("v0001").metadata.version == "v0001"
    assert not list((tmp_path / "reg").rglob("*.tmp"))


@pytest.mark.parametrize(
    ("edit", "msg"),
    [
        (lambda p: p.__setitem__("weights", [0.5, 0.5, 0.5]), "failed its checksum"),
        (lambda p: p.__setitem__("covariance_type", "round"), "failed its checksum"),
    ],
)
def test_tampered_file_is_refused(tmp_path, edit, msg):
    reg = ModelRegistry(str(tmp_path / "reg"))
    v = reg.register(_model()).version
    path = tmp_path / "reg" / "versions" / v / "model.json"
    doc = json.loads(path.read_text())
    edit(doc["payload"])
    path.write_text(json.dumps(doc))
    with pytest.raises(RegistryError, match=msg):
        reg.load(v)


def test_consistent_but_invalid_parameters_are_refused(tmp_path):
    """A file whose checksum was recomputed still has to pass validation."""
    from gmm_dask.storage.registry import _digest

    reg = ModelRegistry(str(tmp_path / "reg"))
    v = reg.register(_model()).version
    path = tmp_path / "reg" / "versions" / v / "model.json"
    doc = json.loads(path.read_text())
    doc["payload"]["covariances"][0] = [[1.0, 2.0], [2.0, 1.0]]  # not positive definite
    doc["sha256"] = _digest(doc["payload"])
    path.write_text(json.dumps(doc))
    with pytest.raises(RegistryError, match="not positive definite"):
        reg.load(v)
    doc["payload"]["weights"] = [0.9, 0.9, 0.9]
    doc["sha256"] = _digest(doc["payload"])
    path.write_text(json.dumps(doc))
    with pytest.raises(RegistryError, match="sum to 1"):
        reg.load(v)


def test_no_pickle_anywhere_in_the_package():
    """Stored models and configs can never execute code: no pickle-based I/O in gmm_dask."""
    pattern = re.compile(
        r"\bimport pickle\b|\bpickle\.load|\bcloudpickle\.load|allow_pickle\s*=\s*True|yaml\.load\(|yaml\.unsafe_load|joblib"
    )
    offenders = [
        f"{p.name}:{i}"
        for p in PACKAGE.rglob("*.py")
        for i, line in enumerate(p.read_text().splitlines(), 1)
        if pattern.search(line)
    ]
    assert offenders == []


def test_config_relative_paths_resolve_against_the_file(tmp_path):
    (tmp_path / "conf").mkdir()
    cfg_file = tmp_path / "conf" / "job.yaml"
    cfg_file.write_text(
        yaml.safe_dump(
            {"input": {"path": "../data", "id_column": "u", "features": ["x"]}, "output": {"root": "out"}}
        )
    )
    cfg = load_config(cfg_file)
    assert cfg.input.path == str((tmp_path / "data").resolve())
    assert cfg.output.root == str((tmp_path / "conf" / "out").resolve())
    assert cfg.output.registry_path == cfg.output.root + "/registry"
    assert cfg.cluster.host == "127.0.0.1"


def test_config_rejects_credentials_and_unsafe_yaml(tmp_path):
    base = {"input": {"path": "d", "id_column": "u", "features": ["x"]}, "output": {"root": "o"}}
    with pytest.raises(ConfigError, match="must not hold credentials"):
        parse_config({**base, "input": {**base["input"], "storage_options": {"secret": "x"}}})
    f = tmp_path / "evil.yaml"
    f.write_text("input: !!python/object/apply:os.system ['echo pwned']\n")
    with pytest.raises(ConfigError, match="not valid YAML"):
        load_config(f)


def test_config_errors_name_the_key(tmp_path):
    base = {"input": {"path": "d", "id_column": "u", "features": ["x", "x"]}, "output": {"root": "o"}}
    with pytest.raises(ConfigError, match=r"f\.yaml: input: .*lists \['x'\] more than once"):
        parse_config(base, "f.yaml")
    with pytest.raises(ConfigError, match=r"missing required key 'output'"):
        parse_config({"input": base["input"]}, "f.yaml")
    with pytest.raises(ConfigError, match="segment_names has 2 names but n_components is 3"):
        parse_config(
            {
                **base,
                "input": {**base["input"], "features": ["x"]},
                "model": {"n_components": 3, "segment_names": ["a", "b"]},
            }
        )


def test_example_configs_validate():
    for path in (PACKAGE.parent / "configs").glob("*.yaml"):
        load_config(path)
