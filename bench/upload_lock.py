"""Training slowed by a background thread that holds Python's lock
(`.venv/bin/python bench/upload_lock.py`).

MiniLM training steps (batch 8, length 56, one torch thread, as `--spare-core` in
bench/checkpoint_stall.py) beside a thread 10 nice steps lower, as the checkpoint upload
runs, on a machine with a core to spare for it. The thread does, in a loop, either Python
work that holds the global interpreter lock, or `bytes` copies of 8 MiB (they hold it too),
or sha256 of 64 MiB (it releases the lock), or nothing. Side by side, rounds alternating
the order. Prints each one's time for the same steps and its ratio to no thread.
"""

from __future__ import annotations

import argparse
import hashlib
import os
import statistics
import sys
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path[:0] = [str(ROOT / "tests" / "cluster"), str(ROOT / "tests")]

import torch  # noqa: E402

from trainer_support import minilm_dir  # noqa: E402

BUFFER = os.urandom(64 << 20)


def busy(kind: str, stop: threading.Event) -> None:
    os.nice(10)  # this thread's (Linux nice values are per thread), as the upload ran
    while not stop.is_set():
        if kind == "Python loop (holds the lock)":
            sum(range(200_000))
        elif kind == "bytes copy of 8 MiB (holds the lock)":
            bytes(memoryview(BUFFER)[: 8 << 20])
        else:
            hashlib.sha256(BUFFER).digest()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    from transformers import AutoModelForSequenceClassification

    torch.set_num_threads(1)
    model = AutoModelForSequenceClassification.from_pretrained(str(minilm_dir()), num_labels=2)
    optimizer = torch.optim.AdamW(model.parameters(), lr=5e-5, fused=True)
    ids, labels = torch.randint(1000, 20000, (8, 56)), torch.randint(0, 2, (8,))

    def step() -> None:
        model(input_ids=ids, labels=labels).loss.backward()
        optimizer.step()
        optimizer.zero_grad()

    kinds = ["no thread", "Python loop (holds the lock)", "bytes copy of 8 MiB (holds the lock)",
             "sha256 of 64 MiB (releases the lock)"]  # fmt: skip
    took: dict[str, list[float]] = {k: [] for k in kinds}
    step()
    for i in range(args.rounds):
        for kind in kinds if i % 2 == 0 else kinds[::-1]:
            stop = threading.Event()
            thread = threading.Thread(target=busy, args=(kind, stop))
            if kind != "no thread":
                thread.start()
            began = time.monotonic()
            for _ in range(args.steps):
                step()
            took[kind].append(time.monotonic() - began)
            stop.set()
            if thread.is_alive():
                thread.join()
    base = statistics.mean(took["no thread"])
    print(f"\n{args.steps} steps, mean of {args.rounds} rounds, {os.cpu_count()} cores\n")
    print("| beside training | seconds | ratio |\n|---|---|---|")
    for kind, seconds in took.items():
        print(
            f"| {kind} | {statistics.mean(seconds):.1f} | {statistics.mean(seconds) / base:.2f}x |"
        )


if __name__ == "__main__":
    main()
