"""How a parameter reads in the CLI's help and the Prefect UI's form, defined once per field.

:func:`param` builds a field whose description ends with its range ("(1–256)", "(0 < x ≤ 0.5)")
and, for an optional field, what leaving it empty means; the bounds themselves are the Field's
``ge``/``gt``/``le``/``lt``, so the text and the check cannot disagree. :func:`form_property`
reshapes an optional field's JSON schema for the form: pydantic puts the bounds inside the
non-empty branch of an ``anyOf``, where a failed check only says that the value "is not valid under
any of the given schemas"; moved to the property itself (where they do not apply to an empty
value) they give "0 is less than the minimum of 1" for that field, and the branches get titles that
people say ("Number", "Empty") instead of "int" and "None".
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import annotated_types as at
from pydantic import Field, GetJsonSchemaHandler
from pydantic.fields import FieldInfo
from pydantic.json_schema import JsonSchemaValue
from pydantic_core import CoreSchema

#: The Field's bound → its JSON schema keyword.
_SCHEMA_KEYS = {"ge": "minimum", "gt": "exclusiveMinimum", "le": "maximum", "lt": "exclusiveMaximum"}
_BOUND_KEYWORDS = (*_SCHEMA_KEYS.values(), "minLength", "maxLength", "minItems", "maxItems")
_BRANCH_TITLES = {
    "integer": "Number",
    "number": "Number",
    "string": "Text",
    "boolean": "Yes / no",
    "array": "List",
}
EMPTY_TITLE = "Empty"


def _num(value: float) -> str:
    return str(value) if isinstance(value, int) else f"{value:g}"


def range_text(
    ge: float | None = None, gt: float | None = None, le: float | None = None, lt: float | None = None
) -> str:
    """A range as people write it: "1–256", "≥ 0", "0 < x ≤ 0.5"; "" when unbounded."""
    if ge is not None and le is not None:
        return f"{_num(ge)}–{_num(le)}"
    low = f"{_num(ge)} ≤ " if ge is not None else f"{_num(gt)} < " if gt is not None else ""
    high = f" ≤ {_num(le)}" if le is not None else f" < {_num(lt)}" if lt is not None else ""
    if low and high:
        return f"{low}x{high}"
    if low:
        return f"{'≥' if ge is not None else '>'} {low.split(' ')[0]}"
    return high.strip()


def bounds(info: FieldInfo) -> dict[str, float]:
    """The field's numeric bounds by name (``ge``, ``gt``, ``le``, ``lt``)."""
    out: dict[str, float] = {}
    for m in info.metadata:
        for name in _SCHEMA_KEYS:
            if isinstance(m, at.Ge | at.Gt | at.Le | at.Lt) and hasattr(m, name):
                out[name] = getattr(m, name)
    return out


def field_range(info: FieldInfo) -> str:
    """The range written in the field's description ("" when unbounded)."""
    return range_text(**bounds(info))


def param(
    description: str,
    *,
    ge: float | None = None,
    gt: float | None = None,
    le: float | None = None,
    lt: float | None = None,
    empty: str | None = None,
    **kwargs: Any,
) -> Any:
    """A Field whose description ends with its range and, for an optional field, ``Empty: <empty>``.

    ``description`` is one or more sentences; the range goes before the last full stop.
    """
    text = description
    rng = range_text(ge=ge, gt=gt, le=le, lt=lt)
    if rng:
        text = f"{text.removesuffix('.')} ({rng})."
    if empty is not None:
        text = f"{text} Empty: {empty}."
    return Field(ge=ge, gt=gt, le=le, lt=lt, description=text, **kwargs)


def form_property(prop: dict[str, Any], title: str | None = None) -> None:
    """Reshape one optional property's JSON schema in place for the form (see the module's doc):
    the value's branch is titled ``title`` (else the property's title, else by its type).

    A property that is not ``anyOf[<value>, null]`` is left as it is.
    """
    branches = prop.get("anyOf")
    if not isinstance(branches, list) or len(branches) != 2 or {"type": "null"} not in branches:
        return
    value = next(b for b in branches if b != {"type": "null"})
    for key in _BOUND_KEYWORDS:  # these keywords skip values of other types, null included
        if key in value:
            prop[key] = value.pop(key)
    if "$ref" not in value:
        by_type = "Date" if value.get("format") == "date" else _BRANCH_TITLES.get(value.get("type", ""))
        label = title or prop.get("title") or by_type
        if label:
            value["title"] = label
    prop["anyOf"] = [value, {"type": "null", "title": EMPTY_TITLE}]


def form_schema(schema: dict[str, Any]) -> None:
    """:func:`form_property` on every property of a model's JSON schema (a ``json_schema_extra``)."""
    for prop in schema.get("properties", {}).values():
        form_property(prop)


@dataclass(frozen=True)
class FormProperty:
    """``Annotated`` metadata giving a type's JSON schema the form's shape (:func:`form_property`),
    for a type outside a parameter model (the flows' signatures)."""

    title: str | None = None

    def __get_pydantic_json_schema__(
        self, core_schema: CoreSchema, handler: GetJsonSchemaHandler
    ) -> JsonSchemaValue:
        prop = handler(core_schema)
        form_property(prop, self.title)
        return prop


_CONFIG_EMPTY = re.compile(r"Empty: the config's (value|[a-z_]+\.[a-z_]+)\.$")


def with_config_values(schema: dict[str, Any], sections: Mapping[str, Mapping[str, Any]]) -> None:
    """Say, in place, the config's value where a field's description says empty means it: "Empty:
    the config's value." of the model override's fields and "Empty: the config's
    audiences.blend_threshold." read "... (5)." once the deployment's config is known.
    ``sections``: the config's sections as plain values (``{"model": {...}, "audiences": {...}}``)."""

    def fill(props: Mapping[str, Any], section: str | None) -> None:
        for name, prop in props.items():
            text = prop.get("description") if isinstance(prop, dict) else None
            found = _CONFIG_EMPTY.search(text) if isinstance(text, str) else None
            if text is None or found is None:
                continue
            where = found.group(1)
            sec, _, key = where.partition(".") if where != "value" else (section or "", "", name)
            value = sections.get(sec, {}).get(key)
            if value is not None:
                prop["description"] = f"{text[:-1]} ({_shown(value)})."

    fill(schema.get("properties", {}), None)
    for name, definition in schema.get("definitions", {}).items():
        fill(definition.get("properties", {}), "model" if name == "ModelOverride" else None)


def _shown(value: Any) -> str:
    return f"{value:g}" if isinstance(value, float) else str(value)
