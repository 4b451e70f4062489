"""How a trainer ends: its exit code, and the one-line termination message.

The trainer writes `termination_message(code, reason)` to the pod's
terminationMessagePath; the operator reads the container's terminated state
back with `parse_termination_message` and shows the reason (not the code
twice) in the job's conditions and events.
"""

from __future__ import annotations

from enum import IntEnum
from typing import Final

REASON_MAX: Final = 1000


class ExitCode(IntEnum):
    """How a trainer process ends; the operator decides on retries by it."""

    SUCCESS = 0
    # Configuration or data the trainer cannot use: retrying cannot help.
    PERMANENT = 42
    # The trainer's disk (the pod's /scratch) filled up: retried, with a reason saying so.
    DISK_FULL = 74
    # Storage, network or peer failures: a new attempt may succeed.
    RETRYABLE = 75


def termination_message(code: int, reason: str) -> str:
    """`CODE REASON`: the first line of the reason, bounded in length."""
    line = (reason.strip().splitlines() or [""])[0][:REASON_MAX]
    return f"{int(code)} {line}\n"


def parse_termination_message(text: str) -> tuple[int | None, str]:
    """The code and reason of a termination message. Text in another form (the
    log tail Kubernetes falls back to) gives no code and its last line."""
    lines = text.strip().splitlines()
    if not lines:
        return None, ""
    code, _, reason = lines[0].partition(" ")
    if len(lines) == 1 and code.isdigit():
        return int(code), reason.strip()
    return None, lines[-1].strip()
