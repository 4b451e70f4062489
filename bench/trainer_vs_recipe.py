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

On a GPU (`--device cuda`, the default where one is visible) the model is BERT-base-sized
(`--model bert-base`: 12 layers of 768, random initialisation, MiniLM's tokenizer), the
tuned `Trainer` runs in bf16, ours runs on one GPU with the whole batch, and the MFU column
puts each run's model FLOPs (PaLM's formula: 6 per weight of the layers per real token, plus
attention, over the real tokens only) against the bf16 matrix-multiply peak measured in the
same run (a plain `torch.matmul` loop). On the CPU that peak is fp32's, unless the CPU has
AMX (then bf16's, as `precision: auto` picks). Both models run on either device.

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

from finetune_trainer.precision import cpu_has_amx, cpu_has_bf16, mixed_precision  # noqa: E402
from trainer_support import minilm_dir, mrpc_dataset  # noqa: E402

os.environ.setdefault("HF_DATASETS_DISABLE_PROGRESS_BARS", "1")
GLOBAL_BATCH = 8
LR = 5e-5
MAX_LEN = 128


@dataclass(frozen=True)
class Setup:
    """What every column of one bench run shares: the model and the device."""

    model_dir: Path
    device: str  # cpu or cuda


@dataclass
class Result:
    samples_per_s: list[float] = field(default_factory=list)
    scores: list[tuple[float, float]] = field(default_factory=list)  # (accuracy, f1) per run


def hf_trainer(
    setup: Setup, tuned: bool, steps: int | None, seed: int
) -> tuple[float, tuple[float, float]]:
    """The recipe (or the tuned Trainer): its samples/s and final dev accuracy/F1."""
    tuning: dict[str, Any] = {}
    if tuned:
        tuning = {
            "train_sampling_strategy": "group_by_length",  # transformers 5 (was group_by_length)
            "bf16": auto_bf16(setup.device),
            "dataloader_num_workers": 1,
        }
    on_cpu = setup.device == "cpu"
    rate, scores = mrpc_reference.train(seed, steps, setup.model_dir, on_cpu, **tuning)
    return rate, scores[-1] if scores else (0.0, 0.0)


def ours(
    setup: Setup,
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
    # The quickstart's shape on the CPU: 2 GPUs' batch, one process by default; on a GPU
    # machine one GPU with the whole batch.
    gpus = 1 if setup.device == "cuda" else 2
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        training: dict[str, Any] = {
            "perDeviceTrainBatchSize": GLOBAL_BATCH // gpus,
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
                "model": {"uri": f"file://{setup.model_dir}", "numLabels": 2},
                "dataset": mrpc_dataset(MAX_LEN),
                "training": training,
                "resources": {"nodes": 1, "gpusPerNode": gpus, **processes},
                "checkpoints": {"uri": str(work / "checkpoints")},
                "output": {"uri": str(work / "model")},
            },
        }
        out = ftctl_local(job, work, "run", device=setup.device)
    evals = re.findall(r"eval at step \d+ \| accuracy ([0-9.]+) f1 ([0-9.]+)", out)
    scores = (float(evals[-1][0]), float(evals[-1][1])) if evals else (0.0, 0.0)
    return samples_per_second(out), scores


def ftctl_local(
    job: dict[str, Any],
    work: Path,
    name: str,
    env: dict[str, str] | None = None,
    device: str = "cpu",
) -> str:
    """`ftctl run --local` of `job` on `device`, as users run it (scratch in work/name):
    its output. The other benches run our trainer through this too."""
    path = work / f"{name}.yaml"
    path.write_text(yaml.safe_dump(job))
    argv = [str(Path(sys.executable).parent / "ftctl"), "run", "--local", "-f", str(path),
            "--device", device, "--metrics-port", "0", "--work-dir", str(work / name)]  # fmt: skip
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


def padding(order: str, device: str) -> tuple[float, float, float]:
    """Mean real tokens of a pair, the padded fraction of one epoch's batches, and
    that of their padding-free attention calls on `device` (in_calls)."""
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
    in_attention = sum(in_calls(b, device) for b in batches)
    return real / len(lengths), 1 - real / padded, 1 - real / in_attention


def in_calls(batch: list[int], device: str) -> int:
    """Tokens a padding-free step's attention computes for `batch`: its examples cut
    into calls by length on a CPU, each call padded to its longest (one call on a GPU)."""
    from finetune_trainer import packing

    lengths = [train_lengths()[i] for i in batch]
    groups = packing._plan(lengths, packing.device_call_cost(device))
    return sum(len(g) * max(lengths[e] for e in g) for g in groups)


def bert_base(dest: Path) -> Path:
    """A BERT-base-sized classifier (12 layers of 768, as bert-base-uncased), randomly
    initialised, with MiniLM's tokenizer (the same uncased vocabulary): for speed only."""
    import torch
    from transformers import AutoTokenizer, BertConfig, BertForSequenceClassification

    tokenizer = AutoTokenizer.from_pretrained(str(minilm_dir()))
    torch.manual_seed(0)
    config = BertConfig(vocab_size=tokenizer.vocab_size, num_labels=2)
    BertForSequenceClassification(config).save_pretrained(dest, safe_serialization=True)
    tokenizer.save_pretrained(dest)
    return dest


def flops_per_token(model_dir: Path) -> float:
    """Model FLOPs of one real token's forward and backward pass (PaLM's appendix B): 6
    per weight of the layers, plus 12 x layers x width x its sequence's length for
    attention, that length averaged over MRPC's tokens (sum of squares over sum)."""
    from transformers import AutoConfig

    cfg = AutoConfig.from_pretrained(str(model_dir))
    width, layers = cfg.hidden_size, cfg.num_hidden_layers
    weights = layers * (4 * width * width + 2 * width * cfg.intermediate_size)
    lengths = train_lengths()
    per_token_length = sum(n * n for n in lengths) / sum(lengths)
    return 6 * weights + 12 * layers * width * per_token_length


def auto_bf16(device: str) -> bool:
    """Whether our `precision: auto` trains in bf16 on `device`: the rule the tuned
    Trainer and the matmul peak follow too."""
    import torch

    gpu_bf16 = device == "cuda" and torch.cuda.is_bf16_supported()
    mode = mixed_precision("auto", device == "cuda", gpu_bf16, cpu_has_bf16(), cpu_has_amx())
    return mode == "bf16"


def matmul_peak(device: str) -> tuple[float, str]:
    """FLOP/s of a plain `torch.matmul` loop on `device` (bf16 where `precision: auto`
    picks it, else fp32), and what was measured."""
    import time

    import torch

    dtype = torch.bfloat16 if auto_bf16(device) else torch.float32
    n, reps = (8192, 50) if device == "cuda" else (2048, 10)
    a, b = (torch.randn(n, n, device=device, dtype=dtype) for _ in range(2))
    sync = torch.cuda.synchronize if device == "cuda" else (lambda: None)
    for _ in range(3):
        a @ b
    sync()
    began = time.perf_counter()
    for _ in range(reps):
        a @ b
    sync()
    rate = 2 * n**3 * reps / (time.perf_counter() - began)
    return rate, f"{str(dtype).removeprefix('torch.')} {n}x{n} torch.matmul on {device}"


Run = Callable[[int], tuple[float, tuple[float, float]]]  # seed -> samples/s, (acc, F1)

# How each column orders its batches (for the padding column).
BATCHING = {
    "recipe (Trainer, fp32)": "random",
    "tuned Trainer": "grouped",
    "ours, paddingFree false": "random",
    "ours, groupByLength true": "windows",
    "ours, precision fp32": "random",
    "ours (default: 1 process)": "random",
    "ours, processesPerNode 2": "two-ranks",
}

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


def arguments() -> argparse.Namespace:
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
    parser.add_argument(
        "--device",
        choices=["auto", "cpu", "cuda"],
        default="auto",
        help="where every column trains (default: cuda when a GPU is visible, else cpu)",
    )
    parser.add_argument(
        "--model",
        choices=["minilm", "bert-base"],
        help="all-MiniLM-L6-v2, or a BERT-base-sized model of random weights "
        "(default: bert-base on a GPU, minilm on the CPU)",
    )
    args = parser.parse_args()
    if args.only:
        unknown = set(args.only) - set(KEYS.values())
        if unknown:
            parser.error(f"--only: unknown {sorted(unknown)}; choose from {list(KEYS.values())}")
    if args.no_recipe and not args.full:
        parser.error("--no-recipe: only with --full (--quick needs the recipe for its ratios)")
    return args


def columns(setup: Setup, args: argparse.Namespace) -> dict[str, Run]:
    steps = None if args.full else args.steps
    runs: dict[str, Run] = {
        "recipe (Trainer, fp32)": lambda s: hf_trainer(setup, False, steps, s),
        "tuned Trainer": lambda s: hf_trainer(setup, True, steps, s),
        "ours, paddingFree false": lambda s: ours(setup, None, steps, s, packed=False),
        "ours, groupByLength true": lambda s: ours(setup, None, steps, s, grouped=True),
        "ours, precision fp32": lambda s: ours(setup, None, steps, s, precision="fp32"),
        "ours (default: 1 process)": lambda s: ours(setup, None, steps, s),
        "ours, processesPerNode 2": lambda s: ours(setup, 2, steps, s),
    }
    if args.only:
        runs = {n: f for n, f in runs.items() if KEYS[n] in {*args.only, "recipe"}}
    if args.no_recipe:
        runs = {n: f for n, f in runs.items() if KEYS[n] != "recipe"}
    return runs


def main() -> None:
    import torch

    args = arguments()
    device = args.device
    if device == "auto":
        device = "cuda" if torch.cuda.is_available() else "cpu"
    model = args.model or ("bert-base" if device == "cuda" else "minilm")
    with tempfile.TemporaryDirectory() as tmp:
        model_dir = bert_base(Path(tmp)) if model == "bert-base" else minilm_dir()
        setup = Setup(model_dir, device)
        peak, measured = matmul_peak(device)
        runs = columns(setup, args)
        seeds = args.seeds if args.full else [42] * args.rounds
        results = measure(runs, seeds)
        per_token = flops_per_token(model_dir)
    steps = "3 epochs" if args.full else args.steps
    print(f"\n{model} on {device}; CPU bf16 in hardware: {cpu_has_bf16()}, AMX: "
          f"{cpu_has_amx()}; steps: {steps}; runs per column: {len(seeds)}; peak "
          f"{peak / 1e12:.2f} TFLOP/s ({measured}); {per_token / 1e9:.3f} GFLOP "
          "per real token\n")  # fmt: skip
    report(results, setup, peak / per_token, args.full)


def measure(runs: dict[str, Run], seeds: list[int]) -> dict[str, Result]:
    """Each column once per seed, alternating which goes first."""
    results = {name: Result() for name in runs}
    for i, seed in enumerate(seeds):
        for name in list(runs) if i % 2 == 0 else list(reversed(runs)):
            rate, scores = runs[name](seed)
            results[name].samples_per_s.append(rate)
            results[name].scores.append(scores)
            print(f"# round {i + 1} seed {seed}: {name}: {rate:.1f} samples/s {scores}", flush=True)
    return results


def report(results: dict[str, Result], setup: Setup, peak_tokens: float, full: bool) -> None:
    """The Markdown table; `peak_tokens`: real tokens/s at the measured peak."""
    recipe = results.get("recipe (Trainer, fp32)")
    base = statistics.mean(recipe.samples_per_s) if recipe else None
    head = "| run | samples/s | real tokens/s | padding | vs recipe | MFU |"
    if full:
        head += " dev accuracy | dev F1 |"
    print(head)
    print("|" + "---|" * (head.count("|") - 1))
    for name, res in results.items():
        mean_tokens, padded, in_attention = padding(BATCHING[name], setup.device)
        rate = statistics.mean(res.samples_per_s)
        pads = f"{padded:.0%}"
        if name.startswith("ours") and name != "ours, paddingFree false":
            pads = f"none ({in_attention:.0%} in attention)"
        row = (f"| {name} | {rate:.1f} | {rate * mean_tokens:.0f} | {pads} | "
               f"{f'{rate / base:.2f}x' if base else '-'} | "
               f"{rate * mean_tokens / peak_tokens:.1%} |")  # fmt: skip
        if full:
            acc = statistics.mean(a for a, _ in res.scores)
            f1 = statistics.mean(f for _, f in res.scores)
            row += f" {acc:.4f} | {f1:.4f} |"
        print(row, flush=True)


if __name__ == "__main__":
    main()
