"""`ftctl delete NAME`."""

from __future__ import annotations

import click

from ..client import Jobs
from .common import cluster_options


@click.command()
@click.argument("names", nargs=-1, required=True)
@cluster_options
def delete(jobs: Jobs, names: tuple[str, ...]) -> None:
    """Delete FineTuneJobs (their pods and Service go with them; checkpoints stay in S3)."""
    for name in names:
        jobs.delete(name)
        click.echo(f"finetunejob.finetune.dev/{name} deleted")
