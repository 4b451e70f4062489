"""What the CPU step's plumbing is worth, lever by lever (`.venv/bin/python
bench/cpu_step.py`).

Bare padding-free training steps of all-MiniLM-L6-v2 (forward, backward, clipping to
1.0, fused AdamW) on batches of 8 MRPC-length pairs, packed as the trainer packs them,
on one model in one process. The levers are switched on one after another, and the
variants run in alternating rounds:

- `before`: torch's dropout, torch's clip_grad_norm_ then the step, and glibc's
  allocator as it comes (large tensors mapped afresh every step);
- `+ freed memory kept` (allocator.py);
- `+ clipping inside the AdamW step` (optimizer.py);
- `+ own dropout draw` (packing.py's _keep): the trainer's default on a CPU.

Prints a Markdown table for docs/benchmarks.md.
"""

from __future__ import annotations

import argparse
import ctypes
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path[:0] = [str(ROOT / "bench")]

import torch  # noqa: E402
from packed_attention import BATCH, HEADS, batches, rounds  # noqa: E402

from finetune_trainer import allocator, packing  # noqa: E402
from finetune_trainer.optimizer import clipped_step  # noqa: E402
from trainer_support import minilm_dir  # noqa: E402  (packed_attention put tests/ on the path)

LEVERS = ["freed memory kept", "clipping inside the AdamW step", "own dropout draw"]
GLIBC_MMAP_MAX, GLIBC_TRIM_THRESHOLD = 65536, 128 * 1024  # glibc's defaults


def sdpa(q: Any, k: Any, v: Any, mask: Any, dropout: float, scale: Any) -> torch.Tensor:
    """The attention of one call with torch's dropout (packing._attend before the draw)."""
    return torch.nn.functional.scaled_dot_product_attention(
        q, k, v, attn_mask=mask, dropout_p=dropout, scale=scale
    )


class Steps:
    """One model and optimizer; `run(levers)` times a round of steps with those on."""

    def __init__(self, data: list[dict[str, torch.Tensor]]) -> None:
        from transformers import AutoModelForSequenceClassification

        torch.manual_seed(0)
        self.model = AutoModelForSequenceClassification.from_pretrained(
            str(minilm_dir()), num_labels=2
        )
        assert packing.enable(self.model) is not None
        self.model.train()
        self.optimizer = torch.optim.AdamW(self.model.parameters(), lr=5e-5, fused=True)
        self.packed = [packing.pack(b, HEADS, packing.CPU_CALL_COST) for b in data]
        self.dropouts = [m for m in self.model.modules() if isinstance(m, torch.nn.Dropout)]
        self.own_attend = packing._attend
        self.libc = ctypes.CDLL(None)

    def switch(self, levers: list[str]) -> None:
        if "freed memory kept" in levers:
            assert allocator.keep_freed_memory()
        else:
            self.libc.mallopt(allocator.M_MMAP_MAX, GLIBC_MMAP_MAX)
            self.libc.mallopt(allocator.M_TRIM_THRESHOLD, GLIBC_TRIM_THRESHOLD)
            self.libc.malloc_trim(0)
        own = "own dropout draw" in levers
        packing._attend = self.own_attend if own else sdpa  # type: ignore[assignment]
        for m in self.dropouts:
            m.__class__ = packing.DrawnDropout if own else torch.nn.Dropout

    def run(self, levers: list[str]) -> Callable[[], float]:
        fused = "clipping inside the AdamW step" in levers
        params = list(self.model.parameters())

        def timed() -> float:
            self.switch(levers)
            began = time.perf_counter()
            for p in self.packed:
                inputs = dict(p)
                labels = inputs.pop("labels")
                logits = self.model(**inputs).logits
                torch.nn.functional.cross_entropy(logits, labels).backward()
                if fused:
                    clipped_step(self.optimizer, params, 1.0)
                else:
                    torch.nn.utils.clip_grad_norm_(params, 1.0)
                    self.optimizer.step()
                self.optimizer.zero_grad(set_to_none=True)
            return BATCH * len(self.packed) / (time.perf_counter() - began)

        return timed


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batches", type=int, default=20, help="batches per round")
    parser.add_argument("--rounds", type=int, default=8)
    args = parser.parse_args()
    steps = Steps(batches(args.batches))
    variants = {"before": steps.run([])}
    for i, lever in enumerate(LEVERS):
        variants[f"+ {lever}"] = steps.run(LEVERS[: i + 1])
    rate = rounds(variants, args.rounds)
    first = rate["before"]
    print("| variant | steps: samples/s | vs before |")
    print("|---|---|---|")
    for name, value in rate.items():
        print(f"| {name} | {value:.1f} | {value / first:.2f}x |")


if __name__ == "__main__":
    main()
