"""The Helm chart, rendered by a real helm and checked against the real apiserver."""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml
from controlplane import wait_for

from finetune_api import names as c
from finetune_operator import builders

from .conftest import Cluster
from .test_builders import example_job

ROOT = Path(__file__).resolve().parent.parent
CHART = ROOT / "charts" / "finetune-operator"
DASHBOARDS = CHART / "dashboards"
SNAPSHOT = ROOT / "tests" / "snapshots" / "chart-default.yaml"


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


def test_replicas_come_with_leader_election_and_its_one_lease(helm: str) -> None:
    rendered = objects(render(helm, "replicaCount=2").stdout)
    deployment = rendered["Deployment/finetune-operator"]["spec"]
    assert deployment["replicas"] == 2
    assert deployment["strategy"]["type"] == "RollingUpdate"
    args = deployment["template"]["spec"]["containers"][0]["args"]
    assert {"--leader-elect", "--leader-election-id=finetune-operator"} <= set(args)
    role = rendered["Role/finetune-operator-leader-election"]
    assert role["metadata"]["namespace"] == "finetune-system"
    named = [r for r in role["rules"] if "resourceNames" in r]
    assert named == [
        {"apiGroups": ["coordination.k8s.io"], "resources": ["leases"],
         "resourceNames": ["finetune-operator"], "verbs": ["get", "update"]}
    ]  # fmt: skip
    refused = render(helm, "replicaCount=2", "leaderElection.enabled=false", check=False)
    assert refused.returncode != 0
    assert "replicaCount above 1 needs leaderElection.enabled=true" in refused.stderr
    single = objects(render(helm, "leaderElection.enabled=false").stdout)
    assert single["Deployment/finetune-operator"]["spec"]["strategy"]["type"] == "Recreate"
    assert "Role/finetune-operator-leader-election" not in single


def test_the_default_render_matches_its_snapshot(helm: str) -> None:
    """What `helm install` with no values creates, reviewed as a diff whenever it changes
    (`UPDATE_SNAPSHOTS=1` rewrites the snapshot). The dashboards' JSON is held to the
    generated files instead of being repeated here."""
    docs = [d for d in yaml.safe_load_all(render(helm).stdout) if d]
    for d in docs:
        if d["kind"] == "ConfigMap" and "grafana_dashboard" in d["metadata"]["labels"]:
            ((key, text),) = d["data"].items()
            assert text == (DASHBOARDS / key.removeprefix("finetune-")).read_text().rstrip("\n")
            d["data"][key] = f"<{DASHBOARDS.relative_to(ROOT) / key.removeprefix('finetune-')}>"
    text = yaml.safe_dump_all(docs, sort_keys=True)
    if os.environ.get("UPDATE_SNAPSHOTS"):
        SNAPSHOT.write_text(text)
    assert text == SNAPSHOT.read_text(), "the chart's default render changed: review, then " \
        "rerun with UPDATE_SNAPSHOTS=1"  # fmt: skip


def test_the_pod_monitor_scrapes_the_training_pods_the_operator_makes(helm: str) -> None:
    rendered = objects(render(helm, "podMonitor.enabled=true", "watchNamespaces={ml}").stdout)
    monitor = rendered["PodMonitor/finetune-operator-trainers"]["spec"]
    pod = builders.pod(example_job(), 0, 1)
    assert monitor["selector"]["matchLabels"].items() <= pod["metadata"]["labels"].items()
    ports = {p["name"]: p["containerPort"] for p in pod["spec"]["containers"][0]["ports"]}
    (endpoint,) = monitor["podMetricsEndpoints"]
    assert ports[endpoint["port"]] == c.METRICS_PORT
    assert monitor["namespaceSelector"] == {"matchNames": ["ml"]}
    everywhere = objects(render(helm, "podMonitor.enabled=true").stdout)
    assert everywhere["PodMonitor/finetune-operator-trainers"]["spec"]["namespaceSelector"] == {
        "any": True
    }
    assert "PodMonitor/finetune-operator-trainers" not in objects(render(helm).stdout)


def test_the_dashboards_are_config_maps_for_the_grafana_sidecar(helm: str) -> None:
    rendered = objects(
        render(
            helm,
            "dashboards.label=grafana_dashboard_ml",
            "dashboards.labelValue=yes",
            "dashboards.namespace=monitoring",
            "dashboards.folder=Training",
        ).stdout
    )
    maps = {k: v for k, v in rendered.items() if k.startswith("ConfigMap/")}
    assert sorted(maps) == [
        "ConfigMap/finetune-operator-dashboard-operator",
        "ConfigMap/finetune-operator-dashboard-training",
    ]
    for m in maps.values():
        assert m["metadata"]["namespace"] == "monitoring"
        assert m["metadata"]["labels"]["grafana_dashboard_ml"] == "yes"
        assert m["metadata"]["annotations"] == {"grafana_folder": "Training"}
        ((key, text),) = m["data"].items()
        assert json.loads(text) == json.loads(
            (DASHBOARDS / key.removeprefix("finetune-")).read_text()
        )
    off = objects(render(helm, "dashboards.enabled=false").stdout)
    assert not any(k.startswith("ConfigMap/") for k in off)


def test_helm_install_upgrade_and_uninstall_on_the_apiserver(
    helm: str, cluster: Cluster, namespace: str, tmp_path: Path
) -> None:
    """A real release: users with the aggregated roles use FineTuneJobs (and no Secret),
    an upgrade changes the operator's arguments, an uninstall keeps the CRD and jobs."""
    kubeconfig = str(cluster.plane.kubeconfig_path)
    release = f"ftlife-{namespace[-6:]}"

    def helm_run(*args: str) -> str:
        argv = [helm, *args, "-n", namespace, "--kubeconfig", kubeconfig]
        done = subprocess.run(argv, capture_output=True, text=True, check=False, timeout=120)
        assert done.returncode == 0, done.stdout + done.stderr
        return done.stdout

    out = helm_run("install", release, str(CHART), "--set", "image.pullPolicy=Never")
    assert "Next steps" in out
    assert "FineTuneJob: training" in out
    try:
        users_get_the_aggregated_roles(cluster, namespace, release, tmp_path)
        helm_run("upgrade", release, str(CHART), "--reuse-values", "--set", "workers=3")
        deployment = cluster.plane.kubectl(
            "get", "deploy", release, "-n", namespace, "-o", "json"
        ).stdout
        args = json.loads(deployment)["spec"]["template"]["spec"]["containers"][0]["args"]
        assert "--workers=3" in args
        values = yaml.safe_load(helm_run("get", "values", release, "-o", "yaml"))
        assert values == {"image": {"pullPolicy": "Never"}, "workers": 3}
    finally:
        helm_run("uninstall", release)
    # The CRD stays (helm never deletes what it installed from crds/), so do the jobs.
    assert cluster.kubectl("get", f"crd/{c.CRD_NAME}", check=False).returncode == 0
    assert cluster.kubectl("get", "ftj", "kept", "-n", namespace, check=False).returncode == 0
    gone = cluster.kubectl("get", "clusterrole", f"{release}-edit", check=False)
    assert gone.returncode != 0


def users_get_the_aggregated_roles(
    cluster: Cluster, namespace: str, release: str, tmp_path: Path
) -> None:
    """alice holds the chart's edit role in the namespace, bob the built-in view role."""
    for user, role in (("alice", f"{release}-edit"), ("bob", "view")):
        cluster.kubectl(
            "create", "rolebinding", f"{user}-{role}", f"--clusterrole={role}",
            f"--user={user}", "-n", namespace,
        )  # fmt: skip

    def can(user: str, verb: str, resource: str) -> bool:
        done = cluster.kubectl(
            "auth", "can-i", verb, resource, "-n", namespace, f"--as={user}", check=False
        )
        return done.stdout.strip() == "yes"

    # The aggregation controller copies the chart's rules into `view` shortly.
    wait_for(lambda: can("bob", "list", "finetunejobs.finetune.dev"), 60, "view to aggregate")
    assert not can("bob", "create", "finetunejobs.finetune.dev")
    assert not can("alice", "get", "secrets")
    assert not can("alice", "list", "secrets")
    job = yaml.safe_load((ROOT / "examples" / "mrpc-bert-2x8.yaml").read_text())
    for name in ("kept", "deleted"):
        job["metadata"] = {"name": name}
        path = tmp_path / f"{name}.yaml"
        path.write_text(yaml.safe_dump(job))
        cluster.kubectl("create", "-f", str(path), "-n", namespace, "--as=alice")
    cluster.kubectl("delete", "ftj", "deleted", "-n", namespace, "--as=alice", "--wait=false")
    listed = cluster.kubectl("get", "ftj", "-n", namespace, "--as=bob", "-o", "name").stdout
    assert listed.split() == ["finetunejob.finetune.dev/kept"]
