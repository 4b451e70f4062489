"""MRPC accuracy over several seeds (`.venv/bin/python bench/mrpc_seeds.py --seeds 1 2`).

Runs the slow test's job (all-MiniLM-L6-v2, 2 machine ranks on CPU, global batch 8, lr 5e-5,
3 epochs) once per seed and prints dev accuracy and F1 after each epoch. One seed of MRPC dev
(408 pairs) moves by a point or two, so a comparison with the single-process recipe needs
several seeds.
"""

from __future__ import annotations

import argparse
import re
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path[:0] = [str(ROOT / "tests" / "cluster"), str(ROOT / "tests")]

from trainer_support import mrpc_minilm_spec, run_nodes  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=int, nargs="+", default=[1, 2, 3])
    args = parser.parse_args()
    print("| seed | epoch 1 acc / F1 | epoch 2 acc / F1 | epoch 3 acc / F1 |")
    print("| ---: | --- | --- | --- |")
    for seed in args.seeds:
        with tempfile.TemporaryDirectory() as tmp:
            work = Path(tmp)
            log = run_nodes(mrpc_minilm_spec(work, seed), work / "run", timeout=7200)[0].output()
        evals = re.findall(r"eval at step \d+ \| accuracy ([0-9.]+) f1 ([0-9.]+)", log)
        cells = " | ".join(f"{a} / {f}" for a, f in evals)
        print(f"| {seed} | {cells} |", flush=True)


if __name__ == "__main__":
    main()
