"""Does torch.compile pay for the training step on this machine?
(`.venv/bin/python bench/compile_step.py`)

A bare forward/backward/fused-AdamW loop of all-MiniLM-L6-v2 (its offline package) at
batch 8, with sequence lengths drawn from a few buckets (48, 64, 80 tokens) as rounding
lengths would give, eager against `torch.compile` (inductor). Prints the compile time
(the first step of each bucket) and the steady samples/s of each, side by side.
"""

from __future__ import annotations

import argparse
import random
import sys
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path[:0] = [str(ROOT / "tests" / "cluster"), str(ROOT / "tests")]

from trainer_support import minilm_dir  # noqa: E402

BUCKETS = (48, 64, 80)


def batch(length: int, size: int = 8) -> dict[str, Any]:
    import torch

    return {
        "input_ids": torch.randint(1000, 20000, (size, length)),
        "attention_mask": torch.ones(size, length, dtype=torch.long),
        "token_type_ids": torch.zeros(size, length, dtype=torch.long),
        "labels": torch.randint(0, 2, (size,)),
    }


def measure(compiled: bool, steps: int) -> tuple[float, float]:
    """(seconds of the first step of every bucket, steady samples/s)."""
    import torch
    from transformers import AutoModelForSequenceClassification

    torch.manual_seed(0)
    model = AutoModelForSequenceClassification.from_pretrained(str(minilm_dir()), num_labels=2)
    optimizer = torch.optim.AdamW(model.parameters(), lr=5e-5, fused=True)
    model.train()
    step_model: Any = torch.compile(model, dynamic=False) if compiled else model

    def step(length: int) -> None:
        step_model(**batch(length)).loss.backward()
        optimizer.step()
        optimizer.zero_grad()

    began = time.monotonic()
    for length in BUCKETS:
        step(length)
    warm = time.monotonic() - began
    rng = random.Random(0)
    lengths = [rng.choice(BUCKETS) for _ in range(steps)]
    began = time.monotonic()
    for length in lengths:
        step(length)
    return warm, 8 * steps / (time.monotonic() - began)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=60)
    args = parser.parse_args()
    rows = [("eager", *measure(False, args.steps)), ("torch.compile", *measure(True, args.steps))]
    print("| step | first steps of 3 buckets | samples/s | vs eager |")
    print("|---|---|---|---|")
    for name, warm, rate in rows:
        print(f"| {name} | {warm:.1f} s | {rate:.1f} | {rate / rows[0][2]:.2f}x |")


if __name__ == "__main__":
    main()
