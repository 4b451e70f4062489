"""A real Prometheus scrapes the trainer's endpoint while it trains, and holds its
final values though the run ends between two scrapes."""

from __future__ import annotations

import threading
import time
import urllib.request
from pathlib import Path

from controlplane import free_port, wait_for
from prometheus_client import CollectorRegistry, Gauge

from finetune_trainer.scrapes import READERS_KEPT, Scrapes, serve
from prometheus.server import Prometheus
from trainer_support import start_nodes, waimai_jsonl, wait_nodes


def test_prometheus_sees_loss_and_step_move(tiny_model: Path, tmp_path: Path) -> None:
    metrics_port = free_port()
    config = {
        # Longer than the run's last step takes to exit (final checkpoint included), so
        # without a final read the last values would fall between two scrapes.
        "global": {"scrape_interval": "3s", "scrape_timeout": "2s"},
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
            "maxSteps": 2000,  # about 20 s: several 3 s scrapes while it trains
            "perDeviceTrainBatchSize": 8,
            "learningRate": 1e-3,
            "evalStrategy": "no",
            "loggingSteps": 50,
        },
        "checkpoints": {"uri": f"file://{tmp_path}/ckpt", "saveSteps": 500},
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
        codes = wait_nodes(nodes, 300)
        assert codes == [0], nodes[0].output()[-3000:]
        assert sorted(steps)[-1] > sorted(steps)[0]

        # The run has ended, and Prometheus holds its last step and its last checkpoint.
        def final(name: str) -> float:
            (series,) = prom.query(f"max_over_time({name}{selector}[10m])")
            return float(series["value"][1])

        wait_for(
            lambda: final("finetune_global_step") == 2000,
            10,
            "the final step in Prometheus",
        )
        assert final("finetune_last_checkpoint_step") == 2000
        assert "no final read" not in nodes[0].output()
    finally:
        prom.stop()
        wait_nodes(nodes, 300)


def read(port: int, agent: str) -> str:
    request = urllib.request.Request(
        f"http://127.0.0.1:{port}/metrics", headers={"User-Agent": agent}
    )
    with urllib.request.urlopen(request, timeout=5) as response:
        return str(response.read().decode())


def served() -> tuple[int, Gauge, Scrapes]:
    registry, scrapes, port = CollectorRegistry(), Scrapes(), free_port()
    step = Gauge("finetune_global_step", "step", registry=registry)
    serve(registry, port, scrapes)
    return port, step, scrapes


def test_a_run_that_nobody_polls_ends_at_once() -> None:
    port, _, scrapes = served()
    began = time.monotonic()
    assert scrapes.wait_for_final_reads() == []
    read(port, "curl/8")  # one look by hand is not a reader to wait for
    assert scrapes.wait_for_final_reads() == []
    assert time.monotonic() - began < 1


def test_a_polling_reader_gets_the_final_value_and_a_silent_one_is_named() -> None:
    port, step, scrapes = served()
    stop, seen = threading.Event(), []

    def poll() -> None:
        while not stop.wait(0.3):
            seen.append(read(port, "Prometheus/3"))

    poller = threading.Thread(target=poll, daemon=True)
    poller.start()
    read(port, "quiet/1")
    wait_for(lambda: len(seen) >= 3, 10, "three reads")
    read(port, "quiet/1")  # its second read, and its last
    step.set(600)
    began = time.monotonic()
    try:
        missed = scrapes.wait_for_final_reads()
    finally:
        stop.set()
        poller.join()
    # The poller read the final step before the wait ended; the reader that went quiet
    # was waited for only until it was due (1.5 gaps and a second), then named.
    assert "finetune_global_step 600.0" in seen[-1]
    assert missed == ["127.0.0.1 (quiet/1)"]
    assert time.monotonic() - began < 5


def test_many_one_off_readers_are_forgotten_before_a_polling_one() -> None:
    port, _, scrapes = served()
    for _ in range(2):
        read(port, "Prometheus/3")
    for i in range(100):
        scrapes.record(("10.0.0.1", f"scanner/{i}"))  # as one read by each would
    assert len(scrapes.readers) <= READERS_KEPT
    assert scrapes.readers["127.0.0.1", "Prometheus/3"].due() is not None  # still polling
