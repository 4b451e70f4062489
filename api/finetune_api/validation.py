"""Readable messages for validation errors of the API models."""

from __future__ import annotations

from pydantic import ValidationError

# The type of a model error whose message reads after the field's path, as the CRD's
# CEL messages do ("spec.resources.memory must be ...").
RULE_ERROR = "crd_rule"


def describe_validation_error(error: ValidationError, prefix: str) -> str:
    """One line per problem, each naming the field as the CRD does (spec.training.lr)."""
    lines = []
    for item in error.errors():
        path = ".".join(p for p in [prefix, *(str(p) for p in item["loc"])] if p)
        if item["type"] == "extra_forbidden":
            lines.append(f'unknown field "{path}"')
        elif item["type"] == RULE_ERROR:
            lines.append(f"{path} {item['msg']}")
        else:
            lines.append(f"{path}: {item['msg']}")
    return "; ".join(lines)
