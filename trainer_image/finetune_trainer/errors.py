"""Failures the trainer reports, and the exit code each maps to.

A `PermanentError` is a configuration or data problem that no retry fixes
(a missing column, a label out of range, a model that needs remote code): the
pod exits with ExitCode.PERMANENT and one line saying why. Anything else is
treated as retryable by the operator.
"""

from __future__ import annotations

import contextlib
import os
from pathlib import Path

from finetune_operator.constants import TERMINATION_LOG_PATH, Env, ExitCode


class PermanentError(Exception):
    """Bad configuration or data: retrying the job cannot help."""

    exit_code = ExitCode.PERMANENT


class RetryableError(Exception):
    """An infrastructure failure (storage, network): a new attempt may succeed."""

    exit_code = ExitCode.RETRYABLE


def termination_log() -> Path:
    return Path(os.environ.get(Env.TERMINATION_LOG, TERMINATION_LOG_PATH))


def record_failure(error: BaseException) -> int:
    """Write the one-line reason where Kubernetes (and the launcher) finds it."""
    code = int(getattr(error, "exit_code", ExitCode.RETRYABLE))
    text = str(error) if isinstance(error, PermanentError) else f"{type(error).__name__}: {error}"
    line = (text.splitlines() or [""])[0][:1000]
    previous = recorded_failure()
    if previous and previous[0] == ExitCode.PERMANENT and code != ExitCode.PERMANENT:
        # Peers fail too once one rank stops; keep the root cause.
        return code
    with contextlib.suppress(OSError):
        termination_log().write_text(f"{code} {line}\n")
    return code


def recorded_failure() -> tuple[int, str] | None:
    """The exit code and reason a worker recorded, if any."""
    try:
        text = termination_log().read_text().strip()
    except OSError:
        return None
    code, _, reason = text.partition(" ")
    return (int(code), reason) if code.isdigit() else None
