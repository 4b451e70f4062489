"""`ftctl suspend NAME` and `ftctl resume NAME`."""

from __future__ import annotations

import click

from ..client import Jobs
from .common import cluster_options


@click.command()
@click.argument("name")
@cluster_options
def suspend(jobs: Jobs, name: str) -> None:
    """Stop a job's pods and keep the job; `resume` continues from its last checkpoint."""
    jobs.set_suspend(name, True)
    click.echo(f"finetunejob.finetune.dev/{name} suspended")


@click.command()
@click.argument("name")
@cluster_options
def resume(jobs: Jobs, name: str) -> None:
    """Bring a suspended job's pods back; training resumes from its last checkpoint."""
    jobs.set_suspend(name, False)
    click.echo(f"finetunejob.finetune.dev/{name} resumed")
