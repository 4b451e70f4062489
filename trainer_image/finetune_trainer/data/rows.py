"""From a row (a dict of column values) to an Example: the job's columns and labels."""

from __future__ import annotations

from typing import Any

from finetune_api.types import FineTuneJobSpec

from ..errors import PermanentError
from .units import Example


class Columns:
    """The text and label columns a job reads, and how its labels map to classes."""

    def __init__(self, spec: FineTuneJobSpec) -> None:
        self.text = list(spec.dataset.text_columns)
        self.label = spec.dataset.label_column
        self.label_names = list(spec.model.label_names or [])
        self.num_labels = spec.model.num_labels

    @property
    def wanted(self) -> list[str]:
        return list(dict.fromkeys([*self.text, self.label]))

    def check(self, columns: list[str], where: str) -> None:
        missing = [c for c in [*self.text, self.label] if c not in columns]
        if missing:
            field_name = "labelColumn" if missing == [self.label] else "textColumns"
            raise PermanentError(
                f"spec.dataset.{field_name}: column {missing[0]!r} not found in {where}; "
                f"the data has columns: {', '.join(columns)}"
            )

    def example(self, row: dict[str, Any], where: str) -> Example | None:
        """The row's example; None for a row with an empty text (the recipe skips them)."""
        try:
            texts = tuple(row[c] for c in self.text)
            raw = row[self.label]
        except KeyError:
            self.check(list(row), where)
            raise
        if any(t is None or str(t).strip() == "" for t in texts):
            return None
        return Example(tuple(str(t) for t in texts), self.label_of(raw, where))

    def label_of(self, raw: Any, where: str) -> int:
        if isinstance(raw, str) and self.label_names:
            if raw in self.label_names:
                return self.label_names.index(raw)
            if not raw.strip().lstrip("-").isdigit():
                raise PermanentError(
                    f"spec.model.labelNames: label {raw!r} in {where} is not one of "
                    f"{', '.join(map(repr, self.label_names))}; add it to labelNames "
                    "(and numLabels) or fix the data"
                )
        try:
            label = int(raw)
            if isinstance(raw, float) and raw != label:
                raise ValueError
        except (TypeError, ValueError):
            raise PermanentError(
                f"spec.dataset.labelColumn: label {raw!r} in {where} is not an integer; "
                "for text labels, list them in spec.model.labelNames"
            ) from None
        if not 0 <= label < self.num_labels:
            raise PermanentError(
                f"spec.model.numLabels: label {label} in {where} is outside 0.."
                f"{self.num_labels - 1}; raise numLabels or fix the data"
            )
        return label
