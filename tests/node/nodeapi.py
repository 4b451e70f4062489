"""The test nodes as the API sees them, through kubectl as the admin."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

from controlplane import binaries
from layout import GPU_RESOURCE, _run


def kubectl(kubeconfig: Path, *args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    return _run(str(binaries() / "kubectl"), "--kubeconfig", str(kubeconfig), *args, check=check)


def ready(kubeconfig: Path, name: str) -> bool:
    got = kubectl(
        kubeconfig, "get", "node", name, "-o",
        "jsonpath={.status.conditions[?(@.type=='Ready')].status}", check=False,
    )  # fmt: skip
    return got.stdout.strip() == "True"


def advertise_gpus(kubeconfig: Path, name: str, count: int) -> None:
    """What a device plugin would do on a GPU node: the documented status patch."""
    patch = [
        {
            "op": "add",
            "path": "/status/capacity/" + GPU_RESOURCE.replace("/", "~1"),
            "value": str(count),
        }
    ]
    kubectl(kubeconfig, "patch", "node", name, "--subresource", "status", "--type", "json",
            "-p", json.dumps(patch))  # fmt: skip


def allocatable_gpus(kubeconfig: Path, name: str) -> int:
    path = "{.status.allocatable." + GPU_RESOURCE.replace(".", "\\.") + "}"
    got = kubectl(kubeconfig, "get", "node", name, "-o", f"jsonpath={path}", check=False)
    return int(got.stdout.strip() or 0)
