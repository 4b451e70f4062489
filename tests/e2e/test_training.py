"""A FineTuneJob trained by the trainer image on two real nodes, as a user runs it:
`kubectl apply -f`, data and model in S3, credentials from a Secret. The pods have
no GPU (nodes advertise the extended resource only): the trainer runs on CPU."""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path
from statistics import mean
from typing import Any

import pytest
import torch
import yaml
from controlplane import wait_for

from conftest import Cluster
from dashboard_support import panel_queries
from e2e.support import ended, operator_pod, wait_placed
from finetune_api import names as c
from finetune_api.checkpoints import MANIFEST, step_of
from prometheus.server import Prometheus
from trainer_support import MRPC, download_output, iter_s3_keys, load_weights


def shows_on_the_dashboards(prom: Prometheus, namespace: str, job: str, began: float) -> None:
    """Every query of the chart's dashboards runs on what Prometheus scraped from the
    pods and the operator; each panel but the GPU ones (no GPU here) shows numbers."""
    chosen = {"namespace": namespace, "job": job, "__rate_interval": "1m"}
    for board, variables in (("training.json", chosen), ("operator.json", chosen)):
        shown: dict[str, list[float]] = {}
        for title, expr in panel_queries(board, **variables):
            values = [
                float(v) for s in prom.query_range(expr, began, step=5) for _, v in s["values"]
            ]  # a query Prometheus refuses raises here, naming the panel's expression
            shown.setdefault(title, []).extend(v for v in values if v == v)  # not NaN
        empty = [t for t, values in shown.items() if not values and not t.startswith("GPU ")]
        assert not empty, (board, empty)
        assert all(not v for t, v in shown.items() if t.startswith("GPU ")), shown
    (loss_expr, *_) = [
        e for t, e in panel_queries("training.json", **chosen) if t == "Loss over time"
    ]
    loss = prom.query_range(loss_expr, began, step=5)
    assert len(loss) == 1  # one line per job, though two pods serve it


def get_ftj(cluster: Cluster, namespace: str, name: str) -> dict[str, str]:
    """`kubectl get ftj NAME`'s columns, as a user reads them."""
    out = cluster.kubectl("get", "ftj", name, "-n", namespace).stdout.splitlines()
    return dict(zip(out[0].split(), out[1].split(), strict=True))


@pytest.mark.timeout(2400)  # the trainer image may first be imported into both nodes
def test_kubectl_apply_trains_a_two_node_job_to_succeeded(
    cluster: Cluster,
    namespace: str,
    mrpc_job: Callable[..., dict[str, Any]],
    operator: dict[str, str],
    trainer_image: str,
    s3: Any,
    tiny_model: Path,
    prometheus: Prometheus,
    tmp_path: Path,
) -> None:
    began = time.time()
    job_file = tmp_path / "job.yaml"
    # Long enough for Prometheus (1 s scrapes) to hold 20+ points of the loss on a fast
    # CPU too: 2 epochs of the tiny model gave only 18 on one.
    job = mrpc_job("mrpc", numTrainEpochs=3)
    job["spec"]["resources"]["cpu"] = "1"  # the trainer sizes its threads by this limit
    # The loss of the tiny random model must fall by 0.1: in fp32 on every CPU, not the
    # bf16 autocast `auto` picks on CPUs with AMX (docs/trainer.md, Precision).
    job["spec"]["training"]["precision"] = "fp32"
    job_file.write_text(yaml.safe_dump(job))
    cluster.kubectl("apply", "-n", namespace, "-f", str(job_file))

    seen: list[dict[str, str]] = []

    def done() -> dict[str, Any] | None:
        seen.append(get_ftj(cluster, namespace, "mrpc"))
        return ended(cluster, namespace, "mrpc")

    status = wait_for(done, 900, "the job to end", every=1.0)
    assert status["phase"] == "Succeeded", status
    total = status["progress"]["totalSteps"]
    assert status["progress"]["step"] == total
    # kubectl get ftj showed the training move while it ran: several steps short of
    # the end, each with a loss; before the first step, no loss rather than a 0.
    shown = {(r["STEP"], r["LOSS"]) for r in seen if r["STEP"] not in ("<none>", str(total))}
    moving = {(step, loss) for step, loss in shown if step != "0"}
    assert len(moving) >= 2, seen
    assert all(float(loss) > 0 for _, loss in moving)
    assert all(loss == "<none>" for step, loss in shown if step == "0"), seen

    # The gang: one pod per node, the trainer image, rendezvous at rank 0's name in
    # the headless Service, both exited 0, parameters equal on both ranks at the end.
    assert sorted(wait_placed(cluster, namespace, 2).values()) == ["ft-node-0", "ft-node-1"]
    pods = cluster.core.list_namespaced_pod(namespace, label_selector=f"{c.LABEL_JOB}=mrpc")
    assert len(pods.items) == 2
    for pod in pods.items:
        (container,) = pod.status.container_statuses
        assert container.image.endswith(trainer_image.split("/", 1)[1])
        assert container.state.terminated.exit_code == 0
        env = {e.name: e.value for e in pod.spec.containers[0].env}
        assert env["FT_MASTER_ADDR"].startswith(f"{c.node_name('mrpc', 0)}.")
    log = cluster.core.read_namespaced_pod_log(c.node_name("mrpc", 0), namespace)
    assert "parameters identical on all 2 ranks" in log, log[-3000:]
    # No GPU here, and none is claimed; one thread per process, from the pod's CPU limit
    # (its cgroup quota), though the node has 2 CPUs.
    assert "on 2 processes (2 nodes, cpu, 1 thread per process)" in log

    # Prometheus found the pods by itself and holds the loss over time, falling.
    loss = f'finetune_train_loss{{finetunejob="mrpc",namespace="{namespace}",pod="mrpc-node-0"}}'
    (series,) = prometheus.query_range(loss, began)
    curve = [float(v) for _, v in series["values"] if v != "NaN"]
    assert len(curve) >= 20, curve
    quarter = len(curve) // 4
    assert mean(curve[-quarter:]) < mean(curve[:quarter]) - 0.1, curve
    step = prometheus.query(
        f'max(max_over_time(finetune_global_step{{namespace="{namespace}"}}[10m]))'
    )
    assert float(step[0]["value"][1]) == total
    # ...and the operator's own series, from its pod.
    operator_pod_name = operator_pod(cluster, operator["namespace"]).metadata.name
    reconciles = prometheus.query(
        f'finetune_operator_reconciles_total{{pod="{operator_pod_name}"}}'
    )
    assert float(reconciles[0]["value"][1]) > 0
    shows_on_the_dashboards(prometheus, namespace, "mrpc", began)

    # Checkpoints committed in S3, the newest one in the job's status.
    client = s3.client()
    keys = list(iter_s3_keys(client, "ckpt", "mrpc/"))
    committed = sorted(
        step for key in keys if key.endswith("/" + MANIFEST)
        if (step := step_of(key.split("/")[1])) is not None
    )  # fmt: skip
    assert committed, keys
    assert status["lastCheckpoint"]["step"] == committed[-1]

    # The final model loads and predicts, and training changed it.
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    model_dir = download_output(s3, "mrpc", tmp_path / "model")
    model = AutoModelForSequenceClassification.from_pretrained(model_dir, use_safetensors=True)
    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    rows = [line.split("\t") for line in (MRPC / "dev.tsv").read_text().splitlines()[1:9]]
    batch = tokenizer([r[3] for r in rows], [r[4] for r in rows], padding=True, return_tensors="pt")
    with torch.no_grad():
        logits = model(**batch).logits
    assert logits.shape == (8, 2)
    before = load_weights(tiny_model)
    after = load_weights(model_dir)
    assert before.keys() == after.keys()
    assert any(not torch.equal(before[k], after[k]) for k in before)
