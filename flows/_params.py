"""Flows whose parameters are a job's parameter model: the Prefect form (names, types, bounds,
enums, defaults, descriptions) is generated from the same pydantic model as the CLI options."""

from __future__ import annotations

import functools
import inspect
import operator
from collections.abc import Callable
from typing import Annotated, Protocol, cast

from prefect import flow, get_run_logger
from prefect.states import Failed
from pydantic import BaseModel, Field

from gmm_dask.app import progress
from gmm_dask.app.forms import FormProperty
from gmm_dask.app.jobs import run_label
from gmm_dask.app.params import parse_params
from gmm_dask.errors import GMMDaskInputError

from . import _logs


def signature_of(params_cls) -> inspect.Signature:
    """A keyword-only signature with one parameter per field of ``params_cls``; an optional
    field's form reads as :func:`gmm_dask.app.forms.FormProperty` makes it."""
    parameters = []
    for name, f in params_cls.model_fields.items():
        meta = [*f.metadata, Field(description=f.description), FormProperty(f.title)]
        annotation = operator.getitem(Annotated, (f.annotation, *meta))  # a type built at run time
        default = (
            inspect.Parameter.empty
            if f.is_required()
            else Field(_form_default(f.get_default(call_default_factory=True)), description=f.description)
        )
        parameters.append(
            inspect.Parameter(name, inspect.Parameter.KEYWORD_ONLY, default=default, annotation=annotation)
        )
    return inspect.Signature(parameters)


def flow_run_label() -> str:
    """This flow run as the UI shows it: "Prefect flow run 'name' (id, URL)" (URL where the UI's
    address is known) — what a lock message names so the analyst can click through."""
    from prefect.runtime import flow_run

    url = flow_run.ui_url
    return f"Prefect flow run {flow_run.name!r} ({flow_run.id}{', ' + url if url else ''})"


def _form_default(value: object) -> object:
    """A default as the form shows it: a nested model (the override) as its set fields only."""
    return value.model_dump(exclude_none=True) if isinstance(value, BaseModel) else value


class _FlowFunction(Protocol):
    """A flow's function: keyword parameters, and the signature and docs Prefect reads."""

    __signature__: inspect.Signature
    __annotations__: dict[str, object]
    __doc__: str | None

    def __call__(self, **kwargs: object) -> object: ...


def job_flow(params_cls, *, name: str, description: str) -> Callable:
    """Decorate ``body(params)`` into a flow whose parameters are ``params_cls``'s fields; its
    logs get the library's warnings, and a bad-input error once (:mod:`flows._logs`)."""
    _logs.install()

    def decorate(body: Callable):
        @functools.wraps(body)
        def run(**kwargs):
            run_logger = get_run_logger()
            try:
                params = parse_params(params_cls, kwargs, f"flow {name!r} parameters")
                with (
                    progress.use(progress.RunLogProgress(run_logger), add=True),
                    run_label(flow_run_label()),
                    _logs.library_warnings(run_logger),
                ):
                    return body(params)
            except GMMDaskInputError as err:
                if _logs.verbose():
                    raise
                # one ERROR line and the state message, no traceback; the caller still gets the error
                run_logger.error("%s: %s", type(err).__name__, err)
                return Failed(message=f"{type(err).__name__}: {err}", data=err)

        del run.__wrapped__  # the signature below, not the body's, is the flow's
        fn = cast(_FlowFunction, run)
        fn.__signature__ = signature_of(params_cls)
        fn.__annotations__ = {p.name: p.annotation for p in fn.__signature__.parameters.values()}
        # Prefect reads required parameters' descriptions from a Google-style "Args:" section
        args = "\n".join(f"    {n}: {f.description}" for n, f in params_cls.model_fields.items())
        fn.__doc__ = f"{(params_cls.__doc__ or '').strip()}\n\nArgs:\n{args}\n"
        return flow(name=name, description=description)(fn)

    return decorate
