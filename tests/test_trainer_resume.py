"""Resuming from any committed checkpoint gives the same model as never stopping."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import torch
from transformers import AutoModelForSequenceClassification, pipeline

from trainer_support import load_weights, run_nodes, waimai_jsonl


def test_resume_at_an_epoch_boundary(tiny_model: Path, tmp_path: Path) -> None:
    data = waimai_jsonl(tmp_path / "data" / "train.jsonl", rows=128)
    spec = {
        "model": {
            "uri": f"file://{tiny_model}",
            "numLabels": 2,
            "labelNames": ["negative", "positive"],
        },
        "dataset": {"uri": f"file://{data}", "textColumns": ["text"], "evalFraction": 0.25},
        "training": {
            "numTrainEpochs": 2,
            "perDeviceTrainBatchSize": 8,
            "learningRate": 1e-3,
            "evalStrategy": "epoch",
            "loggingSteps": 1,
            "groupByLength": True,
        },
        "checkpoints": {"uri": f"file://{tmp_path}/ckpt", "saveSteps": 1, "saveTotalLimit": 100},
        "output": {"uri": f"file://{tmp_path}/out"},
    }
    first = run_nodes(spec, tmp_path / "first", nodes=1)[0].output()
    steps = sorted(int(p.name[5:]) for p in (tmp_path / "ckpt").glob("step-*"))
    total = steps[-1]
    per_epoch = total // 2
    assert f"done: {total} steps" in first
    expected = load_weights(tmp_path / "out")
    # The output is a save_pretrained folder that Hugging Face loads as it is.
    classify = pipeline("text-classification", model=str(tmp_path / "out"))
    prediction = classify("送餐很快，味道很好")[0]
    assert prediction["label"] in ("negative", "positive")
    model = AutoModelForSequenceClassification.from_pretrained(tmp_path / "out")
    assert model.config.id2label == {0: "negative", 1: "positive"}
    held_out = json.loads(
        (tmp_path / "ckpt" / f"step-{total:09d}" / "data_index.json").read_text()
    )["eval"]
    assert 10 < len(held_out) < 60  # about a quarter of 128 held out for evaluation

    # Keep only the checkpoint taken exactly at the end of the first epoch.
    for step in steps:
        if step != per_epoch:
            shutil.rmtree(tmp_path / "ckpt" / f"step-{step:09d}")
    shutil.rmtree(tmp_path / "out")
    second = run_nodes(spec, tmp_path / "second", nodes=1)[0].output()
    assert f"at step {per_epoch}" in second
    trained_examples = 128 - len(held_out)
    # The second run read the second epoch once, and nothing of the first.
    assert f"done: {total} steps, {trained_examples} samples this run" in second, second
    resumed = load_weights(tmp_path / "out")
    for name, value in expected.items():
        torch.testing.assert_close(resumed[name], value, rtol=1e-5, atol=1e-6, msg=name)
