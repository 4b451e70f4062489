"""S3 down under a gang on the real nodes: outages within spec.s3.retrySeconds are
waited out (at start-up and during a checkpoint upload); a longer one ends the attempt
as retryable, and the operator's next attempt, after its backoff, completes the job.
The job has a MinIO of its own, so stopping it disturbs no other test."""

from __future__ import annotations

import json
import os
import signal
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from controlplane import free_port, wait_for
from kubernetes.client.exceptions import ApiException

from conftest import Cluster
from e2e.support import ended, pod_failures, s3_job, s3_secret
from e2e.test_faults import training_process
from finetune_api import names as c
from trainer_support import committed_steps, iter_s3_keys, put_mrpc

STEPS = 400
BUDGET = 30


@pytest.fixture
def own_s3(tmp_path: Path, tiny_model: Path) -> Iterator[Any]:
    from s3.server import S3Server  # type: ignore[import-not-found]

    server = S3Server(tmp_path / "minio", free_port())
    server.workdir.mkdir()
    server.start()
    server.uris = put_mrpc(server.client(), tiny_model)
    yield server
    server.stop()


def pod_log(cluster: Cluster, namespace: str, node: int) -> str:
    try:
        log: str = cluster.core.read_namespaced_pod_log(c.node_name("outage", node), namespace)
    except ApiException:
        return ""  # not created or not started yet
    return log


def in_log(cluster: Cluster, namespace: str, text: str, timeout: float = 300) -> None:
    wait_for(lambda: text in pod_log(cluster, namespace, 0), timeout, repr(text), every=0.5)


def outage_held(cluster: Cluster, namespace: str, seconds: float) -> None:
    """Keep the store down for `seconds` (the fault), checking all along that the
    job's first attempt waits for it rather than giving up."""
    deadline = time.monotonic() + seconds

    def over() -> bool:
        status = cluster.get_job(namespace, "outage").get("status") or {}
        assert status.get("attempt", 1) == 1, status
        assert status.get("phase") != "Failed", status
        return time.monotonic() >= deadline

    wait_for(over, seconds + 30, f"{seconds}s of outage", every=1)


def assert_nothing_half_committed(client: Any) -> None:
    """Every checkpoint with a manifest has every file it lists, at its size."""
    sizes = {
        o["Key"]: o["Size"]
        for page in client.get_paginator("list_objects_v2").paginate(Bucket="ckpt")
        for o in page.get("Contents", [])
    }
    folders = {k.split("/")[1] for k in iter_s3_keys(client, "ckpt", "outage/step-")}
    for folder in folders:
        key = f"outage/{folder}/manifest.json"
        if key not in sizes:
            continue  # never committed, so never used
        manifest = json.loads(client.get_object(Bucket="ckpt", Key=key)["Body"].read())
        for name, meta in manifest["files"].items():
            assert sizes[f"outage/{folder}/{name}"] == meta["size"], (folder, name)


@pytest.mark.timeout(1800)
def test_s3_outages_are_waited_out_and_a_longer_one_restarts_the_gang(
    cluster: Cluster, namespace: str, operator: dict[str, str], trainer_image: str, own_s3: Any
) -> None:
    s3_secret(cluster, namespace, own_s3)
    job = s3_job("outage", trainer_image, own_s3, own_s3.uris, maxSteps=STEPS)
    job["spec"]["s3"]["retrySeconds"] = BUDGET
    job["spec"]["checkpoints"]["saveSteps"] = 50
    # 1. Down at start-up: the pods' first S3 calls meet a stopped store.
    own_s3.stop()
    cluster.create_job(namespace, job)
    in_log(cluster, namespace, "S3 reach s3://ckpt/outage failed")
    outage_held(cluster, namespace, 10)
    own_s3.start()
    in_log(cluster, namespace, f"step 10/{STEPS}")

    # 2. Down during an upload: freeze both trainers, stop the store, let them go on,
    # so the checkpoint of step 50 is uploaded into the outage.
    workers = [training_process(namespace, "outage", n) for n in (0, 1)]
    assert None not in workers, workers
    for pid in workers:
        os.kill(pid, signal.SIGSTOP)  # type: ignore[arg-type]
    own_s3.stop()
    for pid in workers:
        os.kill(pid, signal.SIGCONT)  # type: ignore[arg-type]
    in_log(cluster, namespace, "S3 upload s3://ckpt/outage/step-000000050/")
    outage_held(cluster, namespace, 10)
    own_s3.start()

    # 3. Down for longer than the budget: the attempt ends retryable.
    wait_for(lambda: committed_steps(own_s3.client(), "outage")[-1:] >= [100], 300, "step 100")
    own_s3.stop()

    def second_attempt() -> dict[str, Any] | None:
        status: dict[str, Any] = cluster.get_job(namespace, "outage").get("status") or {}
        assert status.get("phase") != "Failed", status
        return status if status.get("attempt", 1) >= 2 else None

    wait_for(second_attempt, BUDGET + 240, "attempt 2")

    def outage_reported() -> list[str]:
        return pod_failures(cluster, namespace, f"spec.s3.retrySeconds: {BUDGET}")

    wait_for(outage_reported, 30, "the PodFailed event naming spec.s3.retrySeconds")
    own_s3.start()
    final = wait_for(lambda: ended(cluster, namespace, "outage"), 900, "the job to end")
    assert final["phase"] == "Succeeded", final
    assert (final["attempt"], final["restartCount"]) == (2, 1), final
    assert final["progress"]["step"] == final["progress"]["totalSteps"] == STEPS
    assert committed_steps(own_s3.client(), "outage")[-1] == STEPS
    assert_nothing_half_committed(own_s3.client())
