"""Options every cluster command shares (like kubectl's), and error handling."""

from __future__ import annotations

import functools
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

import click

from ..client import ClientError, Cluster, Jobs, connect
from ..jobfile import JobFileError

F = TypeVar("F", bound=Callable[..., Any])


def job_file_option(required: bool, help_text: str) -> Callable[[F], F]:
    """-f/--filename: a FineTuneJob YAML, passed to the command as `path`."""
    return click.option(
        "-f",
        "--filename",
        "path",
        type=click.Path(dir_okay=False, path_type=Path),
        required=required,
        help=help_text,
    )


def cluster_options(fn: F) -> F:
    """--kubeconfig, --context, -n/--namespace; the command receives `jobs: Jobs`."""

    @click.option(
        "--kubeconfig",
        envvar="KUBECONFIG",
        help="Kubeconfig file (default: $KUBECONFIG, ~/.kube/config).",
    )
    @click.option("--context", help="Kubeconfig context (default: the current one).")
    @click.option("-n", "--namespace", help="Namespace (default: the context's).")
    @functools.wraps(fn)
    def wrapper(
        kubeconfig: str | None, context: str | None, namespace: str | None, **kw: Any
    ) -> Any:
        try:
            # Every file of a KUBECONFIG list, merged as kubectl merges them.
            cluster: Cluster | None = connect(kubeconfig, context, namespace)
        except ClientError as e:
            if not kw.get("dry_run"):
                raise click.ClickException(str(e)) from None
            cluster = None  # a client-side dry run needs no cluster, as with kubectl
        jobs = Jobs(cluster) if cluster else Jobs.offline(namespace or "default")
        try:
            return fn(jobs=jobs, **kw)
        except (ClientError, JobFileError) as e:
            raise click.ClickException(str(e)) from None

    return wrapper  # type: ignore[return-value]
