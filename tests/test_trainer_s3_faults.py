"""S3 failures by class: outages are waited out within spec.s3.retrySeconds, past it
the attempt ends retryable, and what no retry fixes ends at once naming the URI.
Against a MinIO of the test's own, stopped and started again as an outage would."""

from __future__ import annotations

import os
import signal
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from finetune_api.exits import ExitCode
from trainer_support import (
    Node,
    committed_steps,
    ensure_bucket,
    iter_s3_keys,
    mrpc_train_only,
    start_nodes,
    wait_nodes,
)


@pytest.fixture
def minio(tmp_path: Path) -> Iterator[Any]:
    """A MinIO of this test's own: stopping it disturbs no other test."""
    from controlplane import free_port

    from s3.server import S3Server  # type: ignore[import-not-found]

    server = S3Server(tmp_path / "minio", free_port())
    server.workdir.mkdir()
    server.start()
    ensure_bucket(server.client(), "ckpt")
    yield server
    server.stop()


def spec_for(tiny_model: Path, server: Any, prefix: str, **training: Any) -> dict[str, Any]:
    return {
        "model": {"uri": f"file://{tiny_model}", "numLabels": 2},
        "dataset": mrpc_train_only(),
        "training": {"evalStrategy": "no", "loggingSteps": 10, **training},
        "checkpoints": {"uri": f"s3://ckpt/{prefix}", "saveSteps": 50},
        "s3": {"endpoint": server.endpoint, "forcePathStyle": True},
    }


def start(spec: dict[str, Any], server: Any, work: Path) -> Node:
    extra = {**server.env(), "FT_S3_ATTEMPTS": "2", "FT_S3_CONNECT_TIMEOUT": "2"}
    return start_nodes(spec, work, nodes=1, extra=extra)[0]


def wait_in_log(node: Node, text: str, timeout: float = 180) -> None:
    from controlplane import wait_for

    def seen() -> bool:
        assert node.proc.poll() is None, f"trainer exited:\n{node.output()[-4000:]}"
        return text in node.output()

    wait_for(seen, timeout, repr(text))


def outage_held(node: Node, seconds: float) -> None:
    """Keep the store down for `seconds` (the fault being tested), checking all along
    that the trainer waits for it rather than giving up."""
    deadline = time.monotonic() + seconds
    while (left := deadline - time.monotonic()) > 0:
        try:
            node.proc.wait(timeout=min(left, 1))
        except subprocess.TimeoutExpired:
            continue
        raise AssertionError(f"trainer gave up:\n{node.output()[-4000:]}")


def test_retries_back_off_doubling_to_a_cap_within_the_budget() -> None:
    """The schedule alone: a connection error, botocore's own exception, is retried
    after 1, 2, 4 ... 30 s until the budget. A counter stands in for the clock so the
    100 s of waits take none (the real waits run in the MinIO tests below)."""
    from botocore.exceptions import EndpointConnectionError

    from finetune_trainer.errors import StorageUnavailable
    from finetune_trainer.retries import Retry

    now = [0.0]
    waits: list[float] = []

    def pause(seconds: float) -> None:
        waits.append(seconds)
        now[0] += seconds

    retry = Retry(100, "the store at http://store:9000", clock=lambda: now[0], pause=pause,
                    jitter=lambda low, high: high)  # fmt: skip

    def down() -> None:
        raise EndpointConnectionError(endpoint_url="http://store:9000/ckpt")

    with pytest.raises(StorageUnavailable) as failed:
        retry.call("upload", "s3://ckpt/run/step-000000010/model.safetensors", down)
    assert waits == [1, 2, 4, 8, 16, 30, 30, 9]  # the last one ends at the budget
    assert str(failed.value).startswith(
        "S3 unavailable: cannot upload s3://ckpt/run/step-000000010/model.safetensors "
        '(Could not connect to the endpoint URL: "http://store:9000/ckpt"); still failing '
        "after 100s and 9 tries (spec.s3.retrySeconds: 100)"
    )
    outcomes = iter([down, down, lambda: "listed"])
    waits.clear()
    assert retry.call("list", "s3://ckpt/run", lambda: next(outcomes)()) == "listed"
    assert waits == [1, 2]


def test_an_outage_at_start_up_and_during_an_upload_is_waited_out(
    minio: Any, tiny_model: Path, tmp_path: Path
) -> None:
    steps = 400
    spec = spec_for(tiny_model, minio, "outage", maxSteps=steps)
    minio.stop()
    node = start(spec, minio, tmp_path / "run")
    # Start-up: the trainer's first S3 call meets the stopped store and keeps retrying.
    wait_in_log(node, "S3 reach s3://ckpt/outage failed")
    outage_held(node, 20)
    minio.start()
    wait_in_log(node, f"step 10/{steps}")
    # Mid-training: freeze the trainer, stop the store, let the trainer go on, so the
    # checkpoint of step 50 is uploaded into the outage.
    workers = node.workers()
    for pid in workers:
        os.kill(pid, signal.SIGSTOP)
    minio.stop()
    for pid in workers:
        os.kill(pid, signal.SIGCONT)
    wait_in_log(node, "S3 upload s3://ckpt/outage/step-000000050/")
    outage_held(node, 20)
    minio.start()
    assert wait_nodes([node], 300) == [0], node.output()[-4000:]
    log = node.output()
    assert f"done: {steps} steps" in log
    client = minio.client()
    assert committed_steps(client, "outage")[-1] == steps
    # Nothing half committed: every checkpoint folder has its manifest and every file
    # the manifest lists, at its size.
    import json

    sizes = {
        o["Key"]: o["Size"]
        for page in client.get_paginator("list_objects_v2").paginate(Bucket="ckpt")
        for o in page.get("Contents", [])
    }
    folders = {k.split("/")[1] for k in iter_s3_keys(client, "ckpt", "outage/step-")}
    assert folders
    for folder in folders:
        manifest = json.loads(
            client.get_object(Bucket="ckpt", Key=f"outage/{folder}/manifest.json")["Body"].read()
        )
        for name, meta in manifest["files"].items():
            assert sizes[f"outage/{folder}/{name}"] == meta["size"], (folder, name)


def test_an_outage_longer_than_the_budget_ends_the_attempt_retryable(
    minio: Any, tiny_model: Path, tmp_path: Path
) -> None:
    spec = spec_for(tiny_model, minio, "long", maxSteps=20)
    spec["s3"]["retrySeconds"] = 6
    minio.stop()
    began = time.monotonic()
    node = start(spec, minio, tmp_path / "attempt-1")
    code = wait_nodes([node], 120)[0]
    took = time.monotonic() - began
    assert code == ExitCode.RETRYABLE, node.output()[-4000:]
    reason = (tmp_path / "attempt-1" / "node-0" / "termination-log").read_text()
    print(f"\n{reason.strip()} ({took:.0f}s)")
    assert reason.startswith(
        "75 S3 unavailable: cannot reach s3://ckpt/long (Could not connect to the endpoint URL"
    ), reason
    assert "(spec.s3.retrySeconds: 6); check that the store at http://127.0.0.1:" in reason
    assert took >= 6
    # The store is back: the next attempt (the operator's, after its backoff) succeeds.
    minio.start()
    node = start(spec, minio, tmp_path / "attempt-2")
    assert wait_nodes([node], 300) == [0], node.output()[-4000:]
    assert committed_steps(minio.client(), "long")[-1] == 20


@pytest.mark.parametrize("case", ["wrong-secret", "no-bucket", "bad-bucket-name"])
def test_what_no_retry_fixes_ends_at_once_naming_the_uri(
    case: str, minio: Any, tiny_model: Path, tmp_path: Path
) -> None:
    spec = spec_for(tiny_model, minio, "denied", maxSteps=5)
    env_minio = minio
    if case == "wrong-secret":
        expected = (
            "42 S3 denied (403) on s3://ckpt/denied: check the keys in spec.s3.credentialsSecret"
        )
        env_minio = type(minio)(minio.workdir, minio.port, minio.access_key, "not-the-secret")
    elif case == "no-bucket":
        spec["checkpoints"]["uri"] = "s3://no-such-bucket/run"
        expected = "42 S3 bucket 'no-such-bucket' does not exist (s3://no-such-bucket/run)"
    else:
        spec["checkpoints"]["uri"] = "s3://Bad_Bucket/run"
        expected = "42 s3://Bad_Bucket/run: S3 refused bucket 'Bad_Bucket' as a bad request"
    began = time.monotonic()
    node = start(spec, env_minio, tmp_path / "run")
    code = wait_nodes([node], 120)[0]
    reason = (tmp_path / "run" / "node-0" / "termination-log").read_text()
    assert code == ExitCode.PERMANENT, node.output()[-4000:]
    assert reason.startswith(expected), reason
    assert time.monotonic() - began < 60  # not the 300 s budget of an outage
    assert "not-the-secret" not in node.output()
