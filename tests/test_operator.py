"""The operator as a real process against the real control plane.

kube-apiserver, kube-controller-manager (garbage collection) and kube-scheduler
run; GPU nodes are Node objects; no kubelet runs, so operator_support.Kubelet
writes pod status through the API the way a kubelet would. These are the rules
that would each cost minutes of real training on real nodes (TTL, suspend,
backoff limits, 20 operator kills, progress races, RBAC, PodGroups); what a
user sees of a job on real pods (running, gang restarts without overlap, node
loss, missing Secret or image) is tested on the real nodes in tests/e2e/.
"""

from __future__ import annotations

import copy
import json
import threading
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
from controlplane import free_port, wait_for
from kubernetes import client

from finetune_api import names as c
from finetune_api.exits import ExitCode

from .conftest import Cluster
from .operator_support import RESTART_BACKOFF, Kubelet, OperatorProcess, gpu_nodes


def job_body(name: str, nodes: int = 2, gpus: int = 8, **extra: Any) -> dict[str, Any]:
    spec: dict[str, Any] = {
        "model": {"uri": "s3://models/bert-base-uncased", "numLabels": 2},
        "dataset": {"uri": "s3://data/mrpc/", "textColumns": ["sentence1", "sentence2"]},
        "resources": {"nodes": nodes, "gpusPerNode": gpus},
        "s3": {"credentialsSecret": {"name": "s3-credentials"}},
        "checkpoints": {"uri": f"s3://ckpt/{name}"},
    }
    for key, value in extra.items():
        spec[key] = value
    return {"apiVersion": c.API_VERSION, "kind": c.KIND, "metadata": {"name": name}, "spec": spec}


@pytest.fixture
def world(cluster: Cluster, namespace: str, tmp_path: Path) -> Iterator[dict[str, Any]]:
    """Two 8-GPU nodes, a kubelet stand-in, and the operator watching the namespace."""
    kubelet = Kubelet(cluster.core, namespace).start()
    op = OperatorProcess(
        cluster.plane.kubeconfig_path, namespace, tmp_path / "operator.log", free_port()
    )
    with gpu_nodes(cluster.core, namespace[-6:], 2):
        op.start()
        try:
            yield {"kubelet": kubelet, "operator": op, "ns": namespace}
        finally:
            op.stop()
            kubelet.stop()
            print(op.log())


def pods_of(cluster: Cluster, ns: str, job: str) -> list[Any]:
    items = cluster.core.list_namespaced_pod(ns, label_selector=f"{c.LABEL_JOB}={job}").items
    return sorted(items, key=lambda p: p.metadata.name)


def status(cluster: Cluster, ns: str, name: str) -> dict[str, Any]:
    return dict(cluster.get_job(ns, name).get("status") or {})


def cond(st: dict[str, Any], type_: str) -> dict[str, Any]:
    return next((x for x in st.get("conditions", []) if x["type"] == type_), {})


def wait_phase(
    cluster: Cluster, ns: str, name: str, phase: str, timeout: float = 30
) -> dict[str, Any]:
    return wait_for(
        lambda: (st := status(cluster, ns, name)).get("phase") == phase and st,
        timeout,
        f"{name} to be {phase}",
    )


def scheduled_pods(
    cluster: Cluster, ns: str, job: str, count: int, attempt: str = "1"
) -> list[Any]:
    def ready() -> list[Any]:
        pods = [
            p
            for p in pods_of(cluster, ns, job)
            if p.metadata.labels[c.LABEL_ATTEMPT] == attempt and p.spec.node_name
        ]
        return pods if len(pods) == count else []

    return wait_for(ready, 30, f"{count} scheduled pods of attempt {attempt}")


def run_all(kubelet: Kubelet, pods: list[Any]) -> None:
    for p in pods:
        kubelet.run(p.metadata.name)


def events_of(cluster: Cluster, ns: str, name: str) -> list[str]:
    items = cluster.core.list_namespaced_event(
        ns, field_selector=f"involvedObject.name={name}"
    ).items
    return [e.reason for e in items]


def test_a_job_becomes_a_service_and_a_gang_of_pods_then_runs(
    cluster: Cluster, world: dict[str, Any]
) -> None:
    ns, kubelet = world["ns"], world["kubelet"]
    job = cluster.create_job(ns, job_body("bert", nodes=2, gpus=8))
    pods = scheduled_pods(cluster, ns, "bert", 2)
    svc = cluster.core.read_namespaced_service("bert", ns)
    assert svc.spec.cluster_ip == "None"
    assert svc.spec.publish_not_ready_addresses is True
    uid = job["metadata"]["uid"]
    for i, p in enumerate(pods):
        assert p.metadata.name == f"bert-node-{i}"
        assert [o.uid for o in p.metadata.owner_references] == [uid]
        assert p.metadata.labels[c.LABEL_NODE_INDEX] == str(i)
        assert p.metadata.labels[c.LABEL_ROLE] == "worker"
        trainer = p.spec.containers[0]
        assert trainer.resources.limits["nvidia.com/gpu"] == "8"
        env = {e.name: e for e in trainer.env}
        assert env["FT_NODE_RANK"].value == str(i)
        assert env["FT_NUM_NODES"].value == "2"
        assert "FT_PROCS_PER_NODE" not in env  # one per GPU: the trainer counts them
        assert env["FT_MASTER_ADDR"].value == f"bert-node-0.bert.{ns}.svc"
        assert env["AWS_SECRET_ACCESS_KEY"].value_from.secret_key_ref.name == "s3-credentials"
        assert trainer.security_context.allow_privilege_escalation is False
        assert p.spec.security_context.run_as_non_root is True
    # The two pods sit on the two 8-GPU nodes.
    assert len({p.spec.node_name for p in pods}) == 2
    assert status(cluster, ns, "bert")["phase"] == "Created"

    run_all(kubelet, pods)
    st = wait_phase(cluster, ns, "bert", "Running")
    assert cond(st, "Running")["status"] == "True"
    assert st["attempt"] == 1
    assert st["observedGeneration"] == job["metadata"]["generation"]
    wait_for(
        lambda: {"PodsCreated", "AllPodsRunning"} <= set(events_of(cluster, ns, "bert")),
        20,
        "an event for each transition",
    )
    assert cluster.kubectl("get", "ftj", "bert", "-n", ns).stdout.count("Running") == 1


def test_the_permanent_error_code_fails_at_once_and_backoff_limit_is_kept(
    cluster: Cluster, world: dict[str, Any]
) -> None:
    ns, kubelet = world["ns"], world["kubelet"]
    cluster.create_job(ns, job_body("bad-column"))
    run_all(kubelet, scheduled_pods(cluster, ns, "bad-column", 2))
    wait_phase(cluster, ns, "bad-column", "Running")
    reason = "spec.dataset.textColumns: column 'sentence' not found; the data has columns: a, b"
    kubelet.exit("bad-column-node-0", ExitCode.PERMANENT, reason)
    st = wait_phase(cluster, ns, "bad-column", "Failed")
    failed = cond(st, "Failed")
    assert failed["reason"] == "TrainerError"
    assert reason in failed["message"]
    assert st["restartCount"] == 0
    assert "completionTime" in st
    # No new attempt; the rest of the gang is stopped; the failed pod stays for `logs`.
    wait_for(
        lambda: (
            [p.metadata.name for p in pods_of(cluster, ns, "bad-column")] == ["bad-column-node-0"]
        ),
        30,
        "the running pod to be removed",
    )

    cluster.create_job(ns, job_body("flaky", nodes=1, gpus=8, runPolicy={"backoffLimit": 2}))
    for attempt, backoff in (("1", RESTART_BACKOFF), ("2", 2 * RESTART_BACKOFF)):
        failed_at = datetime.now(UTC)
        pod = scheduled_pods(cluster, ns, "flaky", 1, attempt=attempt)[0]
        kubelet.exit(pod.metadata.name, 1, "NCCL timeout")
        st = wait_for(
            lambda a=attempt: (
                f"attempt {int(a) + 1} starts at"
                in cond(s := status(cluster, ns, "flaky"), "Restarting").get("message", "")
                and s
            ),
            20,
            f"attempt {attempt}'s restart",
        )
        assert st["phase"] == "Restarting"
        assert f"after a {backoff}s backoff" in cond(st, "Restarting")["message"]
        next_at = datetime.fromisoformat(st["nextAttemptTime"])
        # The next attempt's pod is created only once its backoff has passed (the API
        # keeps whole seconds of creationTimestamp).
        new = scheduled_pods(cluster, ns, "flaky", 1, attempt=str(int(attempt) + 1))[0]
        assert new.metadata.creation_timestamp >= next_at.replace(microsecond=0)
        assert (new.metadata.creation_timestamp - failed_at).total_seconds() >= backoff - 1
    kubelet.exit(new.metadata.name, 1, "NCCL timeout")
    st = wait_phase(cluster, ns, "flaky", "Failed")
    assert cond(st, "Failed")["reason"] == "BackoffLimitExceeded"
    assert "backoffLimit 2" in cond(st, "Failed")["message"]
    assert st["restartCount"] == 2
    wait_for(
        lambda: "BackoffLimitExceeded" in events_of(cluster, ns, "flaky"),
        20,
        "the BackoffLimitExceeded event",
    )


def test_deleting_a_job_collects_its_objects_and_the_ttl_deletes_finished_jobs(
    cluster: Cluster, world: dict[str, Any]
) -> None:
    ns, kubelet = world["ns"], world["kubelet"]
    cluster.create_job(ns, job_body("doomed"))
    scheduled_pods(cluster, ns, "doomed", 2)
    cluster.custom.delete_namespaced_custom_object(c.GROUP, c.VERSION, ns, c.PLURAL, "doomed")
    wait_for(lambda: not pods_of(cluster, ns, "doomed"), 60, "the pods to be garbage-collected")
    wait_for(
        lambda: not cluster.core.list_namespaced_service(ns).items,
        60,
        "the Service to be garbage-collected",
    )

    cluster.create_job(ns, job_body("quick", nodes=1, runPolicy={"ttlSecondsAfterFinished": 3}))
    pod = scheduled_pods(cluster, ns, "quick", 1)[0]
    kubelet.run(pod.metadata.name)
    kubelet.exit(pod.metadata.name, 0)
    wait_phase(cluster, ns, "quick", "Succeeded")

    def gone() -> bool:
        try:
            cluster.get_job(ns, "quick")
        except client.ApiException as e:
            return e.status == 404
        return False

    wait_for(gone, 30, "the TTL to delete the finished job")
    wait_for(lambda: not pods_of(cluster, ns, "quick"), 60, "its pod to be collected")


def test_suspend_removes_the_pods_and_resume_brings_them_back(
    cluster: Cluster, world: dict[str, Any]
) -> None:
    ns, kubelet = world["ns"], world["kubelet"]
    cluster.create_job(ns, job_body("pausable"))
    run_all(kubelet, scheduled_pods(cluster, ns, "pausable", 2))
    wait_phase(cluster, ns, "pausable", "Running")
    patch = {"spec": {"suspend": True}}
    cluster.custom.patch_namespaced_custom_object(
        c.GROUP, c.VERSION, ns, c.PLURAL, "pausable", patch
    )
    st = wait_phase(cluster, ns, "pausable", "Suspended")
    assert cond(st, "Suspended")["status"] == "True"
    wait_for(lambda: not pods_of(cluster, ns, "pausable"), 30, "the pods to be removed")
    assert cluster.get_job(ns, "pausable")["spec"]["suspend"] is True

    patch = {"spec": {"suspend": False}}
    cluster.custom.patch_namespaced_custom_object(
        c.GROUP, c.VERSION, ns, c.PLURAL, "pausable", patch
    )
    run_all(kubelet, scheduled_pods(cluster, ns, "pausable", 2))
    st = wait_phase(cluster, ns, "pausable", "Running")
    assert cond(st, "Suspended")["reason"] == "Resumed"
    assert st["restartCount"] == 0


def test_more_gpus_than_any_node_has_is_reported_unschedulable(
    cluster: Cluster, world: dict[str, Any]
) -> None:
    ns = world["ns"]
    cluster.create_job(ns, job_body("huge", nodes=1, gpus=16))
    st = wait_for(
        lambda: (
            cond(s := status(cluster, ns, "huge"), "Unschedulable").get("status") == "True" and s
        ),
        20,
        "the Unschedulable condition",
    )
    message = cond(st, "Unschedulable")["message"]
    assert "huge-node-0" in message
    assert "Insufficient nvidia.com/gpu" in message
    wait_for(lambda: "Unschedulable" in events_of(cluster, ns, "huge"), 20, "a warning event")


def test_a_pod_the_api_refuses_fails_the_job_with_the_apis_message(
    cluster: Cluster, world: dict[str, Any]
) -> None:
    # A label value with a space passes the CRD (nodeSelector is free-form) but not
    # the apiserver's pod validation: the job fails once, it is not retried forever.
    ns = world["ns"]
    body = job_body("badsel", nodes=2, gpus=8, scheduling={"nodeSelector": {"disk": "fast ssd"}})
    cluster.create_job(ns, body)
    st = wait_phase(cluster, ns, "badsel", "Failed", timeout=30)
    failed = cond(st, "Failed")
    assert failed["reason"] == "PodRejected"
    assert "the API refused a training pod" in failed["message"]
    assert "spec.nodeSelector" in failed["message"], failed["message"]
    assert "fast ssd" in failed["message"]
    wait_for(lambda: "PodRejected" in events_of(cluster, ns, "badsel"), 20, "a warning event")
    assert pods_of(cluster, ns, "badsel") == []
    assert st.get("restartCount", 0) == 0


def test_progress_is_read_from_rank0_and_a_spec_edit_during_status_writes_is_kept(
    cluster: Cluster, world: dict[str, Any]
) -> None:
    """The trainer's own metrics endpoint serves rank 0's progress on the pod IP."""
    from finetune_trainer.metrics import TrainerMetrics

    ns, kubelet, op = world["ns"], world["kubelet"], world["operator"]
    metrics = TrainerMetrics("live", ns)
    metrics.serve(op.metrics_port)
    metrics.total_steps.set(1000)
    cluster.create_job(ns, job_body("live"))
    run_all(kubelet, scheduled_pods(cluster, ns, "live", 2))
    wait_phase(cluster, ns, "live", "Running")

    # Training moves on (status writes) while a user edits the spec, both at once.
    done = threading.Event()

    def train() -> None:
        step = 0
        while not done.is_set():
            step += 1
            metrics.global_step.set(step)
            metrics.train_loss.set(1.0 / step)
            done.wait(0.05)

    trainer = threading.Thread(target=train, daemon=True)
    trainer.start()
    try:
        for limit in range(1, 21):
            body = copy.deepcopy(cluster.get_job(ns, "live"))
            body["spec"]["runPolicy"]["backoffLimit"] = limit
            body["metadata"].setdefault("labels", {})["edit"] = str(limit)
            for _ in range(20):  # like `kubectl edit`: on a conflict, read again and retry
                try:
                    cluster.custom.replace_namespaced_custom_object(
                        c.GROUP, c.VERSION, ns, c.PLURAL, "live", body
                    )
                    break
                except client.ApiException as e:
                    if e.status != 409:
                        raise
                    fresh = cluster.get_job(ns, "live")
                    fresh["spec"]["runPolicy"]["backoffLimit"] = limit
                    fresh["metadata"].setdefault("labels", {})["edit"] = str(limit)
                    body = fresh
        first = status(cluster, ns, "live")["progress"]["step"]
        wait_for(
            lambda: status(cluster, ns, "live").get("progress", {}).get("step", 0) > first,
            20,
            "progress to keep moving",
        )
    finally:
        done.set()
        trainer.join()
    job = cluster.get_job(ns, "live")
    assert job["spec"]["runPolicy"]["backoffLimit"] == 20
    assert job["metadata"]["labels"]["edit"] == "20"
    progress = wait_for(
        lambda: (
            (p := status(cluster, ns, "live").get("progress", {})).get("step")
            == int(metrics.global_step._value.get())
            and p
        ),
        20,
        "the last step in status",
    )
    assert progress["totalSteps"] == 1000
    assert progress["loss"] == pytest.approx(1.0 / progress["step"], rel=1e-4)
    wait_for(
        lambda: (
            status(cluster, ns, "live").get("observedGeneration")
            == cluster.get_job(ns, "live")["metadata"]["generation"]
        ),
        20,
        "observedGeneration to catch up",
    )


def test_operator_metrics_and_health(cluster: Cluster, world: dict[str, Any]) -> None:
    ns, op = world["ns"], world["operator"]
    cluster.create_job(ns, job_body("counted", nodes=1))
    scheduled_pods(cluster, ns, "counted", 1)
    wanted = (
        "finetune_operator_pods_created_total 1.0",
        'finetune_operator_jobs{phase="Created"} 1.0',
    )
    _, text = wait_for(
        lambda: (r := op.get("/metrics"))[0] == 200 and all(w in r[1] for w in wanted) and r,
        20,
        "the operator's metrics",
    )
    assert "finetune_operator_reconcile_seconds_count" in text
    assert op.get("/healthz")[0] == 200
    assert op.get("/readyz")[0] == 200
    assert json.dumps(text).count("s3-credentials") == 0


def test_killing_the_operator_at_20_random_points_leaves_exactly_the_expected_pods(
    cluster: Cluster, namespace: str, tmp_path: Path
) -> None:
    """SIGKILL during creation and during gang restarts, then one clean run settles it."""
    import random
    import time

    seed = random.SystemRandom().randrange(1 << 30)
    print(f"kill points seeded with {seed}")
    rng = random.Random(seed)
    ns = namespace
    kubelet = Kubelet(cluster.core, ns, auto_run=True).start()
    op = OperatorProcess(cluster.plane.kubeconfig_path, ns, tmp_path / "operator.log", free_port())
    jobs = {f"kill-{i}": 2 for i in range(3)}
    injected = dict.fromkeys(jobs, 0)
    with gpu_nodes(cluster.core, ns[-6:], 2, gpus=8):
        for name, nodes in jobs.items():
            cluster.create_job(
                ns, job_body(name, nodes=nodes, gpus=1, runPolicy={"backoffLimit": 20})
            )
        try:
            for point in range(20):
                op.start()
                if point % 3 == 2:
                    # Recovery: fail a running pod of the current attempt of some job.
                    name = rng.choice(list(jobs))
                    st = status(cluster, ns, name)
                    running = [
                        p
                        for p in pods_of(cluster, ns, name)
                        if p.status.phase == "Running"
                        and p.metadata.deletion_timestamp is None
                        and p.metadata.labels[c.LABEL_ATTEMPT] == str(st.get("attempt"))
                    ]
                    if st.get("phase") == "Running" and running:
                        kubelet.exit(rng.choice(running).metadata.name, ExitCode.RETRYABLE, "lost")
                        injected[name] += 1
                time.sleep(rng.uniform(0.0, 1.5))  # the kill point itself, not a synchronisation
                op.kill()
            op.start()

            def settled() -> bool:
                for name, nodes in jobs.items():
                    st = status(cluster, ns, name)
                    pods = pods_of(cluster, ns, name)
                    if st.get("phase") != "Running" or len(pods) != nodes:
                        return False
                    if any(p.metadata.labels[c.LABEL_ATTEMPT] != str(st["attempt"]) for p in pods):
                        return False
                return True

            wait_for(settled, 90, "every job to run exactly its pods of its current attempt")
        finally:
            op.stop()
            kubelet.stop()
            print(op.log())
    print(f"gang restarts injected: {injected}")
    assert sum(injected.values()) > 0
    uids = {cluster.get_job(ns, name)["metadata"]["uid"]: name for name in jobs}
    all_pods = cluster.core.list_namespaced_pod(ns).items
    assert sorted(p.metadata.name for p in all_pods) == sorted(
        f"{name}-node-{i}" for name, nodes in jobs.items() for i in range(nodes)
    )
    for p in all_pods:  # no orphans: each pod is owned by its job
        assert [uids.get(o.uid) for o in p.metadata.owner_references] == [
            p.metadata.labels[c.LABEL_JOB]
        ]
    for name in jobs:
        st = status(cluster, ns, name)
        # Each injected failure restarted the gang exactly once, whatever the kills.
        assert st["restartCount"] == injected[name], (name, st, injected)
        assert st["attempt"] == injected[name] + 1
    services = cluster.core.list_namespaced_service(ns).items
    assert sorted(s.metadata.name for s in services) == sorted(jobs)
    assert kubelet.overlaps() == []


def test_the_shipped_cluster_role_is_enough_and_no_more(
    cluster: Cluster, namespace: str, tmp_path: Path
) -> None:
    """The operator runs with a ServiceAccount token bound to manifests/operator's ClusterRole."""
    import yaml
    from controlplane import ROOT, kubeconfig

    docs = list(yaml.safe_load_all((ROOT / "manifests" / "operator" / "operator.yaml").read_text()))
    role = next(d for d in docs if d["kind"] == "ClusterRole")
    ns = namespace
    role_name = f"finetune-operator-{ns[-6:]}"
    role["metadata"]["name"] = role_name
    rbac = client.RbacAuthorizationV1Api(cluster.api)
    rbac.create_cluster_role(role)
    binding = {
        "metadata": {"name": role_name},
        "roleRef": {
            "apiGroup": "rbac.authorization.k8s.io",
            "kind": "ClusterRole",
            "name": role_name,
        },
        "subjects": [{"kind": "ServiceAccount", "name": "finetune-operator", "namespace": ns}],
    }
    rbac.create_cluster_role_binding(binding)
    try:
        cluster.core.create_namespaced_service_account(
            ns, {"metadata": {"name": "finetune-operator"}}
        )
        token = cluster.core.create_namespaced_service_account_token(
            "finetune-operator", ns, {"spec": {"expirationSeconds": 3600}}
        ).status.token
        config_file = tmp_path / "operator.kubeconfig"
        ca = cluster.plane.workdir / "pki" / "ca.crt"
        config_file.write_text(
            yaml.safe_dump(kubeconfig(cluster.plane.server, ca, token, "finetune-operator"))
        )
        who = f"--as=system:serviceaccount:{ns}:finetune-operator"
        for verb, resource in (("get", "secrets"), ("list", "secrets"), ("update", "finetunejobs")):
            answer = cluster.kubectl("auth", "can-i", verb, resource, who, "-n", ns, check=False)
            assert answer.stdout.strip() == "no", (verb, resource)

        kubelet = Kubelet(cluster.core, ns).start()
        op = OperatorProcess(config_file, ns, tmp_path / "operator.log", free_port())
        with gpu_nodes(cluster.core, ns[-6:], 2):
            op.start()
            try:
                cluster.create_job(ns, job_body("least"))
                run_all(kubelet, scheduled_pods(cluster, ns, "least", 2))
                wait_phase(cluster, ns, "least", "Running")
                wait_for(
                    lambda: "AllPodsRunning" in events_of(cluster, ns, "least"),
                    20,
                    "the operator's events",
                )
            finally:
                op.stop()
                kubelet.stop()
        log = op.log()
        assert "403" not in log
        assert "Forbidden" not in log, log
    finally:
        rbac.delete_cluster_role_binding(role_name)
        rbac.delete_cluster_role(role_name)


PODGROUP_CRD = {
    # The shape of scheduler-plugins' PodGroup API, enough for the apiserver to store them
    # (the coscheduling scheduler itself does not run here).
    "apiVersion": "apiextensions.k8s.io/v1",
    "kind": "CustomResourceDefinition",
    "metadata": {"name": "podgroups.scheduling.x-k8s.io"},
    "spec": {
        "group": "scheduling.x-k8s.io",
        "names": {"kind": "PodGroup", "plural": "podgroups", "singular": "podgroup"},
        "scope": "Namespaced",
        "versions": [
            {
                "name": "v1alpha1",
                "served": True,
                "storage": True,
                "schema": {
                    "openAPIV3Schema": {
                        "type": "object",
                        "x-kubernetes-preserve-unknown-fields": True,
                    }
                },
            }
        ],
    },
}


def test_with_a_gang_scheduler_the_operator_creates_the_podgroup(
    cluster: Cluster, namespace: str, tmp_path: Path
) -> None:
    ext = client.ApiextensionsV1Api(cluster.api)
    try:
        ext.create_custom_resource_definition(PODGROUP_CRD)
    except client.ApiException as e:
        if e.status != 409:
            raise
    wait_for(
        lambda: any(
            x.type == "Established" and x.status == "True"
            for x in ext.read_custom_resource_definition(
                PODGROUP_CRD["metadata"]["name"]
            ).status.conditions
            or []
        ),
        60,
        "the PodGroup CRD",
    )
    ns = namespace
    op = OperatorProcess(
        cluster.plane.kubeconfig_path,
        ns,
        tmp_path / "operator.log",
        free_port(),
        extra=("--gang-scheduler", "coscheduling"),
    ).start()
    try:
        cluster.create_job(ns, job_body("gang", nodes=4, gpus=8))
        pods = wait_for(lambda: len(p := pods_of(cluster, ns, "gang")) == 4 and p, 30, "4 pods")
    finally:
        op.stop()
    group = cluster.custom.get_namespaced_custom_object(
        "scheduling.x-k8s.io", "v1alpha1", ns, "podgroups", "gang"
    )
    assert group["spec"]["minMember"] == 4
    assert group["metadata"]["ownerReferences"][0]["name"] == "gang"
    assert {p.metadata.labels[c.COSCHEDULING_LABEL] for p in pods} == {"gang"}


def test_a_namespace_being_deleted_is_no_refusal_of_the_job(cluster: Cluster) -> None:
    """The API forbids new pods in a terminating namespace; the job goes with the
    namespace, so that is no PodRejected (a failed job, an event that cannot be posted)."""
    from finetune_operator.kube import Kube, Rejected

    ns = f"going-{free_port()}"
    cluster.core.create_namespace({"metadata": {"name": ns}})
    held = {"metadata": {"name": "held", "finalizers": ["finetune.dev/test-hold"]}}
    cluster.core.create_namespaced_config_map(ns, held)  # keeps the namespace terminating
    cluster.core.delete_namespace(ns)
    try:
        wait_for(
            lambda: cluster.core.read_namespace(ns).status.phase == "Terminating", 20, "deletion"
        )
        pod = {
            "apiVersion": "v1",
            "kind": "Pod",
            "metadata": {"name": "late", "namespace": ns},
            "spec": {"containers": [{"name": "c", "image": "none"}]},
        }
        with pytest.raises(client.ApiException) as refused:
            Kube(cluster.api).create(pod)
        assert not isinstance(refused.value, Rejected)
        assert refused.value.status == 403
        assert "being terminated" in (refused.value.body or "")
    finally:
        cluster.core.patch_namespaced_config_map("held", ns, {"metadata": {"finalizers": None}})
