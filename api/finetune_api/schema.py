"""Turn the pydantic API models into a structural OpenAPI v3 schema for the CRD.

A small, explicit walker rather than pydantic's JSON Schema output: the CRD
needs inlined objects (no $ref), `default: {}` on nested objects so their
own defaults apply, int-or-string quantities, and CEL rules, and it must
refuse a field without a description so `kubectl explain` is always useful.
"""

from __future__ import annotations

import types
from datetime import datetime
from enum import Enum
from typing import Annotated, Any, Literal, Union, get_args, get_origin

import annotated_types as at
from pydantic import BaseModel
from pydantic.fields import FieldInfo
from pydantic_core import PydanticUndefined

from .base import ApiModel
from .types import IntOrString


class SchemaError(ValueError):
    """The models cannot be expressed as a structural CRD schema."""


def _strip_optional(annotation: Any) -> Any:
    origin = get_origin(annotation)
    if origin in (Union, types.UnionType):
        args = [a for a in get_args(annotation) if a is not type(None)]
        if len(args) == 1:
            return args[0]
    return annotation


def _literal_schema(values: tuple[Any, ...]) -> dict[str, Any]:
    kinds = {type(v) for v in values}
    if kinds == {str}:
        return {"type": "string", "enum": list(values)}
    if kinds == {int}:
        return {"type": "integer", "enum": list(values)}
    raise SchemaError(f"unsupported Literal values {values!r}")


def type_schema(annotation: Any, where: str) -> dict[str, Any]:
    """The schema of a Python type (without description or constraints)."""
    annotation = _strip_optional(annotation)
    origin = get_origin(annotation)

    if origin is Annotated:
        base, *meta = get_args(annotation)
        if any(isinstance(m, IntOrString) for m in meta):
            return {"x-kubernetes-int-or-string": True}
        return type_schema(base, where)
    if origin is Literal:
        return _literal_schema(get_args(annotation))
    if origin is list:
        (item,) = get_args(annotation)
        return {"type": "array", "items": type_schema(item, f"{where}[]")}
    if origin is dict:
        key, value = get_args(annotation)
        if key is not str:
            raise SchemaError(f"{where}: map keys must be strings")
        return {"type": "object", "additionalProperties": type_schema(value, f"{where}{{}}")}
    if isinstance(annotation, type):
        if issubclass(annotation, ApiModel):
            return object_schema(annotation, where)
        if issubclass(annotation, Enum):
            return _literal_schema(tuple(m.value for m in annotation))
        if issubclass(annotation, bool):
            return {"type": "boolean"}
        if issubclass(annotation, int):
            return {"type": "integer", "format": "int64"}
        if issubclass(annotation, float):
            return {"type": "number"}
        if issubclass(annotation, str):
            return {"type": "string"}
        if issubclass(annotation, datetime):
            return {"type": "string", "format": "date-time"}
    raise SchemaError(f"{where}: unsupported type {annotation!r}")


def _constraints(info: FieldInfo, schema: dict[str, Any]) -> None:
    kind = schema.get("type")
    for m in info.metadata:
        if isinstance(m, at.Ge):
            schema["minimum"] = m.ge
        elif isinstance(m, at.Le):
            schema["maximum"] = m.le
        elif isinstance(m, at.Gt):
            schema["minimum"], schema["exclusiveMinimum"] = m.gt, True
        elif isinstance(m, at.Lt):
            schema["maximum"], schema["exclusiveMaximum"] = m.lt, True
        elif isinstance(m, at.MinLen):
            schema["minItems" if kind == "array" else "minLength"] = m.min_length
        elif isinstance(m, at.MaxLen):
            schema["maxItems" if kind == "array" else "maxLength"] = m.max_length
        elif getattr(m, "pattern", None):
            schema["pattern"] = m.pattern


def _default(info: FieldInfo) -> Any:
    """The CRD default of a field, or PydanticUndefined for none."""
    if info.default_factory is not None:
        value = info.default_factory()  # type: ignore[call-arg]
        if isinstance(value, BaseModel):
            # An empty object, so the apiserver applies the nested defaults.
            return {}
        return PydanticUndefined
    if info.default is PydanticUndefined or info.default is None:
        return PydanticUndefined
    value = info.default
    return value.value if isinstance(value, Enum) else value


def _merge(schema: dict[str, Any], extra: dict[str, Any]) -> None:
    for key, value in extra.items():
        if key == "items":
            schema["items"].update(value)
        elif key == "x-kubernetes-validations":
            schema.setdefault(key, []).extend(value)
        else:
            schema[key] = value


def field_schema(info: FieldInfo, where: str) -> dict[str, Any]:
    if not info.description:
        raise SchemaError(f"{where} has no description (kubectl explain would show nothing)")
    # pydantic keeps a required field's Annotated[...] markers in info.metadata.
    if any(isinstance(m, IntOrString) for m in info.metadata):
        schema: dict[str, Any] = {"x-kubernetes-int-or-string": True}
    else:
        schema = type_schema(info.annotation, where)
    schema["description"] = info.description
    _constraints(info, schema)
    default = _default(info)
    if default is not PydanticUndefined:
        schema["default"] = default
    extra = info.json_schema_extra
    if isinstance(extra, dict):
        _merge(schema, extra)
    return schema


def _is_required(info: FieldInfo) -> bool:
    return info.default is PydanticUndefined and info.default_factory is None


def object_schema(model: type[ApiModel], where: str) -> dict[str, Any]:
    """The structural schema of one API model, with its CEL rules."""
    properties: dict[str, Any] = {}
    required: list[str] = []
    for name, info in model.model_fields.items():
        wire = info.alias or name
        properties[wire] = field_schema(info, f"{where}.{wire}")
        if _is_required(info):
            required.append(wire)
    schema: dict[str, Any] = {"type": "object", "properties": properties}
    if required:
        schema["required"] = required
    if model.cel_rules:
        schema["x-kubernetes-validations"] = [r.to_schema() for r in model.cel_rules]
    return schema


def assert_structural(schema: Any, where: str = "") -> None:
    """Refuse what a structural schema forbids and what this project forbids."""
    if isinstance(schema, dict):
        if schema.get("x-kubernetes-preserve-unknown-fields"):
            raise SchemaError(f"{where}: preserve-unknown-fields is not allowed in the spec")
        if "$ref" in schema or "anyOf" in schema or "oneOf" in schema:
            raise SchemaError(f"{where}: references and unions are not structural")
        for key, value in schema.items():
            assert_structural(value, f"{where}.{key}")
    elif isinstance(schema, list):
        for i, value in enumerate(schema):
            assert_structural(value, f"{where}[{i}]")
