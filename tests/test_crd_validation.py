"""Server-side validation of FineTuneJobs by the real kube-apiserver.

Every case is sent to the apiserver as-is (no client-side check runs): the
CRD's schema and CEL rules must reject it, and the message must name the
field so the person who wrote the YAML knows what to fix.
"""

from __future__ import annotations

import copy
import json
from collections.abc import Callable
from typing import Any

import pytest
from kubernetes.client.exceptions import ApiException

from finetune_api import names as c

from .conftest import Cluster


def valid_job(name: str = "ok") -> dict[str, Any]:
    return {
        "apiVersion": c.API_VERSION,
        "kind": c.KIND,
        "metadata": {"name": name},
        "spec": {
            "model": {"uri": "hf://bert-base-uncased"},
            "dataset": {
                "uri": "hf://glue",
                "config": "mrpc",
                "textColumns": ["sentence1", "sentence2"],
            },
            "checkpoints": {"uri": "s3://ckpt/mrpc"},
            "resources": {"nodes": 2, "gpusPerNode": 8},
        },
    }


def set_path(path: str, value: Any) -> Callable[[dict[str, Any]], None]:
    def mutate(job: dict[str, Any]) -> None:
        *parents, leaf = path.split(".")
        node = job
        for p in parents:
            node = node.setdefault(p, {})
        if value is DELETE:
            del node[leaf]
        else:
            node[leaf] = value

    return mutate


DELETE = object()

# (id, mutation, text that must appear in the apiserver's message)
INVALID: list[tuple[str, Callable[[dict[str, Any]], None], list[str]]] = [
    (
        "zero-nodes",
        set_path("spec.resources.nodes", 0),
        ["spec.resources.nodes", "between 1 and 512"],
    ),
    (
        "negative-nodes",
        set_path("spec.resources.nodes", -2),
        ["spec.resources.nodes", "between 1 and 512"],
    ),
    (
        "zero-gpus",
        set_path("spec.resources.gpusPerNode", 0),
        ["spec.resources.gpusPerNode", "between 1 and 64"],
    ),
    (
        "negative-gpus",
        set_path("spec.resources.gpusPerNode", -8),
        ["spec.resources.gpusPerNode", "between 1 and 64"],
    ),
    (
        "zero-processes",
        set_path("spec.resources.processesPerNode", 0),
        ["spec.resources.processesPerNode", "between 1 and 64"],
    ),
    (
        "name-over-63-chars",
        set_path("metadata.name", "a" * 64),
        ["metadata.name", f"at most {c.MAX_JOB_NAME_LENGTH} characters"],
    ),
    (
        "name-too-long-for-pod-hostnames",
        set_path("metadata.name", "a" * 55),
        ["metadata.name", f"at most {c.MAX_JOB_NAME_LENGTH} characters"],
    ),
    (
        "name-starts-with-digit",
        set_path("metadata.name", "9lives"),
        ["metadata.name", "starting with a letter"],
    ),
    (
        "s3-uri-without-bucket",
        set_path("spec.checkpoints.uri", "s3://"),
        ["spec.checkpoints.uri", "must be s3://BUCKET/PREFIX"],
    ),
    (
        "s3-uri-bad-bucket",
        set_path("spec.checkpoints.uri", "s3://My_Bucket/ckpt"),
        ["spec.checkpoints.uri", "must be s3://BUCKET/PREFIX"],
    ),
    (
        "s3-checkpoint-uri-with-glob",
        set_path("spec.checkpoints.uri", "s3://ckpt/run-*"),
        ["spec.checkpoints.uri", "no wildcards"],
    ),
    (
        "unknown-precision",
        set_path("spec.training.precision", "fp8"),
        ["spec.training.precision", "Unsupported value", '"bf16"'],
    ),
    (
        "inline-secret-key",
        set_path("spec.s3", {"secretAccessKey": "wJalrXUtnFEMI"}),
        ["spec.s3.secretAccessKey", "credentials never go inline", "credentialsSecret"],
    ),
    (
        "inline-access-key",
        set_path("spec.s3", {"accessKeyId": "AKIAEXAMPLE"}),
        ["spec.s3.accessKeyId", "credentials never go inline"],
    ),
    (
        "inline-hub-token",
        set_path("spec.hub", {"token": "hf_abcdefEXAMPLE"}),
        ["spec.hub.token", "tokens never go inline", "tokenSecret"],
    ),
    (
        "hub-endpoint-not-a-url",
        set_path("spec.hub", {"endpoint": "hf-mirror.internal"}),
        ["spec.hub.endpoint", "must be a URL"],
    ),
    (
        "empty-text-columns",
        set_path("spec.dataset.textColumns", []),
        ["spec.dataset.textColumns", "must name one text column"],
    ),
    (
        "blank-text-column",
        set_path("spec.dataset.textColumns", ["sentence1", ""]),
        ["spec.dataset.textColumns", "must not contain empty strings"],
    ),
    (
        "three-text-columns",
        set_path("spec.dataset.textColumns", ["a", "b", "c"]),
        ["spec.dataset.textColumns", "at most 2 items"],
    ),
    (
        "label-names-count",
        set_path("spec.model.labelNames", ["a", "b", "c"]),
        ["spec.model.labelNames", "exactly numLabels entries"],
    ),
    (
        "eval-split-and-fraction",
        set_path("spec.dataset.evalFraction", 0.1),
        ["spec.dataset", "evalSplit or evalFraction, not both"],
    ),
    (
        "eval-fraction-out-of-range",
        set_path("spec.dataset.evalFraction", 1.5),
        ["spec.dataset.evalFraction", "between 0 and 1"],
    ),
    (
        "zero-learning-rate",
        set_path("spec.training.learningRate", 0),
        ["spec.training.learningRate", "greater than 0"],
    ),
    (
        "eval-steps-missing",
        set_path("spec.training.evalStrategy", "steps"),
        ["spec.training.evalSteps", "required when evalStrategy is steps"],
    ),
    (
        "unsupported-model-uri",
        set_path("spec.model.uri", "gs://models/bert"),
        ["spec.model.uri", "must be hf://ORG/NAME"],
    ),
    (
        "unsupported-dataset-uri",
        set_path("spec.dataset.uri", "ftp://data/train.csv"),
        ["spec.dataset.uri", "must be hf://DATASET"],
    ),
    (
        "missing-checkpoints",
        set_path("spec.checkpoints", DELETE),
        ["spec.checkpoints", "Required value"],
    ),
    (
        "s3-endpoint-with-path",
        set_path("spec.s3", {"endpoint": "http://minio:9000/bucket"}),
        ["spec.s3.endpoint", "with no path"],
    ),
    (
        "negative-backoff-limit",
        set_path("spec.runPolicy", {"backoffLimit": -1}),
        ["spec.runPolicy.backoffLimit", "greater than or equal to 0"],
    ),
    (
        "zero-epochs",
        set_path("spec.training.numTrainEpochs", 0),
        ["spec.training.numTrainEpochs", "greater than 0"],
    ),
    (
        "memory-not-a-quantity",
        set_path("spec.resources.memory", "lots"),
        ["spec.resources.memory must be a positive quantity such as 16, 1500m or 200Gi"],
    ),
    (
        "memory-with-two-points",
        set_path("spec.resources.memory", "1.5.5Gi"),
        ["spec.resources.memory must be a positive quantity"],
    ),
    (
        "cpu-with-a-space",
        set_path("spec.resources.cpu", "2 cores"),
        ["spec.resources.cpu must be a positive quantity"],
    ),
    (
        "zero-cpu",
        set_path("spec.resources.cpu", 0),
        ["spec.resources.cpu must be a positive quantity"],
    ),
    (
        "negative-shared-memory",
        set_path("spec.resources.sharedMemory", "-1Gi"),
        ["spec.resources.sharedMemory must be a positive quantity"],
    ),
    (
        "scratch-unknown-suffix",
        set_path("spec.resources.scratch", "100GB"),
        ["spec.resources.scratch must be a positive quantity"],
    ),
    (
        "output-uri-http",
        set_path("spec.output", {"uri": "http://models.example/out"}),
        ["spec.output.uri must be s3://BUCKET/PREFIX"],
    ),
    (
        "gpu-resource-name-with-space",
        set_path("spec.resources.gpuResourceName", "nvidia gpu"),
        ["spec.resources.gpuResourceName must be a resource name like nvidia.com/gpu"],
    ),
    (
        "s3-settings-without-s3",
        lambda job: job["spec"].update(
            {
                "checkpoints": {"uri": "pvc://ckpt/mrpc"},
                "s3": {"endpoint": "http://minio:9000"},
            }
        ),
        ["spec.s3 is set but no URI of the job uses s3://"],
    ),
    (
        "negative-max-grad-norm",
        set_path("spec.training.maxGradNorm", -1.0),
        ["spec.training.maxGradNorm must be 0 (off) or positive"],
    ),
    (
        "warmup-ratio-of-one",
        set_path("spec.training.warmupRatio", 1.0),
        ["spec.training.warmupRatio must be at least 0 and below 1"],
    ),
    (
        "negative-weight-decay",
        set_path("spec.training.weightDecay", -0.01),
        ["spec.training.weightDecay must be at least 0 and below 1"],
    ),
    (
        "eval-split-same-as-train",
        set_path("spec.dataset.evalSplit", "train"),
        ["spec.dataset.evalSplit must differ from trainSplit"],
    ),
    (
        "typo-in-field-name",
        set_path("spec.training.lr", 1e-4),
        ['unknown field "spec.training.lr"'],
    ),
]


def test_table_has_enough_cases() -> None:
    assert len(INVALID) >= 15
    assert len({case[0] for case in INVALID}) == len(INVALID)


def test_valid_job_is_accepted(cluster: Cluster, namespace: str) -> None:
    created = cluster.create_job(namespace, valid_job(), field_validation="Strict")
    assert created["metadata"]["name"] == "ok"


@pytest.mark.parametrize(("mutate", "expected"), [pytest.param(m, e, id=i) for i, m, e in INVALID])
def test_invalid_job_is_rejected_with_field_named(
    cluster: Cluster,
    namespace: str,
    mutate: Callable[[dict[str, Any]], None],
    expected: list[str],
) -> None:
    job = valid_job()
    job["spec"]["dataset"]["evalSplit"] = "validation"
    mutate(job)
    with pytest.raises(ApiException) as err:
        cluster.create_job(namespace, job, field_validation="Strict")
    # 422 for schema and CEL failures; 400 for strict decoding (unknown fields).
    assert err.value.status in (400, 422), err.value.body
    message = json.loads(err.value.body)["message"]
    for text in expected:
        assert text in message, message
    # Nothing was stored.
    assert (
        cluster.custom.list_namespaced_custom_object(c.GROUP, c.VERSION, namespace, c.PLURAL)[
            "items"
        ]
        == []
    )


@pytest.mark.parametrize(
    ("path", "value", "expected"),
    [
        ("spec.model.uri", "hf://roberta-base", "spec.model is immutable"),
        ("spec.dataset.textColumns", ["sentence1"], "spec.dataset is immutable"),
        ("spec.training.learningRate", 1e-4, "spec.training is immutable"),
        ("spec.checkpoints.uri", "s3://other/place", "spec.checkpoints.uri is immutable"),
    ],
)
def test_changing_an_immutable_field_is_rejected(
    cluster: Cluster,
    namespace: str,
    path: str,
    value: Any,
    expected: str,
) -> None:
    cluster.create_job(namespace, valid_job())
    job = cluster.get_job(namespace, "ok")
    before = copy.deepcopy(job["spec"])
    set_path(path, value)(job)
    with pytest.raises(ApiException) as err:
        cluster.custom.replace_namespaced_custom_object(
            c.GROUP, c.VERSION, namespace, c.PLURAL, "ok", job
        )
    assert err.value.status == 422
    assert expected in json.loads(err.value.body)["message"]
    assert cluster.get_job(namespace, "ok")["spec"] == before


def test_mutable_fields_can_change(cluster: Cluster, namespace: str) -> None:
    cluster.create_job(namespace, valid_job())
    patched = cluster.custom.patch_namespaced_custom_object(
        c.GROUP,
        c.VERSION,
        namespace,
        c.PLURAL,
        "ok",
        {"spec": {"suspend": True, "runPolicy": {"backoffLimit": 7}, "resources": {"nodes": 4}}},
    )
    assert patched["spec"]["suspend"] is True
    assert patched["spec"]["runPolicy"]["backoffLimit"] == 7
    assert patched["spec"]["resources"]["nodes"] == 4


def test_kubectl_apply_prints_the_field_and_fails(cluster: Cluster, namespace: str) -> None:
    job = valid_job("bad")
    job["spec"]["resources"]["gpusPerNode"] = 0
    job["spec"]["s3"] = {"secretAccessKey": "do-not-store-me"}
    result = cluster.kubectl(
        "apply", "-n", namespace, "-f", "-", input=json.dumps(job), check=False
    )
    assert result.returncode != 0
    assert "spec.resources.gpusPerNode must be between 1 and 64" in result.stderr
    assert "spec.s3.secretAccessKey must not be set" in result.stderr
    # The rejected secret is not echoed back by the apiserver.
    assert "do-not-store-me" not in result.stderr
