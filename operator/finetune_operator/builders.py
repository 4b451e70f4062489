"""What a FineTuneJob becomes: pure functions from the job to Kubernetes manifests.

No framework and no API calls here: the reconciler applies what these return,
and tests check them without a cluster. Names are fixed (`<job>`,
`<job>-node-<i>`) so a repeated create can never make a duplicate, and every
object is owned by the job so deleting it deletes them.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from finetune_api import names as c
from finetune_api.env import AWS_ACCESS_KEY_ID, AWS_SECRET_ACCESS_KEY, HF_TOKEN, TrainerEnv
from finetune_api.names import node_name
from finetune_api.types import FineTuneJobSpec

Gang = Literal["none", "coscheduling", "volcano"]


@dataclass(frozen=True)
class Defaults:
    """Operator-wide settings (from its command line / Helm values)."""

    image: str = c.DEFAULT_TRAINER_IMAGE
    master_port: int = c.DEFAULT_MASTER_PORT
    metrics_port: int = c.METRICS_PORT


@dataclass(frozen=True)
class Job:
    """The parts of a FineTuneJob object the builders use."""

    name: str
    namespace: str
    uid: str
    spec: FineTuneJobSpec

    @classmethod
    def from_object(cls, obj: dict[str, Any]) -> Job:
        meta = obj["metadata"]
        return cls(
            meta["name"],
            meta["namespace"],
            meta["uid"],
            FineTuneJobSpec.model_validate(obj["spec"]),
        )


def master_address(job: Job) -> str:
    """Rank 0's stable DNS name through the headless Service."""
    return f"{node_name(job.name, 0)}.{job.name}.{job.namespace}.svc"


def owner_reference(job: Job) -> dict[str, Any]:
    return {
        "apiVersion": c.API_VERSION,
        "kind": c.KIND,
        "name": job.name,
        "uid": job.uid,
        "controller": True,
        "blockOwnerDeletion": True,
    }


def job_labels(job: Job) -> dict[str, str]:
    return {c.LABEL_JOB: job.name, c.LABEL_ROLE: c.ROLE_WORKER}


def _meta(
    job: Job,
    name: str,
    labels: dict[str, str] | None = None,
    annotations: dict[str, str] | None = None,
) -> dict[str, Any]:
    meta: dict[str, Any] = {
        "name": name,
        "namespace": job.namespace,
        "labels": labels or job_labels(job),
        "ownerReferences": [owner_reference(job)],
    }
    if annotations:
        meta["annotations"] = annotations
    return meta


def service(job: Job, defaults: Defaults = Defaults()) -> dict[str, Any]:
    """Headless Service giving each pod a stable name before it is ready (rendezvous)."""
    return {
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": _meta(job, job.name),
        "spec": {
            "clusterIP": "None",
            "publishNotReadyAddresses": True,
            "selector": job_labels(job),
            "ports": [
                {
                    "name": c.RENDEZVOUS_PORT_NAME,
                    "port": defaults.master_port,
                    "targetPort": defaults.master_port,
                },
                {
                    "name": c.METRICS_PORT_NAME,
                    "port": defaults.metrics_port,
                    "targetPort": defaults.metrics_port,
                },
            ],
        },
    }


def _pvc_claims(spec: FineTuneJobSpec) -> list[str]:
    uris = [spec.model.uri, spec.dataset.uri, spec.checkpoints.uri]
    if spec.output is not None:
        uris.append(spec.output.uri)
    claims = {u[len("pvc://") :].split("/", 1)[0] for u in uris if u.startswith("pvc://")}
    return sorted(claims)


def _env(job: Job, index: int, attempt: int, defaults: Defaults) -> list[dict[str, Any]]:
    spec = job.spec
    contract = TrainerEnv(
        job_name=job.name,
        namespace=job.namespace,
        job_spec=json.dumps(spec.to_wire(), sort_keys=True),
        num_nodes=spec.resources.nodes,
        node_rank=index,
        master_addr=master_address(job),
        master_port=defaults.master_port,
        # Unset: one process per GPU, or one on a node without GPUs (the trainer decides).
        procs_per_node=spec.resources.processes_per_node,
        attempt=attempt,
        metrics_port=defaults.metrics_port,
        work_dir=Path(c.SCRATCH_PATH),
        termination_log=Path(c.TERMINATION_LOG_PATH),
        grace_seconds=spec.pod.termination_grace_period_seconds,
        hf_home=Path(c.SCRATCH_PATH) / "huggingface",
        hf_endpoint=spec.hub.endpoint if spec.hub is not None else None,
    )
    env: list[dict[str, Any]] = [{"name": k, "value": v} for k, v in contract.to_env().items()]
    # Credentials only ever travel as references to their Secret.
    refs: list[tuple[str, str, str]] = []
    secret = spec.s3.credentials_secret if spec.s3 else None
    if secret is not None:
        refs += [
            (AWS_ACCESS_KEY_ID, secret.name, secret.access_key_id_key),
            (AWS_SECRET_ACCESS_KEY, secret.name, secret.secret_access_key_key),
        ]
    token = spec.hub.token_secret if spec.hub else None
    if token is not None:
        refs.append((HF_TOKEN, token.name, token.key))
    env += [
        {"name": var, "valueFrom": {"secretKeyRef": {"name": name, "key": key}}}
        for var, name, key in refs
    ]
    return env


def _resources(spec: FineTuneJobSpec) -> dict[str, Any]:
    r = spec.resources
    limits: dict[str, Any] = {r.gpu_resource_name: str(r.gpus_per_node)}
    if r.cpu is not None:
        limits["cpu"] = str(r.cpu)
    if r.memory is not None:
        limits["memory"] = str(r.memory)
    return {"requests": dict(limits), "limits": limits}


def _volumes(spec: FineTuneJobSpec) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    shm: dict[str, Any] = {"medium": "Memory"}
    if spec.resources.shared_memory is not None:
        shm["sizeLimit"] = str(spec.resources.shared_memory)
    volumes: list[dict[str, Any]] = [
        {"name": "shm", "emptyDir": shm},
        {"name": "scratch", "emptyDir": {"sizeLimit": str(spec.resources.scratch)}},
    ]
    mounts: list[dict[str, Any]] = [
        {"name": "shm", "mountPath": c.SHM_PATH},
        {"name": "scratch", "mountPath": c.SCRATCH_PATH},
    ]
    for i, claim in enumerate(_pvc_claims(spec)):
        volumes.append({"name": f"pvc-{i}", "persistentVolumeClaim": {"claimName": claim}})
        mounts.append({"name": f"pvc-{i}", "mountPath": f"{c.PVC_MOUNT_ROOT}/{claim}"})
    return volumes, mounts


def pod(
    job: Job, index: int, attempt: int, defaults: Defaults = Defaults(), gang: Gang = "none"
) -> dict[str, Any]:
    """The training pod of one node (machine rank `index`)."""
    spec = job.spec
    name = node_name(job.name, index)
    labels = {**job_labels(job), c.LABEL_NODE_INDEX: str(index), c.LABEL_ATTEMPT: str(attempt)}
    annotations = {
        "prometheus.io/scrape": "true",
        "prometheus.io/path": "/metrics",
        "prometheus.io/port": str(defaults.metrics_port),
    }
    if gang == "coscheduling":
        labels[c.COSCHEDULING_LABEL] = job.name
    elif gang == "volcano":
        annotations[c.VOLCANO_GROUP_ANNOTATION] = job.name
    volumes, mounts = _volumes(spec)
    container: dict[str, Any] = {
        "name": c.CONTAINER_NAME,
        "image": spec.pod.image or defaults.image,
        "imagePullPolicy": spec.pod.image_pull_policy,
        "env": _env(job, index, attempt, defaults),
        "ports": [
            {"name": c.RENDEZVOUS_PORT_NAME, "containerPort": defaults.master_port},
            {"name": c.METRICS_PORT_NAME, "containerPort": defaults.metrics_port},
        ],
        "resources": _resources(spec),
        "volumeMounts": mounts,
        "terminationMessagePath": c.TERMINATION_LOG_PATH,
        "terminationMessagePolicy": "FallbackToLogsOnError",
        "securityContext": {
            "allowPrivilegeEscalation": False,
            "capabilities": {"drop": ["ALL"]},
            "runAsNonRoot": True,
            "seccompProfile": {"type": "RuntimeDefault"},
        },
    }
    pod_spec: dict[str, Any] = {
        "hostname": name,
        "subdomain": job.name,
        "restartPolicy": "Never",
        # On SIGTERM the trainer commits a checkpoint within this time (docs/trainer.md).
        "terminationGracePeriodSeconds": spec.pod.termination_grace_period_seconds,
        "enableServiceLinks": False,
        # Trainers never talk to the Kubernetes API.
        "automountServiceAccountToken": False,
        "securityContext": {
            "runAsNonRoot": True,
            "runAsUser": 1000,
            "runAsGroup": 1000,
            "fsGroup": 1000,
            "seccompProfile": {"type": "RuntimeDefault"},
        },
        "containers": [container],
        "volumes": volumes,
    }
    sched = spec.scheduling
    if sched is not None:
        optional = {
            "nodeSelector": sched.node_selector,
            "tolerations": [t.to_wire() for t in sched.tolerations or []] or None,
            "affinity": sched.affinity.to_wire() if sched.affinity else None,
            "priorityClassName": sched.priority_class_name,
            "schedulerName": sched.scheduler_name,
        }
        pod_spec.update({k: v for k, v in optional.items() if v})
    if spec.pod.service_account_name:
        pod_spec["serviceAccountName"] = spec.pod.service_account_name
    if spec.pod.image_pull_secrets:
        pod_spec["imagePullSecrets"] = [s.to_wire() for s in spec.pod.image_pull_secrets]
    return {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": _meta(job, name, labels, annotations),
        "spec": pod_spec,
    }


def pods(
    job: Job, attempt: int, defaults: Defaults = Defaults(), gang: Gang = "none"
) -> list[dict[str, Any]]:
    return [pod(job, i, attempt, defaults, gang) for i in range(job.spec.resources.nodes)]


def pod_group(job: Job, gang: Gang) -> dict[str, Any] | None:
    """The all-or-nothing group a gang scheduler places the pods as."""
    nodes = job.spec.resources.nodes
    if gang == "coscheduling":
        return {
            "apiVersion": "scheduling.x-k8s.io/v1alpha1",
            "kind": "PodGroup",
            "metadata": _meta(job, job.name),
            "spec": {"minMember": nodes, "scheduleTimeoutSeconds": 600},
        }
    if gang == "volcano":
        return {
            "apiVersion": "scheduling.volcano.sh/v1beta1",
            "kind": "PodGroup",
            "metadata": _meta(job, job.name),
            "spec": {"minMember": nodes},
        }
    return None
