"""The `ftctl` command group."""

from __future__ import annotations

import click

from .checkpoints import checkpoints
from .completion import completion
from .delete import delete
from .describe import describe
from .list import list_
from .logs import logs
from .run import run
from .submit import submit
from .suspend import resume, suspend
from .version import version
from .watch import watch

COMMANDS = (
    submit,
    list_,
    describe,
    watch,
    logs,
    checkpoints,
    suspend,
    resume,
    delete,
    run,
    version,
    completion,
)


@click.group(
    context_settings={"help_option_names": ["-h", "--help"], "auto_envvar_prefix": "FTCTL"}
)
def cli() -> None:
    """Fine-tune Hugging Face models with FineTuneJobs, on Kubernetes or on this machine.

    Every option can also be set as FTCTL_<COMMAND>_<OPTION>, e.g. FTCTL_SUBMIT_GPUS=16.
    """


for command in COMMANDS:
    cli.add_command(command)


def main() -> None:
    cli()
