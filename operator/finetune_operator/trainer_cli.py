"""The trainer, reached through its entry point (never imported).

`ftctl run --local` starts `finetune-trainer` as a pod would; `ftctl checkpoints`
and the local run's summary ask `finetune-trainer checkpoints` what is committed,
so the trainer's storage code (boto3, the Hub client) stays in the trainer.
"""

from __future__ import annotations

import importlib.util
import json
import os
import shutil
import subprocess
import sys
from collections.abc import Mapping
from pathlib import Path

from finetune_api.checkpoints import Committed
from finetune_api.env import TrainerEnv, without_gang
from finetune_api.types import FineTuneJobSpec

INSTALL_HINT = "pip install 'finetune-operator[trainer]'"


class TrainerError(Exception):
    """The trainer could not do what was asked; the message is its one-line reason."""


class TrainerMissing(TrainerError):
    """The trainer is not installed here."""


def available() -> bool:
    """The trainer and its stack (torch, transformers, accelerate) are installed."""
    return all(
        importlib.util.find_spec(m)
        for m in ("finetune_trainer", "torch", "transformers", "accelerate")
    )


def command() -> list[str]:
    found = shutil.which("finetune-trainer", path=str(Path(sys.executable).parent))
    return [found] if found else [sys.executable, "-m", "finetune_trainer.launch"]


def committed_checkpoints(
    spec: FineTuneJobSpec, base: Mapping[str, str] | None = None
) -> list[Committed]:
    """The job's committed checkpoints, oldest first, read with this machine's
    credentials (AWS_* variables or profile) by the trainer's own storage code."""
    if importlib.util.find_spec("finetune_trainer") is None:
        raise TrainerMissing(f"reading checkpoints needs the trainer extra: {INSTALL_HINT}")
    contract = TrainerEnv(job_spec=json.dumps(spec.to_wire(), sort_keys=True))
    env = {**without_gang(os.environ if base is None else base), **contract.to_env()}
    done = subprocess.run(
        [*command(), "checkpoints"], env=env, capture_output=True, text=True, check=False
    )
    if done.returncode != 0:
        lines = done.stderr.strip().splitlines() or [f"exit code {done.returncode}"]
        raise TrainerError(lines[-1].removeprefix("finetune-trainer: "))
    return [Committed.from_json(line) for line in done.stdout.splitlines() if line.startswith("{")]
