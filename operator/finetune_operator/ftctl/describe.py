"""`ftctl describe NAME`: spec summary, progress, conditions and events."""

from __future__ import annotations

import click

from .. import views
from ..client import Jobs
from .common import cluster_options


@click.command()
@click.argument("name")
@cluster_options
def describe(jobs: Jobs, name: str) -> None:
    """Show one FineTuneJob in detail."""
    click.echo(views.describe(jobs.job(name), jobs.events(name)))
