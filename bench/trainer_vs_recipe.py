"""Our trainer against the plain Hugging Face Trainer, side by side on this machine
(`make bench-trainer`, or `.venv/bin/python bench/trainer_vs_recipe.py --quick`).

Same model (all-MiniLM-L6-v2 from its offline package), same data (MRPC), same
hyper-parameters (global batch 8, lr 5e-5), same number of optimizer steps:

- recipe: the course's `Trainer` as users run it (fp32, `DataCollatorWithPadding`);
- tuned: the `Trainer` as a strong user tunes it (length-grouped sampling, a dataloader
  worker, bf16 by the rule ours follows: on a CPU only with AMX, since bf16 autocast without
  AMX measured slower than fp32);
- ours: `ftctl run --local -f job.yaml`, the way users run our trainer: by default one
  process on every core, padding-free (`paddingFree: true`: no work on padding outside
  attention) and `precision: auto` (bf16 only on CPUs with AMX), and each lever on its own:
  `paddingFree: false`, `groupByLength: true`, `precision: fp32`, `processesPerNode: 2`.

`--quick` runs a fixed number of steps for throughput; `--full` runs 3 epochs per seed and
adds dev accuracy and F1. Rounds alternate which runs first. Samples/s are each trainer's
own training-loop rate (model loading excluded for all); real tokens/s multiply it by the
mean tokens of an MRPC pair; the padding fraction is that of one epoch's batches as each
batches them (padding-free runs compute padding only inside attention, in calls cut by
length: bench/packed_attention.py). Prints a Markdown table for docs/benchmarks.md.
"""

from __future__ import annotations

import argparse
import functools
import os
import re
import signal
import statistics
import subprocess
import sys
import tempfile
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

ROOT = Path(__file__).resolve().parent.parent
sys.path[:0] = [str(ROOT / "tests" / "cluster"), str(ROOT / "tests"), str(ROOT / "bench")]

import mrpc_reference  # noqa: E402

from finetune_trainer.precision import cpu_has_amx, cpu_has_bf16  # noqa: E402
from trainer_support import minilm_dir, mrpc_dataset  # noqa: E402

os.environ.setdefault("HF_DATASETS_DISABLE_PROGRESS_BARS", "1")
GLOBAL_BATCH = 8
LR = 5e-5
MAX_LEN = 128


@dataclass
class Result:
    samples_per_s: list[float] = field(default_factory=list)
    scores: list[tuple[float, float]] = field(default_factory=list)  # (accuracy, f1) per run


def hf_trainer(tuned: bool, steps: int | None, seed: int) -> tuple[float, tuple[float, float]]:
    """The recipe (or the tuned Trainer): its samples/s and final dev accuracy/F1."""
    tuning: dict[str, Any] = {}
    if tuned:
        tuning = {
            "train_sampling_strategy": "group_by_length",  # transformers 5 (was group_by_length)
            "bf16": cpu_has_amx(),
            "dataloader_num_workers": 1,
        }
    rate, scores = mrpc_reference.train(seed, steps, **tuning)
    return rate, scores[-1] if scores else (0.0, 0.0)


def ours(
    procs: int | None,
    steps: int | None,
    seed: int,
    grouped: bool = False,
    precision: str = "auto",
    packed: bool = True,
) -> tuple[float, tuple[float, float]]:
    """`ftctl run --local` of the same job (`procs`: its processesPerNode, None for the
    default): its samples/s and final dev accuracy/F1."""
    processes = {"processesPerNode": procs} if procs else {}
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        training: dict[str, Any] = {
            "perDeviceTrainBatchSize": GLOBAL_BATCH // 2,
            "learningRate": LR,
            "numTrainEpochs": 3,
            "evalStrategy": "no" if steps else "epoch",
            "loggingSteps": 10_000,
            "seed": seed,
            "groupByLength": grouped,
            "precision": precision,
            "paddingFree": packed,
        }
        if steps:
            training["maxSteps"] = steps
        job = {
            "apiVersion": "finetune.dev/v1alpha1",
            "kind": "FineTuneJob",
            "metadata": {"name": "bench"},
            "spec": {
                "model": {"uri": f"file://{minilm_dir()}", "numLabels": 2},
                "dataset": mrpc_dataset(MAX_LEN),
                "training": training,
                # The quickstart's shape: 2 GPUs' batch; on the CPU one process by default.
                "resources": {"nodes": 1, "gpusPerNode": 2, **processes},
                "checkpoints": {"uri": str(work / "checkpoints")},
                "output": {"uri": str(work / "model")},
            },
        }
        out = ftctl_local(job, work, "run")
    evals = re.findall(r"eval at step \d+ \| accuracy ([0-9.]+) f1 ([0-9.]+)", out)
    scores = (float(evals[-1][0]), float(evals[-1][1])) if evals else (0.0, 0.0)
    return samples_per_second(out), scores


def ftctl_local(
    job: dict[str, Any], work: Path, name: str, env: dict[str, str] | None = None
) -> str:
    """`ftctl run --local` of `job` on the CPU, as users run it (scratch in work/name):
    its output. The other benches run our trainer through this too."""
    path = work / f"{name}.yaml"
    path.write_text(yaml.safe_dump(job))
    argv = [str(Path(sys.executable).parent / "ftctl"), "run", "--local", "-f", str(path),
            "--device", "cpu", "--metrics-port", "0", "--work-dir", str(work / name)]  # fmt: skip
    return output_of(argv, {**os.environ, **(env or {}), "HF_HUB_OFFLINE": "1"}, "ftctl run")


def output_of(argv: list[str], env: dict[str, str], what: str) -> str:
    """The output of a command that must succeed (its tail in the error if not)."""
    done = subprocess.run(
        argv, capture_output=True, text=True, env=env, check=False, preexec_fn=ends_with_us()
    )
    out = done.stdout + done.stderr
    if done.returncode != 0:
        raise RuntimeError(f"{what} failed ({done.returncode}):\n{out[-3000:]}")
    return out


def ends_with_us() -> Callable[[], None]:
    """What a child runs before it execs: SIGTERM it when this bench dies, however it
    dies. `ftctl run --local` passes SIGTERM on to its trainer processes, so an
    interrupted bench leaves none of them running. prctl is looked up here, in the
    parent: the forked child of a threaded process only calls it."""
    import ctypes

    pr_set_pdeathsig = 1  # linux/prctl.h
    return functools.partial(ctypes.CDLL(None).prctl, pr_set_pdeathsig, signal.SIGTERM)


def samples_per_second(out: str) -> float:
    """The training loop's rate, from the last progress line of a run's output."""
    return float(re.findall(r"step \d+/\d+ .*?\| ([0-9.]+) samples/s", out)[-1])


@functools.cache
def train_lengths() -> list[int]:
    """Tokens of each MRPC training pair, as the model's tokenizer counts them."""
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(str(minilm_dir()))
    return [len(x) for x in mrpc_reference.tokenized(tokenizer, "train")["input_ids"]]


def padding(order: str) -> tuple[float, float, float]:
    """Mean real tokens of a pair, the padded fraction of one epoch's batches, and
    that of their padding-free attention calls (in_calls)."""
    import random

    from transformers.trainer_pt_utils import get_length_grouped_indices

    lengths = train_lengths()
    rng = random.Random(0)
    if order == "grouped":
        import torch

        gen = torch.Generator().manual_seed(0)
        idx = get_length_grouped_indices(lengths, GLOBAL_BATCH, generator=gen)
        size = GLOBAL_BATCH
    elif order.startswith("windows"):
        from finetune_trainer.batching import WINDOW, group, run_size

        ranks = 2 if order.endswith("two-ranks") else 1
        step = GLOBAL_BATCH // ranks
        size = run_size(step, ranks, True)  # examples per forward pass: what is padded
        idx = list(range(len(lengths)))
        rng.shuffle(idx)
        span = WINDOW * step
        dealt = []
        for w, at in enumerate(range(0, len(idx), span)):
            part = idx[at : at + span]
            sizes = [step] * (len(part) // step) + ([len(part) % step] if len(part) % step else [])
            steps = group([lengths[i] for i in part], sizes, 0, 0, w, 0, size)
            dealt += [part[i] for chosen in steps for i in chosen]
        idx = dealt
    else:
        idx = list(range(len(lengths)))
        rng.shuffle(idx)
        size = GLOBAL_BATCH // (2 if order == "two-ranks" else 1)
    batches = [idx[i : i + size] for i in range(0, len(idx), size)]
    real = sum(lengths)
    padded = sum(len(b) * max(lengths[i] for i in b) for b in batches)
    return real / len(lengths), 1 - real / padded, 1 - real / sum(map(in_calls, batches))


def in_calls(batch: list[int]) -> int:
    """Tokens a padding-free step's attention computes for `batch` on a CPU: its
    examples cut into calls by length, each call padded to its longest."""
    from finetune_trainer import packing

    lengths = [train_lengths()[i] for i in batch]
    groups = packing._plan(lengths, packing.CPU_CALL_COST)
    return sum(len(g) * max(lengths[e] for e in g) for g in groups)


# Short names for --only.
KEYS = {
    "recipe (Trainer, fp32)": "recipe",
    "tuned Trainer": "tuned",
    "ours, paddingFree false": "ours-1-padded",
    "ours, groupByLength true": "ours-1-grouped",
    "ours, precision fp32": "ours-1-fp32",
    "ours (default: 1 process)": "ours-1",
    "ours, processesPerNode 2": "ours-2",
}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    mode = parser.add_mutually_exclusive_group()
    mode.add_argument("--quick", action="store_true", help="a fixed number of steps (default)")
    mode.add_argument("--full", action="store_true", help="3 epochs per seed, with accuracy")
    parser.add_argument("--steps", type=int, default=200)
    parser.add_argument("--rounds", type=int, default=2, help="repeats (--quick)")
    parser.add_argument("--seeds", type=int, nargs="+", default=[42, 1, 2], help="(--full)")
    parser.add_argument(
        "--only", nargs="+", metavar="RUN", help="only these columns (recipe, tuned, ours-1, ...)"
    )
    parser.add_argument(
        "--no-recipe",
        action="store_true",
        help="(--full) leave the recipe out: its accuracy per seed is reproducible "
        "(bench/mrpc_reference.py), so a rerun of ours need not repeat it; no ratio column",
    )
    args = parser.parse_args()
    steps = None if args.full else args.steps
    runs: dict[str, Callable[[int], tuple[float, tuple[float, float]]]] = {
        "recipe (Trainer, fp32)": lambda s: hf_trainer(False, steps, s),
        "tuned Trainer": lambda s: hf_trainer(True, steps, s),
        "ours, paddingFree false": lambda s: ours(None, steps, s, packed=False),
        "ours, groupByLength true": lambda s: ours(None, steps, s, grouped=True),
        "ours, precision fp32": lambda s: ours(None, steps, s, precision="fp32"),
        "ours (default: 1 process)": lambda s: ours(None, steps, s),
        "ours, processesPerNode 2": lambda s: ours(2, steps, s),
    }
    batching = {
        "recipe (Trainer, fp32)": "random",
        "tuned Trainer": "grouped",
        "ours, paddingFree false": "random",
        "ours, groupByLength true": "windows",
        "ours, precision fp32": "random",
        "ours (default: 1 process)": "random",
        "ours, processesPerNode 2": "two-ranks",
    }
    if args.only:
        unknown = set(args.only) - set(KEYS.values())
        if unknown:
            parser.error(f"--only: unknown {sorted(unknown)}; choose from {list(KEYS.values())}")
        runs = {n: f for n, f in runs.items() if KEYS[n] in {*args.only, "recipe"}}
    if args.no_recipe:
        if not args.full:
            parser.error("--no-recipe: only with --full (--quick needs the recipe for its ratios)")
        runs = {n: f for n, f in runs.items() if KEYS[n] != "recipe"}
    results = {name: Result() for name in runs}
    seeds = args.seeds if args.full else [42] * args.rounds
    for i, seed in enumerate(seeds):
        names = list(runs) if i % 2 == 0 else list(reversed(runs))
        for name in names:
            rate, scores = runs[name](seed)
            results[name].samples_per_s.append(rate)
            results[name].scores.append(scores)
            print(f"# round {i + 1} seed {seed}: {name}: {rate:.1f} samples/s {scores}", flush=True)
    recipe = results.get("recipe (Trainer, fp32)")
    base = statistics.mean(recipe.samples_per_s) if recipe else None
    print(f"\nCPU bf16 in hardware: {cpu_has_bf16()}, AMX: {cpu_has_amx()}; "
          f"steps: {steps or '3 epochs'}; runs per column: {len(seeds)}\n")  # fmt: skip
    head = "| run | samples/s | real tokens/s | padding | vs recipe |"
    if args.full:
        head += " dev accuracy | dev F1 |"
    print(head)
    print("|" + "---|" * (head.count("|") - 1))
    for name, res in results.items():
        mean_tokens, padded, in_attention = padding(batching[name])
        rate = statistics.mean(res.samples_per_s)
        pads = f"{padded:.0%}"
        if name.startswith("ours") and name != "ours, paddingFree false":
            pads = f"none ({in_attention:.0%} in attention)"
        row = (f"| {name} | {rate:.1f} | {rate * mean_tokens:.0f} | {pads} | "
               f"{f'{rate / base:.2f}x' if base else '-'} |")  # fmt: skip
        if args.full:
            acc = statistics.mean(a for a, _ in res.scores)
            f1 = statistics.mean(f for _, f in res.scores)
            row += f" {acc:.4f} | {f1:.4f} |"
        print(row, flush=True)


if __name__ == "__main__":
    main()
