"""Prometheus metrics of a training pod (docs/metrics.md lists every one).

Served by each node's first process on FT_METRICS_PORT (9420 by default);
the names are `finetune_api.metrics`. Every series carries the `finetunejob`
and `namespace` labels; nothing else
about the job (and never a credential) becomes a label.
"""

from __future__ import annotations

import contextlib
import logging
import math

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

from finetune_api.metrics import LABELS
from finetune_api.metrics import Metric as M

from .scrapes import Scrapes, serve

log = logging.getLogger("finetune")

SAVE_BUCKETS = (0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300, 600)


class TrainerMetrics:
    def __init__(self, job: str, namespace: str) -> None:
        self.registry = CollectorRegistry()
        r = self.registry
        lv = (job, namespace)

        def gauge(name: str, doc: str) -> Gauge:
            return Gauge(name, doc, LABELS, registry=r)

        def counter(name: str, doc: str) -> Counter:
            return Counter(name, doc, LABELS, registry=r)

        self.train_loss = gauge(M.TRAIN_LOSS, "Training loss of the last step.").labels(*lv)
        self.learning_rate = gauge(M.LEARNING_RATE, "Current learning rate.").labels(*lv)
        self.global_step = gauge(M.GLOBAL_STEP, "Optimizer steps completed.").labels(*lv)
        self.total_steps = gauge(M.TOTAL_STEPS, "Optimizer steps planned.").labels(*lv)
        self.epoch = gauge(M.EPOCH, "Epochs completed (fractional).").labels(*lv)
        self.samples_per_second = gauge(
            M.SAMPLES_PER_SECOND, "Training samples per second over all ranks."
        ).labels(*lv)
        self.eta_seconds = gauge(M.ETA_SECONDS, "Estimated seconds left.").labels(*lv)
        self.world_size = gauge(M.WORLD_SIZE, "Training processes in the job.").labels(*lv)
        self.attempt = gauge(M.ATTEMPT, "Attempt number of this run.").labels(*lv)
        self.last_checkpoint_step = gauge(
            M.LAST_CHECKPOINT_STEP, "Step of the newest committed checkpoint."
        ).labels(*lv)
        self.last_checkpoint_time = gauge(
            M.LAST_CHECKPOINT_TIME, "Unix time the newest checkpoint was committed."
        ).labels(*lv)
        self.samples = counter(M.TRAIN_SAMPLES, "Training samples consumed by all ranks.").labels(
            *lv
        )
        self.tokens = counter(
            M.TRAIN_TOKENS, "Training tokens (non-padding) consumed by all ranks."
        ).labels(*lv)
        self.data_wait = counter(
            M.DATA_WAIT_SECONDS, "Time this process waited for training data."
        ).labels(*lv)
        self.eval_metric = Gauge(
            M.EVAL_METRIC, "Latest evaluation metrics.", (*LABELS, "metric"), registry=r
        )
        self.checkpoint_save_seconds = Histogram(
            M.CHECKPOINT_SAVE_SECONDS,
            "Time training paused to snapshot a checkpoint into memory.",
            LABELS,
            buckets=SAVE_BUCKETS,
            registry=r,
        ).labels(*lv)
        self.checkpoint_upload_seconds = Histogram(
            M.CHECKPOINT_UPLOAD_SECONDS,
            "Time to upload and commit a checkpoint (in the background).",
            LABELS,
            buckets=SAVE_BUCKETS,
            registry=r,
        ).labels(*lv)
        self.checkpoint_bytes = counter(M.CHECKPOINT_BYTES, "Checkpoint bytes uploaded.").labels(
            *lv
        )
        self.gpu_utilization = Gauge(
            M.GPU_UTILIZATION,
            "GPU utilisation, 0 to 1.",
            (*LABELS, "gpu"),
            registry=r,
        )
        self.gpu_memory = Gauge(
            M.GPU_MEMORY_USED,
            "GPU memory allocated by training.",
            (*LABELS, "gpu"),
            registry=r,
        )
        self._lv = lv
        self.scrapes = Scrapes()
        # Unknown until the first step: NaN (a gap on a graph), not a 0 read as a value.
        for unknown in (self.train_loss, self.samples_per_second, self.eta_seconds):
            unknown.set(math.nan)

    def set_eval(self, metrics: dict[str, float]) -> None:
        for name, value in metrics.items():
            self.eval_metric.labels(*self._lv, name).set(value)

    def sample_gpus(self) -> None:
        import torch

        if not torch.cuda.is_available():
            return
        for i in range(torch.cuda.device_count()):
            self.gpu_memory.labels(*self._lv, str(i)).set(torch.cuda.memory_allocated(i))
            # Utilisation needs NVML; memory is reported either way.
            with contextlib.suppress(Exception):
                self.gpu_utilization.labels(*self._lv, str(i)).set(
                    torch.cuda.utilization(i) / 100.0
                )

    def serve(self, port: int) -> None:
        serve(self.registry, port, self.scrapes)

    def wait_for_final_reads(self) -> None:
        """Once training is over: let each regular reader (Prometheus, the operator)
        read the final values before the pod, and its series, go (scrapes.py)."""
        missed = self.scrapes.wait_for_final_reads()
        if missed:
            log.info("metrics: no final read came from %s", ", ".join(missed))
