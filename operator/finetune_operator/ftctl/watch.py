"""`ftctl watch NAME`: a live view of a job until it ends."""

from __future__ import annotations

import sys
import time

import click

from .. import views
from ..client import Jobs
from .common import cluster_options

CLEAR = "\x1b[H\x1b[J"


def follow(jobs: Jobs, name: str, interval: float, tty: bool) -> str:
    """Show the job until it succeeds or fails; its final phase."""
    losses: list[float] = []
    last_step: int | None = None
    shown = ""
    while True:
        job = jobs.job(name)
        progress = job.status.progress if job.status else None
        if progress is not None and progress.step != last_step and progress.loss is not None:
            losses.append(progress.loss)
            last_step = progress.step
        frame = views.live(job, losses)
        if frame != shown:
            click.echo(CLEAR + frame if tty else frame + "\n")
            shown = frame
        phase = views.phase(job)
        if phase in views.FINISHED:
            return phase
        time.sleep(interval)  # the refresh period of the view


def wait_for_end(jobs: Jobs, name: str, interval: float) -> str:
    """Poll quietly until the job succeeds or fails; its final phase."""
    while True:
        phase = views.phase(jobs.job(name))
        if phase in views.FINISHED:
            return phase
        time.sleep(interval)  # the polling period


@click.command()
@click.argument("name")
@click.option(
    "--interval",
    type=click.FloatRange(0.1),
    default=2.0,
    show_default=True,
    help="Seconds between refreshes.",
)
@cluster_options
def watch(jobs: Jobs, name: str, interval: float) -> None:
    """Follow a job live: progress bar with ETA, loss and its sparkline, eval metrics and
    conditions, until it succeeds (exit 0) or fails (exit 1)."""
    phase = follow(jobs, name, interval, sys.stdout.isatty())
    if phase == "Failed":
        raise click.ClickException(f"{name} failed")
