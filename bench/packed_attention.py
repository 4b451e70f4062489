"""What padding-free steps cost on a CPU, by how attention is cut and how much of the
last layer is computed (`.venv/bin/python bench/packed_attention.py`).

Batches of 8 MRPC training pairs drawn at random (their token lengths as
all-MiniLM-L6-v2's tokenizer counts them), packed as the trainer packs them
(finetune_trainer/packing.py), in three variants side by side, in alternating rounds:

- `one call`: the whole batch in one attention call padded to its longest example
  (the layout of padding-free steps before calls by length), the whole last layer;
- `calls by length`: the trainer's cut into calls, the whole last layer;
- `calls by length, last layer first tokens only`: the trainer's default.

Two measures: one attention layer's forward and backward (12 heads of width 32, dropout
0.1, random queries, keys and values), and bare training steps of the model itself
(forward, backward, clipping, fused AdamW; batches packed in a background thread as the
trainer's data thread packs them), each variant with its own copy of the model. Prints a
Markdown table for docs/benchmarks.md.
"""

from __future__ import annotations

import argparse
import math
import queue
import random
import statistics
import sys
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path[:0] = [str(ROOT / "tests" / "cluster"), str(ROOT / "tests"), str(ROOT / "bench")]

import torch  # noqa: E402
from trainer_vs_recipe import train_lengths  # noqa: E402

from finetune_trainer import packing  # noqa: E402
from trainer_support import minilm_dir  # noqa: E402

HEADS, WIDTH, BATCH, DROPOUT = 12, 32, 8, 0.1
# name: (the cost of a call, whether the last layer computes first tokens only)
VARIANTS = {
    "one call": (math.inf, False),
    "calls by length": (packing.CPU_CALL_COST, False),
    "calls by length, last layer first tokens only": (packing.CPU_CALL_COST, True),
}


def batches(count: int) -> list[dict[str, torch.Tensor]]:
    lengths, rng = train_lengths(), random.Random(0)
    out = []
    for _ in range(count):
        real = [rng.choice(lengths) for _ in range(BATCH)]
        mask = (torch.arange(max(real)).view(1, -1) < torch.tensor(real).view(-1, 1)).long()
        ids = torch.randint(1000, 20000, mask.shape) * mask
        out.append(
            {
                "input_ids": ids,
                "attention_mask": mask,
                "token_type_ids": torch.zeros_like(ids),
                "labels": torch.randint(0, 2, (BATCH,)),
            }
        )
    return out


def attention_ms(data: list[dict[str, torch.Tensor]], cost: float) -> Callable[[], float]:
    """One attention layer, forward and backward: ms per batch."""
    packed = [packing.pack(b, HEADS, cost) for b in data]
    layouts = [{k: v for k, v in p.items() if k.startswith("packed_")} for p in packed]
    inputs = [
        [torch.randn(1, HEADS, p["input_ids"].shape[1], WIDTH) for _ in range(3)] for p in packed
    ]

    def run() -> float:
        began = time.perf_counter()
        for layout, qkv in zip(layouts, inputs, strict=True):
            q, k, v = (x.clone().requires_grad_() for x in qkv)
            out, _ = packing._attention(torch.nn.Module(), q, k, v, None, DROPOUT, **layout)
            out.sum().backward()
        return (time.perf_counter() - began) * 1000 / len(layouts)

    return run


def step_rate(
    data: list[dict[str, torch.Tensor]], cost: float, first_only: bool
) -> Callable[[], float]:
    """Bare training steps of all-MiniLM-L6-v2: samples/s."""
    from transformers import AutoModelForSequenceClassification

    torch.manual_seed(0)
    model = AutoModelForSequenceClassification.from_pretrained(str(minilm_dir()), num_labels=2)
    assert packing.enable(model) is not None
    if not first_only:  # the last layer's own forward again
        del model.bert.encoder.layer[-1].forward
    model.train()
    optimizer = torch.optim.AdamW(model.parameters(), lr=5e-5, fused=True)

    def packed() -> Iterator[dict[str, Any]]:
        # Packed in a background thread, as the trainer's data thread packs them.
        ready: queue.Queue[dict[str, Any] | None] = queue.Queue(maxsize=2)

        def produce() -> None:
            for b in data:
                ready.put(packing.pack(b, HEADS, cost))
            ready.put(None)

        threading.Thread(target=produce, daemon=True).start()
        yield from iter(ready.get, None)

    def run() -> float:
        began = time.perf_counter()
        for p in packed():
            inputs = dict(p)
            labels = inputs.pop("labels")
            logits = model(**inputs).logits
            torch.nn.functional.cross_entropy(logits, labels).backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)
        return BATCH * len(data) / (time.perf_counter() - began)

    return run


def rounds(runs: dict[str, Callable[[], float]], count: int) -> dict[str, float]:
    """Medians of alternating rounds, after one warm-up round."""
    results: dict[str, list[float]] = {name: [] for name in runs}
    for i in range(count + 1):
        for name, run in runs.items():
            value = run()
            if i:
                results[name].append(value)
    return {name: statistics.median(values) for name, values in results.items()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batches", type=int, default=10, help="batches per round")
    parser.add_argument("--rounds", type=int, default=8)
    args = parser.parse_args()
    data = batches(args.batches)
    ms = rounds({n: attention_ms(data, VARIANTS[n][0]) for n in VARIANTS}, args.rounds)
    rate = rounds({n: step_rate(data, *VARIANTS[n]) for n in VARIANTS}, args.rounds)
    weights = {
        n: statistics.mean(
            sum(c * w * w for c, w, _ in packing.pack(b, HEADS, VARIANTS[n][0])["packed_groups"])
            for b in data
        )
        for n in VARIANTS
    }
    first = next(iter(VARIANTS))
    head = ["variant", "attention weights per head", "attention ms/layer", "steps: samples/s"]
    print("| " + " | ".join([*head, "vs one call"]) + " |")
    print("|---" * (len(head) + 1) + "|")
    for n in VARIANTS:
        row = [
            n,
            f"{weights[n]:.0f}",
            f"{ms[n]:.1f}",
            f"{rate[n]:.1f}",
            f"{rate[n] / rate[first]:.2f}x",
        ]
        print("| " + " | ".join(row) + " |")


if __name__ == "__main__":
    main()
