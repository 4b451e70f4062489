"""A real Prometheus scrapes the trainer's endpoint while it trains."""

from __future__ import annotations

from pathlib import Path

from controlplane import free_port, wait_for

from prometheus.server import Prometheus
from trainer_support import start_nodes, waimai_jsonl, wait_nodes


def test_prometheus_sees_loss_and_step_move(tiny_model: Path, tmp_path: Path) -> None:
    metrics_port = free_port()
    config = {
        "global": {"scrape_interval": "1s", "scrape_timeout": "900ms"},
        "scrape_configs": [
            {"job_name": "finetune", "static_configs": [{"targets": [f"127.0.0.1:{metrics_port}"]}]}
        ],
    }
    prom = Prometheus(tmp_path / "prometheus", config).start()
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
                for series in prom.query(name + selector):
                    if series["value"][1] != "NaN":  # the loss before the first step
                        seen.add(float(series["value"][1]))
            return len(steps) >= 3 and len(losses) >= 3

        wait_for(moving, 120, "Prometheus to scrape a moving step and loss", every=0.5)
        samples = prom.query("finetune_train_samples_total" + selector)
        assert float(samples[0]["value"][1]) > 0
        up = prom.query('up{job="finetune"}')
        assert up[0]["value"][1] == "1"
    finally:
        prom.stop()
        codes = wait_nodes(nodes, 300)
    assert codes == [0], nodes[0].output()[-3000:]
    assert sorted(steps)[-1] > sorted(steps)[0]
