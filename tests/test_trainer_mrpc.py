"""MRPC with the real all-MiniLM-L6-v2, 2 machine ranks, 3 epochs, on CPU (slow).

The plain Hugging Face Trainer recipe (batch 8, lr 5e-5, 3 epochs) reaches about
0.814 accuracy / 0.870 F1 with this model and data; the test asks for at least that
with the recipe's seed (42), and prints both. This trainer measured 0.8186 / 0.8754
with it; docs/trainer.md compares both over several seeds, since one seed of MRPC dev
(408 pairs) moves by about a point.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

from trainer_support import mrpc_minilm_spec, run_nodes

REFERENCE = {"accuracy": 0.814, "f1": 0.870}


@pytest.mark.slow
@pytest.mark.timeout(3600)
def test_mrpc_minilm_two_ranks_matches_the_recipe(tmp_path: Path) -> None:
    spec = mrpc_minilm_spec(tmp_path, seed=42)
    log = run_nodes(spec, tmp_path / "run", timeout=3600)[0].output()
    final = re.findall(r"eval at step (\d+) \| (.*)", log)[-1]
    metrics = dict(zip(final[1].split()[::2], map(float, final[1].split()[1::2]), strict=True))
    print(
        f"\nMRPC dev after {final[0]} steps: accuracy {metrics['accuracy']:.4f}, "
        f"F1 {metrics['f1']:.4f} (plain Trainer recipe: accuracy {REFERENCE['accuracy']}, "
        f"F1 {REFERENCE['f1']})"
    )
    assert metrics["accuracy"] >= 0.81
    assert metrics["f1"] >= 0.87
    config = json.loads((tmp_path / "model" / "config.json").read_text())
    assert config["id2label"] == {"0": "not_equivalent", "1": "equivalent"}
