"""The pod's entry point: turn the job into an `accelerate launch` command.

`accelerate_command` is a pure function from the configuration to (argv,
environment), tested without starting a process. The same command runs on
GPUs (NCCL) and on CPUs (gloo): accelerate's multi-process launcher starts
one worker per GPU, or by default a single worker on a node without GPUs
(config.default_procs).

Worker failures reach this process only as "a child failed"; workers write
their reason and exit code to the termination log (Kubernetes'
terminationMessagePath), and this process exits with that code.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Mapping

from finetune_api.env import TrainerEnv, variables
from finetune_api.exits import ExitCode

from . import stopping
from .config import TrainerConfig, from_env
from .errors import PermanentError, RetryableError, record_failure, recorded_failure
from .watchdog import Hang


def accelerate_command(
    cfg: TrainerConfig, env: Mapping[str, str]
) -> tuple[list[str], dict[str, str]]:
    """The `accelerate launch` argv and environment for this node."""
    # accelerate's launcher, without its report of a training process's failure.
    argv = [sys.executable, "-m", "finetune_trainer.accelerate_main"]
    if cfg.world_size > 1:
        argv += ["--multi_gpu"]
    if cfg.device == "cpu":
        argv += ["--cpu"] if cfg.world_size == 1 else []
    argv += [
        "--num_machines",
        str(cfg.num_nodes),
        "--machine_rank",
        str(cfg.node_rank),
        "--num_processes",
        str(cfg.world_size),
        "--main_process_ip",
        cfg.master_addr,
        "--main_process_port",
        str(cfg.master_port),
        "--mixed_precision",
        "no",  # chosen by the worker from spec.training.precision
        "--dynamo_backend",
        "no",
        "--num_cpu_threads_per_process",
        str(cfg.cpu_threads),
        "--rdzv_conf",
        f"timeout={cfg.spec.run_policy.rendezvous_timeout_seconds}",
        "--max_restarts",
        "0",
        "--monitor_interval",
        "1",
        "-m",
        "finetune_trainer.worker",
    ]
    out = dict(env)
    out[TrainerEnv.variable("termination_log")] = str(cfg.termination_log)
    out.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")
    out.setdefault("TOKENIZERS_PARALLELISM", "false")
    out.setdefault("PYTHONUNBUFFERED", "1")
    out["OMP_NUM_THREADS"] = str(cfg.cpu_threads)
    # The workers read what this process decided rather than probing again.
    out[TrainerEnv.variable("procs_per_node")] = str(cfg.procs_per_node)
    out[TrainerEnv.variable("cpu_threads")] = str(cfg.cpu_threads)
    if cfg.device == "cpu":
        out["CUDA_VISIBLE_DEVICES"] = ""
    return argv, out


USAGE = """usage: finetune-trainer [checkpoints]

Runs one node of a FineTuneJob: reads the job from the environment and starts
`accelerate launch` with one training process per GPU (one in all on a node
without GPUs, unless the job asks for more).
`finetune-trainer checkpoints` instead prints the job's committed checkpoints,
one JSON object a line (what `ftctl checkpoints` shows).

Environment (FT_JOB_SPEC or FT_JOB_SPEC_FILE is required):
{variables}

Exit codes: 0 done, {permanent} bad configuration or data (no retry helps), {disk_full} the
disk under FT_WORK_DIR is full, {retryable} or other: retryable. See docs/trainer.md."""


def usage() -> str:
    rows = [
        f"  {name:<22} {doc}" + ("" if default is None else f" [{default}]")
        for name, default, doc in variables()
    ]
    return USAGE.format(
        variables="\n".join(rows),
        permanent=int(ExitCode.PERMANENT),
        retryable=int(ExitCode.RETRYABLE),
        disk_full=int(ExitCode.DISK_FULL),
    )


def list_checkpoints() -> int:
    """Print the job's committed checkpoints, oldest first; a failure is one line."""
    from .checkpoint import CheckpointStore

    try:
        spec = from_env().spec
        store = CheckpointStore(spec.checkpoints.uri, spec.s3)
        store.store.check()
        committed = store.committed()
    except (PermanentError, RetryableError) as e:
        print(f"finetune-trainer: {e}", file=sys.stderr)
        return int(e.exit_code)
    for ckpt in committed:
        print(ckpt.to_json())
    return int(ExitCode.SUCCESS)


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if any(a in ("-h", "--help") for a in argv):
        print(usage())
        return 0
    if argv == ["checkpoints"]:
        return list_checkpoints()
    if argv:
        print(
            f"finetune-trainer: unexpected arguments {' '.join(argv)}; the job comes from "
            "the environment (see --help)",
            file=sys.stderr,
        )
        return int(ExitCode.PERMANENT)
    try:
        cfg = from_env()
    except PermanentError as e:
        print(f"finetune-trainer: {e}", file=sys.stderr)
        return record_failure(e)
    command, env = accelerate_command(cfg, os.environ)
    log_path = cfg.termination_log
    log_path.parent.mkdir(parents=True, exist_ok=True)
    log_path.write_text("")
    os.environ[TrainerEnv.variable("termination_log")] = str(log_path)
    stopping.clear(cfg.work_dir)
    child = subprocess.Popen(command, env=env)

    def forward(signum: int, _frame: object) -> None:
        # SIGTERM goes to the training processes themselves: they stop after their
        # step with a checkpoint (stopping.py); before they exist, to accelerate.
        if signum != signal.SIGTERM or not stopping.signal_workers(cfg.work_dir, signum):
            child.send_signal(signum)

    signal.signal(signal.SIGTERM, forward)
    signal.signal(signal.SIGINT, forward)
    started = time.monotonic()
    code = child.wait()
    if code == 0:
        return int(ExitCode.SUCCESS)
    failure = recorded_failure()
    if failure is None and not stopping.registered(cfg.work_dir):
        failure = _never_met(cfg, time.monotonic() - started)
    if failure is not None:
        print(f"finetune-trainer: {failure[1]}", file=sys.stderr)
        return failure[0]
    return int(ExitCode.RETRYABLE)


def _never_met(cfg: TrainerConfig, waited: float) -> tuple[int, str] | None:
    """A multi-node launch that failed after the rendezvous timeout with no training
    process started: the nodes never met. Recorded as the attempt's reason."""
    timeout = cfg.spec.run_policy.rendezvous_timeout_seconds
    if cfg.num_nodes < 2 or waited < timeout * 0.9:
        return None
    error = Hang(
        f"Rendezvous: node {cfg.node_rank} waited {waited:.0f}s for the {cfg.num_nodes} nodes "
        f"of this attempt at {cfg.master_addr}:{cfg.master_port} (node 0); a pod of the gang "
        "did not start or cannot reach node 0 (spec.runPolicy.rendezvousTimeoutSeconds: "
        f"{timeout})"
    )
    return record_failure(error), str(error)


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
