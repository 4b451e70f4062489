"""How ftctl shows jobs: the `list` table (like `kubectl get`) and `describe`."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any


def age(timestamp: str | None, now: datetime | None = None) -> str:
    if not timestamp:
        return "<unknown>"
    then = datetime.fromisoformat(timestamp.replace("Z", "+00:00"))
    seconds = int(((now or datetime.now(UTC)) - then).total_seconds())
    for unit, size in (("d", 86400), ("h", 3600), ("m", 60)):
        if seconds >= size * (2 if unit != "m" else 1):
            return f"{seconds // size}{unit}"
    return f"{max(seconds, 0)}s"


def row(job: dict[str, Any], wide: bool = False, namespace: bool = False) -> list[str]:
    spec, status = job.get("spec", {}), job.get("status") or {}
    res = spec.get("resources", {})
    progress = status.get("progress") or {}
    step, total = progress.get("step"), progress.get("totalSteps")
    loss = progress.get("loss")
    cells = [
        job["metadata"]["name"],
        status.get("phase", "Pending"),
        f"{res.get('nodes', 1)}x{res.get('gpusPerNode', 1)}",
        f"{step}/{total}" if total else "-",
        f"{loss:.4f}" if isinstance(loss, int | float) else "-",
        age(job["metadata"].get("creationTimestamp")),
    ]
    if namespace:
        cells.insert(0, job["metadata"]["namespace"])
    if wide:
        eta = progress.get("etaSeconds")
        cells += [
            str(status.get("restartCount", 0)),
            f"{eta // 60}m{eta % 60:02d}s" if isinstance(eta, int) else "-",
            spec.get("model", {}).get("uri", ""),
        ]
    return cells


def table(jobs: list[dict[str, Any]], wide: bool = False, namespace: bool = False) -> str:
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


def describe(job: dict[str, Any], events: list[Any]) -> str:
    meta, spec, status = job["metadata"], job.get("spec", {}), job.get("status") or {}
    res, train = spec.get("resources", {}), spec.get("training", {})
    lines = [
        f"Name:         {meta['name']}",
        f"Namespace:    {meta['namespace']}",
        f"Phase:        {status.get('phase', 'Pending')}",
        f"Model:        {spec.get('model', {}).get('uri', '')}",
        f"Dataset:      {spec.get('dataset', {}).get('uri', '')}",
        f"Resources:    {res.get('nodes', 1)} nodes x {res.get('gpusPerNode', 1)} "
        f"{res.get('gpuResourceName', 'nvidia.com/gpu')}",
        f"Training:     {train.get('numTrainEpochs', '')} epochs, "
        f"lr {train.get('learningRate', '')}, "
        f"batch {train.get('perDeviceTrainBatchSize', '')} per GPU",
        f"Checkpoints:  {spec.get('checkpoints', {}).get('uri', '')}",
        f"Attempt:      {status.get('attempt', '-')} (restarts: {status.get('restartCount', 0)}, "
        f"backoffLimit: {spec.get('runPolicy', {}).get('backoffLimit', 3)})",
        f"Suspended:    {str(spec.get('suspend', False)).lower()}",
    ]
    progress = status.get("progress") or {}
    if progress:
        evals = ", ".join(
            f"{k} {v:.4f}" for k, v in sorted((progress.get("evalMetrics") or {}).items())
        )
        lines.append(
            f"Progress:     step {progress.get('step')}/{progress.get('totalSteps')}, "
            f"epoch {progress.get('epoch')}, loss {progress.get('loss')}"
            + (f", eval: {evals}" if evals else "")
        )
    last = status.get("lastCheckpoint")
    if last:
        lines.append(f"Checkpoint:   step {last['step']} at {last['uri']}")
    lines.append("Conditions:")
    conds = status.get("conditions") or []
    if not conds:
        lines.append("  <none>")
    for cond in conds:
        lines.append(
            f"  {cond['type']:<14} {cond['status']:<6} {cond.get('reason', ''):<22} "
            f"{cond.get('message', '')}"
        )
    lines.append("Events:")
    if not events:
        lines.append("  <none>")
    for ev in events:
        when = ev.last_timestamp or ev.event_time or ev.metadata.creation_timestamp
        stamp = when.isoformat() if when else ""
        lines.append(f"  {stamp:<26} {ev.type:<8} {ev.reason:<22} {ev.message}")
    return "\n".join(lines)


SPARKS = "▁▂▃▄▅▆▇█"
FINISHED = ("Succeeded", "Failed")


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


def live(job: dict[str, Any], losses: list[float], width: int = 30) -> str:
    """One frame of `ftctl watch`."""
    meta, spec, status = job["metadata"], job.get("spec", {}), job.get("status") or {}
    res = spec.get("resources", {})
    phase = status.get("phase", "Pending")
    lines = [
        f"{meta['name']}  {phase}  attempt {status.get('attempt', 1)}  "
        f"{res.get('nodes', 1)}x{res.get('gpusPerNode', 1)} GPUs  "
        f"restarts {status.get('restartCount', 0)}"
    ]
    p = status.get("progress") or {}
    step, total = p.get("step") or 0, p.get("totalSteps") or 0
    if total:
        done = min(1.0, step / total)
        filled = int(done * width)
        eta = p.get("etaSeconds")
        lines.append(
            f"[{'█' * filled}{'░' * (width - filled)}] {done:4.0%}  step {step}/{total}"
            f"  epoch {p.get('epoch', 0):.2f}"
            + (f"  ETA {duration(eta)}" if isinstance(eta, int) and phase not in FINISHED else "")
        )
        loss = p.get("loss")
        lr = p.get("learningRate")
        speed = p.get("samplesPerSecond")
        lines.append(
            (f"loss {loss:.4f}  " if isinstance(loss, int | float) else "")
            + (f"{sparkline(losses)}  " if losses else "")
            + (f"lr {lr:.2e}  " if isinstance(lr, int | float) else "")
            + (f"{speed:.1f} samples/s" if isinstance(speed, int | float) else "")
        )
        evals = p.get("evalMetrics") or {}
        if evals:
            lines.append("eval: " + "  ".join(f"{k} {v:.4f}" for k, v in sorted(evals.items())))
    else:
        lines.append("waiting for the trainer to report progress")
    last = status.get("lastCheckpoint")
    if last:
        lines.append(f"checkpoint: step {last['step']} at {last['uri']}")
    for cond in status.get("conditions") or []:
        if cond["status"] == "True" or cond["type"] == "Running":
            lines.append(
                f"{cond['type']}={cond['status']} ({cond.get('reason', '')}): "
                f"{cond.get('message', '')}"
            )
    return "\n".join(lines)
