"""Pods of the probe test image, as the node tests create and read them."""

from __future__ import annotations

from typing import Any

from kubernetes import client

from conftest import Cluster
from node.nodes import PROBE_IMAGE

RESTRICTED_CONTAINER = {
    "allowPrivilegeEscalation": False,
    "capabilities": {"drop": ["ALL"]},
    "runAsNonRoot": True,
    "runAsUser": 65532,
    "seccompProfile": {"type": "RuntimeDefault"},
}


def probe_pod(name: str, node: str, args: list[str], **extra: Any) -> dict[str, Any]:
    container = {
        "name": "probe",
        "image": PROBE_IMAGE,
        "imagePullPolicy": "Never",
        "args": args,
        "securityContext": RESTRICTED_CONTAINER,
        **extra,
    }
    return {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": name, "labels": {"app": "probe", "pod": name}},
        "spec": {
            "nodeSelector": {"finetune.dev/test-node": node},
            "restartPolicy": "Never",
            "hostname": name,
            "subdomain": "probes",
            "automountServiceAccountToken": False,
            "securityContext": {"runAsNonRoot": True, "seccompProfile": {"type": "RuntimeDefault"}},
            "containers": [container],
        },
    }


def pod_of(cluster: Cluster, namespace: str, name: str) -> client.V1Pod:
    return cluster.core.read_namespaced_pod(name, namespace)


def finished(cluster: Cluster, namespace: str, name: str) -> client.V1Pod | None:
    pod = pod_of(cluster, namespace, name)
    return pod if pod.status.phase in ("Succeeded", "Failed") else None
