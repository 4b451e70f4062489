"""`ftctl list`: jobs as a table, like `kubectl get ftj`."""

from __future__ import annotations

import json

import click
import yaml

from finetune_api.types import FineTuneJob

from .. import views
from ..client import Jobs
from .common import cluster_options


@click.command("list")
@click.option("-A", "--all-namespaces", is_flag=True, help="Jobs of every namespace.")
@click.option(
    "-o",
    "--output",
    type=click.Choice(["table", "wide", "yaml", "json", "name"]),
    default="table",
    show_default=True,
)
@cluster_options
def list_(jobs: Jobs, all_namespaces: bool, output: str) -> None:
    """List FineTuneJobs: phase, nodes x GPUs, step/total, loss, age."""
    items = jobs.list_jobs(all_namespaces)
    if output == "json":
        click.echo(json.dumps({"apiVersion": "v1", "kind": "List", "items": items}, indent=2))
    elif output == "yaml":
        click.echo(
            yaml.safe_dump({"apiVersion": "v1", "kind": "List", "items": items}, sort_keys=False),
            nl=False,
        )
    elif output == "name":
        for j in items:
            click.echo(f"finetunejob.finetune.dev/{j['metadata']['name']}")
    elif not items:
        where = "any namespace" if all_namespaces else f"namespace {jobs.cluster.namespace}"
        click.echo(f"No FineTuneJobs in {where}.")
    else:
        typed = [FineTuneJob.from_wire(j) for j in items]
        click.echo(views.table(typed, wide=output == "wide", namespace=all_namespaces))
