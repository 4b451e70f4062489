"""What a FineTuneJob becomes: the builders' manifests, checked without and with a cluster."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
import yaml

from finetune_api import names as c
from finetune_api.types import HubSpec
from finetune_operator import builders
from finetune_trainer.config import from_env

from .conftest import Cluster

ROOT = Path(__file__).resolve().parents[1]


def example_job(name: str = "mrpc-bert", namespace: str = "ml") -> builders.Job:
    obj = yaml.safe_load((ROOT / "examples" / "mrpc-bert-2x8.yaml").read_text())
    obj["metadata"].update(name=name, namespace=namespace, uid="0f0f-uid")
    return builders.Job.from_object(obj)


def env_of(pod: dict[str, Any]) -> dict[str, Any]:
    return {
        e["name"]: e.get("value", e.get("valueFrom")) for e in pod["spec"]["containers"][0]["env"]
    }


def test_two_nodes_of_eight_gpus() -> None:
    job = example_job()
    pods = builders.pods(job, attempt=3)
    assert [p["metadata"]["name"] for p in pods] == ["mrpc-bert-node-0", "mrpc-bert-node-1"]
    for i, pod in enumerate(pods):
        meta, spec = pod["metadata"], pod["spec"]
        assert meta["labels"] == {
            c.LABEL_JOB: "mrpc-bert",
            c.LABEL_ROLE: "worker",
            c.LABEL_NODE_INDEX: str(i),
            c.LABEL_ATTEMPT: "3",
        }
        assert meta["ownerReferences"] == [
            {
                "apiVersion": "finetune.dev/v1alpha1",
                "kind": "FineTuneJob",
                "name": "mrpc-bert",
                "uid": "0f0f-uid",
                "controller": True,
                "blockOwnerDeletion": True,
            }
        ]
        assert meta["annotations"]["prometheus.io/port"] == "9420"
        assert (spec["hostname"], spec["subdomain"]) == (f"mrpc-bert-node-{i}", "mrpc-bert")
        container = spec["containers"][0]
        assert container["resources"]["limits"] == {
            "nvidia.com/gpu": "8",
            "cpu": "32",
            "memory": "256Gi",
        }
        assert container["resources"]["requests"] == container["resources"]["limits"]
        assert {"name": "shm", "mountPath": c.SHM_PATH} in container["volumeMounts"]
        assert {"name": "shm", "emptyDir": {"medium": "Memory"}} in spec["volumes"]
        # Scratch is bounded: the documented default when the job says nothing.
        assert {"name": "scratch", "emptyDir": {"sizeLimit": "200Gi"}} in spec["volumes"]
        assert {"name": "scratch", "mountPath": c.SCRATCH_PATH} in container["volumeMounts"]
        assert spec["nodeSelector"] == {"nvidia.com/gpu.product": "NVIDIA-H100-80GB-HBM3"}
        assert spec["tolerations"] == [
            {"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"}
        ]
        assert spec["restartPolicy"] == "Never"
        assert spec["automountServiceAccountToken"] is False


def test_pod_environment_is_the_trainer_contract() -> None:
    job = example_job()
    for i, pod in enumerate(builders.pods(job, attempt=1)):
        env = env_of(pod)
        plain = {k: v for k, v in env.items() if isinstance(v, str)}
        # What the trainer in that pod will parse, on GPU nodes (simulated: none here).
        cfg = from_env(plain, gpu=lambda device: True)
        assert (cfg.job_name, cfg.namespace, cfg.num_nodes, cfg.node_rank) == (
            "mrpc-bert",
            "ml",
            2,
            i,
        )
        assert cfg.procs_per_node == 8
        assert cfg.world_size == 16
        assert "FT_PROCS_PER_NODE" not in env  # the trainer decides: one per GPU
        assert cfg.master_addr == "mrpc-bert-node-0.mrpc-bert.ml.svc"
        assert cfg.spec == job.spec
        assert str(cfg.termination_log) == pod["spec"]["containers"][0]["terminationMessagePath"]


def test_processes_per_node_reaches_the_trainer() -> None:
    job = example_job()
    job.spec.resources.processes_per_node = 2
    env = env_of(builders.pod(job, 0, attempt=1))
    assert env["FT_PROCS_PER_NODE"] == "2"
    cfg = from_env({k: v for k, v in env.items() if isinstance(v, str)})
    per_gpu = job.spec.training.per_device_train_batch_size
    assert (cfg.world_size, cfg.micro_batch) == (4, per_gpu * 4)  # 2 x 8 GPUs' batch, 4 ways


def test_credentials_only_as_secret_references() -> None:
    pod = builders.pod(example_job(), 0, attempt=1)
    env = env_of(pod)
    for var in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY"):
        assert env[var] == {"secretKeyRef": {"name": "s3-credentials", "key": var}}
    # The spec handed to the pod names the Secret, and holds no key itself.
    s3 = json.loads(env["FT_JOB_SPEC"])["s3"]
    assert set(s3) == {"region", "forcePathStyle", "credentialsSecret", "retrySeconds"}
    assert s3["credentialsSecret"]["name"] == "s3-credentials"


def test_hub_mirror_and_token_reach_the_pod_as_references() -> None:
    job = example_job()
    job.spec.hub = HubSpec.model_validate(
        {"endpoint": "https://hf-mirror.internal", "tokenSecret": {"name": "hub-token"}}
    )
    env = env_of(builders.pod(job, 0, attempt=1))
    assert env["HF_ENDPOINT"] == "https://hf-mirror.internal"
    assert env["HF_TOKEN"] == {"secretKeyRef": {"name": "hub-token", "key": "HF_TOKEN"}}
    assert json.loads(env["FT_JOB_SPEC"])["hub"] == {
        "endpoint": "https://hf-mirror.internal",
        "tokenSecret": {"name": "hub-token", "key": "HF_TOKEN"},
        "retrySeconds": 300,
    }


def test_headless_service_for_rendezvous() -> None:
    svc = builders.service(example_job())
    assert svc["metadata"]["name"] == "mrpc-bert"
    assert svc["spec"]["clusterIP"] == "None"
    assert svc["spec"]["publishNotReadyAddresses"] is True
    assert svc["spec"]["selector"] == {c.LABEL_JOB: "mrpc-bert", c.LABEL_ROLE: "worker"}
    assert {p["port"] for p in svc["spec"]["ports"]} == {29500, 9420}


@pytest.mark.parametrize(
    ("gang", "api"),
    [
        ("coscheduling", "scheduling.x-k8s.io/v1alpha1"),
        ("volcano", "scheduling.volcano.sh/v1beta1"),
    ],
)
def test_gang_scheduling_groups(gang: builders.Gang, api: str) -> None:
    job = example_job()
    group = builders.pod_group(job, gang)
    assert group is not None
    assert group["apiVersion"] == api
    assert group["spec"]["minMember"] == 2
    pod = builders.pod(job, 1, attempt=1, gang=gang)
    members = {**pod["metadata"]["labels"], **pod["metadata"]["annotations"]}
    assert "mrpc-bert" in (
        members.get(c.COSCHEDULING_LABEL),
        members.get(c.VOLCANO_GROUP_ANNOTATION),
    )
    assert builders.pod_group(job, "none") is None


def test_the_scratch_size_comes_from_the_spec() -> None:
    job = example_job()
    job.spec.resources.scratch = "500Gi"
    volumes = builders.pod(job, 0, attempt=1)["spec"]["volumes"]
    assert {"name": "scratch", "emptyDir": {"sizeLimit": "500Gi"}} in volumes


def test_pvc_uris_become_volumes() -> None:
    obj = {
        "metadata": {"name": "j", "namespace": "n", "uid": "u"},
        "spec": {
            "model": {"uri": "pvc://models/bert"},
            "dataset": {"uri": "pvc://data/train.csv", "textColumns": ["t"]},
            "checkpoints": {"uri": "pvc://models/ckpt"},
        },
    }
    pod = builders.pod(builders.Job.from_object(obj), 0, attempt=1)
    claims = {
        v["persistentVolumeClaim"]["claimName"]
        for v in pod["spec"]["volumes"]
        if "persistentVolumeClaim" in v
    }
    assert claims == {"models", "data"}
    mounts = {m["mountPath"] for m in pod["spec"]["containers"][0]["volumeMounts"]}
    assert {"/mnt/pvc/models", "/mnt/pvc/data"} <= mounts


def test_pods_pass_the_restricted_pod_security_standard(cluster: Cluster, namespace: str) -> None:
    """The apiserver's Pod Security admission (enforcing "restricted") accepts them."""
    job = cluster.create_job(
        namespace, yaml.safe_load((ROOT / "examples" / "mrpc-bert-2x8.yaml").read_text())
    )
    built = builders.Job.from_object(job)
    cluster.core.create_namespaced_service(namespace, builders.service(built))
    for pod in builders.pods(built, attempt=1):
        created = cluster.core.create_namespaced_pod(namespace, pod)
        assert created.metadata.owner_references[0].uid == job["metadata"]["uid"]
    # Deleting the job garbage-collects what it owns.
    cluster.custom.delete_namespaced_custom_object(
        c.GROUP, c.VERSION, namespace, c.PLURAL, "mrpc-bert"
    )
    from controlplane import wait_for

    wait_for(
        lambda: not cluster.core.list_namespaced_pod(namespace).items,
        60,
        "the job's pods to be garbage-collected",
    )
