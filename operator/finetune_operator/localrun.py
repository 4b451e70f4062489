"""Running a FineTuneJob on this machine, without Kubernetes (`ftctl run --local`).

The job runs exactly as in a pod: the `finetune-trainer` launcher with the
environment contract of docs/trainer.md, as one node with N processes (gloo
on CPUs, NCCL on GPUs). Checkpoints go to the job's checkpoint URI (S3 or a
local folder) and metrics are served on localhost.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path

from . import constants as c
from .api.types import FineTuneJob


@dataclass(frozen=True)
class LocalRun:
    job: FineTuneJob
    procs: int
    work_dir: Path
    metrics_port: int
    device: str = "auto"

    @property
    def name(self) -> str:
        return self.job.metadata.name or "finetune"

    def env(self, base: Mapping[str, str], master_port: int) -> dict[str, str]:
        """The trainer's environment: the pod contract for one node of `procs` processes."""
        spec = self.job.spec
        env = dict(base)
        env.update(
            {
                c.Env.JOB_NAME: self.name,
                c.Env.JOB_NAMESPACE: "local",
                c.Env.JOB_SPEC: json.dumps(spec.to_wire(), sort_keys=True),
                c.Env.NUM_NODES: "1",
                c.Env.NODE_RANK: "0",
                c.Env.MASTER_ADDR: "127.0.0.1",
                c.Env.MASTER_PORT: str(master_port),
                c.Env.PROCS_PER_NODE: str(self.procs),
                c.Env.ATTEMPT: "1",
                c.Env.METRICS_PORT: str(self.metrics_port),
                c.Env.WORK_DIR: str(self.work_dir),
                c.Env.TERMINATION_LOG: str(self.work_dir / "termination-log"),
                c.Env.DEVICE: self.device,
            }
        )
        if spec.hub is not None and spec.hub.endpoint:
            # The token, if one is needed, is the user's own (HF_TOKEN or their login).
            env[c.Env.HF_ENDPOINT] = spec.hub.endpoint
        if all(
            not u.startswith(("hf://", "http"))
            for u in (spec.model.uri, spec.dataset.uri, spec.checkpoints.uri)
        ):
            # Nothing needs the Hugging Face Hub: never wait on it.
            env.setdefault("HF_HUB_OFFLINE", "1")
        return env


def has_trainer_stack() -> bool:
    """torch, transformers and accelerate are importable (the `trainer` extra)."""
    import importlib.util

    return all(importlib.util.find_spec(m) for m in ("torch", "transformers", "accelerate"))


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def trainer_command() -> list[str]:
    found = shutil.which("finetune-trainer", path=str(Path(sys.executable).parent))
    return [found] if found else [sys.executable, "-m", "finetune_trainer.launch"]


def run(local: LocalRun, echo: Callable[[str], None]) -> int:
    """Run the trainer to its end, passing each output line to echo; its exit code."""
    local.work_dir.mkdir(parents=True, exist_ok=True)
    env = local.env(os.environ, free_port())
    proc = subprocess.Popen(
        trainer_command(),
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
