"""The chart's Grafana dashboards: generated from dashboards/ (no drift), valid for the
SDK's own model, and querying only series the trainer and the operator serve. Their
queries run against a real Prometheus scraping real pods in tests/e2e/test_training.py."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from finetune_api.metrics import Metric, OperatorMetric

ROOT = Path(__file__).resolve().parent.parent
FILES = ROOT / "charts" / "finetune-operator" / "dashboards"
sys.path.insert(0, str(ROOT / "dashboards"))

from finetune_dashboards import __main__ as generator  # noqa: E402

# Series that are not ours: the DCGM exporter's, read where it runs.
FOREIGN = {"DCGM_FI_DEV_GPU_UTIL", "DCGM_FI_DEV_FB_USED"}
SUFFIXES = ("_total", "_sum", "_count", "_bucket")


def dashboards() -> dict[str, dict[str, Any]]:
    return {p.name: json.loads(p.read_text()) for p in sorted(FILES.glob("*.json"))}


def exprs(board: dict[str, Any]) -> list[tuple[str, str]]:
    """(panel title, PromQL) of every query of every panel."""
    return [
        (p["title"], t["expr"]) for p in board["panels"] for t in p.get("targets", [])
    ]  # fmt: skip


def pruned(value: Any) -> Any:
    """`value` without empty objects."""
    if isinstance(value, dict):
        return {k: pruned(v) for k, v in value.items() if v != {}}
    if isinstance(value, list):
        return [pruned(v) for v in value]
    return value


def check(out: Path) -> subprocess.CompletedProcess[str]:
    argv = [sys.executable, "-m", "finetune_dashboards", "--check", "--out", str(out)]
    env = {**os.environ, "PYTHONPATH": str(ROOT / "dashboards")}
    return subprocess.run(argv, capture_output=True, text=True, env=env, check=False)


def test_the_chart_holds_exactly_what_the_code_generates(tmp_path: Path) -> None:
    assert sorted(p.name for p in FILES.glob("*.json")) == sorted(generator.DASHBOARDS)
    assert check(FILES).returncode == 0, check(FILES).stderr
    # A hand edit of a generated file is found, and named.
    shutil.copytree(FILES, tmp_path / "d")
    edited = tmp_path / "d" / "training.json"
    edited.write_text(edited.read_text().replace("Loss over time", "Loss"))
    done = check(tmp_path / "d")
    assert done.returncode == 1
    assert "training.json" in done.stderr
    assert "make generate" in done.stderr


@pytest.mark.parametrize("name", ["training.json", "operator.json"])
def test_each_dashboard_reads_back_into_the_sdk_model_unchanged(name: str) -> None:
    from grafana_foundation_sdk.cog.encoder import JSONEncoder
    from grafana_foundation_sdk.cog.plugins import register_default_plugins
    from grafana_foundation_sdk.models.dashboard import Dashboard

    register_default_plugins()
    raw = json.loads((FILES / name).read_text())
    model = Dashboard.from_json(raw)
    # Read back, the model says the same (it adds only empty `custom` objects).
    assert pruned(json.loads(json.dumps(model, cls=JSONEncoder))) == pruned(raw)
    assert [p.type_val for p in model.panels or [] if p.type_val != "row"]


def test_every_query_names_a_series_that_is_served() -> None:
    served = {str(m) for m in [*Metric, *OperatorMetric]} | FOREIGN
    for name, board in dashboards().items():
        for title, expr in exprs(board):
            names = {
                n for n in re.findall(r"\b(?:finetune|DCGM)_[A-Za-z0-9_]+", expr)
            }  # fmt: skip
            assert names, (name, title, expr)
            for n in names:
                base = next((n[: -len(s)] for s in SUFFIXES if n.endswith(s)), n)
                assert n in served or base in served, (name, title, n)


def test_the_training_dashboard_picks_one_job_and_shows_what_a_user_watches() -> None:
    board = dashboards()["training.json"]
    variables = {v["name"]: v for v in board["templating"]["list"]}
    assert set(variables) == {"datasource", "namespace", "job"}
    assert "finetunejob" in variables["job"]["query"]
    titles = {p["title"] for p in board["panels"]}
    for wanted in ("Loss over time", "Loss over steps", "Evaluation metrics", "Learning rate",
                   "Throughput", "Step", "Time left", "Data wait", "Checkpoint duration",
                   "Checkpoint bytes uploaded", "Last checkpoint age", "Restarts",
                   "GPU utilisation", "GPU memory"):  # fmt: skip
        assert wanted in titles
    for title, expr in exprs(board):
        if "DCGM" not in expr:
            assert 'finetunejob="$job"' in expr, (title, expr)
    # Without a GPU the GPU panels say so, rather than showing an error or a blank.
    gpu = [p for p in board["panels"] if p["title"].startswith("GPU ")]
    assert all(p["fieldConfig"]["defaults"]["noValue"] == "no GPU metrics" for p in gpu)
