"""Pydantic's validation errors turned into problems a person can act on: file, line, key, and what fits."""

from __future__ import annotations

import difflib
import types
import typing
from typing import Annotated

from pydantic import BaseModel
from pydantic_core import ErrorDetails

from ..errors import Problem
from .model import LdapSource, Topology
from .positions import Located, format_path
from .postfix_parameters import POSTFIX_PARAMETERS


def unwrap(annotation):
    """The model class inside Optional[...] / list[...] / dict[..., ...], if any."""
    origin = typing.get_origin(annotation)
    if origin is Annotated:
        return unwrap(typing.get_args(annotation)[0])
    if origin in (typing.Union, types.UnionType):
        for arg in typing.get_args(annotation):
            if arg is not type(None):
                found = unwrap(arg)
                if found is not None:
                    return found
        return None
    if origin in (list, tuple):
        return unwrap(typing.get_args(annotation)[0])
    if origin is dict:
        return unwrap(typing.get_args(annotation)[1])
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return annotation
    return None


def _model_at(path: tuple) -> type[BaseModel] | None:
    model: type[BaseModel] | None = Topology
    for part in path:
        if isinstance(part, int):
            continue
        if model is None or part not in model.model_fields:
            return None
        model = unwrap(model.model_fields[part].annotation)
    return model


def from_pydantic(source: Located, error: ErrorDetails) -> Problem:
    loc = tuple(part for part in error["loc"] if not (isinstance(part, str) and "[" in part) and part not in ("str", "int", "bool"))
    kind = error["type"]
    if kind == "extra_forbidden" and loc[-1] == "password" and _model_at(loc[:-1]) is LdapSource:
        # The value is never shown: it is a password.
        return source.problem(
            loc,
            "a password may not be written in the inventory (it would end up in version control and logs)",
            "password_env: the name of an environment variable holding it, or password_file: a file holding it",
        )
    if kind == "extra_forbidden":
        parent = _model_at(loc[:-1])
        allowed = sorted(parent.model_fields) if parent else []
        hint = difflib.get_close_matches(str(loc[-1]), allowed, n=1)
        message = f"unknown key {loc[-1]!r}" + (f"; did you mean {hint[0]!r}?" if hint else "")
        as_parameter = difflib.get_close_matches(str(loc[-1]), POSTFIX_PARAMETERS, n=1, cutoff=0.85)
        if as_parameter and not hint:
            message += f" (a Postfix parameter such as {as_parameter[0]!r} goes under policy.main_cf)"
        return source.problem(loc, message, "one of: " + ", ".join(allowed))
    if kind == "missing":
        return source.problem(loc, f"required key {loc[-1]!r} is missing", f"a value for {format_path(loc)}")
    if kind == "mailforge":
        ctx = error.get("ctx", {})
        return source.problem(loc, ctx.get("message", error["msg"]), ctx.get("expected", ""))
    if kind == "too_short":
        return source.problem(loc, "must not be empty", "at least one entry")
    value = error.get("input")
    shown = f" (got {value!r})" if not isinstance(value, (dict, list)) else ""
    return source.problem(loc, error["msg"] + shown, "")
