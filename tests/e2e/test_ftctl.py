"""ftctl on a real job: `submit --watch` follows it to the end, `logs -f` streams rank 0's
log from its kubelet while it trains, `describe` shows how it ended."""

from __future__ import annotations

import subprocess
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import IO, Any

import pytest
import yaml
from controlplane import wait_for

from conftest import Cluster

FTCTL = str(Path(sys.executable).parent / "ftctl")


class Lines:
    """A process's output lines as they arrive, each with its arrival time."""

    def __init__(self, stream: IO[str]) -> None:
        self.lines: list[tuple[float, str]] = []
        self._reader = threading.Thread(target=self._read, args=(stream,), daemon=True)
        self._reader.start()

    def _read(self, stream: IO[str]) -> None:
        for line in stream:
            self.lines.append((time.monotonic(), line.rstrip("\n")))

    def text(self) -> str:
        self._reader.join(timeout=10)
        return "\n".join(line for _, line in self.lines)

    def first(self, fragment: str) -> float:
        return next(t for t, line in self.lines if fragment in line)


def ftctl(*args: str) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [FTCTL, *args], stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True
    )


@pytest.mark.timeout(2400)  # the trainer image may first be imported into both nodes
def test_ftctl_submit_watch_logs_and_describe_on_a_real_job(
    cluster: Cluster, namespace: str, mrpc_job: Callable[..., dict[str, Any]], tmp_path: Path
) -> None:
    job = mrpc_job("watched", numTrainEpochs=1)
    del job["spec"]["resources"]  # from the flags below
    job_file = tmp_path / "job.yaml"
    job_file.write_text(yaml.safe_dump(job))
    where = ["--kubeconfig", str(cluster.plane.kubeconfig_path), "-n", namespace]

    submit = ftctl("submit", "-f", str(job_file), "--gpus", "2", "--gpus-per-node", "1",
                   "--watch", *where)  # fmt: skip
    assert submit.stdout is not None
    watched = Lines(submit.stdout)
    # As soon as submit says the job exists, before its pods run: logs -f waits for them.
    wait_for(lambda: watched.lines, 60, "ftctl submit to create the job")
    logs = ftctl("logs", "-f", "watched", *where)
    assert logs.stdout is not None
    streamed = Lines(logs.stdout)
    try:
        assert submit.wait(timeout=900) == 0, watched.text()
        assert logs.wait(timeout=60) == 0, streamed.text()
    finally:
        for proc in (submit, logs):
            if proc.poll() is None:
                proc.kill()
    view, log = watched.text(), streamed.text()
    assert view.startswith("finetunejob.finetune.dev/watched created"), view
    assert "watched  Succeeded" in view, view
    frames = {line for line in view.splitlines() if "step " in line and "/" in line}
    assert len(frames) >= 3, view  # the live view moved, not only its last frame
    # The log came while training ran: its first step line well before the view's end.
    assert "parameters identical on all 2 ranks" in log, log
    assert streamed.first("| loss ") < watched.first("Succeeded") - 10, log

    described = subprocess.run(
        [FTCTL, "describe", "watched", *where], capture_output=True, text=True, check=True
    ).stdout
    assert "Phase:        Succeeded" in described
    assert "Resources:    2 nodes x 1 nvidia.com/gpu" in described
    assert "Checkpoint:   step " in described
    assert " at s3://ckpt/watched/step-" in described
    assert "Succeeded      True" in described, described
