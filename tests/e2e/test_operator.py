"""The operator as users run it: its image built from operator/Dockerfile, installed
with `helm install` from the chart, running as a pod on a real node under the
chart's ServiceAccount, reaching the apiserver through the kubernetes Service."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest
from controlplane import wait_for

from conftest import Cluster
from e2e.support import ended, operator_pod, spread, two_node_job, wait_placed
from finetune_api import names as c


def test_the_operator_pod_runs_its_image_under_the_charts_account(
    cluster: Cluster, operator: dict[str, str], nodes: Any
) -> None:
    pod = operator_pod(cluster, operator["namespace"])
    assert pod.status.phase == "Running"
    assert pod.spec.containers[0].image == operator["image"]
    assert pod.spec.node_name in {n.name for n in nodes.nodes}
    assert pod.spec.service_account_name == "finetune-operator"
    ready = next(x for x in pod.status.conditions if x.type == "Ready")
    assert ready.status == "True"  # its /readyz: the first resync against the API is done
    # The account is the chart's least-privilege one, not an administrator.
    sa = f"system:serviceaccount:{operator['namespace']}:finetune-operator"
    for verb, what, allowed in (
        ("create", ["pods"], "yes"),
        ("patch", ["finetunejobs.finetune.dev", "--subresource=status"], "yes"),
        ("get", ["secrets"], "no"),
        ("delete", ["nodes"], "no"),
    ):
        got = cluster.kubectl("auth", "can-i", verb, *what, "--as", sa, "-A", check=False)
        assert got.stdout.strip() == allowed, (verb, what, got.stdout, got.stderr)


def not_running(cluster: Cluster, namespace: str, name: str, reason: str) -> dict[str, Any]:
    """The job's Running condition once it is False for `reason`."""

    def reported() -> dict[str, Any] | None:
        status = cluster.get_job(namespace, name).get("status") or {}
        running = next((x for x in status.get("conditions", []) if x["type"] == "Running"), {})
        return running if running.get("reason") == reason else None

    running: dict[str, Any] = wait_for(reported, 120, f"the job to report {reason}")
    assert running["status"] == "False"
    return running


def test_a_job_whose_s3_secret_is_missing_says_so(
    cluster: Cluster, namespace: str, mrpc_job: Callable[..., dict[str, Any]]
) -> None:
    job = mrpc_job("nosecret")
    job["spec"]["s3"]["credentialsSecret"]["name"] = "absent-keys"
    cluster.create_job(namespace, job)
    running = not_running(cluster, namespace, "nosecret", c.Reason.CONTAINER_CONFIG)
    assert '"absent-keys" not found' in running["message"], running


def test_a_job_whose_trainer_image_is_missing_says_so(
    cluster: Cluster, namespace: str, operator: dict[str, str]
) -> None:
    job = two_node_job(
        "noimage",
        "localhost/finetune-trainer:absent",
        model={"uri": "s3://models/m", "numLabels": 2},
        dataset={"uri": "s3://data/d.csv", "textColumns": ["text"]},
        checkpoints={"uri": "s3://ckpt/noimage"},
    )
    cluster.create_job(namespace, job)
    running = not_running(cluster, namespace, "noimage", c.Reason.IMAGE_PULL)
    assert "localhost/finetune-trainer:absent" in running["message"]
    pods = cluster.core.list_namespaced_pod(namespace, label_selector=f"{c.LABEL_JOB}=noimage")
    assert {p.spec.node_name for p in pods.items} <= {"ft-node-0", "ft-node-1"}
    # The operator's log, read through the kubelet of its node.
    log = cluster.core.read_namespaced_pod_log(
        operator_pod(cluster, operator["namespace"]).metadata.name, operator["namespace"]
    )
    assert "noimage" in log


# A new trainer image is imported into both nodes first (the fixture): about 5 minutes.
@pytest.mark.timeout(2400)
def test_a_permanent_trainer_error_on_two_nodes_fails_the_job_with_its_reason(
    cluster: Cluster, namespace: str, operator: dict[str, str], trainer_image: str
) -> None:
    """The trainer image on both nodes, as uid 1000 under the restricted standard: the
    gang meets through the headless Service, the workers find no data files, the
    trainer writes its termination message, and the operator fails the job with it."""
    job = two_node_job(
        "nomodel",
        trainer_image,
        model={"uri": "file:///models/absent", "numLabels": 2},
        dataset={"uri": "file:///data/absent.csv", "textColumns": ["text"]},
        checkpoints={"uri": "file:///scratch/checkpoints"},
        scheduling=spread("nomodel"),
    )
    cluster.create_job(namespace, job)

    status = wait_for(lambda: ended(cluster, namespace, "nomodel"), 300, "the job to end")
    failed = next(x for x in status["conditions"] if x["type"] == "Failed")
    assert (status["phase"], failed["reason"]) == ("Failed", c.Reason.TRAINER_ERROR)
    assert "exited with code 42: " in failed["message"]
    assert "42: 42" not in failed["message"]  # the reason, not the message's own code
    assert "spec.dataset.uri: no data files found at file:///data/absent.csv" in failed["message"]
    # Where the gang ran, from the scheduler's events: the operator deletes the pods
    # still running when the job fails, so the pods left may be fewer than two.
    assert sorted(wait_placed(cluster, namespace, 2).values()) == ["ft-node-0", "ft-node-1"]
    pods = cluster.core.list_namespaced_pod(namespace, label_selector=f"{c.LABEL_JOB}=nomodel")
    assert pods.items
    assert {p.spec.security_context.run_as_user for p in pods.items} == {1000}
