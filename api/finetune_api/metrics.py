"""Names of the Prometheus series a training pod and the operator serve
(docs/metrics.md).

The trainer registers `Metric`; the operator reads rank 0's page into
status.progress and registers `OperatorMetric`; the chart's dashboards query
both. Every trainer series carries the `LABELS`; no operator series names a job.
Counters are registered without their `_total` suffix (`total()` adds it, as
the Prometheus client does when it exposes them).
"""

from __future__ import annotations

from enum import StrEnum
from typing import Final

LABELS: Final = ("finetunejob", "namespace")


class Metric(StrEnum):
    TRAIN_LOSS = "finetune_train_loss"
    LEARNING_RATE = "finetune_learning_rate"
    GLOBAL_STEP = "finetune_global_step"
    TOTAL_STEPS = "finetune_total_steps"
    EPOCH = "finetune_epoch"
    SAMPLES_PER_SECOND = "finetune_samples_per_second"
    ETA_SECONDS = "finetune_eta_seconds"
    WORLD_SIZE = "finetune_world_size"
    ATTEMPT = "finetune_attempt"
    LAST_CHECKPOINT_STEP = "finetune_last_checkpoint_step"
    LAST_CHECKPOINT_TIME = "finetune_last_checkpoint_timestamp_seconds"
    TRAIN_SAMPLES = "finetune_train_samples"
    TRAIN_TOKENS = "finetune_train_tokens"
    DATA_WAIT_SECONDS = "finetune_data_wait_seconds"
    EVAL_METRIC = "finetune_eval_metric"
    CHECKPOINT_SAVE_SECONDS = "finetune_checkpoint_save_seconds"
    CHECKPOINT_UPLOAD_SECONDS = "finetune_checkpoint_upload_seconds"
    CHECKPOINT_BYTES = "finetune_checkpoint_bytes"
    GPU_UTILIZATION = "finetune_gpu_utilization_ratio"
    GPU_MEMORY_USED = "finetune_gpu_memory_used_bytes"


class OperatorMetric(StrEnum):
    JOBS = "finetune_operator_jobs"
    RECONCILE_SECONDS = "finetune_operator_reconcile_seconds"
    RECONCILES = "finetune_operator_reconciles"
    RECONCILE_ERRORS = "finetune_operator_reconcile_errors"
    GANG_RESTARTS = "finetune_operator_gang_restarts"
    PODS_CREATED = "finetune_operator_pods_created"
    QUEUE_DEPTH = "finetune_operator_queue_depth"
    WATCH_LAG = "finetune_operator_watch_lag_seconds"
    LEADER = "finetune_operator_leader"


def total(counter: str) -> str:
    """The exposed name of a counter registered as `counter`."""
    return f"{counter}_total"
