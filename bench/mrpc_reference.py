"""The plain Hugging Face Trainer recipe on MRPC, for side-by-side comparison with
bench/mrpc_seeds.py (`.venv/bin/python bench/mrpc_reference.py --seeds 42 1`).

One process, all-MiniLM-L6-v2 from its offline package, batch 8, lr 5e-5, 3 epochs,
dynamic padding, evaluation on dev after each epoch: the course's recipe, with the
model's head initialised after set_seed so each seed is reproducible.
"""

from __future__ import annotations

import argparse
import csv
import sys
import tempfile
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path[:0] = [str(ROOT / "tests" / "cluster"), str(ROOT / "tests")]

from trainer_support import MRPC, minilm_dir  # noqa: E402


def read(path: Path) -> dict[str, list[Any]]:
    with path.open(encoding="utf-8-sig", newline="") as f:
        rows = list(csv.DictReader(f, delimiter="\t", quoting=csv.QUOTE_NONE))
    return {
        "sentence1": [r["#1 String"] for r in rows],
        "sentence2": [r["#2 String"] for r in rows],
        "label": [int(r["Quality"]) for r in rows],
    }


def tokenized(tokenizer: Any, split: str) -> Any:
    """One MRPC split as a datasets.Dataset, tokenized as the recipe does (no padding)."""
    from datasets import Dataset

    def tokenize(batch: dict[str, list[Any]]) -> Any:
        return tokenizer(batch["sentence1"], batch["sentence2"], truncation=True)

    return Dataset.from_dict(read(MRPC / f"{split}.tsv")).map(tokenize, batched=True)


def train(
    seed: int,
    steps: int | None = None,
    model_dir: Path | None = None,
    use_cpu: bool = True,
    **tuning: Any,
) -> tuple[float, list[tuple[float, float]]]:
    """The recipe (with `tuning`, further TrainingArguments) on MiniLM, or the model in
    `model_dir`, on the CPU unless `use_cpu` is false: its training samples/s, and dev
    accuracy / F1 after each epoch (none when `steps` caps the run)."""
    import numpy as np
    from sklearn.metrics import accuracy_score, f1_score
    from transformers import (
        AutoModelForSequenceClassification,
        AutoTokenizer,
        DataCollatorWithPadding,
        Trainer,
        TrainingArguments,
        set_seed,
    )

    model_path = str(model_dir or minilm_dir())
    tokenizer = AutoTokenizer.from_pretrained(model_path)
    train_set, dev = tokenized(tokenizer, "train"), tokenized(tokenizer, "dev")
    set_seed(seed)
    model = AutoModelForSequenceClassification.from_pretrained(model_path, num_labels=2)

    def metrics(pred: Any) -> dict[str, float]:
        guess = np.argmax(pred.predictions, axis=-1)
        return {
            "accuracy": float(accuracy_score(pred.label_ids, guess)),
            "f1": float(f1_score(pred.label_ids, guess)),
        }

    scores: list[tuple[float, float]] = []
    with tempfile.TemporaryDirectory() as out:
        args = TrainingArguments(
            out,
            eval_strategy="no" if steps else "epoch",
            save_strategy="no",
            per_device_train_batch_size=8,
            learning_rate=5e-5,
            num_train_epochs=3,
            max_steps=steps or -1,
            seed=seed,
            report_to=[],
            use_cpu=use_cpu,
            disable_tqdm=True,
            logging_steps=100,
            **tuning,
        )
        trainer = Trainer(
            model=model,
            args=args,
            train_dataset=train_set,
            eval_dataset=dev,
            data_collator=DataCollatorWithPadding(tokenizer),
            compute_metrics=metrics,
        )
        rate = float(trainer.train().metrics["train_samples_per_second"])
        for entry in trainer.state.log_history:
            if "eval_accuracy" in entry:
                scores.append((entry["eval_accuracy"], entry["eval_f1"]))
    return rate, scores


def run(seed: int) -> list[tuple[float, float]]:
    return train(seed)[1]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=int, nargs="+", default=[42, 1, 2])
    args = parser.parse_args()
    print("| seed | epoch 1 acc / F1 | epoch 2 acc / F1 | epoch 3 acc / F1 |")
    print("| ---: | --- | --- | --- |")
    for seed in args.seeds:
        cells = " | ".join(f"{a:.4f} / {f:.4f}" for a, f in run(seed))
        print(f"| {seed} | {cells} |", flush=True)


if __name__ == "__main__":
    main()
