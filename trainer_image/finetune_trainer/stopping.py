"""Graceful stop: SIGTERM (suspend, preemption, pod deletion, a drained node) ends
training at the next step boundary with a committed checkpoint, so a resumed job
continues from that step rather than from the last periodic checkpoint.

Kubernetes sends SIGTERM to the pod's first process, the launcher; it passes the
signal to the training processes, which registered themselves in the work dir
(`register`), rather than to accelerate's launcher, which would end them after
its own 30 seconds. Ranks agree on stopping through the reduction every step
already makes (train.Run._train_step), so all of them stop after the same step.
The pod is killed its grace period (TrainerEnv.grace_seconds) after the signal:
the checkpoint is taken only when the last one took clearly less than what is left.
"""

from __future__ import annotations

import contextlib
import os
import signal
import time
from pathlib import Path
from typing import Any

from .errors import RetryableError

# Kept free of the grace period for the exit itself.
MARGIN_SECONDS = 5.0


class GracefulStop(RetryableError):
    """Training stopped on SIGTERM; a new attempt resumes where it stopped."""

    plain = True


def workers_dir(work_dir: Path) -> Path:
    return work_dir / "workers"


def register(work_dir: Path) -> None:
    """Name this training process as one the launcher passes SIGTERM to."""
    folder = workers_dir(work_dir)
    folder.mkdir(parents=True, exist_ok=True)
    (folder / str(os.getpid())).touch()


def registered(work_dir: Path) -> list[int]:
    folder = workers_dir(work_dir)
    if not folder.is_dir():
        return []
    return [int(p.name) for p in folder.iterdir() if p.name.isdigit()]


def clear(work_dir: Path) -> None:
    for pid in registered(work_dir):
        with contextlib.suppress(OSError):
            (workers_dir(work_dir) / str(pid)).unlink()


def signal_workers(work_dir: Path, signum: int) -> bool:
    """Send `signum` to the registered training processes; False when there are none."""
    sent = False
    for pid in registered(work_dir):
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.kill(pid, signum)
            sent = True
    return sent


class StopRequest:
    """Set by SIGTERM; read by the training loop after each step."""

    def __init__(self, grace_seconds: float | None) -> None:
        self.grace_seconds = grace_seconds
        self.at: float | None = None
        self.armed = False

    def install(self) -> StopRequest:
        signal.signal(signal.SIGTERM, self._on_signal)
        return self

    def arm(self, armed: bool = True) -> None:
        """Only between the first and the last step is there a step to stop after;
        before and after, SIGTERM ends the process at once, as by default."""
        self.armed = armed

    def _on_signal(self, signum: int, _frame: Any) -> None:
        if not self.armed:
            signal.signal(signum, signal.SIG_DFL)
            os.kill(os.getpid(), signum)
            return
        if self.at is None:
            self.at = time.monotonic()

    @property
    def requested(self) -> bool:
        return self.at is not None

    def seconds_left(self) -> float | None:
        if self.at is None or self.grace_seconds is None:
            return None
        return self.grace_seconds - (time.monotonic() - self.at)

    def checkpoint_fits(self, last_checkpoint_seconds: float | None) -> bool:
        """Whether a checkpoint can be committed before the pod is killed: yes when
        nothing bounds the time or nothing measured one yet (try), else when the
        last one, with half again to spare, ends before the margin."""
        left = self.seconds_left()
        if left is None or last_checkpoint_seconds is None:
            return True
        return last_checkpoint_seconds * 1.5 < left - MARGIN_SECONDS
