"""The base model of every API type, and how CEL rules are attached to it.

Python attributes are snake_case; the wire format (YAML, JSON, the CRD) is the
camelCase Kubernetes users expect. Unknown fields are refused, as the
apiserver's strict field validation does.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, ClassVar

from pydantic import BaseModel, ConfigDict
from pydantic.alias_generators import to_camel


@dataclass(frozen=True)
class Rule:
    """A CEL validation rule, rendered as one `x-kubernetes-validations` entry.

    `message` is what `kubectl apply` prints: it names the field and says what
    would fix it. `field_path` (relative to the object the rule sits on) makes
    the apiserver report the error at that field rather than at the object.
    """

    rule: str
    message: str
    field_path: str | None = None
    reason: str | None = None

    def to_schema(self) -> dict[str, str]:
        out = {"rule": self.rule, "message": self.message}
        if self.field_path:
            out["fieldPath"] = self.field_path
        if self.reason:
            out["reason"] = self.reason
        return out


def cel(*rules: Rule) -> dict[str, Any]:
    """Schema extras that attach CEL rules to a field."""
    return {"x-kubernetes-validations": [r.to_schema() for r in rules]}


def immutable(path: str) -> Rule:
    return Rule(
        "self == oldSelf",
        f"{path} is immutable: create a new FineTuneJob to change it",
        reason="FieldValueForbidden",
    )


class ApiModel(BaseModel):
    """Base of every FineTuneJob API type."""

    model_config = ConfigDict(
        alias_generator=to_camel,
        populate_by_name=True,
        extra="forbid",
        use_attribute_docstrings=False,
    )

    # CEL rules on the object itself (cross-field checks).
    cel_rules: ClassVar[tuple[Rule, ...]] = ()

    def to_wire(self) -> dict[str, Any]:
        """The camelCase dictionary sent to the apiserver (unset fields left out)."""
        return self.model_dump(by_alias=True, exclude_none=True, mode="json")
