"""The operator's shipped ClusterRole is enough, and no more. The operator that helm
installed runs as the chart's ServiceAccount (not cluster-admin); one job goes through
its whole life under it (created, restarted after a deleted pod, suspended, resumed,
finished, deleted by its TTL) and another is deleted by its user while it trains. Any
missing permission shows as a step that never happens or as a 403 in the operator's
log. What the ServiceAccount may do has no wildcard and no Secret in it."""

from __future__ import annotations

import re
from collections.abc import Callable
from typing import Any

import pytest
from controlplane import wait_for
from kubernetes import client

from conftest import Cluster
from e2e.support import attempt_running, ended, operator_pod
from finetune_api import names as c


def job_gone(cluster: Cluster, namespace: str, name: str) -> bool:
    """The job no longer exists, and none of its pods either."""
    try:
        cluster.get_job(namespace, name)
    except client.ApiException as e:
        return e.status == 404 and not pods_of(cluster, namespace, name)
    return False


def pods_of(cluster: Cluster, namespace: str, name: str) -> list[Any]:
    selector = f"{c.LABEL_JOB}={name}"
    return list(cluster.core.list_namespaced_pod(namespace, label_selector=selector).items)


def patch(cluster: Cluster, namespace: str, name: str, spec: dict[str, Any]) -> None:
    cluster.custom.patch_namespaced_custom_object(
        c.GROUP, c.VERSION, namespace, c.PLURAL, name, {"spec": spec}
    )


ROW = re.compile(r"^(\S*)\s+\[([^\]]*)\]\s+\[([^\]]*)\]\s+\[([^\]]*)\]\s*$")


def can_i(cluster: Cluster, namespace: str, account: str) -> list[tuple[str, str]]:
    """`kubectl auth can-i --list` as the ServiceAccount: (resource, verbs) rows. Rows of
    non-resource URLs (/api/*, /healthz...) are what every authenticated user may read,
    not the shipped role's, and are left out."""
    out = cluster.kubectl("auth", "can-i", "--list", "-n", namespace, f"--as={account}").stdout
    rows = [m.groups() for line in out.splitlines()[1:] if (m := ROW.match(line))]
    assert rows, out
    return [(resource, verbs) for resource, _urls, _names, verbs in rows if resource]


@pytest.mark.timeout(2400)
def test_a_whole_job_lifecycle_runs_under_the_shipped_cluster_role(
    cluster: Cluster,
    namespace: str,
    mrpc_job: Callable[..., dict[str, Any]],
    operator: dict[str, str],
) -> None:
    op = operator_pod(cluster, operator["namespace"])
    # The operator serves every test of this folder: only what it logs from here on, about
    # this test's jobs and namespace, is this test's.
    logged_before = len(
        cluster.core.read_namespaced_pod_log(op.metadata.name, operator["namespace"])
    )
    account = op.spec.service_account_name
    assert account not in (None, "", "default")
    life = mrpc_job("rbac-life", maxSteps=400)
    life["spec"]["runPolicy"] = {"ttlSecondsAfterFinished": 5}
    doomed = mrpc_job("rbac-gone", maxSteps=100_000)
    doomed["spec"]["resources"]["nodes"] = 1
    del doomed["spec"]["scheduling"]
    cluster.create_job(namespace, life)
    cluster.create_job(namespace, doomed)

    # Restart: a deleted pod starts attempt 2 (pods deleted and created, events written).
    attempt_running(cluster, namespace, "rbac-life", 1)
    cluster.core.delete_namespaced_pod(c.node_name("rbac-life", 1), namespace)
    attempt_running(cluster, namespace, "rbac-life", 2)

    # A user deletes a training job: its pods go with it.
    cluster.kubectl("delete", c.PLURAL, "rbac-gone", "-n", namespace)
    wait_for(
        lambda: job_gone(cluster, namespace, "rbac-gone"),
        180,
        "the deleted job and its pods to be gone",
    )

    # Suspend and resume.
    patch(cluster, namespace, "rbac-life", {"suspend": True})

    def suspended() -> bool:
        status = cluster.get_job(namespace, "rbac-life").get("status") or {}
        return status.get("phase") == "Suspended" and not pods_of(cluster, namespace, "rbac-life")

    wait_for(suspended, 180, "the job to be suspended and its pods gone")
    patch(cluster, namespace, "rbac-life", {"suspend": False})
    final = wait_for(lambda: ended(cluster, namespace, "rbac-life"), 900, "the job to end")
    assert final["phase"] == "Succeeded", final

    # TTL: the finished job is deleted by the operator, its pods with it.
    wait_for(
        lambda: job_gone(cluster, namespace, "rbac-life"),
        120,
        "the finished job and its pods to be deleted after its TTL",
    )

    log = cluster.core.read_namespaced_pod_log(op.metadata.name, operator["namespace"])
    mine = ("rbac-life", "rbac-gone", namespace)
    denied = [
        line
        for line in log[logged_before:].splitlines()
        if ("Forbidden" in line or " 403" in line) and any(m in line for m in mine)
    ]
    assert denied == [], denied[:5]

    rows = can_i(cluster, namespace, f"system:serviceaccount:{operator['namespace']}:{account}")
    assert any(r[0] == "pods" and "create" in r[1] for r in rows), rows
    assert [r for r in rows if "*" in r[0] or "*" in r[1]] == []
    assert [r for r in rows if r[0].startswith("secrets")] == []
