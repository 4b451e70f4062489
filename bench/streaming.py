"""What the trainer's data pipeline delivers from S3, and what a resume costs
(`.venv/bin/python bench/streaming.py`).

MRPC's train.tsv in the test S3 server (MinIO on loopback), read by the trainer's own
pipeline, one rank: the plan and counting pass (`Source`, `count_units`), the stream of
examples (`stream`), length-grouped steps of 8 (`plan_steps` with `grouped_by`, windows of
50 steps), each step tokenized and padded as the training loop does. Side by side:

- the examples/s and real (non-padding) tokens/s the pipeline delivers, over `--steps`
  steps (several epochs), against the samples/s training consumes: a 100-step
  `ftctl run --local` of the same data and model (all-MiniLM-L6-v2), global batch 8;
- the time from a checkpoint's stream position to the first batch, resuming at step 10 and
  at step 1,000 of the same stream (the position is what a checkpoint after that step
  stores), repeated in alternating order.

Prints a Markdown table for docs/benchmarks.md.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path[:0] = [str(ROOT / "tests" / "cluster"), str(ROOT / "tests")]

from controlplane import free_port  # noqa: E402
from trainer_vs_recipe import ftctl_local, samples_per_second  # noqa: E402

from finetune_api.types import FineTuneJobSpec  # noqa: E402
from finetune_trainer.batching import WINDOW, grouped_by, plan_steps, run_size  # noqa: E402
from finetune_trainer.data.source import Source  # noqa: E402
from finetune_trainer.data.stream import (  # noqa: E402
    count_units,
    rank_examples,
    step_allocations,
    stream,
)
from finetune_trainer.data.units import DataIndex, Example, Position  # noqa: E402
from s3.server import S3Server  # noqa: E402
from trainer_support import MRPC, minilm_dir, mrpc_train_only  # noqa: E402

BATCH, SEED, MAX_LEN = 8, 42, 128


def spec(s3: S3Server) -> dict[str, Any]:
    return {
        "model": {"uri": f"file://{minilm_dir()}", "numLabels": 2},
        "dataset": {**mrpc_train_only(), "uri": "s3://data/mrpc/train.tsv"},
        "training": {"perDeviceTrainBatchSize": BATCH, "seed": SEED, "evalStrategy": "no"},
        "resources": {"nodes": 1, "gpusPerNode": 1},
        "s3": {"endpoint": s3.endpoint, "forcePathStyle": True},
        "checkpoints": {"uri": "s3://ckpt/streaming"},
    }


class Pipeline:
    def __init__(self, job: dict[str, Any], tokenizer: Any) -> None:
        self.source = Source(FineTuneJobSpec.model_validate(job))
        units = self.source.plan_units(1, 64 * 1024 * 1024)
        part = count_units(self.source, units, list(range(len(units))))
        self.index = DataIndex(units, part.counts, part.eval_examples)
        self.tokenizer = tokenizer
        self.per_epoch = -(-sum(self.index.counts.values()) // BATCH)

    def _tokenize(self, items: list[Example], **padding: Any) -> Any:
        columns = list(zip(*(e.texts for e in items), strict=True))
        return self.tokenizer(*columns, truncation=True, max_length=MAX_LEN, **padding)

    def steps(self, position: Position, step: int) -> Iterator[tuple[int, int, Position]]:
        """From global step `step` on, at `position`: (examples, real tokens, the position
        a checkpoint after the step stores) per step, tokenized and padded."""
        while True:
            epoch = position.epoch
            shares = [rank_examples(self.index, epoch, SEED, 0, 1)]
            sizes = [p[0] for p in step_allocations(shares, BATCH)]
            order = grouped_by(
                lambda items: [len(i) for i in self._tokenize(items)["input_ids"]],
                SEED,
                epoch,
                0,
                run_size(BATCH, 1, True),
            )
            examples = stream(self.source, self.index, position, SEED, 0, 1)
            skip = step - epoch * self.per_epoch
            for chosen, resume in plan_steps(examples, sizes, position, skip, WINDOW, order):
                batch = self._tokenize(chosen, padding=True, return_tensors="pt")
                step += 1
                yield len(chosen), int(batch["attention_mask"].sum()), resume
            position = Position(epoch + 1)


def delivery(pipe: Pipeline, steps: int) -> tuple[float, float, dict[int, Position]]:
    """Examples/s and real tokens/s over `steps` steps; the resume position after each."""
    began, examples, tokens, positions = time.monotonic(), 0, 0, {}
    for i, (n, t, resume) in enumerate(pipe.steps(Position(0), 0), start=1):
        examples, tokens, positions[i] = examples + n, tokens + t, resume
        if i == steps:
            break
    seconds = time.monotonic() - began
    return examples / seconds, tokens / seconds, positions


def training_rate(s3: S3Server, work: Path) -> float:
    """Samples/s of a 100-step `ftctl run --local` on the same data."""
    job = {"apiVersion": "finetune.dev/v1alpha1", "kind": "FineTuneJob",
           "metadata": {"name": "streaming"}, "spec": spec(s3)}  # fmt: skip
    job["spec"]["training"].update(maxSteps=100, loggingSteps=10_000, learningRate=5e-5)
    return samples_per_second(ftctl_local(job, work, "run", s3.env()))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=1000)
    parser.add_argument("--rounds", type=int, default=3, help="repeats of each resume")
    args = parser.parse_args()
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(str(minilm_dir()))
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        (work / "s3").mkdir()
        s3 = S3Server(work / "s3", free_port()).start()
        try:
            os.environ.update(s3.env())
            client = s3.client()
            for bucket in ("data", "ckpt"):
                client.create_bucket(Bucket=bucket)
            client.upload_file(str(MRPC / "train.tsv"), "data", "mrpc/train.tsv")
            began = time.monotonic()
            pipe = Pipeline(spec(s3), tokenizer)
            planned = time.monotonic() - began
            rate, tokens, positions = delivery(pipe, args.steps)
            consumed = training_rate(s3, work)
            resumes: dict[int, list[float]] = {10: [], args.steps: []}
            for i in range(args.rounds):
                for at in sorted(resumes, reverse=i % 2 == 1):
                    began = time.monotonic()
                    next(pipe.steps(positions[at], at))
                    resumes[at].append(time.monotonic() - began)
        finally:
            s3.stop()
    epochs = args.steps / pipe.per_epoch
    print(f"\nMRPC train.tsv from S3, {args.steps} steps of {BATCH} ({epochs:.1f} epochs), "
          f"{args.rounds} resumes each\n")  # fmt: skip
    print("| | value |\n|---|---|")
    print(f"| plan and counting pass at start | {planned:.2f} s |")
    print(f"| pipeline delivers | {rate:.0f} examples/s, {tokens:.0f} real tokens/s |")
    print(f"| training consumes (ftctl run --local, 100 steps) | {consumed:.1f} samples/s |")
    print(f"| headroom | {rate / consumed:.0f}x |")
    for at, times in resumes.items():
        print(f"| first batch after a resume at step {at} | {statistics.median(times):.3f} s |")


if __name__ == "__main__":
    main()
