"""A killed test run's folder (its lock names a process that no longer runs) is
removed by the next run, with the servers it left running; a running or finished
run's folder is not touched."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from controlplane import wait_for

from killed_runs import remove_killed_runs


def test_a_killed_runs_folder_and_servers_go(tmp_path: Path) -> None:
    current, killed, running, finished = (tmp_path / f"pytest-{n}" for n in (4, 1, 2, 3))
    for folder in (current, killed, running, finished):
        (folder / "minio0").mkdir(parents=True)
        (folder / "minio0" / "blob").write_bytes(b"x" * 1000)
    gone = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"],
                          capture_output=True, text=True, check=True)  # fmt: skip
    (killed / ".lock").write_text(gone.stdout.strip())
    (running / ".lock").write_text(str(os.getpid()))
    # A server the killed run started, still serving from its folder.
    server = subprocess.Popen(
        [sys.executable, "-c", "import time; time.sleep(600)", str(killed / "minio0")]
    )
    # Its parent wakes from exec before the kernel has set the new command line.
    cmdline = Path(f"/proc/{server.pid}/cmdline")
    wait_for(lambda: str(killed).encode() in cmdline.read_bytes(), 30, "the server to start")
    try:
        assert remove_killed_runs(current) == [killed]
        wait_for(lambda: server.poll() is not None, 30, "the killed run's server to stop")
    finally:
        server.kill()
        server.wait()
    assert not killed.exists()
    for kept in (current, running, finished):
        assert (kept / "minio0" / "blob").stat().st_size == 1000
