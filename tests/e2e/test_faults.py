"""Faults on real pods: a training process killed by SIGKILL and a deleted pod. Each time
the operator starts the gang again as a new attempt, which resumes from the newest
committed checkpoint, and the job still ends with exactly its planned steps. A restarted
operator is not a fault of the job: its gang trains on. Over its memory limit, a trainer
is killed by the kernel, and the job says so. A suspended job's pods commit the step they
reached, and the resumed job continues from it. A frozen rank is named by its peer when
the progress deadline passes, and the restarted gang completes."""

from __future__ import annotations

import os
import signal
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from controlplane import wait_for

from conftest import Cluster
from e2e.support import attempt_running, ended, operator_pod, pod_failures, resumed_at
from finetune_api import names as c
from operator_support import PodWatch
from trainer_support import committed_steps


def training_process(namespace: str, job: str, node: int) -> int | None:
    """The host PID of the training process (not its launcher) of one node of a job,
    found by the environment the pod gave it."""
    wanted = {
        f"FT_JOB_NAMESPACE={namespace}".encode(),
        f"FT_JOB_NAME={job}".encode(),
        f"FT_NODE_RANK={node}".encode(),
    }
    for proc in Path("/proc").iterdir():
        if not proc.name.isdigit():
            continue
        try:
            env = set((proc / "environ").read_bytes().split(b"\0"))
        except OSError:
            continue
        # accelerate's launcher gives each training process its LOCAL_RANK.
        if wanted <= env and any(v.startswith(b"LOCAL_RANK=") for v in env):
            return int(proc.name)
    return None


@pytest.mark.timeout(2400)  # the trainer image may first be imported into both nodes
def test_a_killed_trainer_and_a_deleted_pod_each_restart_the_gang_from_its_checkpoint(
    cluster: Cluster,
    namespace: str,
    mrpc_job: Callable[..., dict[str, Any]],
    operator: dict[str, str],
    pod_watch: PodWatch,
) -> None:
    job = mrpc_job("faulty", numTrainEpochs=2)
    job["spec"]["checkpoints"]["saveSteps"] = 20
    cluster.create_job(namespace, job)

    # 1. SIGKILL node 1's training process, as the kernel or a crash would.
    before = attempt_running(cluster, namespace, "faulty", 1)["lastCheckpoint"]["step"]
    pid = wait_for(lambda: training_process(namespace, "faulty", 1), 60, "the training process")
    os.kill(pid, signal.SIGKILL)
    status = attempt_running(cluster, namespace, "faulty", 2)
    assert status["restartCount"] == 1
    assert resumed_at(cluster, namespace, "faulty") >= before  # never an earlier one

    # 2. Delete a pod of the running gang.
    before = status["lastCheckpoint"]["step"]
    cluster.core.delete_namespaced_pod(c.node_name("faulty", 1), namespace)
    status = attempt_running(cluster, namespace, "faulty", 3)
    assert status["restartCount"] == 2
    assert resumed_at(cluster, namespace, "faulty") >= before

    # 3. Restart the operator (its Deployment makes a new pod): not a fault of the job,
    # whose gang trains on in the same attempt.
    old = operator_pod(cluster, operator["namespace"]).metadata.name
    cluster.core.delete_namespaced_pod(old, operator["namespace"])

    def replaced() -> bool:
        pods = cluster.core.list_namespaced_pod(operator["namespace"]).items
        return any(
            p.metadata.name != old and x.type == "Ready" and x.status == "True"
            for p in pods
            for x in p.status.conditions or []
        )

    wait_for(replaced, 180, "a new operator pod to be ready")

    final = wait_for(lambda: ended(cluster, namespace, "faulty"), 900, "the job to end")
    assert final["phase"] == "Succeeded", final
    assert (final["attempt"], final["restartCount"]) == (3, 2)
    total = final["progress"]["totalSteps"]
    assert final["progress"]["step"] == total
    log = cluster.core.read_namespaced_pod_log(c.node_name("faulty", 0), namespace)
    assert f"done: {total} steps" in log
    pods = cluster.core.list_namespaced_pod(namespace, label_selector=f"{c.LABEL_JOB}=faulty")
    assert {p.metadata.labels[c.LABEL_ATTEMPT] for p in pods.items} == {"3"}
    reasons = [
        e.reason
        for e in cluster.core.list_namespaced_event(namespace).items
        if e.involved_object.kind == c.KIND
    ]
    assert {c.Reason.POD_FAILED, c.Reason.POD_DELETED} <= set(reasons), reasons
    # No pod of a newer attempt appeared while one of an older attempt existed.
    assert pod_watch.history, "the pod watch saw nothing"
    assert pod_watch.overlaps() == []


def test_a_trainer_over_its_memory_limit_is_oom_killed_and_the_job_says_so(
    cluster: Cluster, namespace: str, mrpc_job: Callable[..., dict[str, Any]]
) -> None:
    job = mrpc_job("hungry", numTrainEpochs=1)
    job["spec"]["resources"]["memory"] = "400Mi"  # torch alone needs more
    job["spec"]["runPolicy"] = {"backoffLimit": 0}
    cluster.create_job(namespace, job)
    final = wait_for(lambda: ended(cluster, namespace, "hungry"), 600, "the job to end")
    failed = next(x for x in final["conditions"] if x["type"] == "Failed")
    assert (final["phase"], failed["reason"]) == ("Failed", c.Reason.BACKOFF_LIMIT_EXCEEDED)
    assert "OOMKilled" in failed["message"], failed
    # The kernel killed it: the kubelet reports the container as OOMKilled.
    pods = cluster.core.list_namespaced_pod(namespace, label_selector=f"{c.LABEL_JOB}=hungry")
    reasons = {
        s.state.terminated.reason
        for p in pods.items
        for s in p.status.container_statuses or []
        if s.state.terminated
    }
    assert "OOMKilled" in reasons, reasons


@pytest.mark.timeout(1800)
def test_suspend_at_step_n_then_resume_continues_from_step_n(
    cluster: Cluster,
    namespace: str,
    mrpc_job: Callable[..., dict[str, Any]],
    s3: Any,
) -> None:
    job = mrpc_job("pausing", numTrainEpochs=2)
    job["spec"]["checkpoints"]["saveSteps"] = 100_000  # no periodic checkpoint: only the stop's
    cluster.create_job(namespace, job)

    def training() -> bool:
        progress = (cluster.get_job(namespace, "pausing").get("status") or {}).get("progress")
        return bool(progress and progress.get("step", 0) >= 10)

    wait_for(training, 900, "the job to train 10 steps")
    cluster.custom.patch_namespaced_custom_object(
        c.GROUP, c.VERSION, namespace, c.PLURAL, "pausing", {"spec": {"suspend": True}}
    )

    def suspended() -> bool:
        status = cluster.get_job(namespace, "pausing").get("status") or {}
        pods = cluster.core.list_namespaced_pod(namespace, label_selector=f"{c.LABEL_JOB}=pausing")
        return status.get("phase") == "Suspended" and not pods.items

    wait_for(suspended, 180, "the job to be suspended and its pods gone")
    # The pods' SIGTERM committed the step they had reached, and nothing later.
    steps = committed_steps(s3.client(), "pausing")
    assert len(steps) == 1, steps
    stopped_at = steps[0]
    assert stopped_at >= 10

    cluster.custom.patch_namespaced_custom_object(
        c.GROUP, c.VERSION, namespace, c.PLURAL, "pausing", {"spec": {"suspend": False}}
    )
    final = wait_for(lambda: ended(cluster, namespace, "pausing"), 900, "the job to end")
    assert final["phase"] == "Succeeded", final
    assert resumed_at(cluster, namespace, "pausing") == stopped_at
    total = final["progress"]["totalSteps"]
    log = cluster.core.read_namespaced_pod_log(c.node_name("pausing", 0), namespace)
    assert f"done: {total} steps" in log


@pytest.mark.timeout(1800)
def test_a_frozen_rank_ends_its_attempt_and_the_gang_restarts_and_completes(
    cluster: Cluster, namespace: str, mrpc_job: Callable[..., dict[str, Any]]
) -> None:
    job = mrpc_job("frozen", numTrainEpochs=1)
    job["spec"]["runPolicy"] = {"progressDeadlineSeconds": 20}
    # The frozen process ignores SIGTERM: the restart's kill comes after the grace period.
    job["spec"]["pod"]["terminationGracePeriodSeconds"] = 10
    cluster.create_job(namespace, job)
    attempt_running(cluster, namespace, "frozen", 1)
    pid = wait_for(lambda: training_process(namespace, "frozen", 1), 60, "the training process")
    os.kill(pid, signal.SIGSTOP)

    def restarted() -> dict[str, Any] | None:
        status: dict[str, Any] = cluster.get_job(namespace, "frozen").get("status") or {}
        return status if status.get("attempt", 1) >= 2 else None

    # Deadline 20 s, the roll call up to 30 s, the restart's backoff and grace period.
    status = wait_for(restarted, 180, "the operator to start attempt 2")

    def hang_reported() -> list[str]:
        return pod_failures(cluster, namespace, "Hang: no optimizer step for 20s")

    hang = wait_for(hang_reported, 30, "the PodFailed event with the hang's reason")
    assert "rank 1 (node 1) did not answer" in hang[0], hang[0]
    final = wait_for(lambda: ended(cluster, namespace, "frozen"), 900, "the job to end")
    assert final["phase"] == "Succeeded", final
    assert (final["attempt"], final["restartCount"]) == (2, 1), (status, final)
    assert final["progress"]["step"] == final["progress"]["totalSteps"]
