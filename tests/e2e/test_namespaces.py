"""Two jobs of one name in two namespaces at once: their pods, Services, DNS names,
ports, S3 prefixes and metrics stay apart, and a job pointed at the other's checkpoint
URI is refused instead of resuming from it."""

from __future__ import annotations

import uuid
from collections.abc import Callable, Iterator
from typing import Any

import pytest
from controlplane import wait_for

from conftest import Cluster
from e2e.support import RESTRICTED, ended, s3_secret
from finetune_api import names as c
from finetune_api.checkpoints import OWNER, owner_of
from prometheus.server import Prometheus


@pytest.fixture
def other_namespace(cluster: Cluster, s3: Any) -> Iterator[str]:
    name = f"twin-b-{uuid.uuid4().hex[:6]}"
    cluster.core.create_namespace({"metadata": {"name": name, "labels": RESTRICTED}})
    wait_for(
        lambda: cluster.core.read_namespaced_service_account("default", name),
        60,
        f"the default ServiceAccount of {name}",
    )
    s3_secret(cluster, name, s3)
    yield name
    cluster.core.delete_namespace(name)


def in_prefix(job: dict[str, Any], prefix: str) -> dict[str, Any]:
    job["spec"]["checkpoints"]["uri"] = f"s3://ckpt/{prefix}"
    job["spec"]["output"]["uri"] = f"s3://ckpt/{prefix}-out"
    return job


@pytest.mark.timeout(2400)  # the trainer image may first be imported into both nodes
def test_one_job_name_in_two_namespaces_at_once(
    cluster: Cluster,
    namespace: str,
    other_namespace: str,
    mrpc_job: Callable[..., dict[str, Any]],
    prometheus: Prometheus,
    s3: Any,
) -> None:
    both = (namespace, other_namespace)
    for ns in both:
        cluster.create_job(ns, in_prefix(mrpc_job("twin", maxSteps=60), ns))

    # A third job whose URI is the first one's, once that has committed a checkpoint.
    def first_committed() -> bool:
        return bool((cluster.get_job(namespace, "twin").get("status") or {}).get("lastCheckpoint"))

    wait_for(first_committed, 600, "the first twin to commit a checkpoint")
    cluster.create_job(other_namespace, in_prefix(mrpc_job("intruder", maxSteps=60), namespace))

    for ns in both:
        status = wait_for(lambda ns=ns: ended(cluster, ns, "twin"), 900, f"twin in {ns} to end")
        assert (status["phase"], status["progress"]["step"]) == ("Succeeded", 60), status
        assert cluster.core.read_namespaced_service("twin", ns).spec.cluster_ip == "None"
        pod = cluster.core.read_namespaced_pod(c.node_name("twin", 1), ns)
        env = {e.name: e.value for e in pod.spec.containers[0].env}
        assert env["FT_MASTER_ADDR"].startswith(f"{c.node_name('twin', 0)}.twin.{ns}.")
        owner = s3.client().get_object(Bucket="ckpt", Key=f"{ns}/{OWNER}")["Body"].read()
        assert owner_of(owner) == f"{ns}/twin"
    intruder = wait_for(lambda: ended(cluster, other_namespace, "intruder"), 300, "the intruder")
    failed = next(x for x in intruder["conditions"] if x["type"] == "Failed")
    assert (intruder["phase"], failed["reason"]) == ("Failed", c.Reason.TRAINER_ERROR)
    assert (
        f"spec.checkpoints.uri: s3://ckpt/{namespace} holds the checkpoints of "
        in (failed["message"])
    )
    assert f"FineTuneJob {namespace}/twin" in failed["message"]

    # One series per namespace in Prometheus, each at its own job's end.
    steps = prometheus.query(
        'max by (namespace) (max_over_time(finetune_global_step{finetunejob="twin"}[10m]))'
    )
    assert {s["metric"]["namespace"]: float(s["value"][1]) for s in steps} == {
        ns: 60.0 for ns in both
    }
