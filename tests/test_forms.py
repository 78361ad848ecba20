"""The parameter forms explain themselves: ranges in every bounded field's description and in the
JSON schema (at the property, also for optional and nested fields), descriptions that a markdown or
HTML renderer shows as written, human titles, and messages that name the field. No Prefect server."""

from __future__ import annotations

import re
import typing

import pytest
from pydantic import BaseModel
from pydantic.fields import FieldInfo

from gmm_dask.app import params
from gmm_dask.app.forms import bounds, field_range, range_text
from gmm_dask.errors import ConfigError
from gmm_dask_cli import main

from .pipeline_helpers import flow_schema

MODELS = [
    params.TrainParams,
    params.ScoreParams,
    params.SegmentParams,
    params.BackfillParams,
    params.SelectKParams,
    params.FluidityParams,
    params.AudienceParams,
    params.PromoteParams,
    params.VacuumParams,
    params.ServeParams,
    params.ModelOverride,
]
FLOWS = ["segment", "train", "score", "backfill", "select_k", "fluidity", "audience"]
_SCHEMA_KEYS = {"ge": "minimum", "gt": "exclusiveMinimum", "le": "maximum", "lt": "exclusiveMaximum"}


def _fields(model: type[BaseModel]) -> list[tuple[str, FieldInfo]]:
    return [(f"{model.__name__}.{n}", f) for n, f in model.model_fields.items()]


ALL_FIELDS = [pair for m in MODELS for pair in _fields(m)]


def _optional(f: FieldInfo) -> bool:
    return type(None) in typing.get_args(f.annotation)


def test_range_text():
    assert range_text(ge=1, le=256) == "1–256"
    assert range_text(gt=0, le=0.5) == "0 < x ≤ 0.5"
    assert range_text(gt=0, lt=0.5) == "0 < x < 0.5"
    assert range_text(ge=0) == "≥ 0"
    assert range_text(ge=0.0) == "≥ 0"
    assert range_text(gt=0) == "> 0"
    assert range_text() == ""


@pytest.mark.parametrize(("name", "f"), ALL_FIELDS, ids=[n for n, _ in ALL_FIELDS])
def test_every_bounded_field_says_its_range(name, f):
    if bounds(f):
        assert f"({field_range(f)})" in (f.description or ""), name


@pytest.mark.parametrize(("name", "f"), ALL_FIELDS, ids=[n for n, _ in ALL_FIELDS])
def test_descriptions_render_as_written_and_optional_fields_say_what_empty_means(name, f):
    assert f.description, name
    assert not re.search(r"<[A-Za-z]", f.description), name  # swallowed as an HTML tag by the UI
    if _optional(f):
        assert "Empty: " in f.description, name


def test_optional_enum_and_nested_fields_have_human_titles():
    titles = {n: f.title for n, f in params.ModelOverride.model_fields.items()}
    assert titles["covariance_type"] == "Covariance type"
    assert all(t and t[0].isupper() and "_" not in t for t in titles.values()), titles
    props = params.ModelOverride.model_json_schema()["properties"]
    branch = props["covariance_type"]["anyOf"][0]
    assert branch["title"] == "Covariance type"
    assert "enum" in branch
    assert props["covariance_type"]["anyOf"][1]["title"] == "Empty"
    assert params.ModelOverride.model_json_schema()["title"] == "Model override"


def _check_schema_properties(props: dict, model: type[BaseModel]) -> None:
    for name, f in model.model_fields.items():
        prop = props[name]
        assert not re.search(r"<[A-Za-z]", prop.get("description", "")), name
        for bound, value in bounds(f).items():
            assert prop[_SCHEMA_KEYS[bound]] == value, name  # at the property, not in a branch
        for branch in prop.get("anyOf", []):
            assert "$ref" in branch or branch.get("title") not in (None, "str", "int", "None"), name
            assert not set(_SCHEMA_KEYS.values()) & set(branch), name


@pytest.mark.parametrize("model", MODELS, ids=[m.__name__ for m in MODELS])
def test_model_schemas_keep_bounds_at_the_property(model):
    _check_schema_properties(model.model_json_schema()["properties"], model)


@pytest.mark.parametrize("flow_name", FLOWS)
def test_flow_parameter_schemas_keep_bounds_at_the_property(flow_name):
    schema, model = flow_schema(flow_name)
    _check_schema_properties(schema["properties"], model)
    if "ModelOverride" in schema.get("definitions", {}):
        nested = schema["definitions"]["ModelOverride"]["properties"]
        _check_schema_properties(nested, params.ModelOverride)


def test_model_level_error_has_no_empty_key():
    with pytest.raises(ConfigError) as err:
        params.parse_params(
            params.SelectKParams, {"config": "x.yaml", "k_min": 6, "k_max": 3}, "flow 'select-k' parameters"
        )
    text = str(err.value)
    assert ": :" not in text
    assert text == "flow 'select-k' parameters: k_min (6) must be <= k_max (3)"


def test_out_of_range_override_names_the_field_and_its_range(capsys):
    rc = main(["segment", "--config", "configs/demo.yaml", "--n-components", "0"])
    assert rc == 2
    err = capsys.readouterr().err
    assert "model.n_components" in err, err
    assert "1–256" in err, err
    assert "--n-components" in err


def _descriptions(node: object) -> typing.Iterator[str]:
    """Every description in a JSON schema, nested definitions and branches included."""
    if isinstance(node, dict):
        for key, value in node.items():
            if key == "description" and isinstance(value, str):
                yield value
            else:
                yield from _descriptions(value)
    elif isinstance(node, list):
        for value in node:
            yield from _descriptions(value)


def test_every_served_deployments_form_renders_its_descriptions_as_written():
    # the UI renders descriptions as markdown/HTML: '<run id>' vanished as a tag
    from flows.serve import deployments

    served = deployments(params.ServeParams(config="configs/demo.yaml"))
    for d in served:
        schema = d._parameter_openapi_schema.model_dump_for_openapi()
        texts = list(_descriptions(schema))
        assert len(texts) >= len(schema["properties"]), d.name
        for text in texts:
            assert not re.search(r"<[A-Za-z/!]", text), (d.name, text)


def test_served_forms_say_the_configs_value_where_empty_means_it():
    from flows.serve import deployments
    from gmm_dask.app.config import load_config
    from gmm_dask.app.params import ServeParams

    cfg = load_config("configs/demo.yaml")
    served = {
        d.name: d._parameter_openapi_schema for d in deployments(ServeParams(config="configs/demo.yaml"))
    }
    override = served["daily"].definitions["ModelOverride"]["properties"]
    assert override["n_components"]["description"].endswith(
        f"Empty: the config's value ({cfg.model.n_components})."
    )
    assert override["family"]["description"].endswith(f"Empty: the config's value ({cfg.model.family}).")
    audience = served["audience"].properties
    assert audience["mover_snapshots"]["description"].endswith(
        f"Empty: the config's audiences.mover_snapshots ({cfg.audiences.mover_snapshots})."
    )
    # prefect.yaml's deployments have no config at hand: their forms keep the plain wording
    from flows import segment

    plain = segment.to_deployment(name="plain")._parameter_openapi_schema.definitions["ModelOverride"]
    assert plain["properties"]["n_components"]["description"].endswith("Empty: the config's value.")
