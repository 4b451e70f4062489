"""Training progress, read from the rank-0 pod's Prometheus endpoint.

Pods never write the FineTuneJob (they have no API token); the operator reads
the trainer's metrics (docs/metrics.md) and copies them into status.progress.
"""

from __future__ import annotations

import math
import urllib.request
from dataclasses import dataclass
from datetime import datetime

from prometheus_client.parser import text_string_to_metric_families

from finetune_api.metrics import Metric as M
from finetune_api.types import Progress

FIELDS: dict[str, str] = {
    M.GLOBAL_STEP: "step",
    M.TOTAL_STEPS: "total_steps",
    M.EPOCH: "epoch",
    M.TRAIN_LOSS: "loss",
    M.LEARNING_RATE: "learning_rate",
    M.SAMPLES_PER_SECOND: "samples_per_second",
    M.ETA_SECONDS: "eta_seconds",
}
INTEGER = {"step", "total_steps", "eta_seconds"}


@dataclass(frozen=True)
class Reading:
    progress: Progress
    checkpoint_step: int | None


def parse(text: str, now: datetime) -> Reading | None:
    """Progress from one scrape; None before the trainer has planned its steps."""
    values: dict[str, float | int] = {}
    evals: dict[str, float] = {}
    checkpoint: int | None = None
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if math.isnan(sample.value):  # not known yet (e.g. the loss before step 1)
                continue
            if sample.name in FIELDS:
                name = FIELDS[sample.name]
                values[name] = int(sample.value) if name in INTEGER else round(sample.value, 6)
            elif sample.name == M.EVAL_METRIC:
                evals[sample.labels["metric"]] = round(sample.value, 6)
            elif sample.name == M.LAST_CHECKPOINT_STEP:
                checkpoint = int(sample.value) or None
    if not values.get("total_steps"):
        return None
    progress = Progress.model_validate({**values, "eval_metrics": evals or None, "updated_at": now})
    return Reading(progress, checkpoint)


def scrape(address: str, port: int, now: datetime, timeout: float = 2.0) -> Reading | None:
    """Read the metrics of one pod; None when it does not answer (yet)."""
    try:
        with urllib.request.urlopen(
            f"http://{address}:{port}/metrics", timeout=timeout
        ) as response:
            text = response.read().decode()
    except OSError:
        return None
    return parse(text, now)
