"""MRPC with the real all-MiniLM-L6-v2 through the operator: model and data in S3, the
trainer image on 2 nodes x 1 process (CPU), 3 epochs as the Hugging Face recipe trains
it. Slow (about 20 minutes on 2 cores): `make test-slow`; docs/benchmarks.md has its
result."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest
from controlplane import wait_for

from conftest import Cluster
from e2e.support import ended
from trainer_support import minilm_dir, mrpc_minilm_spec, upload_dir


@pytest.mark.slow
@pytest.mark.timeout(5400)
def test_mrpc_minilm_on_two_nodes_through_the_operator(
    cluster: Cluster,
    namespace: str,
    mrpc_job: Callable[..., dict[str, Any]],
    s3: Any,
    tmp_path: Any,
) -> None:
    upload_dir(s3.client(), minilm_dir(), "models", "all-minilm-l6-v2")
    recipe = mrpc_minilm_spec(tmp_path, seed=42)
    job = mrpc_job("minilm")
    spec = job["spec"]
    spec["model"] = {**recipe["model"], "uri": "s3://models/all-minilm-l6-v2"}
    spec["dataset"]["maxSeqLength"] = recipe["dataset"]["maxSeqLength"]
    spec["training"] = recipe["training"]
    spec["checkpoints"]["saveSteps"] = recipe["checkpoints"]["saveSteps"]
    # Both nodes share this machine's CPUs: one each, or each pod's threads oversubscribe them.
    spec["resources"]["cpu"] = "1"
    cluster.create_job(namespace, job)
    status = wait_for(lambda: ended(cluster, namespace, "minilm"), 5000, "MRPC to end", every=5)
    assert status["phase"] == "Succeeded", status
    metrics = status["progress"]["evalMetrics"]
    print(
        f"\nMRPC dev through the operator, 2 nodes x 1 CPU process, after "
        f"{status['progress']['step']} steps: accuracy {metrics['accuracy']:.4f}, "
        f"F1 {metrics['f1']:.4f}"
    )
    assert metrics["accuracy"] >= 0.80
    assert metrics["f1"] >= 0.86
