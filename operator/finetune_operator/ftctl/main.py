"""The `ftctl` command group."""

from __future__ import annotations

import click

from .run import run
from .version import version


@click.group(
    context_settings={"help_option_names": ["-h", "--help"], "auto_envvar_prefix": "FTCTL"}
)
def cli() -> None:
    """Fine-tune Hugging Face models with FineTuneJobs, on Kubernetes or on this machine.

    Every option can also be set as FTCTL_<COMMAND>_<OPTION>, e.g. FTCTL_RUN_PROCS=2.
    """


cli.add_command(run)
cli.add_command(version)


def main() -> None:
    cli()
