"""A real Prometheus scrapes the trainer's endpoint while it trains."""

from __future__ import annotations

import json
import shutil
import subprocess
import urllib.parse
import urllib.request
from pathlib import Path

from controlplane import free_port, wait_for

from trainer_support import start_nodes, waimai_jsonl, wait_nodes


def query(prom_port: int, expr: str) -> list[dict[str, object]]:
    url = f"http://127.0.0.1:{prom_port}/api/v1/query?query={urllib.parse.quote(expr)}"
    with urllib.request.urlopen(url, timeout=5) as resp:
        result: list[dict[str, object]] = json.loads(resp.read())["data"]["result"]
    return result


def test_prometheus_sees_loss_and_step_move(tiny_model: Path, tmp_path: Path) -> None:
    prometheus = shutil.which("prometheus")
    assert prometheus, "make test installs Debian's prometheus package"
    metrics_port, prom_port = free_port(), free_port()
    (tmp_path / "prometheus.yml").write_text(
        "global: {scrape_interval: 1s, scrape_timeout: 900ms}\n"
        "scrape_configs:\n"
        "  - job_name: finetune\n"
        f"    static_configs: [{{targets: ['127.0.0.1:{metrics_port}']}}]\n"
    )
    prom = subprocess.Popen(
        [
            prometheus,
            f"--config.file={tmp_path / 'prometheus.yml'}",
            f"--storage.tsdb.path={tmp_path / 'tsdb'}",
            f"--web.listen-address=127.0.0.1:{prom_port}",
        ],
        stdout=(tmp_path / "prometheus.log").open("w"),
        stderr=subprocess.STDOUT,
    )
    data = waimai_jsonl(tmp_path / "train.jsonl", rows=2000)
    spec = {
        "model": {"uri": f"file://{tiny_model}", "numLabels": 2},
        "dataset": {"uri": f"file://{data}", "textColumns": ["text"]},
        "training": {
            "maxSteps": 600,
            "perDeviceTrainBatchSize": 8,
            "learningRate": 1e-3,
            "evalStrategy": "no",
            "loggingSteps": 50,
        },
        "checkpoints": {"uri": f"file://{tmp_path}/ckpt", "saveSteps": 200},
    }
    nodes = start_nodes(
        spec, tmp_path / "run", nodes=1, extra={"FT_METRICS_PORT": str(metrics_port)}
    )
    steps: set[float] = set()
    losses: set[float] = set()
    selector = '{finetunejob="test-job",namespace="tests"}'
    try:

        def moving() -> bool:
            for name, seen in (("finetune_global_step", steps), ("finetune_train_loss", losses)):
                for series in query(prom_port, name + selector):
                    seen.add(float(series["value"][1]))  # type: ignore[index]
            return len(steps) >= 3 and len(losses) >= 3

        wait_for(moving, 120, "Prometheus to scrape a moving step and loss", every=0.5)
        samples = query(prom_port, "finetune_train_samples_total" + selector)
        assert float(samples[0]["value"][1]) > 0  # type: ignore[index]
        up = query(prom_port, 'up{job="finetune"}')
        assert up[0]["value"][1] == "1"  # type: ignore[index]
    finally:
        prom.terminate()
        prom.wait(timeout=30)
        codes = wait_nodes(nodes, 300)
    assert codes == [0], nodes[0].output()[-3000:]
    assert sorted(steps)[-1] > sorted(steps)[0]
