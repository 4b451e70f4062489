"""How ftctl shows jobs: the `list` table (like `kubectl get`) and `describe`."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from finetune_api.names import ConditionStatus, ConditionType, Phase
from finetune_api.types import FineTuneJob, FineTuneJobSpec, FineTuneJobStatus, Progress


def age(timestamp: str | None, now: datetime | None = None) -> str:
    if not timestamp:
        return "<unknown>"
    then = datetime.fromisoformat(timestamp.replace("Z", "+00:00"))
    seconds = int(((now or datetime.now(UTC)) - then).total_seconds())
    for unit, size in (("d", 86400), ("h", 3600), ("m", 60)):
        if seconds >= size * (2 if unit != "m" else 1):
            return f"{seconds // size}{unit}"
    return f"{max(seconds, 0)}s"


def _status(job: FineTuneJob) -> FineTuneJobStatus:
    return job.status or FineTuneJobStatus()


def phase(job: FineTuneJob) -> str:
    return str(_status(job).phase or Phase.PENDING)


def _created(job: FineTuneJob) -> str | None:
    created = (job.metadata.model_extra or {}).get("creationTimestamp")
    return str(created) if created else None


def _shape(spec: FineTuneJobSpec) -> str:
    return f"{spec.resources.nodes}x{spec.resources.gpus_per_node}"


def row(job: FineTuneJob, wide: bool = False, namespace: bool = False) -> list[str]:
    st = _status(job)
    p = st.progress or Progress()
    cells = [
        job.metadata.name or "",
        phase(job),
        _shape(job.spec),
        f"{p.step}/{p.total_steps}" if p.total_steps else "-",
        f"{p.loss:.4f}" if p.loss is not None else "-",
        age(_created(job)),
    ]
    if namespace:
        cells.insert(0, job.metadata.namespace or "")
    if wide:
        eta = p.eta_seconds
        cells += [
            str(st.restart_count or 0),
            f"{eta // 60}m{eta % 60:02d}s" if eta is not None else "-",
            job.spec.model.uri,
        ]
    return cells


def table(jobs: list[FineTuneJob], wide: bool = False, namespace: bool = False) -> str:
    head = ["NAME", "PHASE", "NODESxGPUS", "STEP", "LOSS", "AGE"]
    if namespace:
        head.insert(0, "NAMESPACE")
    if wide:
        head += ["RESTARTS", "ETA", "MODEL"]
    rows = [head] + [row(j, wide, namespace) for j in jobs]
    widths = [max(len(r[i]) for r in rows) for i in range(len(head))]
    return "\n".join(
        "   ".join(cell.ljust(w) for cell, w in zip(r, widths, strict=True)).rstrip() for r in rows
    )


def _evals(p: Progress) -> str:
    return ", ".join(f"{k} {v:.4f}" for k, v in sorted((p.eval_metrics or {}).items()))


def describe(job: FineTuneJob, events: list[Any]) -> str:
    spec, st = job.spec, _status(job)
    res, train = spec.resources, spec.training
    lines = [
        f"Name:         {job.metadata.name}",
        f"Namespace:    {job.metadata.namespace}",
        f"Phase:        {phase(job)}",
        f"Model:        {spec.model.uri}",
        f"Dataset:      {spec.dataset.uri}",
        f"Resources:    {res.nodes} nodes x {res.gpus_per_node} {res.gpu_resource_name}",
        f"Training:     {train.num_train_epochs} epochs, lr {train.learning_rate}, "
        f"batch {train.per_device_train_batch_size} per GPU",
        f"Checkpoints:  {spec.checkpoints.uri}",
        f"Attempt:      {st.attempt or '-'} (restarts: {st.restart_count or 0}, "
        f"backoffLimit: {spec.run_policy.backoff_limit})",
        f"Suspended:    {str(spec.suspend).lower()}",
    ]
    if st.next_attempt_time is not None:
        lines.append(f"Next attempt: {st.next_attempt_time:%Y-%m-%dT%H:%M:%SZ} (backoff)")
    p = st.progress
    if p is not None:
        evals = _evals(p)
        lines.append(
            f"Progress:     step {p.step}/{p.total_steps}, epoch {p.epoch}, loss {p.loss}"
            + (f", eval: {evals}" if evals else "")
        )
    if st.last_checkpoint is not None:
        lines.append(f"Checkpoint:   step {st.last_checkpoint.step} at {st.last_checkpoint.uri}")
    lines.append("Conditions:")
    if not st.conditions:
        lines.append("  <none>")
    for cond in st.conditions or []:
        lines.append(f"  {cond.type:<14} {cond.status:<6} {cond.reason:<22} {cond.message}")
    lines.append("Events:")
    if not events:
        lines.append("  <none>")
    for ev in events:
        when = ev.last_timestamp or ev.event_time or ev.metadata.creation_timestamp
        stamp = when.isoformat() if when else ""
        lines.append(f"  {stamp:<26} {ev.type:<8} {ev.reason:<22} {ev.message}")
    return "\n".join(lines)


SPARKS = "▁▂▃▄▅▆▇█"
FINISHED = (Phase.SUCCEEDED, Phase.FAILED)


def sparkline(values: list[float], width: int = 40) -> str:
    values = values[-width:]
    if not values:
        return ""
    low, high = min(values), max(values)
    span = (high - low) or 1.0
    return "".join(
        SPARKS[min(len(SPARKS) - 1, int((v - low) / span * len(SPARKS)))] for v in values
    )


def duration(seconds: float) -> str:
    seconds = int(seconds)
    hours, rest = divmod(seconds, 3600)
    minutes, secs = divmod(rest, 60)
    return f"{hours}h{minutes:02d}m" if hours else f"{minutes}m{secs:02d}s"


def live(job: FineTuneJob, losses: list[float], width: int = 30, header: str | None = None) -> str:
    """One frame of `ftctl watch` (and of `ftctl run --local` in a terminal, which
    gives its own `header`)."""
    st, shown = _status(job), phase(job)
    res = job.spec.resources
    lines = [
        header
        or f"{job.metadata.name}  {shown}  attempt {st.attempt or 1}  "
        f"{res.nodes}x{res.gpus_per_node} GPUs  restarts {st.restart_count or 0}"
    ]
    p = st.progress or Progress()
    step, total = p.step or 0, p.total_steps or 0
    if total:
        done = min(1.0, step / total)
        filled = int(done * width)
        eta = p.eta_seconds
        lines.append(
            f"[{'█' * filled}{'░' * (width - filled)}] {done:4.0%}  step {step}/{total}"
            f"  epoch {p.epoch or 0:.2f}"
            + (f"  ETA {duration(eta)}" if eta is not None and shown not in FINISHED else "")
        )
        lines.append(
            (f"loss {p.loss:.4f}  " if p.loss is not None else "")
            + (f"{sparkline(losses)}  " if losses else "")
            + (f"lr {p.learning_rate:.2e}  " if p.learning_rate is not None else "")
            + (f"{p.samples_per_second:.1f} samples/s" if p.samples_per_second is not None else "")
        )
        if p.eval_metrics:
            lines.append(
                "eval: " + "  ".join(f"{k} {v:.4f}" for k, v in sorted(p.eval_metrics.items()))
            )
    else:
        lines.append("waiting for the trainer to report progress")
    if st.last_checkpoint is not None:
        lines.append(f"checkpoint: step {st.last_checkpoint.step} at {st.last_checkpoint.uri}")
    for cond in st.conditions or []:
        if cond.status == ConditionStatus.TRUE or cond.type == ConditionType.RUNNING:
            lines.append(f"{cond.type}={cond.status} ({cond.reason}): {cond.message}")
    return "\n".join(lines)
