"""Failures the trainer reports, and the exit code each maps to.

A `PermanentError` is a configuration or data problem that no retry fixes
(a missing column, a label out of range, a model that needs remote code): the
pod exits with ExitCode.PERMANENT and one line saying why. Anything else is
treated as retryable by the operator.
"""

from __future__ import annotations

import contextlib
import errno
import shutil
from collections.abc import Mapping
from pathlib import Path

from finetune_api.env import TrainerEnv
from finetune_api.exits import ExitCode, parse_termination_message, termination_message
from finetune_api.names import TERMINATION_LOG_PATH


class PermanentError(Exception):
    """Bad configuration or data: retrying the job cannot help."""

    exit_code = ExitCode.PERMANENT


class RetryableError(Exception):
    """An infrastructure failure (storage, network): a new attempt may succeed."""

    exit_code = ExitCode.RETRYABLE


class StorageUnavailable(RetryableError):
    """Storage stayed unreachable or overloaded for the whole retry budget."""

    plain = True


class DiskFullError(RetryableError):
    """The work dir's filesystem is full: a new attempt (perhaps on another node) may do."""

    exit_code = ExitCode.DISK_FULL
    plain = True


# Below this much free space a failed write is taken for a full disk: torch's own
# writer reports ENOSPC only as "file write failed".
NEARLY_FULL_BYTES = 1 << 20


def disk_full(error: BaseException, work_dir: Path) -> DiskFullError | None:
    """The error as a DiskFullError when the disk under `work_dir` is what failed:
    ENOSPC anywhere in its chain, or a nearly full disk."""
    seen: BaseException | None = error
    found = False
    while seen is not None and not found:
        found = (isinstance(seen, OSError) and seen.errno == errno.ENOSPC) or (
            "No space left on device" in str(seen)
        )
        seen = seen.__cause__ or seen.__context__
    try:
        free = shutil.disk_usage(work_dir).free
    except OSError:
        free = None
    if not found and (free is None or free >= NEARLY_FULL_BYTES):
        return None
    left = "" if free is None else f", {free / (1 << 20):.1f} MiB free"
    return DiskFullError(
        f"DiskFull: no space left under {work_dir}{left} ({type(error).__name__}: {error}); "
        "in a pod this is the /scratch volume on the node's disk: free the node's disk or "
        "run on a node with more"
    )


def termination_log(env: Mapping[str, str] | None = None) -> Path | None:
    """Where a failure's reason goes: FT_TERMINATION_LOG, else the file Kubernetes
    creates at terminationMessagePath in a pod; outside a pod, nowhere."""
    configured: Path | None = TrainerEnv.read("termination_log", env)
    if configured is not None:
        return configured
    pod_file = Path(TERMINATION_LOG_PATH)
    return pod_file if pod_file.exists() else None


def record_failure(error: BaseException) -> int:
    """Write the one-line reason where Kubernetes (and the launcher) finds it."""
    code = int(getattr(error, "exit_code", ExitCode.RETRYABLE))
    # Errors that say it all themselves; others get their type as a prefix.
    plain = isinstance(error, PermanentError) or getattr(error, "plain", False)
    text = str(error) if plain else f"{type(error).__name__}: {error}"
    previous = recorded_failure()
    if previous and previous[0] == ExitCode.PERMANENT and code != ExitCode.PERMANENT:
        # Peers fail too once one rank stops; keep the root cause.
        return code
    path = termination_log()
    if path is not None:
        with contextlib.suppress(OSError):
            path.write_text(termination_message(code, text))
    return code


def recorded_failure() -> tuple[int, str] | None:
    """The exit code and reason a worker recorded, if any."""
    path = termination_log()
    if path is None:
        return None
    try:
        text = path.read_text().strip()
    except OSError:
        return None
    code, reason = parse_termination_message(text)
    return None if code is None else (code, reason)
