"""Hangs end: a frozen rank and a node that never starts each end the attempt within
spec.runPolicy's bounds, with a reason naming who stopped, and the job completes
once the fault is gone. Two machine ranks as separate `accelerate launch` process
trees on loopback, as in tests/test_trainer_distributed.py."""

from __future__ import annotations

import contextlib
import os
import re
import signal
import time
from pathlib import Path
from typing import Any

from finetune_api.exits import ExitCode
from trainer_support import mrpc_train_only, run_nodes, start_nodes, wait_nodes

STEPS = 300


def hang_spec(tiny_model: Path, tmp_path: Path, **policy: int) -> dict[str, Any]:
    return {
        "model": {"uri": f"file://{tiny_model}", "numLabels": 2},
        "dataset": mrpc_train_only(),
        "training": {"maxSteps": STEPS, "evalStrategy": "no", "loggingSteps": 10},
        "checkpoints": {"uri": f"file://{tmp_path}/ckpt", "saveSteps": 50},
        "resources": {"nodes": 2, "gpusPerNode": 1},
        "runPolicy": policy,
    }


def reason_of(work: Path, rank: int) -> str:
    return (work / f"node-{rank}" / "termination-log").read_text().strip()


def test_a_frozen_rank_ends_the_attempt_and_the_job_then_completes(
    tiny_model: Path, tmp_path: Path
) -> None:
    """Rank 0 frozen: rank 1 can tell only that rank 0 did not answer. (Rank 1 frozen,
    named by rank 0's roll call, runs on real pods: tests/e2e/test_faults.py.)"""
    from controlplane import wait_for

    frozen = 0

    deadline = 15
    spec = hang_spec(tiny_model, tmp_path, progressDeadlineSeconds=deadline)
    work = tmp_path / "attempt-1"
    nodes = start_nodes(spec, work)
    wait_for(lambda: f"step 60/{STEPS}" in nodes[0].output(), 300, "training to reach step 60")
    frozen_workers = nodes[frozen].workers()
    for pid in frozen_workers:
        os.kill(pid, signal.SIGSTOP)
    frozen_at = time.monotonic()
    alive = 1 - frozen
    try:
        # The living rank's deadline passes, it calls the roll (up to 30 s), and leaves.
        code = wait_nodes([nodes[alive]], deadline + 60)[0]
        took = time.monotonic() - frozen_at
    finally:
        # The restart deletes the frozen rank's pod: here, its process group is killed,
        # and its workers, which the launcher started in sessions of their own.
        os.killpg(nodes[frozen].proc.pid, signal.SIGKILL)
        for pid in frozen_workers:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        nodes[frozen].proc.wait()
    reason = reason_of(work, alive)
    print(f"\n{reason} ({took:.0f}s after the freeze)")
    assert code == ExitCode.RETRYABLE, nodes[alive].output()[-3000:]
    found = re.match(
        rf"75 Hang: no optimizer step for {deadline}s after step (\d+) \(rank {alive} was "
        r"computing the step: forward, backward, gradient all-reduce\); "
        rf"rank {frozen} \(node {frozen}\) did not answer; "
        r"spec.runPolicy.progressDeadlineSeconds bounds this",
        reason,
    )
    assert found, reason
    assert 60 <= int(found.group(1)) < STEPS
    assert deadline <= took < deadline + 45
    log = run_nodes(spec, tmp_path / "attempt-2")[0].output()
    assert f"resuming from file://{tmp_path}/ckpt/step-" in log, log
    assert f"done: {STEPS} steps" in log


def test_a_node_that_never_starts_ends_the_attempt_and_the_job_then_completes(
    tiny_model: Path, tmp_path: Path
) -> None:
    timeout = 10
    spec = hang_spec(tiny_model, tmp_path, rendezvousTimeoutSeconds=timeout)
    spec["training"]["maxSteps"] = 20
    work = tmp_path / "attempt-1"
    began = time.monotonic()
    lone = start_nodes(spec, work, ranks=[1])  # node 0's pod never starts
    code = wait_nodes(lone, timeout + 120)[0]
    took = time.monotonic() - began
    reason = reason_of(work, 1)
    print(f"\n{reason} ({took:.0f}s)")
    assert code == ExitCode.RETRYABLE, lone[0].output()[-3000:]
    assert re.match(
        r"75 Rendezvous: node 1 waited \d+s for the 2 nodes of this attempt at "
        r"127\.0\.0\.1:\d+ \(node 0\); a pod of the gang did not start or cannot reach "
        rf"node 0 \(spec.runPolicy.rendezvousTimeoutSeconds: {timeout}\)",
        reason,
    ), reason
    assert timeout <= took < timeout + 90
    log = run_nodes(spec, tmp_path / "attempt-2")[0].output()
    assert "done: 20 steps" in log
