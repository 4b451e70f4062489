"""Node loss on real nodes: a node's kubelet dies and every container of its pods with
it. The rank left on the other node fails, the operator starts a new attempt, and the
old attempt's pod on the dead node, which no kubelet will ever confirm as stopped, is
removed once the node lifecycle controller has marked the node not ready. The new
attempt waits for a node (its pods are spread one per node), starts when the node comes
back, resumes from the newest committed checkpoint and ends with exactly its steps."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any

import pytest
from controlplane import wait_for

from conftest import Cluster
from e2e.support import attempt_running, ended, operator_pod, resumed_at
from finetune_api import names as c
from operator_support import PodWatch

NAME = "stranded"


@pytest.fixture
def node_lifecycle(cluster: Cluster, nodes: Any) -> Iterator[None]:
    with cluster.plane.node_lifecycle(grace=20):
        yield


def node_ready(cluster: Cluster, name: str) -> str:
    node = cluster.core.read_node(name)
    return next(x.status for x in node.status.conditions if x.type == "Ready")


def untainted(cluster: Cluster, name: str) -> bool:
    taints = cluster.core.read_node(name).spec.taints or []
    return not any(t.key.startswith("node.kubernetes.io/") for t in taints)


def pods_of(cluster: Cluster, namespace: str) -> dict[str, Any]:
    pods = cluster.core.list_namespaced_pod(namespace, label_selector=f"{c.LABEL_JOB}={NAME}")
    return {p.metadata.name: p for p in pods.items}


def job_events(cluster: Cluster, namespace: str, reason: str) -> list[str]:
    return [
        e.message
        for e in cluster.core.list_namespaced_event(namespace).items
        if e.involved_object.kind == c.KIND and e.reason == reason
    ]


@pytest.mark.timeout(2400)  # the trainer image may first be imported into both nodes
def test_a_lost_node_restarts_the_gang_which_resumes_once_a_node_is_back(
    cluster: Cluster,
    namespace: str,
    mrpc_job: Callable[..., dict[str, Any]],
    operator: dict[str, str],
    nodes: Any,
    node_lifecycle: None,
    pod_watch: PodWatch,
) -> None:
    job = mrpc_job(NAME, numTrainEpochs=2)
    job["spec"]["checkpoints"]["saveSteps"] = 20
    cluster.create_job(namespace, job)
    before = attempt_running(cluster, namespace, NAME, 1)["lastCheckpoint"]["step"]

    # The node that does not run the operator dies, with a rank of the job on it.
    keep = operator_pod(cluster, operator["namespace"]).spec.node_name
    lost = next(n.name for n in nodes.nodes if n.name != keep)
    stranded = next(p for p in pods_of(cluster, namespace).values() if p.spec.node_name == lost)
    try:
        nodes.lose(lost)
        wait_for(lambda: node_ready(cluster, lost) == "Unknown", 120, "the node marked not ready")

        # The operator removes the old pod the dead kubelet cannot, and says so.
        def released() -> list[str] | None:
            names = pods_of(cluster, namespace)
            gone = stranded.metadata.name not in names or (
                names[stranded.metadata.name].metadata.labels[c.LABEL_ATTEMPT] == "2"
            )
            return job_events(cluster, namespace, c.Reason.NODE_LOST) if gone else None

        messages = wait_for(released, 240, "the dead node's pod to be removed")
        assert any(
            f"{stranded.metadata.name} of attempt 1 is on node {lost}" in m for m in messages
        ), messages
        # Attempt 2 waits for a second node, and the job says why.
        status = wait_for(
            lambda: (
                (s := cluster.get_job(namespace, NAME)["status"])
                and any(
                    x["type"] == "Unschedulable" and x["status"] == "True" for x in s["conditions"]
                )
                and s
            ),
            120,
            "the job to report its unschedulable pod",
        )
        assert (status["attempt"], status["restartCount"]) == (2, 1)
        pods = pods_of(cluster, namespace).values()
        attempts = {p.metadata.labels[c.LABEL_ATTEMPT] for p in pods}
        assert attempts == {"2"}, attempts
    finally:
        nodes.restore(lost)
        wait_for(lambda: untainted(cluster, lost), 120, "the node lifecycle controller's taints")

    status = attempt_running(cluster, namespace, NAME, 2)
    assert resumed_at(cluster, namespace, NAME) >= before  # never an earlier checkpoint
    final = wait_for(lambda: ended(cluster, namespace, NAME), 900, "the job to end")
    assert final["phase"] == "Succeeded", final
    assert (final["attempt"], final["restartCount"]) == (2, 1)
    total = final["progress"]["totalSteps"]
    assert final["progress"]["step"] == total
    log = cluster.core.read_namespaced_pod_log(c.node_name(NAME, 0), namespace)
    assert f"done: {total} steps" in log
    placed = {p.spec.node_name for p in pods_of(cluster, namespace).values()}
    assert placed == {n.name for n in nodes.nodes}, placed
    assert pod_watch.overlaps() == []  # attempt 2 began only once attempt 1 was gone
