"""The local control plane behaves like a real cluster, and the CRD works in it.

These tests use what users use: kubectl and the kubernetes client, against
kube-apiserver, kube-controller-manager and kube-scheduler built from source.
"""

from __future__ import annotations

import base64
import json
from typing import Any

import pytest
from kubernetes import client
from kubernetes.client.exceptions import ApiException

from finetune_api import names as c

from .conftest import ROOT, Cluster, wait_for
from .test_crd_validation import valid_job


def test_examples_apply_and_show_printer_columns(cluster: Cluster, namespace: str) -> None:
    applied = cluster.kubectl("apply", "-n", namespace, "-f", str(ROOT / "examples"))
    assert "finetunejob.finetune.dev/mrpc-bert created" in applied.stdout
    assert "finetunejob.finetune.dev/waimai-sentiment created" in applied.stdout

    table = cluster.kubectl("get", "ftj", "-n", namespace).stdout.splitlines()
    assert table[0].split() == [
        "NAME",
        "PHASE",
        "NODES",
        "GPUS/NODE",
        "STEP",
        "TOTAL",
        "LOSS",
        "AGE",
    ]
    rows = {line.split()[0]: line.split() for line in table[1:]}
    assert rows["mrpc-bert"][1:3] == ["2", "8"]
    assert rows["waimai-sentiment"][1:3] == ["1", "2"]

    wide = cluster.kubectl("get", "finetunejobs", "-n", namespace, "-o", "wide").stdout
    assert "MODEL" in wide
    assert "hf://bert-base-uncased" in wide


def test_printer_columns_show_progress_from_status(cluster: Cluster, namespace: str) -> None:
    cluster.create_job(namespace, valid_job("progress"))
    cluster.custom.patch_namespaced_custom_object_status(
        c.GROUP,
        c.VERSION,
        namespace,
        c.PLURAL,
        "progress",
        {
            "status": {
                "phase": "Running",
                "progress": {"step": 120, "totalSteps": 1377, "loss": 0.4321},
            }
        },
    )
    row = cluster.kubectl("get", "ftj", "progress", "-n", namespace, "--no-headers").stdout.split()
    assert row[1:7] == ["Running", "2", "8", "120", "1377", "0.4321"]


def test_kubectl_explain_shows_descriptions(cluster: Cluster) -> None:
    spec = cluster.kubectl("explain", "finetunejob.spec").stdout
    assert "What to fine-tune, on what data, with which resources." in spec
    for field in ("model", "dataset", "training", "resources", "checkpoints", "runPolicy"):
        assert f"  {field}\t<" in spec
    training = cluster.kubectl("explain", "ftj.spec.training.learningRate").stdout
    assert "Peak learning rate of AdamW." in training


def test_defaults_are_applied_by_the_apiserver(cluster: Cluster, namespace: str) -> None:
    job = valid_job("defaults")
    del job["spec"]["resources"]
    created = cluster.create_job(namespace, job)
    spec = created["spec"]
    assert spec["model"]["trustRemoteCode"] is False
    assert spec["model"]["numLabels"] == 2
    assert spec["dataset"]["streaming"] is True
    assert spec["dataset"]["maxSeqLength"] == 128
    assert spec["training"]["learningRate"] == pytest.approx(5e-5)
    assert spec["training"]["numTrainEpochs"] == 3
    assert spec["resources"] == {
        "nodes": 1,
        "gpusPerNode": 1,
        "gpuResourceName": "nvidia.com/gpu",
        "scratch": "200Gi",
    }
    assert spec["runPolicy"]["ttlSecondsAfterFinished"] == 604800
    assert spec["checkpoints"]["saveTotalLimit"] == 3
    assert spec["suspend"] is False


def test_status_is_a_subresource(cluster: Cluster, namespace: str) -> None:
    created = cluster.create_job(namespace, valid_job("status"))
    generation = created["metadata"]["generation"]
    # Status sent with the main resource is ignored.
    created["status"] = {"phase": "Succeeded"}
    cluster.custom.replace_namespaced_custom_object(
        c.GROUP, c.VERSION, namespace, c.PLURAL, "status", created
    )
    assert "status" not in cluster.get_job(namespace, "status")
    # Status written through the subresource sticks and leaves spec alone.
    cluster.custom.patch_namespaced_custom_object_status(
        c.GROUP,
        c.VERSION,
        namespace,
        c.PLURAL,
        "status",
        {
            "spec": {"suspend": True},
            "status": {
                "phase": "Running",
                "observedGeneration": generation,
                "conditions": [
                    {
                        "type": "Running",
                        "status": "True",
                        "reason": "AllPodsRunning",
                        "message": "2/2 pods running",
                        "lastTransitionTime": "2026-01-01T00:00:00Z",
                    }
                ],
            },
        },
    )
    job = cluster.get_job(namespace, "status")
    assert job["status"]["phase"] == "Running"
    assert job["status"]["conditions"][0]["reason"] == "AllPodsRunning"
    assert job["spec"]["suspend"] is False
    assert job["metadata"]["generation"] == generation


def test_status_values_are_validated(cluster: Cluster, namespace: str) -> None:
    cluster.create_job(namespace, valid_job("badstatus"))
    with pytest.raises(ApiException) as err:
        cluster.custom.patch_namespaced_custom_object_status(
            c.GROUP, c.VERSION, namespace, c.PLURAL, "badstatus", {"status": {"phase": "Exploded"}}
        )
    assert err.value.status == 422
    assert "status.phase" in json.loads(err.value.body)["message"]


def test_resource_version_conflicts_are_detected(cluster: Cluster, namespace: str) -> None:
    first = cluster.create_job(namespace, valid_job("conflict"))
    stale = json.loads(json.dumps(first))
    first["spec"]["suspend"] = True
    cluster.custom.replace_namespaced_custom_object(
        c.GROUP, c.VERSION, namespace, c.PLURAL, "conflict", first
    )
    stale["spec"]["runPolicy"] = {"backoffLimit": 9}
    with pytest.raises(ApiException) as err:
        cluster.custom.replace_namespaced_custom_object(
            c.GROUP, c.VERSION, namespace, c.PLURAL, "conflict", stale
        )
    assert err.value.status == 409
    assert cluster.get_job(namespace, "conflict")["spec"]["suspend"] is True


def test_garbage_collector_deletes_owned_objects(cluster: Cluster, namespace: str) -> None:
    job = cluster.create_job(namespace, valid_job("owner"))
    owner = client.V1OwnerReference(
        api_version=c.API_VERSION,
        kind=c.KIND,
        name="owner",
        uid=job["metadata"]["uid"],
        controller=True,
        block_owner_deletion=True,
    )
    cluster.core.create_namespaced_config_map(
        namespace,
        client.V1ConfigMap(
            metadata=client.V1ObjectMeta(name="owner-config", owner_references=[owner])
        ),
    )
    cluster.custom.delete_namespaced_custom_object(c.GROUP, c.VERSION, namespace, c.PLURAL, "owner")

    def gone() -> bool:
        try:
            cluster.core.read_namespaced_config_map("owner-config", namespace)
        except ApiException as e:
            return e.status == 404
        return False

    wait_for(gone, 60, "the garbage collector to delete the owned ConfigMap")


def restricted_pod(name: str, gpus: int) -> dict[str, Any]:
    return {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": name},
        "spec": {
            "securityContext": {
                "runAsNonRoot": True,
                "runAsUser": 1000,
                "seccompProfile": {"type": "RuntimeDefault"},
            },
            "containers": [
                {
                    "name": "trainer",
                    "image": "trainer:test",
                    "resources": {"limits": {"nvidia.com/gpu": str(gpus)}},
                    "securityContext": {
                        "allowPrivilegeEscalation": False,
                        "capabilities": {"drop": ["ALL"]},
                    },
                }
            ],
        },
    }


def test_scheduler_places_pods_by_gpu_capacity(cluster: Cluster, namespace: str) -> None:
    node = f"gpu-{namespace[-6:]}"
    cluster.core.create_node(
        {
            "apiVersion": "v1",
            "kind": "Node",
            "metadata": {"name": node},
            "status": {
                "capacity": {"cpu": "64", "memory": "512Gi", "pods": "110", "nvidia.com/gpu": "8"},
                "allocatable": {
                    "cpu": "64",
                    "memory": "512Gi",
                    "pods": "110",
                    "nvidia.com/gpu": "8",
                },
                "conditions": [
                    {
                        "type": "Ready",
                        "status": "True",
                        "reason": "KubeletReady",
                        "message": "registered by the test",
                    }
                ],
            },
        }
    )
    try:
        cluster.core.create_namespaced_pod(namespace, restricted_pod("fits", 8))
        cluster.core.create_namespaced_pod(namespace, restricted_pod("too-big", 16))
        wait_for(
            lambda: cluster.core.read_namespaced_pod("fits", namespace).spec.node_name == node,
            60,
            "the scheduler to bind the pod",
        )

        def unschedulable_message() -> str:
            pod = cluster.core.read_namespaced_pod("too-big", namespace)
            for cond in pod.status.conditions or []:
                if cond.type == "PodScheduled" and cond.reason == "Unschedulable":
                    return str(cond.message)
            return ""

        wait_for(
            lambda: "Insufficient nvidia.com/gpu" in unschedulable_message(),
            60,
            "the scheduler to report the pod unschedulable",
        )
    finally:
        cluster.core.delete_node(node)


def test_pod_security_restricted_is_enforced(cluster: Cluster, namespace: str) -> None:
    pod = restricted_pod("root", 1)
    del pod["spec"]["securityContext"]["runAsNonRoot"]
    pod["spec"]["securityContext"]["runAsUser"] = 0
    with pytest.raises(ApiException) as err:
        cluster.core.create_namespaced_pod(namespace, pod)
    assert err.value.status == 403
    assert 'violates PodSecurity "restricted' in json.loads(err.value.body)["message"]


def test_rbac_applies_to_service_account_tokens(cluster: Cluster, namespace: str) -> None:
    cluster.core.create_namespaced_service_account(
        namespace, client.V1ServiceAccount(metadata=client.V1ObjectMeta(name="reader"))
    )
    token = cluster.core.create_namespaced_service_account_token(
        "reader",
        namespace,
        client.AuthenticationV1TokenRequest(
            spec=client.V1TokenRequestSpec(audiences=[], expiration_seconds=600)
        ),
    ).status.token
    # The token is a JWT signed with the control plane's service-account key.
    claims = json.loads(base64.urlsafe_b64decode(token.split(".")[1] + "=="))
    assert claims["sub"] == f"system:serviceaccount:{namespace}:reader"

    conf = client.Configuration()
    conf.host = cluster.api.configuration.host
    conf.ssl_ca_cert = cluster.api.configuration.ssl_ca_cert
    conf.api_key = {"authorization": f"Bearer {token}"}
    with client.ApiClient(conf) as sa_api:
        as_reader = client.CustomObjectsApi(sa_api)
        with pytest.raises(ApiException) as err:
            as_reader.list_namespaced_custom_object(c.GROUP, c.VERSION, namespace, c.PLURAL)
        assert err.value.status == 403

        rbac = client.RbacAuthorizationV1Api(cluster.api)
        rbac.create_namespaced_role(
            namespace,
            {
                "metadata": {"name": "ftj-reader"},
                "rules": [
                    {
                        "apiGroups": [c.GROUP],
                        "resources": [c.PLURAL],
                        "verbs": ["get", "list", "watch"],
                    }
                ],
            },
        )
        rbac.create_namespaced_role_binding(
            namespace,
            {
                "metadata": {"name": "ftj-reader"},
                "roleRef": {
                    "apiGroup": "rbac.authorization.k8s.io",
                    "kind": "Role",
                    "name": "ftj-reader",
                },
                "subjects": [{"kind": "ServiceAccount", "name": "reader", "namespace": namespace}],
            },
        )

        def can_list() -> bool:
            as_reader.list_namespaced_custom_object(c.GROUP, c.VERSION, namespace, c.PLURAL)
            return True

        wait_for(can_list, 30, "the RoleBinding to take effect")
        with pytest.raises(ApiException) as err:
            as_reader.create_namespaced_custom_object(
                c.GROUP, c.VERSION, namespace, c.PLURAL, valid_job("denied")
            )
        assert err.value.status == 403
