"""The folders of earlier test runs that were killed (a machine restart, a CI
timeout, SIGKILL). pytest keeps such a folder for three days, as its lock names a
process that no longer runs, and with it gigabytes of model copies, MinIO data and
node folders; the servers it started may still run, and its nodes' mounts pin its
folder. Each session removes them first."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

from node import nodes


def remove_killed_runs(current: Path) -> list[Path]:
    """Remove the sibling pytest folders of `current` whose run was killed: their
    processes and node mounts first. A folder that still holds a mount stays.
    Returns the folders removed."""
    removed = []
    for other in sorted(current.parent.glob("pytest-*")):
        if other == current or other.is_symlink() or not _killed(other):
            continue
        mine = str(other) + "/"
        if any(m.startswith(mine) for m in nodes.host.mounts()):
            nodes.sweep_stale()
        for pid, cmd in nodes.host.processes():
            if mine in cmd and pid != os.getpid():
                nodes.host.stop(pid)
        if not any(m.startswith(mine) for m in nodes.host.mounts()):
            shutil.rmtree(other, ignore_errors=True)
            removed.append(other)
    return removed


def _killed(folder: Path) -> bool:
    """pytest removes a run's lock when the run ends; one that names a process that
    no longer runs was left by a killed run."""
    lock = folder / ".lock"
    if not lock.is_file():
        return False
    pid = lock.read_text().strip()
    if not pid.isdigit():
        return False
    try:
        os.kill(int(pid), 0)  # PermissionError: another user's process, so running
    except ProcessLookupError:
        return True
    except PermissionError:
        pass
    return False
