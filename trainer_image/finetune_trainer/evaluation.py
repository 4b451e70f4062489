"""Evaluation: accuracy, F1, precision and recall through the `evaluate` library.

The metric module ships with the trainer (metric_modules/classification), so
evaluation works without the Hugging Face Hub. Each rank scores its share of
the (small, materialised) eval set; rank 0 computes the metrics over all of
them and shares the result.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist

from finetune_api.types import FineTuneJobSpec

from .data import Example

METRIC_MODULE = Path(__file__).parent / "metric_modules" / "classification"


def compute(predictions: list[int], references: list[int], num_labels: int) -> dict[str, float]:
    import evaluate

    metric = evaluate.load(str(METRIC_MODULE))
    result = metric.compute(predictions=predictions, references=references, num_labels=num_labels)
    return {k: float(v) for k, v in (result or {}).items()}


class Evaluator:
    def __init__(
        self,
        acc: Any,
        spec: FineTuneJobSpec,
        model: Any,
        tokenizer: Any,
        examples: list[Example],
        batch_size: int,
    ) -> None:
        self.acc = acc
        self.batch_size = batch_size
        self.spec = spec
        self.model = model
        self.tokenizer = tokenizer
        self.examples = examples

    def run(self) -> dict[str, float]:
        model = self.model
        preds: list[int] = []
        labels: list[int] = []
        loss_sum = 0.0
        size = self.batch_size
        model.eval()
        with torch.no_grad():
            for i in range(0, len(self.examples), size):
                chunk = self.examples[i : i + size]
                columns = list(zip(*(e.texts for e in chunk), strict=True))
                enc = self.tokenizer(
                    *columns,
                    truncation=True,
                    padding=True,
                    max_length=self.spec.dataset.max_seq_length,
                    return_tensors="pt",
                ).to(self.acc.device)
                target = torch.tensor([e.label for e in chunk], device=self.acc.device)
                with self.acc.autocast():
                    logits = model(**enc).logits.float()
                loss_sum += float(
                    torch.nn.functional.cross_entropy(logits, target, reduction="sum").item()
                )
                preds += logits.argmax(-1).tolist()
                labels += target.tolist()
        model.train()
        parts: list[Any] = [(preds, labels, loss_sum)]
        if dist.is_initialized():
            parts = [None] * dist.get_world_size()
            dist.all_gather_object(parts, (preds, labels, loss_sum))
        result: list[Any] = [None]
        if self.acc.is_main_process:
            all_preds = [p for part in parts for p in part[0]]
            all_labels = [y for part in parts for y in part[1]]
            total_loss = sum(part[2] for part in parts)
            metrics = compute(all_preds, all_labels, self.spec.model.num_labels)
            metrics["loss"] = total_loss / max(1, len(all_labels))
            result = [metrics]
        if dist.is_initialized():
            dist.broadcast_object_list(result, src=0)
        return dict(result[0])
