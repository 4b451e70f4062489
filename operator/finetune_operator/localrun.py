"""Running a FineTuneJob on this machine, without Kubernetes (`ftctl run --local`).

The job runs exactly as in a pod: the `finetune-trainer` launcher with the
environment contract of docs/trainer.md, as one node holding all of the job's
processes (one per GPU, NCCL; without GPUs one process on every core, gloo
between several when asked for). Checkpoints go to the job's checkpoint URI (S3 or a
local folder) and metrics are served on localhost.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path

from finetune_api.env import TrainerEnv, without_gang
from finetune_api.types import FineTuneJob

from . import trainer_cli


@dataclass(frozen=True)
class LocalRun:
    job: FineTuneJob
    procs: int | None  # None: the trainer's default (one per GPU, else one in all)
    work_dir: Path
    metrics_port: int
    device: str = "auto"

    @property
    def name(self) -> str:
        return self.job.metadata.name or "finetune"

    def env(self, base: Mapping[str, str], master_port: int) -> dict[str, str]:
        """The trainer's environment: the pod contract for the job folded into one node."""
        spec = self.job.spec
        # Nothing needs the Hugging Face Hub: never wait on it.
        offline = all(
            not u.startswith(("hf://", "http"))
            for u in (spec.model.uri, spec.dataset.uri, spec.checkpoints.uri)
        )
        contract = TrainerEnv(
            job_name=self.name,
            namespace="local",
            job_spec=json.dumps(spec.to_wire(), sort_keys=True),
            num_nodes=1,
            node_rank=0,
            master_addr="127.0.0.1",
            master_port=master_port,
            procs_per_node=self.procs,
            attempt=1,
            metrics_port=self.metrics_port,
            work_dir=self.work_dir,
            termination_log=self.work_dir / "termination-log",
            device=self.device,
            # The token, if one is needed, is the user's own (HF_TOKEN or their login).
            hf_endpoint=spec.hub.endpoint if spec.hub is not None else None,
            hf_hub_offline=offline,
        )
        # The user's own settings (HF_HOME, AWS_*, ...) stay; the gang's are ours.
        return {**without_gang(base), **contract.to_env()}


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def run(local: LocalRun, echo: Callable[[str], None]) -> int:
    """Run the trainer to its end, passing each output line to echo; its exit code."""
    local.work_dir.mkdir(parents=True, exist_ok=True)
    env = local.env(os.environ, free_port())
    proc = subprocess.Popen(
        trainer_cli.command(),
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        bufsize=1,
        start_new_session=True,
    )

    def forward(signum: int, _frame: object) -> None:
        os.killpg(proc.pid, signum)

    previous = {s: signal.signal(s, forward) for s in (signal.SIGINT, signal.SIGTERM)}
    try:
        assert proc.stdout is not None
        for line in proc.stdout:
            echo(line.rstrip("\n"))
        return proc.wait()
    finally:
        for s, handler in previous.items():
            signal.signal(s, handler)
