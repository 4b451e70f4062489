"""`ftctl checkpoints NAME`: the job's committed checkpoints, read from its storage."""

from __future__ import annotations

import click

from finetune_api.checkpoints import checkpoint_uri
from finetune_api.types import S3Spec

from .. import trainer_cli
from ..client import Jobs
from .common import cluster_options


@click.command()
@click.argument("name")
@cluster_options
def checkpoints(jobs: Jobs, name: str) -> None:
    """List a job's committed checkpoints (step, size, time, metrics).

    Reads spec.checkpoints.uri with the job's S3 endpoint settings and this
    machine's credentials (AWS_ACCESS_KEY_ID / AWS_SECRET_ACCESS_KEY or an AWS
    profile), as the aws CLI would. Only checkpoints whose manifest was written
    are listed: an upload cut short never counts.
    """
    spec = jobs.job(name).spec
    # A command answers now: botocore's own few retries, not the trainer's outage budget.
    s3 = (spec.s3 or S3Spec()).model_copy(update={"retry_seconds": 0})
    try:
        committed = trainer_cli.committed_checkpoints(spec.model_copy(update={"s3": s3}))
    except trainer_cli.TrainerMissing as e:
        raise click.ClickException(str(e)) from None
    except trainer_cli.TrainerError as e:
        uri = spec.checkpoints.uri.rstrip("/")
        raise click.ClickException(str(e) if uri in str(e) else f"cannot read {uri}: {e}") from None
    if not committed:
        click.echo(f"No committed checkpoints under {spec.checkpoints.uri} yet.")
        return
    rows = [["STEP", "SIZE", "CREATED", "METRICS", "URI"]]
    for ckpt in committed:
        metrics = " ".join(f"{k}={v:.4f}" for k, v in sorted(ckpt.metrics.items())) or "-"
        created = str(ckpt.manifest.get("created", ""))[:19].replace("T", " ")
        uri = checkpoint_uri(spec.checkpoints.uri, ckpt.step)
        rows.append([str(ckpt.step), _size(ckpt.size), created, metrics, uri])
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    for r in rows:
        click.echo("   ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)).rstrip())


def _size(n: float) -> str:
    for unit in ("B", "KiB", "MiB", "GiB"):
        if n < 1024 or unit == "GiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return f"{n:.1f} GiB"
