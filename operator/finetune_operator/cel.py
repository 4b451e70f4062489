"""The CRD's CEL rules, checked on this side before anything is sent.

The rules come from the same generated schema the apiserver enforces
(crd.open_api_schema), and are evaluated with cel-python, so a client sees the
very message `kubectl apply` would show. Transition rules (those that use
oldSelf, such as immutability) need the stored object and are left to the
server.
"""

from __future__ import annotations

import functools
from typing import Any

import celpy
from celpy.adapter import json_to_cel

from finetune_api.crd import open_api_schema


@functools.cache
def _program(rule: str) -> Any:
    env = celpy.Environment()
    return env.program(env.compile(rule))


def _typed(schema: dict[str, Any], value: Any) -> Any:
    """The value as the apiserver types it: `number` fields are doubles even when whole."""
    kind = schema.get("type")
    if kind == "number" and isinstance(value, int | float) and not isinstance(value, bool):
        return float(value)
    if kind == "object" and isinstance(value, dict):
        props = schema.get("properties", {})
        extra = schema.get("additionalProperties")
        return {
            k: _typed(props.get(k) or (extra if isinstance(extra, dict) else {}), v)
            for k, v in value.items()
        }
    if kind == "array" and isinstance(value, list):
        return [_typed(schema.get("items", {}), v) for v in value]
    return value


def _walk(schema: dict[str, Any], value: Any, errors: list[str]) -> None:
    if value is None:
        return
    for rule in schema.get("x-kubernetes-validations", []):
        if "oldSelf" in rule["rule"]:
            continue
        try:
            ok = _program(rule["rule"]).evaluate({"self": json_to_cel(value)})
        except Exception:  # noqa: S112 - a rule that cannot be evaluated here is the server's
            continue
        if not bool(ok):
            errors.append(str(rule.get("message") or rule["rule"]))
    if isinstance(value, dict):
        props = schema.get("properties", {})
        extra = schema.get("additionalProperties")
        for key, sub in value.items():
            child = props.get(key) or (extra if isinstance(extra, dict) else None)
            if child is not None:
                _walk(child, sub, errors)
    elif isinstance(value, list):
        for item in value:
            _walk(schema.get("items", {}), item, errors)


def violations(doc: dict[str, Any]) -> list[str]:
    """The messages of every CEL rule a FineTuneJob document breaks."""
    schema = open_api_schema()
    errors: list[str] = []
    _walk(schema, _typed(schema, doc), errors)
    return errors
