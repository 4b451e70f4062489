"""A real Prometheus on loopback, built from its Go module by build.sh (with Kubernetes
service discovery), and its HTTP query API."""

from __future__ import annotations

import json
import subprocess
import time
import urllib.error
import urllib.parse
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml
from controlplane import built, free_port, wait_for

HERE = Path(__file__).resolve().parent


@dataclass
class Prometheus:
    workdir: Path
    config: dict[str, Any]
    port: int = field(default_factory=free_port)
    proc: subprocess.Popen[bytes] | None = None

    def start(self) -> Prometheus:
        binary = built(HERE / "build.sh", timeout=1800)[-1]
        self.workdir.mkdir(parents=True, exist_ok=True)
        config = self.workdir / "prometheus.yml"
        config.write_text(yaml.safe_dump(self.config))
        self.proc = subprocess.Popen(
            [
                binary,
                f"--config.file={config}",
                f"--storage.tsdb.path={self.workdir / 'tsdb'}",
                f"--web.listen-address=127.0.0.1:{self.port}",
            ],
            stdout=(self.workdir / "prometheus.log").open("wb"),
            stderr=subprocess.STDOUT,
        )
        wait_for(self._ready, 60, "Prometheus to be ready")
        return self

    def _ready(self) -> bool:
        assert self.proc is not None
        assert self.proc.poll() is None, (self.workdir / "prometheus.log").read_text()[-2000:]
        with urllib.request.urlopen(f"http://127.0.0.1:{self.port}/-/ready", timeout=2) as r:
            return bool(r.status == 200)

    def stop(self) -> None:
        if self.proc is not None:
            self.proc.terminate()
            self.proc.wait(timeout=30)

    def api(self, path: str, **params: Any) -> Any:
        url = f"http://127.0.0.1:{self.port}/api/v1/{path}?{urllib.parse.urlencode(params)}"
        try:
            with urllib.request.urlopen(url, timeout=10) as resp:
                return json.loads(resp.read())["data"]
        except urllib.error.HTTPError as e:  # a refused query: say which, and why
            raise AssertionError(f"Prometheus refused {params}: {e.read().decode()}") from e

    def query(self, expr: str) -> list[dict[str, Any]]:
        """An instant query's series."""
        result: list[dict[str, Any]] = self.api("query", query=expr)["result"]
        return result

    def query_range(
        self, expr: str, start: float, end: float | None = None, step: float = 1.0
    ) -> list[dict[str, Any]]:
        """A range query's series, each with its [time, value] pairs."""
        end = time.time() if end is None else end
        result: list[dict[str, Any]] = self.api(
            "query_range", query=expr, start=start, end=end, step=step
        )["result"]
        return result
