"""A best-effort model of a topology that failed validation, so one structural error does not hide the others.

The semantic checks run over it: list items that failed are None or a `Fragment` (their valid fields
only), and a required field that failed is an empty list or None.
"""

from __future__ import annotations

import typing

from pydantic import BaseModel, TypeAdapter, ValidationError

from .problems import unwrap


def partial(model: type[BaseModel], data: dict) -> BaseModel:
    """`model` built field by field from `data`, skipping what fails: list items that fail become None."""
    values: dict[str, typing.Any] = {}
    for name, info in model.model_fields.items():
        if name not in data:
            continue
        raw, annotation = data[name], info.annotation
        nested = unwrap(annotation)
        if typing.get_origin(annotation) is list and isinstance(raw, list):
            item_type = typing.get_args(annotation)[0]
            adapter = TypeAdapter(item_type)
            items = []
            for item in raw:
                try:
                    items.append(adapter.validate_python(item))
                except ValidationError:
                    model_type = unwrap(item_type)
                    items.append(Fragment(partial(model_type, item)) if model_type and isinstance(item, dict) else None)
            values[name] = items
        elif nested is not None and typing.get_origin(annotation) is not dict and isinstance(raw, dict):
            values[name] = partial(nested, raw)
        else:
            assert annotation is not None  # pydantic gives every model field an annotation
            try:
                values[name] = TypeAdapter(annotation).validate_python(raw)
            except ValidationError:
                pass
    # A required field that is missing or failed: an empty list or None, so the cross checks can
    # still run over the rest (its own problem is already reported by the schema).
    for name, info in model.model_fields.items():
        if name not in values and info.is_required():
            values[name] = [] if typing.get_origin(info.annotation) is list else None
    return model.model_construct(**values)


class Fragment:
    """What validated of a list item that did not: enough to find duplicates, not to check it further."""

    def __init__(self, partial: BaseModel):
        self.__dict__.update({k: v for k, v in partial.__dict__.items()})

    def __getattr__(self, name):
        return None


def present(items):
    """(index, item) for the items that validated; a partial model holds None or a Fragment for the others."""
    return [(i, item) for i, item in enumerate(items) if item is not None and not isinstance(item, Fragment)]


def identified(items):
    """(index, item) for every item with at least some valid fields, for duplicate checks."""
    return [(i, item) for i, item in enumerate(items) if item is not None]
