"""Names of the Prometheus series a training pod serves (docs/metrics.md).

The trainer registers them; the operator reads rank 0's page into
status.progress; dashboards query them. Every series carries the `LABELS`.
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
    TRAIN_SAMPLES = "finetune_train_samples"
    TRAIN_TOKENS = "finetune_train_tokens"
    DATA_WAIT_SECONDS = "finetune_data_wait_seconds"
    EVAL_METRIC = "finetune_eval_metric"
    CHECKPOINT_SAVE_SECONDS = "finetune_checkpoint_save_seconds"
    CHECKPOINT_UPLOAD_SECONDS = "finetune_checkpoint_upload_seconds"
    CHECKPOINT_BYTES = "finetune_checkpoint_bytes"
    GPU_UTILIZATION = "finetune_gpu_utilization_ratio"
    GPU_MEMORY_USED = "finetune_gpu_memory_used_bytes"
