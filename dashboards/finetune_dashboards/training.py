"""The *Training job* dashboard: one FineTuneJob's loss, evaluation, speed, checkpoints
and GPUs, picked by the `namespace` and `job` variables."""

from __future__ import annotations

from grafana_foundation_sdk.builders import dashboard as dash
from grafana_foundation_sdk.models.dashboard import Dashboard

from finetune_api.metrics import Metric as M
from finetune_api.metrics import total

from .panels import Q, by_step, datasource_variable, label_variable, series, single

UID = "finetune-training-job"
JOB = 'namespace="$namespace", finetunejob="$job"'
# The pods of the job (DCGM exporter labels its series with the pod it serves).
PODS = 'namespace="$namespace", pod=~"$job-node-[0-9]+"'
NO_GPU = "no GPU metrics"


def job(metric: str, extra: str = "") -> str:
    """A job-wide series: every node serves the same value, so one line per job."""
    return f"max by (finetunejob) ({metric}{{{JOB}{extra}}})"


def per_second(counter: str) -> str:
    return f"max by (finetunejob) (rate({total(counter)}{{{JOB}}}[$__rate_interval]))"


def mean_of(histogram: str) -> str:
    """Mean duration of the observations in the window."""
    window = f"{{{JOB}}}[$__rate_interval]"
    return (
        f"max by (finetunejob) (rate({histogram}_sum{window}))"
        f" / max by (finetunejob) (rate({histogram}_count{window}))"
    )


LOSS = Q(job(M.TRAIN_LOSS), "train loss")
EVAL_LOSS = Q(job(M.EVAL_METRIC, ', metric="loss"'), "eval loss")
STEP = Q(job(M.GLOBAL_STEP), "step")


def training_row(d: dash.Dashboard) -> None:
    d.with_row(dash.Row("Loss and evaluation"))
    d.with_panel(series("Loss over time", "none", LOSS, EVAL_LOSS))
    d.with_panel(
        by_step(
            "Loss over steps",
            STEP,
            LOSS,
            EVAL_LOSS,
            description="Train and eval loss against the optimizer step.",
        )
    )
    d.with_panel(
        series(
            "Evaluation metrics",
            "percentunit",
            Q(f'max by (metric) ({M.EVAL_METRIC}{{{JOB}, metric!="loss"}})', "{{metric}}"),
            description="Accuracy, F1, precision and recall of the latest evaluation.",
        )
    )
    d.with_panel(series("Learning rate", "none", Q(job(M.LEARNING_RATE), "learning rate")))


def progress_row(d: dash.Dashboard) -> None:
    d.with_row(dash.Row("Progress and speed"))
    d.with_panel(single("Step", "none", STEP))
    d.with_panel(single("Steps planned", "none", Q(job(M.TOTAL_STEPS), "total")))
    d.with_panel(single("Time left", "s", Q(job(M.ETA_SECONDS), "ETA")))
    d.with_panel(single("Attempt", "none", Q(job(M.ATTEMPT), "attempt")))
    d.with_panel(
        single(
            "Restarts",
            "none",
            Q(job(M.ATTEMPT) + " - 1", "restarts"),
            description="Gang restarts so far (the attempt number less one).",
        )
    )
    d.with_panel(single("Processes", "none", Q(job(M.WORLD_SIZE), "processes")))
    d.with_panel(
        series(
            "Throughput",
            "none",
            Q(job(M.SAMPLES_PER_SECOND), "samples/s"),
            Q(per_second(M.TRAIN_TOKENS), "real tokens/s"),
            description="Samples and non-padding tokens per second, all ranks together.",
        )
    )
    d.with_panel(
        series(
            "Data wait",
            "percentunit",
            Q(f"rate({total(M.DATA_WAIT_SECONDS)}{{{JOB}}}[$__rate_interval])", "{{pod}}"),
            description="Share of the time each node's first process waited for its next batch.",
        )
    )


def checkpoint_row(d: dash.Dashboard) -> None:
    d.with_row(dash.Row("Checkpoints"))
    d.with_panel(
        series(
            "Checkpoint duration",
            "s",
            Q(mean_of(M.CHECKPOINT_SAVE_SECONDS), "training paused"),
            Q(mean_of(M.CHECKPOINT_UPLOAD_SECONDS), "upload and commit"),
            description="Mean time per checkpoint: the pause of training for the in-memory "
            "snapshot, and the background upload to storage.",
            span=8,
        )
    )
    d.with_panel(
        series(
            "Checkpoint bytes uploaded",
            "bytes",
            Q(job(total(M.CHECKPOINT_BYTES)), "bytes"),
            span=8,
        )
    )
    d.with_panel(single("Last checkpoint step", "none", Q(job(M.LAST_CHECKPOINT_STEP), "step")))
    d.with_panel(
        single(
            "Last checkpoint age",
            "s",
            Q(f"time() - {job(M.LAST_CHECKPOINT_TIME)}", "age"),
            description="Seconds since the newest checkpoint was committed.",
        )
    )


def gpu_row(d: dash.Dashboard) -> None:
    d.with_row(dash.Row("GPUs"))
    d.with_panel(
        series(
            "GPU utilisation",
            "percentunit",
            Q(f"max by (pod, gpu) ({M.GPU_UTILIZATION}{{{JOB}}})", "{{pod}} GPU {{gpu}}"),
            Q(f"max by (pod, gpu) (DCGM_FI_DEV_GPU_UTIL{{{PODS}}}) / 100", "{{pod}} GPU {{gpu}}"),
            description="From the trainer (NVML) and, where it runs, the DCGM exporter.",
            empty=NO_GPU,
        )
    )
    d.with_panel(
        series(
            "GPU memory",
            "bytes",
            Q(f"max by (pod, gpu) ({M.GPU_MEMORY_USED}{{{JOB}}})", "{{pod}} GPU {{gpu}} (torch)"),
            Q(
                f"max by (pod, gpu) (DCGM_FI_DEV_FB_USED{{{PODS}}}) * 1048576",
                "{{pod}} GPU {{gpu}} (device)",
            ),
            description="Memory allocated by training, and the device's used memory (DCGM).",
            empty=NO_GPU,
        )
    )


def build() -> Dashboard:
    d = (
        dash.Dashboard("FineTuneJob: training")
        .uid(UID)
        .tags(["finetune"])
        .description("One FineTuneJob: loss, evaluation, speed, checkpoints and GPUs.")
        .refresh("30s")
        .time("now-6h", "now")
        .with_variable(datasource_variable())
        .with_variable(
            label_variable("namespace", "Namespace", f"label_values({M.GLOBAL_STEP}, namespace)")
        )
        .with_variable(
            label_variable(
                "job",
                "FineTuneJob",
                f'label_values({M.GLOBAL_STEP}{{namespace="$namespace"}}, finetunejob)',
            )
        )
    )
    for row in (training_row, progress_row, checkpoint_row, gpu_row):
        row(d)
    return d.build()
