"""CLI options generated from a job's parameter model: one option per field, help text and
default from the field, choices from Literal types, and validation by the model itself."""

from __future__ import annotations

import argparse
import types
import typing
from typing import Any, Literal

from pydantic import BaseModel, ValidationError
from pydantic.fields import FieldInfo

from gmm_dask.app.forms import field_range
from gmm_dask.errors import ConfigError


def _unwrap_optional(ann):
    if typing.get_origin(ann) in (typing.Union, types.UnionType):
        args = [a for a in typing.get_args(ann) if a is not type(None)]
        if len(args) == 1:
            return args[0]
    return ann


def option_name(field: str) -> str:
    return "--" + field.replace("_", "-")


def _add_field(group, name: str, f, dest: str) -> None:
    ann = _unwrap_optional(f.annotation)
    origin = typing.get_origin(ann)
    kwargs: dict[str, Any] = {"dest": dest, "default": argparse.SUPPRESS}
    help_text = (f.description or "").replace("%", "%%")
    if f.is_required():
        kwargs["required"] = True
    elif f.default not in (None, [], ()):
        shown = " ".join(f.default) if isinstance(f.default, list) else f.default
        help_text += f" [default: {shown}]"
    if ann is bool:
        kwargs["action"] = argparse.BooleanOptionalAction
    elif origin is Literal:
        kwargs["choices"] = list(typing.get_args(ann))
    elif origin is list:
        (item,) = typing.get_args(ann)
        kwargs["nargs"] = "+"
        if typing.get_origin(item) is Literal:
            kwargs["choices"] = list(typing.get_args(item))
    elif ann is int:
        kwargs["type"] = int
        kwargs["metavar"] = "N"
    elif ann is float:
        kwargs["type"] = float
        kwargs["metavar"] = "X"
    else:
        kwargs["metavar"] = "YYYY-MM-DD" if "date" in str(ann) else name.upper()
    group.add_argument(option_name(name), help=help_text, **kwargs)


def add_options(parser: argparse.ArgumentParser, params_cls: type[BaseModel]) -> None:
    """One option per field of ``params_cls``; a nested model field (e.g. the model override)
    becomes its own group of options."""
    for name, f in params_cls.model_fields.items():
        nested = _unwrap_optional(f.annotation)
        if isinstance(nested, type) and issubclass(nested, BaseModel):
            group = parser.add_argument_group(name, f.description)
            for sub, sf in nested.model_fields.items():
                _add_field(group, sub, sf, f"{name}.{sub}")
        else:
            _add_field(parser, name, f, name)


_RANGE_ERRORS = {"greater_than", "greater_than_equal", "less_than", "less_than_equal"}


def _field_info(params_cls: type[BaseModel], loc: list[str]) -> FieldInfo | None:
    """The field at ``loc`` (a nested model's field too), if there is one."""
    cls: Any = params_cls
    info = None
    for part in loc:
        if not (isinstance(cls, type) and issubclass(cls, BaseModel)) or part not in cls.model_fields:
            return None
        info = cls.model_fields[part]
        cls = _unwrap_optional(info.annotation)
    return info


def params_from_args(params_cls: type[BaseModel], args: argparse.Namespace, command: str):
    """Validate the parsed options into ``params_cls``; errors name the options."""
    values: dict[str, Any] = {}
    for key, value in vars(args).items():
        if key.startswith("_") or key in ("func", "command", "verbose"):
            continue
        head, _, tail = key.partition(".")
        if tail:
            values.setdefault(head, {})[tail] = value
        elif head in params_cls.model_fields:
            values[head] = value
    try:
        return params_cls.model_validate(values)
    except ValidationError as err:
        lines = []
        for e in err.errors():
            loc = [str(p) for p in e["loc"] if not isinstance(p, int)]
            where = option_name(loc[-1]) if loc else "options"
            if len(loc) > 1:  # a nested model's field: say which (model.n_components)
                where += f" ({'.'.join(loc)})"
            msg = e["msg"].removeprefix("Value error, ")
            info = _field_info(params_cls, loc)
            rng = field_range(info) if info is not None and e["type"] in _RANGE_ERRORS else ""
            msg += f" (range {rng})" if rng else ""
            got = e.get("input")
            got_s = f" (got {got!r})" if loc and not isinstance(got, dict | list) else ""
            lines.append(f"gmm-dask {command}: {where}: {msg}{got_s}")
        raise ConfigError("\n".join(lines)) from None
