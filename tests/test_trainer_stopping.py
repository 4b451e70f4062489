"""The graceful stop's decisions without a training run (the run itself:
tests/test_trainer_distributed.py and tests/e2e/test_faults.py)."""

from __future__ import annotations

import signal
import subprocess
import sys
import time
from pathlib import Path

from finetune_trainer import stopping
from finetune_trainer.stopping import StopRequest


def test_a_checkpoint_is_taken_only_when_it_fits_in_what_is_left() -> None:
    stop = StopRequest(grace_seconds=120)
    stop.at = time.monotonic() - 20  # SIGTERM came 20 s ago: 100 s left, 95 after the margin
    assert stop.checkpoint_fits(None)  # nothing measured yet: try
    assert stop.checkpoint_fits(60)  # 90 s with half again to spare
    assert not stop.checkpoint_fits(70)  # 105 s would not end in time
    assert StopRequest(grace_seconds=None).checkpoint_fits(10_000)  # nothing bounds it


def started(code: str) -> subprocess.Popen[str]:
    """A stand-in for a training process: just the signal path of stopping.py (a real
    run's stop is tested in tests/test_trainer_distributed.py), ready once it says so."""
    proc = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, text=True)
    assert proc.stdout is not None
    assert proc.stdout.readline().strip() == "ready"
    return proc


def test_sigterm_reaches_the_registered_training_processes(tmp_path: Path) -> None:
    # It registers itself, then polls (with a deadline) for the stop request.
    code = (
        "import signal, sys, time\n"
        "from pathlib import Path\n"
        "from finetune_trainer.stopping import StopRequest, register\n"
        "stop = StopRequest(120).install(); stop.arm()\n"
        f"register(Path({str(tmp_path)!r}))\n"
        "print('ready', flush=True)\n"
        "deadline = time.monotonic() + 60\n"
        "while not stop.requested and time.monotonic() < deadline: time.sleep(0.05)\n"
        "print('stopping' if stop.requested else 'timeout', flush=True)\n"
    )
    proc = started(code)
    assert stopping.registered(tmp_path) == [proc.pid]
    assert stopping.signal_workers(tmp_path, signal.SIGTERM)
    out, _ = proc.communicate(timeout=60)
    assert out.strip() == "stopping"
    assert proc.returncode == 0  # handled, not killed by the signal
    stopping.clear(tmp_path)
    assert stopping.registered(tmp_path) == []
    assert not stopping.signal_workers(tmp_path, signal.SIGTERM)


def test_before_the_first_step_sigterm_ends_the_process_at_once(tmp_path: Path) -> None:
    # Installed but not armed: SIGTERM must end it while it waits for any signal.
    code = (
        "import signal\n"
        "from finetune_trainer.stopping import StopRequest\n"
        "StopRequest(120).install()\n"
        "print('ready', flush=True)\n"
        "signal.pause()\n"
    )
    proc = started(code)
    proc.send_signal(signal.SIGTERM)
    assert proc.wait(timeout=30) == -signal.SIGTERM
