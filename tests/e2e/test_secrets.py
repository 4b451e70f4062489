"""No credential is ever printed. Two jobs on the real nodes hold S3 keys and a Hub
token that are unique strings: one meets an S3 outage past its retry budget, the other
a permanent data error. Then everything a user or an operator of the cluster can read
about them (pod logs, termination messages, pod and job status, Events, the trainer's
and the operator's metrics pages, ftctl's output) is searched for those strings."""

from __future__ import annotations

import json
import secrets
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner
from controlplane import free_port, wait_for
from kubernetes import client

from conftest import Cluster
from e2e.support import ended, operator_pod, s3_job
from finetune_api import names as c
from finetune_api.env import AWS_ACCESS_KEY_ID, AWS_SECRET_ACCESS_KEY, HF_TOKEN
from finetune_api.metrics import Metric
from finetune_operator.ftctl.main import cli
from trainer_support import MRPC, ensure_bucket, upload_dir


@pytest.fixture
def own_s3(tmp_path: Path, tiny_model: Path) -> Iterator[Any]:
    """A MinIO whose keys are this test's own unique strings, holding MRPC and the model."""
    from s3.server import S3Server  # type: ignore[import-not-found]

    server = S3Server(
        tmp_path / "minio",
        free_port(),
        access_key=f"AKLEAK{secrets.token_hex(8).upper()}",
        secret_key=f"leak-secret-{secrets.token_hex(16)}",
    )
    server.workdir.mkdir()
    server.start()
    s3 = server.client()
    for bucket in ("data", "models", "ckpt"):
        ensure_bucket(s3, bucket)
    s3.upload_file(str(MRPC / "train.tsv"), "data", "mrpc/train.tsv")
    s3.upload_file(str(MRPC / "dev.tsv"), "data", "mrpc/dev.tsv")
    upload_dir(s3, tiny_model, "models", "tiny-bert")
    yield server
    server.stop()


def one_node_job(name: str, image: str, server: Any) -> dict[str, Any]:
    uris = {"data": "s3://data/mrpc/", "model": "s3://models/tiny-bert"}
    job = s3_job(name, image, server, uris, numTrainEpochs=1)
    spec = job["spec"]
    spec["resources"]["nodes"] = 1
    del spec["scheduling"]
    spec["s3"]["credentialsSecret"] = {"name": "leak-keys"}
    spec["hub"] = {"tokenSecret": {"name": "leak-keys"}}
    spec["runPolicy"] = {"backoffLimit": 0}
    return job


def metrics_page(pod: client.V1Pod, port: int) -> str:
    with urllib.request.urlopen(f"http://{pod.status.pod_ip}:{port}/metrics", timeout=5) as r:
        return str(r.read().decode())


def trainer_pod(cluster: Cluster, namespace: str, job: str) -> client.V1Pod:
    return cluster.core.read_namespaced_pod(c.node_name(job, 0), namespace)


@pytest.mark.timeout(1800)
def test_no_credential_appears_in_anything_the_system_prints(
    cluster: Cluster,
    namespace: str,
    operator: dict[str, str],
    trainer_image: str,
    own_s3: Any,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    token = f"hf_leak{secrets.token_hex(16)}"
    unique = [own_s3.access_key, own_s3.secret_key, token]
    keys = {**own_s3.env(), HF_TOKEN: token}
    cluster.core.create_namespaced_secret(
        namespace, {"metadata": {"name": "leak-keys"}, "stringData": keys}
    )
    seen: dict[str, str] = {}

    # 1. S3 down for longer than the job's budget: a retryable exit, no retry left.
    outage = one_node_job("s3down", trainer_image, own_s3)
    outage["spec"]["s3"]["retrySeconds"] = 20
    own_s3.stop()
    cluster.create_job(namespace, outage)

    def retrying() -> bool:
        try:
            log = cluster.core.read_namespaced_pod_log(c.node_name("s3down", 0), namespace)
        except client.ApiException:
            return False
        return "S3 reach s3://ckpt/s3down failed" in log

    wait_for(retrying, 600, "the trainer to meet the outage")
    seen["trainer metrics"] = metrics_page(trainer_pod(cluster, namespace, "s3down"), 9420)
    down = wait_for(lambda: ended(cluster, namespace, "s3down"), 300, "s3down to end")
    own_s3.start()

    # 2. A permanent data error: a text column the data does not have.
    bad = one_node_job("baddata", trainer_image, own_s3)
    bad["spec"]["dataset"]["textColumns"] = ["no-such-column"]
    cluster.create_job(namespace, bad)
    failed = wait_for(lambda: ended(cluster, namespace, "baddata"), 600, "baddata to end")

    for name in ("s3down", "baddata"):
        pod = trainer_pod(cluster, namespace, name)
        seen[f"{name} log"] = cluster.core.read_namespaced_pod_log(pod.metadata.name, namespace)
        seen[f"{name} pod status"] = json.dumps(
            client.ApiClient().sanitize_for_serialization(pod.status)
        )
        seen[f"{name} job"] = json.dumps(cluster.get_job(namespace, name))
    events = cluster.core.list_namespaced_event(namespace).items
    seen["events"] = json.dumps([(e.reason, e.message) for e in events])
    op = operator_pod(cluster, operator["namespace"])
    seen["operator log"] = cluster.core.read_namespaced_pod_log(
        op.metadata.name, operator["namespace"]
    )
    port = op.spec.containers[0].ports[0].container_port
    seen["operator metrics"] = metrics_page(op, port)
    # ftctl, with the keys in its environment as a user's shell would have them.
    monkeypatch.setenv(AWS_ACCESS_KEY_ID, own_s3.access_key)
    monkeypatch.setenv(AWS_SECRET_ACCESS_KEY, own_s3.secret_key)
    monkeypatch.setenv(HF_TOKEN, token)
    where = ["--kubeconfig", str(cluster.plane.kubeconfig_path), "-n", namespace]
    for command in (["list"], ["describe", "s3down"], ["describe", "baddata"],
                    ["logs", "baddata"], ["checkpoints", "baddata"]):  # fmt: skip
        seen[f"ftctl {' '.join(command)}"] = CliRunner().invoke(cli, [*command, *where]).output

    # The scan saw the failures it was meant to see...
    assert "S3 unavailable: cannot reach s3://ckpt/s3down" in seen["s3down job"], down
    assert "spec.dataset.textColumns" in seen["baddata job"], failed
    assert f'{Metric.ATTEMPT}{{finetunejob="s3down"' in seen["trainer metrics"]
    assert "S3 unavailable" in seen["ftctl describe s3down"]
    # ...and none of the credentials, anywhere.
    leaks = [
        (where, secret[:8]) for where, text in seen.items() for secret in unique if secret in text
    ]
    assert leaks == [], leaks
