"""How fast the operator turns many FineTuneJobs into pods (`make bench-operator`).

Starts the local control plane (etcd, kube-apiserver, kube-controller-manager,
kube-scheduler), registers GPU nodes, and for each operator configuration runs
`finetune-operator` against its own namespace, applies JOBS FineTuneJobs at
once from a thread pool and watches pods appear. Reports, per configuration:
time from a job's create call until all its pods exist (p50, p99), jobs per
second until every pod exists, reconciles per second (the operator's own
counter), and the operator's peak RSS. The configurations run one after the
other on the same control plane, so their ratios are what to compare.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import threading
import time
import urllib.request
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path[:0] = [str(ROOT / "tests" / "cluster"), str(ROOT / "tests")]

from controlplane import ControlPlane, free_port, wait_for  # noqa: E402
from kubernetes import client, config, watch  # noqa: E402

from finetune_api import names as c  # noqa: E402
from operator_support import OperatorProcess, gpu_node  # noqa: E402

CRD = ROOT / "manifests" / "crd" / "finetune.dev_finetunejobs.yaml"


def job(name: str, nodes: int) -> dict[str, Any]:
    return {
        "apiVersion": c.API_VERSION,
        "kind": c.KIND,
        "metadata": {"name": name},
        "spec": {
            "model": {"uri": "s3://models/bert-base-uncased", "numLabels": 2},
            "dataset": {"uri": "s3://data/mrpc/", "textColumns": ["sentence1", "sentence2"]},
            "resources": {"nodes": nodes, "gpusPerNode": 1},
            "checkpoints": {"uri": f"s3://ckpt/{name}"},
        },
    }


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q * (len(ordered) - 1)))]


def peak_rss_mib(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def reconciles(port: int) -> float:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as r:
        for line in r.read().decode().splitlines():
            if line.startswith("finetune_operator_reconciles_total "):
                return float(line.split()[1])
    return 0.0


def run_once(
    plane: ControlPlane,
    api: client.ApiClient,
    workdir: Path,
    label: str,
    workers: int,
    jobs: int,
    nodes: int,
) -> dict[str, Any]:
    core, custom = client.CoreV1Api(api), client.CustomObjectsApi(api)
    ns = f"bench-{label}"
    core.create_namespace({"metadata": {"name": ns}})
    wait_for(lambda: bool(core.list_namespaced_service_account(ns).items), 60, "default SA")
    op = OperatorProcess(
        plane.kubeconfig_path,
        ns,
        workdir / f"operator-{label}.log",
        free_port(),
        extra=("--workers", str(workers), "--resync-seconds", "60"),
    ).start()
    seen: dict[str, float] = {}
    expected = jobs * nodes
    stop = threading.Event()

    def watch_pods() -> None:
        w = watch.Watch()
        for ev in w.stream(core.list_namespaced_pod, ns, timeout_seconds=600):
            seen.setdefault(ev["object"].metadata.name, time.monotonic())
            if len(seen) >= expected or stop.is_set():
                w.stop()

    watcher = threading.Thread(target=watch_pods, daemon=True)
    watcher.start()
    before = reconciles(op.http_port)
    created: dict[str, float] = {}

    def create(i: int) -> None:
        name = f"job-{i:04d}"
        created[name] = time.monotonic()
        custom.create_namespaced_custom_object(c.GROUP, c.VERSION, ns, c.PLURAL, job(name, nodes))

    began = time.monotonic()
    with ThreadPoolExecutor(16) as pool:
        list(pool.map(create, range(jobs)))
    wait_for(lambda: len(seen) >= expected, 600, f"{expected} pods")
    ended = time.monotonic()
    stop.set()
    after = reconciles(op.http_port)
    rss = peak_rss_mib(op.proc.pid) if op.proc else float("nan")
    op.stop()
    latencies = [
        max(seen[f"{name}-node-{i}"] for i in range(nodes)) - t for name, t in created.items()
    ]
    return {
        "config": f"--workers {workers}",
        "jobs": jobs,
        "pods": expected,
        "p50_s": statistics.median(latencies),
        "p99_s": percentile(latencies, 0.99),
        "all_pods_s": ended - began,
        "jobs_per_s": jobs / (ended - began),
        "reconciles_per_s": (after - before) / (ended - began),
        "peak_rss_mib": rss,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--jobs", type=int, default=200)
    parser.add_argument("--nodes-per-job", type=int, default=2)
    parser.add_argument("--workers", type=int, nargs="+", default=[1, 8])
    parser.add_argument("--json", type=Path, help="also write the results here")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        workdir = Path(tmp)
        plane = ControlPlane(workdir / "plane").start()
        try:
            plane.kubectl("apply", "--server-side", "-f", str(CRD))
            wait_for(
                lambda: (
                    plane.kubectl(
                        "get",
                        f"crd/{c.CRD_NAME}",
                        "-o",
                        "jsonpath={.status.conditions[?(@.type=='Established')].status}",
                        check=False,
                    ).stdout.strip()
                    == "True"
                ),
                60,
                "the CRD",
            )
            api = config.new_client_from_config(config_file=str(plane.kubeconfig_path))
            core = client.CoreV1Api(api)
            gpus_needed = args.jobs * args.nodes_per_job * len(args.workers)
            for i in range(-(-gpus_needed // 8)):
                core.create_node(gpu_node(f"bench-gpu-{i}", 8))
            results = [
                run_once(plane, api, workdir, f"w{w}", w, args.jobs, args.nodes_per_job)
                for w in args.workers
            ]
        finally:
            plane.stop()
    print(
        "| operator | jobs | pods | pods exist p50 | p99 | all pods | jobs/s | reconciles/s "
        "| peak RSS |"
    )
    print("| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |")
    for r in results:
        print(
            f"| {r['config']} | {r['jobs']} | {r['pods']} | {r['p50_s']:.2f} s | "
            f"{r['p99_s']:.2f} s | {r['all_pods_s']:.1f} s | {r['jobs_per_s']:.1f} | "
            f"{r['reconciles_per_s']:.1f} | {r['peak_rss_mib']:.0f} MiB |"
        )
    if args.json:
        args.json.write_text(json.dumps(results, indent=2) + "\n")


if __name__ == "__main__":
    main()
