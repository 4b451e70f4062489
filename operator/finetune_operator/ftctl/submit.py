"""`ftctl submit`: a FineTuneJob from flags, or from -f FILE with flags over it."""

from __future__ import annotations

import secrets
import sys
from pathlib import Path
from typing import Any

import click
import yaml

from .. import jobfile
from ..client import Jobs
from .common import cluster_options, job_file_option
from .watch import follow, wait_for_end


def _csv(value: str | None) -> list[str] | None:
    return [v.strip() for v in value.split(",") if v.strip()] if value else None


@click.command()
@job_file_option(required=False, help_text="A FineTuneJob YAML; flags override its fields.")
@click.option("--name", help="Job name (default: from the model, plus a random suffix).")
@click.option("--model", help="Model URI: hf://ORG/NAME, s3://BUCKET/PREFIX, file:///PATH.")
@click.option("--num-labels", type=int, help="Number of classes.")
@click.option("--dataset", help="Data URI: s3://BUCKET/PREFIX/, a glob, file:///PATH.")
@click.option("--text-columns", help="One or two text columns, comma-separated.")
@click.option("--label-column", help="The label column.")
@click.option(
    "--gpus", type=click.IntRange(1), help="Total GPUs, split into nodes of --gpus-per-node."
)
@click.option(
    "--gpus-per-node",
    type=click.IntRange(1),
    default=8,
    show_default=True,
    help="GPUs per node when splitting --gpus.",
)
@click.option(
    "--nodes", type=click.IntRange(1), help="Nodes (with --gpus-per-node), instead of --gpus."
)
@click.option("--epochs", type=float, help="numTrainEpochs.")
@click.option("--max-steps", type=int, help="maxSteps (overrides epochs).")
@click.option("--lr", type=float, help="learningRate.")
@click.option("--batch-size", type=int, help="perDeviceTrainBatchSize.")
@click.option(
    "--precision", type=click.Choice(["auto", "bf16", "fp16", "fp32"]), help="Mixed precision."
)
@click.option(
    "--checkpoint-uri", help="checkpoints.uri (default: s3://... required in the file or here)."
)
@click.option("--output-uri", help="output.uri (default: CHECKPOINTS/final).")
@click.option("--s3-secret", help="Secret with the S3 keys (spec.s3.credentialsSecret.name).")
@click.option("--image", help="Trainer image.")
@click.option(
    "--dry-run",
    is_flag=True,
    help="Print the job as it would be created, and stop (checked by the cluster when one "
    "is reachable; no kubeconfig needed).",
)
@click.option(
    "--watch", "follow_job", is_flag=True, help="Then show it live until it ends (ftctl watch)."
)
@click.option("--wait", is_flag=True, help="Then wait until it ends; exit 1 if it failed.")
@cluster_options
def submit(
    jobs: Jobs,
    path: Path | None,
    name: str | None,
    gpus: int | None,
    gpus_per_node: int,
    nodes: int | None,
    dry_run: bool,
    follow_job: bool,
    wait: bool,
    **flags: Any,
) -> None:
    """Create a FineTuneJob: `ftctl submit --gpus 8 --model hf://bert-base-uncased ...`."""
    base = jobfile.read(path) if path else None
    if gpus is not None and nodes is not None:
        raise click.UsageError("give --gpus or --nodes, not both")
    n, per = (
        jobfile.split_gpus(gpus, gpus_per_node)
        if gpus
        else (nodes, gpus_per_node if nodes else None)
    )
    overrides = {
        "metadata.name": name,
        "spec.model.uri": flags["model"],
        "spec.model.numLabels": flags["num_labels"],
        "spec.dataset.uri": flags["dataset"],
        "spec.dataset.textColumns": _csv(flags["text_columns"]),
        "spec.dataset.labelColumn": flags["label_column"],
        "spec.resources.nodes": n,
        "spec.resources.gpusPerNode": per,
        "spec.training.numTrainEpochs": flags["epochs"],
        "spec.training.maxSteps": flags["max_steps"],
        "spec.training.learningRate": flags["lr"],
        "spec.training.perDeviceTrainBatchSize": flags["batch_size"],
        "spec.training.precision": flags["precision"],
        "spec.checkpoints.uri": flags["checkpoint_uri"],
        "spec.output.uri": flags["output_uri"],
        "spec.s3.credentialsSecret.name": flags["s3_secret"],
        "spec.pod.image": flags["image"],
    }
    doc = jobfile.compose(base, overrides)
    if not doc["metadata"].get("name"):
        model = str(doc["spec"].get("model", {}).get("uri", "job")).rstrip("/").rsplit("/", 1)[-1]
        stem = "".join(ch if ch.isalnum() else "-" for ch in model.lower()).strip("-")[:40] or "job"
        doc["metadata"]["name"] = f"{stem}-{secrets.token_hex(3)}"
    source = str(path) if path else "the job"
    body = jobfile.manifest(jobfile.validate(doc, source), jobs.cluster.namespace)
    if dry_run:
        if not jobs.server_checks(body):
            click.echo(
                "# not checked by a cluster (none reachable): client-side checks only", err=True
            )
        click.echo(yaml.safe_dump(body, sort_keys=False), nl=False)
        return
    created = jobs.create(body)
    name = created["metadata"]["name"]
    click.echo(f"finetunejob.finetune.dev/{name} created in {jobs.cluster.namespace}")
    if follow_job and follow(jobs, name, 2.0, sys.stdout.isatty()) == "Failed":
        raise click.ClickException(f"{name} failed")
    if wait and not follow_job:
        phase = wait_for_end(jobs, name, 2.0)
        click.echo(f"finetunejob.finetune.dev/{name} {phase.lower()}")
        if phase == "Failed":
            raise click.ClickException(f"{name} failed; see: ftctl describe {name}")
