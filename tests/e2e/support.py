"""Helpers of the end-to-end tests: images from the Dockerfiles, jobs for two nodes,
where pods ran."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

from controlplane import ROOT, built, wait_for
from kubernetes import client

from conftest import Cluster
from finetune_api import names as c
from trainer_support import mrpc_spec

CHART = ROOT / "charts" / "finetune-operator"
RESTRICTED = {"pod-security.kubernetes.io/enforce": "restricted"}


def build_image(which: str) -> tuple[Path, str]:
    """tests/images/build.sh: the image from its Dockerfile (cached by its inputs)."""
    archive, image = built(ROOT / "tests" / "images" / "build.sh", which, timeout=1800)[-2:]
    return Path(archive), image


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


def spread(job: str) -> dict[str, Any]:
    """spec.scheduling that puts each pod of `job` on its own node."""
    term = {
        "labelSelector": {"matchLabels": {c.LABEL_JOB: job}},
        "topologyKey": "kubernetes.io/hostname",
    }
    anti = {"requiredDuringSchedulingIgnoredDuringExecution": [term]}
    return {"affinity": {"podAntiAffinity": anti}}


def operator_pod(cluster: Cluster, ns: str) -> client.V1Pod:
    pods = cluster.core.list_namespaced_pod(
        ns, label_selector="app.kubernetes.io/name=finetune-operator"
    )
    assert len(pods.items) == 1
    return pods.items[0]


def scheduled_nodes(cluster: Cluster, namespace: str) -> dict[str, str]:
    """Pod name -> node, from the scheduler's Scheduled events (they outlive the pods)."""
    events = cluster.core.list_namespaced_event(namespace, field_selector="reason=Scheduled")
    placed = {}
    for event in events.items:  # "Successfully assigned NS/POD to NODE"
        pod_ref, _, node = event.message.rpartition(" to ")
        placed[pod_ref.rpartition("/")[2]] = node
    return placed


def wait_placed(cluster: Cluster, namespace: str, count: int) -> dict[str, str]:
    def placed() -> dict[str, str] | None:
        got = scheduled_nodes(cluster, namespace)
        return got if len(got) >= count else None

    return wait_for(placed, 30, f"the scheduler's events for {count} pods")


def ended(cluster: Cluster, namespace: str, name: str) -> dict[str, Any] | None:
    """The job's status once it has Failed or Succeeded, else None."""
    status: dict[str, Any] = cluster.get_job(namespace, name).get("status") or {}
    return status if status.get("phase") in ("Failed", "Succeeded") else None


def s3_job(name: str, image: str, s3: Any, uris: dict[str, str], **training: Any) -> dict[str, Any]:
    """MRPC and the tiny model from the session's MinIO, reached from the pods with the
    keys of the Secret "s3-keys"; one pod per node."""
    spec = mrpc_spec(uris, name, evalStrategy="epoch", **training)
    spec["checkpoints"]["saveSteps"] = 40
    spec["s3"] = {
        "endpoint": s3.pod_endpoint,
        "forcePathStyle": True,
        "region": "us-east-1",
        "credentialsSecret": {"name": "s3-keys"},
    }
    return two_node_job(name, image, **spec, scheduling=spread(name))


def s3_secret(cluster: Cluster, namespace: str, s3: Any) -> None:
    """The Secret "s3-keys" that s3_job's pods read their S3 keys from."""
    cluster.core.create_namespaced_secret(
        namespace, {"metadata": {"name": "s3-keys"}, "stringData": s3.env()}
    )


def attempt_running(cluster: Cluster, namespace: str, name: str, attempt: int) -> dict[str, Any]:
    """Status once `attempt` trains and has committed a checkpoint of its own."""
    since: dict[str, int] = {}

    def committed() -> dict[str, Any] | None:
        status: dict[str, Any] = cluster.get_job(namespace, name).get("status") or {}
        assert status.get("phase") not in ("Failed", "Succeeded"), status
        if status.get("attempt") != attempt or status.get("phase") != "Running":
            return None
        step = (status.get("lastCheckpoint") or {}).get("step", 0)
        since.setdefault("step", step)
        return status if step > since["step"] else None

    return wait_for(committed, 600, f"attempt {attempt} to commit a checkpoint", every=0.5)


def resumed_at(cluster: Cluster, namespace: str, name: str) -> int:
    log = cluster.core.read_namespaced_pod_log(c.node_name(name, 0), namespace)
    found = re.search(r"resuming from \S+ at step (\d+)", log)
    assert found, log[-3000:]
    return int(found.group(1))


def pod_failures(cluster: Cluster, namespace: str, text: str) -> list[str]:
    """The messages of the job PodFailed events in `namespace` that contain `text`
    (the operator posts them just after the status that starts the next attempt)."""
    return [
        e.message
        for e in cluster.core.list_namespaced_event(namespace).items
        if e.involved_object.kind == c.KIND
        and e.reason == c.Reason.POD_FAILED
        and text in (e.message or "")
    ]
