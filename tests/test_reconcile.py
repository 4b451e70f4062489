"""The reconcile rules, as pure functions: job and pods in, plan out (no cluster)."""

from __future__ import annotations

import copy
from datetime import UTC, datetime, timedelta
from typing import Any

from finetune_api import names as c
from finetune_operator import builders
from finetune_operator.progress import parse
from finetune_operator.reconcile import Plan, Refusal, Settings, reconcile

NOW = datetime(2026, 11, 22, 12, 0, tzinfo=UTC)


def job_object(**spec: Any) -> dict[str, Any]:
    body: dict[str, Any] = {
        "apiVersion": c.API_VERSION,
        "kind": c.KIND,
        "metadata": {"name": "mrpc", "namespace": "ml", "uid": "u-1", "generation": 1},
        "spec": {
            "model": {"uri": "s3://models/bert", "numLabels": 2},
            "dataset": {"uri": "s3://data/mrpc/", "textColumns": ["a", "b"]},
            "resources": {"nodes": 2, "gpusPerNode": 8},
            "checkpoints": {"uri": "s3://ckpt/mrpc"},
            **spec,
        },
    }
    return body


def apply(obj: dict[str, Any], plan: Plan) -> dict[str, Any]:
    obj = copy.deepcopy(obj)
    obj["status"] = plan.status.to_wire()
    return obj


def with_phase(
    p: dict[str, Any], phase: str, exit_code: int | None = None, message: str = ""
) -> dict[str, Any]:
    p = copy.deepcopy(p)
    state: dict[str, Any] = {"running": {}}
    if exit_code is not None:
        state = {"terminated": {"exitCode": exit_code, "message": message}}
    p["status"] = {
        "phase": phase,
        "containerStatuses": [{"name": "trainer", "state": state}],
    }
    return p


def running_job() -> tuple[dict[str, Any], list[dict[str, Any]]]:
    obj = job_object()
    plan = reconcile(obj, [], NOW)
    obj = apply(obj, plan)
    pods = [with_phase(p, "Running") for p in plan.create if p["kind"] == "Pod"]
    obj = apply(obj, reconcile(obj, pods, NOW))
    assert obj["status"]["phase"] == "Running"
    return obj, pods


def test_a_new_job_creates_its_service_and_one_pod_per_node() -> None:
    plan = reconcile(job_object(), [], NOW)
    kinds = [(m["kind"], m["metadata"]["name"]) for m in plan.create]
    assert kinds == [("Service", "mrpc"), ("Pod", "mrpc-node-0"), ("Pod", "mrpc-node-1")]
    assert plan.status.phase == c.Phase.CREATED
    assert plan.status.attempt == 1
    assert plan.status.observed_generation == 1
    assert [e.reason for e in plan.events] == ["PodsCreated"]


def test_reconciling_twice_changes_nothing() -> None:
    obj = job_object()
    first = reconcile(obj, [], NOW)
    obj = apply(obj, first)
    pods = [p for p in first.create if p["kind"] == "Pod"]
    again = reconcile(obj, pods, NOW + timedelta(seconds=5))
    assert again.create == []
    assert again.delete_pods == []
    assert again.events == []
    assert again.status.to_wire() == obj["status"]


def test_running_when_every_pod_runs_and_recovered_after_a_restart() -> None:
    obj, _ = running_job()
    cond = {x["type"]: x for x in obj["status"]["conditions"]}
    assert cond["Running"]["status"] == "True"
    assert cond["Running"]["reason"] == "AllPodsRunning"


def test_a_retryable_failure_starts_a_new_attempt_only_after_the_old_pods_are_gone() -> None:
    obj, pods = running_job()
    pods[1] = with_phase(pods[1], "Failed", 75, "lost the rendezvous with rank 0")
    plan = reconcile(obj, pods, NOW)
    assert plan.status.attempt == 2
    assert plan.status.restart_count == 1
    assert plan.status.phase == c.Phase.RESTARTING
    assert sorted(plan.delete_pods) == ["mrpc-node-0", "mrpc-node-1"]
    assert plan.create == []
    assert plan.restarted
    obj = apply(obj, plan)
    # The old pods are still terminating: nothing new is created.
    terminating = [copy.deepcopy(p) for p in pods]
    for p in terminating:
        p["metadata"]["deletionTimestamp"] = NOW.isoformat()
    waiting = reconcile(obj, terminating, NOW)
    assert waiting.create == []
    assert waiting.delete_pods == []
    # Once they are gone, attempt 2 waits out the first backoff (10 s), then is created.
    early = reconcile(obj, [], NOW + timedelta(seconds=9))
    assert early.create == []
    assert early.requeue_after == 1.0
    fresh = reconcile(obj, [], NOW + timedelta(seconds=10))
    created = [p for p in fresh.create if p["kind"] == "Pod"]
    assert [p["metadata"]["labels"][c.LABEL_ATTEMPT] for p in created] == ["2", "2"]
    assert fresh.status.next_attempt_time is None
    message = next(x for x in obj["status"]["conditions"] if x["type"] == "Restarting")["message"]
    assert "mrpc-node-1 exited with code 75: lost the rendezvous with rank 0" in message
    assert "attempt 2 starts at 2026-11-22T12:00:10Z, after a 10s backoff" in message


def test_the_backoff_doubles_per_restart_up_to_its_cap() -> None:
    settings = Settings(restart_backoff=10, restart_backoff_max=300)
    obj, now, waits = job_object(runPolicy={"backoffLimit": 8}), NOW, []
    obj = apply(obj, reconcile(obj, [], now, settings))
    for _ in range(7):
        plan = reconcile(obj, [], now, settings)
        pods = [
            with_phase(p, "Failed", 1, "NCCL timeout") for p in plan.create if p["kind"] == "Pod"
        ]
        obj = apply(apply(obj, plan), reconcile(apply(obj, plan), pods, now, settings))
        at = datetime.fromisoformat(obj["status"]["nextAttemptTime"])
        waits.append((at - now).total_seconds())
        now = at
    assert waits == [10, 20, 40, 80, 160, 300, 300]
    assert obj["status"]["restartCount"] == 7


def test_old_pods_stuck_on_a_lost_node_are_removed_so_the_next_attempt_starts() -> None:
    obj, pods = running_job()
    pods[0] = with_phase(pods[0], "Failed", 1, "connection reset by rank 1")
    obj = apply(obj, reconcile(obj, pods, NOW))
    deleted = copy.deepcopy(pods)
    for p, node in zip(deleted, ("node-a", "node-b"), strict=True):
        p["spec"]["nodeName"] = node
        p["metadata"]["deletionTimestamp"] = (NOW + timedelta(seconds=30)).isoformat()
    # node-b's kubelet stopped; pod 1 stays terminating. Within its grace period,
    # nothing is forced, and the job looks again when the grace period ends.
    early = reconcile(obj, deleted[1:], NOW, lost_nodes=frozenset({"node-b"}))
    assert (early.force_delete_pods, early.create, early.requeue_after) == ([], [], 31.0)
    later = NOW + timedelta(seconds=45)
    # Past it, on a node that is still ready: its kubelet is stopping it; wait.
    ready = reconcile(obj, deleted[1:], later, lost_nodes=frozenset())
    assert (ready.force_delete_pods, ready.create) == ([], [])
    assert ready.requeue_after is not None
    # Past it, on a lost node: removed with grace 0, and the event names pod and node.
    lost = reconcile(obj, deleted[1:], later, lost_nodes=frozenset({"node-b"}))
    assert (lost.force_delete_pods, lost.delete_pods, lost.create) == (["mrpc-node-1"], [], [])
    event = next(e for e in lost.events if e.reason == c.Reason.NODE_LOST)
    assert "mrpc-node-1 of attempt 1 is on node node-b" in event.message
    assert "attempt 2 can start" in event.message
    # Pods of the current attempt are never forced, whatever their node.
    current = reconcile(apply(obj, lost), [], later)
    assert [p["metadata"]["name"] for p in current.create if p["kind"] == "Pod"] == [
        "mrpc-node-0",
        "mrpc-node-1",
    ]
    for p in current.create:
        if p["kind"] == "Pod":
            p["spec"]["nodeName"] = "node-b"
            p["metadata"]["deletionTimestamp"] = NOW.isoformat()
    pods2 = [x for x in current.create if x["kind"] == "Pod"]
    again = reconcile(apply(obj, current), pods2, later, lost_nodes=frozenset({"node-b"}))
    assert again.force_delete_pods == []


def test_the_permanent_error_code_fails_the_job_at_once() -> None:
    obj, pods = running_job()
    pods[0] = with_phase(
        pods[0], "Failed", 42, "Traceback...\nspec.dataset.textColumns: column 'x' not found"
    )
    plan = reconcile(obj, pods, NOW)
    assert plan.status.phase == c.Phase.FAILED
    assert plan.status.attempt == 1
    assert plan.status.restart_count == 0
    failed = next(x for x in plan.status.conditions or [] if x.type == "Failed")
    assert failed.reason == "TrainerError"
    assert failed.message.endswith("spec.dataset.textColumns: column 'x' not found")
    # The rest of the gang is stopped; the failed pod stays for its logs.
    assert plan.delete_pods == ["mrpc-node-1"]
    assert [e.type for e in plan.events if e.reason == "TrainerError"] == ["Warning"]


def test_a_pod_the_api_refused_fails_the_job_instead_of_a_retry_loop() -> None:
    obj = job_object()
    first = reconcile(obj, [], NOW)
    obj = apply(obj, first)
    # Pod 0 was created, the API refused pod 1: the next pass fails the job, stops pod 0.
    pod0 = with_phase(next(m for m in first.create if m["kind"] == "Pod"), "Pending")
    why = 'Pod "mrpc-node-1" is invalid: spec.nodeSelector: Invalid value: "fast ssd"'
    plan = reconcile(obj, [pod0], NOW, rejected=Refusal("Pod", why))
    assert plan.status.phase == c.Phase.FAILED
    failed = next(x for x in plan.status.conditions or [] if x.type == "Failed")
    assert failed.reason == "PodRejected"
    assert failed.message.endswith(why)
    assert plan.create == []
    assert plan.delete_pods == ["mrpc-node-0"]
    assert [e.type for e in plan.events if e.reason == "PodRejected"] == ["Warning"]
    # Nothing is created again on later passes.
    assert reconcile(apply(obj, plan), [], NOW).create == []
    # A refused Service is named as such.
    why = 'Service "mrpc" is invalid: metadata.labels: Invalid value'
    plan = reconcile(obj, [pod0], NOW, rejected=Refusal("Service", why))
    failed = next(x for x in plan.status.conditions or [] if x.type == "Failed")
    assert failed.message == f"the API refused the job's Service; fix the spec in a new job: {why}"


def test_an_oom_kill_is_named_in_the_failure() -> None:
    """The kubelet's OOMKilled reason reaches the job, even when the container also left
    a message (here the log tail Kubernetes falls back to)."""
    obj = job_object(runPolicy={"backoffLimit": 0})
    obj["status"] = {"phase": "Running", "attempt": 1, "restartCount": 0}
    pods = [with_phase(p, "Running") for p in builders.pods(builders.Job.from_object(obj), 1)]
    pods[1] = with_phase(pods[1], "Failed", 137, "loading the model\nKilled")
    pods[1]["status"]["containerStatuses"][0]["state"]["terminated"]["reason"] = "OOMKilled"
    failed = next(
        x for x in reconcile(obj, pods, NOW).status.conditions or [] if x.type == "Failed"
    )
    assert failed.reason == "BackoffLimitExceeded"
    assert "exited with code 137: OOMKilled: over its memory limit (raise spec.resources" in (
        failed.message
    )
    assert failed.message.endswith(
        "; Killed; restarted 0 times already (spec.runPolicy.backoffLimit 0)"
    )


def test_past_the_backoff_limit_the_job_fails_with_the_reason() -> None:
    obj = job_object(runPolicy={"backoffLimit": 1})
    obj["status"] = {"phase": "Running", "attempt": 2, "restartCount": 1}
    pods = [
        with_phase(p, "Failed" if i == 0 else "Running", 1 if i == 0 else None)
        for i, p in enumerate(builders.pods(builders.Job.from_object(obj), attempt=2))
    ]
    plan = reconcile(obj, pods, NOW)
    assert plan.status.phase == c.Phase.FAILED
    failed = next(x for x in plan.status.conditions or [] if x.type == "Failed")
    assert failed.reason == "BackoffLimitExceeded"
    assert "backoffLimit 1" in failed.message


def test_all_pods_succeeded_is_success_and_the_ttl_then_deletes_the_job() -> None:
    obj, pods = running_job()
    done = [with_phase(p, "Succeeded", 0) for p in pods]
    plan = reconcile(obj, done, NOW)
    assert plan.status.phase == c.Phase.SUCCEEDED
    assert plan.requeue_after == 7 * 24 * 3600
    obj = apply(obj, plan)
    later = reconcile(obj, done, NOW + timedelta(days=7, seconds=1))
    assert later.delete_job


def test_suspend_removes_the_pods_and_resume_brings_them_back() -> None:
    obj, pods = running_job()
    obj["spec"]["suspend"] = True
    plan = reconcile(obj, pods, NOW)
    assert plan.status.phase == c.Phase.SUSPENDED
    assert sorted(plan.delete_pods) == ["mrpc-node-0", "mrpc-node-1"]
    obj = apply(obj, plan)
    obj["spec"]["suspend"] = False
    resumed = reconcile(obj, [], NOW)
    assert len([p for p in resumed.create if p["kind"] == "Pod"]) == 2
    assert resumed.status.attempt == 1
    assert resumed.status.restart_count == 0
    assert {e.reason for e in resumed.events} >= {"Resumed"}


def test_unschedulable_pods_are_reported_with_the_schedulers_message() -> None:
    obj = job_object()
    plan = reconcile(obj, [], NOW)
    obj = apply(obj, plan)
    pods = [copy.deepcopy(p) for p in plan.create if p["kind"] == "Pod"]
    message = "0/3 nodes are available: 3 Insufficient nvidia.com/gpu."
    for p in pods:
        p["status"] = {
            "phase": "Pending",
            "conditions": [
                {
                    "type": "PodScheduled",
                    "status": "False",
                    "reason": "Unschedulable",
                    "message": message,
                }
            ],
        }
    plan = reconcile(obj, pods, NOW)
    cond = next(x for x in plan.status.conditions or [] if x.type == "Unschedulable")
    assert cond.status == "True"
    assert message in cond.message
    assert [e.type for e in plan.events] == ["Warning"]


def test_an_image_that_cannot_be_pulled_is_a_condition_not_a_silent_pending() -> None:
    obj = job_object()
    plan = reconcile(obj, [], NOW)
    obj = apply(obj, plan)
    pods = [copy.deepcopy(p) for p in plan.create if p["kind"] == "Pod"]
    for p in pods:
        p["status"] = {
            "phase": "Pending",
            "containerStatuses": [
                {
                    "name": "trainer",
                    "state": {
                        "waiting": {"reason": "ImagePullBackOff", "message": 'pull "x:1" failed'}
                    },
                }
            ],
        }
    plan = reconcile(obj, pods, NOW)
    cond = next(x for x in plan.status.conditions or [] if x.type == "Running")
    assert (cond.status, cond.reason) == ("False", "ImagePullFailed")
    assert 'pull "x:1" failed' in cond.message


def test_the_active_deadline_fails_a_running_job() -> None:
    obj, pods = running_job()
    obj["spec"]["runPolicy"] = {"activeDeadlineSeconds": 60}
    slow = Settings(progress_interval=3600)
    assert reconcile(obj, pods, NOW + timedelta(seconds=30), slow).requeue_after == 30
    plan = reconcile(obj, pods, NOW + timedelta(seconds=61))
    assert plan.status.phase == c.Phase.FAILED
    assert sorted(plan.delete_pods) == ["mrpc-node-0", "mrpc-node-1"]


def test_a_pod_deleted_from_a_running_gang_restarts_it() -> None:
    obj, pods = running_job()
    plan = reconcile(obj, pods[:1], NOW)
    assert plan.status.attempt == 2
    assert any(e.reason == "PodDeleted" for e in plan.events)


METRICS = """\
# TYPE finetune_global_step gauge
finetune_global_step{finetunejob="mrpc",namespace="ml"} 120.0
finetune_total_steps{finetunejob="mrpc",namespace="ml"} 1377.0
finetune_epoch{finetunejob="mrpc",namespace="ml"} 0.26
finetune_train_loss{finetunejob="mrpc",namespace="ml"} 0.5123
finetune_learning_rate{finetunejob="mrpc",namespace="ml"} 4.5e-05
finetune_eta_seconds{finetunejob="mrpc",namespace="ml"} 640.4
finetune_last_checkpoint_step{finetunejob="mrpc",namespace="ml"} 100.0
finetune_eval_metric{finetunejob="mrpc",namespace="ml",metric="accuracy"} 0.79
"""


def test_progress_comes_from_the_rank0_metrics() -> None:
    obj, pods = running_job()
    reading = parse(METRICS, NOW)
    assert reading is not None
    plan = reconcile(obj, pods, NOW, reading=reading)
    progress = plan.status.progress
    assert progress is not None
    assert (progress.step, progress.total_steps, progress.eta_seconds) == (120, 1377, 640)
    assert progress.eval_metrics == {"accuracy": 0.79}
    assert plan.status.last_checkpoint is not None
    assert plan.status.last_checkpoint.uri == "s3://ckpt/mrpc/step-000000100"
    # The same numbers a moment later are not a change worth a status write.
    obj = apply(obj, plan)
    later = reconcile(
        obj, pods, NOW + timedelta(seconds=15), reading=parse(METRICS, NOW + timedelta(seconds=15))
    )
    assert later.status.to_wire() == obj["status"]


def test_progress_before_the_first_step_has_no_loss() -> None:
    """The trainer's own endpoint right after planning: step 0 and no loss yet (NaN),
    which kubectl get ftj shows as empty rather than a loss of 0."""
    from prometheus_client import generate_latest

    from finetune_trainer.metrics import TrainerMetrics

    metrics = TrainerMetrics("mrpc", "ml")
    metrics.total_steps.set(230)
    reading = parse(generate_latest(metrics.registry).decode(), NOW)
    assert reading is not None
    assert (reading.progress.step, reading.progress.total_steps) == (0, 230)
    assert reading.progress.loss is None
    assert reading.progress.eta_seconds is None
    metrics.train_loss.set(0.69)
    reading = parse(generate_latest(metrics.registry).decode(), NOW)
    assert reading is not None
    assert reading.progress.loss == 0.69
