"""The Helm chart, rendered by a real helm and checked against the real apiserver."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml

from .conftest import Cluster

ROOT = Path(__file__).resolve().parent.parent
CHART = ROOT / "charts" / "finetune-operator"


def render(helm: str, *sets: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    args = [helm, "template", "finetune-operator", str(CHART), "-n", "finetune-system"]
    for s in sets:
        args += ["--set", s]
    return subprocess.run(args, capture_output=True, text=True, check=check)


def objects(text: str) -> dict[str, dict[str, Any]]:
    return {f"{d['kind']}/{d['metadata']['name']}": d for d in yaml.safe_load_all(text) if d}


def test_lint_passes(helm: str) -> None:
    done = subprocess.run([helm, "lint", "--strict", str(CHART)], capture_output=True, text=True)
    assert done.returncode == 0, done.stdout + done.stderr


def test_the_chart_grants_exactly_the_manifests_rules(helm: str) -> None:
    rendered = objects(render(helm).stdout)
    manifests = {
        f"{d['kind']}/{d['metadata']['name']}": d
        for d in yaml.safe_load_all((ROOT / "manifests" / "operator" / "operator.yaml").read_text())
    }
    role = manifests["ClusterRole/finetune-operator"]
    assert rendered["ClusterRole/finetune-operator"]["rules"] == role["rules"]
    binding = rendered["ClusterRoleBinding/finetune-operator"]
    assert binding["subjects"] == [
        {"kind": "ServiceAccount", "name": "finetune-operator", "namespace": "finetune-system"}
    ]
    # Opt-in only: no ServiceMonitor by default.
    assert not any(k.startswith("ServiceMonitor/") for k in rendered)


def test_values_become_operator_arguments(helm: str) -> None:
    rendered = objects(
        render(
            helm,
            "gangScheduler=volcano",
            "watchNamespaces={ml,research}",
            "workers=16",
            "serviceMonitor.enabled=true",
        ).stdout
    )
    container = rendered["Deployment/finetune-operator"]["spec"]["template"]["spec"]["containers"][
        0
    ]
    assert "--gang-scheduler=volcano" in container["args"]
    assert "--workers=16" in container["args"]
    assert [a for a in container["args"] if a.startswith("--namespace=")] == [
        "--namespace=ml",
        "--namespace=research",
    ]
    assert container["image"] == "finetune/operator:0.1.0"
    monitor = rendered["ServiceMonitor/finetune-operator"]
    assert monitor["spec"]["endpoints"][0]["port"] == "http"


@pytest.mark.parametrize(
    ("value", "complaint"),
    [("workers=0", "workers"), ("gangScheduler=kube-batch", "gangScheduler"), ("typo=1", "typo")],
)
def test_the_values_schema_refuses_bad_values(helm: str, value: str, complaint: str) -> None:
    done = render(helm, value, check=False)
    assert done.returncode != 0
    assert complaint in done.stderr


def test_the_rendered_chart_is_accepted_by_the_apiserver(
    helm: str, cluster: Cluster, namespace: str
) -> None:
    """Server-side dry run into a namespace enforcing "restricted" Pod Security."""
    text = render(helm).stdout
    docs = [d for d in yaml.safe_load_all(text) if d]
    for d in docs:
        if "namespace" in d["metadata"]:
            d["metadata"]["namespace"] = namespace
        if d["kind"] == "ClusterRoleBinding":
            d["subjects"][0]["namespace"] = namespace
    payload = "\n---\n".join(json.dumps(d) for d in docs)
    done = cluster.kubectl("apply", "--dry-run=server", "-f", "-", input=payload, check=False)
    assert done.returncode == 0, done.stderr
    assert "deployment.apps/finetune-operator created (server dry run)" in done.stdout
    assert "Warning" not in done.stderr  # no Pod Security warning either
