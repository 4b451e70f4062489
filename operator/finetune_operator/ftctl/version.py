"""`ftctl version`."""

from __future__ import annotations

from importlib.metadata import version as dist_version

import click

from finetune_api import names as c


@click.command()
def version() -> None:
    """Print ftctl's version and the API version it speaks."""
    click.echo(f"ftctl {dist_version('finetune-operator')} ({c.API_VERSION})")
