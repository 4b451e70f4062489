"""The operator as users run it: its image built from operator/Dockerfile, installed
with `helm install` from the chart, running as a pod on a real node under the
chart's ServiceAccount, reaching the apiserver through the kubernetes Service."""

from __future__ import annotations

import subprocess
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from controlplane import ROOT, built, wait_for
from kubernetes import client

from conftest import Cluster
from finetune_api import names as c

CHART = ROOT / "charts" / "finetune-operator"
RESTRICTED = {"pod-security.kubernetes.io/enforce": "restricted"}


def build_image(which: str) -> tuple[Path, str]:
    """tests/images/build.sh: the image from its Dockerfile (cached by its inputs)."""
    archive, image = built(ROOT / "tests" / "images" / "build.sh", which, timeout=1800)[-2:]
    return Path(archive), image


@pytest.fixture(scope="module")
def operator(cluster: Cluster, nodes: Any, helm: str) -> Iterator[dict[str, str]]:
    archive, image = build_image("operator")
    nodes.load_image(archive, image)
    ns = f"finetune-system-{uuid.uuid4().hex[:6]}"
    cluster.core.create_namespace({"metadata": {"name": ns, "labels": RESTRICTED}})
    repository, tag = image.rsplit(":", 1)
    kubeconfig = str(cluster.plane.kubeconfig_path)
    release = subprocess.run(
        [
            helm, "install", "finetune-operator", str(CHART), "--namespace", ns,
            "--kubeconfig", kubeconfig, "--wait", "--timeout", "180s",
            "--set", f"image.repository={repository}", "--set", f"image.tag={tag}",
            "--set", "image.pullPolicy=Never", "--set", "resyncSeconds=10",
        ],
        capture_output=True, text=True, check=False, timeout=240,
    )  # fmt: skip
    try:
        assert release.returncode == 0, release.stdout + release.stderr
        yield {"namespace": ns, "image": image}
    finally:
        subprocess.run(
            [helm, "uninstall", "finetune-operator", "-n", ns, "--kubeconfig", kubeconfig],
            capture_output=True, check=False, timeout=120,
        )  # fmt: skip
        cluster.core.delete_namespace(ns)


def two_node_job(name: str, image: str, **spec: Any) -> dict[str, Any]:
    """A job of 2 nodes x 1 GPU whose pods use `image` as it is on the nodes."""
    return {
        "apiVersion": c.API_VERSION,
        "kind": c.KIND,
        "metadata": {"name": name},
        "spec": {
            "resources": {"nodes": 2, "gpusPerNode": 1},
            "pod": {"image": image, "imagePullPolicy": "Never"},
            **spec,
        },
    }


def operator_pod(cluster: Cluster, ns: str) -> client.V1Pod:
    pods = cluster.core.list_namespaced_pod(
        ns, label_selector="app.kubernetes.io/name=finetune-operator"
    )
    assert len(pods.items) == 1
    return pods.items[0]


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

    def reported() -> dict[str, Any] | None:
        status = cluster.get_job(namespace, "noimage").get("status") or {}
        running = next((x for x in status.get("conditions", []) if x["type"] == "Running"), {})
        return running if running.get("reason") == c.Reason.IMAGE_PULL else None

    running = wait_for(reported, 120, "the job to report the missing image")
    assert running["status"] == "False"
    assert "localhost/finetune-trainer:absent" in running["message"]
    pods = cluster.core.list_namespaced_pod(namespace, label_selector=f"{c.LABEL_JOB}=noimage")
    assert {p.spec.node_name for p in pods.items} <= {"ft-node-0", "ft-node-1"}
    # The operator's log, read through the kubelet of its node.
    log = cluster.core.read_namespaced_pod_log(
        operator_pod(cluster, operator["namespace"]).metadata.name, operator["namespace"]
    )
    assert "noimage" in log


def scheduled_nodes(cluster: Cluster, namespace: str) -> dict[str, str]:
    """Pod name -> node, from the scheduler's Scheduled events."""
    events = cluster.core.list_namespaced_event(namespace, field_selector="reason=Scheduled")
    placed = {}
    for event in events.items:  # "Successfully assigned NS/POD to NODE"
        pod_ref, _, node = event.message.rpartition(" to ")
        placed[pod_ref.rpartition("/")[2]] = node
    return placed


@pytest.fixture(scope="module")
def trainer_image(nodes: Any) -> str:
    archive, image = build_image("trainer")
    nodes.load_image(archive, image)  # once per machine: the nodes keep their images
    return image


# A new trainer image is imported into both nodes first: about 5 minutes.
@pytest.mark.timeout(2400)
def test_a_permanent_trainer_error_on_two_nodes_fails_the_job_with_its_reason(
    cluster: Cluster, namespace: str, operator: dict[str, str], trainer_image: str
) -> None:
    """The trainer image on both nodes, as uid 1000 under the restricted standard: the
    gang meets through the headless Service, the workers find no data files, the
    trainer writes its termination message, and the operator fails the job with it."""
    spread = {
        "labelSelector": {"matchLabels": {c.LABEL_JOB: "nomodel"}},
        "topologyKey": "kubernetes.io/hostname",
    }
    job = two_node_job(
        "nomodel",
        trainer_image,
        model={"uri": "file:///models/absent", "numLabels": 2},
        dataset={"uri": "file:///data/absent.csv", "textColumns": ["text"]},
        checkpoints={"uri": "file:///scratch/checkpoints"},
        scheduling={
            "affinity": {
                "podAntiAffinity": {"requiredDuringSchedulingIgnoredDuringExecution": [spread]}
            }
        },
    )
    cluster.create_job(namespace, job)

    def ended() -> dict[str, Any] | None:
        status = cluster.get_job(namespace, "nomodel").get("status") or {}
        return status if status.get("phase") in ("Failed", "Succeeded") else None

    status = wait_for(ended, 300, "the job to end")
    failed = next(x for x in status["conditions"] if x["type"] == "Failed")
    assert (status["phase"], failed["reason"]) == ("Failed", c.Reason.TRAINER_ERROR)
    assert "exited with code 42: " in failed["message"]
    assert "42: 42" not in failed["message"]  # the reason, not the message's own code
    assert "spec.dataset.uri: no data files found at file:///data/absent.csv" in failed["message"]
    # Where the gang ran, from the scheduler's events: the operator deletes the pods
    # still running when the job fails, so the pods left may be fewer than two.
    def both_placed() -> dict[str, str] | None:
        placed = scheduled_nodes(cluster, namespace)
        return placed if len(placed) >= 2 else None

    placed = wait_for(both_placed, 30, "the scheduler's events for both pods")
    assert sorted(placed.values()) == ["ft-node-0", "ft-node-1"]
    pods = cluster.core.list_namespaced_pod(namespace, label_selector=f"{c.LABEL_JOB}=nomodel")
    assert pods.items and {p.spec.security_context.run_as_user for p in pods.items} == {1000}
