"""Multi-node training: 2 machine ranks as separate `accelerate launch` process trees,
talking gloo over loopback, reading from and checkpointing to a real MinIO."""

from __future__ import annotations

import copy
import re
from pathlib import Path
from typing import Any

import pytest
import torch

from trainer_support import (
    committed_steps,
    download_output,
    load_weights,
    mrpc_spec,
    run_nodes,
)


def with_s3(spec: dict[str, Any], s3: Any) -> dict[str, Any]:
    spec = copy.deepcopy(spec)
    spec["s3"] = {"endpoint": s3.endpoint, "forcePathStyle": True, "region": "us-east-1"}
    return spec


def reference_training(
    model_dir: Path, spec: dict[str, Any], world: int, steps: int
) -> dict[str, torch.Tensor]:
    """One process trained on the same global batches the ranks formed together."""
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    from finetune_api.types import FineTuneJobSpec
    from finetune_trainer.batching import WINDOW, grouped_by, in_order, plan_steps, run_size
    from finetune_trainer.config import batch_sizes
    from finetune_trainer.data import (
        Position,
        Source,
        count_units,
        rank_examples,
        step_allocations,
        stream,
    )
    from finetune_trainer.optimizer import build_optimizer

    parsed = FineTuneJobSpec.model_validate(spec)
    source = Source(parsed)
    units = source.plan_units(world, 64 * 1024 * 1024)
    index = count_units(source, units, list(range(len(units))))
    t = parsed.training
    model = AutoModelForSequenceClassification.from_pretrained(model_dir)
    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    optimizer, scheduler = build_optimizer(model, t, steps)

    def train_on(examples: list[Any]) -> None:
        columns = list(zip(*(e.texts for e in examples), strict=True))
        enc = tokenizer(
            *columns,
            truncation=True,
            max_length=parsed.dataset.max_seq_length,
            padding=True,
            return_tensors="pt",
        )
        logits = model(**enc).logits
        labels = torch.tensor([e.label for e in examples])
        torch.nn.functional.cross_entropy(logits, labels).backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), t.max_grad_norm)
        optimizer.step()
        scheduler.step()
        optimizer.zero_grad()

    def lengths(examples: list[Any]) -> list[int]:
        columns = list(zip(*(e.texts for e in examples), strict=True))
        enc = tokenizer(*columns, truncation=True, max_length=parsed.dataset.max_seq_length)
        return [len(ids) for ids in enc["input_ids"]]

    # Each step takes what data.step_allocations gives each rank from that rank's stream,
    # batched as docs/trainer.md says (length-grouped within windows of steps).
    per_rank = t.per_device_train_batch_size * t.gradient_accumulation_steps
    width = WINDOW if t.group_by_length else 1
    micro = batch_sizes(parsed, world)[0]
    run = run_size(micro, world * t.gradient_accumulation_steps, t.group_by_length)
    epoch, done = 0, 0
    while done < steps:
        shares = [rank_examples(index, epoch, t.seed, r, world) for r in range(world)]
        plan = list(step_allocations(shares, per_rank))
        ranks = []
        for r in range(world):
            order = grouped_by(lengths, t.seed, epoch, r, run) if t.group_by_length else in_order
            examples = stream(source, index, Position(epoch=epoch), t.seed, r, world)
            sizes = [p[r] for p in plan]
            ranks.append(plan_steps(examples, sizes, Position(epoch=epoch), 0, width, order))
        for _ in plan[: steps - done]:
            train_on([e for steps_of_rank in ranks for e in next(steps_of_rank)[0]])
            done += 1
        epoch += 1
    return {k: v.detach() for k, v in model.state_dict().items()}


def assert_same_weights(
    trained: dict[str, torch.Tensor],
    reference: dict[str, torch.Tensor],
    initial: dict[str, torch.Tensor],
) -> None:
    moved = 0
    for name, ref in reference.items():
        if name not in trained:
            continue
        torch.testing.assert_close(trained[name], ref, rtol=1e-4, atol=1e-5, msg=name)
        moved += int(not torch.equal(initial[name], ref))
    assert moved > 10  # training really changed the weights being compared


@pytest.mark.parametrize("padding_free", [True, False], ids=["padding-free", "padded"])
def test_gradients_are_synchronised_across_machine_ranks(
    s3: Any,
    mrpc_in_s3: dict[str, str],
    tiny_model: Path,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    padding_free: bool,
) -> None:
    for key, value in s3.env().items():
        monkeypatch.setenv(key, value)
    steps = 12
    # fp32 on every CPU, as the reference trains (auto is bf16 on CPUs that have it).
    training = {
        "maxSteps": steps,
        "gradientAccumulationSteps": 2,
        "precision": "fp32",
        "groupByLength": True,
        "paddingFree": padding_free,
    }
    job = "sync" if padding_free else "sync-padded"
    spec = with_s3(mrpc_spec(mrpc_in_s3, job, **training), s3)
    nodes = run_nodes(spec, tmp_path / "run", extra=s3.env())
    log = nodes[0].output()
    started = "training 12 steps on 2 processes (2 nodes, cpu, 1 thread per process)"
    packed = ", padding-free" if padding_free else ""
    assert f"{started} in fp32, 32 examples per step{packed}\n" in log
    # Every rank compared its weights with the others at the end.
    assert re.search(r"parameters identical on all 2 ranks \(sha256 [0-9a-f]{16}\)", log), log

    # The reference trains the padded model: padding-free steps must change nothing.
    trained = load_weights(download_output(s3, job, tmp_path / "out"))
    reference = reference_training(tiny_model, spec, world=2, steps=steps)
    assert_same_weights(trained, reference, load_weights(tiny_model))


def test_two_ranks_cross_epochs_with_uneven_shards(tiny_model: Path, tmp_path: Path) -> None:
    """At an epoch's end one rank runs dry first; the other fills the global batch."""
    from trainer_support import waimai_jsonl

    data = waimai_jsonl(tmp_path / "train.jsonl", rows=300)
    spec = {
        "model": {"uri": f"file://{tiny_model}", "numLabels": 2},
        "dataset": {"uri": f"file://{data}", "textColumns": ["text"], "maxSeqLength": 64},
        "training": {
            "numTrainEpochs": 2,
            "perDeviceTrainBatchSize": 8,
            "learningRate": 2e-3,
            "evalStrategy": "no",
            "seed": 3,
            "precision": "fp32",
        },
        "resources": {"nodes": 2, "gpusPerNode": 1},
        "checkpoints": {"uri": f"file://{tmp_path}/ckpt", "saveSteps": 1000},
        "output": {"uri": f"file://{tmp_path}/out"},
    }
    from finetune_api.types import FineTuneJobSpec
    from finetune_trainer.data import Source, count_units, rank_examples

    source = Source(FineTuneJobSpec.model_validate(spec))
    units = source.plan_units(2, 64 * 1024 * 1024)
    index = count_units(source, units, list(range(len(units))))
    shares = [rank_examples(index, 0, 3, r, 2) for r in range(2)]
    assert abs(shares[0] - shares[1]) > 8, shares  # one rank runs dry a step early

    log = run_nodes(spec, tmp_path / "run", timeout=300)[0].output()
    steps = int(re.search(r"training (\d+) steps on 2 processes", log).group(1))  # type: ignore[union-attr]
    assert f"done: {steps} steps, 600 samples this run" in log  # 300 examples, twice
    # Full global batches of 16 until each epoch's last step, as one process would take.
    assert steps == 2 * 19
    reference = reference_training(tiny_model, spec, world=2, steps=steps)
    assert_same_weights(load_weights(tmp_path / "out"), reference, load_weights(tiny_model))


def test_killed_rank_resumes_exactly_and_skips_a_damaged_checkpoint(
    s3: Any,
    mrpc_in_s3: dict[str, str],
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    import os
    import signal

    from controlplane import wait_for

    from trainer_support import start_nodes, wait_nodes

    steps = 120
    client = s3.client()
    # Length-grouped, so a resume lands inside a window of grouped steps.
    straight = with_s3(mrpc_spec(mrpc_in_s3, "straight", maxSteps=steps, groupByLength=True), s3)
    run_nodes(straight, tmp_path / "straight", extra=s3.env())
    expected = load_weights(download_output(s3, "straight", tmp_path / "expected"))

    spec = with_s3(mrpc_spec(mrpc_in_s3, "killed", maxSteps=steps, groupByLength=True), s3)
    nodes = start_nodes(spec, tmp_path / "attempt-1", extra=s3.env())
    wait_for(lambda: len(committed_steps(client, "killed")) >= 2, 180, "two committed checkpoints")
    victims = nodes[1].workers()
    assert victims, nodes[1].output()
    os.kill(victims[0], signal.SIGKILL)
    codes = wait_nodes(nodes, 180)
    # Both pods fail as retryable: the killed rank, and its peer that lost it.
    assert codes == [75, 75], [n.output()[-3000:] for n in nodes]
    survivors = committed_steps(client, "killed")
    assert survivors[-1] < steps, "the kill came too late to interrupt training"

    # Damage the newest committed checkpoint: one flipped byte in the weights.
    newest = f"killed/step-{survivors[-1]:09d}/model.safetensors"
    body = bytearray(client.get_object(Bucket="ckpt", Key=newest)["Body"].read())
    body[len(body) // 2] ^= 0xFF
    client.put_object(Bucket="ckpt", Key=newest, Body=bytes(body))

    resumed = run_nodes(spec, tmp_path / "attempt-2", extra=s3.env())
    log = resumed[0].output()
    assert f"checkpoint step-{survivors[-1]:09d} is damaged" in log, log
    assert f"falling back to step-{survivors[-2]:09d}" in log
    assert f"resuming from s3://ckpt/killed/step-{survivors[-2]:09d} at step {survivors[-2]}" in log
    assert f"done: {steps} steps" in log

    final = load_weights(download_output(s3, "killed", tmp_path / "resumed"))
    for name, value in expected.items():
        torch.testing.assert_close(final[name], value, rtol=1e-5, atol=1e-6, msg=name)


def test_sigterm_stops_after_a_step_with_a_checkpoint_and_the_job_resumes_there(
    tiny_model: Path, tmp_path: Path
) -> None:
    """What a suspended or preempted pod gets: SIGTERM to its first process. Both ranks
    stop after the same step, commit it, and a new attempt resumes from that step, not
    from the last periodic checkpoint (there is none here)."""
    import os
    import signal

    from controlplane import wait_for

    from trainer_support import mrpc_train_only, start_nodes, wait_nodes

    steps = 600
    spec = {
        "model": {"uri": f"file://{tiny_model}", "numLabels": 2},
        "dataset": mrpc_train_only(),
        "training": {"maxSteps": steps, "evalStrategy": "no", "loggingSteps": 10},
        "checkpoints": {"uri": f"file://{tmp_path}/ckpt", "saveSteps": 100_000},
        "resources": {"nodes": 2, "gpusPerNode": 1},
    }
    nodes = start_nodes(spec, tmp_path / "attempt-1")
    wait_for(lambda: f"step 20/{steps}" in nodes[0].output(), 180, "training to reach step 20")
    os.kill(nodes[1].proc.pid, signal.SIGTERM)
    codes = wait_nodes(nodes, 120)
    assert codes == [75, 75], [n.output()[-3000:] for n in nodes]
    reason = (tmp_path / "attempt-1" / "node-1" / "termination-log").read_text()
    found = re.match(
        r"75 Stopped: SIGTERM, after step (\d+); checkpoint step-(\d+) committed", reason
    )
    assert found, reason
    step = int(found.group(1))
    assert 20 <= step < steps
    assert int(found.group(2)) == step
    committed = [
        p.name for p in (tmp_path / "ckpt").glob("step-*") if (p / "manifest.json").exists()
    ]
    assert committed == [f"step-{step:09d}"]

    log = run_nodes(spec, tmp_path / "attempt-2")[0].output()
    assert f"resuming from file://{tmp_path}/ckpt/step-{step:09d} at step {step}" in log, log
    assert f"done: {steps} steps" in log
